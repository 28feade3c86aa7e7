"""report: one self-contained HTML page comparing every model on the test period; prints the
headline table, so that a full run ends with it."""
from pathlib import Path

import pandas as pd

from alphafactory import stage
from alphafactory.config import section
from alphafactory.evaluation.evaluate import EvaluateConfig, summary_table
from alphafactory.evaluation.report import ReportConfig, ReportInputs, render
from alphafactory.io import read_json, write_text


def _tables(directory: str) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p) for p in sorted(Path(directory).glob("*.csv"))}


def main() -> None:
    args, params = stage.parse(__doc__, "metrics", "headline", "plots", "explain", "split", "info", "tune", "out")
    cfg = section(params, "report", ReportConfig)
    inputs = ReportInputs(metrics=read_json(args.metrics), split=read_json(args.split), info=read_json(args.info),
                          plots=_tables(args.plots), explain=_tables(args.explain),
                          ic_window=section(params, "evaluate", EvaluateConfig).ic_window,
                          tune=read_json(f"{args.tune}/summary.json"), tune_trials=pd.read_csv(f"{args.tune}/trials.csv"))
    text = render(inputs, cfg)
    write_text(text, args.out)
    stage.log.info("report: wrote %s (%.0f kB)", args.out, len(text.encode()) / 1024)
    print(summary_table(inputs.metrics, read_json(args.headline)))  # a full run ends with it


if __name__ == "__main__":
    stage.run(main)
