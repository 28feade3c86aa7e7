"""The contract every forecaster satisfies, and the one every trainable model family implements.

:class:`Forecaster` is what a caller forecasts with: a pooled :class:`Model`, a per-symbol model
(:class:`~alphafactory.models.per_symbol.PerSymbolModel`) and an exported one run by ONNX Runtime
(:class:`~alphafactory.serving.onnx_runtime.OnnxModel`) all have the same ``predict(X,
symbols=None)``, ``predict_proba(X, symbols=None)`` and ``expected_return(proba, symbols=None)``,
and say what a caller needs to know (``name``, ``family``, ``input_kind``, ``horizons``, ``task``,
``lookback``, ``symbols``) as attributes. A forecaster with one model for every row ignores
``symbols``; one with a model per symbol routes each row by it.

:class:`Model` (scikit-learn style) adds training: ``__init__`` only stores and validates
hyperparameters; ``fit(train, val)`` returns ``self``; fitted state ends in ``_``; ``predict(X)``
returns ``(n, H)``, one column per horizon, and raises :class:`NotFittedError` before ``fit``.
:func:`alphafactory.models.save` writes a model's native artifacts (``_save_state``) plus
``manifest.json``; :func:`alphafactory.models.load` rebuilds any registered model from them (no
pickle: loading runs no code), see :mod:`alphafactory.models.persist`.

Tasks (``task=`` at construction, one of the family's registered ``tasks``):

* ``regression``: ``Y`` holds the targets; ``predict`` returns them.
* ``classification``: ``Y`` holds class indices 0/1/2 (SHORT/NEUTRAL/LONG, NaN where unlabelled)
  and ``R`` the targets in return units. A family's ``_predict`` returns class probabilities
  ``(n, H, 3)``; :meth:`Forecaster.predict_proba` returns them and :meth:`Forecaster.predict` turns
  them into a return forecast ``sum_k P(k) * mean train target of class k`` (per horizon), so a
  classifier is evaluated, calibrated and blended on the same scale as a regressor.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alphafactory.config import from_dict
from alphafactory.errors import ConfigError, NotFittedError
from alphafactory.io import Directory, ParquetRows
from alphafactory.labels import CLASS_NAMES
from alphafactory.progress import progress

TASKS = ("regression", "classification")
MANIFEST = "manifest.json"  # a saved model's description (see alphafactory.models.persist)
# Standardised features are clipped to ±CLIP by the PyTorch families (and their ONNX export).
CLIP = 5.0


def standardize(x: Any, mean: Any, std: Any, clip: float | None, xp: Any = np) -> Any:
    """The one feature-scaling rule: z-score ``(x - mean) / std``, NaN → 0 (the train mean), then
    clipped to ±``clip`` (None: not clipped; ±inf then stays).

    Written against the operations numpy and PyTorch share, so the same function scales numpy
    arrays (``xp=np``: the classical families' :class:`~alphafactory.models.linear.Scaler`, the
    PyTorch families' inputs) and traces into the ONNX graph of an exported network
    (``xp=torch``: :class:`~alphafactory.models.export.PortableNet`). x: (..., F); mean, std: (F,)
    of x's dtype; returns x's shape and dtype."""
    z = (x - mean) / std
    z = xp.where(xp.isnan(z), xp.zeros_like(z), z)
    return z if clip is None else xp.clip(z, -clip, clip)


def float_matrix(X: Any) -> np.ndarray:
    """X as a float32 array, or float64 if it is float64 (``features.dtype: float64``: the tree
    libraries then bin, and LightGBM splits, on the unrounded values)."""
    X = np.asarray(X)
    return X if X.dtype in (np.float32, np.float64) else X.astype(np.float32)


# What a booster's early stopping watches on val (``early_stopping_metric``): ``mse`` (the loss it
# fits) or ``ic``, the Pearson correlation of its val forecasts with the val targets (higher is
# better), the figure a forecast is judged by. docs/params.md measures both: ``mse`` stays the
# default (CV on the bundled data), and on wide panels the target, not the metric, mattered.
EARLY_STOPPING_METRICS = ("mse", "ic")


def pearson_ic(yhat: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of (n,) forecasts with (n,) targets, computed in float64: the pooled IC
    of :func:`alphafactory.evaluation.metrics.regression_metrics` (models never import evaluation),
    except that a constant side (a booster's first rounds, before any split) scores 0, not NaN,
    so early stopping can compare it."""
    a = np.asarray(yhat, np.float64).ravel()
    b = np.asarray(y, np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"pearson_ic: {len(a)} forecasts for {len(b)} targets")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)), -1.0, 1.0))


