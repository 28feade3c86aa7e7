"""Inputs of the evaluate stage for a synthetic universe, without featurizing or training.

    python bench/eval_inputs.py --symbols 500 --bars 2520 --out /tmp/evalin500

Writes, under ``--out``, what ``stages/evaluate.py`` reads in ``bench_scale.py --pipeline target``:
the synthetic bars, oracle and info (``data.synthetic``, daily), the labels and segments of the
default ``label`` and ``split`` params, and a pooled ``lightgbm``'s forecasts for every segment
(``yhat`` the oracle plus noise, with the ``yhat_std`` and ``prob_up`` columns a booster writes),
plus the empty blend and walk-forward tables and a tune summary. Then time evaluate alone:

    /usr/bin/time -v python stages/evaluate.py --preds OUT/boosting.parquet --blend OUT/blend.parquet \\
        --walk-forward OUT/backtest.parquet --bars OUT/bars.parquet --info OUT/info.json \\
        --labels OUT/labels.parquet --segments OUT/segments.parquet --oracle OUT/oracle.parquet \\
        --metrics OUT/res/test.json --oracle-metrics OUT/res/oracle.json --headline OUT/res/headline.json \\
        --predictions OUT/res/test.parquet --plots OUT/res/plots --tune OUT/tune.json

(``bench/bench_evaluate.sh OUT`` runs exactly that.) The forecasts are not a model's, so the
figures mean nothing; the shapes and dtypes are those of the pipeline's files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import norm

from alphafactory.config import section
from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
from alphafactory.io import write_parquet
from alphafactory.labels import KEYS, LabelConfig, make_labels
from alphafactory.split import SplitConfig, assign_segments

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, required=True)
    ap.add_argument("--bars", type=int, default=2520)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lab_cfg = section(params, "label", LabelConfig)
    horizons = tuple(lab_cfg.horizons)
    args.out.mkdir(parents=True, exist_ok=True)
    bars, oracle = make_synthetic(SyntheticConfig(symbols=args.symbols, bars=args.bars, freq="1D"), horizons)
    write_parquet(bars, args.out / "bars.parquet")
    labels = make_labels(bars, lab_cfg)
    del bars
    write_parquet(labels, args.out / "labels.parquet")
    seg = assign_segments(labels, horizons, section(params, "split", SplitConfig))
    write_parquet(seg, args.out / "segments.parquet")
    rng = np.random.default_rng(0)
    frames = []
    for h in horizons:
        o = oracle[oracle["horizon"] == h][KEYS + ["yhat"]]
        p = seg.merge(o, on=KEYS, how="inner")
        p = p[labels.set_index(KEYS)[f"y_h{h}"].reindex(pd.MultiIndex.from_frame(p[KEYS])).notna().to_numpy()]
        sd = float(np.nanstd(labels[f"y_h{h}"]))
        yhat = p["yhat"].to_numpy() + rng.normal(0.0, 0.5 * sd, len(p))
        std = np.full(len(p), sd)
        frames.append(pd.DataFrame({"symbol": p["symbol"].to_numpy(), "timestamp": p["timestamp"].to_numpy(),
                                    "segment": p["segment"].to_numpy(), "model": "lightgbm", "horizon": h,
                                    "yhat": yhat, "yhat_std": std, "prob_up": norm.cdf(yhat / std)}))
    preds = pd.concat(frames, ignore_index=True).sort_values(["symbol", "timestamp", "horizon"], kind="stable")
    write_parquet(preds.reset_index(drop=True), args.out / "boosting.parquet")
    for name in ("blend", "backtest"):
        write_parquet(preds.iloc[:0].reset_index(drop=True), args.out / f"{name}.parquet")
    write_parquet(oracle, args.out / "oracle.parquet")
    info = {"frequency": {"periods_per_year": 252.0}}
    (args.out / "info.json").write_text(json.dumps(info) + "\n")
    (args.out / "tune.json").write_text('{"extra_trials": 0}\n')
    print(f"{args.out}: {len(labels)} label rows, {len(preds)} forecast rows")


if __name__ == "__main__":
    main()
