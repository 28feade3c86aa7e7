"""featurize: causal features per symbol (warm-up rows, where some feature is undefined, dropped).

With features.symbol_batch > 0 the table is computed a batch of symbols at a time and written a
row group at a time, so the stage never holds the whole panel's features."""
import pandas as pd

from alphafactory import stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.data.frequency import FrequencyInfo
from alphafactory.dataset import after_warmup
from alphafactory.features import FeatureConfig, iter_features_batched, warmup_bars
from alphafactory.io import read_json, scratch_dir, write_parquet_pieces


def main() -> None:
    args, params = stage.parse(__doc__, "bars", "info", "out")
    cfg = section(params, "features", FeatureConfig)
    freq = FrequencyInfo.from_dict(read_json(args.info)["frequency"])
    bars = pd.read_parquet(args.bars)
    keep = after_warmup(bars, warmup_bars(cfg, freq))  # (n,) by row of bars: the pieces' index
    with fan_out(section(params, "compute", ComputeConfig)) as fan, scratch_dir(args.out) as spill:
        pieces = iter_features_batched(bars, cfg, freq=freq, fan=fan, spill=spill)
        n = write_parquet_pieces((p.loc[keep[p.index]].reset_index(drop=True) for p in pieces), args.out)
    stage.log.info("featurize: %d rows", n)


if __name__ == "__main__":
    stage.run(main)
