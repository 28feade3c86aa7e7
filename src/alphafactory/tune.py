"""Hyperparameter search on the purged CV folds of train + val (Optuna, seeded TPE).

The objective of a trial refits one model on every scored fold of ``data/split/folds.parquet``
(the folds of the ``cv`` stage, built by :func:`alphafactory.evaluation.cv.fold_dataset`) with
the trial's hyperparameters over the model's hand-set block, and scores the fold's test block by
``tune.metric`` at ``tune.horizon`` (or the mean over horizons). The trial's value is the mean of
its fold scores; after each fold the running mean is reported, so the pruner (median or
successive halving) can stop a poor trial before its later, larger folds. The test segment never
reaches the objective: :func:`development_data` drops its rows before anything is fitted, and the
folds only hold rows of train + val anyway (tests/test_tune.py poisons the test rows to show it).
A network under ``neural.inputs.kind`` raw or both also reads raw OHLCV windows of the prepared
bars (:mod:`alphafactory.raw_windows`): the stage and every worker then attach them
(:func:`needs_bars`, :func:`load_development_data`), as the cv stage does.

Search spaces are declared per model in ``tune.spaces`` as one short string per hyperparameter::

    num_leaves: int 7 63          # integer in [7, 63]
    learning_rate: log 0.005 0.2  # float, log-uniform
    feature_fraction: float 0.4 1 # float, uniform
    min_child_samples: intlog 10 400
    boosting: [gbdt, dart]        # a list: categorical

Studies live in an Optuna RDB storage (a SQLite file by default, or PostgreSQL shared by
workers on several machines, :func:`run_worker`). A study's user attributes hold everything a
worker needs to score a trial besides the data (model, base block, space, metric, seeds), and the
hash of the data it was created on, which a joining worker checks. The first
``tune.startup_trials`` trials are random points drawn from ``tune.seed`` alone and enqueued when
the study is created, so they are the same however many workers run them; the TPE trials after
them depend on the order results arrive in, hence on the number of workers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import optuna
import pandas as pd

from alphafactory import models, raw_windows
from alphafactory.compute import FanOut
from alphafactory.config import Interval, Unique, to_dict
from alphafactory.dataset import KEYS, Dataset
from alphafactory.errors import ConfigError
from alphafactory.evaluation import metrics
from alphafactory.evaluation.cv import check_base_models, fold_dataset, label_ends
from alphafactory.progress import progress
from alphafactory.train import data_hash, fit_models, wants_bars

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial from optimize's callback instead
METRICS = ("ic", "rank_ic", "icir", "sharpe")  # tune.metric: pooled IC, rank IC, cross-sectional ICIR, net Sharpe
KINDS = ("int", "intlog", "float", "log")
TRIAL_STATES = ("COMPLETE", "PRUNED")  # trials that count towards tune.n_trials


@dataclass(frozen=True)
class TuneConfig:
    """The ``tune`` section of params.yaml."""

    models: Annotated[tuple[str, ...], Unique()] = ()  # empty: the stage writes empty outputs
    n_trials: Annotated[int, Interval(ge=1)] = 30     # per model, over all workers
    timeout: Annotated[float | None, Interval(gt=0)] = None  # seconds per model and worker (null: none)
    metric: Literal["ic", "rank_ic", "icir", "sharpe"] = "ic"
    horizon: Annotated[int | None, Interval(ge=1)] = None  # null: the mean over label.horizons
    pruner: Literal["median", "halving", "none"] = "median"
    startup_trials: Annotated[int, Interval(ge=0)] = 8  # seeded random points before TPE
    seed: int = 0
    storage: str | None = None  # Optuna RDB URL; null: the stage's SQLite file
    study: str = "alphafactory"  # study name prefix: <study>-<model>
    resume: bool = False         # continue the stored study instead of starting over
    apply: bool = False          # train the tuned models with their best params
    spaces: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_base_models("tune.models", self.models)
        check_base_models("tune.spaces", self.spaces)
        for name in self.models:
            if not self.spaces.get(name):
                raise ConfigError(f"tune.spaces.{name}: missing; expected a search space for each of tune.models")
        for name, space in self.spaces.items():
            if not isinstance(space, dict):
                raise ConfigError(f"tune.spaces.{name}: got {space!r}, expected a mapping of hyperparameter: range")
            for key, spec in space.items():
                parse_spec(spec, f"tune.spaces.{name}.{key}")


def parse_spec(spec: Any, where: str) -> optuna.distributions.BaseDistribution:
    """One search-space entry (``"int 7 63"``, ``"log 1e-3 0.1"``, a list of choices) → an
    Optuna distribution; a malformed one is a ConfigError naming ``where``."""
    if isinstance(spec, list):
        if len(spec) < 2 or len(set(map(repr, spec))) != len(spec):
            raise ConfigError(f"{where}: got {spec!r}, expected at least two different choices")
        return optuna.distributions.CategoricalDistribution(spec)
    parts = spec.split() if isinstance(spec, str) else []
    if len(parts) != 3 or parts[0] not in KINDS:
        raise ConfigError(f"{where}: got {spec!r}, expected '<kind> <low> <high>' with kind one of "
                          f"{list(KINDS)}, or a list of choices")
    kind = parts[0]
    try:
        lo, hi = (int(p) for p in parts[1:]) if kind.startswith("int") else (float(p) for p in parts[1:])
    except ValueError:
        raise ConfigError(f"{where}: got {spec!r}, expected numeric bounds"
                          f"{' (integers)' if kind.startswith('int') else ''}") from None
    if not lo < hi or (kind.endswith("log") and lo <= 0):
        raise ConfigError(f"{where}: got {spec!r}, expected low < high{' and low > 0' if 'log' in kind else ''}")
    if kind.startswith("int"):
        return optuna.distributions.IntDistribution(lo, hi, log=kind == "intlog")
    return optuna.distributions.FloatDistribution(lo, hi, log=kind == "log")


def distributions(space: dict[str, Any], model: str) -> dict[str, optuna.distributions.BaseDistribution]:
    return {k: parse_spec(v, f"tune.spaces.{model}.{k}") for k, v in space.items()}


def startup_points(dists: dict[str, optuna.distributions.BaseDistribution], n: int, seed: int) -> list[dict]:
    """``n`` random points of the space from ``seed`` alone (not from the study's history), so
    that a study starts from the same points whatever the number of workers."""
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n):
        p: dict[str, Any] = {}
        for k, d in dists.items():
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                p[k] = d.choices[int(rng.integers(len(d.choices)))]
            elif isinstance(d, optuna.distributions.IntDistribution):
                v = math.exp(rng.uniform(math.log(d.low), math.log(d.high))) if d.log else rng.uniform(d.low, d.high + 1)
                p[k] = min(max(int(round(v) if d.log else math.floor(v)), d.low), d.high)
            else:
                u = rng.uniform(math.log(d.low), math.log(d.high)) if d.log else rng.uniform(d.low, d.high)
                p[k] = float(math.exp(u) if d.log else u)
        points.append(p)
    return points


def development_data(ds: Dataset, segments: pd.DataFrame) -> Dataset:
    """``ds`` without the rows of the split stage's test segment (and after): what the
    objective may see. ``segments``: the split stage's ``symbol, timestamp, segment``."""
    seg = ds.keys.merge(segments[KEYS + ["segment"]], on=KEYS, how="left", validate="1:1")["segment"].to_numpy()
    test = seg == "test"
    if test.any():
        t0 = ds.keys["timestamp"].to_numpy()[test].min()
        keep = ds.keys["timestamp"].to_numpy() < t0
    else:
        keep = np.ones(len(seg), bool)
    return ds.subset(np.flatnonzero(keep & ~test))


@dataclass(frozen=True)
class Scorer:
    """Scores forecasts of a fold's test rows: ``tune.metric`` at ``horizon`` (None: mean over
    horizons). ``periods_per_year``, ``cost_bps``, ``threshold``: the sharpe metric's (as in
    evaluate: net of cost, annualised); ``min_symbols``: cross-sectional ICIR's."""

    metric: str
    horizon: int | None
    periods_per_year: float = 252.0
    cost_bps: float = 5.0
    threshold: float = 0.0
    min_symbols: int = 3

    def __call__(self, preds: pd.DataFrame, ds: Dataset, rets: pd.DataFrame) -> float:
        hs = ds.horizons if self.horizon is None else (self.horizon,)
        if self.horizon is not None and self.horizon not in ds.horizons:
            raise ConfigError(f"tune.horizon: got {self.horizon}, expected one of label.horizons {list(ds.horizons)}")
        # scored against the raw return ret_h<k>, whatever label.normalize trains on (as evaluate)
        scores = []
        for h in hs:
            p = preds[preds["horizon"] == h][KEYS + ["yhat"]].merge(ds.keys[KEYS], on=KEYS)
            t = p.merge(rets[KEYS + [f"ret_h{h}"]], on=KEYS).rename(columns={f"ret_h{h}": "y"}).dropna()
            if self.metric in ("ic", "rank_ic"):
                v = metrics.regression_metrics(t["y"].to_numpy(), t["yhat"].to_numpy())[self.metric]
            elif self.metric == "icir":
                v = metrics.cross_sectional_ic(t[["timestamp", "y", "yhat"]], self.min_symbols)["icir"]
            else:
                v = metrics.trading_metrics(t, h, self.periods_per_year, self.cost_bps,
                                            threshold=self.threshold)["sharpe"]
            scores.append(float(v) if v is not None and np.isfinite(v) else 0.0)  # undefined (constant forecast): no skill
        return float(np.mean(scores))


def fold_hash(ds: Dataset) -> str:
    """What a study records of the data it scores on: :func:`~alphafactory.train.data_hash` of
    ``ds``, and with the prepared bars attached (raw OHLCV windows) also the bars' OHLCV and
    each row's bar, so a worker with other bars is refused like one with other features."""
    h = data_hash(ds)
    if ds.bars is None:
        return h
    import hashlib

    d = hashlib.sha256(h.encode())
    for a in (*(getattr(ds.bars, f) for f in raw_windows.FIELDS), ds.bars.pos, ds.bar_rows):
        d.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return d.hexdigest()[:16]


def needs_bars(names: tuple[str, ...] | list[str], extra: dict[str, dict[str, Any] | None]) -> bool:
    """Whether any of the models ``names`` reads raw OHLCV windows: a network whose family's
    constructor arguments (``extra``, per family) have ``neural.inputs.kind`` raw or both."""
    return wants_bars(*(extra.get(models.get(n).family) for n in names))


@dataclass
class Folds:
    """The scored CV folds of the development data, built once per stage or worker."""

    datasets: list[tuple[int, Dataset]]
    rets: pd.DataFrame  # labels' raw returns ret_h<k>, for the sharpe metric

    @classmethod
    def build(cls, ds: Dataset, labels: pd.DataFrame, folds: pd.DataFrame, val_frac: float, scope: str) -> Folds:
        end = label_ends(ds, labels)
        out = []
        for fid in sorted(int(f) for f in folds["fold"].unique()):
            fold_ds, _, short = fold_dataset(ds, folds[folds["fold"] == fid], end, val_frac, scope)
            if short:
                log.warning("tune: fold %d skipped (%s rows with features), as in the cv stage", fid, ", ".join(short))
                continue
            out.append((fid, fold_ds))
        if not out:
            raise ValueError("tune: no CV fold has enough train, val and test rows; expected fewer split.cv_folds")
        rets = labels[KEYS + [c for c in labels.columns if c.startswith("ret_h")]]
        return cls(out, rets)


@dataclass(frozen=True)
class StudySpec:
    """What scores a trial, besides the data: stored in the study's user attributes so a worker on
    another machine scores trials exactly as the stage does."""

    model: str
    block: dict[str, Any]       # the hand-set params block the trial's values override
    space: dict[str, Any]       # tune.spaces.<model>
    extra: dict[str, Any] | None  # family constructor arguments (neural: lookback, trainer)
    scorer: dict[str, Any]      # Scorer fields
    seed: int                   # train.seed: the models' seed
    task: str
    scope: str
    val_frac: float             # cv.val_frac: each fold's early-stopping share
    pruner: str
    n_trials: int
    startup_trials: int
    tune_seed: int
    data_hash: str

    def attrs(self) -> dict[str, Any]:
        return to_dict(dataclasses.asdict(self))


def objective(spec: StudySpec, folds: Folds, workdir: Path,
              spy: Callable[[Dataset], None] | None = None) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of one study: refit on every fold, report the running mean of the fold
    scores, prune when the pruner says so. ``spy`` (tests) sees each fold dataset fitted."""
    dists = distributions(spec.space, spec.model)
    scorer = Scorer(**spec.scorer)

    def run(trial: optuna.Trial) -> float:
        values = {k: suggest(trial, k, d) for k, d in dists.items()}
        block = {**spec.block, **values}
        scores = []
        for step, (fid, fold_ds) in enumerate(folds.datasets):
            if spy is not None:
                spy(fold_ds)
            t0 = time.perf_counter()
            res = fit_models(fold_ds, (spec.model,), {spec.model: block}, workdir / f"t{trial.number}f{fid}",
                             seed=spec.seed, extra=spec.extra, task=spec.task, scope=spec.scope)
            p = res[0].predictions
            s = scorer(p[p["segment"] == "test"], fold_ds, folds.rets)
            scores.append(s)
            trial.set_user_attr(f"fold{fid}", s)
            trial.set_user_attr(f"fold{fid}_seconds", round(time.perf_counter() - t0, 3))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("fold_se", float(np.std(scores, ddof=1) / math.sqrt(len(scores))) if len(scores) > 1
                            else float("nan"))
        return float(np.mean(scores))

    return run


def suggest(trial: optuna.Trial, name: str, d: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, d.low, d.high, log=d.log)
    return trial.suggest_float(name, d.low, d.high, log=d.log)


def make_pruner(kind: str, startup: int) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(startup, 1), n_warmup_steps=0)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def create_study(spec: StudySpec, storage: str, name: str, resume: bool) -> optuna.Study:
    """Create (or, with ``resume``, reopen) the study ``name`` in ``storage``, recording ``spec``
    and enqueuing its seeded startup points. Without ``resume`` an existing study of that name
    is deleted first: the run starts over."""
    if not resume:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=resume,
                                sampler=_sampler(spec, 0), pruner=make_pruner(spec.pruner, spec.startup_trials))
    old = study.user_attrs.get("spec")
    if old is not None and old != spec.attrs():
        changed = sorted(k for k in spec.attrs() if old.get(k) != spec.attrs()[k])
        raise ConfigError(f"tune.resume: the stored study {name!r} was run with other settings ({changed}); "
                          "expected the same, or tune.resume: false to start over")
    if old is None:
        study.set_user_attr("spec", spec.attrs())
        for p in startup_points(distributions(spec.space, spec.model), min(spec.startup_trials, spec.n_trials),
                                spec.tune_seed):
            study.enqueue_trial(p)
    return study


def _sampler(spec: StudySpec, worker: int) -> optuna.samplers.TPESampler:
    # startup points are enqueued, so TPE models from the first finished trial on; each worker gets
    # its own seed (the same seed in two processes would propose the same points)
    return optuna.samplers.TPESampler(seed=spec.tune_seed + 1000 * worker, n_startup_trials=spec.startup_trials,
                                      constant_liar=True)


def shared_storage(url: str) -> str | optuna.storages.BaseStorage:
    """The storage a worker shares a study through. A SQLite file: an RDB storage whose every
    transaction is ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite recipe). SQLite ignores the
    ``SELECT ... FOR UPDATE`` with which Optuna hands a waiting (enqueued) trial to one worker, so
    without it two workers can both take the same startup trial ("Cannot tell a COMPLETE trial");
    serialised transactions make the hand-over atomic. Any other URL (PostgreSQL) as it is."""
    if not url.startswith("sqlite:"):
        return url
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    @event.listens_for(storage.engine, "connect")
    def _no_implicit_begin(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # pysqlite's own BEGIN (deferred) off: the one below instead

    @event.listens_for(storage.engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    storage.engine.dispose()  # the connections opened before the hooks: closed, reopened with them
    return storage


def load_study(storage: str, name: str, worker: int) -> tuple[optuna.Study, StudySpec]:
    """Join an existing study as worker ``worker`` (its sampler seed)."""
    storage = shared_storage(storage)
    try:
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
    except KeyError:
        raise ConfigError(f"tune-worker --study: no study {name!r} in that storage; start the tune stage "
                          "(or one worker with the stage's settings) first") from None
    if "spec" not in attrs:
        raise ConfigError(f"tune-worker --study: {name!r} was not created by alphafactory's tune stage")
    spec = StudySpec(**attrs["spec"])
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec, worker),
                              pruner=make_pruner(spec.pruner, spec.startup_trials))
    return study, spec


def counted(study: optuna.Study) -> int:
    return sum(t.state.name in TRIAL_STATES or t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))


def optimize(study: optuna.Study, spec: StudySpec, folds: Folds, *, timeout: float | None = None,
             workdir: str | Path | None = None, callbacks: tuple[Callable, ...] = (),
             spy: Callable[[Dataset], None] | None = None) -> None:
    """Run trials of ``study`` until it holds ``spec.n_trials`` finished (complete or pruned)
    trials over all workers, or ``timeout`` seconds. Trial models are fitted in ``workdir`` (or
    a temporary directory) and deleted after each trial."""
    if folds.datasets and fold_hash(folds.datasets[0][1]) != spec.data_hash:
        raise ConfigError(f"tune: study {study.study_name!r} was created on other data (hash {spec.data_hash}); "
                          "expected this worker's data/features, labels and split to match the stage's (dvc pull)")
    left = spec.n_trials - counted(study)
    if left <= 0:
        return
    # a trial starts only while fewer than n_trials are finished or running, so two workers
    # overshoot by at most one trial each in a race; the enqueued startup points (WAITING) do not
    # count, or a study with n_trials <= startup_trials would stop after its first trial
    states = tuple(optuna.trial.TrialState[s] for s in (*TRIAL_STATES, "RUNNING"))
    stop = optuna.study.MaxTrialsCallback(spec.n_trials, states=states)
    with contextlib.ExitStack() as stack:
        tmp = Path(workdir) if workdir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="alphafactory-tune-")))
        bar = stack.enter_context(progress(total=spec.n_trials, desc=f"tune {spec.model}", unit="trial"))
        bar.update(spec.n_trials - left)

        def show(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update(1)
            log.info("tune %s trial %d %s: %s %s", spec.model, trial.number, trial.state.name.lower(),
                     "nan" if trial.value is None else f"{trial.value:+.4f}", trial.params)
            with contextlib.suppress(ValueError):  # no complete trial yet
                bar.set_postfix_str(f"best {st.best_value:+.4f} (trial {st.best_trial.number})")
            for p in tmp.glob(f"t{trial.number}f*"):
                _rmtree(p)

        study.optimize(objective(spec, folds, tmp, spy), n_trials=left, timeout=timeout,
                       callbacks=[stop, show, *callbacks], catch=())


def _optimize_as_worker(job: tuple[str, str, int, Folds, float | None]) -> int:
    """One cluster task of :func:`optimize_on_cluster`: join the study as worker ``job[2]`` and run
    its trials until the study holds its ``n_trials``. ``job``: (storage, study, worker, folds, timeout)."""
    storage, name, worker, folds, timeout = job
    study, spec = load_study(storage, name, worker)
    optimize(study, spec, folds, timeout=timeout)
    return worker


def optimize_on_cluster(fan: FanOut, study: optuna.Study, folds: Folds, storage: str, *,
                        timeout: float | None = None, callbacks: tuple[Callable, ...] = ()) -> None:
    """Run the trials of ``study`` on the ``compute`` cluster: one task per worker, each what
    ``alphafactory tune-worker --worker k`` does (k = 1..n_workers: its own sampler seed) on the
    same storage, the fold data carried by the task. ``callbacks`` then see every finished trial
    in trial order, here. The seeded startup trials are the in-process ones, point by point and
    value by value, whatever the number of workers; the TPE trials after them depend on it (as
    with ``tune-worker``). The workers must reach ``storage``: a SQLite file is made absolute,
    so workers on this machine share it; workers on other machines need ``tune.storage`` on a
    database server (PostgreSQL)."""
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = f"sqlite:///{Path(storage.removeprefix('sqlite:///')).resolve()}"  # a worker's cwd is its own
    jobs = [(storage, study.study_name, w, folds, timeout) for w in range(1, fan.workers + 1)]
    fan.map(_optimize_as_worker, jobs, desc=f"tune {study.study_name}", unit="worker")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    for trial in sorted(done, key=lambda t: t.number):
        for cb in callbacks:
            cb(study, trial)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value (the mean fold score; NaN when pruned), the
    running best, folds scored, seconds, the parameters (``p_<name>``) and each fold's score."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        folds = {k: v for k, v in t.user_attrs.items() if k.startswith("fold") and k[4:].isdigit()}
        secs = sum(v for k, v in t.user_attrs.items() if k.endswith("_seconds"))
        rows.append({"number": t.number, "state": t.state.name,
                     "value": t.value if t.value is not None else math.nan, "folds": len(folds),
                     "seconds": round(secs, 3), **{f"p_{k}": v for k, v in t.params.items()}, **folds})
    df = pd.DataFrame(rows).sort_values("number", kind="stable").reset_index(drop=True)
    df.insert(3, "best_so_far", df["value"].where(df["state"] == "COMPLETE").cummax().ffill())
    return df


def summary(study: optuna.Study, spec: StudySpec, importance: bool = True) -> dict[str, Any]:
    """The study's figures for metrics/tune: trials (complete, pruned), the best trial's value,
    params and fold scores with their standard error, the spread of CV scores over complete
    trials, and fANOVA parameter importances (None with fewer than 2 complete trials)."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    values = np.array([t.value for t in done], dtype=np.float64)
    out: dict[str, Any] = {"model": spec.model, "n_trials": sum(t.state.name in TRIAL_STATES for t in trials),
                           "complete": len(done), "pruned": sum(t.state.name == "PRUNED" for t in trials),
                           "metric": spec.scorer["metric"], "horizon": spec.scorer["horizon"]}
    if not done:
        return out
    best = study.best_trial
    out.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
               best_fold_se=best.user_attrs.get("fold_se"),
               best_folds={k: v for k, v in best.user_attrs.items() if k.startswith("fold") and k[4:].isdigit()},
               spread={"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max()),
                       "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan})
    out["importance"] = None
    if importance and len(done) > 1 and len(spec.space) > 0:
        with contextlib.suppress(RuntimeError, ValueError):  # constant values: importances undefined
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=spec.tune_seed))
            out["importance"] = {k: float(v) for k, v in imp.items()}
    return out


