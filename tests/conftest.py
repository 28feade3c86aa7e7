"""Shared fixtures: tiny synthetic panels built in-process (no network, no files)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def random_bars(n_symbols: int = 3, n_bars: int = 300, seed: int = 0, start: str = "2020-01-01") -> pd.DataFrame:
    """Random-walk OHLCV with valid bar geometry, sorted by (symbol, timestamp)."""
    rng = np.random.default_rng(seed)
    frames = []
    dates = pd.bdate_range(start, periods=n_bars)
    for s in range(n_symbols):
        r = rng.standard_t(5, n_bars) * 0.01
        close = 50 * np.exp(np.cumsum(r))
        open_ = close * np.exp(rng.normal(0, 0.003, n_bars))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.005, n_bars)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.005, n_bars)))
        frames.append(pd.DataFrame({
            "symbol": f"S{s:02d}", "timestamp": dates, "open": open_, "high": high, "low": low,
            "close": close, "volume": rng.lognormal(12, 0.3, n_bars),
        }))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def bars() -> pd.DataFrame:
    return random_bars()


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A copy of this project with a small config after one full `dvc repro`, committed.
    Returns (repo path, the repro's output)."""
    from pipeline_utils import SMALL, make_project, sh

    repo = make_project(tmp_path_factory.mktemp("proj"), SMALL)
    out = sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "first run")
    return repo, out
