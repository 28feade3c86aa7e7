"""Ensembles of the base models, fit on their forecasts for the validation segment.

The base models never trained on val (they only early-stopped on it), and every ensemble sees the
same val rows of every member, so each combiner learns from out-of-sample forecasts. Members of
any input kind (tabular or sequence) are aligned on (symbol, timestamp, horizon); only rows that
every member forecast are used. Methods, one output "model" each:

* ``ensemble`` — stacking: a meta-learner (``blend.meta``: CatBoost or ridge) on the members'
  forecasts;
* ``voting`` — the plain mean of the members;
* ``blending`` — non-negative weights summing to 1 that minimise val MSE;
* ``caruana`` — greedy forward selection with replacement (Caruana et al. 2004) on val MSE.

Classification task: the members' forecasts are expected returns (see :mod:`alphafactory.models.base`),
so the combiners are the same. An ensemble's class probabilities ``p_short, p_neutral, p_long``
are the mixture of its members' probabilities with the combiner's weights made non-negative and
normalised (voting, blending and caruana weights already are; stacking: its positive ridge
coefficients; a CatBoost meta-learner has no weights, so an equal mixture).

Uncertainty: ``yhat_std = c_h * mean_m(member yhat_std)`` and Platt-scaled ``prob_up`` (see
:mod:`alphafactory.uncertainty`), calibrated on out-of-fold val forecasts: val is cut into
``oof_folds`` contiguous time blocks, each forecast by combiners fit on the other blocks with
the ``max(h)`` bars next to it purged, so the calibration never sees in-sample fits.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd

from alphafactory.config import Interval, NonEmpty, Unique, from_dict, to_dict
from alphafactory.errors import ConfigError
from alphafactory.io import Directory, atomic_dir
from alphafactory.labels import KEYS, PROBA_COLUMNS
from alphafactory.models.linear import ridge_solve
from alphafactory.models.registry import ENSEMBLES
from alphafactory.uncertainty import Calibration, apply_calibration, fit_calibration

METHODS = tuple(ENSEMBLES)  # ("ensemble", "voting", "blending", "caruana"): the registry lists them
MIN_VAL_ROWS = 50  # labelled val rows to fit a combiner on (and per out-of-fold block's training rows)
log = logging.getLogger("alphafactory")


@dataclass(frozen=True)
class MetaCatBoost:
    iterations: Annotated[int, Interval(ge=1)] = 300
    learning_rate: Annotated[float, Interval(gt=0)] = 0.03
    depth: Annotated[int, Interval(ge=1, le=16)] = 2
    l2_leaf_reg: Annotated[float, Interval(ge=0)] = 20.0
    thread_count: Annotated[int, Interval(ge=1)] = 2


@dataclass(frozen=True)
class BlendConfig:
    meta: Literal["catboost", "ridge"] = "ridge"  # the stacking meta-learner ("ensemble")
    methods: Annotated[tuple[Literal[METHODS], ...], NonEmpty(), Unique()] = METHODS
    ridge_alpha: Annotated[float, Interval(ge=0)] = 1.0  # in units of the forecasts' variance
    caruana_rounds: Annotated[int, Interval(ge=1)] = 25
    oof_folds: Annotated[int, Interval(ge=2)] = 5
    catboost: MetaCatBoost = field(default_factory=MetaCatBoost)


# -- combiners: fit(X (n, M), y (n,)) → state; predict(state, X) → (n,) --------------------------

def _fit(method: str, cfg: BlendConfig, X: np.ndarray, y: np.ndarray, seed: int,
         active: np.ndarray | None = None) -> Any:
    """Fit one combiner. ``active``: (M,) bool, the members it may use (the others, constant
    forecasts, get weight 0); all by default. The CatBoost meta-learner gets every column (a
    tree never splits on a constant one)."""
    catboost_meta = method == "ensemble" and cfg.meta != "ridge"
    if active is not None and not active.all() and not catboost_meta:
        weights = np.zeros(X.shape[1])
        if not active.any():  # nothing varies: forecast the mean
            return {"weights": weights.tolist(), "intercept": float(y.mean())}
        state = _fit(method, cfg, X[:, active], y, seed)
        weights[active] = state["weights"]
        return {"weights": weights.tolist(), "intercept": state["intercept"]}
    if method == "voting":
        return {"weights": [1.0 / X.shape[1]] * X.shape[1], "intercept": 0.0}
    if method == "blending":
        from scipy.optimize import nnls  # fitting only: loading a bundle does not import scipy

        w, _ = nnls(X, y)
        w = w / w.sum() if w.sum() > 0 else np.full(X.shape[1], 1.0 / X.shape[1])
        return {"weights": w.tolist(), "intercept": 0.0}
    if method == "caruana":
        counts = np.zeros(X.shape[1])
        current = np.zeros(len(y))
        for k in range(1, cfg.caruana_rounds + 1):
            errs = [np.mean(((current * (k - 1) + X[:, m]) / k - y) ** 2) for m in range(X.shape[1])]
            best = int(np.argmin(errs))
            counts[best] += 1
            current = (current * (k - 1) + X[:, best]) / k
        return {"weights": (counts / counts.sum()).tolist(), "intercept": 0.0}
    if cfg.meta == "ridge":
        # ridge_alpha is in units of the members' mean forecast variance: ridge_solve's penalty
        # is per row, so that variance is the alpha it takes
        alpha = cfg.ridge_alpha * float(np.mean(X.var(axis=0)))
        coef, intercept = ridge_solve(X, y[:, None], alpha)
        return {"weights": coef[:, 0].tolist(), "intercept": float(intercept[0])}
    import catboost as cb

    c = cfg.catboost
    m = cb.CatBoostRegressor(iterations=c.iterations, learning_rate=c.learning_rate, depth=c.depth,
                             l2_leaf_reg=c.l2_leaf_reg, thread_count=c.thread_count, random_seed=seed,
                             verbose=False, allow_writing_files=False)
    return m.fit(X, y)


def _predict(state: Any, X: np.ndarray) -> np.ndarray:
    if isinstance(state, dict):
        return X @ np.asarray(state["weights"]) + state["intercept"]
    return state.predict(X)


def mixture_weights(state: Any, n_members: int) -> np.ndarray:
    """Non-negative weights summing to 1 with which an ensemble mixes its members' class
    probabilities: the combiner's weights clipped at 0 (equal if none is positive or the
    combiner has no weights)."""
    w = np.clip(np.asarray(state["weights"], np.float64), 0, None) if isinstance(state, dict) else np.zeros(n_members)
    return w / w.sum() if w.sum() > 0 else np.full(n_members, 1.0 / n_members)


def wide(preds: pd.DataFrame, segment: str, horizon: int, members: list[str],
         value: str = "yhat") -> pd.DataFrame:
    """(symbol, timestamp) rows × one column per member, rows every member forecast."""
    p = preds[(preds["segment"] == segment) & (preds["horizon"] == horizon)]
    missing = sorted(set(members) - set(p["model"]))
    if missing:
        raise ValueError(f"blend: no {segment} forecasts for horizon {horizon} from {missing}")
    w = p.pivot(index=KEYS, columns="model", values=value)[members]
    return w.dropna().sort_index()


def _oof_blocks(ts: np.ndarray, k: int, purge: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train mask, test mask) per contiguous block of distinct timestamps; rows within
    ``purge`` distinct timestamps of a block are left out of its training rows."""
    uniq = np.unique(ts)
    pos = np.searchsorted(uniq, ts)
    edges = np.linspace(0, len(uniq), k + 1).astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        test = (pos >= a) & (pos < b)
        train = (pos < a - purge) | (pos >= b + purge)
        out.append((train, test))
    return out


