"""Data sources: bundled sample stocks, user files, or the synthetic panel; all validated.

``load_bars(cfg)`` is the one entry point. Whatever the source, the result goes through
:func:`alphafactory.data.validate.validate_bars` and comes back as the canonical bars panel
(``symbol, timestamp, open, high, low, close, volume``; see ``validate.py``). The loaders only
read; they never write a file.

Sources
-------
``bundled``
    Daily AAPL, GOOG, IBM and MSFT from ``bokeh_sampledata.stocks`` (Quandl WIKI prices,
    2000-03-01 .. 2013-03-01; GOOG from 2004-08-19). FB (196 bars from its 2012 IPO) is left out.
    The raw prices are unadjusted; they are split- and dividend-adjusted with the source's
    ``adj_close`` exactly as for a file with an ``adj_close`` column: open/high/low/close times
    ``adj_close / close``, volume divided by it (dollar volume unchanged). Data glitches: one bar,
    AAPL 2003-01-29, repeats the previous bar's open/high/low/close to the cent (a stale quote);
    bars whose four prices all equal the previous bar's are dropped and logged (see
    :func:`drop_stale_bars`). Real events stay: AAPL fell 52% on 2000-09-29 (log return -0.73).
``file``
    ``path`` is one long CSV/parquet file with a ``symbol`` column, or a directory with one
    file per symbol (``AAPL.csv``, ``AAPL.parquet``; the symbol is the file name without its
    suffix). See :func:`read_table` for the accepted layout. ``path`` is a dependency of the
    prepare stage in ``dvc.yaml`` (``${data.path}``), whatever the source: DVC hashes the file
    or directory, so new contents at the same path rerun prepare and everything after it, and
    the run-cache can only restore results made from the same bytes. It must therefore always
    name something that exists: ``DEFAULT_PATH`` (``data/raw``, an empty drop folder kept in
    git) unless the source is ``file``.
``synthetic``
    :func:`alphafactory.data.synthetic.make_synthetic`; the only source with an oracle.

Filters (``symbols``, ``start``, ``end``) are applied after validation, so rows outside the date
range are validated too (a corrupt file is an error whatever the filter). ``min_bars`` is then
checked per symbol on what remains.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyarrow

from alphafactory.config import Interval, Unique, check
from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
from alphafactory.data.validate import (
    PRICE_COLUMNS,
    TIMESTAMP_ALIASES,
    check_min_bars,
    is_safe_symbol,
    normalise_columns,
    validate_bars,
)
from alphafactory.errors import ConfigError, DataValidationError

__all__ = [
    "BUNDLED_SYMBOLS",
    "DEFAULT_PATH",
    "DataConfig",
    "DataValidationError",
    "SyntheticConfig",
    "drop_stale_bars",
    "load_bars",
    "load_bundled",
    "load_file",
    "read_table",
]

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("bundled", "file", "synthetic")
# data.path when the source is not a file: an existing (empty) directory, because prepare depends
# on data.path and DVC needs a dependency that exists. Also a place for the user's files.
DEFAULT_PATH = "data/raw"
BUNDLED_SYMBOLS: tuple[str, ...] = ("AAPL", "GOOG", "IBM", "MSFT")
# Suffixes read as tables (matched case-insensitively), longest first so "x.csv.gz" is a CSV.
TABLE_SUFFIXES: tuple[str, ...] = (".csv.gz", ".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class DataConfig:
    """``params.yaml`` section ``data``.

    source: "bundled", "file" or "synthetic". path: file or directory read when source ==
    "file"; otherwise it must stay ``DEFAULT_PATH`` (prepare depends on it in any case).
    symbols: keep only these (empty = all); each must exist. start, end:
    inclusive date filter (an ``end`` without a time of day keeps that whole day). min_bars:
    every kept symbol needs at least this many bars after filtering (callers may pass a computed
    minimum, e.g. lookback + horizons + folds). synthetic: settings of the synthetic source.
    """

    source: Literal[SOURCES] = "bundled"
    path: str = DEFAULT_PATH
    symbols: Annotated[tuple[str, ...], Unique()] = ()
    start: str | None = None
    end: str | None = None
    min_bars: Annotated[int, Interval(ge=1)] = 300
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError(f"data.path: got {self.path!r}, expected a file or directory (the data "
                              f"source: file reads; {DEFAULT_PATH!r} for the other sources)")
        if self.source != "file" and self.path != DEFAULT_PATH:
            raise ConfigError(
                f"data.path: got {self.path!r} with source {self.source!r}; a path is read only when "
                f"source is 'file' (set data.source: file, or leave data.path at {DEFAULT_PATH!r})"
            )
        bad = [s for s in self.symbols if not is_safe_symbol(s)]
        if bad:
            raise ConfigError(f"data.symbols: unsafe symbol name(s) {bad}; expected names like 'AAPL'")
        start, end = _parse_bound(self.start, "start"), _parse_bound(self.end, "end")
        if start is not None and end is not None and start > end:
            raise ConfigError(f"data.start {self.start!r} is after data.end {self.end!r}")


def _parse_bound(value: str | None, name: str) -> pd.Timestamp | None:
    """A filter bound as a naive (UTC wall time) Timestamp."""
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError as e:
        raise ConfigError(f"data.{name}: cannot parse {value!r} as a date ({e})") from e
    if ts is pd.NaT:
        raise ConfigError(f"data.{name}: cannot parse {value!r} as a date")
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def load_bars(cfg: DataConfig, *,
              horizons: tuple[int, ...] = (1,)) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Load, validate and filter the configured source.

    horizons: horizons of the synthetic oracle (ignored by the other sources).
    Returns (bars, oracle): bars (n_rows, 7) panel; oracle None except for ``synthetic``, where
    it is the (n_rows * len(horizons), 4) frame ``symbol, timestamp, horizon, yhat`` restricted
    to the kept bars (computed on the full simulated history, so its values at the first kept
    bars still use the earlier history).
    """
    check(cfg, "data")
    oracle = None
    if cfg.source == "bundled":
        bars, name = load_bundled(), "bundled (bokeh_sampledata.stocks)"
    elif cfg.source == "file":
        bars, name = load_file(cfg.path), f"data.path={cfg.path}"
    else:
        name = "synthetic"
        raw, oracle = make_synthetic(cfg.synthetic, horizons)
        bars = validate_bars(raw, name)
    bars = _filter(bars, cfg, name)
    if oracle is not None:
        keys = bars[["symbol", "timestamp"]]
        oracle = oracle.merge(keys, on=["symbol", "timestamp"], how="inner", sort=False)
        oracle = oracle.sort_values(["symbol", "timestamp", "horizon"], kind="mergesort",
                                    ignore_index=True)
    return bars, oracle


