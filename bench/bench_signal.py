"""Planted-signal benchmark: how much of the oracle's IC each model and the ensemble recover, old vs new defaults.

    python bench/bench_signal.py [--signal cross_sectional,interaction,regime,drift,mixed] [--symbols 60]
        [--bars 2500] [--strength 0.05] [--models ridge,lightgbm,xgboost,catboost] [--blend ensemble]
        [--settings old,new,cs_zscore] [--setting name:key=value;...] [--groups returns,volume,...] [--quick]

Panels: ``make_synthetic`` (daily, ``--symbols`` x ``--bars``, seed ``--seed``, planted signal of
population IC ``--strength``), one per ``--signal`` kind (default: the five harder ones, see
docs/data.md); the pipeline's features (``features`` of params.yaml, or ``--groups``), labels and
segments (``label``/``split`` of params.yaml), ``--horizons`` (default 1). Each model is fitted with
``fit_models`` exactly as the train stage does (its params.yaml block, early stopping on val), and
the ``--blend`` methods (default ``ensemble``, the blend stage's stacking with its ``blend``
params) are fitted by the blend stage's ``Stacker`` on those members' val forecasts; once per
setting:

* ``old``: the boosting blocks and ``label.normalize`` of ``OLD`` below (the values before issue 17);
* ``new``: those of ``params.yaml`` (this checkout's defaults);
* ``cs_zscore``: params.yaml with ``label.normalize: cs_zscore``;
* any ``name:key=value;key=value`` given with ``--setting``, on top of params.yaml; keys are
  ``<model>.<param>``, ``label.<key>`` or ``features.<key>`` (e.g.
  ``--setting 'wide:label.normalize=cs_rank;lightgbm.early_stopping_metric=ic'``).

Scored on the test rows every model and the oracle forecast (``evaluate.score``, as the evaluate
stage; the val IC and cs IC too, the only figures a choice of defaults may look at; an
ensemble's val figures are in sample, its weights being fit there): pooled IC against the raw
forward return and its date-block bootstrap SE, mean cross-sectional IC and its Newey-West SE,
each as a share of the oracle's on the same rows, and the boosters' ``best_iteration`` (trees kept
by early stopping). Prints a markdown table. ``--quick``: a smoke test of the plumbing in seconds
(12 symbols x 700 bars, ridge + lightgbm, two feature groups, ``new`` only; figures meaningless).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # see bench_boosting.py: spinning threads on a busy box

ROOT = Path(__file__).resolve().parents[1]
HARDER = "cross_sectional,interaction,regime,drift,mixed"  # the harder panels (docs/data.md)

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
            sys.exit(f"--setting {spec!r}: {item!r} is not <model>.<param>=value, label.<key>=value or features.<key>=value")
        k, v = item.split("=", 1)
        over[k.strip()] = _value(v.strip())
    return name, over


SECTIONS = ("label", "features")  # the params sections a setting may change besides the model blocks


def apply(params: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with ``over`` applied (``label.<key>``, ``features.<key>`` or
    ``<model>.<param>`` keys, or a whole ``<model>`` block as a mapping)."""
    from alphafactory import models

    out = copy.deepcopy(params)
    for key, value in over.items():
        name, _, param = key.partition(".")
        if name in SECTIONS and param:
            out.setdefault(name, {})[param] = value
            continue
        if name not in models.REGISTRY:
            sys.exit(f"setting key {key!r}: {name!r} is not a registered model")
        block = out.setdefault(models.get(name).family, {}).setdefault(name, {})
        if param:
            block[param] = value
        else:
            block.update(value)
    return out


def panel(args: argparse.Namespace, signal: str):
    """(bars, oracle, planted IC) of the ``signal`` panel."""
    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic, planted_ic

    syn = SyntheticConfig(symbols=args.symbols, bars=args.bars, seed=args.seed,
                          signal_strength=args.strength, signal=signal)
    bars, oracle = make_synthetic(syn, args.horizons)
    return bars, oracle, planted_ic(syn)


def featurize(args: argparse.Namespace, params: dict[str, Any], bars):
    """The pipeline's features of ``bars`` under ``params`` (or ``--groups``), warm-up dropped."""
    from alphafactory.config import section
    from alphafactory.data.frequency import infer_frequency
    from alphafactory.dataset import drop_warmup
    from alphafactory.features import FeatureConfig, compute_features, warmup_bars

    fcfg = section(params, "features", FeatureConfig)
    if args.groups:
        fcfg = replace(fcfg, groups=tuple(args.groups))
    freq = infer_frequency(bars)
    return drop_warmup(compute_features(bars, fcfg, freq=freq), warmup_bars(fcfg, freq))