def run_tuning(cfg: TuneConfig, ds: Dataset, labels: pd.DataFrame, folds_table: pd.DataFrame, *,
               blocks: dict[str, Any], extra: dict[str, dict[str, Any] | None], train_seed: int, task: str,
               scope: str, val_frac: float, scorer: dict[str, Any], storage: str, workdir: Path,
               callbacks: Callable[[str], tuple[Callable, ...]] = lambda model: (), fan: FanOut | None = None
               ) -> tuple[dict[str, Any], pd.DataFrame, dict[str, dict[str, Any]]]:
    """Tune every model of ``cfg.models`` in turn (one study each, ``<cfg.study>-<model>``).

    ds: the development data (:func:`development_data`; with the prepared bars attached when a
    tuned network reads raw windows, :func:`needs_bars`); folds_table: the split stage's folds;
    blocks, extra: the hand-set params block per model and constructor arguments per family (as
    the cv stage reads them); scorer: :class:`Scorer` fields; callbacks(model): extra Optuna
    callbacks (dvclive); fan: under a cluster, the trials run on its workers
    (:func:`optimize_on_cluster`), else in this process. Returns (summary for metrics/tune, the trials of every study with a
    ``model`` column, the params the training stages apply: ``{model: best params}`` when
    ``cfg.apply``, else empty)."""
    from alphafactory.models import create

    folds = Folds.build(ds, labels, folds_table, val_frac, scope)
    h = fold_hash(folds.datasets[0][1])
    per_model, tables, applied = {}, [], {}
    for name in cfg.models:
        family = models.get(name).family
        if task not in models.get(name).tasks:
            raise ConfigError(f"tune.models: {name!r} does not support train.task {task!r}")
        space = cfg.spaces[name]
        block = dict(blocks.get(name) or {})
        for point in startup_points(distributions(space, name), 2, cfg.seed):  # bad keys fail now, not in trial 1
            try:
                create(name, {**block, **point}, horizons=ds.horizons, seed=train_seed, task=task,
                       **(extra.get(family) or {}))
            except ConfigError as e:
                raise ConfigError(f"tune.spaces.{name}: {e}") from None
        spec = StudySpec(model=name, block=block, space=dict(space), extra=extra.get(family), scorer=dict(scorer),
                         seed=train_seed, task=task, scope=scope, val_frac=val_frac, pruner=cfg.pruner, n_trials=cfg.n_trials,
                         startup_trials=cfg.startup_trials, tune_seed=cfg.seed, data_hash=h)
        study = create_study(spec, storage, f"{cfg.study}-{name}", cfg.resume)
        t0 = time.perf_counter()
        if fan is not None and fan.client is not None:
            optimize_on_cluster(fan, study, folds, storage, timeout=cfg.timeout, callbacks=callbacks(name))
        else:
            optimize(study, spec, folds, timeout=cfg.timeout, workdir=workdir / name, callbacks=callbacks(name))
        per_model[name] = summary(study, spec)
        seconds = time.perf_counter() - t0  # logged, not written: summary.json stays byte-identical on a rerun
        tables.append(trials_table(study).assign(model=name))
        if "best_params" not in per_model[name]:
            raise ValueError(f"tune: no trial of {name} completed (all pruned or timed out); expected at least one: "
                             "raise tune.n_trials or tune.timeout")
        log.info("tune %s: best %s %+.4f (trial %d of %d, %d pruned) in %.0f s: %s", name, cfg.metric,
                 per_model[name]["best_value"], per_model[name]["best_trial"], per_model[name]["n_trials"],
                 per_model[name]["pruned"], seconds, per_model[name]["best_params"])
        if cfg.apply:
            applied[name] = per_model[name]["best_params"]
    n = sum(m["n_trials"] for m in per_model.values())
    out = {"models": per_model, "n_trials": n, "apply": cfg.apply,
           # strategies tried beyond the one each tuned model enters the test selection as
           "extra_trials": n - len(per_model), "storage": storage.split(":", 1)[0].split("+", 1)[0]}
    trials = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {"model": pd.Series(dtype=str), "number": pd.Series(dtype="int64"), "state": pd.Series(dtype=str),
         "value": pd.Series(dtype="float64"), "best_so_far": pd.Series(dtype="float64")})
    return out, trials, applied


