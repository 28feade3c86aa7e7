"""Support vector regression, one per horizon: linear (``kind: linear``) or RBF kernel
(``kind: rbf``); fitted with scikit-learn, saved as plain arrays in ``h<k>.npz`` and predicted
with numpy, so loading runs no code and needs no scikit-learn object.

Per horizon, on that horizon's labelled train rows:
- the features are standardised on those rows (NaN-aware; NaN → 0 after scaling, clipped to
  ±``clip``), and the target is standardised too, so ``epsilon`` is in units of the target's
  train standard deviation whatever the horizon;
- ``linear``: ``LinearSVR`` (epsilon-insensitive loss, liblinear), all train rows; saved: scaler,
  coefficients, intercept;
- ``rbf``: kernel ``SVR`` on at most ``max_rows`` train rows, a uniform random subset drawn with
  the model's seed when there are more (kernel SVR costs O(n²) memory and O(n²–n³) time); saved:
  scaler, support vectors (already scaled), dual coefficients, intercept and the numeric gamma.

Like ridge, SVR has no iterations to early-stop: ``val`` is scored for the history, never fitted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.base import PerHorizonModel
from alphafactory.models.linear import Scaler, load_arrays, mse, save_arrays

_CHUNK = 2048  # rows per block of the RBF kernel: (2048, n_sv) float64 at a time


@dataclass(frozen=True)
class SVMParams:
    kind: Literal["linear", "rbf"] = "linear"
    # inverse regularisation, as in scikit-learn (a sum over rows, not a mean)
    C: Annotated[float, Interval(gt=0)] = 0.01
    epsilon: Annotated[float, Interval(ge=0)] = 0.1  # half-width of the loss-free tube, in target standard deviations
    # rbf: kernel width on standardised features; null: 1 / (F · var(Z))
    gamma: Annotated[float | None, Interval(gt=0)] = None
    max_rows: Annotated[int, Interval(ge=2)] = 3000  # rbf: train rows used at most
    max_iter: int = 5000  # linear: liblinear iterations; rbf: -1 = until tol
    tol: Annotated[float, Interval(gt=0)] = 1e-4
    # standardised features are clipped to ±clip; null: no clipping
    clip: Annotated[float | None, Interval(gt=0)] = 5.0

    def validate(self) -> None:
        if self.max_iter < 1 and not (self.kind == "rbf" and self.max_iter == -1):
            raise ConfigError(f"classical.svm.max_iter: got {self.max_iter}, expected >= 1 (or -1 with kind rbf)")


def rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma · |a - b|²) for A: (n, F), B: (m, F) → (n, m) float64."""
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.exp(-gamma * np.maximum(d2, 0.0))


def predict_arrays(state: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Forecast (n,) in target units from the saved arrays of one horizon; X: (n, F) raw features."""
    clip = state["clip"].reshape(-1)  # (1,) or (0,): no clipping
    Z = Scaler(state["mean"], state["scale"], float(clip[0]) if clip.size else None).transform(X)
    if "coef" in state:  # linear
        z = Z @ state["coef"] + state["intercept"]
    else:  # rbf: sum_i dual_i · k(sv_i, x) + b, in blocks of rows to bound memory
        sv, dual, gamma = state["support_vectors"], state["dual_coef"], float(state["gamma"])
        z = np.concatenate([rbf_kernel(Z[s:s + _CHUNK], sv, gamma) @ dual
                            for s in range(0, len(Z), _CHUNK)] or [np.zeros(0)]) + state["intercept"]
    return z * state["y_scale"] + state["y_mean"]


def fit_svr(X: np.ndarray, y: np.ndarray, p: SVMParams, seed: int) -> tuple[Any, dict[str, np.ndarray]]:
    """Fit one SVR on (n, F) features and (n,) labelled targets. Returns the scikit-learn estimator
    (for tests) and the plain arrays that are saved and predicted from."""
    from sklearn.svm import SVR, LinearSVR

    scaler = Scaler.fit(X, p.clip)
    y_mean, y_sd = float(np.mean(y)), float(np.std(y))
    y_scale = y_sd if y_sd > 0 else 1.0
    Z, t = scaler.transform(X), (np.asarray(y, np.float64) - y_mean) / y_scale
    state: dict[str, np.ndarray] = {**scaler.arrays(), "clip": np.asarray([] if p.clip is None else p.clip),
                                    "y_mean": np.asarray(y_mean), "y_scale": np.asarray(y_scale)}
    if p.kind == "linear":
        est = LinearSVR(C=p.C, epsilon=p.epsilon, loss="epsilon_insensitive", dual=True, tol=p.tol,
                        max_iter=p.max_iter, random_state=seed).fit(Z, t)
        state.update(coef=est.coef_.astype(np.float64), intercept=np.asarray(float(est.intercept_[0])))
        return est, state
    rows = np.arange(len(Z))
    if len(Z) > p.max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(Z), p.max_rows, replace=False))
    gamma = p.gamma if p.gamma is not None else 1.0 / (Z.shape[1] * max(float(Z[rows].var()), 1e-12))
    est = SVR(kernel="rbf", C=p.C, epsilon=p.epsilon, gamma=gamma, tol=p.tol, max_iter=p.max_iter,
              cache_size=500).fit(Z[rows], t[rows])
    state.update(support_vectors=est.support_vectors_.astype(np.float64),
                 dual_coef=est.dual_coef_.reshape(-1).astype(np.float64),
                 intercept=np.asarray(float(est.intercept_[0])), gamma=np.asarray(gamma),
                 rows_used=np.asarray(len(rows)))
    return est, state


@register("svm", family="classical", input_kind="tabular", tasks=("regression",))
class SVMModel(PerHorizonModel):
    Params = SVMParams
    packages = ("scikit-learn",)
    suffix = ".npz"

    def _fit_one(self, X, y, Xv, yv, seed, bar=None, binned=None):  # no rounds, no bar, no bins
        _, state = fit_svr(X, y, self.params, seed)
        hist = {"train": [mse(predict_arrays(state, X), y)], "val": [mse(predict_arrays(state, Xv), yv)]}
        return state, hist

    def _predict_one(self, est, X):
        return predict_arrays(est, X)

    def _save_one(self, est, path: Path):
        save_arrays(path, est)

    def _load_one(self, path: Path):
        return load_arrays(path)
