"""Bar frequency inference: the one place that decides what a "bar" is in calendar time."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252


@dataclass(frozen=True)
class FrequencyInfo:
    """bar_seconds: median spacing of consecutive bars of one symbol (session gaps excluded
    by taking the median); bars_per_day: median bars per calendar date (1 for daily or slower);
    periods_per_year: bars in a trading year, used to annualise returns and Sharpe ratios."""

    label: str
    bar_seconds: float
    intraday: bool
    bars_per_day: float
    periods_per_year: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FrequencyInfo:
        return cls(**{k: d[k] for k in ("label", "bar_seconds", "intraday", "bars_per_day", "periods_per_year")})


def _label(seconds: float) -> str:
    for unit, size in (("W", 7 * 86400), ("D", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * 0.9:
            n = max(1, round(seconds / size))
            return f"{n}{unit}"
    return f"{max(1, round(seconds))}s"


def infer_frequency(bars: pd.DataFrame) -> FrequencyInfo:
    """Infer the bar frequency of a long panel with ``symbol`` and ``timestamp`` columns,
    sorted by (symbol, timestamp)."""
    ts = bars["timestamp"].to_numpy("datetime64[ns]").astype(np.int64)
    sym = bars["symbol"].to_numpy()
    same = sym[1:] == sym[:-1]
    diffs = np.diff(ts)[same] / 1e9
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        raise ValueError("cannot infer the bar frequency: no symbol has two or more bars")
    bar_seconds = float(np.median(diffs))
    intraday = bar_seconds < 0.9 * 86400
    if intraday:
        days = pd.DataFrame({"s": sym, "d": bars["timestamp"].dt.normalize().to_numpy()})
        bars_per_day = float(days.groupby(["s", "d"], sort=False).size().median())
        periods = TRADING_DAYS_PER_YEAR * bars_per_day
    else:
        bars_per_day = 1.0
        # Daily bars on trading days only have a 1-day median spacing; weekly bars ~7 days.
        days_per_bar = max(1.0, round(bar_seconds / 86400))
        periods = TRADING_DAYS_PER_YEAR if days_per_bar < 3 else 365.25 / days_per_bar
    return FrequencyInfo(_label(bar_seconds), bar_seconds, intraday, bars_per_day, float(periods))
