"""blend: stacking meta-learner fit on the base models' validation forecasts."""
import pandas as pd

from alphafactory import stage
from alphafactory.blend import BlendConfig, Stacker
from alphafactory.config import section
from alphafactory.dataset import horizons_of
from alphafactory.io import write_parquet
from alphafactory.train import TrainConfig


def main() -> None:
    args, params = stage.parse(__doc__, "preds", "labels", "models", "out")
    cfg = section(params, "blend", BlendConfig)
    preds = pd.concat([pd.read_parquet(p) for p in args.preds.split(",")], ignore_index=True)
    labels = pd.read_parquet(args.labels)
    members = list(dict.fromkeys(preds["model"]))
    stacker = Stacker(cfg, members, horizons_of(labels), seed=section(params, "train", TrainConfig).seed).fit(preds, labels)
    stacker.save(args.models)
    write_parquet(pd.concat([stacker.predict(preds, s) for s in ("val", "test")], ignore_index=True), args.out)


if __name__ == "__main__":
    stage.run(main)
