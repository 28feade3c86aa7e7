"""Model-ready arrays: features joined to labels and segments, plus lazy sequence windows."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphafactory.io import ParquetRows
from alphafactory.labels import KEYS, target_columns


@dataclass(frozen=True)
class Windows:
    """Lazy view of sequence windows ``(n, lookback, F)`` over a feature matrix.

    Window i covers rows ``ends[i] - lookback + 1 .. ends[i]`` of ``base`` (all of one symbol,
    the last one being the row to forecast), so a window never crosses symbols and never reaches
    past its own row. Materialise a batch with ``windows[idx]``; ``np.asarray`` materialises all.

    ``raw`` (``neural.inputs`` raw or both): the raw OHLCV channels of each window
    (a :class:`alphafactory.raw_windows.RawSource`), appended to the feature channels per step, or alone when
    ``features`` is False: ``(n, lookback, F + C)`` or ``(n, lookback, C)``.
    """

    base: np.ndarray  # (N, F) float32
    ends: np.ndarray  # (n,) int64 row indices into base
    lookback: int
    raw: Any = None  # a raw_windows.RawSource, or None
    features: bool = True

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def shape(self) -> tuple[int, int, int]:
        channels = (self.base.shape[1] if self.features else 0) + (0 if self.raw is None else self.raw.cfg.channels)
        return (len(self.ends), self.lookback, channels)

    def __getitem__(self, idx) -> np.ndarray:
        ends = self.ends[idx]
        rows = ends[..., None] + np.arange(-self.lookback + 1, 1)  # (b, L)
        if self.raw is None:
            return self.base[rows]  # (b, L, F)
        raw = self.raw.windows(idx, self.lookback).astype(self.base.dtype, copy=False)  # (b, L, C)
        return np.concatenate([self.base[rows], raw], -1) if self.features else raw

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def take(self, idx: np.ndarray) -> Windows:
        return Windows(self.base, self.ends[idx], self.lookback,
                       None if self.raw is None else self.raw.take(idx), self.features)


@dataclass
class Dataset:
    """Rows sorted by (symbol, timestamp), one per bar that has features.

    X: (n, F) features as stored (float32, or float64 with ``features.dtype``); Y: (n, H) float32
    targets (NaN where the label is missing); segment: (n,) str in {train, val, test, purged}; vol: (n,) trailing 1-bar volatility at
    each row's time (the label stage's ``vol``, used to scale forecast uncertainty); C: (n, H)
    float32 class indices 0/1/2 (SHORT/NEUTRAL/LONG, the label stage's ``cls_h`` + 1), NaN where
    unlabelled: the targets of the classification task; R: (n, H) float32 raw forward log
    returns (``ret_h``, what CV scores against; equal to Y under ``label.normalize: none``), None
    when the labels carry none. bars, bar_rows: the prepared bars and the row of each row's own
    bar in them (:func:`alphafactory.raw_windows.with_bars`), for the raw windows of
    ``neural.inputs``; None without.
    """

    keys: pd.DataFrame
    X: np.ndarray
    Y: np.ndarray
    feature_names: list[str]
    horizons: tuple[int, ...]
    segment: np.ndarray
    sym_codes: np.ndarray = field(repr=False)
    vol: np.ndarray = field(repr=False)
    C: np.ndarray | None = field(default=None, repr=False)
    R: np.ndarray | None = field(default=None, repr=False)
    bars: Any = field(default=None, repr=False)  # a raw_windows.Bars, or None
    bar_rows: np.ndarray | None = field(default=None, repr=False)

    def rows(self, segment: str) -> np.ndarray:
        return np.flatnonzero(self.segment == segment)

    def window_ends(self, rows: np.ndarray, lookback: int) -> np.ndarray:
        """The subset of ``rows`` that has ``lookback`` bars of its own symbol up to itself."""
        start = rows - lookback + 1
        ok = (start >= 0)
        ok[ok] &= self.sym_codes[start[ok]] == self.sym_codes[rows[ok]]
        return rows[ok]

    def windows(self, rows: np.ndarray, lookback: int) -> Windows:
        return Windows(self.X, rows, lookback)

    def with_features(self, columns: list[str]) -> Dataset:
        """The dataset with only ``columns`` (names of ``feature_names``) of ``X``, in that order
        (the columns ``train.select`` kept, see :mod:`alphafactory.feature_select`)."""
        index = {n: i for i, n in enumerate(self.feature_names)}
        missing = [c for c in columns if c not in index]
        if missing:
            raise ValueError(f"{len(missing)} feature column(s) not in the features table, e.g. {missing[:5]}")
        idx = np.array([index[c] for c in columns], np.int64)
        return replace(self, X=np.ascontiguousarray(self.X[:, idx]), feature_names=list(columns))

    def subset(self, rows: np.ndarray) -> Dataset:
        """The dataset restricted to ``rows`` (sorted indices), e.g. one symbol's rows."""
        return Dataset(keys=self.keys.iloc[rows].reset_index(drop=True), X=self.X[rows], Y=self.Y[rows],
                       feature_names=self.feature_names, horizons=self.horizons, segment=self.segment[rows],
                       sym_codes=self.sym_codes[rows], vol=self.vol[rows],
                       C=None if self.C is None else self.C[rows], R=None if self.R is None else self.R[rows],
                       bars=self.bars, bar_rows=None if self.bar_rows is None else self.bar_rows[rows])


def assemble(features: pd.DataFrame, labels: pd.DataFrame, segments: pd.DataFrame,
             horizons: tuple[int, ...]) -> Dataset:
    """Inner-join features (warm-up rows already dropped) with labels and segments on
    (symbol, timestamp). Rows of ``labels``/``segments`` without features are dropped."""
    fnames = [c for c in features.columns if c not in KEYS]
    df, ds = _join(features, labels, segments, horizons)
    X = np.ascontiguousarray(df[fnames].to_numpy(feature_dtype(features, fnames)))  # as stored
    return replace(ds, X=X, feature_names=fnames)


def _join(features: pd.DataFrame, labels: pd.DataFrame, segments: pd.DataFrame,
          horizons: tuple[int, ...]) -> tuple[pd.DataFrame, Dataset]:
    """(joined frame sorted by KEYS, its Dataset without features: X (n, 0), no feature names)."""
    ycols = target_columns(horizons)
    missing = [c for c in ycols if c not in labels.columns]
    if missing:
        raise ValueError(
            f"labels lack {missing}: the label stage was run with other horizons than {list(horizons)}"
        )
    ccols = [f"cls_h{h}" for h in horizons]
    rcols = [f"ret_h{h}" for h in horizons]
    rcols = rcols if all(c in labels.columns for c in rcols) else []
    # joined and sorted on (symbol code, timestamp): codes into the symbols' sorted union, so
    # their order is the symbols' and the merges hash integers, not 3 x n string objects
    names = np.unique(np.concatenate([pd.unique(f["symbol"]).astype(object) for f in (features, labels, segments)]))
    code = pd.Index(names)
    on = ["_sym", "timestamp"]

    def keyed(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"_sym": code.get_indexer(frame["symbol"]), **{c: frame[c] for c in ["timestamp", *cols]}})

    lab = keyed(labels, ycols + ccols + rcols + ["vol"]).merge(keyed(segments, ["segment"]), on=on, how="inner",
                                                               validate="1:1")
    left = features.assign(_sym=code.get_indexer(features["symbol"]))
    df = left.merge(lab, on=on, how="inner", validate="1:1")
    del left, lab
    # the stages' tables are stored in this order: then no sorted copy of the joined frame
    df = df.reset_index(drop=True) if _in_key_order(df) else df.sort_values(on, kind="stable").reset_index(drop=True)
    if df.empty:
        raise ValueError("no rows left after joining features, labels and splits on (symbol, timestamp)")
    Y = df[ycols].to_numpy(np.float32)
    return df, Dataset(
        keys=df[KEYS].copy(), X=np.empty((len(df), 0), np.float32), Y=Y, feature_names=[],
        horizons=tuple(horizons),
        segment=df["segment"].to_numpy().astype(str), sym_codes=pd.factorize(df["_sym"])[0],
        vol=df["vol"].to_numpy(np.float64), C=df[ccols].to_numpy(np.float32) + 1,
        R=df[rcols].to_numpy(np.float32) if rcols else None,
    )


