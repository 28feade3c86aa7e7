"""Forecast, trading, calibration and classification metrics.

Conventions shared by every function here:

* ``y`` is the forward log return over ``h`` bars; ``yhat`` is in the same units. Inputs are
  1-D float64. **Non-finite values are rejected** with ``ValueError`` (callers drop rows whose
  target is not yet known before calling); nothing is dropped silently.
* Trading returns are **simple** returns: a log target ``y`` becomes ``exp(y) - 1`` before it
  is multiplied by a position, because simple returns, not log returns, aggregate across names.
* One trading *period* spans ``horizon`` bars, so annualisation uses
  ``periods_per_year / horizon`` periods a year (``periods_per_year`` counts bars: 252 for daily
  bars, ``252 * 7`` for hourly bars of a US session).
* Undefined statistics (a correlation with a constant side, a Sharpe ratio with zero variance,
  an AUC with a class missing) are ``NaN`` rather than exceptions, so a zero-forecast baseline
  can be scored by the same code.
* Drawdowns are **positive fractions** of the running peak (0.25 means equity fell 25 %).
* Every float in a returned dict is a plain Python ``float`` (JSON-serialisable); counts are
  ``int``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

ArrayLike = np.ndarray | pd.Series | Sequence[float]

CLASS_LABELS: tuple[int, int, int] = (-1, 0, 1)  # SHORT, NEUTRAL, LONG: column order of proba
_CLASS_NAMES: tuple[str, str, str] = ("short", "neutral", "long")
_LOG_LOSS_EPS = 1e-15
_PROBA_SUM_TOL = 1e-6


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _as_1d(x: ArrayLike, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array or raise ``ValueError`` naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; expected at least one row")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values (first at position "
            f"{int(np.flatnonzero(bad)[0])}); drop those rows before scoring"
        )
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


def _check_horizon(horizon: int) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")


def _check_periods_per_year(periods_per_year: float) -> None:
    if not (np.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be a finite number > 0, got {periods_per_year!r}")


def _check_cost(cost_bps: float) -> None:
    if not (np.isfinite(cost_bps) and cost_bps >= 0):
        raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps!r}")


def _require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"df is missing columns {missing}; expected {list(columns)}")


def _is_constant(x: np.ndarray) -> bool:
    # exact test: float round-off makes std() of a constant array tiny but not always 0
    return bool(np.ptp(x) == 0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length finite arrays; NaN if either side is constant."""
    if a.size < 2 or _is_constant(a) or _is_constant(b):
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return float(np.clip(r, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# point-forecast metrics
# ---------------------------------------------------------------------------------------------


def regression_metrics(y: ArrayLike, yhat: ArrayLike) -> dict[str, float]:
    """Point-forecast accuracy of ``yhat`` against realised ``y``.

    Args:
        y: (n,) realised forward log returns, finite (NaN rows raise ``ValueError``).
        yhat: (n,) forecasts, same units.

    Returns:
        ``mae``, ``rmse``; ``r2 = 1 - SSE/SST`` with SST around the mean of ``y`` (a constant
        forecast equal to that mean scores 0, the zero forecast scores slightly below 0; NaN if
        ``y`` is constant); ``dir_acc`` = share of rows with ``y != 0`` where
        ``sign(yhat) == sign(y)`` -- rows with ``y == 0`` are left out, a zero forecast counts
        as wrong, NaN if every ``y`` is 0; ``ic`` (Pearson) and ``rank_ic`` (Spearman, average
        ranks for ties), NaN when either side is constant (e.g. the zero baseline); ``n``.
    """
    y = _as_1d(y, "y")
    yhat = _as_1d(yhat, "yhat")
    _same_length(y=y, yhat=yhat)
    err = yhat - y
    sse = float(np.dot(err, err))
    sst = float(np.sum((y - y.mean()) ** 2))
    scored = y != 0
    hits = np.sign(yhat[scored]) == np.sign(y[scored])
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": math.sqrt(sse / y.size),
        "r2": math.nan if _is_constant(y) else 1.0 - sse / sst,
        "dir_acc": float(hits.mean()) if scored.any() else math.nan,
        "ic": _pearson(y, yhat),
        "rank_ic": _pearson(rankdata(y), rankdata(yhat)),
        "n": int(y.size),
    }


def _grouped_pearson(keys: np.ndarray, a: np.ndarray, b: np.ndarray) -> pd.Series:
    """Pearson correlation of ``a`` and ``b`` within each key; (n_keys,) sorted by key."""
    frame = pd.DataFrame({"k": keys, "a": a, "b": b})
    means = frame.groupby("k", sort=True)[["a", "b"]].transform("mean")
    da = a - means["a"].to_numpy()
    db = b - means["b"].to_numpy()
    sums = (
        pd.DataFrame({"k": keys, "ab": da * db, "aa": da * da, "bb": db * db})
        .groupby("k", sort=True)
        .sum()
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sums["ab"] / np.sqrt(sums["aa"] * sums["bb"])
    return r.clip(-1.0, 1.0)


def newey_west_se(x: ArrayLike, lag: int) -> float:
    """Newey-West (Bartlett kernel) standard error of the mean of a series.

    ``SE = sqrt((g_0 + 2 * sum_{j=1..L} (1 - j / (L + 1)) * g_j) / T)`` with ``g_j`` the lag-j
    autocovariance (divided by ``T``, around the mean). For a series of per-bar statistics of
    ``h``-bar labels, neighbouring values share ``h - 1`` bars of the label: ``lag = h - 1``
    covers that overlap. ``lag = 0`` is the i.i.d. ``std(ddof=0) / sqrt(T)``.

    Args:
        x: (T,) finite values in time order.
        lag: number of autocovariances kept, >= 0.

    Returns:
        The standard error; NaN with fewer than 2 values or when it is not positive.
    """
    if isinstance(lag, bool) or not isinstance(lag, int | np.integer) or lag < 0:
        raise ValueError(f"lag must be an integer >= 0, got {lag!r}")
    v = _as_1d(x, "x", allow_empty=True)
    n = v.size
    if n < 2:
        return math.nan
    d = v - v.mean()
    lrv = float(np.dot(d, d)) / n
    for j in range(1, min(int(lag), n - 1) + 1):
        lrv += 2.0 * (1.0 - j / (lag + 1)) * float(np.dot(d[j:], d[:-j])) / n
    return math.sqrt(lrv / n) if lrv > 0 else math.nan


def _ir_summary(values: pd.Series, prefix: str, lag: int) -> dict[str, float]:
    """Mean, std (ddof=1), mean/std, and the Newey-West SE and t-statistic of the mean, of
    per-period ICs in time order; NaN where undefined."""
    mean = float(values.mean()) if len(values) else math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    ir = mean / std if std > 0 else math.nan  # NaN std compares False -> NaN
    se = newey_west_se(values.to_numpy(), lag)
    t = mean / se if se > 0 else math.nan
    return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}ir": ir,
            f"{prefix}_se": se, f"{prefix}_t": t}


