"""Raw multi-resolution OHLCV windows for the sequence models (``neural.inputs``).

A sequence model reads, beside or instead of its window of engineered features, the bars
themselves at several resolutions, built at as-of time from the prepared bars (never from the
feature table). A resolution ``(k, n)`` is the last ``n`` non-overlapping blocks of ``k`` bars
ending at the as-of bar ``t``: block j (0 = oldest) covers bars ``e_j - k + 1 .. e_j`` with
``e_j = t - (n - 1 - j) * k``, aggregated as open = first open, high = max high, low = min low,
close = last close, volume = sum. The default ``[[1, 32], [5, 26], [21, 12]]`` is the last 32
bars, 26 "weeks" and 12 "months" of bars (blocks of bars, not calendar periods, so they mean the
same on any bar frequency). Only bars up to ``t`` are read: the window is strictly causal.

Normalisation, scale-free so that every symbol and price level looks alike:
  * open, high, low, close: ``log(price / close_t)``, the log ratio to the as-of close;
  * volume: ``log1p(v / mean(v))``, the block volume over its window's mean block volume
    (finite for zero volume; NaN where a window's volume is all zero, which the model's feature
    scaling maps to 0).
The model then z-scores these channels like its features (train statistics, NaN → 0, clip).

Layout: the resolutions differ in length, so each is aligned to the *end* of the model's
``train.lookback`` steps: resolution ``(k, n)`` fills the last ``n`` steps (``n <= lookback``)
and the earlier steps are NaN (→ 0, the train mean, after scaling). The 5 channels of every
resolution are concatenated to the feature channels per step (``both``) or stand alone
(``raw``): a window is still one ``(lookback, channels)`` array. Why this and not one encoder
per resolution: every one of the sequence families (LSTM, TCN, transformers, N-BEATS, ...)
consumes ``(B, L, F)`` unchanged, the trainer and its scaling stay as they are, and the ONNX
graph keeps its one input ``x`` (only its channel count grows), so the bundle path and the
ONNX-vs-PyTorch check need nothing new. The price: the coarse steps are aligned by recency (the
last step holds the latest bar, week and month), not by calendar time; a recurrent or causal
convolutional network reads the most recent of each at the last step either way.

History: a window needs :meth:`InputsConfig.history` = ``max(k * n)`` bars of its symbol up to
``t`` (252 for the default); training drops the rows with less (as it drops the rows without a
full ``lookback``), and a forecast request with less is refused with one line naming it.

This module imports neither PyTorch nor scikit-learn: the bundle's inference builds the same
windows from the request's bars.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd

from alphafactory.config import Interval, NonEmpty, from_dict, to_dict
from alphafactory.dataset import Dataset, Windows
from alphafactory.errors import ConfigError, DataValidationError

KINDS = ("features", "raw", "both")
FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class InputsConfig:
    """``neural.inputs``: what a sequence network reads per step."""

    kind: Literal["features", "raw", "both"] = "features"  # engineered features, raw OHLCV windows, or both
    # (k, n) pairs: the last n blocks of k bars each, aggregated OHLCV; n <= train.lookback
    resolutions: Annotated[tuple[tuple[Annotated[int, Interval(ge=1)], Annotated[int, Interval(ge=1)]], ...],
                           NonEmpty()] = ((1, 32), (5, 26), (21, 12))

    @property
    def raw(self) -> bool:
        return self.kind != "features"

    @property
    def features(self) -> bool:
        return self.kind != "raw"

    def history(self) -> int:
        """Bars of a symbol up to the as-of bar that a raw window reads (0 without raw inputs)."""
        return max(k * n for k, n in self.resolutions) if self.raw else 0

    @property
    def channels(self) -> int:
        return len(FIELDS) * len(self.resolutions) if self.raw else 0

    def check(self, lookback: int) -> None:
        longest = max(n for _, n in self.resolutions)
        if self.raw and longest > lookback:
            raise ConfigError(f"neural.inputs.resolutions: a resolution of {longest} blocks, more than the "
                              f"{lookback} steps of train.lookback; expected n <= train.lookback")

    def channel_names(self) -> list[str]:
        return [f"raw_{k}x{n}_{f}" for k, n in self.resolutions for f in FIELDS] if self.raw else []


def inputs_config(value: InputsConfig | dict[str, Any] | None) -> InputsConfig:
    """``neural.inputs`` as an :class:`InputsConfig` (None: the default, features only)."""
    return value if isinstance(value, InputsConfig) else from_dict(InputsConfig, value, "neural.inputs")


def init_kwargs(cfg: InputsConfig) -> dict[str, Any]:
    """What a model's manifest records of ``cfg``: nothing for the default (so the manifests of
    feature-only models are unchanged), else ``{"inputs": {...}}``."""
    return {"inputs": to_dict(cfg)} if cfg.raw else {}


def of_model(model: Any) -> InputsConfig:
    """The inputs a fitted model (PyTorch, ONNX or per-symbol) reads; features only for a model
    without the attribute (every non-network family)."""
    return getattr(model, "inputs", None) or InputsConfig()


@dataclass(frozen=True)
class Bars:
    """The bars of a panel as arrays, rows sorted by (symbol, timestamp). ``pos``: each bar's
    position within its symbol (0 = its first bar). Block aggregates per block length are
    computed once, on first use."""

    open: np.ndarray  # (N,) float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    pos: np.ndarray  # (N,) int64
    _blocks: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_frame(cls, bars: pd.DataFrame) -> Bars:
        """From a bars table (``symbol, timestamp, open, high, low, close, volume``) already
        sorted by (symbol, timestamp), as ``prepare`` writes it and ``validate_bars`` returns it."""
        pos = bars.groupby("symbol", sort=False).cumcount().to_numpy(np.int64)
        return cls(*(bars[c].to_numpy(np.float64) for c in FIELDS), pos=pos)

    def __len__(self) -> int:
        return len(self.close)

    def blocks(self, k: int) -> tuple[np.ndarray, ...]:
        """(open, high, low, close, volume) of the block of k bars ending at each bar, (N,) each.
        Rolls over the concatenated symbols: a block that reaches into the previous symbol is
        wrong, and never read (a window is built only at bars with ``history`` bars of their own)."""
        if k not in self._blocks:
            if k == 1:
                self._blocks[k] = (self.open, self.high, self.low, self.close, self.volume)
            else:
                def roll(a: np.ndarray, how: Any) -> np.ndarray:
                    out = np.full(len(a), np.nan)
                    if len(a) >= k:
                        out[k - 1:] = how(np.lib.stride_tricks.sliding_window_view(a, k), axis=1)
                    return out
                first = np.full(len(self), np.nan)
                first[k - 1:] = self.open[:len(self) - k + 1]
                self._blocks[k] = (first, roll(self.high, np.max), roll(self.low, np.min), self.close,
                                   roll(self.volume, np.sum))
        return self._blocks[k]

    def windows(self, at: np.ndarray, cfg: InputsConfig, lookback: int) -> np.ndarray:
        """(b, lookback, 5 * R) float32 raw windows as of the bars ``at`` (b,) (see the module
        docstring: normalised, each resolution in the last n steps, NaN before). Every bar of
        ``at`` must have ``cfg.history()`` bars of its own symbol up to itself."""
        at = np.asarray(at, np.int64)
        if len(at) and self.pos[at].min() < cfg.history() - 1:
            raise ValueError(f"raw windows: a bar with {int(self.pos[at].min()) + 1} bars of history; "
                             f"expected at least {cfg.history()}")
        out = np.full((len(at), lookback, cfg.channels), np.nan, np.float32)
        ref = self.close[at][:, None]  # (b, 1) the as-of close
        for r, (k, n) in enumerate(cfg.resolutions):
            ends = at[:, None] - (n - 1 - np.arange(n)) * k  # (b, n) last bar of each block
            o, h, lo, c, v = (a[ends] for a in self.blocks(k))
            with np.errstate(divide="ignore", invalid="ignore"):
                prices = np.log(np.stack([o, h, lo, c], -1) / ref[..., None])  # (b, n, 4)
                vol = np.log1p(v / v.mean(axis=1, keepdims=True))  # (b, n)
            out[:, lookback - n:, 5 * r:5 * r + 4] = prices
            out[:, lookback - n:, 5 * r + 4] = vol
        return out


@dataclass(frozen=True)
class RawSource:
    """Where a :class:`~alphafactory.dataset.Windows` gets its raw channels: ``bars`` and, per
    window (aligned with ``Windows.ends``), the index ``at`` of its as-of bar in them."""

    bars: Bars
    at: np.ndarray  # (n,) int64
    cfg: InputsConfig

    def take(self, idx: Any) -> RawSource:
        return RawSource(self.bars, self.at[idx], self.cfg)

    def windows(self, idx: Any, lookback: int) -> np.ndarray:
        return self.bars.windows(self.at[idx], self.cfg, lookback)


def bar_rows(keys: pd.DataFrame, bars: pd.DataFrame) -> np.ndarray:
    """(n,) int64: the row of ``bars`` of each (symbol, timestamp) of ``keys``; ValueError when
    one has no bar (features built from other bars than these)."""
    index = pd.MultiIndex.from_frame(bars[["symbol", "timestamp"]])
    rows = index.get_indexer(pd.MultiIndex.from_frame(keys[["symbol", "timestamp"]]))
    if (rows < 0).any():
        bad = keys.iloc[int(np.flatnonzero(rows < 0)[0])]
        raise DataValidationError(f"bars: no bar for {bad['symbol']!r} at {bad['timestamp']}, a row of the "
                                  f"features; the raw windows (neural.inputs) need the bars the features came from")
    return rows.astype(np.int64)


def history_needed(models: Any) -> int:
    """The most bars of history up to the as-of bar that any of ``models`` reads raw (0: none)."""
    return max((of_model(m).history() for m in models), default=0)


def request_bars(bars: pd.DataFrame, models: Any) -> Bars | None:
    """The request's bars as :class:`Bars` when any of ``models`` reads raw windows, else None
    (a bundle of feature-only models pays nothing)."""
    return Bars.from_frame(bars) if history_needed(models) else None


def history_note(models: Any) -> str:
    """``"; raw OHLCV windows N bars"`` for an error message on too little history, or ``""``."""
    need = history_needed(models)
    return f"; raw OHLCV windows {need} bars (neural.inputs.resolutions)" if need else ""


def with_bars(ds: Dataset, bars: pd.DataFrame) -> Dataset:
    """``ds`` with the prepared bars (sorted by symbol, timestamp) its rows came from, and each
    row's bar in them (``Dataset.bars``, ``Dataset.bar_rows``)."""
    return replace(ds, bars=Bars.from_frame(bars), bar_rows=bar_rows(ds.keys, bars))