# -- `alphafactory tune-worker`: join a study from any machine with the repo and its data -------

def load_development_data(features: str, labels: str, segments: str,
                          bars: str | None = None) -> tuple[Dataset, pd.DataFrame]:
    """The tune stage's inputs read as it reads them: (development rows of the panel, labels).
    ``bars``: the prepared bars, attached (:func:`alphafactory.raw_windows.with_bars`) for the
    networks that read raw OHLCV windows; None: not read."""
    from alphafactory import dataset

    lab = pd.read_parquet(labels)
    unassigned = lab[KEYS].assign(segment="purged")  # the folds assign train/val/test
    ds = dataset.join_file(features, lab, unassigned, dataset.horizons_of(lab))
    if bars is not None:  # before the test rows go: a window's history may reach back anywhere
        ds = raw_windows.with_bars(ds, pd.read_parquet(bars))
    return development_data(ds, pd.read_parquet(segments)), lab


def stage_paths(dvc_yaml: str | Path = "dvc.yaml") -> dict[str, str]:
    """``--name path`` pairs of the tune stage's command in ``dvc_yaml``: the worker reads the
    stage's own inputs, whose paths are written there once."""
    import shlex

    import yaml

    cmd = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]["tune"]["cmd"]
    words = shlex.split(cmd)
    return {w[2:]: words[i + 1] for i, w in enumerate(words) if w.startswith("--") and i + 1 < len(words)}


