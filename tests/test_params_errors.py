"""Bad params end a stage with one line naming the key, the value and what was expected: never a
traceback (`validate()` methods that raise a plain ValueError included).

The constraints are declared on the dataclass fields (``Annotated[int, Interval(ge=1)]``); the
generated cases below take, for every constrained field of every config section and every
registered model, a value just outside each bound (and an unknown choice, an empty or duplicated
list), so a declared constraint that is not enforced, or an error without its key path, fails."""
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from alphafactory import models, stage
from alphafactory.blend import BlendConfig
from alphafactory.config import ConfigError, Interval, NonEmpty, Unique, load_params, section, to_dict
from alphafactory.evaluation.backtest import BacktestConfig
from alphafactory.evaluation.cv import CVConfig
from alphafactory.evaluation.evaluate import EvaluateConfig
from alphafactory.evaluation.explain import ExplainConfig
from alphafactory.labels import LabelConfig
from alphafactory.models.trainer import TrainerConfig
from alphafactory.params_check import SECTIONS, check_params
from alphafactory.split import SplitConfig
from alphafactory.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CASES = [("train", TrainConfig, "lookback", 0), ("split", SplitConfig, "embargo", -3),
         ("label", LabelConfig, "horizons", []),
         ("evaluate", EvaluateConfig, "cost_bps", -5), ("evaluate", EvaluateConfig, "ls_quantile", 0.9),
         ("split", SplitConfig, "val_frac", 1.5), ("blend", BlendConfig, "oof_folds", 0),
         ("cv", CVConfig, "val_frac", 0), ("backtest", BacktestConfig, "retrain_every", 0),
         ("explain", ExplainConfig, "perm_seeds", 0)]


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
    paths = [a for p in ("preds", "blend", "walk-forward", "bars", "info", "labels", "segments", "oracle", "metrics",
                         "oracle-metrics", "headline", "predictions", "plots", "tune") for a in (f"--{p}", str(tmp_path / p))]
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


# -- generated: one bad value per bound, choice and list rule of every constrained field ---------