def cross_sectional_ic(df: pd.DataFrame, min_symbols: int = 3, horizon: int = 1,
                       periods_per_year: float | None = None) -> dict[str, float]:
    """Per-timestamp correlation of ``yhat`` with ``y`` across symbols, summarised over time.

    Args:
        df: long panel with columns ``timestamp``, ``y``, ``yhat`` (one row per symbol and
            timestamp; ``y``/``yhat`` finite).
        min_symbols: a timestamp is scored only if it has at least this many rows (>= 2) and
            neither ``y`` nor ``yhat`` is constant across them (the correlation is undefined).
        horizon: bars per label ``h``; the ICs of neighbouring timestamps share ``h - 1`` bars
            of their labels, so the standard error of their mean is Newey-West with lag
            ``h - 1``.
        periods_per_year: bars per year; when given, ``icir_ann`` and ``rank_icir_ann`` are
            the IRs annualised like a Sharpe ratio, ``* sqrt(periods_per_year / h)``.

    Returns:
        ``ic_mean``, ``ic_std`` (ddof=1), ``icir`` (mean/std, **per period**), ``ic_se``
        (Newey-West, lag ``h - 1``, of the mean) and ``ic_t`` (``ic_mean / ic_se``) for
        Pearson, the same with ``rank_`` prefix for Spearman, and ``n_periods`` (scored
        timestamps). With no scored timestamp every statistic is NaN and ``n_periods`` is 0;
        with one, std, IR and SE are NaN.
    """
    _check_horizon(horizon)
    if periods_per_year is not None:
        _check_periods_per_year(periods_per_year)
    _require_columns(df, ("timestamp", "y", "yhat"))
    if isinstance(min_symbols, bool) or not isinstance(min_symbols, int | np.integer):
        raise ValueError(f"min_symbols must be an integer >= 2, got {min_symbols!r}")
    if min_symbols < 2:
        raise ValueError(f"min_symbols must be an integer >= 2, got {min_symbols!r}")
    if df["timestamp"].isna().any():
        raise ValueError("df['timestamp'] has missing values; every row needs a timestamp")
    y = _as_1d(df["y"], "df['y']", allow_empty=True)
    yhat = _as_1d(df["yhat"], "df['yhat']", allow_empty=True)
    keys = df["timestamp"].to_numpy()

    frame = pd.DataFrame({"k": keys, "y": y, "yhat": yhat})
    grouped = frame.groupby("k", sort=True)
    stats = grouped.agg(
        n=("y", "size"),
        y_lo=("y", "min"),
        y_hi=("y", "max"),
        p_lo=("yhat", "min"),
        p_hi=("yhat", "max"),
    )
    valid = (
        (stats["n"] >= min_symbols)
        & (stats["y_hi"] > stats["y_lo"])
        & (stats["p_hi"] > stats["p_lo"])
    )
    ic = _grouped_pearson(keys, y, yhat)[valid]
    # Spearman = Pearson of within-timestamp average ranks
    ry = grouped["y"].rank(method="average").to_numpy()
    rp = grouped["yhat"].rank(method="average").to_numpy()
    rank_ic = _grouped_pearson(keys, ry, rp)[valid]
    out = {
        **_ir_summary(ic, "ic", horizon - 1),
        **_ir_summary(rank_ic, "rank_ic", horizon - 1),
        "n_periods": int(valid.sum()),
    }
    if periods_per_year is not None:
        scale = math.sqrt(periods_per_year / horizon)
        out.update(icir_ann=out["icir"] * scale, rank_icir_ann=out["rank_icir"] * scale)
    return out


def rolling_ic(df: pd.DataFrame, window: int) -> pd.Series:
    """Pearson IC of ``yhat`` with ``y`` over the rows of the trailing ``window`` timestamps.

    All symbols' rows in the window are pooled (one correlation per window, not a mean of
    per-timestamp correlations), so it is defined with a single symbol too.

    Args:
        df: long panel with columns ``timestamp``, ``y``, ``yhat`` (finite).
        window: number of distinct timestamps (bars) per window, >= 2.

    Returns:
        (n_timestamps,) float64 series indexed by sorted distinct timestamp; NaN for the first
        ``window - 1`` timestamps and for windows where ``y`` or ``yhat`` is constant.
    """
    _require_columns(df, ("timestamp", "y", "yhat"))
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    y = _as_1d(df["y"], "df['y']")
    p = _as_1d(df["yhat"], "df['yhat']")
    # Centring by the global means leaves every window's correlation unchanged and keeps the
    # sums-of-products formula below clear of cancellation.
    yc, pc = y - y.mean(), p - p.mean()
    frame = pd.DataFrame({"t": df["timestamp"].to_numpy(), "n": 1.0, "y": yc, "p": pc,
                          "yy": yc * yc, "pp": pc * pc, "yp": yc * pc, "y_raw": y, "p_raw": p})
    grouped = frame.groupby("t", sort=True)
    sums = grouped[["n", "y", "p", "yy", "pp", "yp"]].sum().rolling(window, min_periods=window).sum()
    lo = grouped[["y_raw", "p_raw"]].min().rolling(window, min_periods=window).min()
    hi = grouped[["y_raw", "p_raw"]].max().rolling(window, min_periods=window).max()
    n = sums["n"]
    cov = sums["yp"] - sums["y"] * sums["p"] / n
    var_y = sums["yy"] - sums["y"] ** 2 / n
    var_p = sums["pp"] - sums["p"] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (cov / np.sqrt(var_y * var_p)).clip(-1.0, 1.0)
    # exact constant test (as _is_constant): round-off leaves a tiny non-zero variance
    constant = (hi["y_raw"] == lo["y_raw"]) | (hi["p_raw"] == lo["p_raw"])
    return r.where(~constant).rename("ic").rename_axis("timestamp")