@dataclass(frozen=True)
class XY:
    """A training segment. X: (n, F) float32, or (n, L, F) windows for sequence models;
    Y: (n, H) float32 targets, NaN where a horizon has no label (classification: class indices
    0/1/2); R: (n, H) targets in return units, needed by the classification task only."""

    X: Any
    Y: np.ndarray
    R: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.X) != len(self.Y):
            raise ValueError(f"X has {len(self.X)} rows but Y has {len(self.Y)}")
        if self.R is not None and np.shape(self.R) != np.shape(self.Y):
            raise ValueError(f"R has shape {np.shape(self.R)} but Y has {np.shape(self.Y)}")


def check_classes(Y: np.ndarray, where: str, require_all: bool = True,
                  horizons: tuple[int, ...] | None = None) -> None:
    """Class-index targets: 0/1/2 or NaN; with ``require_all`` every horizon has all 3 classes."""
    Y = np.asarray(Y, np.float64)
    seen = Y[~np.isnan(Y)]
    bad = np.setdiff1d(np.unique(seen), [0.0, 1.0, 2.0])
    if bad.size:
        raise ValueError(f"{where}: class targets {bad[:5].tolist()}; expected class indices 0, 1, 2 "
                         "(SHORT, NEUTRAL, LONG) or NaN")
    if require_all:
        for j in range(Y.shape[1]):
            counts = np.bincount(Y[:, j][~np.isnan(Y[:, j])].astype(np.int64), minlength=3)
            if (counts == 0).any():
                missing = [CLASS_NAMES[k].upper() for k in np.flatnonzero(counts == 0)]
                which = f"horizon {horizons[j]}" if horizons else f"horizon column {j}"
                raise ConfigError(f"{where}: {which} has no {missing} rows (class counts "
                                 f"{counts.tolist()}); lower or raise label.class_threshold")


def class_returns(Y: np.ndarray, R: np.ndarray) -> np.ndarray:
    """(H, 3) mean target of each class per horizon, over rows labelled in both Y and R."""
    out = np.zeros((Y.shape[1], 3))
    for j in range(Y.shape[1]):
        ok = ~np.isnan(Y[:, j]) & ~np.isnan(R[:, j])
        k, r = Y[ok, j].astype(np.int64), np.asarray(R[ok, j], np.float64)
        out[j] = np.bincount(k, r, minlength=3) / np.maximum(np.bincount(k, minlength=3), 1)
    return out