def _bad_values(tp, default):
    """(bad value, key-path suffix) pairs breaking a constraint declared in the type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        base = args[0]
        while typing.get_origin(base) in (typing.Union, type(int | None)):  # Optional[X]: X
            base = next(a for a in typing.get_args(base) if a is not type(None))
        out = list(_bad_values(args[0], default))
        for c in tp.__metadata__:
            if isinstance(c, Interval):
                num = int if base is int else float
                out += [(num(v), "") for v in (None if c.ge is None else c.ge - 1, c.gt,
                                               None if c.le is None else c.le + 1, c.lt) if v is not None]
            elif isinstance(c, NonEmpty):
                out.append(([], ""))
            elif isinstance(c, Unique) and default:
                out.append(([to_dict(default[0])] * 2, ""))
        return out
    if origin is typing.Literal:
        return [("nosuch", "")]
    if origin is tuple and args:
        return [([v], f"[0]{sub}") for v, sub in _bad_values(args[0], default[0] if default else None)]
    return []


def _cases(cls, where):
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):
            for key, value, path in _cases(hints[f.name], f"{where}.{f.name}"):
                yield f"{f.name}.{key}", value, path
            continue
        for value, sub in _bad_values(hints[f.name], default):
            yield f.name, value, f"{where}.{f.name}{sub}"


def _nested(key: str, value):
    """{"a": {"b": value}} for key "a.b"."""
    head, _, rest = key.partition(".")
    return {head: _nested(rest, value) if rest else value}


SECTION_CASES = [(name, cls, key, value, path) for name, cls in SECTIONS.items()
                 for key, value, path in _cases(cls, name)]
MODEL_CASES = [(name, key, value, path) for name, spec in sorted(models.REGISTRY.items())
               for key, value, path in _cases(spec.cls.Params, f"{spec.family}.{name}")]
TRAINER_CASES = [(key, value, path) for key, value, path in _cases(TrainerConfig, "neural.trainer")]


def _got(value) -> str:
    return repr(float(value) if isinstance(value, float) else value)


def _assert_one_line(err: str, path: str) -> None:
    assert err.count("\n") == 1, err
    assert re.match(rf"error: {re.escape(path)}: got .+, expected .+$", err.strip()), err


@pytest.mark.parametrize(("name", "cls", "key", "value", "path"), SECTION_CASES,
                         ids=[f"{c[4]}={c[3]}" for c in SECTION_CASES])
def test_every_section_constraint_is_one_line_with_the_key_path(name, cls, key, value, path, capsys):
    params = load_params(ROOT / "params.yaml")
    block = dict(params.get(name) or {})
    head, _, rest = key.partition(".")
    block[head] = {**(block.get(head) or {}), **_nested(rest, value)} if rest else value
    with pytest.raises(SystemExit) as exit_:
        stage.run(lambda: section({**params, name: block}, name, cls))
    assert exit_.value.code == 2
    _assert_one_line(capsys.readouterr().err, path)


@pytest.mark.parametrize(("name", "key", "value", "path"), MODEL_CASES, ids=[f"{c[3]}={c[2]}" for c in MODEL_CASES])
def test_every_model_constraint_is_one_line_with_the_key_path(name, key, value, path, capsys):
    task = models.REGISTRY[name].tasks[0]
    with pytest.raises(SystemExit) as exit_:
        stage.run(lambda: models.create(name, {key: value}, horizons=(1, 5), task=task))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    _assert_one_line(err, path)
    if not isinstance(value, list):
        assert f": got {_got(value)}, expected " in err, err


@pytest.mark.parametrize(("key", "value", "path"), TRAINER_CASES, ids=[f"{c[2]}={c[1]}" for c in TRAINER_CASES])
def test_every_trainer_constraint_is_one_line_with_the_key_path(key, value, path, capsys):
    with pytest.raises(SystemExit):
        stage.run(lambda: models.create("lstm", None, trainer={key: value}))
    _assert_one_line(capsys.readouterr().err, path)


def test_the_issue_examples_read_as_written():
    for name, block, line in [
        ("ridge", {"alpha": -1}, "classical.ridge.alpha: got -1.0, expected >= 0"),
        ("lightgbm", {"learning_rate": -1}, "boosting.lightgbm.learning_rate: got -1.0, expected > 0"),
        ("lstm", {"hidden": 0}, "neural.lstm.hidden: got 0, expected >= 1"),
        ("tcn", {"dropout": 1.0}, "neural.tcn.dropout: got 1.0, expected in [0, 1)"),
        ("xgboost", {"subsample": 0}, "boosting.xgboost.subsample: got 0.0, expected in (0, 1]"),
        ("catboost", {"task_type": "TPU"}, "boosting.catboost.task_type: got 'TPU', expected one of ['CPU', 'GPU']"),
    ]:
        with pytest.raises(ConfigError) as e:
            models.create(name, block)
        assert str(e.value) == line


def test_every_model_and_section_declares_constraints():
    """The families that once validated nothing (lightgbm, xgboost, catboost, lstm, tcn) and any new one."""
    def constrained(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        return [f.name for f in dataclasses.fields(cls) if list(_bad_values(hints[f.name], None))
                or dataclasses.is_dataclass(hints[f.name])]
    bare = [n for n, s in models.REGISTRY.items() if not constrained(s.cls.Params)]
    bare += [n for n, cls in SECTIONS.items() if not constrained(cls)]
    assert not bare, bare
    assert len(MODEL_CASES) >= 3 * len(models.REGISTRY) and len(SECTION_CASES) >= 2 * len(SECTIONS)


CROSS_FIELD = [  # rules between fields stay in validate(), still one line with the key path
    ("split", SplitConfig, {"val_frac": 0.45, "test_frac": 0.45}, "split: val_frac + test_frac"),
    ("split", SplitConfig, {"cv_mode": "rolling"}, "split.cv_train_bars: got None"),
    ("split", SplitConfig, {"cv_mode": "cpcv", "cv_folds": 3, "cv_test_groups": 3}, "split.cv_test_groups: got 3"),
    ("cv", CVConfig, {"models": ["nosuch"]}, "cv.models: 'nosuch'"),
]


@pytest.mark.parametrize(("name", "cls", "block", "start"), CROSS_FIELD, ids=[c[3] for c in CROSS_FIELD])
def test_cross_field_rules_are_one_line_with_the_key_path(name, cls, block, start, capsys):
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(SystemExit):
        stage.run(lambda: section({**params, name: {**params[name], **block}}, name, cls))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {start}"), err


@pytest.mark.parametrize(("name", "block", "start"), [
    ("nhits", {"pool_sizes": [8, 1]}, "neural.nhits: pool_sizes [8, 1] and downsample"),
    ("patchtst", {"patch_len": 4, "stride": 8}, "neural.patchtst.stride: got 8 with patch_len 4"),
    ("transformer", {"d_model": 30, "heads": 4}, "neural.transformer.d_model: got 30 with heads 4"),
    ("svm", {"max_iter": 0}, "classical.svm.max_iter: got 0"),
])
def test_model_cross_field_rules_are_one_line_with_the_key_path(name, block, start, capsys):
    with pytest.raises(SystemExit):
        stage.run(lambda: models.create(name, block))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {start}"), err


def test_the_committed_params_pass():
    assert check_params(load_params(ROOT / "params.yaml"))


@pytest.mark.parametrize("edit, message", [
    ({"train": {"task": "classification"}, "cv": {"models": ["lightgbm", "ridge"]}},
     "cv.models: 'ridge' does not support train.task 'classification'; models that do: ["),
    ({"train": {"task": "classification"}, "cv": {"models": ["lightgbm"]}, "backtest": {"models": ["ridge"]}},
     "backtest.models: 'ridge' does not support train.task 'classification'"),
    ({"tune": {"horizon": 7}}, "tune.horizon: got 7, expected one of label.horizons [1, 5, 20]"),
])
def test_refit_stage_models_and_tune_horizon_are_checked_before_any_stage(edit, message):
    """A model a refit stage (cv, backtest, tune) lists must support train.task, and tune.horizon
    must be a label horizon: check_params says so, instead of the stage failing after the ones
    before it ran."""
    params = load_params(ROOT / "params.yaml")
    for sec, keys in edit.items():
        params[sec] = {**params[sec], **keys}
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_params(params)
