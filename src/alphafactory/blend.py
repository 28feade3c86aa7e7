"""Stacking: a meta-learner fit on the base models' forecasts for the validation segment.

The base models never trained on val (they only early-stopped on it), and every base model is
stacked on the same val rows, so the meta-learner sees forecasts made out of sample. Base models
of any input kind are aligned on (symbol, timestamp, horizon); the meta-learner uses only rows
that every base model forecast.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from alphafactory.config import from_dict, to_dict
from alphafactory.io import atomic_dir

KEYS = ["symbol", "timestamp", "horizon"]


@dataclass(frozen=True)
class MetaCatBoost:
    iterations: int = 300
    learning_rate: float = 0.03
    depth: int = 2
    l2_leaf_reg: float = 20.0
    thread_count: int = 2


@dataclass(frozen=True)
class BlendConfig:
    meta: Literal["catboost", "ridge", "mean"] = "catboost"
    ridge_alpha: float = 1.0  # in units of the base forecasts' variance
    catboost: MetaCatBoost = field(default_factory=MetaCatBoost)


def wide(preds: pd.DataFrame, segment: str, horizon: int, members: list[str]) -> pd.DataFrame:
    """(symbol, timestamp) rows × one forecast column per member, rows every member forecast."""
    p = preds[(preds["segment"] == segment) & (preds["horizon"] == horizon)]
    missing = sorted(set(members) - set(p["model"]))
    if missing:
        raise ValueError(f"blend: no {segment} forecasts for horizon {horizon} from {missing}")
    w = p.pivot(index=["symbol", "timestamp"], columns="model", values="yhat")[members]
    return w.dropna().sort_index()


class Stacker:
    """Per-horizon meta-learner over base forecasts. ``fit(val_preds, y)``, ``predict(preds)``."""

    def __init__(self, cfg: BlendConfig, members: list[str], horizons: tuple[int, ...], seed: int = 0):
        self.cfg, self.members, self.horizons, self.seed = cfg, list(members), tuple(horizons), seed

    def fit(self, preds: pd.DataFrame, labels: pd.DataFrame) -> "Stacker":
        """labels: symbol, timestamp, y_h{h} columns."""
        self.models_ = {}
        lab = labels.set_index(["symbol", "timestamp"])
        for h in self.horizons:
            w = wide(preds, "val", h, self.members)
            y = lab[f"y_h{h}"].reindex(w.index).to_numpy()
            ok = ~np.isnan(y)
            if ok.sum() < 20:
                raise ValueError(f"blend: only {ok.sum()} labelled val rows for horizon {h}; need >= 20")
            self.models_[h] = self._fit_one(w.to_numpy()[ok], y[ok], self.seed + h)
        return self

    def _fit_one(self, X: np.ndarray, y: np.ndarray, seed: int):
        if self.cfg.meta == "mean":
            return None
        if self.cfg.meta == "ridge":
            # Closed-form ridge with intercept; the penalty scales with the forecasts' variance.
            mu, ym = X.mean(0), y.mean()
            Xc = X - mu
            lam = self.cfg.ridge_alpha * np.trace(Xc.T @ Xc) / X.shape[1]
            coef = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ (y - ym))
            return {"coef": coef.tolist(), "intercept": float(ym - mu @ coef)}
        import catboost as cb

        c = self.cfg.catboost
        m = cb.CatBoostRegressor(iterations=c.iterations, learning_rate=c.learning_rate, depth=c.depth,
                                 l2_leaf_reg=c.l2_leaf_reg, thread_count=c.thread_count, random_seed=seed,
                                 verbose=False, allow_writing_files=False)
        return m.fit(X, y)

    def _predict_one(self, h: int, X: np.ndarray) -> np.ndarray:
        m = self.models_[h]
        if self.cfg.meta == "mean":
            return X.mean(1)
        if self.cfg.meta == "ridge":
            return X @ np.asarray(m["coef"]) + m["intercept"]
        return m.predict(X)

    def predict(self, preds: pd.DataFrame, segment: str) -> pd.DataFrame:
        out = []
        for h in self.horizons:
            w = wide(preds, segment, h, self.members)
            out.append(pd.DataFrame({"symbol": w.index.get_level_values(0), "timestamp": w.index.get_level_values(1),
                                     "segment": segment, "model": "ensemble", "horizon": h,
                                     "yhat": self._predict_one(h, w.to_numpy())}))
        return pd.concat(out, ignore_index=True)

    def save(self, directory: str | Path) -> None:
        with atomic_dir(directory) as tmp:
            state = {}
            for h, m in self.models_.items():
                if self.cfg.meta == "catboost":
                    from alphafactory.models.catboost_model import save_cbm

                    save_cbm(m, tmp / f"h{h}.cbm")
                    state[str(h)] = f"h{h}.cbm"
                else:
                    state[str(h)] = m
            manifest = {"meta": self.cfg.meta, "config": to_dict(self.cfg), "members": self.members,
                        "horizons": list(self.horizons), "seed": self.seed, "state": state}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "Stacker":
        directory = Path(directory)
        man = json.loads((directory / "manifest.json").read_text())
        obj = cls(from_dict(BlendConfig, man["config"], "blend"), man["members"], tuple(man["horizons"]), man["seed"])
        obj.models_ = {}
        for h in obj.horizons:
            s = man["state"][str(h)]
            if obj.cfg.meta == "catboost":
                import catboost as cb

                m = cb.CatBoostRegressor()
                m.load_model(str(directory / s), format="cbm")
                obj.models_[h] = m
            else:
                obj.models_[h] = s
        return obj
