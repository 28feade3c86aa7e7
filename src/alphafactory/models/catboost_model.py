"""CatBoost, one model per horizon (RMSE regression or 3-class MultiClass), early-stopped on val;
saved as CatBoost .cbm."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import catboost as cb
import numpy as np

from alphafactory.models import register
from alphafactory.models.base import PerHorizonModel


def save_cbm(model: cb.CatBoost, path: Path | str) -> None:
    """Save as .cbm without the wall-clock training time and random GUID CatBoost stamps into
    the metadata, so the same fit gives the same bytes (DVC then skips downstream stages)."""
    meta = model.get_metadata()
    for key in ("train_finish_time", "model_guid"):
        if key in meta:
            del meta[key]
    model.save_model(str(path), format="cbm")


@dataclass(frozen=True)
class CatBoostParams:
    iterations: int = 1000
    learning_rate: float = 0.03
    depth: int = 4
    l2_leaf_reg: float = 10.0
    early_stopping_rounds: int = 50
    thread_count: int = 2
    task_type: str = "CPU"  # "GPU" on a GPU machine


@register("catboost", family="boosting", input_kind="tabular", tasks=("regression", "classification"))
class CatBoostModel(PerHorizonModel):
    Params = CatBoostParams
    packages = ("catboost",)
    suffix = ".cbm"

    def _fit_one(self, X, y, Xv, yv, seed):
        p = self.params
        kind, loss = (cb.CatBoostClassifier, "MultiClass") if self.classifier else (cb.CatBoostRegressor, "RMSE")
        model = kind(
            iterations=p.iterations, learning_rate=p.learning_rate, depth=p.depth,
            l2_leaf_reg=p.l2_leaf_reg, thread_count=p.thread_count, task_type=p.task_type,
            random_seed=seed, loss_function=loss, use_best_model=True,
            od_type="Iter", od_wait=p.early_stopping_rounds, verbose=False,
            allow_writing_files=False,
        )
        if self.classifier:  # integer classes 0/1/2: probability columns in that order
            model.fit(X, y.astype(np.int64), eval_set=(Xv, yv.astype(np.int64)))
            ev = model.get_evals_result()
            return model, {"train": ev["learn"][loss], "val": ev["validation"][loss]}
        model.fit(X, y, eval_set=(Xv, yv))
        ev = model.get_evals_result()
        sq = lambda c: [v * v for v in c]
        return model, {"train": sq(ev["learn"]["RMSE"]), "val": sq(ev["validation"]["RMSE"])}

    def _predict_one(self, est, X):
        if self.classifier:
            return est.predict(X, prediction_type="Probability", thread_count=self.params.thread_count)
        return est.predict(X, thread_count=self.params.thread_count)

    def _best_iteration(self, est):
        return int(est.get_best_iteration())

    def _save_one(self, est, path: Path):
        save_cbm(est, path)

    def _load_one(self, path: Path):
        model = cb.CatBoostClassifier() if self.classifier else cb.CatBoostRegressor()
        model.load_model(str(path), format="cbm")
        return model
