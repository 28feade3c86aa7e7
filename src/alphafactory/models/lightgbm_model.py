"""LightGBM, one booster per horizon (regression, or 3-class multiclass), early-stopped on val;
saved as LightGBM text."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import lightgbm as lgb
import numpy as np

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.io import ParquetRows
from alphafactory.models import register
from alphafactory.models.base import EARLY_STOPPING_METRICS, PerHorizonModel, float_matrix, pearson_ic, predict_threads


@dataclass(frozen=True)
class LightGBMParams:
    n_estimators: Annotated[int, Interval(ge=1)] = 1000
    learning_rate: Annotated[float, Interval(gt=0)] = 0.03
    num_leaves: Annotated[int, Interval(ge=2)] = 15
    min_child_samples: Annotated[int, Interval(ge=0)] = 100
    feature_fraction: Annotated[float, Interval(gt=0, le=1)] = 0.7
    bagging_fraction: Annotated[float, Interval(gt=0, le=1)] = 0.8
    bagging_freq: Annotated[int, Interval(ge=0)] = 1  # 0: no bagging
    lambda_l2: Annotated[float, Interval(ge=0)] = 10.0
    early_stopping_rounds: Annotated[int, Interval(ge=1)] = 50
    early_stopping_metric: Literal[EARLY_STOPPING_METRICS] = "mse"  # see models.base.EARLY_STOPPING_METRICS
    num_threads: Annotated[int, Interval(ge=1)] = 2
    distributed: bool = False  # train on the compute cluster (lightgbm.dask), rows split over its workers

    def validate(self) -> None:
        if self.distributed and self.early_stopping_metric != "mse":
            raise ConfigError(f"boosting.lightgbm.early_stopping_metric: got {self.early_stopping_metric!r} "
                              "with distributed: true; lightgbm.dask early-stops on mse only")


def _advance(bar):
    """LightGBM callback: one step of ``bar`` per round, the latest val score in its postfix."""
    def callback(env: lgb.callback.CallbackEnv) -> None:
        _, metric, value, _ = next(r for r in env.evaluation_result_list if r[0] == "val")
        bar.set_postfix_str(f"val_{metric}={value:.4g}", refresh=False)
        bar.update(1)
    return callback


def _ic_eval(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    """LightGBM feval: the IC of the forecasts with the Dataset's labels (higher is better)."""
    return "ic", pearson_ic(preds, data.get_label()), True


