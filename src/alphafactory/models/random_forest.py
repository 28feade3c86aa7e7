"""Random forest, one forest per horizon, grown by LightGBM in random-forest mode; saved as
LightGBM text.

Why LightGBM's ``boosting: rf`` rather than scikit-learn's ``RandomForestRegressor``: the
artifact is LightGBM's own text format (native, loads without running code, no exporter or
hand-written predictor to keep in sync), training is histogram-based and multi-threaded (a forest
of fully grown scikit-learn trees on ~10k rows × 237 features is slower on 2 cores and its arrays
grow with the number of rows), and missing features are routed natively. The trees are
independent: each sees ``bagging_fraction`` of the rows, drawn without replacement afresh for
every tree, and ``feature_fraction`` of the features, and the forecast is their average.

A forest is not early-stopped: more trees only reduce variance. ``val`` is scored after every
tree for the training curve and never used for fitting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import lightgbm as lgb

from alphafactory.config import Interval
from alphafactory.models import register
from alphafactory.models.base import PerHorizonModel, predict_threads
from alphafactory.models.lightgbm_model import bin_datasets, save_text, train_booster


@dataclass(frozen=True)
class RandomForestParams:
    n_estimators: Annotated[int, Interval(ge=1)] = 300
    num_leaves: Annotated[int, Interval(ge=2)] = 31
    max_depth: int = -1  # <= 0: no limit beyond num_leaves
    min_child_samples: Annotated[int, Interval(ge=1)] = 200  # rows per leaf: the main guard against fitting noise
    feature_fraction: Annotated[float, Interval(gt=0, le=1)] = 0.5  # share of features each tree sees
    # share of rows each tree sees (redrawn per tree); < 1: a forest needs row subsampling
    bagging_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.5
    lambda_l2: Annotated[float, Interval(ge=0)] = 0.0
    num_threads: Annotated[int, Interval(ge=1)] = 2


@register("random_forest", family="classical", input_kind="tabular", tasks=("regression", "classification"))
class RandomForestModel(PerHorizonModel):
    Params = RandomForestParams
    packages = ("lightgbm",)
    suffix = ".txt"
    threads_param = "num_threads"

    def _rounds(self):
        return self.params.n_estimators

    def _bin(self, X, Xv):
        return bin_datasets(X, Xv)

    def _fit_one(self, X, y, Xv, yv, seed, bar=None, binned=None):
        p = self.params
        params = {
            "boosting": "rf", "num_leaves": p.num_leaves, "max_depth": p.max_depth,
            "min_child_samples": p.min_child_samples, "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction, "bagging_freq": 1, "lambda_l2": p.lambda_l2,
            "num_threads": p.num_threads, "seed": seed,
        }
        return train_booster(params, X, y, Xv, yv, p.n_estimators, self.classifier, bar=bar, binned=binned)

    def _predict_one(self, est, X):
        return est.predict(X, num_threads=predict_threads(len(X), self.params.num_threads))

    def _save_one(self, est, path: Path):
        save_text(est, path, self.params.num_threads)

    def _load_one(self, path: Path):
        return lgb.Booster(model_file=str(path))
