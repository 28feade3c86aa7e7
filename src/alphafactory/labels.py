"""Forward-return labels that end exactly where they say.

For a bar at time t and horizon h the label is ``log(close[t+h] / close[t])`` of the same symbol;
``end_h{h}`` records the timestamp of bar t+h. The last h bars of each symbol have no h-label and
keep NaN: they are dropped for that horizon downstream, never filled.

Training target ``y_h{h}`` (``label.normalize``); the raw return ``ret_h{h}`` is always kept, and
every test metric of IC, direction and trading is scored against it:

* ``none``: the raw forward log return (``y == ret``).
* ``vol``: ``ret / (vol_t sqrt(h))``, with ``vol_t`` the trailing volatility known at t.
* ``cs_zscore``: per timestamp, ``(ret - mean) / sd`` over the symbols labelled at that
  timestamp (ddof 0): only the part of the return relative to the cross-section is left.
* ``cs_rank``: per timestamp, the centred rank ``(rank - 0.5) / n - 0.5`` in (-0.5, 0.5) over the
  n labelled symbols (ties share their average rank): the heavy tails are gone too.

The cross-sectional targets use other symbols' returns over the same window (t, t+h], never a
later one, so the label window and its purge are unchanged. A timestamp with fewer than 2
labelled symbols (or all returns equal) has no cross-sectional target (NaN). Under a normalised
target a model's forecast ``yhat`` is in the target's units: a vol-scaled return, or a relative
score whose sign says above/below the cross-section, not a return; evaluate scores the IC, the
rank IC, the direction and the trading books against the raw return all the same.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pandas._libs.window import aggregations as _window_agg

from alphafactory.config import Interval, NonEmpty, Unique
from alphafactory.data.layout import symbol_starts
from alphafactory.errors import ConfigError

NORMALIZE: tuple[str, ...] = ("none", "vol", "cs_zscore", "cs_rank")  # label.normalize choices


@dataclass(frozen=True)
class LabelConfig:
    horizons: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], NonEmpty(), Unique()] = (1, 5, 20)  # bars ahead
    # training target (module docstring); bool only to name the old form in an error
    normalize: Literal[NORMALIZE] | bool = "none"
    # dead zone of the 3-class label, in units of vol * sqrt(h)
    class_threshold: Annotated[float, Interval(ge=0)] = 0.5
    vol_window: Annotated[int, Interval(ge=2)] = 20  # bars of trailing 1-bar log returns used for the volatility
    # symbols per piece of the label stage's table (0: one piece; cs_zscore/cs_rank: always one)
    symbol_batch: Annotated[int, Interval(ge=0)] = 0

    def validate(self) -> None:
        if isinstance(self.normalize, bool):
            raise ConfigError(
                f"label.normalize: got {str(self.normalize).lower()}, the old boolean form; expected one of "
                f"{list(NORMALIZE)} (false is now none, true is vol)")


KEYS = ["symbol", "timestamp"]  # the row key of every panel table (bars, features, labels, forecasts)
CLASS_NAMES = ("short", "neutral", "long")  # labels -1, 0, 1; class index = label + 1
PROBA_COLUMNS = tuple(f"p_{c}" for c in CLASS_NAMES)  # class probabilities in prediction tables


def target_columns(horizons: tuple[int, ...] | list[int]) -> list[str]:
    return [f"y_h{h}" for h in horizons]


def _shift_within(values: np.ndarray, sym_codes: np.ndarray, k: int) -> np.ndarray:
    """values[i + k] when row i + k belongs to the same symbol, else NaN (k may be negative)."""
    n = len(values)
    out = np.full(n, np.nan, dtype=np.float64)
    idx = np.arange(n) + k
    ok = (idx >= 0) & (idx < n)
    ok[ok] &= sym_codes[idx[ok]] == sym_codes[ok]
    out[ok] = values[idx[ok]]
    return out


def _target(fwd: np.ndarray, scale: np.ndarray, ts: np.ndarray, mode: str) -> np.ndarray:
    """(n,) training target from the raw forward returns ``fwd`` (n,), the vol scale (n,) and the
    rows' timestamps (n,); see the module docstring."""
    if mode == "none":
        return fwd
    if mode == "vol":
        return fwd / scale
    if mode not in ("cs_zscore", "cs_rank"):
        raise ValueError(f"label.normalize: got {mode!r}, expected one of {list(NORMALIZE)}")
    frame = pd.DataFrame({"ts": ts, "y": fwd})
    by = frame.groupby("ts", sort=False)["y"]
    n = by.transform("count").to_numpy(np.float64)
    if mode == "cs_zscore":
        sd = by.transform("std").to_numpy() * np.sqrt(np.maximum(n - 1.0, 0.0) / np.maximum(n, 1.0))  # ddof 0
        out = (fwd - by.transform("mean").to_numpy()) / np.where(sd > 0, sd, np.nan)
    else:
        rank = by.rank(method="average").to_numpy()
        out = np.where(by.transform("nunique").to_numpy() > 1, (rank - 0.5) / n - 0.5, np.nan)
    return np.where(n >= 2, out, np.nan)


