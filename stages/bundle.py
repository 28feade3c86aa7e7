"""bundle: one self-contained directory to forecast from raw bars: every trained base model, the
blender, the feature config, horizons, lookback, bar frequency, training symbols and library
versions, with the sha256 and size of every file in manifest.json."""
from alphafactory import stage
from alphafactory.config import section
from alphafactory.features import FeatureConfig
from alphafactory.io import read_json
from alphafactory.labels import LabelConfig
from alphafactory.serving.bundle import build_bundle
from alphafactory.train import TrainConfig


def main() -> None:
    args, params = stage.parse(__doc__, "models", "blend", "info", "out")
    config = build_bundle(
        args.models.split(","), args.blend, args.out,
        features=section(params, "features", FeatureConfig),
        label=section(params, "label", LabelConfig),
        lookback=section(params, "train", TrainConfig).lookback,
        info=read_json(args.info),
    )
    stage.log.info("bundle: %s + blend %s, %d features, horizons %s -> %s",
                   [m["name"] for m in config["models"]], config["blender"]["methods"],
                   len(config["feature_columns"]), config["horizons"], args.out)


if __name__ == "__main__":
    stage.run(main)
