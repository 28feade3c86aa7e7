"""evaluate: test-period metrics of every model, the ensemble, the walk-forward refits and naive
baselines; prints the headline table."""
from alphafactory import stage
from alphafactory.config import section
from alphafactory.evaluation.evaluate import (
    EvaluateConfig,
    evaluate,
    headline,
    models_in,
    read_scored_inputs,
    summary_table,
)
from alphafactory.io import read_json, write_json, write_parquet


def main() -> None:
    args, params = stage.parse(__doc__, "preds", "blend", "walk-forward", "bars", "info", "labels", "segments",
                               "oracle", "metrics", "oracle-metrics", "headline", "predictions", "plots", "tune")
    cfg = section(params, "evaluate", EvaluateConfig)
    # only what is scored is read: the test rows of the forecasts, the label columns used, the
    # close of the bars (the momentum baseline); labels and oracle cut to the test window
    preds, labels, oracle = read_scored_inputs([*args.preds.split(","), args.blend, args.walk_forward],
                                               args.bars, args.labels, args.segments, args.oracle)
    ppy = read_json(args.info)["frequency"]["periods_per_year"]
    ev = evaluate(preds, labels, ppy, cfg, oracle,
                  ensembles=models_in(args.blend), walk_forward=models_in(args.walk_forward),
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
