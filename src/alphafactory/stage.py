"""Helpers shared by the thin scripts in ``stages/``: argument parsing, logging, and turning
bad-input errors into one clear line on stderr (exit 2).

Every stage imports this module, so everything it imports is a dependency of every stage in
``dvc.yaml`` (tests/test_dvc_deps.py): keep it to ``config``, ``io`` and ``progress``."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd

from alphafactory.config import load_params
from alphafactory.errors import ConfigError, InputError
from alphafactory.io import atomic_path
from alphafactory.progress import LogHandler

__all__ = ["empty_oracle", "log", "parse", "run", "user_errors", "write_csv"]
log = logging.getLogger("alphafactory")


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input, not a bug (DataValidationError is an InputError)."""
    return (ConfigError, InputError)


def parse(description: str, *paths: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``--params`` plus one required ``--<name>`` option per name (paths, and the
    family of the train stage); load the params."""
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


def empty_oracle() -> pd.DataFrame:
    """The oracle table of a source without a known data-generating process (no rows)."""
    return pd.DataFrame({"symbol": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[ns]"),
                         "horizon": pd.Series(dtype="int64"), "yhat": pd.Series(dtype="float64")})


def write_csv(df: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
