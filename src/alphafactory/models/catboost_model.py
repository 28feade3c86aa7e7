"""CatBoost, one model per horizon (RMSE regression or 3-class MultiClass), early-stopped on val;
saved as CatBoost .cbm."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import catboost as cb
import numpy as np

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.base import EARLY_STOPPING_METRICS, PerHorizonModel, float_matrix, pearson_ic, predict_threads


def save_cbm(model: cb.CatBoost, path: Path | str, thread_count: int | None = None) -> None:
    """Save as .cbm without the wall-clock training time and random GUID CatBoost stamps into
    the metadata, so the same fit gives the same bytes (DVC then skips downstream stages), and
    without the ``"callbacks"`` entry a fit with the progress-bar callback adds to the params
    JSON, so the bytes are those of a fit without it. ``thread_count``: the configured threads,
    recorded in the params JSON instead of those the fit ran with (fits side by side with fewer
    threads each, :func:`alphafactory.train.split_threads`, grow the same trees)."""
    meta = model.get_metadata()
    for key in ("train_finish_time", "model_guid"):
        if key in meta:
            del meta[key]
    if '"callbacks":' in meta.get("params", ""):
        meta["params"] = re.sub(r',"callbacks":"[^"]*"|"callbacks":"[^"]*",?', "", meta["params"], count=1)
    if thread_count is not None and "params" in meta:
        meta["params"] = re.sub(r'"thread_count":\d+', f'"thread_count":{int(thread_count)}', meta["params"])
    model.save_model(str(path), format="cbm")


# border_count: null on a small fit. Measured (docs/params.md): on the seed's per-symbol workload
# (2,440 train rows a fit) 64 borders took CatBoost 2.8x less time at the same or a higher test IC
# at every horizon; on pooled fits of 53,680 rows 254 kept a higher h4 IC (0.1441 against 0.1407
# over 5 seeds, 2 SE), so large fits keep CatBoost's own.
SMALL_FIT_ROWS = 5000
SMALL_FIT_BORDERS = 64


def border_count(params_value: int | None, n_rows: int) -> int | None:
    """The borders a fit on ``n_rows`` train rows uses: the configured value, else
    SMALL_FIT_BORDERS below SMALL_FIT_ROWS rows, else None (CatBoost's own)."""
    if params_value is not None:
        return params_value
    return SMALL_FIT_BORDERS if n_rows < SMALL_FIT_ROWS else None


@dataclass(frozen=True)
class CatBoostParams:
    iterations: Annotated[int, Interval(ge=1)] = 1000
    learning_rate: Annotated[float, Interval(gt=0)] = 0.03
    depth: Annotated[int, Interval(ge=1, le=16)] = 4  # CatBoost's own limit is 16
    l2_leaf_reg: Annotated[float, Interval(ge=0)] = 10.0
    early_stopping_rounds: Annotated[int, Interval(ge=1)] = 50
    early_stopping_metric: Literal[EARLY_STOPPING_METRICS] = "mse"  # see models.base.EARLY_STOPPING_METRICS
    thread_count: Annotated[int, Interval(ge=1)] = 2
    task_type: Literal["CPU", "GPU"] = "CPU"  # "GPU" on a GPU machine
    # borders a feature is quantized into. null: SMALL_FIT_BORDERS for a fit on fewer than
    # SMALL_FIT_ROWS train rows (a per-symbol fit, a small panel), CatBoost's own otherwise (254
    # on CPU, 128 on GPU). A round's cost grows with borders x features, not rows: on small fits
    # it is most of the time (docs/params.md, `boosting`)
    border_count: Annotated[int | None, Interval(ge=1, le=65535)] = None

    def validate(self) -> None:
        if self.task_type == "GPU" and self.early_stopping_metric != "mse":
            raise ConfigError(f"boosting.catboost.early_stopping_metric: got {self.early_stopping_metric!r} "
                              "with task_type: GPU; CatBoost runs no Python metric on GPU")


class ICMetric:
    """CatBoost eval metric (the user-metric protocol): the IC of the forecasts with the targets,
    higher is better. CatBoost hands ``evaluate`` a whole dataset's approxes at once."""

    def is_max_optimal(self) -> bool:
        return True

    def evaluate(self, approxes, target, weight) -> tuple[float, float]:
        return pearson_ic(np.asarray(approxes[0]), np.asarray(target)), 1.0

    def get_final_error(self, error: float, weight: float) -> float:
        return error


class _Advance:
    """CatBoost callback: one step of a progress bar per round, the latest val score in its
    postfix. CPU only: CatBoost refuses user callbacks on GPU."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def after_iteration(self, info) -> bool:
        metric, curve = next(iter(info.metrics["validation"].items()))
        self.bar.set_postfix_str(f"val_{metric}={curve[-1]:.4g}", refresh=False)
        self.bar.update(1)
        return True  # go on training


@register("catboost", family="boosting", input_kind="tabular", tasks=("regression", "classification"))
class CatBoostModel(PerHorizonModel):
    Params = CatBoostParams
    packages = ("catboost",)
    suffix = ".cbm"
    threads_param = "thread_count"

    def _rounds(self):
        return self.params.iterations

    # No _bin: a catboost.Pool cannot take new labels (no set_label in 1.2), and quantizing
    # 2,400 x 85 rows is about 12 ms of a 0.3 s fit, so each horizon builds its own.
    def _fit_one(self, X, y, Xv, yv, seed, bar=None, binned=None):
        p = self.params
        kind, loss = (cb.CatBoostClassifier, "MultiClass") if self.classifier else (cb.CatBoostRegressor, "RMSE")
        on_ic = p.early_stopping_metric == "ic" and not self.classifier
        borders = border_count(p.border_count, len(X))
        model = kind(
            iterations=p.iterations, learning_rate=p.learning_rate, depth=p.depth,
            l2_leaf_reg=p.l2_leaf_reg, thread_count=p.thread_count, task_type=p.task_type,
            random_seed=seed, loss_function=loss, use_best_model=True,
            od_type="Iter", od_wait=p.early_stopping_rounds, verbose=False,
            allow_writing_files=False, **({"eval_metric": ICMetric()} if on_ic else {}),
            **({"border_count": borders} if borders is not None else {}),
        )
        live = bar is not None and not bar.disable
        callbacks = [_Advance(bar)] if live and p.task_type.upper() == "CPU" else None
        if self.classifier:  # integer classes 0/1/2: probability columns in that order
            model.fit(X, y.astype(np.int64), eval_set=(Xv, yv.astype(np.int64)), callbacks=callbacks)
        else:
            with warnings.catch_warnings():  # "Failed to import numba": ICMetric is vectorised numpy
                warnings.filterwarnings("ignore", "Failed to import numba", UserWarning)
                model.fit(X, y, eval_set=(Xv, yv), callbacks=callbacks)
        ev = model.get_evals_result()
        if live and callbacks is None:  # GPU: the rounds trained, at the end
            bar.update(len(ev["validation"][loss]))
        if self.classifier:
            return model, {"train": ev["learn"][loss], "val": ev["validation"][loss]}
        def sq(c):
            return [v * v for v in c]

        return model, {"train": sq(ev["learn"]["RMSE"]), "val": sq(ev["validation"]["RMSE"])}

    def _predict(self, X):
        X = float_matrix(X)
        # One Pool for every horizon's model: predict(X) would build one per call (~0.2 ms each,
        # most of a few-row forecast's CatBoost time); the same numbers.
        pool, threads = cb.Pool(X), predict_threads(len(X), self.params.thread_count)
        return np.stack([self._predict_pool(e, pool, threads) for e in self.estimators_], axis=1)

    def _predict_one(self, est, X):
        return self._predict_pool(est, X, predict_threads(len(X), self.params.thread_count))

    def _predict_pool(self, est, data, threads: int):
        if self.classifier:
            return est.predict(data, prediction_type="Probability", thread_count=threads)
        return est.predict(data, thread_count=threads)

    def _best_iteration(self, est):
        return int(est.get_best_iteration())

    def _save_one(self, est, path: Path):
        save_cbm(est, path, self.params.thread_count)

    def _load_one(self, path: Path):
        model = cb.CatBoostClassifier() if self.classifier else cb.CatBoostRegressor()
        model.load_model(str(path), format="cbm")
        return model