def _need_bars(ds: Dataset, cfg: InputsConfig) -> None:
    if ds.bars is None:
        raise ConfigError(f"neural.inputs.kind {cfg.kind}: the raw windows need the prepared bars, which this "
                          "dataset was loaded without (raw_windows.with_bars)")


def history_rows(ds: Dataset, rows: np.ndarray, cfg: InputsConfig | None) -> np.ndarray:
    """The subset of ``rows`` whose bar has the ``cfg.history()`` bars a raw window reads (all
    of ``rows`` without raw inputs): training drops the others, as it drops rows without a full
    ``lookback``."""
    if cfg is None or not cfg.raw:
        return rows
    _need_bars(ds, cfg)
    return rows[ds.bars.pos[ds.bar_rows[rows]] >= cfg.history() - 1]


def sequence_input(X: np.ndarray, rows: np.ndarray, lookback: int, cfg: InputsConfig | None = None,
                   bars: Bars | None = None, at: np.ndarray | None = None) -> Windows:
    """What a sequence model reads: windows of ``lookback`` rows of the features ``X`` (N, F)
    ending at ``rows`` (n,), plus, with raw ``cfg``, the raw windows of ``bars`` as of the bars
    ``at`` (n,) (the bar of each of ``rows``). The training stages (:func:`dataset_windows`)
    and a bundle's forecasts (``serving.inference``) build them here alike."""
    if cfg is None or not cfg.raw:
        return Windows(X, rows, lookback)
    if bars is None or at is None or len(at) != len(rows):
        raise ValueError(f"neural.inputs.kind {cfg.kind}: raw windows need the bars and one as-of bar per row")
    return Windows(X, rows, lookback, RawSource(bars, np.asarray(at, np.int64), cfg), cfg.features)


def dataset_windows(ds: Dataset, rows: np.ndarray, lookback: int, cfg: InputsConfig | None) -> Windows:
    """:func:`sequence_input` for rows of a dataset (its bars attached by :func:`with_bars`)."""
    if cfg is None or not cfg.raw:
        return ds.windows(rows, lookback)
    _need_bars(ds, cfg)
    return sequence_input(ds.X, rows, lookback, cfg, ds.bars, ds.bar_rows[rows])
