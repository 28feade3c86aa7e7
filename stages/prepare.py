"""prepare: bars in (bundled, file or synthetic) → one validated long-format panel."""
from alphafactory import stage
from alphafactory.config import section
from alphafactory.data.frequency import infer_frequency
from alphafactory.data.sources import DataConfig, load_bars
from alphafactory.io import write_json, write_parquet
from alphafactory.labels import LabelConfig


def main() -> None:
    args, params = stage.parse(__doc__, "bars", "info", "oracle")
    cfg = section(params, "data", DataConfig)
    horizons = section(params, "label", LabelConfig).horizons
    bars, oracle = load_bars(cfg, horizons=horizons)
    freq = infer_frequency(bars)
    counts = bars.groupby("symbol").size()
    info = {
        "source": cfg.source,
        "frequency": freq.to_dict(),
        "symbols": {s: int(n) for s, n in counts.items()},
        "rows": int(len(bars)),
        "start": str(bars["timestamp"].min()),
        "end": str(bars["timestamp"].max()),
        "has_oracle": oracle is not None,
    }
    write_parquet(bars, args.bars)
    write_parquet(oracle if oracle is not None else stage.empty_oracle(), args.oracle)
    write_json(info, args.info)


if __name__ == "__main__":
    stage.run(main)
