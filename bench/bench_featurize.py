"""Benchmark ``compute_features`` on a random daily panel: throughput, CPU time and peak memory.

    python bench/bench_featurize.py --symbols 500 --bars 2520 --repeats 3

    python bench/bench_featurize.py --baseline /tmp/old/src   # paired with another version

Each repeat runs in a fresh subprocess so that its peak RSS (``ru_maxrss``: the whole process,
including the input panel and the imported libraries) is measured on its own. Prints a markdown
table with the median wall-clock throughput (rows per second, the 237 default features,
``--threads`` 2) and the median CPU seconds of the call (both threads, user and system; unlike
the wall time they move little when other jobs share the cores, so compare them across runs on
a busy machine), with the load average before and after. ``--baseline SRC`` runs another
version's package (``git archive <rev> src | tar x -C /tmp/old``) in turns with this one, so
both see the same load. Exits with status 1 if this code's median throughput or peak memory
misses the target.
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


def worker(n_symbols: int, n_bars: int, n_jobs: int) -> dict:
    """One timed run in this process; returns rows, features, seconds, CPU seconds (user and
    system: the system part is mostly first touches of fresh pages) and peak RSS."""
    from alphafactory.features import FeatureConfig, compute_features

    bars = random_panel(n_symbols, n_bars)
    before = _peak_gib()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    feats = compute_features(bars, FeatureConfig(), n_jobs=n_jobs)
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"rows": len(bars), "features": feats.shape[1] - 2, "seconds": seconds, "cpu": user + system,
            "user": user, "sys": system, "peak_gib": _peak_gib(), "input_peak_gib": before}


def _run(src: str | None, args: argparse.Namespace) -> dict:
    """One worker in a fresh process, importing alphafactory from ``src`` (None: as installed
    or on the caller's PYTHONPATH)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, __file__, "--worker", "--symbols", str(args.symbols), "--bars", str(args.bars),
           "--threads", str(args.threads)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--bars", type=int, default=2520)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="compute_features(n_jobs=...)")
    ap.add_argument("--baseline", metavar="SRC", default=None,
                    help="a directory holding another alphafactory package (e.g. `git archive <rev> src` "
                         "unpacked): its runs alternate with this code's and get their own row")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.symbols, args.bars, args.threads)))
        return 0
    if args.baseline is not None and not os.path.isdir(os.path.join(args.baseline, "alphafactory")):
        print(f"--baseline: {args.baseline!r} holds no alphafactory package directory; expected e.g. "
              "a checkout's src/", file=sys.stderr)
        return 2

    codes = {"this code": None} if args.baseline is None else {"baseline": args.baseline, "this code": None}
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    load0 = os.getloadavg()[0]
    for _ in range(args.repeats):  # interleaved, so both codes see the same load
        for name, src in codes.items():
            runs[name].append(_run(src, args))
    load1 = os.getloadavg()[0]
    med = statistics.median
    print(f"{args.threads} thread(s); load average (1 min) {load0:.1f} before, {load1:.1f} after; "
          f"median of {args.repeats} fresh processes each")
    print()
    print("| code | rows | features | rows/s wall (median) | median s | min s | max s | CPU s (median) "
          "| user s | sys s | CPU rows/s | peak memory GiB | input-only GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        rows = rs[0]["rows"]
        print(f"| {name} | {rows:,} | {rs[0]['features']} | {rows / med(secs):,.0f} | {med(secs):.2f} "
              f"| {min(secs):.2f} | {max(secs):.2f} | {med(r['cpu'] for r in rs):.2f} "
              f"| {med(r['user'] for r in rs):.2f} | {med(r['sys'] for r in rs):.2f} "
              f"| {rows / med(r['cpu'] for r in rs):,.0f} | {max(r['peak_gib'] for r in rs):.2f} "
              f"| {max(r['input_peak_gib'] for r in rs):.2f} |")
    mine = runs["this code"]
    rate = mine[0]["rows"] / med(r["seconds"] for r in mine)
    peak = max(r["peak_gib"] for r in mine)
    ok = rate >= TARGET_ROWS_PER_S and peak <= TARGET_GIB
    print()
    print(f"target (this code): >= {TARGET_ROWS_PER_S:,} rows/s wall, <= {TARGET_GIB:.0f} GiB: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
