"""Shared fixtures: tiny synthetic panels built in-process (no network, no files), the session's
small pipeline run, and a throwaway PostgreSQL server."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

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


def small_dataset(bars: pd.DataFrame, horizons: tuple[int, ...]):
    """``(freq, features, label, labels, ds)``: the pipeline's featurize (windows 5 and 10, one
    5-bar multi-timeframe scale), label and split stages on ``bars``, as a ``Dataset`` ``ds``."""
    from alphafactory.data.frequency import infer_frequency
    from alphafactory.dataset import assemble, drop_warmup
    from alphafactory.features import FeatureConfig, compute_features, warmup_bars
    from alphafactory.labels import LabelConfig, make_labels
    from alphafactory.split import SplitConfig, assign_segments

    freq = infer_frequency(bars)
    features = FeatureConfig(windows=(5, 10), mtf_scales=(5,))
    label = LabelConfig(horizons=horizons)
    feats = drop_warmup(compute_features(bars, features, freq=freq), warmup_bars(features, freq))
    labels = make_labels(bars, label)
    ds = assemble(feats, labels, assign_segments(labels, horizons, SplitConfig()), horizons)
    return freq, features, label, labels, ds


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


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    path = found[-1] if found else shutil.which(name)
    assert path, f"{name} not found: install the Debian 'postgresql' package (.ci/run does)"
    return path


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a free loopback port (initdb + pg_ctl), stopped after."""
    base = Path(tempfile.mkdtemp(prefix="af-pg-"))  # under /tmp: reachable by the postgres user
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    run = lambda *a: subprocess.run([*as_user, *a], check=True, capture_output=True, text=True)  # noqa: E731
    run(_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    run(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


PIPELINE_FIXTURES = {"project"}  # fixtures that run the real `dvc repro`


def pytest_collection_modifyitems(config, items):
    """Every test that uses a pipeline fixture is `slow`, marked or not, so that
    `make test-fast` (`-m "not slow"`) never starts a `dvc repro`."""
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