def ic_standard_error(df: pd.DataFrame, horizon: int, n_boot: int = 500, seed: int = 0) -> float:
    """Standard error of the pooled IC (Pearson of ``y`` and ``yhat`` over all rows), by a
    moving-block bootstrap over timestamps.

    Rows are not independent: symbols move together at a timestamp, and h-bar labels of
    neighbouring bars overlap by h - 1 bars. Resampling whole timestamps, in blocks of
    ``L = max(horizon, ceil(T ** (1/3)))`` consecutive ones, keeps both dependencies inside a
    block; the formula SE ``(1 - r^2) / sqrt(n - 3)`` would ignore them and come out too small.

    Args:
        df: long panel with ``timestamp``, ``y``, ``yhat`` (finite).
        horizon: bars per label, >= 1.
        n_boot: bootstrap replicates; ``seed`` fixes their draws (the same draws for every model
            scored on the same rows, so the SEs of two models are comparable).

    Returns:
        The standard deviation (ddof 1) of the replicate ICs; NaN when the IC itself is
        undefined (a constant side) or there are fewer than 2 blocks of timestamps.
    """
    _check_horizon(horizon)
    _require_columns(df, ("timestamp", "y", "yhat"))
    y, p = _as_1d(df["y"], "df['y']"), _as_1d(df["yhat"], "df['yhat']")
    if y.size < 3 or _is_constant(y) or _is_constant(p):
        return math.nan
    t = pd.factorize(df["timestamp"].to_numpy(), sort=True)[0]
    n_t = int(t.max()) + 1
    block = max(int(horizon), math.ceil(n_t ** (1 / 3)))
    if n_t < 2 * block:
        return math.nan
    yc, pc = y - y.mean(), p - p.mean()  # centred: the sums-of-products formula stays accurate
    # (T, 6) sums per timestamp: a replicate is a weighted sum of these rows
    sums = np.stack([np.bincount(t, weights=w, minlength=n_t)
                     for w in (np.ones_like(yc), yc, pc, yc * yc, pc * pc, yc * pc)], axis=1)
    rng = np.random.default_rng(seed)
    n_blocks = math.ceil(n_t / block)
    starts = rng.integers(0, n_t - block + 1, size=(n_boot, n_blocks))
    drawn = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n_t]  # (B, T)
    # (B, T) times each timestamp is drawn: one bincount over replicate-offset indices
    weights = np.bincount((drawn + n_t * np.arange(n_boot)[:, None]).ravel(),
                          minlength=n_boot * n_t).reshape(n_boot, n_t)
    n, sy, sp, syy, spp, syp = (weights @ sums).T
    cov, var_y, var_p = syp - sy * sp / n, syy - sy * sy / n, spp - sp * sp / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_y * var_p)
    r = r[np.isfinite(r)]
    return float(np.std(r, ddof=1)) if r.size >= 2 else math.nan


# ---------------------------------------------------------------------------------------------
# return-series statistics
# ---------------------------------------------------------------------------------------------


def _returns(returns: pd.Series | ArrayLike) -> np.ndarray:
    return _as_1d(returns, "returns", allow_empty=True)


def _equity(r: np.ndarray) -> np.ndarray:
    # a loss beyond -100 % (a short through a doubling) is ruin: equity stays at 0 afterwards
    return np.cumprod(1.0 + np.maximum(r, -1.0))


def max_drawdown(returns: pd.Series | ArrayLike) -> float:
    """Largest fall of the compounded equity curve from its running peak.

    Args:
        returns: (n_periods,) simple returns per period.

    Returns:
        Positive fraction (0.2 means -20 %); the curve starts at 1, which counts as a peak.
        0.0 if the curve never falls, 1.0 on ruin (a period return <= -100 %); NaN if empty.
    """
    r = _returns(returns)
    if r.size == 0:
        return math.nan
    equity = _equity(r)
    peak = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    return float(np.max(1.0 - equity / peak))


def sharpe_ratio(
    returns: pd.Series | ArrayLike, periods_per_year: float, horizon: int = 1
) -> float:
    """Annualised Sharpe ratio ``mean / std(ddof=1) * sqrt(periods_per_year / horizon)``.

    Args:
        returns: (n_periods,) simple returns, one per non-overlapping ``horizon``-bar period;
            no risk-free rate is subtracted.
        periods_per_year: bars per year (252 daily, 252 * bars_per_day intraday).
        horizon: bars per period.

    Returns:
        The ratio; NaN with fewer than 2 periods or zero variance.
    """
    _check_periods_per_year(periods_per_year)
    _check_horizon(horizon)
    r = _returns(returns)
    if r.size < 2 or _is_constant(r):
        return math.nan
    return float(r.mean() / r.std(ddof=1) * math.sqrt(periods_per_year / horizon))


def performance_summary(
    returns: pd.Series | ArrayLike, periods_per_year: float, horizon: int
) -> dict[str, float]:
    """Headline statistics of a per-period simple-return series.

    Args:
        returns: (n_periods,) simple returns of non-overlapping ``horizon``-bar periods.
        periods_per_year: bars per year; ``periods_per_year / horizon`` periods a year.
        horizon: bars per period.

    Returns:
        ``ann_return`` (arithmetic: mean * periods_per_year / horizon), ``ann_vol``
        (std(ddof=1) * sqrt(periods_per_year / horizon)), ``sharpe`` (see ``sharpe_ratio``),
        ``max_drawdown`` (positive fraction), ``win_rate`` (share of periods with return > 0
        among periods with a non-zero return -- flat periods are left out; NaN if none),
        ``total_return`` (compounded: prod(1 + r) - 1) and ``n_periods``. An empty series
        gives NaN everywhere and ``n_periods`` 0.
    """
    _check_periods_per_year(periods_per_year)
    _check_horizon(horizon)
    r = _returns(returns)
    n = int(r.size)
    if n == 0:
        keys = ("ann_return", "ann_vol", "sharpe", "max_drawdown", "win_rate", "total_return")
        return {**{k: math.nan for k in keys}, "n_periods": 0}
    scale = periods_per_year / horizon
    active = r != 0
    return {
        "ann_return": float(r.mean() * scale),
        "ann_vol": float(r.std(ddof=1) * math.sqrt(scale)) if n > 1 else math.nan,
        "sharpe": sharpe_ratio(r, periods_per_year, horizon),
        "max_drawdown": max_drawdown(r),
        "win_rate": float(np.mean(r[active] > 0)) if active.any() else math.nan,
        "total_return": float(_equity(r)[-1] - 1.0),
        "n_periods": n,
    }


