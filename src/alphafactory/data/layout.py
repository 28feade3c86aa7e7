"""How a panel's rows are laid out: sorted by (symbol, timestamp), so each symbol's rows are
one contiguous run. The stages and serving cut panels at symbol boundaries (feature and label
batches, forecast batches, history checks); this is where those boundaries are found."""
from __future__ import annotations

import numpy as np


def symbol_starts(symbols: np.ndarray) -> np.ndarray:
    """The first row of each run of equal values in ``symbols`` (a panel's symbol column, or its
    ``pd.factorize`` codes, with each symbol's rows contiguous): (n_symbols,) int64, ascending,
    ``[0, ...]``; empty for no rows."""
    symbols = np.asarray(symbols)
    if len(symbols) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]]).astype(np.int64, copy=False)
