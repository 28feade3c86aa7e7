"""bench/bench_raw_inputs.py: the docs/models.md raw-input table builder, on a tiny synthetic panel."""
import copy
import importlib.util
from pathlib import Path

from alphafactory.config import load_params, section
from alphafactory.evaluation.audit import Settings
from alphafactory.evaluation.evaluate import EvaluateConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_raw_inputs", ROOT / "bench" / "bench_raw_inputs.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_every_kind_is_scored_on_the_same_rows(tmp_path: Path) -> None:
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["data"]["synthetic"]["bars"] = 500  # small and quick: the table's plumbing, not its figures
    params["features"]["groups"] = ["returns", "volatility"]
    params["train"]["lookback"] = 8
    params["neural"]["trainer"]["epochs"] = 1
    params["neural"]["inputs"]["resolutions"] = [[1, 8], [5, 4]]  # 20 bars of history
    st = Settings.from_params(params, (1, 5)).with_threads(1)
    pan, ppy, bars = bench.panels_with_bars(params, ("synthetic",), st, 4)["synthetic"]
    eval_cfg = section(params, "evaluate", EvaluateConfig)
    got = {kind: bench.measure(pan, ppy, bars, "lstm", kind, st, params["neural"]["inputs"], eval_cfg, tmp_path)
           for kind in ("features", "raw", "both")}
    for h in ("h1", "h5"):
        assert len({r[h]["n"] for r in got.values()}) == 1 and got["raw"][h]["n"] > 0  # the same test rows
        for r in got.values():
            assert abs(r[h]["ic"]) < 1.0 and r[h]["ic_se"] > 0.0
    # three fits, not one forecast scored three times
    assert len({round(r["h1"]["ic"], 12) for r in got.values()}) == 3
