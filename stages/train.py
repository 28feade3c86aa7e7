"""train: fit the enabled models of one family (--family, a params section of the same name) on
train, early-stopped on (or, for the classical fits, only scored on) val; save each model and its
val and test forecasts.

  boosting   gradient-boosted trees, one booster per horizon
  neural     PyTorch sequence models over windows of train.lookback bars, one network for all
             horizons, on CUDA when available, else CPU; each saved with its ONNX export
  classical  ridge or logistic regression, random forest and SVR on the tabular features
"""
import pandas as pd

from alphafactory import dataset, raw_windows, stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.io import read_json, write_parquet_concat
from alphafactory.train import (
    TrainConfig,
    apply_tuned,
    family_inputs,
    fit_models,
    log_curves,
    reads_in_parts,
    wants_bars,
    write_seed_spread,
)


def main() -> None:
    args, params = stage.parse(__doc__, "family", "features", "labels", "segments", "models", "preds", "live",
                                 "tuned", "bars")
    train = section(params, "train", TrainConfig)
    names, blocks, extra = family_inputs(params, args.family, train, task=train.task)
    blocks = apply_tuned(names, blocks, read_json(args.tuned))  # tune.apply: the tune stage's best params
    # LightGBM alone: the features stay on disk, read in parts (same models, less memory);
    # neural.inputs raw/both: the networks also read raw OHLCV windows of the prepared bars (chronos: its closes)
    ds = dataset.load(args.features, args.labels, args.segments,
                      lazy=reads_in_parts(names, blocks, train.scope, train.select))
    if wants_bars(extra, names=names):
        ds = raw_windows.with_bars(ds, pd.read_parquet(args.bars))
    with fan_out(section(params, "compute", ComputeConfig)) as fan:  # per_symbol: the symbols' fits
        results = fit_models(ds, names, blocks, args.models, seed=train.seed, task=train.task, scope=train.scope,
                             extra=extra, select=train.select, fan=fan)
    log_curves(results, args.live)
    write_seed_spread(results, args.live)
    write_parquet_concat([r.predictions for r in results], args.preds)  # a row group per model's forecasts


if __name__ == "__main__":
    stage.run(main)