# ---------------------------------------------------------------------------------------------
# trading simulations
# ---------------------------------------------------------------------------------------------

_BOOK_COLUMNS = ["gross", "net", "turnover"]


def _validated_panel(df: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """``symbol, timestamp, y, yhat`` sorted by symbol then time; rejects NaN and duplicates."""
    _check_horizon(horizon)
    cols = ["symbol", "timestamp", "y", "yhat"]
    _require_columns(df, cols)
    if df.empty:
        raise ValueError("df is empty; expected at least one row")
    for col in ("symbol", "timestamp"):
        if df[col].isna().any():
            raise ValueError(f"df['{col}'] has missing values")
    _as_1d(df["y"], "df['y']")
    _as_1d(df["yhat"], "df['yhat']")
    dup = df.duplicated(["symbol", "timestamp"])
    if dup.any():
        first = df.loc[dup, ["symbol", "timestamp"]].iloc[0].tolist()
        raise ValueError(
            f"df has {int(dup.sum())} duplicate (symbol, timestamp) rows, first {first}; "
            "pass one horizon's forecasts at a time"
        )
    return df[cols].sort_values(["symbol", "timestamp"], kind="mergesort").reset_index(drop=True)


def _check_offset(offset: int, horizon: int) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or not 0 <= offset < horizon:
        raise ValueError(f"offset must be an integer in [0, horizon) = [0, {horizon}), got {offset!r}")


def _timestamp_grid(panel: pd.DataFrame, horizon: int, offset: int) -> np.ndarray:
    """Every ``horizon``-th distinct timestamp of the whole panel, from the ``offset``-th.

    The grid is clock time shared by every symbol, not each symbol's own row count: a bar
    missing from one symbol leaves every later period where it was (that symbol simply has no
    position at a grid timestamp it lacks)."""
    _check_offset(offset, horizon)
    return np.sort(panel["timestamp"].unique())[offset::horizon]


def _grid_rows(df: pd.DataFrame, horizon: int, offset: int) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows of ``df`` at the grid timestamps, sorted by symbol then time; the grid timestamps)."""
    panel = _validated_panel(df, horizon)
    grid_ts = _timestamp_grid(panel, horizon, offset)
    return panel[panel["timestamp"].isin(grid_ts)].reset_index(drop=True), grid_ts


def _per_symbol_book(grid: pd.DataFrame, position: np.ndarray, cost_bps: float,
                     grid_ts: np.ndarray) -> pd.DataFrame:
    """Equal-weight portfolio of per-symbol positions on a common timestamp grid.

    Args:
        grid: rows at the grid timestamps (a symbol may lack some), sorted by symbol, timestamp.
        position: (n_rows,) position per row in units of the symbol's 1/n_active slot.
        cost_bps: one-way cost per unit of traded position.
        grid_ts: (n_grid,) sorted grid timestamps.

    Returns:
        Frame indexed by timestamp with ``gross``, ``net`` and ``turnover`` (mean |change of
        position| over the symbols active at that timestamp; the change is from the symbol's
        position at the previous grid timestamp, 0 if it had no row there).
    """
    t_idx = np.searchsorted(grid_ts, grid["timestamp"].to_numpy())
    s_idx, symbols = pd.factorize(grid["symbol"])
    wide = np.zeros((len(grid_ts) + 1, len(symbols)))  # row 0: flat before the first period
    wide[t_idx + 1, s_idx] = position
    prev = wide[t_idx, s_idx]
    rows = pd.DataFrame(
        {
            "timestamp": grid["timestamp"].to_numpy(),
            "gross": position * np.expm1(grid["y"].to_numpy()),
            "turnover": np.abs(position - prev),
        }
    )
    book = rows.groupby("timestamp", sort=True).mean()
    book["net"] = book["gross"] - cost_bps / 1e4 * book["turnover"]
    return book[_BOOK_COLUMNS]


def strategy_returns(
    df: pd.DataFrame, horizon: int, cost_bps: float, threshold: float = 0.0, offset: int = 0
) -> pd.DataFrame:
    """Per-symbol sign strategy on one non-overlapping timestamp grid, equal-weighted.

    The grid is every ``h``-th distinct timestamp of the whole panel, starting at the
    ``offset``-th (``0 <= offset < h``); it is the same for every symbol, so a bar missing from
    one symbol shifts nothing. ``position = sign(yhat)`` where ``|yhat| > threshold`` else 0;
    the period return is ``position * (exp(y) - 1)``; cost is
    ``cost_bps / 1e4 * |position - previous|`` (previous: the symbol's position at the previous
    grid timestamp, 0 if it had no row there; a flip costs twice a one-way trade). The portfolio
    return of a grid timestamp is the mean over the symbols with a row there (flat symbols
    count, with return 0). Summary figures average over every offset: see
    :func:`trading_metrics`.

    Args:
        df: columns ``symbol, timestamp, y, yhat`` for one horizon; unique per
            (symbol, timestamp); ``y``/``yhat`` finite.
        horizon: bars per holding period ``h`` (>= 1).
        cost_bps: one-way cost in basis points of traded notional (>= 0).
        threshold: minimum ``|yhat|`` to take a position (>= 0).
        offset: which of the ``h`` possible grids, ``0 <= offset < h``.

    Returns:
        (n_grid_timestamps, 3) frame indexed by ``timestamp`` with ``gross``, ``net`` (simple
        returns per period) and ``turnover`` (mean |change of position| per active symbol).
    """
    _check_cost(cost_bps)
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    grid, grid_ts = _grid_rows(df, horizon, offset)
    yhat = grid["yhat"].to_numpy(dtype=np.float64)
    position = np.where(np.abs(yhat) > threshold, np.sign(yhat), 0.0)
    return _per_symbol_book(grid, position, cost_bps, grid_ts)


def buy_and_hold_returns(df: pd.DataFrame, horizon: int, offset: int = 0) -> pd.DataFrame:
    """Long every symbol on the same grid as ``strategy_returns``; no cost is charged.

    ``yhat`` is ignored (it must still be present and finite). ``net`` equals ``gross``; the
    ``turnover`` column still records each symbol's entry (1 on its first grid row) so it can
    be costed by the caller if wanted.

    Args:
        df: columns ``symbol, timestamp, y, yhat`` as for ``strategy_returns``.
        horizon: bars per holding period (>= 1).
        offset: which of the ``h`` grids, ``0 <= offset < h``.

    Returns:
        Frame indexed by ``timestamp`` with ``gross``, ``net``, ``turnover``.
    """
    grid, grid_ts = _grid_rows(df, horizon, offset)
    return _per_symbol_book(grid, np.ones(len(grid)), 0.0, grid_ts)


def _slot_share(by_ts: Any, k: np.ndarray, ascending: bool) -> np.ndarray:
    """Share in [0, 1] of each name in the ``k`` extreme slots of its timestamp.

    A group of ``c`` names tied on ``yhat`` occupies ranks ``a + 1 .. a + c`` (``a`` names rank
    strictly ahead of it); it shares the slots of those ranks that are ``<= k`` equally, so each
    member gets ``(min(a + c, k) - a) / c`` (clipped at 0). The shares of a timestamp sum to k,
    whatever the symbols are called."""
    lo = by_ts.rank(method="min", ascending=ascending).to_numpy()  # a + 1
    hi = by_ts.rank(method="max", ascending=ascending).to_numpy()  # a + c
    return np.clip(np.minimum(hi, k) - (lo - 1), 0.0, None) / (hi - lo + 1)


def long_short_returns(
    df: pd.DataFrame, horizon: int, cost_bps: float, quantile: float = 0.2, offset: int = 0
) -> pd.DataFrame:
    """Cross-sectional long/short on a common, non-overlapping timestamp grid.

    The grid is every ``horizon``-th distinct timestamp of the whole panel, from the
    ``offset``-th. At each grid timestamp with ``n >= 2`` symbols,
    ``k = max(1, floor(quantile * n))`` slots per side: the ``k`` highest ``yhat`` get weight
    ``+0.5 / k`` each and the ``k`` lowest ``-0.5 / k``. Names tied across a slot boundary
    share the slots left equally (three names tied for the last long slot get ``+0.5 / (3k)``
    each): nothing depends on the symbols' names or order. With fewer than 2 symbols, or when
    every name has the same ``yhat`` (no ranking information, e.g. a constant baseline), the
    book is flat. The period return is ``sum(w * (exp(y) - 1))``; turnover is
    ``sum |w_t - w_prev|`` over names (a name missing at a grid timestamp has weight 0; the
    first period trades from flat); cost is ``cost_bps / 1e4 * turnover``.

    Args:
        df: columns ``symbol, timestamp, y, yhat`` for one horizon, at least 2 symbols.
        horizon: bars per holding period (>= 1).
        cost_bps: one-way cost in basis points (>= 0).
        quantile: share of names per side, in (0, 0.5].
        offset: which of the ``h`` grids, ``0 <= offset < h``.

    Returns:
        Frame indexed by grid ``timestamp`` with ``gross``, ``net``, ``turnover``.

    Raises:
        ValueError: fewer than 2 symbols in ``df``, or a bad argument.

    Memory is (n_grid_timestamps, n_symbols) floats for the weight matrix.
    """
    _check_cost(cost_bps)
    if not (0 < quantile <= 0.5):
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
    panel = _validated_panel(df, horizon)
    n_symbols = panel["symbol"].nunique()
    if n_symbols < 2:
        raise ValueError(f"long/short needs at least 2 symbols, df has {n_symbols}")
    grid_ts = _timestamp_grid(panel, horizon, offset)
    grid = panel[panel["timestamp"].isin(grid_ts)]

    by_ts = grid.groupby("timestamp", sort=True)["yhat"]
    n = by_ts.transform("size").to_numpy()
    # + 1e-9 so that e.g. 0.29 * 100 = 28.999999999999996 gives 29 names, not 28
    k = np.maximum(1, np.floor(quantile * n + 1e-9))
    # 2k <= n because quantile <= 0.5; a tie group straddling both legs nets its two shares
    weight = 0.5 / k * (_slot_share(by_ts, k, ascending=False) - _slot_share(by_ts, k, ascending=True))
    # A cross-section of identical forecasts carries no ranking: stay flat.
    spread = (by_ts.transform("max") - by_ts.transform("min")).to_numpy()
    weight = np.where((n >= 2) & (spread > 0), weight, 0.0)

    ts = grid["timestamp"].to_numpy()
    gross = pd.Series(weight * np.expm1(grid["y"].to_numpy())).groupby(ts, sort=True).sum()
    wide = (
        pd.DataFrame({"timestamp": ts, "symbol": grid["symbol"].to_numpy(), "w": weight})
        .pivot(index="timestamp", columns="symbol", values="w")
        .reindex(grid_ts)
        .fillna(0.0)
        .to_numpy()
    )  # (n_grid, n_symbols)
    turnover = np.abs(np.diff(wide, axis=0, prepend=0.0)).sum(axis=1)
    book = pd.DataFrame(
        {"gross": gross.to_numpy(), "turnover": turnover},
        index=pd.Index(grid_ts, name="timestamp"),
    )
    book["net"] = book["gross"] - cost_bps / 1e4 * book["turnover"]
    return book[_BOOK_COLUMNS]


def _offset_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (one per grid offset); NaN if none is finite."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def trading_metrics(
    df: pd.DataFrame,
    horizon: int,
    periods_per_year: float,
    cost_bps: float,
    threshold: float = 0.0,
    quantile: float = 0.2,
) -> dict[str, float]:
    """Flat summary of the sign strategy and, with >= 2 symbols, the long/short book.

    For ``h > 1`` there are ``h`` non-overlapping grids (start offsets 0 .. h-1) and a figure
    from any one of them depends on which was picked (on noise, Sharpe ratios of different
    offsets can differ by more than their own standard error). Every figure here is the
    **mean over all h offsets** of that figure computed on one offset's grid (each a
    non-overlapping series, so its Sharpe and drawdown keep their usual meaning); offsets with
    an undefined figure are left out of its mean. At ``h = 1`` there is one grid and nothing
    is averaged.

    Args:
        df: columns ``symbol, timestamp, y, yhat`` for one horizon.
        horizon: bars per holding period.
        periods_per_year: bars per year.
        cost_bps: one-way cost in basis points.
        threshold: ``|yhat|`` needed to trade the sign strategy.
        quantile: share of names per side of the long/short book.

    Returns:
        ``sharpe``, ``ann_return`` (arithmetic), ``max_drawdown``, ``win_rate`` (net of cost),
        ``sharpe_gross``, ``ann_return_gross``, ``turnover`` (mean per period), each averaged
        over offsets; ``sharpe_offset_min``/``sharpe_offset_max`` (the spread across offsets);
        ``sharpe_per_period`` (the mean over offsets of the un-annualised net Sharpe);
        ``n_periods`` (periods of the shortest offset grid) and ``n_offsets`` (``h``); and,
        only when ``df`` has >= 2 symbols, ``ls_sharpe``, ``ls_sharpe_gross``,
        ``ls_ann_return``, ``ls_max_drawdown``, ``ls_turnover`` (offset means; keys absent
        otherwise).
    """
    _check_horizon(horizon)
    per_offset: list[dict[str, float]] = []
    multi = df["symbol"].nunique() >= 2
    for offset in range(horizon):
        book = strategy_returns(df, horizon, cost_bps, threshold, offset=offset)
        net = performance_summary(book["net"], periods_per_year, horizon)
        row = {
            "sharpe": net["sharpe"],
            "sharpe_gross": sharpe_ratio(book["gross"], periods_per_year, horizon),
            "ann_return": net["ann_return"],
            "ann_return_gross": float(book["gross"].mean() * periods_per_year / horizon),
            "max_drawdown": net["max_drawdown"],
            "win_rate": net["win_rate"],
            "turnover": float(book["turnover"].mean()),
            "n_periods": net["n_periods"],
        }
        if multi:
            ls = long_short_returns(df, horizon, cost_bps, quantile, offset=offset)
            ls_net = performance_summary(ls["net"], periods_per_year, horizon)
            row.update(
                ls_sharpe=ls_net["sharpe"],
                ls_sharpe_gross=sharpe_ratio(ls["gross"], periods_per_year, horizon),
                ls_ann_return=ls_net["ann_return"],
                ls_max_drawdown=ls_net["max_drawdown"],
                ls_turnover=float(ls["turnover"].mean()),
            )
        per_offset.append(row)
    out: dict[str, float] = {k: _offset_mean([r[k] for r in per_offset])
                             for k in per_offset[0] if k != "n_periods"}
    sharpes = [r["sharpe"] for r in per_offset if np.isfinite(r["sharpe"])]
    out["sharpe_offset_min"] = float(min(sharpes)) if sharpes else math.nan
    out["sharpe_offset_max"] = float(max(sharpes)) if sharpes else math.nan
    out["sharpe_per_period"] = out["sharpe"] / math.sqrt(periods_per_year / horizon)
    out["n_periods"] = int(min(r["n_periods"] for r in per_offset))
    out["n_offsets"] = int(horizon)
    return out


# ---------------------------------------------------------------------------------------------
# probabilistic and deflated Sharpe ratio (Bailey & Lopez de Prado)
# ---------------------------------------------------------------------------------------------


def _check_n_obs(n_obs: int) -> None:
    if isinstance(n_obs, bool) or not isinstance(n_obs, int | np.integer) or n_obs < 2:
        raise ValueError(f"n_obs must be an integer >= 2, got {n_obs!r}")


def probabilistic_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    benchmark: float = 0.0,
) -> float:
    """Probability that the true Sharpe ratio exceeds ``benchmark`` (Bailey & Lopez de Prado 2012).

    ``PSR = Phi((SR - SR*) * sqrt(n_obs - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR^2))``.

    Args:
        sharpe: per-period (NOT annualised) Sharpe ratio estimate.
        n_obs: number of return observations behind it (>= 2).
        skew: skewness of the returns.
        kurtosis: raw (non-excess) kurtosis; 3 for Gaussian returns.
        benchmark: per-period Sharpe ratio to beat.

    Returns:
        Probability in [0, 1]; exactly 0.5 when ``sharpe == benchmark``.
    """
    _check_n_obs(n_obs)
    for name, value in (("sharpe", sharpe), ("skew", skew), ("kurtosis", kurtosis),
                        ("benchmark", benchmark)):
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    var_term = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if var_term <= 0:
        raise ValueError(
            f"1 - skew*SR + (kurtosis-1)/4*SR^2 = {var_term!r} <= 0 for sharpe={sharpe!r}, "
            f"skew={skew!r}, kurtosis={kurtosis!r}; kurtosis must be raw (3 for Gaussian)"
        )
    z = (sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var_term)
    return float(norm.cdf(z))


def expected_max_sharpe(n_trials: int, sharpe_trials_var: float) -> float:
    """Expected maximum per-period Sharpe ratio of ``n_trials`` skill-less strategies.

    ``sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N e)))`` with gamma the
    Euler-Mascheroni constant; defined as 0 for a single trial (no selection).

    Args:
        n_trials: number of independent strategies tried (>= 1).
        sharpe_trials_var: variance V of the per-period Sharpe ratios across trials (>= 0).
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if not (np.isfinite(sharpe_trials_var) and sharpe_trials_var >= 0):
        raise ValueError(f"sharpe_trials_var must be finite and >= 0, got {sharpe_trials_var!r}")
    if n_trials == 1:
        return 0.0
    gamma = np.euler_gamma
    z = (1 - gamma) * norm.ppf(1 - 1 / n_trials) + gamma * norm.ppf(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(sharpe_trials_var) * z)