def check_stage_params(cfg: TuneConfig, dvc_yaml: str | Path = "dvc.yaml") -> None:
    """Every tuned model's params block (and, for a network, ``train.lookback``,
    ``neural.trainer`` and ``neural.inputs``) must be a params dependency of the tune stage in ``dvc_yaml``, so that
    changing it reruns the search; a missing one is a ConfigError naming the key to add."""
    import yaml

    listed = set()
    for p in yaml.safe_load(Path(dvc_yaml).read_text())["stages"]["tune"].get("params", []):
        listed |= set(p) if isinstance(p, dict) else {p}
    for name in cfg.models:
        family = models.get(name).family
        needed = [f"{family}.{name}"] + (["train.lookback", "neural.trainer", "neural.inputs"]
                                         if family == "neural" else [])
        missing = [k for k in needed if k not in listed and k.split(".")[0] not in listed]
        if missing:
            raise ConfigError(f"tune.models: {name!r} needs {missing} among the tune stage's params in {dvc_yaml}, "
                              "so that changing them reruns the search; expected them added there")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--storage", required=True, help="Optuna RDB URL of the study, e.g. "
                        "postgresql+psycopg://user@host:5432/db (or sqlite:///data/tune/study.db)")
    parser.add_argument("--study", required=True, help="study name: <tune.study>-<model>, e.g. alphafactory-lightgbm")
    parser.add_argument("--worker", type=int, default=1, help="worker number >= 1: its sampler seed (tune.seed + 1000 * N)")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--dvc-yaml", default="dvc.yaml", help="where the tune stage's input paths are read")


