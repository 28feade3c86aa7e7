"""Validation of raw OHLCV tables into the canonical "bars" panel.

Every data source (bundled, file, synthetic) goes through :func:`validate_bars`, so the rest
of the pipeline can rely on one contract:

    columns   symbol (str), timestamp (datetime64[ns], tz-naive, UTC wall time when the input
              was tz-aware), open, high, low, close, volume (float64)
    order     sorted by (symbol, timestamp), unique keys, RangeIndex

Row references in error messages
--------------------------------
A raw table may carry two bookkeeping columns written by the readers in ``sources.py``:
``_file`` (the file a row came from) and ``_row`` (its 0-based data-row number in that file,
the header not counted). Messages name the first offending row as ``row R`` (0-based data row)
and, for CSV files, also as ``line L`` where ``L = R + 2`` is the 1-based line number in a text
editor with the header on line 1 (exact unless a quoted field contains a newline). Without these
columns, ``_file`` is the ``source_name`` and ``_row`` the row's position in the frame.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from alphafactory.errors import DataValidationError

BAR_COLUMNS: tuple[str, ...] = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
TIMESTAMP_ALIASES: tuple[str, ...] = ("timestamp", "date", "datetime")
SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
# Relative slack for open/close outside [low, high] and for high < low: float rounding in an
# upstream adjustment can leave a close 1 ulp above the high. Values inside the slack are
# clipped into [low, high]; anything beyond it is an error.
OHLC_REL_TOL = 1e-9
# Representable range of datetime64[ns]; anything outside cannot be stored in the panel.
_TS_MIN = pd.Timestamp("1678-01-01")
_TS_MAX = pd.Timestamp("2262-01-01")



def is_safe_symbol(name: str) -> bool:
    """True when ``name`` can be used as a symbol (and as a file name): ``SYMBOL_RE``."""
    return bool(SYMBOL_RE.fullmatch(name))  # not match: "$" also matches before a final "\n"


def normalise_columns(df: pd.DataFrame, source_name: str) -> pd.DataFrame:
    """Lower-case and strip column names, spaces to underscores (``Adj Close`` -> ``adj_close``),
    and rename a ``date`` or ``datetime`` column to ``timestamp``. Returns a shallow copy.

    Raises DataValidationError when two columns collide after normalisation or when more than
    one of ``timestamp``/``date``/``datetime`` is present (which one is meant is ambiguous).
    """
    names = [c if c.startswith("_") else c.strip().lower().replace(" ", "_")
             for c in map(str, df.columns)]
    seen: dict[str, str] = {}
    for orig, new in zip(map(str, df.columns), names, strict=True):
        if new in seen:
            raise DataValidationError(
                f"{source_name}: columns {seen[new]!r} and {orig!r} both mean {new!r} "
                f"(column names are case-insensitive); expected one column per field"
            )
        seen[new] = orig
    present = [a for a in TIMESTAMP_ALIASES if a in seen]
    if len(present) > 1:
        raise DataValidationError(
            f"{source_name}: columns {[seen[a] for a in present]} are all timestamp columns; "
            f"expected exactly one of {list(TIMESTAMP_ALIASES)}"
        )
    out = df.copy(deep=False)
    out.columns = names
    if present and present[0] != "timestamp":
        out = out.rename(columns={present[0]: "timestamp"})
    return out


def _where(file: str, row: int) -> str:
    """'AAPL.csv line 5 (data row 3)' for CSV files, 'x.parquet row 3 (0-based)' otherwise."""
    lower = file.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return f"{file} line {row + 2} (data row {row}, 0-based; header is line 1)"
    return f"{file} row {row} (0-based)"


def _fail(df: pd.DataFrame, mask: np.ndarray | pd.Series, column: str, problem: str,
          expected: str, source_name: str) -> None:
    """Raise DataValidationError about the first row of ``df`` where ``mask`` is True."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    i = int(np.flatnonzero(mask)[0])
    row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in df.iloc[i].items()}
    sym = row["symbol"] if "symbol" in df.columns else None
    sym_txt = "<missing>" if sym is None or pd.isna(sym) else str(sym)
    value = row[column] if column in df.columns else None
    n = int(mask.sum())
    prefix = "" if str(row["_file"]) == source_name else f"{source_name}: "
    raise DataValidationError(
        f"{prefix}{_where(str(row['_file']), int(row['_row']))}: column {column!r}, "
        f"symbol {sym_txt!r}: {problem.format(value=value, r=row)}; expected {expected} "
        f"({n} offending row{'s' if n != 1 else ''} in total)"
    )


