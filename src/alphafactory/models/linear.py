"""Ridge regression in closed form, all horizons in one solve, and its classification twin,
L2-penalised multinomial logistic regression; both saved as plain JSON.

Also home of the helpers the classical (non-tree) families share: the train-only feature scaler
and a byte-deterministic ``.npz`` writer (``svm.py`` imports them from here).

Closed-form models have no iterations, so there is nothing to early-stop: ``val`` is never used
for fitting, only scored for the training history. Val stays out of sample for the stacking
meta-learner, exactly as for the early-stopped families.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from alphafactory.config import Interval
from alphafactory.io import Directory, atomic_path
from alphafactory.models import register
from alphafactory.models.base import XY, Model, standardize

# -- shared by the classical families --------------------------------------------------------------
# Block sizes of the float64 working copies (memory, issue 19): columns for the scaler's
# statistics (more than one: a single column would be summed pairwise, not row by row), rows for
# everything elementwise or row-wise.
_COL_BLOCK = 16
_ROW_BLOCK = 8192  # rows: each float64 temporary of a block (standardize makes ~5) is 8192 x F x 8 bytes

@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation fitted on train rows only, NaN-aware.

    mean, scale: (F,) float64. A constant or all-NaN feature gets scale 1 (and mean 0 if all NaN),
    so it maps to 0 instead of dividing by zero."""

    mean: np.ndarray
    scale: np.ndarray
    clip: float | None = None

    @classmethod
    def fit(cls, X: np.ndarray, clip: float | None = None) -> Scaler:
        """X: (n, F) train rows, NaN allowed (any float dtype; the statistics are float64).

        Computed on blocks of ``_COL_BLOCK`` columns, so the float64 working copies are of one
        block, not of the whole matrix. An axis-0 reduction of a C-ordered block adds the rows in
        the same order as one of the whole matrix, so the mean and scale are bit for bit those of
        the one-block computation (tests/test_linear.py)."""
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"scaler: expected a non-empty (n, F) matrix, got shape {X.shape}")
        n_inf = sum(int(np.isinf(X[:, j:j + _COL_BLOCK]).sum()) for j in range(0, X.shape[1], _COL_BLOCK))
        if n_inf:
            raise ValueError(f"scaler: {n_inf} infinite feature values; expected finite or NaN")
        mean, std = np.empty(X.shape[1]), np.empty(X.shape[1])
        for j in range(0, X.shape[1], _COL_BLOCK):
            B = np.asarray(X[:, j:j + _COL_BLOCK], np.float64)  # (n, <= _COL_BLOCK), C-ordered copy
            seen = (~np.isnan(B)).any(0)  # all-NaN columns get mean 0, scale 1 (no warning)
            B = np.where(seen, B, 0.0)
            mean[j:j + _COL_BLOCK] = np.nanmean(B, 0)
            std[j:j + _COL_BLOCK] = np.nanstd(B, 0)
        return cls(mean, np.where(std > 0, std, 1.0), clip)

    def transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n, F) raw → (n, F) float64 z-scores, NaN → 0 (the train mean), clipped to ±clip
        (:func:`alphafactory.models.base.standardize`). Elementwise, so it runs on blocks of
        ``_ROW_BLOCK`` rows written into ``out`` ((n, >= F) float64, its first F columns; new if
        None): no float64 copy of the whole input besides the result."""
        X = np.asarray(X)
        n, F = X.shape
        if out is None:
            out = np.empty((n, F))
        for i in range(0, n, _ROW_BLOCK):
            Z = standardize(np.asarray(X[i:i + _ROW_BLOCK], np.float64), self.mean, self.scale, self.clip)
            if self.clip is None and np.isinf(Z).any():
                raise ValueError(f"scaler: {int(np.isinf(Z).sum())} infinite feature values; expected finite "
                                 "or NaN (or set clip)")
            out[i:i + _ROW_BLOCK, :F] = Z
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale}


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` atomically, byte-identical for identical
    arrays (``np.savez`` stamps the current time into the zip, which would make DVC see a change)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`save_arrays`; object arrays are refused (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error over the labelled entries of y (NaN skipped)."""
    ok = ~np.isnan(y)
    return float(np.mean((pred[ok] - y[ok]) ** 2)) if ok.any() else float("nan")


# -- ridge -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RidgeParams:
    alpha: Annotated[float, Interval(ge=0)] = 1.0  # penalty per labelled row, on standardised features (see RidgeModel)
    # standardised features are clipped to ±clip; null: no clipping
    clip: Annotated[float | None, Interval(gt=0)] = 5.0


