"""tune: Optuna search over tune.spaces for the models of tune.models, each trial scored on the
purged CV folds of train + val (never the test segment); writes the best params and trials, and
the params the training stages apply (empty unless tune.apply). With tune.models empty it only
writes empty outputs."""
from pathlib import Path

import pandas as pd

from alphafactory import stage
from alphafactory.compute import ComputeConfig, fan_out
from alphafactory.config import section
from alphafactory.evaluation.cv import CVConfig, refit_inputs
from alphafactory.evaluation.evaluate import EvaluateConfig
from alphafactory.io import read_json, scratch_dir, write_json
from alphafactory.train import TrainConfig
from alphafactory.tune import TuneConfig, check_stage_params, load_development_data, needs_bars, run_tuning


def dvclive_callbacks(live_dir: str, lives: list):
    """Per model, an Optuna callback logging each finished trial's score and the best so far to
    ``<live_dir>/<model>`` (dvclive's own DVCLiveCallback reopens, and so wipes, its directory at
    every trial)."""
    from dvclive import Live

    def make(model: str) -> tuple:
        live = Live(str(Path(live_dir) / model), dvcyaml=False, save_dvc_exp=False)
        lives.append(live)  # ended by main once the studies are done

        def log(study, trial) -> None:
            if trial.value is None:
                return
            # the best of the trials up to this one: under a cluster, the trials are logged after
            # they all ran (in trial order), and the study's best is then the final one
            upto = [t for t in study.get_trials(deepcopy=False)
                    if t.state.name == "COMPLETE" and t.number <= trial.number]
            best = max(upto, key=lambda t: t.value)
            live.step = trial.number
            live.log_metric("cv_score", trial.value)
            live.log_metric("best_cv_score", best.value)
            live.log_params({"best": best.params})
            live.make_summary()

        return (log,)

    return make


def main() -> None:
    args, params = stage.parse(__doc__, "features", "labels", "bars", "segments", "folds", "info", "study-db",
                               "out", "applied", "live")
    cfg = section(params, "tune", TuneConfig)
    db = Path(args.study_db)
    if not cfg.resume and db.exists():
        db.unlink()  # start over (tune.resume: false)
    db.parent.mkdir(parents=True, exist_ok=True)
    db.touch()  # an empty file is an empty SQLite database: the output exists when nothing is tuned
    Path(args.live).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    if not cfg.models:
        summary, trials, applied = {"models": {}, "n_trials": 0, "extra_trials": 0, "apply": cfg.apply}, None, {}
    else:
        check_stage_params(cfg)  # every tuned model's block is a params dep in dvc.yaml
        train = section(params, "train", TrainConfig)
        ev = section(params, "evaluate", EvaluateConfig)
        blocks, extra = refit_inputs(params, train)
        # a network under neural.inputs raw/both: raw OHLCV windows of the prepared bars
        bars = args.bars if needs_bars(cfg.models, extra) else None
        ds, labels = load_development_data(args.features, args.labels, args.segments, bars)
        scorer = {"metric": cfg.metric, "horizon": cfg.horizon, "cost_bps": ev.cost_bps, "threshold": ev.threshold,
                  "min_symbols": ev.min_symbols_cs,
                  "periods_per_year": read_json(args.info)["frequency"]["periods_per_year"]}
        storage = cfg.storage or f"sqlite:///{db}"
        lives: list = []
        # the trials: on the compute cluster's workers, if one is set (tune.optimize_on_cluster)
        with scratch_dir(out / "summary.json") as work, fan_out(section(params, "compute", ComputeConfig)) as fan:
            summary, trials, applied = run_tuning(
                cfg, ds, labels, pd.read_parquet(args.folds), blocks=blocks, extra=extra, train_seed=train.seed,
                task=train.task, scope=train.scope, val_frac=section(params, "cv", CVConfig).val_frac,
                scorer=scorer, storage=storage, workdir=work, callbacks=dvclive_callbacks(args.live, lives), fan=fan)
        for live in lives:
            live.end()
        if cfg.storage:  # a shared server: keep a copy of the studies in the stage's own output
            import contextlib

            import optuna

            for name in cfg.models:
                with contextlib.suppress(KeyError):  # tune.resume: the copy of the last run
                    optuna.delete_study(study_name=f"{cfg.study}-{name}", storage=f"sqlite:///{db}")
                optuna.copy_study(from_study_name=f"{cfg.study}-{name}", from_storage=cfg.storage,
                                  to_storage=f"sqlite:///{db}")
    write_json(summary, out / "summary.json")
    stage.write_csv(trials if trials is not None else pd.DataFrame(columns=["model", "number", "state", "value"]),
                    str(out / "trials.csv"))
    write_json(applied, args.applied)


if __name__ == "__main__":
    stage.run(main)
