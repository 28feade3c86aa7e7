"""train_boosting: gradient-boosted trees, one booster per horizon, early-stopped on val."""
import pandas as pd

from alphafactory import dataset, stage
from alphafactory.config import section
from alphafactory.io import write_parquet
from alphafactory.train import TrainConfig, fit_models, log_curves


def main() -> None:
    args, params = stage.parse(__doc__, "features", "labels", "segments", "models", "preds", "live")
    train = section(params, "train", TrainConfig)
    names, blocks, _ = stage.family_section(params, "boosting", "boosting", task=train.task)
    ds = dataset.load(args.features, args.labels, args.segments)
    results = fit_models(ds, names, blocks, args.models, seed=train.seed, task=train.task, scope=train.scope)
    log_curves(results, args.live)
    write_parquet(pd.concat([r.predictions for r in results], ignore_index=True), args.preds)


if __name__ == "__main__":
    stage.run(main)
