"""``data.layout.symbol_starts``: the symbol boundaries that feature and label batches, forecast
batches and the serving history checks cut panels at."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory.data.layout import symbol_starts


@pytest.mark.parametrize("sizes", [[1], [3], [1, 1, 1], [5, 1, 7, 2], [1, 40, 1]])
def test_first_row_of_each_symbol_for_names_and_codes(sizes):
    names = np.array([f"S{k:02d}" for k, n in enumerate(sizes) for _ in range(n)], dtype=object)
    expected = np.r_[0, np.cumsum(sizes)[:-1]]
    codes = pd.factorize(names, sort=False)[0]
    for keys in (names, codes):
        got = symbol_starts(keys)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)
    # the unique values' first positions, the definition for a sorted panel
    np.testing.assert_array_equal(symbol_starts(names), np.unique(names, return_index=True)[1])


def test_no_rows_has_no_symbols():
    assert symbol_starts(np.array([], dtype=object)).shape == (0,)
    assert symbol_starts(np.zeros(0, np.int64)).dtype == np.int64