def _in_key_order(df: pd.DataFrame) -> bool:
    """Whether the rows of ``df`` are strictly increasing in (``_sym``, ``timestamp``)."""
    step, later = df["_sym"].diff().iloc[1:], df["timestamp"].diff().iloc[1:] > pd.Timedelta(0)
    return bool(((step > 0) | ((step == 0) & later)).all())


def feature_dtype(frame: pd.DataFrame, columns: list[str]) -> np.dtype:
    """The one dtype of the feature columns ``columns`` of ``frame`` (float32 or float64, as
    ``features.dtype`` stored them; float32 if there are none); ValueError naming the dtypes
    otherwise."""
    if not columns:
        return np.dtype(np.float32)
    # frame.dtypes[c] builds the whole dtypes Series per call: once, then look the columns up
    of = frame.dtypes.to_dict()
    dtypes = {np.dtype(of[c]) for c in columns}
    if len(dtypes) != 1 or not dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}:
        raise ValueError(f"feature columns: got dtypes {sorted(map(str, dtypes))}, expected all float32 "
                         "or all float64 (features.dtype)")
    return dtypes.pop()


def drop_warmup(frame: pd.DataFrame, warmup: int) -> pd.DataFrame:
    """Drop each symbol's first ``warmup`` rows (frame sorted by symbol, timestamp)."""
    return frame.loc[after_warmup(frame, warmup)].reset_index(drop=True)


