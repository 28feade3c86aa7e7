"""Time splits purged by the label horizon plus an embargo.

All symbols are cut at the same timestamps. A row belongs to a segment by its own timestamp; it is
purged when its longest label ends at or after the start of the next segment (its label would
overlap data the next segment evaluates on), and the first ``embargo`` bars of each symbol after
each boundary are dropped as well (serially correlated features right after a boundary).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SEGMENTS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    val_frac: float = 0.15
    test_frac: float = 0.15
    embargo: int = 5  # bars dropped after each boundary, on top of the purge

    def validate(self) -> None:
        for key in ("val_frac", "test_frac"):
            v = getattr(self, key)
            if not 0.0 < v < 0.5:
                raise ValueError(f"split.{key}: got {v}, expected a fraction in (0, 0.5)")
        if self.val_frac + self.test_frac >= 0.8:
            raise ValueError(
                f"split: val_frac + test_frac = {self.val_frac + self.test_frac}, expected < 0.8"
            )
        if self.embargo < 0:
            raise ValueError(f"split.embargo: got {self.embargo}, expected >= 0")


def boundaries(timestamps: np.ndarray, cfg: SplitConfig) -> tuple[np.datetime64, np.datetime64]:
    """(val_start, test_start): timestamps at the row quantiles 1 - val - test and 1 - test."""
    ts = np.sort(np.asarray(timestamps, dtype="datetime64[ns]"))
    n = len(ts)
    val_start = ts[int(np.floor(n * (1 - cfg.val_frac - cfg.test_frac)))]
    test_start = ts[int(np.floor(n * (1 - cfg.test_frac)))]
    if not ts[0] < val_start < test_start:
        raise ValueError(f"split: too few distinct timestamps ({len(np.unique(ts))}) to cut three segments")
    return val_start, test_start


def assign_segments(labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig) -> pd.DataFrame:
    """One row per labels row: ``symbol, timestamp, segment`` with segment in
    {train, val, test, purged}. ``labels`` comes from :func:`alphafactory.labels.make_labels`
    (sorted by symbol, timestamp, with ``end_h{h}`` columns)."""
    ts = labels["timestamp"].to_numpy("datetime64[ns]")
    val_start, test_start = boundaries(ts, cfg)
    seg = np.where(ts >= test_start, 2, np.where(ts >= val_start, 1, 0))
    # Label end of the longest horizon; rows without one (end of data) end "never" within the panel.
    end = labels[f"end_h{max(horizons)}"].to_numpy("datetime64[ns]")
    nat = np.isnat(end)
    purged = np.zeros(len(ts), dtype=bool)
    purged |= (seg == 0) & (nat | (end >= val_start))
    purged |= (seg == 1) & (nat | (end >= test_start))
    if cfg.embargo:
        codes = pd.factorize(labels["symbol"])[0]
        for start in (val_start, test_start):
            after = ts >= start
            # position of each row among its symbol's rows at or after the boundary
            rank = pd.Series(after).groupby(codes).cumsum().to_numpy()
            purged |= after & (rank <= cfg.embargo)
    names = np.array(SEGMENTS + ("purged",))
    out = np.where(purged, 3, seg)
    return pd.DataFrame(
        {"symbol": labels["symbol"].to_numpy(), "timestamp": ts, "segment": names[out]}
    )