# Spellings of a missing value in a number or timestamp column (compared case-insensitively).
# CSVs are read with pandas' NA detection off, so that a symbol such as "NA" stays a symbol.
_NA_STRINGS = ("", "nan", "na", "n/a", "#n/a", "null", "none", "nat", "-nan")


def _is_blank(raw: pd.Series, na_strings: tuple[str, ...] = ("",)) -> np.ndarray:
    """(n_rows,) bool: NaN/None, or a string that after stripping is one of ``na_strings``."""
    blank = raw.isna().to_numpy().copy()  # may be a read-only view
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        # The string test on each distinct value once (a column repeats a few symbols, or
        # holds distinct numbers: the same work then), mapped back through the codes.
        codes, uniq = pd.factorize(raw)  # missing values: code -1, already in `blank`
        s = pd.Series(uniq, dtype=object).astype("string").str.strip().str.lower()
        hit = s.isin(na_strings).fillna(False).to_numpy(dtype=bool)
        if hit.any():
            blank |= (codes >= 0) & hit[np.maximum(codes, 0)]
    return blank


def _parse_numbers(df: pd.DataFrame, column: str, source_name: str) -> np.ndarray:
    """Column as (n_rows,) float64; missing, unparseable or non-finite values are errors."""
    raw = df[column]
    if pd.api.types.is_bool_dtype(raw.dtype):
        _fail(df, np.ones(len(df), bool), column, "got a boolean {value!r}",
              "a number", source_name)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        num = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        blank = np.isnan(num)
    else:
        blank = _is_blank(raw, _NA_STRINGS)
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        _fail(df, np.isnan(num) & ~blank, column, "cannot parse {value!r} as a number",
              "a decimal number such as 12.5", source_name)
    _fail(df, blank, column, "missing value", "a number in every row", source_name)
    _fail(df, ~np.isfinite(num), column, "non-finite value {value!r}", "a finite number",
          source_name)
    return num


def _parse_timestamps(df: pd.DataFrame, source_name: str) -> np.ndarray:
    """``timestamp`` as (n_rows,) datetime64[ns], tz-aware values converted to naive UTC.

    Strings are parsed as ISO-8601 (``2020-01-31``, ``2020-01-31 09:30:00``, with or without a
    UTC offset). Only when no value at all parses as ISO-8601 is one format inferred from the
    first value and applied to every row (e.g. ``01/31/2020``; pandas reads an ambiguous
    ``01/02/2020`` month first). Naive values are taken as they are; values with an offset are
    converted to UTC, except when every one of them is at local midnight: daily bars stamped
    with their exchange's offset (``2020-01-31 00:00+09:00``) keep their local date, since
    converting would make each of them the previous day. A file that mixes values with and
    without an offset is an error: the naive ones have no stated time zone.
    """
    raw = df["timestamp"]
    if pd.api.types.is_datetime64_dtype(raw.dtype):  # naive already (a parquet body): no zone to convert
        vals = raw.to_numpy()
        _fail(df, np.isnat(vals), "timestamp", "missing value", "a date/time in every row", source_name)
        # the bounds in the values' own unit (a coarser one can hold dates past datetime64[ns])
        lo, hi = (np.datetime64(t.date().isoformat(), "D").astype(vals.dtype) for t in (_TS_MIN, _TS_MAX))
        _fail(df, (vals < lo) | (vals > hi), "timestamp",
              "date {value!r} is out of range", "a date between 1678 and 2262", source_name)
        return vals.astype("datetime64[ns]")
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        if isinstance(raw.dtype, pd.DatetimeTZDtype):
            local = raw.dt.tz_localize(None)  # wall time in the values' own zone
            ts = local.dt.tz_localize("UTC") if _all_midnight(local) else raw
        else:
            ts = raw.dt.tz_localize("UTC")
        blank = ts.isna().to_numpy()
        bad = np.zeros(len(df), bool)
    elif pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        _fail(df, np.ones(len(df), bool), "timestamp", "got the number {value!r}",
              "a date/time such as 2020-01-31 or 2020-01-31 09:30:00 (epoch numbers are "
              "ambiguous about their unit)", source_name)
        raise AssertionError("unreachable")  # _fail raised
    else:
        blank = _is_blank(raw, _NA_STRINGS)
        text = raw.astype(str).str.strip()
        offset = text.str.contains(_OFFSET_RE).to_numpy() & ~blank
        if offset.any() and not offset[~blank].all():
            first = int(np.flatnonzero(offset)[0])
            _fail(df, ~offset & ~blank, "timestamp",
                  f"{{value!r}} has no UTC offset while "
                  f"{_where('', int(df['_row'].iloc[first])).split(' (')[0].strip()} "
                  f"({text.iloc[first]!r}) has one",
                  "the same form in every row: all with an offset, or none", source_name)
        if offset.any():
            local = pd.to_datetime(text.str.replace(_OFFSET_RE, "", regex=True), format="ISO8601", errors="coerce")
            if local.notna().all() and _all_midnight(local):  # daily bars: keep the local date
                raw = local.dt.strftime("%Y-%m-%d")
        ts = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
        bad = ts.isna().to_numpy() & ~blank
        if bad.any() and bad.sum() == (~blank).sum():
            alt = pd.to_datetime(raw, errors="coerce", utc=True)
            alt_bad = alt.isna().to_numpy() & ~blank
            if alt_bad.sum() < bad.sum():
                ts, bad = alt, alt_bad
    _fail(df, blank, "timestamp", "missing value", "a date/time in every row", source_name)
    _fail(df, bad, "timestamp", "cannot parse {value!r} as a date/time",
          "ISO-8601 such as 2020-01-31 or 2020-01-31 09:30:00[+00:00]", source_name)
    naive = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    _fail(df, ((naive < _TS_MIN) | (naive > _TS_MAX)).to_numpy(), "timestamp",
          "date {value!r} is out of range", "a date between 1678 and 2262", source_name)
    return naive.to_numpy(dtype="datetime64[ns]")