def after_warmup(frame: pd.DataFrame, warmup: int) -> np.ndarray:
    """(n,) bool: the rows of ``frame`` (sorted by symbol, timestamp) past their symbol's first
    ``warmup`` rows; for a piece of a table whose index holds row positions,
    ``piece.loc[mask[piece.index]]`` is the piece's part of :func:`drop_warmup`."""
    return frame.groupby("symbol", sort=False).cumcount().to_numpy() >= warmup


def horizons_of(labels: pd.DataFrame | list[str]) -> tuple[int, ...]:
    """The horizons the label stage produced, from its ``y_h{h}`` columns (of a frame, or the
    column names of its file)."""
    names = labels.columns if isinstance(labels, pd.DataFrame) else labels
    return tuple(int(c[3:]) for c in names if c.startswith("y_h"))


def load(features: str, labels: str, segments: str, *, lazy: bool = False) -> Dataset:
    """Read the featurize, label and split outputs and assemble them (:func:`join_file`)."""
    import pyarrow.parquet as pq

    have = pq.read_schema(labels).names  # only the columns the join takes (not end_h*)
    horizons = horizons_of(have)
    used = {*KEYS, "vol", *target_columns(horizons), *(f"{p}_h{h}" for p in ("cls", "ret") for h in horizons)}
    lab = pd.read_parquet(labels, columns=[c for c in have if c in used])
    # the targets, classes and returns are taken as float32: cast on reading, the same values
    for c in lab.columns.difference([*KEYS, "vol"]):
        lab[c] = lab[c].astype(np.float32, copy=False)
    return join_file(features, lab, pd.read_parquet(segments), horizons, lazy=lazy)


def join_file(features: str, labels: pd.DataFrame, segments: pd.DataFrame, horizons: tuple[int, ...], *,
              lazy: bool = False) -> Dataset:
    """:func:`assemble` of the feature file ``features`` (a parquet file or directory dataset)
    with ``labels`` and ``segments``: the same Dataset, built without a frame of the features.
    The join runs on the feature table's keys alone, and ``X`` is filled column block by column
    block straight from parquet, so the peak is ``X`` plus one block, not the three or four
    copies of the feature matrix a frame merge, sort and ``to_numpy`` make.

    lazy: ``X`` is an :class:`alphafactory.io.ParquetRows` view of the feature file instead,
    read in parts by the models that can (LightGBM) and whole by the others (``features`` one
    file; a directory dataset is read into memory)."""
    import pyarrow.dataset as pads

    source = pads.dataset(features, format="parquet")
    fnames = [c for c in source.schema.names if c not in KEYS]
    dtypes = {np.dtype(source.schema.field(c).type.to_pandas_dtype()) for c in fnames} or {np.dtype(np.float32)}
    if len(dtypes) != 1 or not dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}:
        raise ValueError(f"feature columns: got dtypes {sorted(map(str, dtypes))}, expected all float32 "
                         "or all float64 (features.dtype)")
    keys = pd.read_parquet(features, columns=KEYS)
    df, ds = _join(keys.assign(_row=np.arange(len(keys))), labels, segments, horizons)
    rows = df["_row"].to_numpy(np.int64)  # (n,) row of the feature table of each dataset row
    del df
    dtype = dtypes.pop()
    if lazy and Path(features).is_file():
        return replace(ds, X=ParquetRows(features, fnames, rows, dtype), feature_names=fnames)
    identity = len(rows) == len(keys) and bool((rows == np.arange(len(rows))).all())
    X = np.empty((len(rows), len(fnames)), dtype)
    for j in range(0, len(fnames), _LOAD_BLOCK):
        block = source.to_table(columns=fnames[j:j + _LOAD_BLOCK])
        for k, name in enumerate(block.column_names):
            col = block.column(name).to_numpy()
            X[:, j + k] = col if identity else col[rows]
        del block
    return replace(ds, X=X, feature_names=fnames)


_LOAD_BLOCK = 16  # feature columns read at a time by load