def deflated_sharpe_ratio(
    sharpe: float,
    n_trials: int,
    n_obs: int,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    *,
    sharpe_trials_var: float,
) -> float:
    """Deflated Sharpe ratio (Bailey & Lopez de Prado 2014): PSR against the expected maximum.

    ``DSR = PSR(sharpe, benchmark=expected_max_sharpe(n_trials, V))``.

    Args:
        sharpe: per-period (NOT annualised) Sharpe ratio of the selected strategy.
        n_trials: number of independent trials the strategy was selected from (>= 1).
        n_obs: number of return observations (>= 2).
        skew: skewness of the selected strategy's returns.
        kurtosis: raw kurtosis of those returns (3 for Gaussian).
        sharpe_trials_var: variance of the per-period Sharpe ratios across the trials, as
            observed (Bailey & Lopez de Prado estimate it from the trials themselves). Required:
            ``1 / (n_obs - 1)``, the spread of Sharpe estimates of pure-noise strategies, is only
            right when every trial is noise, and trials that share a signal spread less.

    Returns:
        Probability in [0, 1]; decreasing in ``n_trials``.
    """
    _check_n_obs(n_obs)
    sr0 = expected_max_sharpe(n_trials, sharpe_trials_var)
    return probabilistic_sharpe_ratio(sharpe, n_obs, skew, kurtosis, benchmark=sr0)


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------


