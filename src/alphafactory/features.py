"""Causal per-bar features of an OHLCV panel.

``compute_features`` turns the long "bars" panel (``symbol, timestamp, open, high, low, close,
volume``, sorted by (symbol, timestamp)) into one row of float32 (``features.dtype``) features
per bar. Every feature at row t uses only bars of the same symbol at or before t; cross-sectional
features also use other symbols' values at the same timestamp t, never later ones.

How it stays fast: each rolling/EWM statistic is one C-level pass over the whole concatenated
panel, not a per-symbol Python loop. Rolling windows are clipped at each symbol's first row (and
are NaN until full); EWMs subtract the state carried over from the previous symbol. Feature
groups run on a few threads (the numeric kernels release the GIL) and write their columns
straight into the output buffers. Every feature declares the bar index (within its symbol) from
which it is defined; ``warmup_bars`` is the largest of these, so downstream code can drop the rows
with ``bar index < warmup_bars(cfg)`` and be left with no NaN. A forecast reads only the last
rows of each symbol: ``compute_features(..., tail=k)`` computes those alone, the finite-window
features from the last k + warm-up bars.

Features are scale-free (log returns, ratios, z-scores, bounded oscillators), so they pool across
symbols. Volatilities are per bar, not annualised.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pandas._libs.window import aggregations as _window_agg
from pandas.api.indexers import BaseIndexer

from alphafactory.compute import FanOut
from alphafactory.config import Interval, NonEmpty, Unique, check
from alphafactory.data.frequency import FrequencyInfo, infer_frequency
from alphafactory.data.layout import symbol_starts
from alphafactory.errors import ConfigError

FEATURE_GROUPS: tuple[str, ...] = (
    "returns",
    "volatility",
    "atr",
    "rsi",
    "macd",
    "stochastic",
    "bollinger",
    "moving_average",
    "candle",
    "volume",
    "obv",
    "moments",
    "range_position",
    "calendar",
    "multi_timeframe",
    "cross_sectional",
    # Alpha158-class operators (scale-free: prices over the close, volumes over their own scale);
    # not in FeatureConfig's default groups.
    "kbar",
    "price_ratio",
    "rolling_ops",
    "price_volume",
    "up_down",
    "volume_ops",
    # abnormal volume: the part of log volume that its own recent level, volatility and the
    # bar's |return| do not explain (not default either)
    "volume_surprise",
    # recent returns times that abnormal volume: the move-volume interaction (not default either)
    "volume_return",
)
# The default ``features.groups``: every group but the Alpha158-class ones.
DEFAULT_GROUPS: tuple[str, ...] = FEATURE_GROUPS[: FEATURE_GROUPS.index("cross_sectional") + 1]
CS_NORMALIZE: tuple[str, ...] = ("none", "zscore", "rank")

BAR_COLUMNS: tuple[str, ...] = ("symbol", "timestamp", "open", "high", "low", "close", "volume")

# Upper bounds, in bars, on how long the first (partial) calendar week / month of a symbol can
# last with daily bars (bars on every calendar day is the worst case). Features that need the
# previous complete week or month are masked until then, so the warm-up does not depend on the
# date a symbol's history starts.
_WEEK_BARS = 7
_MONTH_BARS = 31
_TWO_PI = 2.0 * math.pi
_CHUNK = 64  # feature columns per output buffer
_INF_BY_COLUMN = 1 << 15  # rows from which _Out.add, not finish, turns inf into NaN
_DENSE_GRID_MAX = 4  # cross-sectional ranks on a (time, symbol) grid up to this many cells a row


@dataclass(frozen=True)
class FeatureConfig:
    """Which feature groups to compute and their look-back lengths (all lengths in bars).

    groups: names from ``FEATURE_GROUPS``; cross_sectional only applies with >= 2 symbols.
    windows: rolling windows shared by most groups (returns, volatility, bands, MAs, volume...).
    return_lags: lags k of the 1-bar log return (``ret_lag_{k}``).
    atr_periods, rsi_periods: Wilder smoothing periods for ATR and RSI/MFI.
    macd: (fast, slow, signal) EMA spans, one triple per MACD family.
    stoch_smooth: SMA length of stochastic %D over %K.
    bollinger_k: band half-width in standard deviations.
    slope_lag: bars over which SMA/EMA slopes are measured.
    mtf_scales: aggregation scales in bars for daily (or slower) bars, e.g. week=5, month=21.
    mtf_days: aggregation scales in sessions for intraday bars (converted with bars per day).
    cs_features: feature names to rank / demean across symbols; empty = a default key set.
    dtype: storage type of the feature columns. The features are computed in float64 either
        way; float32 (the default) halves the table in memory and on disk, and is what the
        models fit on anyway (XGBoost, CatBoost and the networks are float32 inside).
    symbol_batch: symbols per batch of the featurize stage (0: all in one), each batch one piece
        of work for the ``compute`` fan-out (:func:`compute_features_batched`). The exponentially
        weighted means run over a batch's whole array, so their last bits depend on the batch
        the symbol is in: a result of this key, not of where the batches run.
    cs_normalize: none | zscore | rank: every feature (but the calendar group's, the same for
        every symbol) replaced by its cross-sectional z-score (population std; 0 where all
        symbols agree) or percentile rank in (0, 1] among the symbols at its timestamp. It reads
        only that timestamp's rows, so it is causal; at serving time it ranks across the
        symbols of the request (:func:`_cs_normalize`).
    """

    groups: Annotated[tuple[Literal[FEATURE_GROUPS], ...], Unique()] = DEFAULT_GROUPS
    # A window of 1 bar has no dispersion (std, skew, Bollinger width are undefined).
    windows: Annotated[tuple[Annotated[int, Interval(ge=2)], ...], NonEmpty(), Unique()] = (5, 10, 20, 60)
    return_lags: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], Unique()] = (1, 2, 3, 5, 10)
    atr_periods: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], Unique()] = (7, 14, 28)
    rsi_periods: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], Unique()] = (6, 14, 28)
    macd: Annotated[tuple[tuple[Annotated[int, Interval(ge=1)], ...], ...], Unique()] = ((12, 26, 9), (5, 35, 5))
    stoch_smooth: Annotated[int, Interval(ge=1)] = 3
    bollinger_k: Annotated[float, Interval(gt=0)] = 2.0
    slope_lag: Annotated[int, Interval(ge=1)] = 5
    mtf_scales: Annotated[tuple[Annotated[int, Interval(ge=2)], ...], Unique()] = (5, 21)
    mtf_days: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], Unique()] = (1, 5)
    cs_features: Annotated[tuple[str, ...], Unique()] = ()
    symbol_batch: Annotated[int, Interval(ge=0)] = 0
    dtype: Literal["float32", "float64"] = "float32"
    cs_normalize: Literal[CS_NORMALIZE] = "none"

    def __post_init__(self) -> None:
        check(self, "features")  # also when built directly (the audit, tests), not only from params

    def validate(self) -> None:
        """The MACD triples (the per-field constraints are checked by :func:`check`)."""
        for triple in self.macd:
            if len(triple) != 3 or triple[0] >= triple[1]:
                raise ConfigError(f"features.macd: got {list(triple)}, expected [fast, slow, signal] with fast < slow")


def _bars_per_day(freq: FrequencyInfo | None) -> int | None:
    """Bars in one intraday session (rounded median), or None for daily and slower bars."""
    if freq is None or not freq.intraday:
        return None
    return max(1, int(round(freq.bars_per_day)))


def _day_scales(cfg: FeatureConfig, bpd: int) -> list[tuple[int, int]]:
    """(days, bars) pairs of the intraday multi-timeframe scales; at least 2 bars each."""
    return [(d, max(2, d * bpd)) for d in cfg.mtf_days]


def _group_warmups(cfg: FeatureConfig, bpd: int | None) -> dict[str, int]:
    """First bar index (within a symbol) from which every feature of each group is defined.

    Mirrors the ``fd`` passed to ``_Out.add`` by the group functions below; ``_Out.add`` asserts
    that no feature exceeds it, and the tests check the bound is tight.
    """
    w_max = max(cfg.windows)
    if bpd is None:
        mtf = max(_MONTH_BARS, w_max, 2 * max(cfg.mtf_scales)) if cfg.mtf_scales else _MONTH_BARS
    else:
        mtf = max([2 * bpd] + [max(s, w_max) for _, s in _day_scales(cfg, bpd)])
    warm = {
        "returns": max(w_max, 1 + max(cfg.return_lags, default=0)),
        "volatility": w_max,
        "atr": max(cfg.atr_periods, default=0),
        "rsi": max(cfg.rsi_periods, default=0),
        "macd": max((s + g - 2 for _, s, g in cfg.macd), default=0),
        "stochastic": w_max + cfg.stoch_smooth - 2,
        "bollinger": w_max - 1,
        "moving_average": w_max - 1 + cfg.slope_lag,
        "candle": max(1, w_max - 1),
        "volume": w_max,
        "obv": max(w_max, max(cfg.rsi_periods, default=0)),
        "moments": w_max + 1,
        "range_position": w_max - 1,
        "calendar": 1,
        "multi_timeframe": mtf,
        "cross_sectional": 0,  # inherits the warm-up of the features it ranks
    }
    warm.update(_alpha_warmups(cfg))
    return warm


def warmup_bars(cfg: FeatureConfig, freq: FrequencyInfo | None = None) -> int:
    """Number of leading bars of each symbol with at least one NaN feature.

    Rows with bar index (0-based, within the symbol) >= the result have every feature defined.
    ``freq`` matters only for intraday bars (session-scale features); None means daily bars.
    """
    check(cfg, "features")
    warm = _group_warmups(cfg, _bars_per_day(freq))
    return max((warm[g] for g in cfg.groups), default=0)


# --------------------------------------------------------------------------------------------
# Panel arithmetic: whole-array rolling / EWM with symbol boundaries masked.
# --------------------------------------------------------------------------------------------


class _FixedBounds(BaseIndexer):
    """Precomputed window bounds: rows start[i] <= j < end[i] form the window of row i."""

    def get_window_bounds(
        self, num_values: int = 0, min_periods: int | None = None, center: bool | None = None,
        closed: str | None = None, step: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        assert num_values == len(self.end)
        return self.start, self.end


# pandas' own rolling kernels, called as ``Series.rolling(indexer, min_periods=w).<how>()``
# calls them: the same numbers, bit for bit (tests/test_features.py checks each against pandas),
# without the ~0.1 ms of Series, Rolling and BaseIndexer signature checks per call that dominate
# a forecast's few hundred bars (~170 rolling statistics per featurization; pandas is pinned in
# requirements.lock, and that test fails first if a new version changes these kernels).
_ROLL_KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "mean": _window_agg.roll_mean, "sum": _window_agg.roll_sum, "max": _window_agg.roll_max,
    "min": _window_agg.roll_min, "skew": _window_agg.roll_skew, "kurt": _window_agg.roll_kurt,
    "var": _window_agg.roll_var,
}


def _roll_kernel(x: np.ndarray, start: np.ndarray, end: np.ndarray, min_periods: int, how: str) -> np.ndarray:
    """(n,) float64 rolling ``how`` (a key of ``_ROLL_KERNELS`` or "std") of x over the windows
    ``start[i] <= j < end[i]``, as pandas' Rolling computes it: float64, inf read as NaN, the
    std the square root of the ddof=1 variance with negative rounding clipped to 0."""
    if how not in _ROLL_KERNELS and how != "std":
        raise ValueError(f"rolling statistic {how!r}; expected one of {sorted([*_ROLL_KERNELS, 'std'])}")
    values = np.asarray(x, dtype=np.float64)
    inf = np.isinf(values)
    if inf.any():
        values = np.where(inf, np.nan, values)
    with np.errstate(all="ignore"):
        if how != "std":
            return _ROLL_KERNELS[how](values, start, end, min_periods)
        var = _window_agg.roll_var(values, start, end, min_periods, ddof=1)
        out = np.sqrt(var)
    out[var < 0] = 0
    return out


def _roll_corr_kernel(x: np.ndarray, y: np.ndarray, start: np.ndarray, end: np.ndarray,
                      min_periods: int) -> np.ndarray:
    """(n,) float64 rolling Pearson correlation of x and y over the windows
    ``start[i] <= j < end[i]``, as ``pd.Series(x).rolling(indexer, min_periods).corr(
    pd.Series(y))`` computes it: each side NaN where the other is (``x + 0 * y``), inf read as
    NaN, then pandas' ``roll_corr`` kernel (tests/test_features.py checks it bit for bit)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with np.errstate(all="ignore"):
        xs, ys = xs + 0 * ys, ys + 0 * xs
        xs = np.where(np.isinf(xs), np.nan, xs)
        ys = np.where(np.isinf(ys), np.nan, ys)
        return _window_agg.roll_corr(xs, ys, start, end, min_periods)


