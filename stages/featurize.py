"""featurize: causal features per symbol (warm-up rows, where some feature is undefined, dropped)."""
from alphafactory import stage
from alphafactory.config import section
from alphafactory.dataset import drop_warmup
from alphafactory.features import FeatureConfig, compute_features, warmup_bars
from alphafactory.io import write_parquet

import pandas as pd


def main() -> None:
    args, params = stage.parse(__doc__, "bars", "out")
    cfg = section(params, "features", FeatureConfig)
    bars = pd.read_parquet(args.bars)
    feats = drop_warmup(compute_features(bars, cfg), warmup_bars(cfg))
    stage.log.info("featurize: %d rows x %d features", len(feats), feats.shape[1] - 2)
    write_parquet(feats, args.out)


if __name__ == "__main__":
    stage.run(main)
