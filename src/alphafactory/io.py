"""Atomic writers, and read access to saved artifact directories.

Writers write to a temporary name in the same directory, then rename: a crash (or bad input
detected late) never leaves a half-written artifact behind, and a later writer of the same target
removes the temporaries a killed one left (see :func:`clean_stale`). Readers get every file of a saved
model or blender through a :class:`Directory`, which keeps the paths a manifest names inside the
directory (a bundle's :class:`alphafactory.serving.bundle.VerifiedBundle` also keeps them to the files it
verified).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import pandas as pd

from alphafactory.errors import ArtifactError

T = TypeVar("T")


# Every temporary of a target ``DIR/NAME`` is ``DIR/.NAME.<pid>.<8 hex>.tmp`` (a file, or a
# directory for atomic_dir and scratch_dir): next to its target, so it lives and dies with the
# stage's own output area, and it names the process writing it, so a later writer can tell a
# killed run's leftovers (dead pid) from a concurrent writer's work (live pid).
_TMP_ID = re.compile(r"(\d+)\.[0-9a-f]{8}")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, a link or a directory tree; a path already gone is no error (another
    cleaner got there first)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of target ``path`` left by killed writers: ``.NAME.<pid>.<hex>.tmp``
    next to it whose pid is no running process. Those of a live process (a concurrent writer of
    the same target, this process included) and any other name are left alone. Returns the paths
    removed. (A reused pid only makes a leftover wait for a later run, never deletes live work.)"""
    path = Path(path)
    head, removed = f".{path.name}.", []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        m = _TMP_ID.fullmatch(name[len(head):-len(".tmp")])
        if m and not _pid_alive(int(m.group(1))):
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _exchange_fn() -> Callable[[bytes, bytes], int] | None:
    """glibc's ``renameat2`` (2.28+, Linux 3.15+) as ``f(old, new) -> 0 or -1`` with
    ``RENAME_EXCHANGE``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return lambda a, b: fn(at_fdcwd, a, at_fdcwd, b, rename_exchange)


_RENAMEAT2 = _exchange_fn()


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (both must exist); False where the platform or
    the filesystem cannot (the caller then falls back to two renames)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # e.g. a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary is ``.NAME.<pid>.<hex>.tmp``; leftovers of killed earlier writers of the same
    target are removed first (:func:`clean_stale`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp_path = _tmp_name(path)
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    tmp_path.chmod(0o644)  # outputs are ordinary shared files, whatever the umask
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` as a whole on success.

    ``path`` always names a complete version, old or new, even if the process is killed at any
    point: the new tree is built in ``.NAME.<pid>.<hex>.tmp`` next to it, then swapped with the
    old one by ``renameat2(RENAME_EXCHANGE)`` (one atomic step; a plain rename cannot replace a
    non-empty directory), and the old tree, now under the temporary name, is deleted. Where the
    exchange is unavailable (not Linux, glibc < 2.28, a filesystem without it) the old tree is
    first renamed aside, to a second temporary, then the new one into place: there, a kill
    between the two renames leaves ``path`` absent. Leftovers of killed earlier writers of the
    same target are removed first (:func:`clean_stale`)."""
    path = Path(path)
    # scratch_dir removes its directory on exit: the new tree after a failure, or the old one
    # after the exchange
    with scratch_dir(path) as tmp:
        tmp.chmod(0o755)  # a model dir is ordinary shared output, whatever the umask
        yield tmp
        if not os.path.lexists(path):
            os.replace(tmp, path)
        elif not _rename_exchange(tmp, path):
            old = _tmp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)


