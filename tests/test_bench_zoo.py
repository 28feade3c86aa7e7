"""bench/bench_zoo.py: the README's model-zoo table builder, on a tiny synthetic panel."""
import copy
import importlib.util
from pathlib import Path

import pytest

from alphafactory.config import load_params

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "bench" / "bench_zoo.py")
bench_zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_zoo)


def test_table_rows_on_a_tiny_synthetic_panel() -> None:
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["neural"]["trainer"]["epochs"] = 1  # small and quick: the table's plumbing, not its figures
    params["features"]["groups"] = ["returns", "volatility"]
    params["train"]["lookback"] = 8
    rows = bench_zoo.run(params, ("ridge", "deepar"), ("synthetic",), symbols=4, synthetic={"bars": 400},
                         horizons=(1, 5), threads=1, echo=False)
    assert len(rows) == 2
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert all(len(c) == len(bench_zoo.COLUMNS) for c in cells)
    col = {name: i for i, name in enumerate(bench_zoo.COLUMNS)}
    assert [c[col["family"]] for c in cells] == ["ridge", "deepar"]
    # ridge's yhat_std is the volatility scale fitted on val; deepar's its own distribution
    assert [c[col["std source"]] for c in cells] == ["vol-scale", "own"]
    for c in cells:
        assert 0.0 < float(c[col["±1σ coverage h1"]]) <= 1.0
        assert float(c[col["CRPS h1"]]) > 0.0
        ic, se = c[col["IC h5 ± SE"]].split(" ± ")
        assert abs(float(ic)) < 1.0 and float(se) > 0.0


def test_classification_only_model_is_refused() -> None:
    with pytest.raises(ValueError, match="logistic"):
        bench_zoo.run(load_params(ROOT / "params.yaml"), ("logistic",), ("synthetic",), symbols=4,
                      synthetic={"bars": 500}, horizons=(1,), threads=1, echo=False)
    assert "logistic" not in bench_zoo.regression_models()
    assert "chronos" not in bench_zoo.regression_models() and "lstm" in bench_zoo.regression_models()
