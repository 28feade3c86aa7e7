"""Typed, frozen configuration sections built from ``params.yaml``.

Every stage reads exactly one section (plus a few shared keys) and turns it into a frozen
dataclass at once, so a mistyped key fails with a message that names it instead of being
silently ignored.

Constraints are declared on the field, in its type (scikit-learn's ``_parameter_constraints``,
written where the field is)::

    @dataclass(frozen=True)
    class LSTMParams:
        hidden: Annotated[int, Interval(ge=1)] = 32
        dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1
        horizons: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], NonEmpty(), Unique()] = (1,)

and checked in one place, :func:`check` (which :func:`from_dict` calls once per dataclass it
builds). Rules between fields that a per-field constraint cannot say stay in a small
``validate()`` method, which :func:`check` calls last. Every error is one ``ConfigError`` line
with the key path the user types: ``neural.lstm.hidden: got 0, expected >= 1``.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from alphafactory.errors import ConfigError

T = TypeVar("T")




# -- constraints: declared with Annotated[type, constraint, ...] on a field ---------------------

def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Interval:
    """A number within bounds: ``Interval(gt=0)`` is ``> 0``, ``Interval(ge=0, lt=1)`` is
    ``in [0, 1)``. NaN is outside every interval; None (an optional field left empty) passes."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __post_init__(self) -> None:
        assert not (self.gt is not None and self.ge is not None), "gt or ge, not both"
        assert not (self.lt is not None and self.le is not None), "lt or le, not both"

    def expected(self) -> str:
        lo, lo_open = (self.gt, True) if self.gt is not None else (self.ge, False)
        hi, hi_open = (self.lt, True) if self.lt is not None else (self.le, False)
        if hi is None:
            return f"expected {'>' if lo_open else '>='} {_num(lo)}"
        if lo is None:
            return f"expected {'<' if hi_open else '<='} {_num(hi)}"
        return f"expected in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"

    def ok(self, v: Any) -> bool:
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))


@dataclass(frozen=True)
class NonEmpty:
    """A list with at least one item."""

    def expected(self) -> str:
        return "expected at least one item"

    def ok(self, v: Any) -> bool:
        return len(v) > 0


@dataclass(frozen=True)
class Unique:
    """A list whose items are all different."""

    def expected(self) -> str:
        return "expected each item once"

    def ok(self, v: Any) -> bool:
        return len(set(v)) == len(v)


def _show(value: Any) -> str:
    return repr(to_dict(value))  # tuples as the lists the user typed


def _check_value(value: Any, tp: Any, where: str) -> None:
    """Raise ``ConfigError`` if ``value`` (already of type ``tp``) breaks a constraint declared
    in ``tp``: its own ``Annotated`` metadata, then those of its items or optional member."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        _check_value(value, args[0], where)
        for c in tp.__metadata__:
            if value is not None and not c.ok(value):
                raise ConfigError(f"{where}: got {_show(value)}, {c.expected()}")
    elif origin is typing.Literal:  # a choice (from_dict has checked it; a direct constructor call has not)
        if value not in args:
            raise ConfigError(f"{where}: got {value!r}, expected one of {list(args)}")
    elif origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is not None and len(members) == 1:
            _check_value(value, members[0], where)
    elif origin in (tuple, list) and isinstance(value, (tuple, list)) and args:
        for i, v in enumerate(value):
            _check_value(v, args[0], f"{where}[{i}]")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved field annotations (resolving them compiles each string annotation:
    ~0.5 ms a call, and a forecast checks its configs on every request)."""
    return typing.get_type_hints(cls, include_extras=True)


def check(obj: Any, where: str, nested: bool = True) -> None:
    """Check the config dataclass ``obj`` (key path ``where``): every field's declared
    constraints, then its ``validate()`` (rules between fields), if it has one. ``nested``: also
    check fields that are config dataclasses themselves (:func:`from_dict` has built, and so
    checked, those already)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{f.name}" if where else f.name
        _check_value(value, hints[f.name], path)
        if nested and dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value, path)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:  # a plain ValueError from validate(): still a params error, one line
            raise ConfigError(str(e)) from None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:  # constraints are checked by check(), once the dataclass is built
        return _coerce(value, args[0], where)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:  # try the next member of the union
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: got {value!r}, expected one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r}, expected a list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: got {value!r}, expected a string")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: got {data!r}, expected a mapping")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; expected some of {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    obj = cls(**kwargs)
    check(obj, where, nested=False)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain JSON/YAML-ready form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path) as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """``params[name]`` as the dataclass ``cls`` (missing section = all defaults)."""
    return from_dict(cls, params.get(name), name)