def _filter(bars: pd.DataFrame, cfg: DataConfig, source_name: str) -> pd.DataFrame:
    """Apply the symbol and date filters, then the per-symbol ``min_bars`` check."""
    keep = np.ones(len(bars), dtype=bool)
    if cfg.symbols:
        present = set(pd.unique(bars["symbol"]))
        unknown = [s for s in cfg.symbols if s not in present]
        if unknown:
            raise DataValidationError(
                f"{source_name}: data.symbols {unknown} not found; available symbols: "
                f"{sorted(present)}"
            )
        keep &= bars["symbol"].isin(cfg.symbols).to_numpy()
    start, end = _parse_bound(cfg.start, "start"), _parse_bound(cfg.end, "end")
    ts = bars["timestamp"]
    if start is not None:
        keep &= (ts >= start).to_numpy()
    if end is not None:
        date_only = len(cfg.end or "") <= 10 and end == end.normalize()
        keep &= ((ts < end + pd.Timedelta(days=1)) if date_only else (ts <= end)).to_numpy()
    out = bars.loc[keep].reset_index(drop=True)
    context = "" if start is None and end is None else f" between start={cfg.start} and end={cfg.end}"
    if cfg.symbols:  # a requested symbol with no bar left must be reported, with count 0
        counts = out.groupby("symbol").size().reindex(list(cfg.symbols), fill_value=0)
        empty = counts[counts == 0]
        if len(empty):
            raise DataValidationError(
                f"{source_name}: too few bars{context}: "
                + ", ".join(f"{s!r} has 0 bars" for s in empty.index)
                + f"; expected at least min_bars={cfg.min_bars} per symbol"
            )
    check_min_bars(out, cfg.min_bars, source_name, context)
    return out


