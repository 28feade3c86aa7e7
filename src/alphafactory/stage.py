"""Helpers shared by the thin scripts in ``stages/``: argument parsing, logging, params sections
of model families, and turning bad-input errors into one clear line on stderr (exit 2)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd

from alphafactory.config import ConfigError, load_params
from alphafactory.progress import LogHandler

log = logging.getLogger("alphafactory")


class InputError(ValueError):
    """Bad user input (data or params) detected by a stage."""


def user_errors() -> tuple[type[BaseException], ...]:
    from alphafactory.data.validate import DataValidationError

    return (ConfigError, InputError, DataValidationError)


def parse(description: str, *paths: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``--params`` plus one required ``--<path>`` option per name; load the params."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml")
    for p in paths:
        ap.add_argument(f"--{p}", required=True)
    args = ap.parse_args()
    # LogHandler: log lines go above any open progress bar, not into it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[LogHandler()])
    return args, load_params(args.params)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main; bad input ends it with one line naming the problem, not a traceback."""
    try:
        main()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def family_section(params: dict[str, Any], section: str, family: str, reserved: tuple[str, ...] = (),
                   task: str | None = None) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """Read a model-family section: ``models`` (the enabled names, in order), one params block per
    model of that family, and ``reserved`` keys shared by the family (e.g. ``trainer``).
    Returns (names, blocks by model name, reserved values). Unknown keys and names are errors, and
    so is an enabled model that does not support ``task`` (when given)."""
    from alphafactory import models

    sec = params.get(section) or {}
    names = sec.get("models", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{section}.models: got {names!r}, expected a list of model names")
    of_family = sorted(n for n, s in models.REGISTRY.items() if s.family == family)
    for key in [*names, *(k for k in sec if k not in ("models", *reserved))]:
        if key not in of_family:
            raise ConfigError(f"{section}: {key!r} is not a registered {family} model; expected one of {of_family}")
    if task is not None:
        unsupported = [n for n in names if task not in models.REGISTRY[n].tasks]
        if unsupported:
            able = [n for n in of_family if task in models.REGISTRY[n].tasks]
            raise ConfigError(f"{section}.models: {unsupported} do not support train.task {task!r}; "
                              f"{family} models that do: {able}")
    blocks = {k: v for k, v in sec.items() if k in of_family}
    return tuple(names), blocks, {k: sec.get(k) for k in reserved}


def empty_oracle() -> pd.DataFrame:
    """The oracle table of a source without a known data-generating process (no rows)."""
    return pd.DataFrame({"symbol": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[ns]"),
                         "horizon": pd.Series(dtype="int64"), "yhat": pd.Series(dtype="float64")})


def write_csv(df: pd.DataFrame, path: str) -> None:
    from alphafactory.io import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