def ridge_solve(Z: np.ndarray, Y: np.ndarray, alpha: float,
                transform: Callable[..., np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge with an unpenalised intercept, one column per target.

    Z: (n, F) float64 features (no NaN); Y: (n, H) targets, NaN where unlabelled. Target j
    minimises ``mean_i (y_ij - b0_j - z_i·b_j)² + alpha·|b_j|²`` over its labelled rows, so alpha
    does not depend on the number of rows. Targets labelled on the same rows share one solve with
    several right-hand sides. ``transform``: Z holds raw rows, and ``transform(rows, out=...)``
    (:meth:`Scaler.transform`) standardises them straight into the design matrix, so the only
    (rows, F + 1) float64 array is that matrix itself. Returns (coef (F, H), intercept (H,))."""
    n, F = Z.shape
    pen = np.ones(F + 1)
    pen[-1] = 0.0
    labelled = ~np.isnan(Y)  # (n, H)
    beta = np.empty((F + 1, Y.shape[1]))
    patterns, group = np.unique(labelled, axis=1, return_inverse=True)
    for g in range(patterns.shape[1]):
        rows, cols = patterns[:, g], np.flatnonzero(group.reshape(-1) == g)
        if rows.sum() < 2:
            raise ValueError(f"ridge: {rows.sum()} labelled train rows for target column(s) {cols.tolist()}; need >= 2")
        A = _design(Z, np.flatnonzero(rows), transform)  # (m, F+1): last column is the intercept
        G = A.T @ A + rows.sum() * alpha * np.diag(pen)
        rhs = A.T @ Y[rows][:, cols]
        del A
        try:
            beta[:, cols] = np.linalg.solve(G, rhs)
        except np.linalg.LinAlgError as e:
            raise ValueError(f"ridge: singular normal equations with alpha={alpha}; expected alpha > 0") from e
    return beta[:-1], beta[-1]


def _design(Z: np.ndarray, rows: np.ndarray, transform: Callable[..., np.ndarray] | None) -> np.ndarray:
    """(len(rows), F+1) C-ordered float64 ``[transform(Z[rows]), 1]``, filled block by block
    (the values and layout of ``np.hstack([Z, ones])[rows]``, so the solve is bit for bit the same)."""
    A = np.empty((len(rows), Z.shape[1] + 1))
    A[:, -1] = 1.0
    for i in range(0, len(rows), _ROW_BLOCK):
        part = Z[rows[i:i + _ROW_BLOCK]] if len(rows) < len(Z) else Z[i:i + _ROW_BLOCK]
        if transform is None:
            A[i:i + _ROW_BLOCK, :-1] = part
        else:
            transform(part, out=A[i:i + _ROW_BLOCK])
    return A


class LinearJSONModel(Model):
    """A linear model on :class:`Scaler`-standardised features, saved as one plain-JSON file
    (``FILE``): feature means and scales, ``coef_`` and ``intercept_`` of the ``_shapes`` the
    subclass declares (float64 round-trips exactly through JSON)."""

    FILE: str = ""

    def _shapes(self, n_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        raise NotImplementedError

    def _save_state(self, directory: Path) -> dict[str, Any]:
        state = {"mean": self.scaler_.mean.tolist(), "scale": self.scaler_.scale.tolist(),
                 "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}
        (directory / self.FILE).write_text(json.dumps(state) + "\n")
        return {"file": self.FILE}

    def _load_state(self, directory: Directory, state: dict[str, Any]) -> None:
        s = directory.read_json(state["file"])
        self.scaler_ = Scaler(np.asarray(s["mean"]), np.asarray(s["scale"]), self.params.clip)
        coef_shape, intercept_shape = self._shapes(len(self.scaler_.mean))
        self.coef_ = np.asarray(s["coef"], np.float64).reshape(coef_shape)
        self.intercept_ = np.asarray(s["intercept"], np.float64).reshape(intercept_shape)


@register("ridge", family="classical", input_kind="tabular", tasks=("regression",))
class RidgeModel(LinearJSONModel):
    """Linear regression on standardised, clipped features with an L2 penalty, solved exactly.

    The scaler is fitted on train rows (NaN-aware; a missing feature becomes 0, the train mean).
    Saved as ``ridge.json``: feature means and scales, coefficients (F, H) and intercepts (H,),
    as plain numbers (float64 round-trips exactly through JSON)."""

    Params = RidgeParams
    FILE = "ridge.json"

    def _fit(self, train: XY, val: XY) -> None:
        """Exact solve on ``train``; ``val`` is only scored for ``history_``, never fitted on."""
        Y = np.asarray(train.Y, np.float64).reshape(len(train.Y), -1)
        if Y.shape[1] != len(self.horizons):
            raise ValueError(f"ridge: Y has {Y.shape[1]} columns, expected one per horizon {self.horizons}")
        self.scaler_ = Scaler.fit(train.X, self.params.clip)
        self.coef_, self.intercept_ = ridge_solve(train.X, Y, self.params.alpha, self.scaler_.transform)
        ptr, pval = self._predict(train.X), self._predict(val.X)
        self.history_ = {f"h{h}": {"train": [mse(ptr[:, j], Y[:, j])], "val": [mse(pval[:, j], val.Y[:, j])]}
                         for j, h in enumerate(self.horizons)}

    def _predict(self, X: Any) -> np.ndarray:
        """Row block by row block: a (block, F) float64 copy at a time, not one of all of X (each
        output row is the same dot product either way)."""
        X = np.asarray(X)
        out = np.empty((len(X), self.coef_.shape[1]))
        for i in range(0, len(X), _ROW_BLOCK):
            out[i:i + _ROW_BLOCK] = self.scaler_.transform(X[i:i + _ROW_BLOCK]) @ self.coef_ + self.intercept_
        return out

    def _shapes(self, n_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (n_features, len(self.horizons)), (len(self.horizons),)


# -- logistic --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogisticParams:
    alpha: Annotated[float, Interval(gt=0)] = 0.1  # L2 penalty on the coefficients, added to the mean log loss per row
    # standardised features are clipped to ±clip; null: no clipping
    clip: Annotated[float | None, Interval(gt=0)] = 5.0
    max_iter: Annotated[int, Interval(ge=1)] = 500  # L-BFGS iterations per horizon
    tol: Annotated[float, Interval(gt=0)] = 1e-7  # L-BFGS gradient tolerance


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(proba: np.ndarray, k: np.ndarray) -> float:
    """Mean negative log-likelihood of class indices k (n,) under proba (n, K)."""
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(k)), k], 1e-15, 1.0)))) if len(k) else float("nan")


def logistic_solve(Z: np.ndarray, k: np.ndarray, alpha: float, max_iter: int, tol: float,
                   n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: minimise ``mean_i -log softmax(z_i·W + b)[k_i] +
    alpha/2·|W|²`` (intercept unpenalised) with L-BFGS from zero, which is deterministic.
    Z: (n, F) float64 features; k: (n,) class indices. Returns (W (F, K), b (K,))."""
    from scipy.optimize import minimize

    n, F = Z.shape
    onehot = np.eye(n_classes)[k]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:-n_classes].reshape(F, n_classes), theta[-n_classes:]
        logits = Z @ W + b
        logits -= logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits).sum(axis=1))
        loss = float(np.mean(lse - (logits * onehot).sum(axis=1))) + 0.5 * alpha * float((W * W).sum())
        G = (np.exp(logits - lse[:, None]) - onehot) / n  # (n, K)
        return loss, np.concatenate([(Z.T @ G + alpha * W).ravel(), G.sum(axis=0)])

    res = minimize(objective, np.zeros(F * n_classes + n_classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol})
    return res.x[:-n_classes].reshape(F, n_classes), res.x[-n_classes:]


