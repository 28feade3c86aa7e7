"""The model registry: every family registers itself with :func:`register` (re-exported by
``alphafactory.models``, which family modules import it from).

Adding a model is one new module in this package (a class decorated with ``@register(...)``) plus
its params block in ``params.yaml``.

Discovery is lazy, so listing or looking up models imports no model library: the registry is read
from each module's source with :mod:`ast` (the ``@register(...)`` arguments, which must be literals
or module-level literal constants), and a module is imported only when one of its classes is
needed (``ModelSpec.cls``, hence :func:`create` and :func:`load`). An import error is then raised,
never swallowed. A module whose registrations cannot be read that way (computed arguments,
``register`` used other than as a top-level class decorator) is imported at discovery instead, and
a decorator whose arguments differ from what discovery read raises an error when it runs.

:data:`ENSEMBLES` lists the blend stage's methods (stacking, voting, blending, Caruana) beside
the base models, so that listings, docs and tests cover them; they are configured by the
``blend`` section and run by :mod:`alphafactory.blend`, never created as base models here.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphafactory.models.base import Model

INPUT_KINDS = ("tabular", "sequence")
_CLASSES: dict[str, type[Model]] = {}  # name -> class, once its module has been imported


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # boosting, neural, classical, ensemble
    input_kind: str  # tabular (n, F) or sequence (n, L, F)
    tasks: tuple[str, ...]
    module: str  # the module defining the class; imported the first time ``cls`` is read

    @property
    def cls(self) -> type[Model]:
        """The model class (imports its module, and with it the model library, on first use)."""
        if self.name not in _CLASSES:
            importlib.import_module(self.module)
        if self.name not in _CLASSES:
            raise ValueError(f"model {self.name!r}: importing {self.module} did not register it; "
                             f"expected a top-level class decorated with @register({self.name!r}, ...)")
        return _CLASSES[self.name]


REGISTRY: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class EnsembleSpec:
    """A blend method of the blend stage (:mod:`alphafactory.blend`), listed beside the base models.
    It is not a :class:`Model`: it combines the base models' val forecasts and is configured by
    the ``blend`` section (``blend.methods`` enables it), so :func:`create` refuses its name."""

    name: str
    tasks: tuple[str, ...]
    summary: str  # one line, for `alphafactory models` and docs/models.md
    family: str = "ensemble"
    input_kind: str = "forecasts"  # the base models' forecasts, not features
    params: str = "blend"  # its params block
    module: str = "alphafactory.blend"


# The blend methods, in the order the blend stage runs them (blend.METHODS is this order). Every
# method combines expected-return forecasts, a classifier's too, and mixes class probabilities.
ENSEMBLES: dict[str, EnsembleSpec] = {e.name: e for e in (
    EnsembleSpec("ensemble", ("regression", "classification"),
                 "stacking: a meta-learner (blend.meta: ridge or CatBoost) on the members' val forecasts"),
    EnsembleSpec("voting", ("regression", "classification"), "the plain mean of the members"),
    EnsembleSpec("blending", ("regression", "classification"),
                 "non-negative weights summing to 1 that minimise val MSE"),
    EnsembleSpec("caruana", ("regression", "classification"),
                 "greedy forward selection with replacement on val MSE (Caruana et al. 2004)"),
)}


def _check(name: Any, family: Any, input_kind: Any, tasks: Any) -> tuple[str, ...]:
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"model {name!r}: input_kind {input_kind!r}, expected one of {INPUT_KINDS}")
    if not all(isinstance(v, str) for v in (name, family, *tasks)):
        raise ValueError(f"model {name!r}: name, family and tasks must be strings, got "
                         f"{name!r}, {family!r}, {tasks!r}")
    return tuple(tasks)


def register(name: str, *, family: str, input_kind: str, tasks: tuple[str, ...] = ("regression",)):
    """Class decorator adding a :class:`Model` subclass to the registry under ``name``."""
    tasks = _check(name, family, input_kind, tasks)

    def wrap(cls: type[Model]) -> type[Model]:
        if name in _CLASSES and _CLASSES[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice ({_CLASSES[name]} and {cls})")
        spec = ModelSpec(name, family, input_kind, tasks, cls.__module__)
        known = REGISTRY.get(name)
        if known is not None and known != spec:
            if known.module != spec.module:
                raise ValueError(f"model name {name!r} registered twice ({known.module} and {cls})")
            raise ValueError(f"model {name!r}: @register gives {spec}, discovery read {known}")
        cls.name, cls.family, cls.input_kind, cls.tasks = name, family, input_kind, tasks
        _CLASSES[name] = cls
        REGISTRY[name] = spec
        return cls

    return wrap


def _registrations(module: str, source: str) -> list[ModelSpec] | None:
    """The ``@register(...)`` class decorators of a module's source, read without running it, or
    None when they cannot be (the module must then be imported to know what it registers)."""
    if "register" not in source:
        return []
    tree = ast.parse(source, module)
    consts: dict[str, Any] = {}  # module-level NAME = literal, e.g. TASKS = ("regression",)
    aliases = {"register"}  # local names of alphafactory.models.register
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError):
                consts.pop(node.targets[0].id, None)
        elif isinstance(node, ast.ImportFrom) and node.module in ("alphafactory.models", None):
            aliases |= {a.asname or a.name for a in node.names if a.name == "register"}

    def is_register(f: ast.AST) -> bool:
        return ((isinstance(f, ast.Name) and f.id in aliases)
                or (isinstance(f, ast.Attribute) and f.attr == "register"))

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            if node.id not in consts:
                raise ValueError(node.id)
            return consts[node.id]
        return ast.literal_eval(node)

    refs = sum(is_register(n) for n in ast.walk(tree))
    specs = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and is_register(dec.func)):
                continue
            kw = {k.arg: k.value for k in dec.keywords}
            if None in kw or len(dec.args) > 1 or (len(dec.args) == 1) == ("name" in kw) \
                    or not {"family", "input_kind"} <= set(kw) <= {"name", "family", "input_kind", "tasks"}:
                return None  # the call itself would fail or is not plain: let the import say why
            try:
                args = {k: value(v) for k, v in kw.items()}
                name = value(dec.args[0]) if dec.args else args.pop("name")
            except (ValueError, TypeError):
                return None  # computed arguments
            tasks = args.get("tasks", ("regression",))
            specs.append(ModelSpec(name, args["family"], args["input_kind"],
                                   _check(name, args["family"], args["input_kind"], tasks), module))
    return specs if len(specs) == refs else None


PACKAGE = __name__.rpartition(".")[0]  # alphafactory.models: every module in it is read


def discover() -> None:
    """Fill :data:`REGISTRY` from every module of the package (``alphafactory.models`` calls it
    once, last, when it is imported: after ``register`` is bound there, for the modules that
    discovery has to import)."""
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        module = f"{PACKAGE}.{info.name}"
        origin = importlib.util.find_spec(module).origin
        specs = None
        if origin and origin.endswith(".py"):
            specs = _registrations(module, Path(origin).read_text(encoding="utf-8"))
        if specs is None:
            importlib.import_module(module)  # registers itself; an import error is raised here
            continue
        for spec in specs:
            if spec.name in ENSEMBLES:
                raise ValueError(f"model name {spec.name!r} ({module}) is the name of a blend method")
            if spec.name in REGISTRY:
                raise ValueError(f"model name {spec.name!r} registered twice "
                                 f"({REGISTRY[spec.name].module} and {module})")
            REGISTRY[spec.name] = spec


def get(name: str) -> ModelSpec:
    if name in ENSEMBLES and name not in REGISTRY:
        raise ValueError(f"model {name!r} is an ensemble of the blend stage (enable it in blend.methods), "
                         f"not a base model; base models: {sorted(REGISTRY)}")
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(REGISTRY)}")
    return REGISTRY[name]


def create(name: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Model:
    """Instantiate a registered model by name from its params block."""
    return get(name).cls(params, **kwargs)


__all__ = ["REGISTRY", "ENSEMBLES", "ModelSpec", "EnsembleSpec", "register", "get", "create"]