def run(args: Any) -> int:
    """Run trials of an existing study until it holds its n_trials (see :func:`optimize`)."""
    if args.worker < 1:
        raise ConfigError(f"tune-worker --worker: got {args.worker}, expected >= 1 (0 is the tune stage)")
    study, spec = load_study(args.storage, args.study, args.worker)
    paths = stage_paths(args.dvc_yaml)
    raw = wants_bars(spec.extra)  # the study's networks read raw OHLCV windows: the bars too
    inputs = ("features", "labels", "segments", "folds") + (("bars",) if raw else ())
    if raw and "bars" not in paths:
        raise ConfigError(f"tune-worker: study {args.study!r} reads raw OHLCV windows (neural.inputs), but the tune "
                          f"stage's command in {args.dvc_yaml} has no --bars; expected --bars data/prepared/bars.parquet")
    missing = [paths[k] for k in inputs if not Path(paths[k]).exists()]
    if missing:
        raise ConfigError(f"tune-worker: missing {missing}; expected the tune stage's inputs "
                          "(dvc pull, or dvc repro split featurize)")
    ds, labels = load_development_data(paths["features"], paths["labels"], paths["segments"],
                                       paths["bars"] if raw else None)
    folds = Folds.build(ds, labels, pd.read_parquet(paths["folds"]), spec.val_frac, spec.scope)
    optimize(study, spec, folds, timeout=args.timeout)
    st = summary(study, spec, importance=False)
    log.info("tune-worker %d: study %s holds %d trials; best %s", args.worker, args.study, st["n_trials"],
             f"{st['best_value']:+.4f} (trial {st['best_trial']})" if "best_value" in st else "none yet")
    return 0
