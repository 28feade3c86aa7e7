"""The model registry: every family registers itself with :func:`register`.

Adding a model is one new module in this package (it is discovered and imported here; an import
error is raised, never swallowed) plus its params block in ``params.yaml``.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from alphafactory.models.base import Model, NotFittedError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # boosting, neural, classical, ensemble
    input_kind: str  # tabular (n, F) or sequence (n, L, F)
    tasks: tuple[str, ...]
    cls: type[Model]


REGISTRY: dict[str, ModelSpec] = {}
INPUT_KINDS = ("tabular", "sequence")


def register(name: str, *, family: str, input_kind: str, tasks: tuple[str, ...] = ("regression",)):
    """Class decorator adding a :class:`Model` subclass to the registry under ``name``."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"model {name!r}: input_kind {input_kind!r}, expected one of {INPUT_KINDS}")

    def wrap(cls: type[Model]) -> type[Model]:
        if name in REGISTRY and REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} registered twice ({REGISTRY[name].cls} and {cls})")
        cls.name, cls.family, cls.input_kind, cls.tasks = name, family, input_kind, tuple(tasks)
        REGISTRY[name] = ModelSpec(name, family, input_kind, tuple(tasks), cls)
        return cls

    return wrap


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(REGISTRY)}")
    return REGISTRY[name]


def create(name: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Model:
    """Instantiate a registered model by name from its params block."""
    return get(name).cls(params, **kwargs)


def load(directory) -> Model:
    """Load any saved model: the manifest names its family; the class rebuilds itself."""
    return Model.load(directory)


_discover()

__all__ = ["REGISTRY", "ModelSpec", "Model", "NotFittedError", "register", "get", "create", "load"]
