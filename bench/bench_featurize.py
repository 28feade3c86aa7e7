"""Benchmark ``compute_features`` on a random daily panel: throughput, CPU time and peak memory.

    python bench/bench_featurize.py --symbols 500 --bars 2520 --repeats 3

Each repeat runs in a fresh subprocess so that its peak RSS (``ru_maxrss``: the whole process,
including the input panel and the imported libraries) is measured on its own. Prints a markdown
table with the median wall-clock throughput (rows per second, the 237 default features, 2
threads) and the median CPU seconds of the call (both threads; unlike the wall time it hardly
moves when other jobs share the cores, so compare it across runs on a busy machine); exits with
status 1 if the median throughput or the peak memory misses the target.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd

TARGET_ROWS_PER_S = 300_000  # issue 19: 1.26M rows in 4.2 s on 2 cores
TARGET_GIB = 6.0


def random_panel(n_symbols: int, n_bars: int, seed: int = 0) -> pd.DataFrame:
    """(n_symbols * n_bars) rows of random-walk daily OHLCV bars, sorted by (symbol, timestamp)."""
    rng = np.random.default_rng(seed)
    shape = (n_symbols, n_bars)
    close = rng.uniform(5, 500, (n_symbols, 1)) * np.exp(np.cumsum(rng.normal(0, 0.015, shape), axis=1))
    open_ = close * np.exp(rng.normal(0, 0.004, shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, shape)))
    dates = pd.bdate_range("2010-01-04", periods=n_bars)
    return pd.DataFrame({
        "symbol": np.repeat([f"SYM{i:04d}" for i in range(n_symbols)], n_bars),
        "timestamp": np.tile(dates.values, n_symbols),
        "open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
        "volume": rng.lognormal(13, 0.6, shape).ravel(),
    })


def _peak_gib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def worker(n_symbols: int, n_bars: int) -> dict:
    """One timed run in this process; returns rows, features, seconds and peak RSS."""
    from alphafactory.features import FeatureConfig, compute_features

    bars = random_panel(n_symbols, n_bars)
    before = _peak_gib()
    t0, c0 = time.perf_counter(), time.process_time()
    feats = compute_features(bars, FeatureConfig())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"rows": len(bars), "features": feats.shape[1] - 2, "seconds": seconds, "cpu": cpu,
            "peak_gib": _peak_gib(), "input_peak_gib": before}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--bars", type=int, default=2520)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.symbols, args.bars)))
        return 0

    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--worker",
               "--symbols", str(args.symbols), "--bars", str(args.bars)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    secs = [r["seconds"] for r in runs]
    rows = runs[0]["rows"]
    rate = rows / statistics.median(secs)
    peak = max(r["peak_gib"] for r in runs)
    ok = rate >= TARGET_ROWS_PER_S and peak <= TARGET_GIB
    load = os.getloadavg()[0]
    print("| rows | features | rows/s (median) | median s | min s | max s | CPU s (median) "
          "| peak memory GiB | input-only GiB | load avg | target | met |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    print(f"| {rows:,} | {runs[0]['features']} | {rate:,.0f} | {statistics.median(secs):.2f} "
          f"| {min(secs):.2f} | {max(secs):.2f} | {statistics.median(r['cpu'] for r in runs):.2f} "
          f"| {peak:.2f} | {max(r['input_peak_gib'] for r in runs):.2f} | {load:.1f} "
          f"| >= {TARGET_ROWS_PER_S:,} rows/s, <= {TARGET_GIB:.0f} GiB | {'yes' if ok else 'NO'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
