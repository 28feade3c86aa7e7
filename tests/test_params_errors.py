"""Bad params end a stage with one line naming the key, the value and what was expected: never a
traceback (`validate()` methods that raise a plain ValueError included)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alphafactory import stage
from alphafactory.blend import BlendConfig
from alphafactory.config import load_params, section
from alphafactory.cv import CVConfig
from alphafactory.evaluate import EvaluateConfig
from alphafactory.explain import ExplainConfig
from alphafactory.labels import LabelConfig
from alphafactory.split import SplitConfig
from alphafactory.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CASES = [("train", TrainConfig, "lookback", 0), ("split", SplitConfig, "embargo", -3),
         ("label", LabelConfig, "horizons", []), ("label", LabelConfig, "horizons", [0]),
         ("evaluate", EvaluateConfig, "cost_bps", -5), ("evaluate", EvaluateConfig, "ls_quantile", 0.9),
         ("split", SplitConfig, "val_frac", 1.5), ("blend", BlendConfig, "oof_folds", 0),
         ("cv", CVConfig, "val_frac", 0), ("explain", ExplainConfig, "perm_seeds", 0)]


def with_value(name: str, key: str, value) -> dict:
    params = load_params(ROOT / "params.yaml")
    params[name] = {**(params.get(name) or {}), key: value}
    return params


@pytest.mark.parametrize(("name", "cls", "key", "value"), CASES, ids=[f"{c[0]}.{c[2]}={c[3]}" for c in CASES])
def test_bad_value_is_one_line_naming_the_key(name, cls, key, value, capsys):
    params = with_value(name, key, value)
    with pytest.raises(SystemExit) as exit_:
        stage.run(lambda: section(params, name, cls))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {name}.{key}: got "), err


def test_a_stage_script_prints_one_line_for_a_bad_value(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value("evaluate", "cost_bps", -5)))
    paths = [a for p in ("preds", "blend", "bars", "info", "labels", "segments", "oracle", "metrics", "oracle-metrics",
                         "headline", "predictions", "plots") for a in (f"--{p}", str(tmp_path / p))]
    p = subprocess.run([sys.executable, "stages/evaluate.py", "--params", str(bad), *paths], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == ["error: evaluate.cost_bps: got -5.0, expected >= 0"], p.stderr
    assert not list(tmp_path.glob("metrics*")) and not (tmp_path / "plots").exists()  # nothing written


def test_a_lookback_longer_than_the_data_names_the_key_and_value():
    """On a pooled run, a lookback longer than any symbol's history used to blame per_symbol."""
    from alphafactory.config import ConfigError
    from alphafactory.train import fit_forecast
    from test_per_symbol import dataset

    with pytest.raises(ConfigError, match=r"^train.lookback: got 100000, but lstm then has 0 train and 0 val "
                                          r"windows \(the longest symbol has 200 rows\)"):
        fit_forecast(dataset(), "lstm", None, seed=0, extra={"lookback": 100000, "trainer": {"epochs": 1}})