def _k_label(k: float) -> str:
    """``1.0 -> '1.00'``, ``1.645 -> '1.645'``: two decimals at least, no rounding of k."""
    text = f"{k:.6f}".rstrip("0")
    whole, frac = text.split(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _gaussian_forecasts(y: ArrayLike, yhat: ArrayLike, yhat_std: ArrayLike) -> tuple[np.ndarray, ...]:
    """(y, yhat, yhat_std) as equal-length 1-D float arrays, the std >= 0 (ValueError otherwise)."""
    y = _as_1d(y, "y")
    yhat = _as_1d(yhat, "yhat")
    std = _as_1d(yhat_std, "yhat_std")
    _same_length(y=y, yhat=yhat, yhat_std=std)
    if (std < 0).any():
        raise ValueError(f"yhat_std must be >= 0, got minimum {float(std.min())!r}")
    return y, yhat, std


def interval_coverage(
    y: ArrayLike,
    yhat: ArrayLike,
    yhat_std: ArrayLike,
    k: Sequence[float] = (1.0, 1.645, 1.96),
) -> dict[str, float]:
    """Share of ``y`` inside ``yhat +- k * yhat_std``, next to the Gaussian nominal coverage.

    Args:
        y: (n,) realised values, finite.
        yhat: (n,) predicted means.
        yhat_std: (n,) predicted standard deviations, >= 0.
        k: interval half-widths in standard deviations, each > 0.

    Returns:
        For each k, ``cover_<k>`` (observed share, interval closed) and ``nominal_<k>``
        (``2 * Phi(k) - 1``), with k written with at least two decimals and no rounding
        (``cover_1.00``, ``cover_1.645``, ``cover_1.96``); and ``n``.
    """
    y, yhat, std = _gaussian_forecasts(y, yhat, yhat_std)
    ks = np.asarray(k, dtype=np.float64)
    if ks.ndim != 1 or ks.size == 0 or not np.all(np.isfinite(ks) & (ks > 0)):
        raise ValueError(f"k must be a non-empty sequence of finite numbers > 0, got {k!r}")
    labels = [_k_label(float(v)) for v in ks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"k has duplicate values: {k!r}")
    # (n, n_k): inside interval for each k
    inside = np.abs(y - yhat)[:, None] <= ks[None, :] * std[:, None]
    cover = inside.mean(axis=0)
    nominal = 2.0 * norm.cdf(ks) - 1.0
    out: dict[str, float] = {}
    for label, c, nom in zip(labels, cover, nominal, strict=True):
        out[f"cover_{label}"] = float(c)
        out[f"nominal_{label}"] = float(nom)
    out["n"] = int(y.size)
    return out


def crps_gaussian(y: ArrayLike, yhat: ArrayLike, yhat_std: ArrayLike) -> float:
    """Mean continuous ranked probability score of the Gaussian N(yhat, yhat_std²) forecasts,
    in closed form (Gneiting & Raftery 2007): ``std * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))``
    with ``z = (y - yhat) / std``; a zero std scores ``|y - yhat|``. Lower is better, in the units
    of y; it rewards a sharp distribution only where it is also calibrated.

    Args:
        y: (n,) realised values, finite.
        yhat: (n,) predicted means.
        yhat_std: (n,) predicted standard deviations, >= 0.
    """
    y, yhat, std = _gaussian_forecasts(y, yhat, yhat_std)
    err = y - yhat
    pos = std > 0
    z = np.where(pos, err / np.where(pos, std, 1.0), 0.0)
    crps = np.where(pos, std * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / math.sqrt(math.pi)),
                    np.abs(err))
    return float(np.mean(crps))


