"""evaluate: test-period metrics of every model, the ensemble, the walk-forward refits and naive
baselines; prints the headline table."""
import pandas as pd

from alphafactory import stage
from alphafactory.config import section
from alphafactory.dataset import horizons_of
from alphafactory.evaluation.evaluate import EvaluateConfig, baseline_forecasts, evaluate, headline, summary_table
from alphafactory.io import read_json, write_json, write_parquet


def main() -> None:
    args, params = stage.parse(__doc__, "preds", "blend", "walk-forward", "bars", "info", "labels", "segments",
                               "oracle", "metrics", "oracle-metrics", "headline", "predictions", "plots", "tune")
    cfg = section(params, "evaluate", EvaluateConfig)
    labels, segments = pd.read_parquet(args.labels), pd.read_parquet(args.segments)
    blend, wf = pd.read_parquet(args.blend), pd.read_parquet(args.walk_forward)
    preds = pd.concat([*(pd.read_parquet(p) for p in args.preds.split(",")), blend, wf], ignore_index=True)
    preds = preds[preds["segment"] == "test"].drop(columns="segment")
    base = baseline_forecasts(pd.read_parquet(args.bars), labels, segments, horizons_of(labels))
    ppy = read_json(args.info)["frequency"]["periods_per_year"]
    oracle = pd.read_parquet(args.oracle)
    ev = evaluate(pd.concat([preds, base], ignore_index=True), labels, ppy, cfg, oracle,
                  ensembles=tuple(dict.fromkeys(blend["model"])), walk_forward=tuple(dict.fromkeys(wf["model"])),
                  extra_trials=read_json(args.tune)["extra_trials"])  # every tuning trial is a strategy tried
    result = dict(ev.metrics)
    write_json({"oracle": result.pop("oracle")} if "oracle" in result else {}, args.oracle_metrics)
    write_json(result, args.metrics)
    head = headline(ev)
    write_json(head, args.headline, sort_keys=False)  # reading order
    write_parquet(ev.predictions, args.predictions)
    for name, table in ev.plots.items():
        stage.write_csv(table, f"{args.plots}/{name}")
    print(summary_table(ev.metrics, head))


if __name__ == "__main__":
    stage.run(main)
