"""explain: tree SHAP of the boosting models and permutation importance of every other model,
on the test period."""
import pandas as pd

from alphafactory import dataset, stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.evaluation.explain import ExplainConfig, explain_models, model_dirs


def main() -> None:
    args, params = stage.parse(__doc__, "features", "labels", "bars", "segments", "models", "out")
    cfg = section(params, "explain", ExplainConfig)
    ds = dataset.load(args.features, args.labels, args.segments)
    dirs = model_dirs(args.models.split(","))
    stage.log.info("explain: %d models, %d test rows, %d features", len(dirs), len(ds.rows("test")),
                   len(ds.feature_names))
    with fan_out(section(params, "compute", ComputeConfig)) as fan:  # the permutation shuffles
        # the bars: for the networks that read raw OHLCV windows (neural.inputs), their raw groups
        result = explain_models(dirs, ds, cfg, fan=fan, bars=pd.read_parquet(args.bars))
    for name, table in result.tables().items():
        stage.write_csv(table, f"{args.out}/{name}")


if __name__ == "__main__":
    stage.run(main)