@register("logistic", family="classical", input_kind="tabular", tasks=("classification",))
class LogisticModel(LinearJSONModel):
    """Multinomial (SHORT/NEUTRAL/LONG) logistic regression per horizon, on the same train-only
    standardised, clipped features as ridge. Saved as ``logistic.json``: feature means and
    scales, coefficients (H, F, 3) and intercepts (H, 3) as plain numbers."""

    Params = LogisticParams
    packages = ("scipy",)
    FILE = "logistic.json"

    def _fit(self, train: XY, val: XY) -> None:
        """L-BFGS on ``train``; ``val`` is only scored for ``history_``, never fitted on."""
        p = self.params
        self.scaler_ = Scaler.fit(train.X, p.clip)
        Z = self.scaler_.transform(train.X)
        coef, intercept, self.history_ = [], [], {}
        for j in range(len(self.horizons)):
            ok = ~np.isnan(train.Y[:, j])
            W, b = logistic_solve(Z[ok], train.Y[ok, j].astype(np.int64), p.alpha, p.max_iter, p.tol)
            coef.append(W)
            intercept.append(b)
        self.coef_, self.intercept_ = np.stack(coef), np.stack(intercept)
        ptr, pval = self._predict(train.X), self._predict(val.X)
        for j, h in enumerate(self.horizons):
            scores = []
            for P, Y in ((ptr, train.Y), (pval, val.Y)):
                ok = ~np.isnan(Y[:, j])
                scores.append([log_loss(P[ok, j], Y[ok, j].astype(np.int64))])
            self.history_[f"h{h}"] = {"train": scores[0], "val": scores[1]}

    def _predict(self, X: Any) -> np.ndarray:
        Z = self.scaler_.transform(X)
        return softmax(np.einsum("nf,hfk->nhk", Z, self.coef_) + self.intercept_)

    def _shapes(self, n_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (len(self.horizons), n_features, 3), (len(self.horizons), 3)
