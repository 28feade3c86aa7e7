"""cv: walk-forward (or CPCV) cross-validation metrics inside train + val. The models of cv.models
are refitted on every fold of the split stage with their training-stage hyperparameters and scored
on the fold's test block; per-fold figures, mean and std go to one metrics file, each fold's rows and dates to another."""
import pandas as pd

from alphafactory import dataset, raw_windows, stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.evaluation.cv import CVConfig, cross_validate, refit_inputs
from alphafactory.io import scratch_dir, write_json
from alphafactory.train import TrainConfig, wants_bars


def main() -> None:
    args, params = stage.parse(__doc__, "features", "labels", "bars", "folds", "metrics", "fold-spans")
    cfg = section(params, "cv", CVConfig)
    train = section(params, "train", TrainConfig)
    blocks, extra = refit_inputs(params, train)
    labels = pd.read_parquet(args.labels)
    # every row starts "purged": cross_validate assigns train/val/test per fold from the folds table
    unassigned = labels[dataset.KEYS].assign(segment="purged")
    ds = dataset.join_file(args.features, labels, unassigned, dataset.horizons_of(labels))
    if wants_bars(*extra.values(), names=cfg.models):  # neural.inputs raw/both, or chronos: the prepared bars
        ds = raw_windows.with_bars(ds, pd.read_parquet(args.bars))
    # fold models: next to the output, not in the system temp dir; the folds: fanned out (compute)
    with scratch_dir(args.metrics) as work, fan_out(section(params, "compute", ComputeConfig)) as fan:
        result = cross_validate(ds, labels, pd.read_parquet(args.folds), cfg, blocks=blocks, seed=train.seed,
                                extra=extra, task=train.task, scope=train.scope, select=train.select,
                                workdir=work, fan=fan)
    write_json(result.pop("_folds"), args.fold_spans)  # bookkeeping (rows, dates), not metrics
    write_json(result, args.metrics)


if __name__ == "__main__":
    stage.run(main)