def run_setting(params: dict[str, Any], args: argparse.Namespace, bars, oracle, feats) -> list[dict[str, Any]]:
    """Fit ``args.models`` under ``params``, stack them as the blend stage does, and score them on
    the val and test rows (one dict per model and horizon, ensemble and oracle included)."""
    import numpy as np
    import pandas as pd

    from alphafactory.blend import Stacker
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
            preds.append(p[p["segment"].isin(["val", "test"])])
            est = getattr(res.model, "estimators_", None)
            if est and hasattr(res.model, "_best_iteration"):
                iters[name] = [res.model._best_iteration(e) for e in est]
    base = pd.concat(preds, ignore_index=True)
    blended: list[str] = []
    if len(args.models) > 1 and args.blend:
        # the blend stage's Stacker, its params.yaml config, on the members' val forecasts and the
        # training targets (labels' y_h, as the stage reads them); the members stay in the table
        t0 = time.perf_counter()
        cfg = replace(st.blend, methods=tuple(args.blend))
        stacker = Stacker(cfg, list(args.models), st.label.horizons, seed=st.seed).fit(base, labels)
        base = pd.concat([base, *(stacker.predict(base, s) for s in ("val", "test"))], ignore_index=True)
        secs.update({m: time.perf_counter() - t0 for m in args.blend})
        blended = list(args.blend)
    cols = ["symbol", "timestamp", "model", "horizon", "yhat"]
    test = with_oracle(base.loc[base["segment"] == "test", cols], oracle)
    val = with_oracle(base.loc[base["segment"] == "val", cols], oracle)
    names = ["oracle", *args.models, *blended]
    rows = []
    for hi, h in enumerate(st.label.horizons):
        table = scored_rows(test, labels, h)
        figs = {m: score(table, m, h, 252.0, EvaluateConfig()) for m in names}
        # what a choice of defaults may look at (test may not); an ensemble's val figures are in
        # sample (its weights were fit on val)
        vtable = scored_rows(val, labels, h)
        vfigs = {m: score(vtable, m, h, 252.0, EvaluateConfig()) for m in names}
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


def side_by_side(lines: list[str]) -> str:
    """The per-row table lines of a run (``| panel | setting | ... |``) as one markdown row per
    panel, model and horizon with the settings beside each other: test IC ± SE, cs IC ± SE and
    their oracle shares per setting, in the run's order of settings."""
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    order: list[str] = []
    for line in lines:
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) != 13 or c[0] in ("panel", "---") or c[0].startswith("-"):
            continue
        panel_, setting, _target, model, h = c[:5]
        if setting not in order:
            order.append(setting)
        cells.setdefault((panel_, model, h), {})[setting] = f"{c[7]} ({c[9]}) | {c[8]} ({c[10]})"
    head = "| panel | model | h | " + " | ".join(f"{s}: IC ± SE (share) | {s}: cs IC ± SE (share)" for s in order) + " |"
    rule = "|---|---|---|" + "---|---|" * len(order)
    body = [f"| {p} | {m} | {h} | " + " | ".join(v.get(s, " | ") for s in order) + " |"
            for (p, m, h), v in cells.items()]
    return "\n".join([head, rule, *body])


QUICK = {"signal": "mixed", "symbols": 12, "bars": 700, "models": "ridge,lightgbm", "settings": "new",
         "groups": "returns,volume"}  # --quick: the plumbing in seconds, not figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signal", default=HARDER, help=f"comma-separated panels, one each (default {HARDER})")
    ap.add_argument("--symbols", type=int, default=60)
    ap.add_argument("--bars", type=int, default=2500)
    ap.add_argument("--strength", type=float, default=0.05)  # data.synthetic.signal_strength default
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--horizons", default="1", help="comma-separated label horizons (default 1)")
    ap.add_argument("--models", default="ridge,lightgbm,xgboost,catboost")
    ap.add_argument("--blend", default="ensemble",
                    help="blend methods fitted on the models' val forecasts, as the blend stage (empty: none)")
    ap.add_argument("--settings", default="old,new",
                    help="which of old,new,cs_zscore to run (empty: none)")
    ap.add_argument("--setting", action="append", default=[], help="name:key=value;key=value (repeatable)")
    ap.add_argument("--groups", default="", help="feature groups (default: features.groups of params.yaml)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help=f"a smoke test: {QUICK} unless given")
    ap.add_argument("--from", dest="source", default="",
                    help="only print the side-by-side table of a saved run's output (this script's stdout)")
    args = ap.parse_args(argv)
    if args.source:
        print(side_by_side(Path(args.source).read_text().splitlines()))
        return 0
    if args.quick:  # the quick defaults, under any option given explicitly
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    args.signals = [s for s in args.signal.split(",") if s]
    args.horizons = tuple(int(h) for h in args.horizons.split(",") if h)
    args.models = tuple(m for m in args.models.split(",") if m)
    args.blend = [m for m in args.blend.split(",") if m]
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
    print(f"{args.symbols} symbols x {args.bars} daily bars, strength {args.strength}, seed {args.seed}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| panel | setting | target | model | h | val IC | val cs IC | test IC ± SE | test cs IC ± SE "
          "| oracle share (IC) | (cs IC) | best_iteration | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines: list[str] = []
    for signal in args.signals:
        bars, oracle, _ = panel(args, signal)
        cache: dict[str, Any] = {}  # one feature table per distinct features section
        for name, p in settings:
            key = repr(sorted(p.get("features", {}).items()))
            if key not in cache:
                cache[key] = featurize(args, p, bars)
            feats = cache[key]
            for r in run_setting(p, args, bars, oracle, feats):
                it = "" if r["best_iter"] is None else str(r["best_iter"])
                fit = "" if r["model"] == "oracle" else f"{r['seconds']:.0f}"
                line = (f"| {signal} | {name} | {p['label']['normalize']} | {r['model']} | {r['h']} "
                        f"| {r['val_ic']:+.4f} | {r['val_cs_ic']:+.4f} | {r['ic']:+.4f} ± {r['ic_se']:.4f} "
                        f"| {r['cs_ic']:+.4f} ± {r['cs_ic_se']:.4f} | {r['share']:.2f} | {r['cs_share']:.2f} "
                        f"| {it} | {fit} |")
                lines.append(line)
                print(line, flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")
    if len(settings) > 1:
        print("\n" + side_by_side(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