def _l2_eval(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    """LightGBM feval: the built-in ``l2`` (mean squared error), kept as the recorded curve when
    early stopping watches the IC."""
    y = np.asarray(data.get_label(), np.float64)
    return "l2", float(np.mean((np.asarray(preds, np.float64) - y) ** 2)), False


def save_text(booster: lgb.Booster, path: Path, num_threads: int, num_iteration: int | None = None) -> None:
    """LightGBM text, recording the configured ``num_threads`` in its parameters section rather
    than the threads the fit ran with: fits run side by side with fewer threads each
    (:func:`alphafactory.train.split_threads`) grow the same trees and so save the same bytes."""
    text = booster.model_to_string(num_iteration=num_iteration)
    text = re.sub(r"^\[num_threads: \d+\]$", f"[num_threads: {num_threads}]", text, count=1, flags=re.M)
    path.write_bytes(text.encode())


class _Parts(lgb.Sequence):
    """An :class:`~alphafactory.io.ParquetRows` view as a ``lightgbm.Sequence``: LightGBM samples
    its bin boundaries from single rows and then pushes the rows in batches of ``batch_size``, so
    the float matrix is never in memory whole, only its binned form (about a quarter of float32).
    The Dataset is the one LightGBM builds from the same values in one array (same sampled rows,
    same bins; tests/test_models.py)."""

    batch_size = 65536

    def __init__(self, rows: ParquetRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self.rows.read(idx.start or 0, idx.stop)
        if isinstance(idx, list):
            return np.stack([self.rows.row(i) for i in idx])
        # a sampled row: LightGBM's sampling takes float64 (the value of a float32 exactly, as the
        # C++ sampling of an array converts it)
        return self.rows.row(int(idx)).astype(np.float64)


def lgb_data(X):
    """What ``lgb.Dataset`` takes for ``X``: a lazy view as a :class:`_Parts` sequence, else X."""
    return _Parts(X) if isinstance(X, ParquetRows) else X


def bin_datasets(X, Xv) -> tuple[lgb.Dataset, lgb.Dataset]:
    """(train, val) LightGBM Datasets of ``X`` (n, F) and ``Xv`` (m, F) for
    :func:`train_booster` to reuse for every horizon: binned on the first training that uses
    them (val with train's bins), labels set per horizon. The bins depend on X alone (and on
    dataset parameters that are the same for every horizon of a model), so the boosters are
    those of Datasets built anew per horizon."""
    dtrain = lgb.Dataset(lgb_data(X), free_raw_data=False)
    return dtrain, lgb.Dataset(lgb_data(Xv), reference=dtrain)


def train_booster(params: dict, X, y, Xv, yv, rounds: int, classifier: bool,
                  callbacks: list | None = None, bar=None,
                  binned: tuple[lgb.Dataset, lgb.Dataset] | None = None,
                  stop_metric: str = "mse") -> tuple[lgb.Booster, dict[str, list[float]]]:
    """Train one deterministic LightGBM booster, regression (L2) or 3-class (multi log loss), on
    (X, y), scoring train and val after every round. Returns (booster, {"train", "val"} curves).
    ``stop_metric`` ``ic`` (regression): the val IC is scored first, so that an early-stopping
    callback with ``first_metric_only`` watches it; the curves are the L2 all the same.
    Shared by ``lightgbm`` and ``random_forest`` (``boosting: rf`` in ``params``). ``bar``: a
    progress bar advanced once a round (see :class:`~alphafactory.models.base.PerHorizonModel`).
    ``binned``: :func:`bin_datasets` of these X and Xv, whose labels are set to y and yv."""
    metric = "multi_logloss" if classifier else "l2"
    on_ic = stop_metric == "ic" and not classifier
    if bar is not None and not bar.disable:
        callbacks = [*(callbacks or []), _advance(bar)]
    objective = {"objective": "multiclass", "num_class": 3} if classifier else {"objective": "regression"}
    curves: dict = {}
    if binned is None:
        dtrain = lgb.Dataset(lgb_data(X), y, free_raw_data=False)
        dval = lgb.Dataset(lgb_data(Xv), yv, reference=dtrain)
    else:
        dtrain, dval = binned
        dtrain.set_label(y)
        dval.set_label(yv)
    booster = lgb.train(
        {**objective, **params, "deterministic": True, "force_col_wise": True, "verbosity": -1,
         "metric": "None" if on_ic else metric},
        dtrain, num_boost_round=rounds, valid_sets=[dtrain, dval], valid_names=["train", "val"],
        feval=[_ic_eval, _l2_eval] if on_ic else None,
        callbacks=[*(callbacks or []), lgb.record_evaluation(curves)],
    )
    return booster, {"train": curves["train"][metric], "val": curves["val"][metric]}


@register("lightgbm", family="boosting", input_kind="tabular", tasks=("regression", "classification"))
class LightGBMModel(PerHorizonModel):
    Params = LightGBMParams
    packages = ("lightgbm",)
    suffix = ".txt"
    threads_param = "num_threads"
    reads_parts = True  # a lazy feature view is binned and predicted in parts (not distributed)

    def __init__(self, params=None, *, client=None, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.client = client  # a dask.distributed Client: where ``distributed: true`` trains

    def _rounds(self):
        return None if self.params.distributed else self.params.n_estimators

    def _bin(self, X, Xv):
        return None if self.params.distributed else bin_datasets(X, Xv)  # distributed: the workers bin

    def _fit_one(self, X, y, Xv, yv, seed, bar=None, binned=None):
        p = self.params
        if p.distributed:
            # training-only code: a bundle that serves this model never loads it
            from alphafactory.models.distributed import need_client, train_lightgbm

            X, Xv = float_matrix(X), float_matrix(Xv)  # a lazy view: the Dask collections take arrays

            return train_lightgbm(
                need_client(self.client, "boosting.lightgbm"),
                {"learning_rate": p.learning_rate, "num_leaves": p.num_leaves, "min_child_samples": p.min_child_samples,
                 "colsample_bytree": p.feature_fraction, "subsample": p.bagging_fraction,
                 "subsample_freq": p.bagging_freq, "reg_lambda": p.lambda_l2, "random_state": seed},
                X, y, Xv, yv, p.n_estimators, p.early_stopping_rounds, self.classifier)
        params = {
            "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
            "min_child_samples": p.min_child_samples, "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction, "bagging_freq": p.bagging_freq,
            "lambda_l2": p.lambda_l2, "num_threads": p.num_threads, "seed": seed,
        }
        # first_metric_only: under ic the val IC, scored first (train_booster); mse: the only metric
        stop = lgb.early_stopping(p.early_stopping_rounds, first_metric_only=True, verbose=False)
        return train_booster(params, X, y, Xv, yv, p.n_estimators, self.classifier, [stop], bar, binned,
                             stop_metric=p.early_stopping_metric)

    def _predict_one(self, est, X):
        # num_threads always passed: LightGBM sets it as the calling thread's OpenMP default
        return est.predict(X, num_iteration=est.best_iteration or None,
                           num_threads=predict_threads(len(X), self.params.num_threads))

    def _best_iteration(self, est):
        return int(est.best_iteration)

    def _save_one(self, est, path: Path):
        save_text(est, path, self.params.num_threads, est.best_iteration or None)

    def _load_one(self, path: Path):
        return lgb.Booster(model_file=str(path))