@contextlib.contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty working directory next to target ``path`` (``.NAME.<pid>.<hex>.tmp``),
    deleted on exit: scratch space inside the stage's own output area rather than the system
    temp directory, which nothing cleans after a kill. Leftovers of killed earlier runs for the
    same target are removed first (:func:`clean_stale`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        _remove(tmp)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    # No pandas index and no write timestamps: identical frames give identical bytes,
    # so DVC sees an unchanged output and skips downstream stages.
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")


def write_parquet_pieces(frames: Iterable[pd.DataFrame], path: str | Path, row_group_size: int = 65536) -> int:
    """Write consecutive pieces of one table (same columns and dtypes) as one parquet file, each
    piece its own row groups of at most ``row_group_size`` rows, holding one piece in memory at a
    time (readers see one table; a reader can take a part by row group, :class:`ParquetRows`).
    One piece: exactly :func:`write_parquet`'s bytes. Returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    it = iter(frames)
    first = next(it)
    second = next(it, None)
    if second is None:
        write_parquet(first, path)
        return len(first)
    pending, rows = [first, second], 0
    del first, second  # from here on a piece is referenced only while it is written
    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        writer = schema = None
        while (frame := pending.pop(0) if pending else next(it, None)) is not None:
            table = pa.Table.from_pandas(frame, preserve_index=False, schema=schema)
            del frame
            if writer is None:
                schema = table.schema
                writer = stack.enter_context(pq.ParquetWriter(tmp, schema, compression="zstd"))
            writer.write_table(table, row_group_size=row_group_size)
            rows += table.num_rows
            del table
    return rows


def write_parquet_concat(frames: list[pd.DataFrame], path: str | Path, row_group_size: int = 65536) -> int:
    """The parquet table of ``pd.concat(frames, ignore_index=True)`` without building it: frames
    of the same columns and dtypes are written a frame at a time (:func:`write_parquet_pieces`:
    row groups follow the frames, and the concat's copy of every frame is never made); frames
    that differ (a column only some have, which concat fills with NaN) are concatenated. One
    frame: exactly :func:`write_parquet`'s bytes. Returns the number of rows written."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    first = frames[0]
    if any(list(f.columns) != list(first.columns) or not f.dtypes.equals(first.dtypes) for f in frames[1:]):
        whole = pd.concat(frames, ignore_index=True)
        write_parquet(whole, path)
        return len(whole)
    return write_parquet_pieces(frames, path, row_group_size)  # the index is not written: no reset copy


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


class ParquetRows:
    """A lazy (n, F) feature matrix: rows ``rows`` (file row numbers) and columns ``columns`` of
    a parquet file, read a part at a time (issue 19: a stage that needs only parts of the panel
    at once never holds all of it). Indexing with an array or slice of rows gives another lazy
    view; :meth:`read` and :meth:`batches` read values; ``np.asarray`` reads all of them, as
    the in-memory array (C-ordered, the stored dtype) a model that cannot read parts gets.

    A read takes the file's row groups that hold the rows asked for (so a file written by
    symbol batches, :func:`write_parquet_pieces`, is read a batch at a time)."""

    def __init__(self, path: str | Path, columns: list[str], rows: Any, dtype: Any,
                 _groups: Any = None) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        self.path, self.columns, self.dtype = str(path), list(columns), np.dtype(dtype)
        self.rows = np.asarray(rows, np.int64)
        if _groups is None:
            meta = pq.ParquetFile(self.path).metadata
            _groups = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self._groups = _groups  # (G + 1,) first file row of each row group, then the row count
        self._cache: tuple[int, int, Any] | None = None  # (start, stop, values) of the last read
        self._last: tuple[int, Any] | None = None  # (row group, its Arrow table) of the last read
        self.group_reads = 0  # row groups read from the file so far (tests, benchmarks)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.columns)

    ndim = 2

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> ParquetRows:
        return ParquetRows(self.path, self.columns, self.rows[idx], self.dtype, self._groups)

    def select(self, columns: list[str]) -> ParquetRows:
        return ParquetRows(self.path, columns, self.rows, self.dtype, self._groups)

    def read(self, start: int = 0, stop: int | None = None) -> Any:
        """Values of view rows ``start:stop``: (stop - start, F) C-ordered ``dtype``, filled one
        row group at a time, so a read holds one decoded group beside its result however many
        groups its rows span (the val rows of a 65,536-row part, a sixth of each symbol's bars,
        span some seven groups: decoded together they were most of train@boosting's peak)."""
        import numpy as np

        want = self.rows[start:stop]
        out = np.empty((len(want), len(self.columns)), self.dtype)
        if not len(want):
            return out
        group = np.searchsorted(self._groups, want, side="right") - 1  # the row group of each row
        order = None if bool((np.diff(group) >= 0).all()) else np.argsort(group, kind="stable")
        by_group = group if order is None else group[order]
        bounds = [0, *(np.flatnonzero(np.diff(by_group)) + 1).tolist(), len(want)]
        file = None
        for a, b in itertools.pairwise(bounds):
            g = int(by_group[a])
            at = slice(a, b) if order is None else order[a:b]
            local = want[at] - self._groups[g]
            table, file = self._group_table(g, file)
            run = bool((np.diff(local) == 1).all())  # consecutive rows: a slice of each column
            for j, name in enumerate(self.columns):
                col = table.column(name).to_numpy()
                out[at, j] = col[local[0]:local[-1] + 1] if run else col[local]
        return out

    def _group_table(self, g: int, file: Any) -> tuple[Any, Any]:
        """(row group ``g``'s columns as an Arrow table, the open file). The last group read is
        kept: consecutive reads of a view (LightGBM's batches, :meth:`batches`) share the group
        at their boundary, so a pass over the view reads each of its groups once."""
        import pyarrow.parquet as pq

        if self._last is not None and self._last[0] == g:
            return self._last[1], file
        if file is None:  # one open per read: the footer grows with the row groups
            file = pq.ParquetFile(self.path)
        self._last = None  # the kept group freed before the next is decoded
        table = file.read_row_group(g, columns=self.columns)
        self.group_reads += 1
        self._last = (g, table)
        return table, file

    def batches(self, size: int = 65536) -> Iterator[Any]:
        """Consecutive (<= size, F) blocks of the view's values, in row order."""
        for start in range(0, len(self.rows), size):
            yield self.read(start, start + size)

    def row(self, i: int, block: int = 65536) -> Any:
        """Row ``i`` (F,), from a cached read of the ``block`` rows around it (sampling reads many
        nearby rows in increasing order)."""
        if self._cache is None or not self._cache[0] <= i < self._cache[1]:
            start = i - i % block
            self._cache = (start, start + block, self.read(start, start + block))
        return self._cache[2][i - self._cache[0]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        out = self.read() if len(self.rows) else np.empty(self.shape, self.dtype)
        return out if dtype is None else out.astype(dtype, copy=False)
