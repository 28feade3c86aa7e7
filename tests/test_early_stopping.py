"""Boosters' ``early_stopping_metric: ic``: the val IC picks the trees kept (models/base.py)."""
from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from alphafactory import models
from alphafactory.errors import ConfigError
from alphafactory.evaluation import metrics
from alphafactory.models.base import XY, pearson_ic

BOOSTERS = ("lightgbm", "xgboost", "catboost")
ROUNDS = {"lightgbm": "n_estimators", "xgboost": "n_estimators", "catboost": "iterations"}


def test_pearson_ic_is_the_pooled_ic_of_evaluation() -> None:
    rng = np.random.default_rng(3)
    y = rng.standard_t(4, 500)
    yhat = 0.2 * y + rng.normal(size=500)
    ic = metrics.regression_metrics(y, yhat)["ic"]
    assert pearson_ic(yhat.astype(np.float32), y) == pytest.approx(ic, abs=1e-6)
    assert pearson_ic(yhat, y) == pytest.approx(ic, abs=1e-12)
    assert pearson_ic(np.full(500, 0.3), y) == 0.0  # a booster before its first split: comparable, not NaN
    with pytest.raises(ValueError, match="3 forecasts for 2 targets"):
        pearson_ic(np.zeros(3), np.zeros(2))


def _panel(seed: int = 0) -> tuple[XY, XY]:
    """An interaction signal under a noise whose val mean differs from train's (a market move):
    val MSE and val IC disagree on how many trees to keep."""
    rng = np.random.default_rng(seed)

    def part(n: int, shift: float) -> XY:
        X = rng.normal(size=(n, 6)).astype(np.float32)
        y = 0.15 * X[:, 0] * X[:, 1] + 0.1 * X[:, 2] + rng.standard_t(4, n) + shift
        return XY(X, y.astype(np.float32)[:, None])

    return part(3000, 0.0), part(1500, 0.3)


def _staged_val_ic(name: str, model, Xv: np.ndarray, yv: np.ndarray) -> list[float]:
    """Val IC of the first k trees of the kept model, k = 1 .. kept."""
    est = model.estimators_[0]
    if name == "lightgbm":
        return [pearson_ic(est.predict(Xv, num_iteration=k), yv) for k in range(1, est.current_iteration() + 1)]
    if name == "xgboost":
        return [pearson_ic(est[:k].inplace_predict(Xv), yv) for k in range(1, est.num_boosted_rounds() + 1)]
    return [pearson_ic(p, yv) for p in est.staged_predict(Xv)]


@pytest.mark.parametrize("name", BOOSTERS)
def test_ic_stopping_keeps_the_trees_of_the_best_val_ic(name: str) -> None:
    train, val = _panel()
    yv = val.Y[:, 0]
    block = {ROUNDS[name]: 150, "early_stopping_rounds": 20, "early_stopping_metric": "ic"}
    if name == "lightgbm":
        block["min_child_samples"] = 20
    model = models.create(name, block, horizons=(1,), seed=0).fit(train, val)
    staged = _staged_val_ic(name, model, val.X, yv)
    best = model._best_iteration(model.estimators_[0])
    # the kept model scores the best val IC of all its prefixes, and is the one predict uses
    kept = len(staged) if name == "xgboost" else best + (name == "catboost")
    assert int(np.argmax(staged)) + 1 == kept
    assert pearson_ic(model.predict(val.X)[:, 0], yv) == pytest.approx(max(staged), abs=1e-6)
    # the recorded curves are still the MSE, train and val
    hist = model.history_["h1"]
    assert len(hist["train"]) == len(hist["val"]) > kept
    assert hist["val"][kept - 1] == pytest.approx(float(np.mean((model.predict(val.X)[:, 0] - yv) ** 2)), rel=1e-5)


@pytest.mark.parametrize("name", BOOSTERS)
def test_mse_stopping_is_unchanged_by_default(name: str) -> None:
    """The default keeps the val-MSE choice (bit-for-bit the old fits)."""
    train, val = _panel(1)
    base = {ROUNDS[name]: 60, "early_stopping_rounds": 10}
    a = models.create(name, base, horizons=(1,), seed=0).fit(train, val)
    b = models.create(name, {**base, "early_stopping_metric": "mse"}, horizons=(1,), seed=0).fit(train, val)
    assert np.array_equal(a.predict(val.X), b.predict(val.X))
    curve = np.asarray(a.history_["h1"]["val"])
    assert a._best_iteration(a.estimators_[0]) in (int(np.argmin(curve)), int(np.argmin(curve)) + 1)


def test_ic_stopping_differs_from_mse_stopping() -> None:
    """On the shifted-val panel the two metrics keep different trees (so the tests above can fail)."""
    train, val = _panel()
    block = {"n_estimators": 150, "early_stopping_rounds": 20, "min_child_samples": 20}
    mse = models.create("lightgbm", block, horizons=(1,), seed=0).fit(train, val)
    ic = models.create("lightgbm", {**block, "early_stopping_metric": "ic"}, horizons=(1,), seed=0).fit(train, val)
    assert mse._best_iteration(mse.estimators_[0]) != ic._best_iteration(ic.estimators_[0])


@pytest.mark.parametrize("name,block,match", [
    ("lightgbm", {"early_stopping_metric": "ic", "distributed": True}, "lightgbm.dask early-stops on mse"),
    ("xgboost", {"early_stopping_metric": "ic", "distributed": True}, "xgboost.dask early-stops on mse"),
    ("catboost", {"early_stopping_metric": "ic", "task_type": "GPU"}, "no Python metric on GPU"),
    ("lightgbm", {"early_stopping_metric": "rank"}, "early_stopping_metric"),
])
def test_unsupported_combinations_are_refused_by_key(name: str, block: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        models.create(name, block, horizons=(1,))


def test_xgboost_ic_metric_reads_the_dmatrix_labels() -> None:
    from alphafactory.models.xgboost_model import _ic_metric

    rng = np.random.default_rng(0)
    y, p = rng.normal(size=200), rng.normal(size=200)
    name, value = _ic_metric(p, xgb.DMatrix(np.zeros((200, 1)), label=y))
    assert name == "ic" and value == pytest.approx(metrics.regression_metrics(y, p)["ic"], abs=1e-6)