# --- bundled ------------------------------------------------------------------------------


def drop_stale_bars(raw: pd.DataFrame, source_name: str) -> pd.DataFrame:
    """Drop bars whose open, high, low and close all equal the previous bar's of the symbol.

    raw: (n_rows, k) with ``symbol`` and price columns, in time order within each symbol.
    Used for the bundled data only, where such repeats are stale vendor rows (a real bar with
    four identical prices to the cent is very unlikely for these liquid stocks); a user's file
    is not second-guessed. Each dropped row is logged.
    """
    prices = raw[list(PRICE_COLUMNS)].to_numpy(np.float64)
    sym = raw["symbol"].to_numpy()
    stale = np.zeros(len(raw), dtype=bool)
    stale[1:] = (sym[1:] == sym[:-1]) & (prices[1:] == prices[:-1]).all(axis=1)
    if stale.any():
        rows = raw.loc[stale, ["symbol", "date"] if "date" in raw.columns else ["symbol"]]
        log.warning("%s: dropped %d stale bar(s) repeating the previous bar's prices: %s",
                    source_name, int(stale.sum()), rows.to_dict("records"))
    return raw.loc[~stale].reset_index(drop=True)


def load_bundled() -> pd.DataFrame:
    """AAPL, GOOG, IBM, MSFT daily bars from ``bokeh_sampledata.stocks``, adjusted and validated.

    Returns (n_rows, 7) panel (about 11,950 rows). Error messages point at
    ``bokeh_sampledata.stocks.<SYMBOL>`` and the 0-based index in that symbol's lists.
    """
    import bokeh_sampledata.stocks as stocks  # imported here: reads a gzip file on import

    frames = []
    for sym in BUNDLED_SYMBOLS:
        d = pd.DataFrame(getattr(stocks, sym))
        d.insert(0, "symbol", sym)
        d["_file"] = f"bokeh_sampledata.stocks.{sym}"
        d["_row"] = np.arange(len(d), dtype=np.int64)
        frames.append(d)
    raw = drop_stale_bars(pd.concat(frames, ignore_index=True), "bundled")
    return validate_bars(raw, "bundled (bokeh_sampledata.stocks)")


# --- files --------------------------------------------------------------------------------


def _table_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in TABLE_SUFFIXES if name.endswith(s)), None)


