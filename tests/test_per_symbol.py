"""train.scope: per_symbol: one model per symbol, trained on that symbol's rows only, saved and
loaded as one model directory, and refusing symbols it has no model for."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from alphafactory import models
from alphafactory.compute import ComputeConfig, FanOut
from alphafactory.dataset import Dataset
from alphafactory.models.per_symbol import PerSymbolModel
from alphafactory.train import fit_forecast, fit_models, split_threads

HORIZONS = (1, 2)
FAST = {"lightgbm": {"n_estimators": 30, "min_child_samples": 10, "early_stopping_rounds": 5}}


def dataset(n_sym: int = 3, n_bars: int = 200, seed: int = 0) -> Dataset:
    """Symbols whose targets load on feature 0 with opposite signs: a pooled model cannot fit
    both, per-symbol models can."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_sym * n_bars, 4)).astype(np.float32)
    sign = np.repeat(np.where(np.arange(n_sym) % 2 == 0, 1.0, -1.0), n_bars)
    Y = np.stack([sign * X[:, 0] + rng.normal(0, 0.5, len(X)) for _ in HORIZONS], 1).astype(np.float32)
    C = np.where(Y > 0.3, 2.0, np.where(Y < -0.3, 0.0, 1.0)).astype(np.float32)
    pos = np.tile(np.arange(n_bars), n_sym)
    seg = np.where(pos < 120, "train", np.where(pos < 160, "val", "test"))
    ts = np.tile(pd.date_range("2020-01-01", periods=n_bars, freq="D").to_numpy(), n_sym)
    keys = pd.DataFrame({"symbol": np.repeat([f"S{i}" for i in range(n_sym)], n_bars), "timestamp": ts})
    return Dataset(keys=keys, X=X, Y=Y, feature_names=[f"f{i}" for i in range(4)], horizons=HORIZONS,
                   segment=seg, sym_codes=np.repeat(np.arange(n_sym), n_bars), vol=np.full(len(X), 0.01), C=C)


@pytest.mark.parametrize("name,task", [("ridge", "regression"), ("lightgbm", "classification")])
def test_per_symbol_fits_each_symbol_on_its_own_rows(tmp_path, name, task):
    ds = dataset()
    res = fit_models(ds, (name,), FAST, tmp_path, seed=1, task=task, scope="per_symbol")[0]
    assert isinstance(res.model, PerSymbolModel) and res.model.symbols == ("S0", "S1", "S2")
    test = res.predictions[res.predictions["segment"] == "test"]
    for sym in ("S0", "S1"):  # each symbol's forecasts are those of a model fitted on it alone
        rows = np.flatnonzero(ds.keys["symbol"].to_numpy() == sym)
        _, fc = fit_forecast(ds.subset(rows), name, FAST.get(name), seed=1, task=task)
        mine = test[(test["symbol"] == sym) & (test["horizon"] == 1)]["yhat"].to_numpy()
        np.testing.assert_allclose(mine, fc["test"][1][:, 0])
    # opposite signals per symbol: per-symbol forecasts track each symbol's own sign
    t1 = test[test["horizon"] == 1].merge(ds.keys.assign(y=ds.Y[:, 0]), on=["symbol", "timestamp"])
    for sym, g in t1.groupby("symbol"):
        assert np.corrcoef(g["yhat"], g["y"])[0, 1] > 0.3, sym
    loaded = models.load(tmp_path / name)
    assert isinstance(loaded, PerSymbolModel) and loaded.task == task
    X, syms = ds.X[-5:], ds.keys["symbol"].to_numpy()[-5:]
    np.testing.assert_allclose(loaded.predict(X, syms), res.model.predict(X, syms))
    with pytest.raises(ValueError, match=r"no model\s+for \['NEW'\].*train.scope: pooled"):
        loaded.predict(X[:1], ["NEW"])


def test_per_symbol_names_a_symbol_without_val_rows(tmp_path):
    ds = dataset()
    ds.segment[(ds.keys["symbol"] == "S2").to_numpy() & (ds.segment == "val")] = "purged"
    with pytest.raises(ValueError, match="symbol 'S2'"):
        fit_models(ds, ("ridge",), {}, tmp_path, seed=1, scope="per_symbol")
    assert not (tmp_path / "ridge").exists()


THREADED = {"lightgbm": {**FAST["lightgbm"], "num_threads": 2},
            "xgboost": {"n_estimators": 30, "min_child_weight": 1.0, "early_stopping_rounds": 5, "nthread": 2},
            "catboost": {"iterations": 30, "early_stopping_rounds": 5, "thread_count": 2}}


def test_split_threads_runs_symbols_side_by_side_on_the_configured_threads():
    cores = len(os.sched_getaffinity(0))
    assert cores >= 2, "this test needs 2 cores to run symbols side by side"
    here = FanOut()
    assert split_threads("lightgbm", {"num_threads": 2}, 5, here) == (2, {"num_threads": 1}, {"num_threads": 2})
    assert split_threads("catboost", None, 5, here) == (2, {"thread_count": 1}, {"thread_count": 2})  # the default, 2
    assert split_threads("lightgbm", {"num_threads": 2}, 1, here)[0] == 1  # one symbol
    assert split_threads("lightgbm", {"num_threads": 1}, 5, here)[0] == 1  # nothing to split
    assert split_threads("lightgbm", {"num_threads": 2}, 5, None)[0] == 1  # inside a fan-out (a cv fold)
    assert split_threads("ridge", {}, 5, here)[0] == 1  # no threads param
    clustered = FanOut(ComputeConfig(cluster="local"))
    assert split_threads("lightgbm", {"num_threads": 2}, 5, clustered) == (1, {"num_threads": 2}, {})


def test_per_symbol_side_by_side_gives_the_same_forecasts_and_bytes(tmp_path):
    """In process (the train stage's FanOut()), the symbols' fits run 2 at a time on local
    processes with 1 thread each instead of one at a time with 2: the same forecasts, and the
    same saved files (which record the configured threads)."""
    ds = dataset(n_sym=4)
    names = tuple(THREADED)
    one = fit_models(ds, names, THREADED, tmp_path / "one", seed=1, scope="per_symbol")
    two = fit_models(ds, names, THREADED, tmp_path / "two", seed=1, scope="per_symbol", fan=FanOut())
    for a, b in zip(one, two, strict=True):
        pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=True)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) > 3 * 4 * len(HORIZONS)
    for f in files:
        assert (tmp_path / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f
    assert two[0].model.first.params.num_threads == 2  # restored after the 1-thread fit


def test_per_symbol_side_by_side_names_a_symbol_without_val_rows(tmp_path):
    """An error in a fit on a worker process reaches the stage as the one-line ConfigError."""
    ds = dataset()
    ds.segment[(ds.keys["symbol"] == "S2").to_numpy() & (ds.segment == "val")] = "purged"
    with pytest.raises(ValueError, match="symbol 'S2'"):
        fit_models(ds, ("lightgbm",), THREADED, tmp_path, seed=1, scope="per_symbol", fan=FanOut())
