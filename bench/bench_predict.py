"""Benchmark forecasting with a trained bundle: cold ``load_bundle`` and warm ``predict``.

    python bench/bench_predict.py                    # trains a small bundle first (see below)
    python bench/bench_predict.py --bundle bundle    # an existing bundle, e.g. after `make run`

Without ``--bundle``, the bundle comes from a temporary copy of this project on synthetic data
(20 symbols x 1,500 daily bars, the test suite's small model sizes, the default
``train.lookback`` of 32) through the real pipeline: ``dvc repro bundle``, a few minutes on 2
cores. The forecasts are for 500 synthetic symbols x ``--bars`` raw daily bars (a DataFrame, so
validation is timed too; the models are pooled, so symbols unseen in training are fine).

``load`` runs in fresh processes, from the first import to the loaded bundle (the interpreter's
own start and exit are shown apart); ``predict`` is warm, in-process. Every time is the median,
min and max of ``--repeats`` runs; the machine's load average is printed with them (other work
on a 2-core machine slows everything down). Prints markdown tables; exits with status 1 if a
median misses its target (load <= 2 s, predict <= 1 s for 500 symbols).
"""
from __future__ import annotations

import argparse
import importlib
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


def cold_load(bundle: str, split: bool) -> dict[str, float]:
    """In this (fresh) process: seconds from the first import to a loaded bundle. With ``split``,
    the same work in three timed steps: importing alphafactory.serving.inference, importing the model
    modules and libraries the bundle's models need, then verifying and reading the files."""
    t0 = time.perf_counter()
    from alphafactory.serving import inference

    t1 = time.perf_counter()
    if split:
        from alphafactory import models
        from alphafactory.io import Directory

        config = json.loads((Path(bundle) / "bundle.json").read_text())
        specs = [(m["name"], m["path"]) for m in config["models"]]
        inference.import_boosters_without_sklearn(Directory(bundle), specs)  # as load_bundle does
        for m in config["models"]:
            if m["family"] == "neural":  # a bundle runs them through their ONNX export
                importlib.import_module("alphafactory.serving.onnx_runtime")
                importlib.import_module("onnxruntime")
            else:
                models.get(m["name"]).cls  # noqa: B018  (imports the model's module)
    t2 = time.perf_counter()
    inference.load_bundle(bundle)
    t3 = time.perf_counter()
    return {"total": t3 - t0, "inference": t1 - t0, "libraries": t2 - t1, "files": t3 - t2,
            "torch": "torch" in sys.modules}


def stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def warm_predict(bundle_path: str, n_symbols: int, n_bars: int, repeats: int) -> dict:
    """Warm predict times (default history) split into its steps, and the speed/fidelity
    trade-off of shorter histories against the full ``n_bars`` history."""
    import numpy as np

    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
    from alphafactory.data.validate import validate_bars
    from alphafactory.dataset import Windows
    from alphafactory.features import compute_features
    from alphafactory.serving.inference import KEYS, history_bars, load_bundle, predict, trim_history

    logging.getLogger("alphafactory.serving.inference").setLevel(logging.ERROR)  # unseen-symbol warnings
    bundle = load_bundle(bundle_path)
    bars, _ = make_synthetic(SyntheticConfig(symbols=n_symbols, bars=n_bars, seed=11))
    out = predict(bars, bundle)  # warm-up: first calls allocate thread pools
    assert out["symbol"].nunique() == n_symbols

    def timed(history: int) -> tuple[list[float], object]:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = predict(bars, bundle, history=history)
            times.append(time.perf_counter() - t0)
        return times, res

    keep = history_bars(bundle)
    steps: dict[str, list[float]] = {"validate": [], "features": [], "models": []}
    for _ in range(repeats):  # predict's steps one by one (the rest: checks, vol, blender)
        t0 = time.perf_counter()
        valid = validate_bars(bars, "bench")
        t1 = time.perf_counter()
        trimmed = trim_history(valid, keep)
        feats = compute_features(trimmed, bundle.features, freq=bundle.frequency, tail=bundle.window)
        t2 = time.perf_counter()
        X = np.ascontiguousarray(feats[list(bundle.feature_columns)].to_numpy(np.float32))
        rows = np.arange(bundle.window - 1, len(X), bundle.window)
        for m in bundle.models.values():
            m.predict(Windows(X, rows, m.lookback) if m.input_kind == "sequence" else X[rows])
        t3 = time.perf_counter()
        for k, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            steps[k].append(dt)
    runs = {keep: timed(keep)}
    full_t, full = timed(n_bars)
    comps = [c for c in full.columns if c not in (*KEYS, "yhat_std", "prob_up")]
    tradeoff = []
    for h in sorted({bundle.min_bars, (bundle.min_bars + keep) // 2, keep}):
        times, res = runs[h] if h in runs else timed(h)
        diff = np.abs(res[comps].to_numpy() - full[comps].to_numpy())
        tradeoff.append({"history": h, "seconds": statistics.median(times), "yhat": float(diff[:, 0].max()),
                         "component": float(diff.max()),
                         "prob_up": float(np.abs(res["prob_up"] - full["prob_up"]).max())})
    tradeoff.append({"history": n_bars, "seconds": statistics.median(full_t), "yhat": 0.0,
                     "component": 0.0, "prob_up": 0.0})
    return {"predict": runs[keep][0], **steps, "history": keep, "rows": len(bars),
            "trimmed_rows": len(trimmed), "feature_rows": len(feats), "out_rows": len(out),
            "tradeoff": tradeoff, "n_models": len(bundle.models)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="an existing bundle directory (default: train a small one)")
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--bars", type=int, default=600, help="raw bars per symbol given to predict")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker-load", help=argparse.SUPPRESS)
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_load:
        print(json.dumps(cold_load(args.worker_load, args.split)))
        return 0

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        if args.bundle:
            bundle = str(Path(args.bundle).resolve())
        else:
            t0 = time.perf_counter()
            bundle = str(train_bundle(Path(tmp)))
            print(f"trained the bundle in {time.perf_counter() - t0:.0f} s (dvc repro bundle, synthetic "
                  f"20 x 1500 bars)", file=sys.stderr)
        loads, splits, walls = [], [], []
        for _ in range(args.repeats):
            for split in (False, True):
                t0 = time.perf_counter()
                cmd = [sys.executable, __file__, "--worker-load", bundle, *(["--split"] * split)]
                res = subprocess.run(cmd, check=True, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                (splits if split else loads).append(json.loads(res.stdout.strip().splitlines()[-1]))
                if not split:
                    walls.append(wall)
        w = warm_predict(bundle, args.symbols, args.bars, args.repeats)
    load_after = os.getloadavg()

    load_s = stats([r["total"] for r in loads])
    pred_s = stats(w["predict"])
    ok_load, ok_pred = load_s[0] <= TARGET_LOAD_S, pred_s[0] <= TARGET_PREDICT_S

    def row(label: str, s: tuple[float, float, float], target: float | None = None,
            ok: bool | None = None) -> None:
        t = f"{target:.0f}" if target is not None else ""
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"| {label} | {s[0]:.2f} | {s[1]:.2f} | {s[2]:.2f} | {t} | {mark} |")

    print(f"\n### predict: {args.symbols} symbols x {args.bars} raw daily bars; {args.repeats} runs each; "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| step | median s | min s | max s | target s | |")
    print("|---|---:|---:|---:|---:|---|")
    row("load_bundle, cold (fresh process, from the first import)", load_s, TARGET_LOAD_S, ok_load)
    row("- importing alphafactory.serving.inference (pandas, numpy, ...)",
        stats([r["inference"] for r in splits]))
    row("- importing the bundle's model modules and libraries", stats([r["libraries"] for r in splits]))
    row("- verifying the hashes and reading the files", stats([r["files"] for r in splits]))
    row("(the process's wall time: + interpreter start and exit)", stats(walls))
    torch = sum(r["torch"] for r in loads + splits)
    print(f"| (PyTorch imported: {'in ' + str(torch) + ' runs' if torch else 'never'}; neural models run "
          f"on ONNX Runtime) | | | | | |")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):  # then no .pyc of this package is ever written
        print("| (PYTHONDONTWRITEBYTECODE is set: alphafactory's modules are compiled at every start) "
              "| | | | | |")
    row(f"predict, warm ({w['out_rows']} forecast rows)", pred_s, TARGET_PREDICT_S, ok_pred)
    row(f"- validating {w['rows']:,} raw bars", stats(w["validate"]))
    row(f"- features of {w['feature_rows']:,} rows (last bars of {w['trimmed_rows']:,}; "
        f"{w['history']} bars/symbol kept)", stats(w["features"]))
    row(f"- {w['n_models']} base models", stats(w["models"]))
    print(f"\n### history kept per symbol: speed vs the full {args.bars}-bar history "
          f"(max abs difference over {w['out_rows']} forecast rows)\n")
    print("| bars/symbol | predict s (median) | yhat | worst component | prob_up |")
    print("|---:|---:|---:|---:|---:|")
    for t in w["tradeoff"]:
        mark = " (default)" if t["history"] == w["history"] else ""
        print(f"| {t['history']}{mark} | {t['seconds']:.2f} | {t['yhat']:.1e} | {t['component']:.1e} | "
              f"{t['prob_up']:.1e} |")
    return 0 if ok_load and ok_pred else 1


if __name__ == "__main__":
    sys.exit(main())