def _ewm_sum_kernel(x: np.ndarray, alpha: float) -> np.ndarray:
    """(n,) ``pd.Series(x).ewm(alpha=alpha, adjust=True).sum()``, through the pandas kernel it
    calls (one window over the whole array, center of mass (1 - alpha) / alpha, as pandas
    computes it): the same numbers, bit for bit (tests/test_features.py checks it)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha: got {alpha!r}, expected 0 < alpha <= 1")
    values = np.asarray(x, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    inf = np.isinf(values)
    if inf.any():
        values = np.where(inf, np.nan, values)
    with np.errstate(all="ignore"):
        return _window_agg.ewm(values, np.zeros(1, np.int64), np.full(1, len(values), np.int64), 1,
                               float((1 - alpha) / alpha), True, False, None, False)


class _Panel:
    """The bars as float64 arrays of shape (n,), plus symbol bookkeeping and a memo of rolling
    statistics shared between groups.

    A panel made by :meth:`suffix` holds only the last bars of each symbol: it computes the
    finite-window features on them, and its exponentially weighted means on the whole history
    (``full``, of which it holds the rows ``at``), so they carry the memory of the earlier bars."""

    def __init__(self, bars: pd.DataFrame, freq: FrequencyInfo) -> None:
        codes = pd.factorize(bars["symbol"], sort=False)[0]
        cols = [bars[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume")]
        self._setup(codes, *cols, bars["timestamp"].to_numpy("datetime64[ns]"), freq)
        self.full, self.at = None, None

    def suffix(self, at: np.ndarray) -> _Panel:
        """The panel of rows ``at`` (sorted; per symbol, a run of its last bars) of this one."""
        out = object.__new__(_Panel)
        out._setup(self.codes[at], self.o[at], self.h[at], self.l[at], self.c[at], self.v[at],
                   self.ts[at], self.freq)
        out.full, out.at = self, at
        # Each symbol's bars before its suffix, right-aligned in a (n_symbols, width) grid whose
        # column j is (width - 1 - j) bars before the suffix: EW sums over them are a product.
        kept = np.zeros(self.n, dtype=bool)
        kept[at] = True
        before = np.flatnonzero(~kept)
        lag = at[out.starts][self.seg[before]] - 1 - before  # (n_before,) >= 0
        out._width = width = int(lag.max()) + 1 if len(before) else 0
        out._before, out._grid_at = before, self.seg[before] * width + (width - 1 - lag)  # flat
        out._weights = {}
        return out

    def _setup(self, codes: np.ndarray, o: np.ndarray, h: np.ndarray, l: np.ndarray,  # noqa: E741
               c: np.ndarray, v: np.ndarray, ts: np.ndarray, freq: FrequencyInfo) -> None:
        self.n = n = len(codes)
        self.freq = freq
        self.bpd = _bars_per_day(freq)
        self.codes = codes
        new = np.empty(n, dtype=bool)
        new[0] = True
        np.not_equal(codes[1:], codes[:-1], out=new[1:])
        self.new_symbol = new  # (n,) True on each symbol's first bar
        self.starts = np.flatnonzero(new)  # (n_symbols,) first row of each symbol
        self.seg = np.cumsum(new) - 1  # (n,) symbol block id 0..n_symbols-1
        self.n_symbols = len(self.starts)
        self.lengths = np.diff(np.append(self.starts, n))  # (n_symbols,) bars of each symbol
        self.row_start = self.per_row(self.starts)  # (n,) first row of the row's symbol
        self.pos = np.arange(n) - self.row_start  # (n,) bar index within the symbol
        self._early: dict[int, np.ndarray] = {}
        self.o, self.h, self.l, self.c, self.v, self.ts = o, h, l, c, v, ts
        self.logc = np.log(self.c)
        self.r = self.logc - self.lag(self.logc, 1)  # (n,) 1-bar log return, NaN on first bars
        self._memo: dict[tuple, Any] = {}
        self._windows: dict[int | str, Any] = {}  # w -> bounds; "end" -> (n,) window ends
        self._decay: dict[float, np.ndarray] = {}

    def per_row(self, a: np.ndarray) -> np.ndarray:
        """(n,) the per-symbol values a, (n_symbols,) (or (k, n_symbols)), repeated over each
        symbol's rows: ``a[..., seg]``, as a block copy rather than a gather."""
        return np.repeat(a, self.lengths, axis=-1)

    def time_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, times): ``pd.factorize(ts, sort=False)``, (n,) and (n_times,), memoised."""
        if "times" not in self._memo:
            self._memo["times"] = pd.factorize(self.ts, sort=False)
        return self._memo["times"]

    def by_time(self, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """(n,) ``f(ts)`` for an elementwise f of the timestamps, evaluated once per distinct
        timestamp (a panel of S aligned symbols has S times fewer)."""
        codes, times = self.time_codes()
        return f(times)[codes]

    def early(self, k: int) -> np.ndarray:
        """Sorted row indices with bar index pos < k (each symbol's first k bars)."""
        if k not in self._early:
            self._early[k] = np.flatnonzero(self.pos < k)
        return self._early[k]

    def lag(self, x: np.ndarray, k: int) -> np.ndarray:
        """x shifted k >= 1 bars forward in time within each symbol (NaN for pos < k)."""
        out = np.empty(self.n, dtype=np.float64)
        out[:k] = np.nan
        out[k:] = x[:-k]
        out[self.early(k)] = np.nan
        return out

    def roll(self, x: np.ndarray, w: int, how: str, key: str | None = None) -> np.ndarray:
        """Trailing rolling statistic ``how`` (mean, std, sum, max, min, skew, kurt) over w bars.

        NaN where the window would reach into the previous symbol (pos < w-1) or holds a NaN.
        The result is read-only. ``key`` names x to memoise the result (the same statistic is
        reused by several groups).
        """
        memo = (key, w, how)
        if key is not None and memo in self._memo:
            return self._memo[memo]
        if how in ("max", "min"):
            out = self._extreme(x, w, how, key)
        else:
            bounds = self.windows(w)
            out = _roll_kernel(x, bounds.start, bounds.end, w, how)
        out.flags.writeable = False  # shared through the memo
        if key is not None:
            self._memo[memo] = out
        return out

    def _extreme(self, x: np.ndarray, w: int, how: str, key: str | None) -> np.ndarray:
        """(n,) rolling max or min over w bars, as pandas' ``roll_max``/``roll_min`` give it
        (NaN where the window is clipped or holds a NaN or inf), by doubling: m_s[i], the
        extreme of x[i-s+1..i], gives m_2s[i] = f(m_s[i], m_s[i-s]), and the w-bar extreme is
        f(m_s[i], m_s[i-w+s]) for the largest power of two s <= w. A max or min is one of the
        values, so any order of comparisons gives the same bits; f propagates NaN as pandas'
        min_periods=w does. The m_s of a keyed series are memoised, so windows share them
        (5, 10, 20, 60: 5 passes of f, plus one per window, instead of a deque per window)."""
        f = np.maximum if how == "max" else np.minimum
        ladder = self._memo.setdefault((key, how, "ladder"), {}) if key is not None else {}
        if 1 not in ladder:
            values = np.asarray(x, dtype=np.float64)
            ladder[1] = np.where(np.isinf(values), np.nan, values)
        s = 1
        while 2 * s <= w:
            if 2 * s not in ladder:
                m = ladder[s].copy()  # rows i < 2s - 1 are never read unmasked
                f(ladder[s][s:], ladder[s][:-s], out=m[s:])
                ladder[2 * s] = m
            s *= 2
        m = ladder[s]
        out = m.copy()
        if w > s:
            f(m[w - s:], m[: s - w], out=out[w - s:])
        out[self.early(w - 1)] = np.nan
        return out

    def corr(self, x: np.ndarray, y: np.ndarray, w: int, kx: str | None = None,
             ky: str | None = None) -> np.ndarray:
        """Trailing rolling Pearson correlation over w bars; 0 where either side is constant.
        kx, ky: memo keys of x and y for their rolling std (see :meth:`roll`)."""
        bounds = self.windows(w)
        out = _roll_corr_kernel(x, y, bounds.start, bounds.end, w)
        sx = self.roll(x, w, "std", kx)
        sy = self.roll(y, w, "std", ky)
        out[(sx == 0) | (sy == 0)] = 0.0  # NaN kept where sx or sy is NaN
        return out

    def windows(self, w: int) -> BaseIndexer:
        """Trailing w-bar windows clipped at each symbol's first row (then shorter than w, so
        ``min_periods=w`` makes them NaN). Clipping also resets pandas' running sums at every
        symbol, so no value depends on another symbol's bars, even through rounding."""
        if w not in self._windows:
            if "end" not in self._windows:
                self._windows["end"] = np.arange(1, self.n + 1, dtype=np.int64)
            end = self._windows["end"]
            self._windows[w] = _FixedBounds(start=np.maximum(end - w, self.row_start), end=end)
        return self._windows[w]

    def ewm(self, of: Callable[[_Panel], np.ndarray], alpha: float, min_obs: int,
            key: str | None = None) -> np.ndarray:
        """Exponentially weighted mean (pandas ``adjust=True`` weights (1-alpha)^i) per symbol of
        the series ``of(panel)``. ``of`` is a function of the panel, not an array: an EWM
        remembers every earlier bar, so a :meth:`suffix` panel evaluates it on the whole history.

        Computed as num/den of two whole-array EW sums, minus the part carried over from the
        previous symbol (the state at its last row, decayed by (1-alpha)^(pos+1)). Leading NaNs of
        a symbol get zero weight; NaN until ``min_obs`` valid values have been seen. On a suffix
        panel, the EW sums run over its rows, plus the decayed sums of each symbol's earlier bars.
        """
        memo = (key, alpha, min_obs, "ewm")
        if key is not None and memo in self._memo:
            return self._memo[memo]
        if self.full is None:
            x0, v0, count, pattern = self._series(of)
            num = self._ew_sum(x0, alpha)
            if (pattern, alpha) not in self._memo:  # series with the same NaNs share den
                self._memo[pattern, alpha] = self._ew_sum(v0, alpha)
            den = self._memo[pattern, alpha]
        else:
            x0, v0, earlier, count = self._history(of)
            if alpha not in self._weights:  # (width,) (1 - alpha) ** (bars before the suffix - 1)
                self._weights[alpha] = np.power(1.0 - alpha, np.arange(self._width - 1, -1, -1.0))
            carried = self.per_row(earlier @ self._weights[alpha])  # (2, n): sums as of the bar before
            num = self._ew_sum(x0, alpha) + self._decay[alpha] * carried[0]
            den = self._ew_sum(v0, alpha) + self._decay[alpha] * carried[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = num / den
        out[(count < min_obs) | (den <= 0)] = np.nan
        if key is not None:
            self._memo[memo] = out
        return out

    def _series(self, of: Callable[[_Panel], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
        """The series ``of`` split for :meth:`ewm`, (n,) each: its values with NaN as 0, its
        validity as 0/1, the valid values so far in the symbol; and its NaN pattern as bytes
        (a memo key of the EW sums of the validity). Memoised per ``of`` (several EWMs smooth
        the same series)."""
        memo = ("series", of)
        if memo not in self._memo:
            x = of(self)
            valid = ~np.isnan(x)
            csum = np.cumsum(valid)
            count = csum - self.per_row(csum[self.starts] - valid[self.starts])
            self._memo[memo] = (np.where(valid, x, 0.0), valid.astype(np.float64), count,
                                np.packbits(valid).tobytes())
        return self._memo[memo]

    def _ew_sum(self, x: np.ndarray, alpha: float) -> np.ndarray:
        s = _ewm_sum_kernel(x, alpha)
        carry = np.zeros(self.n_symbols)
        carry[1:] = s[self.starts[1:] - 1]  # state at the last row of the previous symbol
        if alpha not in self._decay:  # (n,) (1 - alpha) ** (pos + 1), shared by num and den
            log_beta = math.log1p(-alpha) if alpha < 1 else -np.inf
            with np.errstate(invalid="ignore"):
                self._decay[alpha] = np.exp((self.pos + 1.0) * log_beta)
        carried = self.per_row(carry)  # (n,)
        carried *= self._decay[alpha]
        s -= carried  # in place: s - decay * carry, without two more fresh (n,) arrays
        return s

    def _history(self, of: Callable[[_Panel], np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Suffix panel: the series ``of`` on the whole history, split for :meth:`ewm`: at this
        panel's rows, its values with NaN as 0 and its validity as 0/1, (n,) each; the same two
        over each symbol's earlier bars, (2, n_symbols, width); the valid values so far, (n,).
        Memoised per ``of`` (several EWMs smooth the same series)."""
        memo = ("history", of)
        if memo not in self._memo:
            x = of(self.full)
            valid = ~np.isnan(x)
            csum = np.cumsum(valid)
            starts = self.full.starts
            count = csum[self.at] - self.per_row(csum[starts] - valid[starts])
            x0, v0 = np.where(valid, x, 0.0), valid.astype(np.float64)
            earlier = np.zeros((2, self.n_symbols * self._width))
            earlier[0, self._grid_at] = x0[self._before]
            earlier[1, self._grid_at] = v0[self._before]
            earlier = earlier.reshape(2, self.n_symbols, self._width)
            self._memo[memo] = (x0[self.at], v0[self.at], earlier, count)
        return self._memo[memo]

    def seg_cum(self, x: np.ndarray, how: str, gid: np.ndarray) -> np.ndarray:
        """Cumulative ``how`` (cummax, cummin, cumsum) within contiguous groups ``gid``."""
        return getattr(pd.Series(x, copy=False).groupby(gid, sort=False), how)().to_numpy()


def _div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """num / den with ``fill`` where den == 0 (a degenerate range or dispersion), NaN kept."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(num, den)
    out[den == 0] = fill  # in place: one pass fewer than np.where over the (n,) arrays
    return out


class _Out:
    """Collects feature columns of ``dtype``, masking each one's warm-up rows (pos < fd).

    Columns are written straight into (_CHUNK, n) ``dtype`` buffers (row i of a buffer = one
    feature), so no per-feature array is kept and the frame is assembled without a copy.
    ``rows``: keep only these rows of each (len(pos),) column (None: all).
    """

    def __init__(self, pos: np.ndarray, warm: int, dtype: str, rows: np.ndarray | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.rows = rows
        self.pos = pos if rows is None else pos[rows]
        self.n = len(self.pos)
        self.warm = warm
        self.cols: dict[str, np.ndarray] = {}  # name -> (n,) row of a chunk
        self.fd: dict[str, int] = {}
        self._chunks: list[np.ndarray] = []
        self._used = _CHUNK
        self._warm_rows: dict[int, np.ndarray] = {}  # fd -> row indices with pos < fd
        self._done = 0  # columns that finish() has masked

    def add(self, name: str, x: np.ndarray, fd: int) -> None:
        assert name not in self.cols, f"duplicate feature name {name}"
        assert fd <= self.warm, f"{name}: defined from bar {fd} > warmup {self.warm}"
        if self._used == _CHUNK:
            # np.empty pages are only touched (and counted in RSS) once written.
            self._chunks.append(np.empty((_CHUNK, self.n), dtype=self.dtype))
            self._used = 0
        row = self._chunks[-1][self._used]
        self._used += 1
        if self.rows is not None:
            x = x[self.rows]
        if x.dtype == self.dtype:
            row[...] = x
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(row, x, casting="unsafe")  # float64 -> float32: overflow becomes inf
        if self.n >= _INF_BY_COLUMN:
            # inf (an overflow, a division by zero) becomes NaN here, while the row is in cache:
            # on a long panel finish()'s pass over whole chunks cost ~3x more (its (64, n) masks
            # are fresh pages); on a forecast's few rows it is the cheaper one (fewer calls).
            inf = np.isinf(row)
            if inf.any():
                row[inf] = np.nan
        self.cols[name] = row
        self.fd[name] = fd

    def finish(self) -> None:
        """Mask what :meth:`add` copied as is: inf (an overflow, a division by zero) becomes
        NaN (on long panels :meth:`add` has done it, column by column), and so does each
        column's warm-up (pos < fd). Once per group, over whole chunks (a few array operations
        instead of a few per column: ~1 ms of a few-symbol forecast); the columns of ``cols``
        are views into the chunks, so they see it. Idempotent."""
        names = list(self.cols)
        for i, chunk in enumerate(self._chunks):
            first, stop = i * _CHUNK, min((i + 1) * _CHUNK, len(names))
            done = max(self._done - first, 0)
            if done >= stop - first:
                continue
            if self.n < _INF_BY_COLUMN:
                rows = chunk[done:stop - first]
                rows[np.isinf(rows)] = np.nan
            by_fd: dict[int, list[int]] = {}
            for k in range(done, stop - first):
                fd = self.fd[names[first + k]]
                if fd > 0:
                    by_fd.setdefault(fd, []).append(k)
            for fd, ks in by_fd.items():
                if fd not in self._warm_rows:
                    self._warm_rows[fd] = np.flatnonzero(self.pos < fd)
                warm = self._warm_rows[fd]
                if len(warm):
                    chunk[np.ix_(ks, warm)] = np.nan
        self._done = len(names)

    def frame(self, index: pd.Index, take: np.ndarray | None = None) -> pd.DataFrame:
        """(n, n_features) frame over the chunks: a few blocks, no copy; or only the
        rows ``take`` of them (a copy), labelled with ``index``."""
        self.finish()
        names = list(self.cols)
        parts = []
        for i, chunk in enumerate(self._chunks):
            rows = chunk[: self._used if i == len(self._chunks) - 1 else _CHUNK]
            if take is not None:
                rows = rows[:, take]
            cols = names[i * _CHUNK : i * _CHUNK + len(rows)]
            parts.append(pd.DataFrame(rows.T, columns=cols, index=index, copy=False))
        if not parts:
            return pd.DataFrame(index=index)
        return pd.concat(parts, axis=1)


# --------------------------------------------------------------------------------------------
# Feature groups. Each adds columns to ``out`` with ``fd`` = first bar index it is defined at;
# ``_group_warmups`` holds the per-group maximum of these.
# --------------------------------------------------------------------------------------------


def _close(p: _Panel) -> np.ndarray:
    return p.c


def _squared_return(p: _Panel) -> np.ndarray:
    return p.r**2


def _returns(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    out.add("logret_1", p.r, 1)
    for k in cfg.return_lags:
        out.add(f"ret_lag_{k}", p.lag(p.r, k), 1 + k)
    for w in (1, *cfg.windows):
        lr = p.logc - p.lag(p.logc, w)
        out.add(f"ret_{w}", np.expm1(lr), w)
        if w > 1:
            out.add(f"logret_{w}", lr, w)
    up = np.where(np.isnan(p.r), np.nan, (p.r > 0).astype(np.float64))
    for w in cfg.windows:
        mean = p.roll(p.r, w, "mean", "r")
        std = p.roll(p.r, w, "std", "r")
        out.add(f"ret_sharpe_{w}", _div(mean, std, 0.0), w)
        out.add(f"ret_up_frac_{w}", p.roll(up, w, "mean"), w)


def _volatility(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    hl = np.log(p.h / p.l)
    co = np.log(p.c / p.o)
    pk = hl**2 / (4.0 * math.log(2.0))  # Parkinson per-bar variance
    gk = 0.5 * hl**2 - (2.0 * math.log(2.0) - 1.0) * co**2  # Garman-Klass
    rs = np.log(p.h / p.c) * np.log(p.h / p.o) + np.log(p.l / p.c) * np.log(p.l / p.o)
    down = np.minimum(p.r, 0.0) ** 2
    for w in cfg.windows:
        out.add(f"vol_cc_{w}", p.roll(p.r, w, "std", "r"), w)
        out.add(f"vol_pk_{w}", np.sqrt(p.roll(pk, w, "mean")), w - 1)
        # GK bars can be negative; their window mean rarely is, but clip so sqrt stays defined.
        out.add(f"vol_gk_{w}", np.sqrt(np.maximum(p.roll(gk, w, "mean"), 0.0)), w - 1)
        out.add(f"vol_rs_{w}", np.sqrt(np.maximum(p.roll(rs, w, "mean"), 0.0)), w - 1)
        out.add(f"vol_down_{w}", np.sqrt(p.roll(down, w, "mean")), w)
        out.add(f"vol_ewm_{w}", np.sqrt(p.ewm(_squared_return, 2.0 / (w + 1.0), w)), w)


def _true_range(p: _Panel) -> np.ndarray:
    """(n,) true range in price units; NaN on each symbol's first bar."""
    pc = p.lag(p.c, 1)
    return np.maximum(p.h, pc) - np.minimum(p.l, pc)


def _atr(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    tr = _true_range(p)
    out.add("tr_pct", tr / p.lag(p.c, 1), 1)
    atrs = {}
    for n in cfg.atr_periods:
        atrs[n] = p.ewm(_true_range, 1.0 / n, n) / p.c  # Wilder smoothing, as a fraction of price
        out.add(f"atr_pct_{n}", atrs[n], n)
    if len(atrs) >= 2:
        lo, hi = min(atrs), max(atrs)
        out.add(f"atr_ratio_{lo}_{hi}", _div(atrs[lo], atrs[hi], 1.0), hi)


def _gain(p: _Panel) -> np.ndarray:
    d = p.c - p.lag(p.c, 1)
    return np.where(np.isnan(d), np.nan, np.maximum(d, 0.0))


def _loss(p: _Panel) -> np.ndarray:
    d = p.c - p.lag(p.c, 1)
    return np.where(np.isnan(d), np.nan, np.maximum(-d, 0.0))


def _rsi(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    for n in cfg.rsi_periods:
        g = p.ewm(_gain, 1.0 / n, n)
        lo = p.ewm(_loss, 1.0 / n, n)
        out.add(f"rsi_{n}", 100.0 * _div(g, g + lo, 0.5), n)


def _macd_line(p: _Panel, f: int, s: int) -> np.ndarray:
    return (p.ewm(_close, 2.0 / (f + 1.0), f, "c") - p.ewm(_close, 2.0 / (s + 1.0), s, "c")) / p.c


def _macd(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    for f, s, g in cfg.macd:
        line = _macd_line(p, f, s)
        signal = p.ewm(partial(_macd_line, f=f, s=s), 2.0 / (g + 1.0), g)
        out.add(f"macd_{f}_{s}", line, s - 1)
        out.add(f"macd_signal_{f}_{s}_{g}", signal, s + g - 2)
        out.add(f"macd_hist_{f}_{s}_{g}", line - signal, s + g - 2)


def _stochastic(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    for w in cfg.windows:
        hh = p.roll(p.h, w, "max", "h")
        ll = p.roll(p.l, w, "min", "l")
        k = _div(p.c - ll, hh - ll, 0.5)  # in [0, 1]
        out.add(f"stoch_k_{w}", k, w - 1)
        out.add(f"stoch_d_{w}", p.roll(k, cfg.stoch_smooth, "mean"), w + cfg.stoch_smooth - 2)


def _bollinger(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    k = float(cfg.bollinger_k)
    for w in cfg.windows:
        sma = p.roll(p.c, w, "mean", "c")
        std = p.roll(p.c, w, "std", "c")
        out.add(f"bb_pos_{w}", _div(p.c - (sma - k * std), 2.0 * k * std, 0.5), w - 1)
        out.add(f"bb_width_{w}", 2.0 * k * std / sma, w - 1)


def _moving_average(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    lag = cfg.slope_lag
    sma = {w: p.roll(p.c, w, "mean", "c") for w in cfg.windows}
    ema = {w: p.ewm(_close, 2.0 / (w + 1.0), w, "c") for w in cfg.windows}
    for w in cfg.windows:
        out.add(f"sma_dist_{w}", p.c / sma[w] - 1.0, w - 1)
        out.add(f"ema_dist_{w}", p.c / ema[w] - 1.0, w - 1)
        out.add(f"sma_slope_{w}", np.log(sma[w] / p.lag(sma[w], lag)), w - 1 + lag)
        out.add(f"ema_slope_{w}", np.log(ema[w] / p.lag(ema[w], lag)), w - 1 + lag)
    ws = sorted(cfg.windows)
    for a, b in zip(ws[:-1], ws[1:], strict=True):
        out.add(f"sma_cross_{a}_{b}", sma[a] / sma[b] - 1.0, b - 1)
        out.add(f"ema_cross_{a}_{b}", ema[a] / ema[b] - 1.0, b - 1)


def _clv(p: _Panel) -> np.ndarray:
    """(n,) close location value in [-1, 1]: -1 at the low, +1 at the high, 0 if high == low."""
    return _div(2.0 * p.c - p.h - p.l, p.h - p.l, 0.0)


def _candle(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    body = np.log(p.c / p.o)
    rng = np.log(p.h / p.l)
    clv = _clv(p)
    out.add("candle_body", body, 0)
    out.add("candle_upper_wick", np.log(p.h / np.maximum(p.o, p.c)), 0)
    out.add("candle_lower_wick", np.log(np.minimum(p.o, p.c) / p.l), 0)
    out.add("candle_range", rng, 0)
    out.add("candle_clv", clv, 0)
    out.add("candle_body_frac", _div(p.c - p.o, p.h - p.l, 0.0), 0)
    out.add("candle_gap", np.log(p.o) - p.lag(p.logc, 1), 1)  # log(open / previous close)
    for w in cfg.windows:
        out.add(f"candle_clv_mean_{w}", p.roll(clv, w, "mean"), w - 1)
        out.add(f"candle_body_mean_{w}", p.roll(body, w, "mean"), w - 1)
        out.add(f"candle_range_rel_{w}", _div(rng, p.roll(rng, w, "mean", "hl"), 1.0), w - 1)


def _volume(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    lv = np.log1p(p.v)  # log1p: zero-volume bars stay finite
    absr = np.abs(p.r)
    for k in (1, *cfg.windows):
        out.add(f"logvolume_chg_{k}", lv - p.lag(lv, k), k)
    for w in cfg.windows:
        mean = p.roll(lv, w, "mean", "lv")
        std = p.roll(lv, w, "std", "lv")
        out.add(f"volume_z_{w}", _div(lv - mean, std, 0.0), w - 1)
        out.add(f"volume_ratio_{w}", _div(p.v, p.roll(p.v, w, "mean", "v"), 1.0), w - 1)
        out.add(f"volume_ret_corr_{w}", p.corr(absr, lv, w, ky="lv"), w)
    ws = sorted(cfg.windows)
    for a, b in zip(ws[:-1], ws[1:], strict=True):
        trend = p.roll(lv, a, "mean", "lv") - p.roll(lv, b, "mean", "lv")
        out.add(f"volume_trend_{a}_{b}", trend, b - 1)


def _obv(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    signed = np.sign(p.r) * p.v  # NaN on first bars
    obv = p.seg_cum(np.nan_to_num(signed, nan=0.0), "cumsum", p.seg)  # on-balance volume
    clv_v = _clv(p) * p.v
    for w in cfg.windows:
        vsum = p.roll(p.v, w, "sum", "v")
        out.add(f"obv_slope_{w}", _div(p.roll(signed, w, "sum"), vsum, 0.0), w)
        mean = p.roll(obv, w, "mean")
        std = p.roll(obv, w, "std")
        out.add(f"obv_z_{w}", _div(obv - mean, std, 0.0), w - 1)
        out.add(f"cmf_{w}", _div(p.roll(clv_v, w, "sum"), vsum, 0.0), w - 1)  # Chaikin money flow
    tp = (p.h + p.l + p.c) / 3.0
    flow = tp * p.v
    dtp = tp - p.lag(tp, 1)
    pos_flow = np.where(np.isnan(dtp), np.nan, np.where(dtp > 0, flow, 0.0))
    neg_flow = np.where(np.isnan(dtp), np.nan, np.where(dtp < 0, flow, 0.0))
    for n in cfg.rsi_periods:
        pf = p.roll(pos_flow, n, "sum")
        nf = p.roll(neg_flow, n, "sum")
        out.add(f"mfi_{n}", 100.0 * _div(pf, pf + nf, 0.5), n)  # money flow index


def _moments(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    r_prev = p.lag(p.r, 1)
    for w in cfg.windows:
        flat = p.roll(p.r, w, "std", "r") == 0  # pandas gives NaN skew/kurt for a flat window
        if w >= 3:
            out.add(f"skew_{w}", np.where(flat, 0.0, p.roll(p.r, w, "skew")), w)
        if w >= 4:
            out.add(f"kurt_{w}", np.where(flat, 0.0, p.roll(p.r, w, "kurt")), w)
        out.add(f"autocorr_{w}", p.corr(p.r, r_prev, w, kx="r"), w + 1)
        out.add(f"ret_max_{w}", p.roll(p.r, w, "max", "r"), w)
        out.add(f"ret_min_{w}", p.roll(p.r, w, "min", "r"), w)


def _range_position(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    for w in cfg.windows:
        out.add(f"dist_high_{w}", p.logc - np.log(p.roll(p.h, w, "max", "h")), w - 1)
        out.add(f"dist_low_{w}", p.logc - np.log(p.roll(p.l, w, "min", "l")), w - 1)
        out.add(f"drawdown_{w}", p.logc - np.log(p.roll(p.c, w, "max", "c")), w - 1)


def _calendar_of(ts: np.ndarray, intraday: bool) -> dict[str, np.ndarray]:
    """The calendar features that depend on the timestamp alone, (len(ts),) each."""
    days = ts.astype("datetime64[D]")
    months = ts.astype("datetime64[M]")
    years = ts.astype("datetime64[Y]")
    d_int = days.astype(np.int64)
    dow = (d_int + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    month0 = months.astype(np.int64) % 12  # 0 = January
    m_start = months.astype("datetime64[D]")
    dom0 = (days - m_start).astype(np.int64)
    dim = ((months + np.timedelta64(1, "M")).astype("datetime64[D]") - m_start).astype(np.int64)
    y_start = years.astype("datetime64[D]")
    doy0 = (days - y_start).astype(np.int64)
    diy = ((years + np.timedelta64(1, "Y")).astype("datetime64[D]") - y_start).astype(np.int64)
    cyc = {"dow": (dow, 7.0), "month": (month0, 12.0), "dom": (dom0, dim), "doy": (doy0, diy)}
    cols = {"dow": dow, "month": month0 + 1, "dom": dom0 + 1}
    for name, (k, period) in cyc.items():
        angle = _TWO_PI * k / period
        cols[f"{name}_sin"] = np.sin(angle)
        cols[f"{name}_cos"] = np.cos(angle)
    if intraday:
        tod = (ts - days.astype("datetime64[ns]")).astype(np.int64) / 86400e9  # [0, 1)
        cols["tod_frac"] = tod
        cols["tod_sin"] = np.sin(_TWO_PI * tod)
        cols["tod_cos"] = np.cos(_TWO_PI * tod)
    return cols


def _calendar(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    codes, times = p.time_codes()
    cols = _calendar_of(times, p.bpd is not None)  # once per distinct timestamp
    for name in ("dow", "month", "dom", "dow_sin", "dow_cos", "month_sin", "month_cos",
                 "dom_sin", "dom_cos", "doy_sin", "doy_cos"):
        out.add(name, cols[name][codes], 0)
    dt = p.ts.astype(np.int64).astype(np.float64) / 1e9
    out.add("bar_gap", (dt - p.lag(dt, 1)) / p.freq.bar_seconds, 1)  # in median bar spacings
    for name in ("tod_frac", "tod_sin", "tod_cos"):
        if name in cols:
            out.add(name, cols[name][codes], 0)


def _period_runs(p: _Panel, period_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, gid): first row of each run of one symbol's bars in one period, (n_periods,),
    and each bar's run number, (n,)."""
    new = p.new_symbol.copy()
    new[1:] |= period_id[1:] != period_id[:-1]
    return np.flatnonzero(new), np.cumsum(new) - 1


class _Periods:
    """Contiguous runs of bars of one symbol in one calendar period (week, month, session):
    the running aggregates of the current period and the totals of the previous one, as (n,).

    The previous period can begin before the first bar of a :meth:`_Panel.suffix` panel, so its
    totals are taken from the whole history."""

    def __init__(self, p: _Panel, period_of: Callable[[np.ndarray], np.ndarray]) -> None:
        start, gid = _period_runs(p, p.by_time(period_of))
        self.open = p.o[start][gid]
        self.high = p.seg_cum(p.h, "cummax", gid)  # highest high so far in the period
        self.low = p.seg_cum(p.l, "cummin", gid)
        self.volume = p.seg_cum(p.v, "cumsum", gid)
        self.index = np.arange(p.n) - start[gid]  # bars since the period opened
        q = p if p.full is None else p.full
        if q is not p:
            start, gid = _period_runs(q, q.by_time(period_of))
        last = np.append(start[1:] - 1, q.n - 1)
        has_prev = np.zeros(len(start), dtype=bool)
        has_prev[1:] = q.seg[start[1:]] == q.seg[start[:-1]]

        def prev(per_period: np.ndarray) -> np.ndarray:
            shifted = np.full(len(start), np.nan)
            shifted[1:] = per_period[:-1]
            shifted[~has_prev] = np.nan
            return shifted[gid] if q is p else shifted[gid[p.at]]

        self.prev_open = prev(q.o[start])
        self.prev_close = prev(q.c[last])
        self.prev_high = prev(np.maximum.reduceat(q.h, start))
        self.prev_low = prev(np.minimum.reduceat(q.l, start))
        self.prev_volume = prev(np.add.reduceat(q.v, start))


def _multi_timeframe(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    w_max = max(cfg.windows)
    vol_l = p.roll(p.r, w_max, "std", "r")  # 1-bar volatility scale for standardising
    if p.bpd is None:
        _calendar_periods(p, out)
        scales = [(str(s), s) for s in cfg.mtf_scales]
    else:
        _sessions(p, out, 2 * p.bpd)
        scales = [(f"{d}d", s) for d, s in _day_scales(cfg, p.bpd)]
    for label, s in scales:
        norm = vol_l * math.sqrt(s)
        lr = p.logc - p.lag(p.logc, s)
        out.add(f"mtf_ret_z_{label}", _div(lr, norm, 0.0), max(s, w_max))
        vol_ratio = _div(p.roll(p.r, s, "std", "r"), vol_l, 1.0)
        out.add(f"mtf_vol_ratio_{label}", vol_ratio, max(s, w_max))
        rng = np.log(p.roll(p.h, s, "max", "h") / p.roll(p.l, s, "min", "l"))
        out.add(f"mtf_range_z_{label}", _div(rng, norm, 0.0), max(s - 1, w_max))
        if p.bpd is None:
            out.add(f"mtf_ret_z_{label}_prev", _div(p.lag(lr, s), norm, 0.0), max(2 * s, w_max))


def _range_pos(c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return _div(c - lo, hi - lo, 0.5)


def _day(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[D]").astype(np.int64)


def _week(ts: np.ndarray) -> np.ndarray:
    return (_day(ts) + 3) // 7  # weeks start on Monday (1970-01-01 was a Thursday)


def _month(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[M]").astype(np.int64)


def _calendar_periods(p: _Panel, out: _Out) -> None:
    """Week- and month-to-date aggregates for daily (or slower) bars."""
    for name, period_of, fd in (("week", _week, _WEEK_BARS), ("month", _month, _MONTH_BARS)):
        per = _Periods(p, period_of)
        short = name[0]  # wtd / mtd
        out.add(f"{short}td_ret", p.logc - np.log(per.prev_close), fd)
        out.add(f"{short}td_range_pos", _range_pos(p.c, per.low, per.high), fd)
        out.add(f"{short}td_bar_index", per.index, fd)
        out.add(f"prev_{name}_ret", np.log(per.prev_close / per.prev_open), fd)
        out.add(f"prev_{name}_range", np.log(per.prev_high / per.prev_low), fd)


def _sessions(p: _Panel, out: _Out, fd: int) -> None:
    """Session (calendar date) aggregates for intraday bars, all as of the current bar."""
    per = _Periods(p, _day)
    out.add("sess_ret_open", p.logc - np.log(per.open), fd)
    out.add("sess_ret_prev_close", p.logc - np.log(per.prev_close), fd)
    out.add("sess_gap", np.log(per.open / per.prev_close), fd)
    out.add("sess_range", np.log(per.high / per.low), fd)
    out.add("sess_range_pos", _range_pos(p.c, per.low, per.high), fd)
    out.add("sess_bar_frac", per.index / p.bpd, fd)
    out.add("sess_volume_rel", np.log1p(per.volume) - np.log1p(per.prev_volume), fd)
    out.add("prev_sess_ret", np.log(per.prev_close / per.prev_open), fd)
    out.add("prev_sess_range", np.log(per.prev_high / per.prev_low), fd)


def _cs_sources(cfg: FeatureConfig, available: dict[str, np.ndarray]) -> list[str]:
    if cfg.cs_features:
        missing = [f for f in cfg.cs_features if f not in available]
        if missing:
            raise ValueError(
                f"features.cs_features: {missing} are not computed with these groups/windows"
            )
        return list(cfg.cs_features)
    ws = sorted(cfg.windows)
    w_mid, w_max = ws[len(ws) // 2], ws[-1]
    rsi = sorted(cfg.rsi_periods)[len(cfg.rsi_periods) // 2] if cfg.rsi_periods else 0
    auto = ["logret_1", *[f"logret_{w}" for w in ws], f"vol_cc_{w_mid}", f"volume_z_{w_mid}",
            f"rsi_{rsi}", f"sma_dist_{w_max}", f"dist_high_{w_max}", f"skew_{w_max}"]
    return [f for f in auto if f in available]


def _rank_rows_pct(grid: np.ndarray) -> np.ndarray:
    """(T, S) float64 percentile rank in (0, 1] of each value of ``grid`` (T, S) among the
    non-NaN values of its row, ties given their average rank, NaN kept: bit for bit
    ``pd.DataFrame(grid).rank(axis=1, pct=True)`` (tests/test_features.py checks it), at ~60%
    of its cost on the (2,520, 500) grids of a 500-symbol panel. The averages (a + b) / 2 of
    1-based ranks are exact halves, and each is divided by the row's count, as pandas does."""
    n_rows, n_cols = grid.shape
    nan = np.isnan(grid)
    # NaN sorts last either way; as +inf (when no value is inf) numpy's sort is ~30% faster.
    keyed = grid if np.isinf(grid).any() else np.where(nan, np.inf, grid)
    order = np.argsort(keyed, axis=1)  # (T, S); the order within ties does not matter
    s = np.take_along_axis(grid, order, axis=1)  # (T, S) each row ascending, NaN last
    count = (n_cols - np.count_nonzero(nan, axis=1)).astype(np.float64)  # (T,) non-NaN values
    j = np.arange(n_cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (j + 1.0) / count[:, None]  # (T, S) rank / count where no value ties
        tie = s[:, 1:] == s[:, :-1]  # (T, S - 1); NaN == NaN is False
        rows = np.flatnonzero(tie.any(axis=1))
        if len(rows):  # ties: each value gets (first + last + 2) / 2 of its run in the sorted row
            new = np.ones((len(rows), n_cols), dtype=bool)
            new[:, 1:] = ~tie[rows]
            first = np.maximum.accumulate(np.where(new, j, 0), axis=1)
            last_of_run = np.ones_like(new)
            last_of_run[:, :-1] = new[:, 1:]
            last = np.minimum.accumulate(np.where(last_of_run, j, n_cols)[:, ::-1], axis=1)[:, ::-1]
            r[rows] = (first + last + 2) * 0.5 / count[rows, None]
    r[j >= count[:, None]] = np.nan  # the NaN values, last in each sorted row
    out = np.empty((n_rows, n_cols))
    np.put_along_axis(out, order, r, axis=1)
    return out


def _cross_sectional(p: _Panel, cfg: FeatureConfig, out: _Out, sources: list[_Out],
                     rows: np.ndarray | None, n_jobs: int = 1) -> None:
    """Percentile rank in (0, 1] and difference from the mean across the symbols at each
    timestamp, of key features already computed in ``sources`` (on the ``rows`` of ``p``, all the
    rows of every timestamp they hold; None: all rows). The features are ranked on ``n_jobs``
    threads (pandas' rank kernels release the GIL), and added in a fixed order."""
    cols = {name: row for src in sources for name, row in src.cols.items()}
    fds = {name: fd for src in sources for name, fd in src.fd.items()}
    names = _cs_sources(cfg, cols)
    if not names:
        return
    if rows is None:
        seg = p.seg
        ts_code, uniq = p.time_codes()
    else:
        seg = p.seg[rows]
        ts_code, uniq = pd.factorize(p.ts[rows], sort=False)
    n_ts = len(uniq)
    # Aligned panels rank fastest on a dense (time, symbol) grid; ragged ones by groupby.
    wide_ok = n_ts * p.n_symbols <= _DENSE_GRID_MAX * len(ts_code)
    cell = ts_code * p.n_symbols + seg if wide_ok else None  # (n,) flat index into the grid

    def one(name: str) -> tuple[np.ndarray, np.ndarray]:
        x = cols[name]
        if cell is not None:
            grid = np.full((n_ts, p.n_symbols), np.nan, dtype=x.dtype)  # (T, S)
            grid.ravel()[cell] = x
            rank = _rank_rows_pct(grid).ravel()[cell]
        else:
            rank = pd.Series(x, copy=False).groupby(ts_code).rank(pct=True).to_numpy()
        xd = x.astype(np.float64)
        valid = ~np.isnan(xd)
        tot = np.bincount(ts_code, weights=np.where(valid, xd, 0.0), minlength=n_ts)
        cnt = np.bincount(ts_code, weights=valid, minlength=n_ts)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = tot / cnt
        return rank, xd - mean[ts_code]

    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        results = map(one, names) if n_jobs == 1 else pool.map(one, names)  # in order of names
        for name, (rank, demeaned) in zip(names, results, strict=True):
            out.add(f"cs_rank_{name}", rank, fds[name])
            out.add(f"cs_demean_{name}", demeaned, fds[name])


_GROUP_FUNCS: dict[str, Callable[[_Panel, FeatureConfig, _Out], None]] = {
    "returns": _returns,
    "volatility": _volatility,
    "atr": _atr,
    "rsi": _rsi,
    "macd": _macd,
    "stochastic": _stochastic,
    "bollinger": _bollinger,
    "moving_average": _moving_average,
    "candle": _candle,
    "volume": _volume,
    "obv": _obv,
    "moments": _moments,
    "range_position": _range_position,
    "calendar": _calendar,
    "multi_timeframe": _multi_timeframe,
}


# --------------------------------------------------------------------------------------------
# Alpha158-class operators (the public formulas of qlib's Alpha158 set, written here): every
# price level is divided by the bar's close and every volume statistic by a volume, so they are
# free of the price and volume scale. Own groups, not in the default ``features.groups``.
# --------------------------------------------------------------------------------------------

_QTL_UP, _QTL_DOWN = 0.8, 0.2  # QTLU / QTLD quantiles of the close


def _alpha_warmups(cfg: FeatureConfig) -> dict[str, int]:
    """First bar index of every feature of the Alpha158-class groups (see ``_group_warmups``)."""
    w_max = max(cfg.windows)
    return {"kbar": 0, "price_ratio": 1, "rolling_ops": w_max, "price_volume": w_max,
            "up_down": w_max, "volume_ops": w_max, "volume_surprise": 2 * max(_surprise_windows(cfg), default=0),
            "volume_return": 2 * max(_surprise_windows(cfg), default=0)}


def _roll_quantile(p: _Panel, x: np.ndarray, w: int, q: float) -> np.ndarray:
    """(n,) trailing w-bar quantile q (linear interpolation), pandas' rolling kernel."""
    bounds = p.windows(w)
    return _window_agg.roll_quantile(np.asarray(x, np.float64), bounds.start, bounds.end, w, q, "linear")


def _roll_rank(p: _Panel, x: np.ndarray, w: int) -> np.ndarray:
    """(n,) percentile rank in (0, 1] of x[t] among its trailing w bars (ties: average rank),
    pandas' ``rolling(w).rank(pct=True)`` kernel."""
    bounds = p.windows(w)
    return _window_agg.roll_rank(np.asarray(x, np.float64), bounds.start, bounds.end, w, True, "average", True)


_ARG_BLOCK = 1 << 16  # windows per argmax block: bounds the temporaries of a long panel


def _bars_since_extreme(p: _Panel, x: np.ndarray, w: int, how: str) -> np.ndarray:
    """(n,) bars since the trailing w-bar maximum (``how="max"``) or minimum of x, 0..w-1; on
    ties the earliest one. NaN where the window would reach into the previous symbol (pos < w-1).

    A strided (n - w + 1, w) view of the whole panel (no copy), reduced in blocks of windows;
    windows that straddle two symbols are computed and then masked."""
    out = np.full(p.n, np.nan)
    if p.n < w:
        return out
    view = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), w)  # (n - w + 1, w)
    arg = np.argmax if how == "max" else np.argmin
    for a in range(0, len(view), _ARG_BLOCK):
        out[w - 1 + a: w - 1 + a + _ARG_BLOCK] = (w - 1) - arg(view[a: a + _ARG_BLOCK], axis=1)
    out[p.pos < w - 1] = np.nan
    return out


def _time_regression(p: _Panel, y: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slope, r2, resid), each (n,): least squares of y on time over the trailing w bars,
    time in bars; resid is y[t] minus the fitted line at t. r2 is 0 in a flat window.

    The time axis is the bar index within the symbol (``pos``), so the sums stay small and no
    window mixes symbols; the centred time has the same spread w (w^2 - 1) / 12 in every window."""
    t = p.pos.astype(np.float64)
    sum_y = p.roll(y, w, "sum")
    sum_ty = p.roll(t * y, w, "sum")
    t_mean = t - (w - 1) / 2.0  # mean time of the window ending at t
    sxx = w * (w * w - 1) / 12.0
    sxy = sum_ty - t_mean * sum_y
    slope = sxy / sxx
    syy = p.roll(y, w, "var") * (w - 1)
    r2 = _div(sxy * sxy, sxx * syy, 0.0)
    resid = y - (sum_y / w + slope * (w - 1) / 2.0)
    return slope, np.clip(r2, 0.0, 1.0), resid


def _kbar(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """The bar's shape: body, wicks and shift over the open (KMID, KLEN, KUP, KLOW, KSFT) and
    over the range (KMID2, KUP2, KLOW2, KSFT2; 0 where high == low)."""
    rng = p.h - p.l
    top, bottom = np.maximum(p.o, p.c), np.minimum(p.o, p.c)
    shift = 2.0 * p.c - p.h - p.l
    out.add("kmid", (p.c - p.o) / p.o, 0)
    out.add("klen", rng / p.o, 0)
    out.add("kmid2", _div(p.c - p.o, rng, 0.0), 0)
    out.add("kup", (p.h - top) / p.o, 0)
    out.add("kup2", _div(p.h - top, rng, 0.0), 0)
    out.add("klow", (bottom - p.l) / p.o, 0)
    out.add("klow2", _div(bottom - p.l, rng, 0.0), 0)
    out.add("ksft", shift / p.o, 0)
    out.add("ksft2", _div(shift, rng, 0.0), 0)


def _price_ratio(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """Open, high, low of this bar and open, high, low, close of the previous bar, each divided
    by this bar's close (OPEN0, HIGH0, LOW0 and their lag-1 versions)."""
    for name, x in (("open", p.o), ("high", p.h), ("low", p.l)):
        out.add(f"{name}_0", x / p.c, 0)
    for name, x in (("open", p.o), ("high", p.h), ("low", p.l), ("close", p.c)):
        out.add(f"{name}_1", p.lag(x, 1) / p.c, 1)


def _rolling_ops(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """Rolling operators of the close over each window w, levels over the current close: ROC, MA,
    STD, BETA / RSQR / RESI (regression on time), MAX (high), MIN (low), QTLU / QTLD, RANK,
    IMAX / IMIN / IMXD (bars since the high / low, over w). RSV is ``stoch_k_{w}`` (group stochastic)."""
    for w in cfg.windows:
        out.add(f"roc_{w}", p.lag(p.c, w) / p.c, w)
        out.add(f"ma_{w}", p.roll(p.c, w, "mean", "c") / p.c, w - 1)
        out.add(f"std_{w}", p.roll(p.c, w, "std", "c") / p.c, w - 1)
        slope, r2, resid = _time_regression(p, p.c, w)
        out.add(f"beta_{w}", slope / p.c, w - 1)
        out.add(f"rsqr_{w}", r2, w - 1)
        out.add(f"resi_{w}", resid / p.c, w - 1)
        out.add(f"max_{w}", p.roll(p.h, w, "max", "h") / p.c, w - 1)
        out.add(f"min_{w}", p.roll(p.l, w, "min", "l") / p.c, w - 1)
        out.add(f"qtlu_{w}", _roll_quantile(p, p.c, w, _QTL_UP) / p.c, w - 1)
        out.add(f"qtld_{w}", _roll_quantile(p, p.c, w, _QTL_DOWN) / p.c, w - 1)
        out.add(f"rank_{w}", _roll_rank(p, p.c, w), w - 1)
        since_high = _bars_since_extreme(p, p.h, w, "max")
        since_low = _bars_since_extreme(p, p.l, w, "min")
        out.add(f"imax_{w}", since_high / w, w - 1)
        out.add(f"imin_{w}", since_low / w, w - 1)
        out.add(f"imxd_{w}", (since_low - since_high) / w, w - 1)  # > 0: the high came after the low


def _price_volume(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """CORR: correlation of the close with log(1 + volume); CORD: of the 1-bar log return with
    the 1-bar change of log(1 + volume); over each window (0 where either side is constant)."""
    lv = np.log1p(p.v)
    dlv = lv - p.lag(lv, 1)
    for w in cfg.windows:
        out.add(f"corr_{w}", p.corr(p.c, lv, w), w - 1)
        out.add(f"cord_{w}", p.corr(p.r, dlv, w), w)


def _signed_share(p: _Panel, d: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(up, down): the shares of sum |d| over w bars in the rises and in the falls of d (0.5
    each where d is 0 throughout)."""
    total = p.roll(np.abs(d), w, "sum")
    up = _div(p.roll(np.where(np.isnan(d), np.nan, np.maximum(d, 0.0)), w, "sum"), total, 0.5)
    down = _div(p.roll(np.where(np.isnan(d), np.nan, np.maximum(-d, 0.0)), w, "sum"), total, 0.5)
    return up, down


def _up_down(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """CNTP / CNTN / CNTD: shares of rising and falling bars (and their difference); SUMP / SUMN
    / SUMD: shares of the absolute close changes in the rises and falls (an RSI with a simple
    mean), over each window."""
    d = p.c - p.lag(p.c, 1)
    rise = np.where(np.isnan(d), np.nan, (d > 0).astype(np.float64))
    fall = np.where(np.isnan(d), np.nan, (d < 0).astype(np.float64))
    for w in cfg.windows:
        cntp, cntn = p.roll(rise, w, "mean"), p.roll(fall, w, "mean")
        out.add(f"cntp_{w}", cntp, w)
        out.add(f"cntn_{w}", cntn, w)
        out.add(f"cntd_{w}", cntp - cntn, w)
        sump, sumn = _signed_share(p, d, w)
        out.add(f"sump_{w}", sump, w)
        out.add(f"sumn_{w}", sumn, w)
        out.add(f"sumd_{w}", sump - sumn, w)


def _volume_ops(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """VMA / VSTD: the w-bar mean and std of the volume over this bar's volume (1 and 0 on a
    zero-volume bar); WVMA: coefficient of variation of |simple return| * volume; VSUMP / VSUMN
    / VSUMD: shares of the absolute volume changes in the rises and falls of volume."""
    ar_v = np.abs(np.expm1(p.r)) * p.v  # NaN on first bars
    dv = p.v - p.lag(p.v, 1)
    for w in cfg.windows:
        out.add(f"vma_{w}", _div(p.roll(p.v, w, "mean", "v"), p.v, 1.0), w - 1)
        out.add(f"vstd_{w}", _div(p.roll(p.v, w, "std", "v"), p.v, 0.0), w - 1)
        out.add(f"wvma_{w}", _div(p.roll(ar_v, w, "std"), p.roll(ar_v, w, "mean"), 0.0), w)
        vsump, vsumn = _signed_share(p, dv, w)
        out.add(f"vsump_{w}", vsump, w)
        out.add(f"vsumn_{w}", vsumn, w)
        out.add(f"vsumd_{w}", vsump - vsumn, w)


_SURPRISE_MIN_WINDOW = 10  # a 2-regressor fit needs a few more bars than parameters


def _surprise_windows(cfg: FeatureConfig) -> list[int]:
    return sorted(w for w in cfg.windows if w >= _SURPRISE_MIN_WINDOW)


def _vsurprise(p: _Panel, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(sigma, vsurprise_w), (n,) each (see :func:`_volume_surprise`; sigma: the std of the w
    1-bar log returns before this bar, NaN until there are w), memoised on the panel: the
    volume_return group multiplies both into returns whether or not volume_surprise is computed."""
    memo = ("vsurprise", w)
    if memo in p._memo:
        return p._memo[memo]
    lv = p._memo.get(("log1p_volume",))  # shared by the windows
    if lv is None:
        lv = p._memo[("log1p_volume",)] = np.log1p(p.v)
    sigma = p.lag(p.roll(p.r, w, "std", "r"), 1)
    x1 = _div(np.abs(p.r), sigma, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        x2 = np.where(sigma > 0, np.log(sigma), np.nan)
    m = {k: p.roll(v, w, "mean") for k, v in
         (("y", lv), ("1", x1), ("2", x2), ("11", x1 * x1), ("22", x2 * x2), ("12", x1 * x2),
          ("1y", x1 * lv), ("2y", x2 * lv), ("yy", lv * lv))}
    c11, c22, c12 = m["11"] - m["1"] ** 2, m["22"] - m["2"] ** 2, m["12"] - m["1"] * m["2"]
    c1y, c2y, cyy = m["1y"] - m["1"] * m["y"], m["2y"] - m["2"] * m["y"], m["yy"] - m["y"] ** 2
    det = c11 * c22 - c12 * c12
    b1, b2 = _div(c22 * c1y - c12 * c2y, det, 0.0), _div(c11 * c2y - c12 * c1y, det, 0.0)
    resid = (lv - m["y"]) - b1 * (x1 - m["1"]) - b2 * (x2 - m["2"])
    var = cyy - b1 * c1y - b2 * c2y  # the fit's residual variance (population)
    scale = np.sqrt(np.where(var > 1e-12 * np.maximum(cyy, 1e-300), var, 0.0))
    out = p._memo[memo] = (sigma, _div(resid, scale, 0.0))
    return out


def _volume_surprise(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """``vsurprise_w``: the residual of this bar's log volume in a trailing w-bar least-squares
    fit of ``log(1 + v)`` on ``|r_t| / sigma`` and ``log sigma`` (``sigma``: the std of the w
    1-bar log returns before this bar), over the fit's residual std. Volume rises with
    volatility and with the size of the bar's move; what is left is the unusual volume (news,
    flows) that a z-score of volume mixes with both. Causal (the window ends at this bar); 0
    where the fit is degenerate; windows of at least 10 bars."""
    for w in _surprise_windows(cfg):
        out.add(f"vsurprise_{w}", _vsurprise(p, w)[1], 2 * w)


_VOLUME_RETURN_SPANS = (1, 5)  # k: bars of the return volume_return multiplies


def _volume_return(p: _Panel, cfg: FeatureConfig, out: _Out) -> None:
    """``vret_{k}_{w}``: the last k bars' log return in units of its expected size
    (``sigma sqrt(k)``, ``sigma`` as in ``vsurprise_w``) times ``vsurprise_w``, the bar's unusual
    volume. Whether a move reverses or continues depends on the volume it came with (Llorente,
    Michaely, Saar and Wang 2002; Gervais, Kaniel and Mingelgrin 2001), a product with no
    marginal effect of either side when the sign of the effect is symmetric: a tree's greedy
    split on the return alone or on the volume alone gains nothing there, a split on the
    product does (docs/data.md, "Why the boosters missed the interaction panel"). Causal and
    scale-free; windows of at least 10 bars, k = 1 and 5."""
    for w in _surprise_windows(cfg):
        sigma, vs = _vsurprise(p, w)
        for k in _VOLUME_RETURN_SPANS:
            z = _div(p.logc - p.lag(p.logc, k), sigma * math.sqrt(k), 0.0)
            out.add(f"vret_{k}_{w}", z * vs, 2 * w)


_GROUP_FUNCS.update({
    "volume_surprise": _volume_surprise,
    "volume_return": _volume_return,
    "kbar": _kbar,
    "price_ratio": _price_ratio,
    "rolling_ops": _rolling_ops,
    "price_volume": _price_volume,
    "up_down": _up_down,
    "volume_ops": _volume_ops,
})


def _cs_normalize(parts: list[_Out | _Columns], ts: np.ndarray, how: str, skip: Any = None) -> None:
    """Replace, in place, every (n,) column of ``parts`` (``_Out`` or ``_Columns``; but
    those of ``skip``, the calendar group's) by its cross-sectional z-score or percentile rank
    among the rows at the same timestamp ``ts`` (n,). NaN stays NaN and is left out of the
    statistics; a z-score is 0 where the timestamp's values are all equal (one symbol included)."""
    ts_code, uniq = pd.factorize(ts, sort=False)
    n_ts = len(uniq)
    for part in parts:
        if part is skip:
            continue
        for name, x in part.cols.items():
            xd = x.astype(np.float64)
            valid = ~np.isnan(xd)
            if how == "rank":
                z = pd.Series(xd, copy=False).groupby(ts_code).rank(pct=True).to_numpy()
            else:
                cnt = np.bincount(ts_code, weights=valid, minlength=n_ts)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.bincount(ts_code, weights=np.where(valid, xd, 0.0), minlength=n_ts) / cnt
                    dev = xd - mean[ts_code]
                    std = np.sqrt(np.bincount(ts_code, weights=np.where(valid, dev * dev, 0.0),
                                              minlength=n_ts) / cnt)
                z = _div(dev, std[ts_code], 0.0)
            z = np.where(valid, z, np.nan)
            if isinstance(part, _Out):
                np.copyto(x, z, casting="unsafe")  # into its buffer (features.dtype)
            else:
                part.cols[name] = z.astype(x.dtype)


def _check_bars(bars: pd.DataFrame) -> None:
    """Raise ValueError unless ``bars`` follows the bars-panel contract."""
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"bars: got {type(bars).__name__}, expected a pandas DataFrame")
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars: missing column(s) {missing}; expected {list(BAR_COLUMNS)}")
    if len(bars) == 0:
        raise ValueError("bars: got an empty frame, expected at least one bar")
    ts = bars["timestamp"]
    if not pd.api.types.is_datetime64_dtype(ts.dtype) or getattr(ts.dt, "tz", None) is not None:
        raise ValueError(f"bars.timestamp: got dtype {ts.dtype}, expected tz-naive datetime64")
    if ts.isna().any():
        raise ValueError(f"bars.timestamp: {int(ts.isna().sum())} missing value(s) (NaT)")
    for col in ("open", "high", "low", "close", "volume"):
        x = bars[col].to_numpy(np.float64)
        bad = ~np.isfinite(x) | ((x <= 0) if col != "volume" else (x < 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            want = "finite and >= 0" if col == "volume" else "finite and > 0"
            raise ValueError(
                f"bars.{col}: {int(bad.sum())} bad value(s), first {x[i]!r} at row {i}; "
                f"expected {want}"
            )
    codes = pd.factorize(bars["symbol"], sort=False)[0]
    if (codes < 0).any():
        raise ValueError("bars.symbol: got missing symbols")
    same = codes[1:] == codes[:-1]
    if int((~same).sum()) + 1 != int(codes.max()) + 1:
        raise ValueError(
            "bars: rows of a symbol are not contiguous; expected sorted by (symbol, timestamp)"
        )
    t = ts.to_numpy("datetime64[ns]").astype(np.int64)
    bad = same & (t[1:] <= t[:-1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(
            f"bars: timestamp {ts.iloc[i]} of {bars['symbol'].iloc[i]!r} at row {i} is not after "
            "the previous one; expected unique (symbol, timestamp) sorted by timestamp"
        )


def _tail_rows(p: _Panel, tail: int, same_time: bool) -> tuple[np.ndarray, np.ndarray]:
    """(out, need): sorted row indices of each symbol's last ``tail`` bars, and of the bars the
    cross-sectional features need for them (with ``same_time``: every bar at one of their
    timestamps; else the same rows)."""
    ends = np.r_[p.starts[1:], p.n]
    out = np.flatnonzero(np.arange(p.n) >= np.maximum(ends - tail, p.starts)[p.seg])
    if not same_time:
        return out, out
    times = np.unique(p.ts[out])  # sorted
    nearest = times[np.minimum(np.searchsorted(times, p.ts), len(times) - 1)]
    return out, np.flatnonzero(nearest == p.ts)


def compute_features(
    bars: pd.DataFrame, cfg: FeatureConfig, freq: FrequencyInfo | None = None, n_jobs: int = 2,
    *, tail: int | None = None,
) -> pd.DataFrame:
    """Causal features of each bar.

    bars: the bars panel, (n,) rows sorted by (symbol, timestamp).
    freq: bar frequency; inferred from ``bars`` when None (intraday bars add time-of-day and
        session features and replace the week/month aggregates).
    n_jobs: threads computing feature groups concurrently (the numeric kernels release the GIL);
        the result does not depend on it.
    Returns (n, 2 + n_features): ``symbol, timestamp`` then the features as ``cfg.dtype``, same
    rows and index
    as ``bars``. NaN only in each symbol's first ``warmup_bars(cfg, freq)`` bars; never inf.
    Cross-sectional features (``cs_rank_*``, ``cs_demean_*``) appear only with >= 2 symbols.
    tail: return only each symbol's last ``tail`` rows (what a forecast from the last bar
        reads), at a fraction of the cost: the finite-window features are computed on the last
        ``tail + warmup_bars(cfg, freq)`` bars of each symbol (and of the symbols at the same
        timestamps); the exponentially weighted means and the previous week/month/session
        totals, whose memory is longer, on all of ``bars``. The values are the full
        computation's up to float rounding (rolling sums that start at another bar).
    """
    parts, keep, take = _compute(bars, cfg, freq, n_jobs, tail)
    rows = bars if keep is None else bars.iloc[keep]
    keys = pd.DataFrame(
        {"symbol": rows["symbol"], "timestamp": rows["timestamp"]}, index=rows.index
    )
    return pd.concat([keys, *(o.frame(rows.index, take) for o in parts)], axis=1)


def compute_feature_matrix(
    bars: pd.DataFrame, cfg: FeatureConfig, columns: list[str] | tuple[str, ...],
    freq: FrequencyInfo | None = None, n_jobs: int = 1, *, tail: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """:func:`compute_features` ``(bars, cfg, freq, n_jobs, tail=tail)`` as a matrix, for a
    forecast from each symbol's last bar: no frame is built (on a few symbols its assembly costs
    more than the features it holds).

    Returns ``(rows, X, missing)``: the rows of ``bars`` the features are for (each symbol's
    last ``tail``, in order), X (len(rows), len(columns)) C-contiguous of ``cfg.dtype``, equal
    to ``compute_features(...)[columns].to_numpy()``, and the ``columns`` not computed (then X
    is None)."""
    parts, keep, take = _compute(bars, cfg, freq, n_jobs, tail)
    for part in parts:
        part.finish()
    lookup = {name: row for part in parts for name, row in part.cols.items()}
    missing = [c for c in columns if c not in lookup]
    if missing:
        return keep, None, missing
    block = np.stack([lookup[c] for c in columns])  # (F, n) one copy
    if take is not None:
        block = block[:, take]
    return keep, np.ascontiguousarray(block.T), []


def _compute(bars: pd.DataFrame, cfg: FeatureConfig, freq: FrequencyInfo | None, n_jobs: int,
             tail: int | None) -> tuple[list[_Out], np.ndarray | None, np.ndarray | None]:
    """The feature groups of ``compute_features``: (parts, keep, take): the groups' outputs, the
    rows of ``bars`` returned (None: all) and their positions in the parts' rows (None: all)."""
    check(cfg, "features")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs: got {n_jobs!r}, expected an integer >= 1")
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise ValueError(f"tail: got {tail!r}, expected an integer >= 1 or None")
    _check_bars(bars)
    if freq is None:
        freq = infer_frequency(bars)
    p = _Panel(bars, freq)
    warm = warmup_bars(cfg, freq)
    with_cs = "cross_sectional" in cfg.groups and p.n_symbols >= 2
    keep = need = take = None  # rows of bars returned; rows of p kept; positions of keep in need
    if tail is not None:
        keep, need = _tail_rows(p, tail, with_cs)
        # Each symbol from a warm-up before its first needed bar, a suffix of its rows: a
        # finite-window feature reads no further back than the bar where it is first defined.
        first = need[np.flatnonzero(np.r_[True, np.diff(p.seg[need]) != 0])]  # (n_symbols,)
        start = np.maximum(first - warm, p.starts)
        at = np.flatnonzero(np.arange(p.n) >= start[p.seg])
        p = p.suffix(at)
        if len(keep) < len(need):
            take = np.searchsorted(need, keep)
        need = np.searchsorted(at, need)
    # Fixed group order (FEATURE_GROUPS), one output per group: the columns come out in the same
    # order whatever the order of cfg.groups or of thread completion.
    groups = [g for g in FEATURE_GROUPS if g in cfg.groups and g in _GROUP_FUNCS]
    outs = {g: _Out(p.pos, warm, cfg.dtype, need) for g in groups}

    def run(group: str) -> None:
        _GROUP_FUNCS[group](p, cfg, outs[group])
        outs[group].finish()  # before _cross_sectional reads its columns

    if n_jobs == 1 or len(groups) <= 1:
        for g in groups:
            run(g)
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(run, groups))  # list() re-raises the first error of any group
    p._memo.clear()  # free the shared intermediates before the cross-sectional pass
    if p.full is not None:
        p.full._memo.clear()
    parts = [outs[g] for g in groups]
    if with_cs:
        cs = _Out(p.pos if need is None else p.pos[need], warm, cfg.dtype)
        _cross_sectional(p, cfg, cs, parts, need, n_jobs)
        cs.finish()
        parts.append(cs)
    if cfg.cs_normalize != "none":
        _cs_normalize(parts, p.ts if need is None else p.ts[need], cfg.cs_normalize, skip=outs.get("calendar"))

    return parts, keep, take


class _Columns:
    """Feature columns already computed (a frame's), in the form ``_cross_sectional`` reads from
    its sources. fd 0: their warm-up rows are NaN already, so nothing more is masked."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.cols = {c: frame[c].to_numpy() for c in frame.columns[2:]}
        self.fd = dict.fromkeys(self.cols, 0)


def _features_job(job: tuple[pd.DataFrame, FeatureConfig, FrequencyInfo]) -> pd.DataFrame:
    bars, cfg, freq = job
    return compute_features(bars, cfg, freq=freq)


def compute_features_batched(bars: pd.DataFrame, cfg: FeatureConfig, freq: FrequencyInfo | None = None, *,
                             fan: FanOut | None = None) -> pd.DataFrame:
    """:func:`compute_features` (all rows), with the per-symbol groups computed on batches of
    ``cfg.symbol_batch`` whole symbols (0: one batch, the plain call), one piece of work each for
    ``fan`` (:mod:`alphafactory.compute`; None: here), and the cross-sectional features then on
    the whole panel. The frame depends on ``cfg.symbol_batch`` only in the last bits of the
    exponentially weighted features (see :class:`FeatureConfig`), never on ``fan``."""
    check(cfg, "features")
    _check_bars(bars)
    codes = pd.factorize(bars["symbol"], sort=False)[0]
    starts = symbol_starts(codes)  # (n_symbols,) first row of each
    if cfg.symbol_batch == 0 or cfg.symbol_batch >= len(starts):
        return compute_features(bars, cfg, freq=freq)
    if freq is None:
        freq = infer_frequency(bars)
    ends = np.r_[starts[1:], len(bars)]
    own = dataclasses.replace(cfg, groups=tuple(g for g in cfg.groups if g != "cross_sectional"),
                              cs_normalize="none")  # across the whole panel, below
    first = range(0, len(starts), cfg.symbol_batch)  # first symbol of each batch
    jobs = [(bars.iloc[starts[i]:ends[min(i + cfg.symbol_batch, len(starts)) - 1]], own, freq) for i in first]
    feats = pd.concat((fan or FanOut()).map(_features_job, jobs, desc="featurize", unit="batch"))
    p = _Panel(bars, freq)
    if "cross_sectional" in cfg.groups:
        cs = _Out(p.pos, warmup_bars(cfg, freq), cfg.dtype)
        _cross_sectional(p, cfg, cs, [_Columns(feats)], None)
        feats = pd.concat([feats, cs.frame(bars.index)], axis=1)
    if cfg.cs_normalize != "none":
        cols = _Columns(feats)
        if "calendar" in cfg.groups:  # left as they are: drop their names
            calendar = _Out(p.pos, warmup_bars(cfg, freq), cfg.dtype)
            _calendar(p, cfg, calendar)
            cols.cols = {c: x for c, x in cols.cols.items() if c not in calendar.cols}
        _cs_normalize([cols], p.ts, cfg.cs_normalize)
        feats = feats.assign(**cols.cols)
    return feats


def iter_features_batched(bars: pd.DataFrame, cfg: FeatureConfig, freq: FrequencyInfo | None = None, *,
                          fan: FanOut | None = None, spill: str | None = None,
                          piece_rows: int = 65536) -> Iterator[pd.DataFrame]:
    """The frame of :func:`compute_features_batched`, bit for bit, as consecutive pieces of at
    most ``piece_rows`` rows, so that a writer holds one piece of features at a time instead of
    the whole panel (issue 19). The index of a piece holds its rows' positions in ``bars``.

    The per-symbol groups of each batch of ``cfg.symbol_batch`` symbols are computed
    (``fan.workers`` batches at a time, one piece of work each) and spilled to a parquet file
    under the directory ``spill`` (a temporary one if None), keeping in memory only the columns
    the cross-sectional group ranks (``_cs_sources``); the cross-sectional features are then
    computed on the whole panel from those, and the spilled batches are read back a row group
    (``piece_rows`` rows) at a time with their rows of them. The peak is one batch's features,
    not the panel's. One batch (``symbol_batch`` 0 or at least the number of symbols) or
    ``cs_normalize`` (which rewrites every column across the panel) yields the one whole frame."""
    import tempfile

    import pyarrow.parquet as pq

    check(cfg, "features")
    _check_bars(bars)
    codes = pd.factorize(bars["symbol"], sort=False)[0]
    starts = symbol_starts(codes)  # (n_symbols,) first row of each
    if cfg.symbol_batch == 0 or cfg.symbol_batch >= len(starts) or cfg.cs_normalize != "none":
        whole = compute_features_batched(bars, cfg, freq=freq, fan=fan)
        whole.index = pd.RangeIndex(len(bars))
        yield whole
        return
    if freq is None:
        freq = infer_frequency(bars)
    fan = fan or FanOut()
    ends = np.r_[starts[1:], len(bars)]
    own = dataclasses.replace(cfg, groups=tuple(g for g in cfg.groups if g != "cross_sectional"))
    spans = [(starts[i], ends[min(i + cfg.symbol_batch, len(starts)) - 1]) for i in range(0, len(starts), cfg.symbol_batch)]
    with tempfile.TemporaryDirectory(dir=spill, prefix=".featurize-spill-") as tmp:
        kept: dict[str, list[np.ndarray]] = {}
        names: list[str] | None = None
        step = max(1, fan.workers)
        for g in range(0, len(spans), step):
            jobs = [(bars.iloc[a:b], own, freq) for a, b in spans[g:g + step]]
            for k, frame in enumerate(fan.map(_features_job, jobs, desc=None)):
                if names is None:
                    names = (_cs_sources(cfg, dict.fromkeys(frame.columns[2:]))
                             if "cross_sectional" in cfg.groups else [])
                for name in names:
                    # a copy: a view would keep the frame's whole block of columns alive
                    kept.setdefault(name, []).append(frame[name].to_numpy().copy())
                frame.to_parquet(f"{tmp}/{g + k}.parquet", index=False, engine="pyarrow", compression="lz4",
                                 row_group_size=piece_rows)
            del jobs, frame
        cs_frame = None
        if names:
            p = _Panel(bars, freq)
            sources = _Columns(pd.DataFrame())
            sources.cols = {name: np.concatenate(kept.pop(name)) for name in names}
            sources.fd = dict.fromkeys(names, 0)
            cs = _Out(p.pos, warmup_bars(cfg, freq), cfg.dtype)
            _cross_sectional(p, cfg, cs, [sources], None)
            del sources, p
            cs_frame = cs.frame(pd.RangeIndex(len(bars)))
            del cs
        for i, (a, _) in enumerate(spans):
            spilled = pq.ParquetFile(f"{tmp}/{i}.parquet")
            for rg in range(spilled.num_row_groups):
                frame = spilled.read_row_group(rg).to_pandas()
                frame.index = pd.RangeIndex(a, a + len(frame))
                a += len(frame)
                yield frame if cs_frame is None else pd.concat([frame, cs_frame.loc[frame.index]], axis=1)
