"""featurize: causal features per symbol (warm-up rows, where some feature is undefined, dropped)."""
import pandas as pd

from alphafactory import stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.data.frequency import FrequencyInfo
from alphafactory.dataset import drop_warmup
from alphafactory.features import FeatureConfig, compute_features_batched, warmup_bars
from alphafactory.io import read_json, write_parquet


def main() -> None:
    args, params = stage.parse(__doc__, "bars", "info", "out")
    cfg = section(params, "features", FeatureConfig)
    freq = FrequencyInfo.from_dict(read_json(args.info)["frequency"])
    with fan_out(section(params, "compute", ComputeConfig)) as fan:  # symbol batches
        feats = compute_features_batched(pd.read_parquet(args.bars), cfg, freq=freq, fan=fan)
    feats = drop_warmup(feats, warmup_bars(cfg, freq))
    stage.log.info("featurize: %d rows x %d features", len(feats), feats.shape[1] - 2)
    write_parquet(feats, args.out)


if __name__ == "__main__":
    stage.run(main)