# A UTC offset after a time of day: "...09:30Z", "...09:30:00+09:00", "...T00:00-0500".
_OFFSET_RE = r"(?<=\d\d:\d\d)(?::\d\d(?:\.\d+)?)?\s*(?:Z|[+-]\d\d(?::?\d\d)?)$"


def _all_midnight(local: pd.Series) -> bool:
    """True when every (non-missing) wall-clock time is 00:00:00: daily bars."""
    valid = local.dropna()
    return bool(len(valid)) and bool((valid == valid.dt.normalize()).all())


def validate_bars(df: pd.DataFrame, source_name: str, *, min_bars: int = 1) -> pd.DataFrame:
    """Check a raw OHLCV table and return the clean, sorted bars panel.

    df: (n_rows, k) raw table. Column names are case-insensitive; ``date``/``datetime`` may
        stand for ``timestamp``; extra columns are ignored. Values may be strings (as read from
        a CSV) or already typed. An optional ``adj_close`` column is applied: open, high, low
        and close are multiplied by ``adj_close / close`` and volume is divided by it, so
        splits and dividends do not look like crashes and dollar volume is unchanged.
    source_name: what the table is (``"bundled"``, a path) - used in every error message.
    min_bars: each symbol needs at least this many bars (see :func:`check_min_bars`).

    Returns (n_rows, 7) DataFrame with columns ``BAR_COLUMNS``, sorted by (symbol, timestamp),
    RangeIndex. Raises DataValidationError, naming the file, column, symbol and first offending
    row (see the module docstring), for: an empty table, a missing column, a missing, unparseable
    or non-finite number or timestamp, an unsafe symbol name, a non-positive price, a negative
    volume, high < low, open or close outside [low, high] (beyond ``OHLC_REL_TOL``), a duplicate
    (symbol, timestamp), and a symbol with fewer than ``min_bars`` bars. Accepted as is: unsorted
    rows, gaps, symbols of different lengths, float volumes, zero volume.
    """
    df = normalise_columns(df, source_name)
    if "_file" not in df.columns:
        df["_file"] = source_name
    if "_row" not in df.columns:
        df["_row"] = np.arange(len(df), dtype=np.int64)
    df = df.reset_index(drop=True)
    found = [c for c in df.columns if not c.startswith("_")]
    if len(df) == 0:
        raise DataValidationError(
            f"{source_name}: no data rows (columns found: {found}); expected at least one bar"
        )
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        files = sorted(map(str, pd.unique(df["_file"])))
        what = (source_name if files == [source_name]
                else f"{source_name}: file {files[0] if len(files) == 1 else files}")
        raise DataValidationError(
            f"{what} is missing column(s) "
            f"{missing}; found columns {found}; expected {list(BAR_COLUMNS)} (names are "
            f"case-insensitive, 'date' or 'datetime' may stand for 'timestamp')"
        )

    # --- symbol -------------------------------------------------------------------------
    _fail(df, _is_blank(df["symbol"]), "symbol", "missing value", "a symbol in every row",
          source_name)
    symbol = df["symbol"].astype(str)
    df["symbol"] = symbol
    uniq = pd.unique(symbol)
    bad_names = {s for s in uniq if not is_safe_symbol(s)}
    if bad_names:
        _fail(df, symbol.isin(bad_names).to_numpy(), "symbol", "unsafe symbol name {value!r}",
              f"a name matching {SYMBOL_RE.pattern} (letters, digits, '.', '_', '-'; at most "
              f"32 characters)", source_name)

    # --- types --------------------------------------------------------------------------
    ts = _parse_timestamps(df, source_name)
    num = {c: _parse_numbers(df, c, source_name) for c in (*PRICE_COLUMNS, "volume")}
    adj = _parse_numbers(df, "adj_close", source_name) if "adj_close" in df.columns else None
    for c in (*PRICE_COLUMNS, "volume"):  # typed values, so messages quote what was parsed
        df[c] = num[c]

    # --- values -------------------------------------------------------------------------
    for c in PRICE_COLUMNS:
        _fail(df, num[c] <= 0, c, "non-positive price {value!r}", "a price > 0", source_name)
    if adj is not None:
        df["adj_close"] = adj
        _fail(df, adj <= 0, "adj_close", "non-positive adjusted close {value!r}",
              "a price > 0", source_name)
    _fail(df, num["volume"] < 0, "volume", "negative volume {value!r}", "a volume >= 0",
          source_name)
    o, h, lo, c = num["open"], num["high"], num["low"], num["close"]
    hi_tol, lo_tol = h * (1 + OHLC_REL_TOL), lo * (1 - OHLC_REL_TOL)
    _fail(df, hi_tol < lo, "high", "high {value!r} is below low {r[low]!r}",
          "high >= low", source_name)
    for name, x in (("open", o), ("close", c)):
        _fail(df, (x > hi_tol) | (x < lo_tol), name,
              f"{name} {{value!r}} is outside [low, high] = [{{r[low]!r}}, {{r[high]!r}}]",
              f"low <= {name} <= high",
              source_name)
    # Within tolerance: clip so the panel satisfies low <= open, close <= high exactly.
    h = np.maximum(h, lo)
    o, c = np.clip(o, lo, h), np.clip(c, lo, h)

    sym = symbol.to_numpy()
    # Bars usually come sorted by (symbol, timestamp) with no repeats: checked in a few array
    # operations; anything else takes the general path (the same messages).
    ordered = len(sym) < 2 or bool(np.all((sym[1:] > sym[:-1]) | ((sym[1:] == sym[:-1]) & (ts[1:] > ts[:-1]))))
    dup = np.zeros(len(sym), bool) if ordered else (
        pd.DataFrame({"symbol": sym, "timestamp": ts}).duplicated(keep="first").to_numpy())
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        same = (sym == sym[i]) & (ts == ts[i])
        j = int(np.flatnonzero(same)[0])
        _fail(df, dup, "timestamp",
              f"duplicate (symbol, timestamp) {{value!r}}, same as "
              f"{_where(str(df['_file'].iat[j]), int(df['_row'].iat[j]))}",
              "one bar per symbol and timestamp", source_name)

    vol = num["volume"]
    if adj is not None:
        factor = adj / c  # (n_rows,) split/dividend adjustment, > 0
        o, h, lo, c, vol = o * factor, h * factor, lo * factor, c * factor, vol / factor

    bars = pd.DataFrame({
        "symbol": symbol.to_numpy(), "timestamp": ts,
        "open": o, "high": h, "low": lo, "close": c, "volume": vol,
    })
    bars["symbol"] = bars["symbol"].astype(str)
    if not ordered:
        bars = bars.sort_values(["symbol", "timestamp"], kind="mergesort", ignore_index=True)
    check_min_bars(bars, min_bars, source_name)
    return bars


def check_min_bars(bars: pd.DataFrame, min_bars: int, source_name: str,
                   context: str = "") -> None:
    """Raise DataValidationError naming every symbol with fewer than ``min_bars`` bars.

    bars: the panel (needs a ``symbol`` column). context: appended to the message, e.g. the
    date filter that was applied.
    """
    if len(bars) == 0:
        raise DataValidationError(
            f"{source_name}: no bars left{context}; expected at least {min_bars} per symbol"
        )
    if min_bars <= 1:  # every symbol present has a bar
        return
    counts = bars.groupby("symbol", sort=True).size()
    short = counts[counts < min_bars]
    if len(short):
        listed = ", ".join(f"{s!r} has {n} bars" for s, n in short.head(10).items())
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise DataValidationError(
            f"{source_name}: too few bars{context}: {listed}{more}; "
            f"expected at least min_bars={min_bars} per symbol"
        )
