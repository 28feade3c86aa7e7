"""Benchmark forecasting with a trained bundle: cold ``load_bundle`` and warm ``predict``.

    python bench/bench_predict.py                    # trains a small bundle first (see below)
    python bench/bench_predict.py --bundle bundle    # an existing bundle, e.g. after `make run`

Without ``--bundle``, the bundle comes from a temporary copy of this project on synthetic data
(20 symbols x 1,500 daily bars, the test suite's small model sizes, the default
``train.lookback`` of 32) through the real pipeline: ``dvc repro bundle``, a few minutes on 2
cores. The forecasts are for 500 synthetic symbols x ``--bars`` raw daily bars (a DataFrame, so
validation is timed too; the models are pooled, so symbols unseen in training are fine).

``load`` runs in fresh processes (imports of the model libraries included, then split out);
``predict`` is warm, in-process, the median of ``--repeats``. Prints a markdown table; exits with
status 1 if the median time misses a target (load <= 2 s, predict <= 1 s for 500 symbols).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As `make bench` does: idle OpenMP threads sleep instead of spinning (on a busy 2-core machine a
# spinning LightGBM/XGBoost pool is many times slower). Set before any library starts its pool.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
ROOT = Path(__file__).resolve().parents[1]
TARGET_LOAD_S = 2.0
TARGET_PREDICT_S = 1.0


def train_bundle(workdir: Path) -> Path:
    """`dvc repro bundle` in a temporary copy of the project on a small synthetic panel."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_utils import SMALL, make_project, merge, sh

    overrides = merge(SMALL, {"data": {"source": "synthetic", "start": None,
                                       "synthetic": {"symbols": 20, "bars": 1500}},
                              "train": {"lookback": 32}})
    repo = make_project(workdir, overrides)
    sh(repo, "dvc", "repro", "bundle")
    return repo / "bundle"


def cold_load(bundle: str) -> dict[str, float]:
    """In this (fresh) process: seconds to import the libraries, then to verify and load."""
    t0 = time.perf_counter()
    import alphafactory.inference as inference
    import alphafactory.models  # noqa: F401  (LightGBM, XGBoost, CatBoost, torch)

    t1 = time.perf_counter()
    inference.load_bundle(bundle)
    t2 = time.perf_counter()
    return {"imports": t1 - t0, "load": t2 - t1, "total": t2 - t0}


def warm_predict(bundle_path: str, n_symbols: int, n_bars: int, repeats: int) -> dict:
    """Median warm predict time (default history) with a validate/features split, and the
    speed/fidelity trade-off of shorter histories against the full ``n_bars`` history."""
    import numpy as np

    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
    from alphafactory.data.validate import validate_bars
    from alphafactory.features import compute_features
    from alphafactory.inference import KEYS, history_bars, load_bundle, predict, trim_history

    logging.getLogger("alphafactory.inference").setLevel(logging.ERROR)  # unseen-symbol warnings
    bundle = load_bundle(bundle_path)
    bars, _ = make_synthetic(SyntheticConfig(symbols=n_symbols, bars=n_bars, seed=11))
    out = predict(bars, bundle)  # warm-up: first calls allocate thread pools
    assert out["symbol"].nunique() == n_symbols
    med = statistics.median

    def timed(history: int) -> tuple[float, object]:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = predict(bars, bundle, history=history)
            times.append(time.perf_counter() - t0)
        return med(times), res

    keep = history_bars(bundle)
    t_val, t_feat = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        valid = validate_bars(bars, "bench")
        t_val.append(time.perf_counter() - t0)
        trimmed = trim_history(valid, keep)
        t0 = time.perf_counter()
        compute_features(trimmed, bundle.features, freq=bundle.frequency)
        t_feat.append(time.perf_counter() - t0)
    full_s, full = timed(n_bars)
    comps = [c for c in full.columns if c not in (*KEYS, "yhat_std", "prob_up")]
    tradeoff = []
    for h in sorted({bundle.min_bars, (bundle.min_bars + keep) // 2, keep}):
        secs, res = timed(h)
        diff = np.abs(res[comps].to_numpy() - full[comps].to_numpy())
        tradeoff.append({"history": h, "seconds": secs, "yhat": float(diff[:, 0].max()),
                         "component": float(diff.max()),
                         "prob_up": float(np.abs(res["prob_up"] - full["prob_up"]).max())})
    tradeoff.append({"history": n_bars, "seconds": full_s, "yhat": 0.0, "component": 0.0, "prob_up": 0.0})
    return {"predict": next(t["seconds"] for t in tradeoff if t["history"] == keep),
            "validate": med(t_val), "features": med(t_feat), "history": keep, "rows": len(bars),
            "trimmed_rows": len(trimmed), "out_rows": len(out), "tradeoff": tradeoff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="an existing bundle directory (default: train a small one)")
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--bars", type=int, default=600, help="raw bars per symbol given to predict")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker-load", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_load:
        print(json.dumps(cold_load(args.worker_load)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        if args.bundle:
            bundle = str(Path(args.bundle).resolve())
        else:
            t0 = time.perf_counter()
            bundle = str(train_bundle(Path(tmp)))
            print(f"trained the bundle in {time.perf_counter() - t0:.0f} s (dvc repro bundle, synthetic "
                  f"20 x 1500 bars)", file=sys.stderr)
        loads = []
        for _ in range(args.repeats):
            res = subprocess.run([sys.executable, __file__, "--worker-load", bundle],
                                 check=True, capture_output=True, text=True)
            loads.append(json.loads(res.stdout.strip().splitlines()[-1]))
        w = warm_predict(bundle, args.symbols, args.bars, args.repeats)

    med = lambda k: statistics.median(r[k] for r in loads)  # noqa: E731
    ok_load, ok_pred = med("total") <= TARGET_LOAD_S, w["predict"] <= TARGET_PREDICT_S
    print(f"\n### predict: {args.symbols} symbols x {args.bars} raw daily bars, median of {args.repeats}\n")
    print("| step | seconds | target | |")
    print("|---|---:|---:|---|")
    print(f"| load_bundle, cold (fresh process) | {med('total'):.2f} | {TARGET_LOAD_S:.0f} | "
          f"{'ok' if ok_load else 'MISSED'} |")
    print(f"| - of which importing the model libraries | {med('imports'):.2f} | | |")
    print(f"| - of which verifying hashes + loading | {med('load'):.2f} | | |")
    print(f"| predict, warm ({w['out_rows']} forecast rows) | {w['predict']:.2f} | {TARGET_PREDICT_S:.0f} | "
          f"{'ok' if ok_pred else 'MISSED'} |")
    print(f"| - of which validating {w['rows']:,} raw bars | {w['validate']:.2f} | | |")
    print(f"| - of which features on {w['trimmed_rows']:,} rows ({w['history']} bars/symbol) "
          f"| {w['features']:.2f} | | |")
    print(f"\n### history kept per symbol: speed vs the full {args.bars}-bar history "
          f"(max abs difference over {w['out_rows']} forecast rows)\n")
    print("| bars/symbol | predict s | yhat | worst component | prob_up |")
    print("|---:|---:|---:|---:|---:|")
    for t in w["tradeoff"]:
        mark = " (default)" if t["history"] == w["history"] else ""
        print(f"| {t['history']}{mark} | {t['seconds']:.2f} | {t['yhat']:.1e} | {t['component']:.1e} | "
              f"{t['prob_up']:.1e} |")
    return 0 if ok_load and ok_pred else 1


if __name__ == "__main__":
    sys.exit(main())
