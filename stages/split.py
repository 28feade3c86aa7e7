"""split: train / val / test by time, purged by the longest label horizon plus an embargo."""
import pandas as pd

from alphafactory import stage
from alphafactory.config import section
from alphafactory.io import write_json, write_parquet
from alphafactory.labels import LabelConfig
from alphafactory.split import SplitConfig, assign_segments


def main() -> None:
    args, params = stage.parse(__doc__, "labels", "out", "summary")
    cfg = section(params, "split", SplitConfig)
    horizons = section(params, "label", LabelConfig).horizons
    seg = assign_segments(pd.read_parquet(args.labels), horizons, cfg)
    summary = {
        name: {"rows": int(len(g)), "start": str(g["timestamp"].min()), "end": str(g["timestamp"].max())}
        for name, g in seg.groupby("segment")
    }
    stage.log.info("split: %s", {k: v["rows"] for k, v in summary.items()})
    write_parquet(seg, args.out)
    write_json(summary, args.summary)


if __name__ == "__main__":
    stage.run(main)
