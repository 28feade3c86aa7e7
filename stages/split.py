"""split: train / val / test by time, purged by the longest label horizon plus an embargo; and
cross-validation folds (walk-forward or CPCV) inside train + val, purged and embargoed alike."""
import pandas as pd

from alphafactory import stage
from alphafactory.config import section
from alphafactory.io import write_json, write_parquet
from alphafactory.labels import LabelConfig
from alphafactory.split import SplitConfig, assign_segments, fold_summary, make_folds


def main() -> None:
    args, params = stage.parse(__doc__, "labels", "out", "summary", "folds")
    cfg = section(params, "split", SplitConfig)
    horizons = section(params, "label", LabelConfig).horizons
    labels = pd.read_parquet(args.labels)
    seg = assign_segments(labels, horizons, cfg)
    folds = make_folds(labels, horizons, cfg)
    summary = {
        name: {"rows": int(len(g)), "start": str(g["timestamp"].min()), "end": str(g["timestamp"].max())}
        for name, g in seg.groupby("segment")
    }
    summary["folds"] = {"mode": cfg.cv_mode, "folds": fold_summary(folds)}
    stage.log.info("split: %s", {k: v["rows"] for k, v in summary.items() if k != "folds"})
    stage.log.info("split: %d %s folds", folds["fold"].nunique(), cfg.cv_mode)
    write_parquet(seg, args.out)
    write_parquet(folds, args.folds)
    write_json(summary, args.summary)


if __name__ == "__main__":
    stage.run(main)
