"""Progress bars for the long loops (boosting rounds, epochs, per-symbol fits, CV folds, SHAP,
permutation importance): tqdm, on stderr.

Bars are drawn only when stderr is a terminal, as under ``dvc repro`` run in a shell; a log piped
to a file, pytest and CI get none. ``ALPHAFACTORY_PROGRESS=1`` forces them on, ``0`` off. A bar
only displays: it never changes what a loop computes and records nothing (``fit`` stays free of
side effects). A bar opened inside another one (a fold's boosting rounds inside the cv folds bar)
is drawn below it and erased when done; a top-level bar stays, as a one-line summary of its loop.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from alphafactory.errors import ConfigError

ENV = "ALPHAFACTORY_PROGRESS"


def _disable() -> bool | None:
    """tqdm's ``disable``: None draws only on a terminal; the env var forces it either way."""
    value = os.environ.get(ENV, "").strip()
    if value == "":
        return None
    if value in ("0", "1"):
        return value == "0"
    raise ConfigError(f"{ENV}: got {value!r}, expected 1 (always draw progress bars), 0 (never) "
                      "or unset (when stderr is a terminal)")


def _size() -> dict[str, Any]:
    """tqdm's size arguments: follow the terminal's size, or 120 x 24 where it reports 0 x 0 (the
    pseudo-terminal ``script`` opens when it runs without a terminal), where tqdm draws nothing."""
    try:
        if os.get_terminal_size(sys.stderr.fileno()).columns == 0:
            return {"ncols": 120, "nrows": 24}
    except (OSError, ValueError, AttributeError):  # not a terminal, or no file descriptor
        pass
    return {"dynamic_ncols": True}


def progress(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", leave: bool | None = None, delay: float = 0.0) -> tqdm:
    """A tqdm bar on stderr over ``iterable`` (or, without one, advanced by ``bar.update(n)``; use
    it as a context manager so it is closed). ``leave=None``: kept when top-level, erased when
    nested; ``delay``: seconds before it is first drawn (a loop that ends sooner draws nothing).
    Disabled, a step costs next to nothing (about 1 us drawn)."""
    disable = _disable()
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, delay=delay, disable=disable,
                file=sys.stderr, **({} if disable else _size()))


class LogHandler(logging.StreamHandler):
    """The stages' console log handler: writes each record above the open bars (``tqdm.write``)
    instead of into the middle of one. With no bar open it writes what a StreamHandler does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # as logging.StreamHandler.emit: report the record, never raise
            self.handleError(record)