def pinball_loss(y: ArrayLike, q: ArrayLike, levels: Sequence[float]) -> float:
    """Mean pinball (quantile) loss of the quantile forecasts ``q`` at ``levels``: over rows and
    levels, ``max(tau * e, (tau - 1) * e)`` with ``e = y - q_tau``. Lower is better, in the units
    of y; at the median it is half the absolute error, and twice its mean over many levels spread
    evenly over (0, 1) tends to the CRPS.

    Args:
        y: (n,) realised values, finite.
        q: (n, K) forecast quantiles, column k at level ``levels[k]``.
        levels: (K,) quantile levels, each in (0, 1).
    """
    y = _as_1d(y, "y")
    taus = np.asarray(levels, dtype=np.float64)
    if taus.ndim != 1 or taus.size == 0 or not np.all((taus > 0) & (taus < 1)):
        raise ValueError(f"levels must be a non-empty sequence of numbers in (0, 1), got {levels!r}")
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (y.size, taus.size):
        raise ValueError(f"q has shape {q.shape}, expected {(y.size, taus.size)} (rows of y, levels)")
    e = y[:, None] - q
    return float(np.mean(np.maximum(taus * e, (taus - 1.0) * e)))


def pinball_gaussian(y: ArrayLike, yhat: ArrayLike, yhat_std: ArrayLike,
                     levels: Sequence[float] = (0.1, 0.5, 0.9)) -> float:
    """:func:`pinball_loss` of the quantiles ``yhat + yhat_std * Phi^-1(tau)`` of the Gaussian
    N(yhat, yhat_std²) forecasts at ``levels`` (a zero std: every quantile is yhat).

    Args:
        y: (n,) realised values, finite.
        yhat: (n,) predicted means.
        yhat_std: (n,) predicted standard deviations, >= 0.
        levels: quantile levels, each in (0, 1).
    """
    y, yhat, std = _gaussian_forecasts(y, yhat, yhat_std)
    taus = np.asarray(levels, dtype=np.float64)
    if taus.ndim != 1 or taus.size == 0 or not np.all((taus > 0) & (taus < 1)):
        raise ValueError(f"levels must be a non-empty sequence of numbers in (0, 1), got {levels!r}")
    return pinball_loss(y, yhat[:, None] + std[:, None] * norm.ppf(taus)[None, :], taus)


