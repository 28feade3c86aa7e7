"""XGBoost regressor, one booster per horizon, early-stopped on val; saved as XGBoost UBJSON."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import xgboost as xgb

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.base import EARLY_STOPPING_METRICS, PerHorizonModel, pearson_ic


@dataclass(frozen=True)
class XGBoostParams:
    n_estimators: Annotated[int, Interval(ge=1)] = 1000
    learning_rate: Annotated[float, Interval(gt=0)] = 0.03
    max_depth: Annotated[int, Interval(ge=0)] = 4  # 0: no limit
    min_child_weight: Annotated[float, Interval(ge=0)] = 50.0
    subsample: Annotated[float, Interval(gt=0, le=1)] = 0.8
    colsample_bytree: Annotated[float, Interval(gt=0, le=1)] = 0.7
    reg_lambda: Annotated[float, Interval(ge=0)] = 10.0
    early_stopping_rounds: Annotated[int, Interval(ge=1)] = 50
    early_stopping_metric: Literal[EARLY_STOPPING_METRICS] = "mse"  # see models.base.EARLY_STOPPING_METRICS
    nthread: Annotated[int, Interval(ge=1)] = 2
    device: str = "cpu"  # "cuda" on a GPU machine
    distributed: bool = False  # train on the compute cluster (xgboost.dask), rows split over its workers

    def validate(self) -> None:
        if self.distributed and self.early_stopping_metric != "mse":
            raise ConfigError(f"boosting.xgboost.early_stopping_metric: got {self.early_stopping_metric!r} "
                              "with distributed: true; xgboost.dask early-stops on mse only")


def _ic_metric(predt: np.ndarray, data: xgb.DMatrix) -> tuple[str, float]:
    """XGBoost custom metric: the IC of the forecasts with the DMatrix's labels."""
    return "ic", pearson_ic(predt, data.get_label())


class _Advance(xgb.callback.TrainingCallback):
    """One step of a progress bar per round, the latest val score in its postfix."""

    def __init__(self, bar) -> None:
        super().__init__()
        self.bar = bar

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        metric, curve = next(iter(evals_log["val"].items()))
        self.bar.set_postfix_str(f"val_{metric}={curve[-1]:.4g}", refresh=False)
        self.bar.update(1)
        return False  # go on training


@register("xgboost", family="boosting", input_kind="tabular", tasks=("regression", "classification"))
class XGBoostModel(PerHorizonModel):
    Params = XGBoostParams
    packages = ("xgboost",)
    suffix = ".ubj"
    threads_param = "nthread"

    def __init__(self, params=None, *, client=None, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.client = client  # a dask.distributed Client: where ``distributed: true`` trains

    def _rounds(self):
        return None if self.params.distributed else self.params.n_estimators

    def _bin(self, X, Xv):
        # Plain DMatrix, as for one horizon: training bins it (the hist quantiles, from X alone) and
        # keeps the bins in it, so the next horizon's booster reuses them; a QuantileDMatrix gave
        # the same forecasts here but goes through another sketch, so it is not used.
        if self.params.distributed:  # the workers bin their own rows
            return None
        return xgb.DMatrix(X, nthread=self.params.nthread), xgb.DMatrix(Xv, nthread=self.params.nthread)

    def _fit_one(self, X, y, Xv, yv, seed, bar=None, binned=None):
        p = self.params
        task = ({"objective": "multi:softprob", "num_class": 3, "eval_metric": "mlogloss"} if self.classifier
                else {"objective": "reg:squarederror", "eval_metric": "rmse"})
        params = {**task, "eta": p.learning_rate, "max_depth": p.max_depth, "min_child_weight": p.min_child_weight,
                  "subsample": p.subsample, "colsample_bytree": p.colsample_bytree, "lambda": p.reg_lambda,
                  "nthread": p.nthread, "seed": seed, "tree_method": "hist", "device": p.device}
        if p.distributed:
            # training-only code: a bundle that serves this model never loads it
            from alphafactory.models.distributed import need_client, train_xgboost

            booster, curves = train_xgboost(need_client(self.client, "boosting.xgboost"), params, X, y, Xv, yv,
                                            p.n_estimators, p.early_stopping_rounds)
        else:
            if binned is None:
                dtrain, dval = xgb.DMatrix(X, y, nthread=p.nthread), xgb.DMatrix(Xv, yv, nthread=p.nthread)
            else:  # this model's bins of X and Xv, shared by its horizons (PerHorizonModel._bin)
                dtrain, dval = binned
                dtrain.set_label(y)
                dval.set_label(yv)
            curves = {}
            callbacks = [_Advance(bar)] if bar is not None and not bar.disable else []
            on_ic = p.early_stopping_metric == "ic" and not self.classifier
            if on_ic:  # rmse still recorded (the curves); the stop watches the val IC, higher better
                callbacks.append(xgb.callback.EarlyStopping(rounds=p.early_stopping_rounds, metric_name="ic",
                                                            data_name="val", maximize=True))
            booster = xgb.train(
                params, dtrain, num_boost_round=p.n_estimators, evals=[(dtrain, "train"), (dval, "val")],
                early_stopping_rounds=None if on_ic else p.early_stopping_rounds, evals_result=curves,
                verbose_eval=False, custom_metric=_ic_metric if on_ic else None, callbacks=callbacks or None,
            )
        # Keep only the trees up to the best iteration, so saved and in-memory models agree.
        booster = booster[: booster.best_iteration + 1]
        if self.classifier:
            return booster, {"train": curves["train"]["mlogloss"], "val": curves["val"]["mlogloss"]}
        def sq(c):  # rmse → mse, the same scale as the other families
            return [v * v for v in c]

        return booster, {"train": sq(curves["train"]["rmse"]), "val": sq(curves["val"]["rmse"])}

    def _predict_one(self, est, X):
        return est.inplace_predict(X)

    def _best_iteration(self, est):
        return int(est.num_boosted_rounds())

    def _save_one(self, est, path: Path):
        est.save_model(str(path))

    def _load_one(self, path: Path):
        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster
