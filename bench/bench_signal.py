"""Planted-signal benchmark: how much of the oracle's IC each model recovers, old vs new defaults.

    python bench/bench_signal.py [--signal mixed] [--symbols 60] [--bars 2500] [--strength 0.05]
        [--models ridge,lightgbm,xgboost,catboost] [--settings old,new,cs_zscore] [--groups returns,volume,...]

Panel: ``make_synthetic`` (daily, ``--symbols`` x ``--bars``, seed ``--seed``, planted signal
``--signal`` of population IC ``--strength``; see docs/data.md), the pipeline's features
(``features`` of params.yaml, or ``--groups``), labels and segments (``label``/``split`` of
params.yaml), ``--horizons`` (default 1). Each model is fitted with ``fit_models`` exactly as the
train stage does (its params.yaml block, early stopping on val), once per setting:

* ``old``: the boosting blocks and ``label.normalize`` of ``--old-params`` (default: the values
  before issue 17, written below in ``OLD``);
* ``new``: those of ``params.yaml`` (this checkout's defaults);
* ``cs_zscore``: params.yaml with ``label.normalize: cs_zscore``, the target for wide universes;
* any ``name:key=value;key=value`` given with ``--setting`` (e.g.
  ``--setting 'lr1:lightgbm.learning_rate=0.1;label.normalize=cs_rank'``), on top of params.yaml.

Scored on the test rows every model and the oracle forecast (``evaluate.score``, as the evaluate
stage; the val IC and cs IC too, the only figures a choice of defaults may look at): pooled IC against the raw forward return and its date-block bootstrap SE, mean
cross-sectional IC and its Newey-West SE, each as a share of the oracle's on the same rows, and
the boosters' ``best_iteration`` (trees kept by early stopping, per horizon). Prints a markdown
table. About 3 minutes at 60 x 2500 on 2 busy cores for the four default models and two settings;
``--symbols 30 --bars 1500`` for a quick look.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # see bench_boosting.py: spinning threads on a busy box

ROOT = Path(__file__).resolve().parents[1]

# The boosting blocks and label target before issue 17 (params.yaml at 20f7a1f), so that "old"
# stays reproducible after params.yaml changes.
OLD: dict[str, Any] = {
    "label.normalize": "none",
    "lightgbm": {"n_estimators": 1000, "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 100,
                 "feature_fraction": 0.7, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 10.0,
                 "early_stopping_rounds": 50},
    "xgboost": {"n_estimators": 1000, "learning_rate": 0.03, "max_depth": 4, "min_child_weight": 50.0,
                "subsample": 0.8, "colsample_bytree": 0.7, "reg_lambda": 10.0, "early_stopping_rounds": 50},
    "catboost": {"iterations": 1000, "learning_rate": 0.03, "depth": 4, "l2_leaf_reg": 10.0,
                 "early_stopping_rounds": 50},
}


def _value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def parse_setting(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value;key=value`` -> (name, {key: value}); keys are ``<model>.<param>`` or
    ``label.normalize``."""
    if ":" not in spec:
        sys.exit(f"--setting {spec!r}: expected name:key=value;key=value")
    name, body = spec.split(":", 1)
    over = {}
    for item in filter(None, (s.strip() for s in body.split(";"))):
        if "=" not in item or "." not in item.split("=", 1)[0]:
            sys.exit(f"--setting {spec!r}: {item!r} is not <model>.<param>=value or label.normalize=value")
        k, v = item.split("=", 1)
        over[k.strip()] = _value(v.strip())
    return name, over


def apply(params: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with ``over`` applied (``label.normalize`` or ``<model>.<param>`` keys, or a
    whole ``<model>`` block as a mapping)."""
    from alphafactory import models

    out = copy.deepcopy(params)
    for key, value in over.items():
        if key == "label.normalize":
            out.setdefault("label", {})["normalize"] = value
            continue
        name, _, param = key.partition(".")
        if name not in models.REGISTRY:
            sys.exit(f"setting key {key!r}: {name!r} is not a registered model")
        block = out.setdefault(models.get(name).family, {}).setdefault(name, {})
        if param:
            block[param] = value
        else:
            block.update(value)
    return out


def build(args: argparse.Namespace, params: dict[str, Any]):
    """(bars, oracle, features with the warm-up dropped, frequency) of the benchmark panel."""
    from alphafactory.data.frequency import infer_frequency
    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic, planted_ic
    from alphafactory.dataset import drop_warmup
    from alphafactory.evaluation.audit import Settings
    from alphafactory.features import compute_features, warmup_bars

    st = Settings.from_params(params, args.horizons)
    fcfg = st.features
    if args.groups:
        from dataclasses import replace
        fcfg = replace(fcfg, groups=tuple(args.groups))
    syn = SyntheticConfig(symbols=args.symbols, bars=args.bars, seed=args.seed,
                          signal_strength=args.strength, signal=args.signal)
    bars, oracle = make_synthetic(syn, args.horizons)
    freq = infer_frequency(bars)
    feats = drop_warmup(compute_features(bars, fcfg, freq=freq), warmup_bars(fcfg, freq))
    return bars, oracle, feats, planted_ic(syn)


def run_setting(params: dict[str, Any], args: argparse.Namespace, bars, oracle, feats) -> list[dict[str, Any]]:
    """Fit ``args.models`` under ``params`` and score them on the test rows (one dict per model
    and horizon, oracle included)."""
    import numpy as np
    import pandas as pd

    from alphafactory.dataset import assemble
    from alphafactory.evaluation.audit import Settings, with_oracle
    from alphafactory.evaluation.evaluate import EvaluateConfig, score, scored_rows
    from alphafactory.labels import make_labels
    from alphafactory.split import assign_segments
    from alphafactory.train import fit_models

    st = Settings.from_params(params, args.horizons).with_threads(args.threads)
    labels = make_labels(bars, st.label)
    segments = assign_segments(labels, st.label.horizons, st.split)
    ds = assemble(feats, labels, segments, st.label.horizons)
    preds, iters, secs = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-signal-") as tmp:
        for name in args.models:
            t0 = time.perf_counter()
            (res,) = fit_models(ds, (name,), st.blocks, Path(tmp) / name, seed=st.seed)
            secs[name] = time.perf_counter() - t0
            p = res.predictions
            preds.append(p[p["segment"].isin(["val", "test"])][["symbol", "timestamp", "segment", "model",
                                                                 "horizon", "yhat"]])
            est = getattr(res.model, "estimators_", None)
            if est and hasattr(res.model, "_best_iteration"):
                iters[name] = [res.model._best_iteration(e) for e in est]
    both = pd.concat(preds, ignore_index=True)
    test = with_oracle(both[both["segment"] == "test"].drop(columns="segment"), oracle)
    val = with_oracle(both[both["segment"] == "val"].drop(columns="segment"), oracle)
    rows = []
    for hi, h in enumerate(st.label.horizons):
        table = scored_rows(test, labels, h)
        figs = {m: score(table, m, h, 252.0, EvaluateConfig()) for m in ["oracle", *args.models]}
        vtable = scored_rows(val, labels, h)  # what a choice of defaults may look at (test may not)
        vfigs = {m: score(vtable, m, h, 252.0, EvaluateConfig()) for m in ["oracle", *args.models]}
        o = figs["oracle"]
        for m, f in figs.items():
            it = iters.get(m)
            rows.append({
                "val_ic": vfigs[m]["ic"], "val_cs_ic": vfigs[m].get("cs_ic_mean", np.nan),
                "model": m, "h": h, "ic": f["ic"], "ic_se": f["ic_se"], "cs_ic": f.get("cs_ic_mean", np.nan),
                "cs_ic_se": f.get("cs_ic_se", np.nan), "share": f["ic"] / o["ic"],
                "cs_share": f.get("cs_ic_mean", np.nan) / o.get("cs_ic_mean", np.nan),
                "best_iter": (it[hi] if it and len(it) == len(st.label.horizons) else it[0] if it else None),
                "seconds": secs.get(m, np.nan), "n": f["n"],
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signal", default="mixed")
    ap.add_argument("--symbols", type=int, default=60)
    ap.add_argument("--bars", type=int, default=2500)
    ap.add_argument("--strength", type=float, default=0.05)  # data.synthetic.signal_strength default
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--horizons", default="1", help="comma-separated label horizons (default 1)")
    ap.add_argument("--models", default="ridge,lightgbm,xgboost,catboost")
    ap.add_argument("--settings", default="old,new,cs_zscore",
                    help="which of old,new,cs_zscore to run (empty: none)")
    ap.add_argument("--setting", action="append", default=[], help="name:key=value;key=value (repeatable)")
    ap.add_argument("--groups", default="", help="feature groups (default: features.groups of params.yaml)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    args.horizons = tuple(int(h) for h in args.horizons.split(",") if h)
    args.models = tuple(m for m in args.models.split(",") if m)
    args.groups = [g for g in args.groups.split(",") if g]
    sys.path.insert(0, str(ROOT / "src"))
    from alphafactory.config import load_params

    params = load_params(args.params)
    settings: list[tuple[str, dict[str, Any]]] = []
    for name in filter(None, args.settings.split(",")):
        if name == "old":
            settings.append(("old", apply(params, OLD)))
        elif name == "new":
            settings.append(("new", params))
        elif name == "cs_zscore":
            settings.append(("cs_zscore", apply(params, {"label.normalize": "cs_zscore"})))
        else:
            sys.exit(f"--settings: got {name!r}, expected old, new or cs_zscore (use --setting for others)")
    settings += [(n, apply(params, o)) for n, o in map(parse_setting, args.setting)]
    t0 = time.perf_counter()
    bars, oracle, feats, planted = build(args, params)
    print(f"panel: {args.signal}, {args.symbols} symbols x {args.bars} daily bars, planted IC {planted:.4f}, "
          f"{feats.shape[1] - 2} features, built in {time.perf_counter() - t0:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| setting | target | model | h | val IC | val cs IC | test IC ± SE | test cs IC ± SE "
          "| oracle share (IC) | (cs IC) | best_iteration | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, p in settings:
        for r in run_setting(p, args, bars, oracle, feats):
            it = "" if r["best_iter"] is None else str(r["best_iter"])
            fit = "" if r["model"] == "oracle" else f"{r['seconds']:.0f}"
            print(f"| {name} | {p['label']['normalize']} | {r['model']} | {r['h']} | {r['val_ic']:+.4f} "
                  f"| {r['val_cs_ic']:+.4f} | {r['ic']:+.4f} ± {r['ic_se']:.4f} "
                  f"| {r['cs_ic']:+.4f} ± {r['cs_ic_se']:.4f} | {r['share']:.2f} | {r['cs_share']:.2f} | {it} | {fit} |",
                  flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
