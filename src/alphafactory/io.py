"""Atomic writers, and read access to saved artifact directories.

Writers write to a temporary name in the same directory, then rename: a crash (or bad input
detected late) never leaves a half-written artifact behind. Readers get every file of a saved
model or blender through a :class:`Directory`, which keeps the paths a manifest names inside the
directory (a bundle's :class:`alphafactory.bundle.VerifiedBundle` also keeps them to the files it
verified).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import pandas as pd

from alphafactory.config import InputError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)  # mkstemp makes it owner-only; outputs are ordinary shared files
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` as a whole on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model dir is ordinary shared output
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    # No pandas index and no write timestamps: identical frames give identical bytes,
    # so DVC sees an unchanged output and skips downstream stages.
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")


def _finite(obj: Any) -> Any:
    """NaN/inf become null: strict JSON that DVC, browsers and other languages all parse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path, sort_keys: bool = True) -> None:
    """Strict JSON, keys sorted unless ``sort_keys=False`` (then in ``obj``'s own order, which
    `dvc exp show` and `dvc metrics diff` keep: e.g. horizons h1, h5, h20 rather than h1, h20, h5)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(obj), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


class ArtifactError(InputError):
    """A saved artifact (model directory, blender, bundle) that cannot be read or trusted: names
    the file and what was expected."""


def safe_relpath(rel: Any) -> str | None:
    """``rel`` when it is a plain posix path relative to a directory, else None: not a string,
    empty, absolute, a backslash or NUL in it, a ``..`` part, or not in normal form (``./a``,
    ``a//b``, ``a/``)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return None
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.as_posix() != rel:
        return None
    return rel


class Directory:
    """Read access to the files of one saved directory (a model's, a blender's): a loader gets a
    file through :meth:`path`, :meth:`read_json` or :meth:`load`, never by joining paths itself,
    so a path read from a manifest cannot lead outside the directory. Raises :attr:`error`
    naming the file."""

    error: type[ArtifactError] = ArtifactError

    def __init__(self, root: str | Path, prefix: str = "") -> None:
        self.root = Path(root)
        self.prefix = prefix  # posix path of this directory below ``root`` ("" for root itself)

    def __str__(self) -> str:
        return str(self.root / self.prefix) if self.prefix else str(self.root)

    def __fspath__(self) -> str:  # a Directory stands where a Path did (log lines, messages)
        return str(self)

    def _rel(self, rel: Any) -> str:
        """``rel`` (relative to this directory) relative to ``root``; an error if it leaves it."""
        safe = safe_relpath(rel)
        if safe is None:
            raise self.error(f"{self}: file path {rel!r} points outside the directory; expected a "
                             f"relative path without '..'")
        return f"{self.prefix}/{safe}" if self.prefix else safe

    def _check(self, full: str) -> Path:
        path = self.root / full
        if not path.is_file():
            raise self.error(f"{path}: missing; expected a file of the saved model")
        return path

    def path(self, rel: str) -> Path:
        """The path of file ``rel`` (relative to this directory), for a library to open."""
        return self._check(self._rel(rel))

    def exists(self, rel: str) -> bool:
        return (self.root / self._rel(rel)).is_file()

    def sub(self, rel: str) -> Directory:
        """The subdirectory ``rel``, with the same checks."""
        return self._sub(self._rel(rel))

    def _sub(self, prefix: str) -> Directory:
        return type(self)(self.root, prefix)

    def load(self, rel: str, reader: Callable[[Path], T], what: str = "file") -> T:
        """``reader(path)`` on file ``rel``; whatever the reader raises on a corrupt file (each
        library has its own exception classes) becomes one :attr:`error` naming the file."""
        path = self.path(rel)
        try:
            return reader(path)
        # The boundary between a file's bytes and a parser (LightGBMError, CatBoostError,
        # XGBoostError, ONNX Runtime's InvalidProtobuf, UnpicklingError, BadZipFile, ...): nothing
        # is dropped, the error is re-raised with the file's name and the original chained.
        except Exception as e:
            raise self.error(f"{path}: cannot read this {what} ({type(e).__name__}: "
                             f"{_one_line(e)})") from e

    def read_json(self, rel: str) -> Any:
        """The parsed JSON file ``rel``; invalid or too deeply nested JSON is an :attr:`error`."""
        return self.load(rel, read_json, "JSON file")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