def _trailing_vol(logc: np.ndarray, codes: np.ndarray, window: int) -> np.ndarray:
    """(n,) trailing volatility known at t: the std of the last ``window`` 1-bar log returns up
    to t, per symbol (``codes``; each symbol's rows contiguous), NaN before a full window.

    ``pd.Series(r1).groupby(codes).rolling(window, min_periods=window).std()``, bit for bit
    (tests/test_labels_split.py checks it), through the pandas kernel it calls, with the windows
    it builds (clipped at each symbol's first row): the groupby machinery costs ~1 ms, most of a
    few-symbol forecast's volatility."""
    r1 = logc - _shift_within(logc, codes, -1)
    n = len(r1)
    if n == 0:
        return r1
    first = symbol_starts(codes)  # each symbol's first row
    seg_start = np.repeat(first, np.diff(np.r_[first, n]))
    end = np.arange(1, n + 1, dtype=np.int64)
    start = np.maximum(end - window, seg_start).astype(np.int64)
    with np.errstate(all="ignore"):
        var = _window_agg.roll_var(r1, start, end, window, ddof=1)
        out = np.sqrt(var)
    out[var < 0] = 0
    return out


def trailing_vol(bars: pd.DataFrame, cfg: LabelConfig) -> np.ndarray:
    """``make_labels(bars, cfg)["vol"]``, without the labels (what a forecast's yhat_std reads)."""
    return _trailing_vol(log_close(bars), pd.factorize(bars["symbol"])[0], cfg.vol_window)


def log_close(bars: pd.DataFrame) -> np.ndarray:
    """(n,) float64 log of the (validated, positive) close from the C library's ``log``, value by
    value, not numpy's, which dispatches per CPU: its AVX-512 kernel differs from libm in the
    last bit of about one value in 2,400, so the labels' bytes, and every md5 in dvc.lock
    downstream of them, depended on the machine that ran ``dvc repro`` (with libm an AVX-512
    and an X86_V3 machine wrote the same labels)."""
    close = bars["close"].to_numpy(np.float64)
    return np.fromiter(map(math.log, close.tolist()), np.float64, len(close))


def iter_labels(bars: pd.DataFrame, cfg: LabelConfig) -> Iterator[pd.DataFrame]:
    """:func:`make_labels` of ``bars`` a batch of ``cfg.symbol_batch`` whole symbols at a time
    (the label stage writes each as its own row groups, so it never holds the panel's labels):
    the pieces concatenate to the one-piece table bit for bit, as every label but the
    cross-sectional targets is computed within a symbol. ``cs_zscore`` and ``cs_rank`` compare
    the symbols at each timestamp, so they are one piece."""
    cross = cfg.normalize in ("cs_zscore", "cs_rank")
    if cfg.symbol_batch == 0 or cross or len(bars) == 0:
        yield make_labels(bars, cfg)
        return
    sym = bars["symbol"].to_numpy()
    starts = symbol_starts(sym)  # first row of each symbol (sorted)
    cuts = np.r_[starts[::cfg.symbol_batch], len(bars)]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        yield make_labels(bars.iloc[a:b], cfg)


def make_labels(bars: pd.DataFrame, cfg: LabelConfig) -> pd.DataFrame:
    """Labels for a bars panel sorted by (symbol, timestamp).

    Returns one row per bar: ``symbol, timestamp, vol`` and, per horizon h, ``ret_h{h}`` (raw
    forward log return), ``y_h{h}`` (training target, ``label.normalize``), ``cls_h{h}``
    (-1 SHORT / 0 NEUTRAL / 1 LONG, NaN where no label) and ``end_h{h}`` (timestamp of bar t+h).
    """
    codes = pd.factorize(bars["symbol"])[0]
    logc = log_close(bars)
    ts = bars["timestamp"].to_numpy("datetime64[ns]")
    vol = _trailing_vol(logc, codes, cfg.vol_window)
    out: dict[str, object] = {"symbol": bars["symbol"].to_numpy(), "timestamp": ts, "vol": vol}
    for h in cfg.horizons:
        fwd = _shift_within(logc, codes, h) - logc
        scale = vol * np.sqrt(h)
        y = _target(fwd, scale, ts, cfg.normalize)
        cls = np.where(fwd > cfg.class_threshold * scale, 1.0,
                       np.where(fwd < -cfg.class_threshold * scale, -1.0, 0.0))
        cls[np.isnan(fwd) | np.isnan(scale)] = np.nan
        end_idx = np.arange(len(ts)) + h
        end = np.full(len(ts), np.datetime64("NaT"), dtype="datetime64[ns]")
        ok = ~np.isnan(fwd)
        end[ok] = ts[end_idx[ok]]
        out[f"ret_h{h}"] = fwd
        out[f"y_h{h}"] = y
        out[f"cls_h{h}"] = cls
        out[f"end_h{h}"] = end
    return pd.DataFrame(out)