class Stacker:
    """Per-horizon ensembles over base forecasts: ``fit(preds, labels)``, ``predict(preds, seg)``."""

    def __init__(self, cfg: BlendConfig, members: list[str], horizons: tuple[int, ...], seed: int = 0):
        self.cfg, self.members, self.horizons, self.seed = cfg, list(members), tuple(horizons), seed

    def fit(self, preds: pd.DataFrame, labels: pd.DataFrame) -> Stacker:
        """preds: long member forecasts with ``yhat_std``; labels: symbol, timestamp, y_h{h}."""
        self.models_: dict[str, dict[int, Any]] = {m: {} for m in self.cfg.methods}
        self.calibration_: dict[str, Calibration] = {}
        lab = labels.set_index(KEYS)
        oof: dict[str, list] = {m: [] for m in self.cfg.methods}
        for h in self.horizons:
            w = wide(preds, "val", h, self.members)
            s = wide(preds, "val", h, self.members, "yhat_std").reindex(w.index)
            y = lab[f"y_h{h}"].reindex(w.index).to_numpy()
            ok = ~np.isnan(y)
            if ok.sum() < MIN_VAL_ROWS:
                raise ConfigError(f"blend: only {ok.sum()} labelled val rows at horizon {h}; need >= "
                                  f"{MIN_VAL_ROWS}: give the panel more bars or raise split.val_frac")
            X, y, base = w.to_numpy()[ok], y[ok], s.to_numpy()[ok].mean(1)
            ts = w.index.get_level_values("timestamp").to_numpy()[ok]
            active = self._active_members(X, h)
            for method in self.cfg.methods:
                self.models_[method][h] = _fit(method, self.cfg, X, y, self.seed + h, active)
                pred = np.full(len(y), np.nan)
                for tr, te in _oof_blocks(ts, self.cfg.oof_folds, max(self.horizons)):
                    if tr.sum() >= max(10, 3 * active.sum()):  # else no out-of-fold forecast here
                        pred[te] = _predict(_fit(method, self.cfg, X[tr], y[tr], self.seed + h,
                                                 active & (np.ptp(X[tr], axis=0) > 0)), X[te])
                oof[method].append((h, pred, y, base))
        for method, parts in oof.items():
            try:
                cals = [fit_calibration(p[:, None], yy[:, None], b / np.sqrt(h), (h,)) for h, p, yy, b in parts]
            except ValueError as e:  # too few out-of-fold forecasts: val is too short for its purge
                raise ConfigError(f"blend: {method}: {e} out of fold ({len(np.unique(ts))} val timestamps in "
                                  f"blend.oof_folds={self.cfg.oof_folds} blocks, each purged by "
                                  f"{max(self.horizons)} bars): give the panel more bars, raise split.val_frac "
                                  f"or lower blend.oof_folds") from None
            self.calibration_[method] = Calibration(
                self.horizons, *(tuple(getattr(c, f)[0] for c in cals) for f in ("scale", "alpha", "beta")))
        self.oof_ = oof
        return self

    def _active_members(self, X: np.ndarray, h: int) -> np.ndarray:
        """(M,) bool: the members whose val forecasts at horizon ``h`` vary. A constant forecast
        (an early-stopped booster that kept one tree, on a small panel) carries no information
        and makes the stacking system singular: it gets weight 0 in every method, with a log line."""
        active = np.ptp(X, axis=0) > 0
        dropped = [m for m, a in zip(self.members, active, strict=True) if not a]
        if dropped:
            log.info("blend: h%d: %s left out of every method: constant val forecasts", h, ", ".join(dropped))
        if not active.any():
            raise ConfigError(f"blend: every base model forecasts a constant on the {len(X)} val rows at "
                              f"horizon {h}; the panel is too small to train on (more bars, or a larger "
                              f"split.val_frac)")
        return active

    def predict(self, preds: pd.DataFrame, segment: str) -> pd.DataFrame:
        """Long forecasts of every method for one segment of ``preds`` (same columns as the
        members' predictions: symbol, timestamp, segment, model, horizon, yhat, yhat_std, prob_up)."""
        out = []
        has_proba = all(c in preds.columns for c in PROBA_COLUMNS)
        for h in self.horizons:
            w = wide(preds, segment, h, self.members)
            base = wide(preds, segment, h, self.members, "yhat_std").reindex(w.index).to_numpy().mean(1)
            P = None
            if has_proba:  # (n, M, 3) member class probabilities
                P = np.stack([wide(preds, segment, h, self.members, c).reindex(w.index).to_numpy()
                              for c in PROBA_COLUMNS], axis=-1)
            for method in self.cfg.methods:
                cols = self._blend(method, h, w.to_numpy(), base, P)
                out.append(pd.DataFrame({
                    "symbol": w.index.get_level_values(0), "timestamp": w.index.get_level_values(1),
                    "segment": segment, "model": method, "horizon": h, **cols}))
        return pd.concat(out, ignore_index=True)

    def predict_arrays(self, yhat: np.ndarray, std: np.ndarray, proba: np.ndarray | None = None
                       ) -> dict[str, dict[str, np.ndarray]]:
        """:meth:`predict` on arrays, for rows already aligned (one forecast bar per row, every
        member): the same numbers, bit for bit, without building and pivoting a long table (the
        fixed cost of a forecast for a few symbols).

        yhat, std: (n, H, M) members' forecasts and calibrated standard deviations (members in
        ``self.members`` order, horizons in ``self.horizons`` order); proba: (n, H, M, 3) class
        probabilities or None. Returns, per method, (n, H) ``yhat``, ``yhat_std``, ``prob_up``
        (and the class columns with ``proba``), NaN on the rows where a member's forecast is NaN
        (the rows :meth:`predict` leaves out)."""
        n, H, M = yhat.shape
        if (H, M) != (len(self.horizons), len(self.members)) or std.shape != yhat.shape:
            raise ValueError(f"blend: member forecasts of shape {yhat.shape} and {std.shape}; expected "
                             f"(n, {len(self.horizons)}, {len(self.members)}) each")
        out: dict[str, dict[str, np.ndarray]] = {}
        for j, h in enumerate(self.horizons):
            # The rows and the (rows, members) C-ordered float matrices that wide() gives predict.
            ok = np.flatnonzero(~np.isnan(yhat[:, j, :]).any(axis=1))
            X = np.ascontiguousarray(yhat[ok, j, :])
            base = np.ascontiguousarray(std[ok, j, :]).mean(1)
            P = None if proba is None else np.ascontiguousarray(proba[ok, j])
            for method in self.cfg.methods:
                cols = self._blend(method, h, X, base, P)
                dest = out.setdefault(method, {c: np.full((n, H), np.nan) for c in cols})
                for c, v in cols.items():
                    dest[c][ok, j] = v
        return out

    def _blend(self, method: str, h: int, X: np.ndarray, base: np.ndarray, P: np.ndarray | None
               ) -> dict[str, np.ndarray]:
        """One method at horizon ``h``: X (n, M) member forecasts, base (n,) their mean standard
        deviation, P (n, M, 3) class probabilities or None -> (n,) yhat, yhat_std, prob_up (and
        the class columns)."""
        yhat = _predict(self.models_[method][h], X)
        j = self.horizons.index(h)
        cal = self.calibration_[method]
        one = Calibration((h,), (cal.scale[j],), (cal.alpha[j],), (cal.beta[j],))
        std, prob = apply_calibration(one, yhat[:, None], base / np.sqrt(h))
        cols = {"yhat": yhat, "yhat_std": std[:, 0], "prob_up": prob[:, 0]}
        if P is not None:
            mix = np.einsum("nmk,m->nk", P, mixture_weights(self.models_[method][h], len(self.members)))
            cols.update({c: mix[:, k] for k, c in enumerate(PROBA_COLUMNS)})
        return cols

    def save(self, directory: str | Path) -> None:
        from alphafactory.models.catboost_model import save_cbm

        with atomic_dir(directory) as tmp:
            state: dict[str, dict[str, Any]] = {}
            for method, per_h in self.models_.items():
                state[method] = {}
                for h, m in per_h.items():
                    if isinstance(m, dict):
                        state[method][str(h)] = m
                    else:
                        save_cbm(m, tmp / f"{method}_h{h}.cbm")
                        state[method][str(h)] = {"cbm": f"{method}_h{h}.cbm"}
            manifest = {"format_version": 2, "config": to_dict(self.cfg), "members": self.members,
                        "horizons": list(self.horizons), "seed": self.seed, "state": state,
                        "calibration": {m: c.to_dict() for m, c in self.calibration_.items()}}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path | Directory) -> Stacker:
        """Rebuild a saved blender; ``directory``: a path or a :class:`~alphafactory.io.Directory`
        (a bundle's verified files) through which every file is read."""
        files = directory if isinstance(directory, Directory) else Directory(directory)
        man = files.read_json("manifest.json")
        if not isinstance(man, dict) or man.get("format_version") != 2:
            found = man.get("format_version") if isinstance(man, dict) else man
            raise files.error(f"{files}/manifest.json: format_version {found!r}, expected 2")
        obj = cls(from_dict(BlendConfig, man["config"], "blend"), man["members"], tuple(man["horizons"]), man["seed"])
        obj.models_ = {}
        for method, per_h in man["state"].items():
            obj.models_[method] = {}
            for h, s in per_h.items():
                if "cbm" in s:
                    obj.models_[method][int(h)] = files.load(s["cbm"], _load_cbm, "CatBoost model")
                else:
                    obj.models_[method][int(h)] = s
        obj.calibration_ = {m: Calibration.from_dict(c) for m, c in man["calibration"].items()}
        return obj


def _load_cbm(path: Path) -> Any:
    import catboost as cb

    m = cb.CatBoostRegressor()
    m.load_model(str(path), format="cbm")
    return m
