"""The one contract every model family implements (scikit-learn style).

``__init__`` only stores and validates hyperparameters; ``fit(train, val)`` returns ``self``;
fitted state ends in ``_``; ``predict(X)`` returns ``(n, H)``, one column per horizon, and raises
:class:`NotFittedError` before ``fit``. ``save(dir)`` writes native artifacts plus ``manifest.json``;
``Model.load(dir)`` rebuilds any registered model from them (no pickle: loading runs no code).
"""
from __future__ import annotations

import importlib.metadata
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alphafactory.config import from_dict, to_dict
from alphafactory.io import atomic_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class NotFittedError(ValueError):
    """predict/save called on a model that has not been fitted."""


@dataclass(frozen=True)
class XY:
    """A training segment. X: (n, F) float32, or (n, L, F) windows for sequence models;
    Y: (n, H) float32 targets, NaN where a horizon has no label."""

    X: Any
    Y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.X) != len(self.Y):
            raise ValueError(f"X has {len(self.X)} rows but Y has {len(self.Y)}")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


class Model(ABC):
    # Set by the @register decorator.
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    input_kind: ClassVar[str] = "tabular"
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    Params: ClassVar[type]  # frozen dataclass of hyperparameters
    packages: ClassVar[tuple[str, ...]] = ()  # recorded in the manifest

    def __init__(self, params: dict[str, Any] | None = None, *, horizons: tuple[int, ...] = (1,),
                 seed: int = 0) -> None:
        self.params = from_dict(self.Params, params, f"models.{self.name}")
        self.horizons = tuple(int(h) for h in horizons)
        self.seed = int(seed)
        if not self.horizons:
            raise ValueError(f"{self.name}: expected at least one horizon")

    # -- contract -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, train: XY, val: XY) -> "Model":
        """Fit on ``train``; ``val`` is only for early stopping. Stores ``history_``."""

    @abstractmethod
    def _predict(self, X: Any) -> np.ndarray: ...

    @abstractmethod
    def _save_state(self, directory: Path) -> dict[str, Any]:
        """Write native artifacts into ``directory``; return JSON state for the manifest."""

    @abstractmethod
    def _load_state(self, directory: Path, state: dict[str, Any]) -> None: ...

    def _init_kwargs(self) -> dict[str, Any]:
        """Extra constructor arguments to record in the manifest (JSON-able)."""
        return {}

    # -- shared behaviour -----------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"model {self.name!r} is not fitted: call fit() before predict()/save()")

    def predict(self, X: Any) -> np.ndarray:
        """(n, F) or (n, L, F) → (n, H) float64 forecasts, one column per horizon."""
        self._check_fitted()
        out = np.asarray(self._predict(X), dtype=np.float64)
        return out.reshape(len(X), len(self.horizons))

    def save(self, directory: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Write the model atomically: the directory appears complete or not at all."""
        self._check_fitted()
        with atomic_dir(directory) as tmp:
            state = self._save_state(tmp)
            manifest = {
                "format_version": FORMAT_VERSION,
                "model": self.name,
                "family": self.family,
                "input_kind": self.input_kind,
                "params": to_dict(self.params),
                "horizons": list(self.horizons),
                "seed": self.seed,
                "init": self._init_kwargs(),
                "state": state,
                "versions": {p: _version(p) for p in ("alphafactory", "numpy", *self.packages)},
                "meta": meta or {},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def load(directory: str | Path) -> "Model":
        from alphafactory.models import get  # registry import is lazy to avoid a cycle

        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model manifest (is {directory} a saved model?)")
        manifest = json.loads(path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        cls = get(manifest["model"]).cls
        model = cls(manifest["params"], horizons=tuple(manifest["horizons"]), seed=manifest["seed"],
                    **manifest.get("init", {}))
        model._load_state(directory, manifest["state"])
        model.meta_ = manifest.get("meta", {})
        model.fitted_ = True
        return model


class PerHorizonModel(Model):
    """A model fitted as one estimator per horizon (gradient boosting libraries), each on the
    rows where that horizon has a label and early-stopped on the same horizon of ``val``."""

    suffix: ClassVar[str] = ".bin"

    @abstractmethod
    def _fit_one(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray,
                 seed: int) -> tuple[Any, dict[str, list[float]]]:
        """Return (estimator, {"train": curve, "val": curve})."""

    @abstractmethod
    def _predict_one(self, est: Any, X: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _save_one(self, est: Any, path: Path) -> None: ...

    @abstractmethod
    def _load_one(self, path: Path) -> Any: ...

    def _best_iteration(self, est: Any) -> int | None:
        return None

    def fit(self, train: XY, val: XY) -> "PerHorizonModel":
        X, Xv = np.asarray(train.X, np.float32), np.asarray(val.X, np.float32)
        self.estimators_, self.history_ = [], {}
        for j, h in enumerate(self.horizons):
            m, mv = ~np.isnan(train.Y[:, j]), ~np.isnan(val.Y[:, j])
            if m.sum() == 0 or mv.sum() == 0:
                raise ValueError(f"{self.name}: horizon {h} has no labelled rows in train or val")
            est, hist = self._fit_one(X[m], train.Y[m, j], Xv[mv], val.Y[mv, j], self.seed + j)
            self.estimators_.append(est)
            self.history_[f"h{h}"] = hist
        self.fitted_ = True
        return self

    def _predict(self, X: Any) -> np.ndarray:
        X = np.asarray(X, np.float32)
        return np.column_stack([self._predict_one(e, X) for e in self.estimators_])

    def _save_state(self, directory: Path) -> dict[str, Any]:
        files = []
        for h, est in zip(self.horizons, self.estimators_):
            name = f"h{h}{self.suffix}"
            self._save_one(est, directory / name)
            files.append(name)
        return {"files": files, "best_iteration": [self._best_iteration(e) for e in self.estimators_]}

    def _load_state(self, directory: Path, state: dict[str, Any]) -> None:
        self.estimators_ = [self._load_one(directory / f) for f in state["files"]]