def _prob(prob_up: ArrayLike) -> np.ndarray:
    p = _as_1d(prob_up, "prob_up")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(
            f"prob_up must lie in [0, 1], got range [{float(p.min())!r}, {float(p.max())!r}]"
        )
    return p


def reliability(y: ArrayLike, prob_up: ArrayLike, bins: int = 10) -> pd.DataFrame:
    """Reliability table of up-probabilities: equal-width bins on [0, 1].

    ``y > 0`` counts as up (``y == 0`` is not up). Bin ``b`` holds ``b/bins <= p < (b+1)/bins``
    (the last bin includes 1.0).

    Args:
        y: (n,) realised returns.
        prob_up: (n,) predicted probability that ``y > 0``, in [0, 1].
        bins: number of bins (>= 1).

    Returns:
        (bins, 6) frame indexed 0..bins-1 with ``bin``, ``lower``, ``upper``, ``mean_pred``,
        ``obs_freq`` (NaN for empty bins) and ``count``; every bin is listed.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    y = _as_1d(y, "y")
    p = _prob(prob_up)
    _same_length(y=y, prob_up=p)
    idx = np.minimum(np.floor(p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_up = np.bincount(idx, weights=(y > 0).astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.where(count > 0, sum_p / count, np.nan)
        obs = np.where(count > 0, sum_up / count, np.nan)
    edges = np.arange(bins + 1) / bins
    return pd.DataFrame(
        {
            "bin": np.arange(bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "mean_pred": mean_pred,
            "obs_freq": obs,
            "count": count,
        }
    )


def brier_score(y: ArrayLike, prob_up: ArrayLike) -> float:
    """Mean squared error of ``prob_up`` against the outcome ``y > 0`` (``y == 0`` is not up).

    Args:
        y: (n,) realised returns.
        prob_up: (n,) predicted probability of ``y > 0``, in [0, 1].
    """
    y = _as_1d(y, "y")
    p = _prob(prob_up)
    _same_length(y=y, prob_up=p)
    return float(np.mean((p - (y > 0)) ** 2))


# ---------------------------------------------------------------------------------------------
# 3-class classification
# ---------------------------------------------------------------------------------------------


def _class_index(labels: ArrayLike, name: str) -> np.ndarray:
    """Map labels -1/0/1 to column indices 0/1/2; anything else raises."""
    arr = _as_1d(labels, name)
    bad = ~np.isin(arr, CLASS_LABELS)
    if bad.any():
        raise ValueError(
            f"{name} has labels {sorted(set(arr[bad].tolist()))} outside {list(CLASS_LABELS)} "
            "(-1 SHORT, 0 NEUTRAL, 1 LONG)"
        )
    return arr.astype(np.int64) + 1


def classification_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, proba: np.ndarray | None = None
) -> dict[str, Any]:
    """Metrics of a SHORT/NEUTRAL/LONG (-1/0/1) classifier.

    Args:
        y_true: (n,) true labels in {-1, 0, 1}.
        y_pred: (n,) predicted labels in {-1, 0, 1}.
        proba: optional (n, 3) class probabilities, columns in order -1, 0, 1, rows summing
            to 1.

    Returns:
        ``accuracy``; ``f1_short``, ``f1_neutral``, ``f1_long`` (``2tp / (2tp + fp + fn)``;
        NaN for a class absent from both truth and prediction); ``macro_f1`` (mean over the
        classes whose F1 is defined); ``log_loss`` (natural log, probabilities clipped at
        1e-15; NaN without ``proba``); ``roc_auc`` (one-vs-rest, macro over the 3 classes, ties
        count 1/2; NaN without ``proba`` or when a class is missing from ``y_true``);
        ``confusion`` (3x3 nested list of ints, rows = true, columns = predicted, order
        -1, 0, 1); ``n``.
    """
    t = _class_index(y_true, "y_true")
    p = _class_index(y_pred, "y_pred")
    _same_length(y_true=t, y_pred=p)
    n = t.size
    confusion = np.bincount(t * 3 + p, minlength=9).reshape(3, 3)
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)

    log_loss = roc_auc = math.nan
    if proba is not None:
        prob = np.asarray(proba, dtype=np.float64)
        if prob.shape != (n, 3):
            raise ValueError(f"proba must have shape ({n}, 3), got {prob.shape}")
        if not np.all(np.isfinite(prob) & (prob >= 0) & (prob <= 1)):
            raise ValueError("proba must hold finite values in [0, 1]")
        row_sum = prob.sum(axis=1)
        worst = int(np.argmax(np.abs(row_sum - 1)))
        if abs(row_sum[worst] - 1) > _PROBA_SUM_TOL:
            raise ValueError(f"proba rows must sum to 1; row {worst} sums to {row_sum[worst]!r}")
        picked = np.clip(prob[np.arange(n), t], _LOG_LOSS_EPS, 1.0)
        log_loss = float(-np.mean(np.log(picked)))
        onehot = t[:, None] == np.arange(3)[None, :]  # (n, 3)
        n_pos = onehot.sum(axis=0)
        if np.all((n_pos > 0) & (n_pos < n)):
            # Mann-Whitney: AUC = (sum of positive ranks - n_pos(n_pos+1)/2) / (n_pos n_neg)
            ranks = rankdata(prob, axis=0)  # (n, 3), average ranks for ties
            auc = ((ranks * onehot).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (
                n_pos * (n - n_pos)
            )
            roc_auc = float(auc.mean())

    out: dict[str, Any] = {
        "accuracy": float(np.mean(t == p)),
        "macro_f1": float(np.nanmean(f1)),
    }
    for name, value in zip(_CLASS_NAMES, f1, strict=True):
        out[f"f1_{name}"] = float(value)
    out.update(log_loss=log_loss, roc_auc=roc_auc, confusion=confusion.tolist(), n=int(n))
    return out
