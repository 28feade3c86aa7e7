"""backtest: walk-forward retraining over the test period. The models of backtest.models are refitted
every backtest.retrain_every test bars on the rows before each block (expanding or rolling window,
purged and embargoed as the CV folds) and forecast that block only; the forecasts (models <name>_wf)
go where the evaluate stage scores them beside the single fits, each block's rows and dates to a
bookkeeping file."""
import pandas as pd

from alphafactory import dataset, raw_windows, stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.evaluation.backtest import BacktestConfig, walk_forward
from alphafactory.evaluation.cv import refit_inputs
from alphafactory.io import scratch_dir, write_json, write_parquet
from alphafactory.split import SplitConfig, refit_blocks
from alphafactory.train import TrainConfig, wants_bars


def main() -> None:
    args, params = stage.parse(__doc__, "features", "labels", "bars", "segments", "preds", "blocks")
    cfg = section(params, "backtest", BacktestConfig)
    train = section(params, "train", TrainConfig)
    embargo = section(params, "split", SplitConfig).embargo
    blocks, extra = refit_inputs(params, train)
    labels, segments = pd.read_parquet(args.labels), pd.read_parquet(args.segments)
    seg = labels[dataset.KEYS].merge(segments, on=dataset.KEYS, how="left", validate="1:1")["segment"]
    table = refit_blocks(labels, seg.to_numpy() == "test", dataset.horizons_of(labels), embargo,
                         cfg.retrain_every, cfg.window_bars)
    # every row starts "purged": walk_forward assigns train/val/test per block from the blocks table
    ds = dataset.join_file(args.features, labels, labels[dataset.KEYS].assign(segment="purged"),
                           dataset.horizons_of(labels))
    if wants_bars(*extra.values(), names=cfg.models):  # neural.inputs raw/both, or chronos: the prepared bars
        ds = raw_windows.with_bars(ds, pd.read_parquet(args.bars))
    # block models: next to the output, not in the system temp dir; the blocks: fanned out (compute)
    with scratch_dir(args.preds) as work, fan_out(section(params, "compute", ComputeConfig)) as fan:
        preds, spans = walk_forward(ds, labels, table, cfg, blocks=blocks, seed=train.seed, extra=extra,
                                    task=train.task, scope=train.scope, select=train.select,
                                    workdir=work, fan=fan)
    write_json(spans, args.blocks)  # bookkeeping (rows, dates), not metrics
    write_parquet(preds, args.preds)


if __name__ == "__main__":
    stage.run(main)
