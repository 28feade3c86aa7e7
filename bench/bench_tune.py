"""Tune-stage benchmark: trials per minute of a LightGBM study on the default data, with and without
fold-by-fold pruning, and the wall time of the whole study.

    OMP_WAIT_POLICY=passive python bench/bench_tune.py [--trials 50] [--pruners none,median]

Needs the tune stage's inputs (``dvc repro split featurize``; their paths come from ``dvc.yaml``).
Each setup runs one study of ``--trials`` trials over ``tune.spaces.lightgbm`` with the
``boosting.lightgbm`` block of params.yaml (``num_threads: 2``) as the base, the metric and seeds of
the ``tune`` section, in an in-memory SQLite storage, in this process. Same seed, same startup
points; the setups differ only in the pruner. "best CV" is the best trial's mean fold score and
"± SE" its fold standard error (std over folds / sqrt(folds)); pruning keeps the best score when
the two agree within that SE.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from alphafactory.config import load_params, section
from alphafactory.evaluation.cv import CVConfig
from alphafactory.io import read_json
from alphafactory.train import data_hash
from alphafactory.tune import (
    Folds,
    StudySpec,
    TuneConfig,
    create_study,
    load_development_data,
    optimize,
    stage_paths,
    summary,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--pruners", default="none,median")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = section(params, "tune", TuneConfig)
    paths = stage_paths()
    ds, labels = load_development_data(paths["features"], paths["labels"], paths["segments"])
    folds = Folds.build(ds, labels, pd.read_parquet(paths["folds"]), section(params, "cv", CVConfig).val_frac, "pooled")
    ppy = read_json(paths["info"])["frequency"]["periods_per_year"]
    block = params["boosting"]["lightgbm"]
    base = StudySpec(model="lightgbm", block=block, space=cfg.spaces["lightgbm"], extra=None,
                     scorer={"metric": cfg.metric, "horizon": cfg.horizon, "periods_per_year": ppy}, seed=42,
                     task="regression", scope="pooled", val_frac=0.2, pruner="none", n_trials=args.trials,
                     startup_trials=cfg.startup_trials, tune_seed=cfg.seed, data_hash=data_hash(folds.datasets[0][1]))
    print(f"LightGBM, {len(folds.datasets)} scored folds, {len(ds.keys)} development rows, num_threads "
          f"{block.get('num_threads')}, metric {cfg.metric}, {args.trials} trials, "
          f"{cfg.startup_trials} seeded startup trials")
    rows = []
    for pruner in args.pruners.split(","):
        spec = dataclasses.replace(base, pruner=pruner)
        study = create_study(spec, "sqlite:///:memory:", f"bench-{pruner}", resume=False)
        t0 = time.perf_counter()
        optimize(study, spec, folds)
        wall = time.perf_counter() - t0
        s = summary(study, spec, importance=False)
        rows.append((pruner, s["n_trials"], s["pruned"], 60 * s["n_trials"] / wall, wall, s["best_value"],
                     s["best_fold_se"], s["best_trial"]))
        print(f"  done: {pruner} in {wall:.0f} s", flush=True)
    print(f"\n{'pruner':<8}{'trials':>7}{'pruned':>7}{'trials/min':>11}{'wall s':>9}{'best CV':>10}{'± SE':>8}"
          f"{'best trial':>11}")
    for r in rows:
        print(f"{r[0]:<8}{r[1]:>7}{r[2]:>7}{r[3]:>11.1f}{r[4]:>9.0f}{r[5]:>+10.4f}{r[6]:>8.4f}{r[7]:>11}")
    if len(rows) > 1:
        ref = rows[0]
        for r in rows[1:]:
            print(f"{r[0]} vs {ref[0]}: {ref[4] / r[4]:.2f}x faster; best CV {r[5] - ref[5]:+.4f} "
                  f"({'within' if abs(r[5] - ref[5]) <= max(ref[6], r[6]) else 'outside'} the fold SE)")


if __name__ == "__main__":
    main()