class Forecaster(ABC):
    """What a caller forecasts with (see the module docstring). Attributes:

    name, family, input_kind: of the registered model (``input_kind`` ``tabular``: X (n, F);
        ``sequence``: X (n, L, F) windows, a lazy :class:`~alphafactory.dataset.Windows` too);
    horizons: the forecast horizons, one output column each; task: ``regression`` or
        ``classification``; lookback: bars per window of a sequence model (None if it has none);
    symbols: the symbols it has a model for, sorted, when it has one per symbol (rows of other
        symbols are an error); None when one model forecasts every symbol;
    meta_: what the training stage saved with it (feature columns, calibration; set by loading).

    The default forecasts come from one model for every row (``_predict``); a per-symbol
    forecaster overrides ``predict``, ``predict_proba`` and ``expected_return``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    input_kind: ClassVar[str] = "tabular"
    tasks: ClassVar[tuple[str, ...]] = TASKS
    lookback: int | None = None
    symbols: tuple[str, ...] | None = None
    # A forecaster that predicts its own distribution (``predict_dist``): its head, "gaussian" or
    # "student_t" (with ``dist_df`` degrees of freedom); None: point forecasts only, whose
    # uncertainty is the volatility scale of alphafactory.uncertainty.
    distribution: str | None = None
    dist_df: float | None = None
    horizons: tuple[int, ...]
    task: str
    meta_: dict[str, Any]

    def __init__(self, *, horizons: tuple[int, ...], task: str) -> None:
        self.horizons = tuple(int(h) for h in horizons)
        if not self.horizons:
            raise ValueError(f"{self.name}: expected at least one horizon")
        if task not in TASKS:
            raise ValueError(f"train.task: got {task!r}, expected one of {list(TASKS)}")
        if task not in self.tasks:
            raise ValueError(f"model {self.name!r} does not support train.task {task!r}; "
                             f"it supports {list(self.tasks)}")
        self.task = task

    @property
    def classifier(self) -> bool:
        return self.task == "classification"

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"model {self.name!r} is not fitted: call fit() before predict()/save()")

    @abstractmethod
    def _predict(self, X: Any) -> np.ndarray:
        """(n, H) forecasts; classification: (n, H, 3) class probabilities."""

    def predict(self, X: Any, symbols: Any = None) -> np.ndarray:
        """(n, F) or (n, L, F) → (n, H) float64 forecasts, one column per horizon (a classifier's
        expected return given its class probabilities). ``symbols`` (n,): each row's symbol,
        needed only when the forecaster has a model per symbol."""
        if self.classifier:
            return self.expected_return(self.predict_proba(X))
        self._check_fitted()
        out = np.asarray(self._predict(X), dtype=np.float64)
        return out.reshape(len(X), len(self.horizons))

    def predict_proba(self, X: Any, symbols: Any = None) -> np.ndarray:
        """Classification only: (n, H, 3) probabilities of SHORT, NEUTRAL, LONG per horizon."""
        self._check_fitted()
        if not self.classifier:
            raise ValueError(f"model {self.name!r} was fitted for {self.task}, not classification: "
                             "predict_proba is undefined")
        out = np.asarray(self._predict(X), dtype=np.float64)
        return out.reshape(len(X), len(self.horizons), 3)

    def expected_return(self, proba: np.ndarray, symbols: Any = None) -> np.ndarray:
        """(n, H, 3) class probabilities → (n, H) sum_k P(k) · mean train target of class k."""
        return np.einsum("nhk,hk->nh", proba, self.class_returns_)

    def predict_dist(self, X: Any, symbols: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """A forecaster with a ``distribution`` only: (mean, std), each (n, H) float64, of its
        predictive distribution per horizon (the mean is ``predict``'s forecast)."""
        self._check_fitted()
        if self.distribution is None:
            raise ValueError(f"model {self.name!r} forecasts no distribution: predict_dist is undefined "
                             "(its yhat_std is the volatility scale, alphafactory.uncertainty)")
        mean, std = self._predict_dist(X)
        shape = (len(X), len(self.horizons))
        return np.asarray(mean, np.float64).reshape(shape), np.asarray(std, np.float64).reshape(shape)

    def _predict_dist(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each (n, H); only for a forecaster with a ``distribution``."""
        raise NotImplementedError


class Model(Forecaster):
    """A trainable model family (see the module docstring). Set by the ``@register`` decorator:
    ``name``, ``family``, ``input_kind``, ``tasks``."""

    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    Params: ClassVar[type]  # frozen dataclass of hyperparameters
    packages: ClassVar[tuple[str, ...]] = ()  # recorded in the manifest
    # the Params field holding the threads one fit uses (num_threads, nthread, thread_count), for
    # callers that run several fits side by side and split the threads between them; None: none
    threads_param: ClassVar[str | None] = None

    def __init__(self, params: dict[str, Any] | None = None, *, horizons: tuple[int, ...] = (1,),
                 seed: int = 0, task: str = "regression") -> None:
        # the key path the user types in params.yaml: boosting.lightgbm, neural.lstm, classical.ridge
        self.params = from_dict(self.Params, params, f"{self.family}.{self.name}")
        super().__init__(horizons=horizons, task=task)
        self.seed = int(seed)

    # -- contract -------------------------------------------------------------------------
    def fit(self, train: XY, val: XY) -> Model:
        """Fit on ``train``; ``val`` is only for early stopping (or scoring). Returns self."""
        if self.classifier:
            if train.R is None:
                raise ValueError(f"{self.name}: the classification task needs XY.R (targets in return units)")
            check_classes(train.Y, f"{self.name}: train", horizons=self.horizons)
            check_classes(val.Y, f"{self.name}: val", require_all=False)
            self.class_returns_ = class_returns(np.asarray(train.Y), np.asarray(train.R))
        self._fit(train, val)
        self.fitted_ = True
        return self

    @abstractmethod
    def _fit(self, train: XY, val: XY) -> None:
        """Family-specific fit; stores the fitted state and ``history_``."""

    @abstractmethod
    def _save_state(self, directory: Path) -> dict[str, Any]:
        """Write native artifacts into ``directory``; return JSON state for the manifest."""

    @abstractmethod
    def _load_state(self, directory: Directory, state: dict[str, Any]) -> None:
        """Rebuild the fitted state from ``state`` (what ``_save_state`` returned), reading every
        file through ``directory.path(name)`` / ``directory.load(name, reader)``."""

    def _init_kwargs(self) -> dict[str, Any]:
        """Extra constructor arguments to record in the manifest (JSON-able)."""
        return {}

    def _export(self, directory: Path, *, like: Path | None = None, where: Path | None = None) -> Path | None:
        """Write the portable form a bundle forecasts with into the saved model's ``directory``
        (``save(..., portable=True)``); return its file, or None for a family a bundle loads
        natively (the default). The PyTorch families export their forward pass to ONNX
        (:func:`alphafactory.models.export.write_export`); ``like``: another model's export of
        the same architecture to reuse the graph of; ``where``: the directory's final name."""
        return None


# Rows up to which a tree model predicts in the calling thread (``predict_threads``): waking a
# pool's sleeping threads (OMP_WAIT_POLICY=passive) costs more than a few rows' trees. Measured on
# the 2-core box under load (docs/serve.md): LightGBM, 2 rows, 0.2 ms with 1 thread, 2-6 ms
# with 2. The forecasts do not depend on it (each row's trees are summed in one thread either way).
SMALL_PREDICT_ROWS = 256


def predict_threads(n_rows: int, threads: int) -> int:
    """Threads for a tree model's predict of ``n_rows`` rows: 1 up to ``SMALL_PREDICT_ROWS``,
    else the model's own ``threads``."""
    return 1 if n_rows <= SMALL_PREDICT_ROWS else threads


class PerHorizonModel(Model):
    """A model fitted as one estimator per horizon (gradient boosting libraries), each on the
    rows where that horizon has a label and early-stopped on the same horizon of ``val``.
    For classification ``_fit_one`` gets class indices and ``_predict_one`` returns (n, 3).

    Bin once: a family whose library bins (quantizes) the features before it trees them can
    return that binned form of (train X, val X) from ``_bin``; it is built once per fit and
    handed to ``_fit_one`` (``binned=``) for every horizon whose train and val rows are all
    labelled, which then only sets that horizon's labels on it. The bins depend on X alone, so
    the boosters are those of binning each horizon's rows anew (tests/test_models.py checks)."""

    suffix: ClassVar[str] = ".bin"
    # True: _bin, _fit_one and _predict_one take a lazy io.ParquetRows as it is (the family reads
    # it in parts); False: it is read into memory first
    reads_parts: ClassVar[bool] = False

    @abstractmethod
    def _fit_one(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                 seed: int, bar: Any = None, binned: Any = None) -> tuple[Any, dict[str, list[float]]]:
        """Return (estimator, {"train": curve, "val": curve}). ``bar``: this horizon's progress
        bar (total ``_rounds()``) when the family has rounds, for the library's callback to
        advance once a round unless ``bar.disable``; None otherwise. ``binned``: what ``_bin``
        returned for these very X and Xv (set y and yv on it instead of binning again), or None."""

    def _bin(self, X: np.ndarray, Xv: np.ndarray) -> Any:
        """The library's binned form of train ``X`` (n, F) and val ``Xv`` (m, F), reused by every
        fully labelled horizon; None (the default): each ``_fit_one`` bins its own rows."""
        return None

    def _rounds(self) -> int | None:
        """Rounds (trees) per horizon, the total of each horizon's progress bar; None: no bar."""
        return None

    @abstractmethod
    def _predict_one(self, est: Any, X: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _save_one(self, est: Any, path: Path) -> None: ...

    @abstractmethod
    def _load_one(self, path: Path) -> Any: ...

    def _best_iteration(self, est: Any) -> int | None:
        return None

    def _matrix(self, X: Any) -> Any:
        return X if self.reads_parts and isinstance(X, ParquetRows) else float_matrix(X)

    def _fit(self, train: XY, val: XY) -> None:
        X, Xv = self._matrix(train.X), self._matrix(val.X)
        self.estimators_, self.history_ = [], {}
        shared: list[Any] = []  # [the binned (X, Xv)] once built: only if some horizon is fully labelled
        for j, h in enumerate(self.horizons):
            m, mv = ~np.isnan(train.Y[:, j]), ~np.isnan(val.Y[:, j])
            if m.sum() == 0 or mv.sum() == 0:
                raise ValueError(f"{self.name}: horizon {h} has no labelled rows in train or val")
            full = bool(m.all() and mv.all())
            if full and not shared:
                shared.append(self._bin(X, Xv))
            binned = shared[0] if full else None
            rounds = self._rounds()
            with progress(desc=f"{self.name} h{h}", total=rounds, unit="round") if rounds else nullcontext() as bar:
                if binned is None:
                    est, hist = self._fit_one(X[m], train.Y[m, j], Xv[mv], val.Y[mv, j], self.seed + j, bar)
                else:
                    y, yv = (np.ascontiguousarray(a.Y[:, j]) for a in (train, val))  # a column: strided
                    est, hist = self._fit_one(X, y, Xv, yv, self.seed + j, bar, binned=binned)
                if bar is not None and not bar.disable and bar.n < rounds:
                    bar.set_postfix_str(f"{bar.postfix}, early stop", refresh=False)
            self.estimators_.append(est)
            self.history_[f"h{h}"] = hist

    def _predict(self, X: Any) -> np.ndarray:
        X = self._matrix(X)
        if isinstance(X, ParquetRows) and len(X):
            # a lazy view: each part read once for every horizon (per horizon, the parts were
            # read H times: most of a pooled fit's reading at scale); the same forecasts, as
            # the estimators forecast row by row
            return np.concatenate([self._predict(part) for part in X.batches()])
        return np.stack([self._predict_one(e, X) for e in self.estimators_], axis=1)

    def _save_state(self, directory: Path) -> dict[str, Any]:
        files = []
        for h, est in zip(self.horizons, self.estimators_, strict=True):
            name = f"h{h}{self.suffix}"
            self._save_one(est, directory / name)
            files.append(name)
        return {"files": files, "best_iteration": [self._best_iteration(e) for e in self.estimators_]}

    def _load_state(self, directory: Directory, state: dict[str, Any]) -> None:
        if len(state["files"]) != len(self.horizons):
            raise directory.error(f"{directory}/{MANIFEST}: {len(state['files'])} state files for "
                                  f"{len(self.horizons)} horizons; expected one per horizon")
        self.estimators_ = [directory.load(f, self._load_one, f"{self.name} model file") for f in state["files"]]