def read_table(path: str | Path, symbol: str | None = None) -> pd.DataFrame:
    """Read one CSV or parquet file as a raw table for :func:`validate_bars`.

    Columns are normalised (case-insensitive, ``date``/``datetime`` -> ``timestamp``). In a CSV
    only empty cells count as missing, and a column with any non-numeric cell stays text so that
    validation can tell an unparseable value from a missing one. Blank CSV lines are dropped and
    logged (line numbers in messages stay exact). ``symbol``: the symbol of a per-symbol
    file; a ``symbol`` column, if present, must then agree with it. Adds ``_file`` (the path) and
    ``_row`` (0-based data row). Returns (n_rows, k) DataFrame.
    """
    path = Path(path)
    suffix = _table_suffix(path)
    if suffix is None:
        raise DataValidationError(
            f"{path}: unsupported file type; expected one of {list(TABLE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty (0 bytes); expected a header and "
                                  f"at least one data row")
    if suffix.startswith(".csv"):
        try:
            # Symbol and timestamp as text; numbers typed by the fast C parser where the whole
            # column parses (pandas' default float parsing round-trips exactly), else left as
            # text so validation can pinpoint the bad cell. No NA guessing beyond empty cells:
            # validation tells "missing" from "unparseable" itself, and a symbol spelled "NA"
            # or "NULL" stays a symbol.
            header = pd.read_csv(path, nrows=0).columns
            text = {c: str for c in header
                    if str(c).strip().lower() in ("symbol", *TIMESTAMP_ALIASES)}
            df = pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""],
                             skip_blank_lines=False)
        except pd.errors.EmptyDataError as e:
            raise DataValidationError(f"{path}: the file is empty; expected a header line "
                                      f"and at least one data row") from e
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataValidationError(f"{path}: cannot parse as CSV ({e})") from e
    else:
        try:
            df = pd.read_parquet(path)
        except (pyarrow.ArrowException, OSError) as e:
            raise DataValidationError(f"{path}: cannot read as parquet ({e})") from e
        if not isinstance(df.index, pd.RangeIndex):  # e.g. written with timestamp as the index
            df = df.reset_index()
    df = normalise_columns(df, str(path))
    df["_file"] = str(path)
    df["_row"] = np.arange(len(df), dtype=np.int64)
    if suffix.startswith(".csv"):
        blank = df.drop(columns=["_file", "_row"]).isna().all(axis=1).to_numpy()
        if blank.any():
            log.info("%s: skipped %d blank line(s)", path, int(blank.sum()))
            df = df.loc[~blank].reset_index(drop=True)
    if symbol is not None:
        if "symbol" in df.columns:
            mismatch = (df["symbol"].astype(str) != symbol).to_numpy()
            if mismatch.any():
                i = int(np.flatnonzero(mismatch)[0])
                where = (f"line {df['_row'].iat[i] + 2}" if suffix.startswith(".csv")
                         else f"row {df['_row'].iat[i]} (0-based)")
                raise DataValidationError(
                    f"{path} {where}: column 'symbol', symbol {df['symbol'].iat[i]!r}: does not "
                    f"match the file name; expected {symbol!r} (or no symbol column)"
                )
        df["symbol"] = symbol
    return df


def load_file(path: str | Path) -> pd.DataFrame:
    """Read and validate ``path``: a long table, or a directory of per-symbol tables.

    A directory is read file by file (``<SYMBOL><suffix>``, suffixes in ``TABLE_SUFFIXES``);
    hidden files and subdirectories are skipped and other files are logged and skipped.
    Returns the (n_rows, 7) validated panel.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"data.path={path}: no such file or directory")
    if path.is_file():
        return validate_bars(read_table(path), str(path))
    files: dict[str, Path] = {}
    skipped = []
    for p in sorted(path.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        suffix = _table_suffix(p)
        if suffix is None:
            skipped.append(p.name)
            continue
        sym = p.name[: -len(suffix)]
        if not is_safe_symbol(sym):
            raise DataValidationError(
                f"{p}: column 'symbol' (from the file name), symbol {sym!r}: unsafe symbol name; "
                f"expected a name matching ^[A-Za-z0-9][A-Za-z0-9._-]{{0,31}}$"
            )
        if sym in files:
            raise DataValidationError(
                f"{path}: symbol {sym!r} has two files, {files[sym].name} and {p.name}; "
                f"expected one file per symbol"
            )
        files[sym] = p
    if skipped:
        log.warning("%s: skipped %d file(s) that are not tables: %s", path, len(skipped), skipped)
    if not files:
        raise DataValidationError(
            f"{path}: directory has no data files; expected <SYMBOL> files with a suffix in "
            f"{list(TABLE_SUFFIXES)}"
        )
    # Validated file by file: each file may have its own column case and value types, and each
    # message then names the file. Symbols differ between files, so keys stay unique.
    panels = [validate_bars(read_table(p, symbol=sym), str(p)) for sym, p in files.items()]
    return pd.concat(panels, ignore_index=True).sort_values(
        ["symbol", "timestamp"], kind="mergesort", ignore_index=True)
