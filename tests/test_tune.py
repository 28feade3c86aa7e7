"""The tune stage: its params are checked by key path, its objective never sees the test segment,
and two workers on one PostgreSQL study run it without duplicate trials."""
from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from alphafactory import tune
from alphafactory.config import from_dict
from alphafactory.dataset import KEYS, drop_warmup
from alphafactory.errors import ConfigError
from alphafactory.labels import LabelConfig, make_labels
from alphafactory.raw_windows import with_bars
from alphafactory.split import SplitConfig, assign_segments, make_folds
from alphafactory.train import data_hash
from alphafactory.tune import (
    Folds,
    StudySpec,
    TuneConfig,
    create_study,
    development_data,
    distributions,
    fold_hash,
    load_development_data,
    needs_bars,
    optimize,
    run_tuning,
    startup_points,
    trials_table,
)
from conftest import random_bars

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (1, 5)
SPACE = {"alpha": "log 0.01 1000", "clip": "float 1 6"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """3 symbols x 400 bars written as the tune stage's inputs (the bars, features with one
    informative column), plus a dvc.yaml whose tune stage names them, as a worker reads it."""
    d = tmp_path_factory.mktemp("tune")
    bars = random_bars(n_symbols=3, n_bars=400, seed=3)
    labels = make_labels(bars, LabelConfig(horizons=HORIZONS))
    split = SplitConfig(embargo=2, cv_folds=3)
    rng = np.random.default_rng(1)
    y1 = labels["y_h1"].to_numpy()
    features = drop_warmup(labels[KEYS].assign(knows=y1 + rng.normal(0, 2 * np.nanstd(y1), len(y1)),
                                               noise=rng.normal(size=len(y1))), 5)
    paths = {k: d / f"{k}.parquet" for k in ("features", "labels", "bars", "segments", "folds")}
    bars.to_parquet(paths["bars"])  # read only for a network under neural.inputs raw/both
    features.to_parquet(paths["features"])
    labels.to_parquet(paths["labels"])
    assign_segments(labels, HORIZONS, split).to_parquet(paths["segments"])
    make_folds(labels, HORIZONS, split).to_parquet(paths["folds"])
    cmd = "python stages/tune.py " + " ".join(f"--{k} {v}" for k, v in paths.items())
    (d / "dvc.yaml").write_text(f"stages:\n  tune:\n    cmd: {cmd}\n")
    return d, paths


def spec_for(folds: Folds, n_trials: int, startup: int, pruner: str = "median") -> StudySpec:
    return StudySpec(model="ridge", block={}, space=SPACE, extra=None,
                     scorer={"metric": "ic", "horizon": None}, seed=0, task="regression", scope="pooled",
                     val_frac=0.2, pruner=pruner, n_trials=n_trials, startup_trials=startup, tune_seed=7,
                     data_hash=data_hash(folds.datasets[0][1]))


def load(paths, poison: str | None = None) -> Folds:
    ds, labels = load_development_data(paths["features"], paths["labels"], paths["segments"])
    if poison is not None:  # poison rows of the *full* panel before the development rows are taken
        from alphafactory import dataset

        full = dataset.assemble(pd.read_parquet(paths["features"]), labels, labels[KEYS].assign(segment="purged"),
                                HORIZONS)
        seg = full.keys.merge(pd.read_parquet(paths["segments"]), on=KEYS, how="left")["segment"].to_numpy()
        rows = seg == "test" if poison == "test" else seg == "val"
        full.X, full.Y = full.X.copy(), full.Y.copy()
        full.X[rows] = 1e30
        full.Y[rows] = -1e3
        ds = development_data(full, pd.read_parquet(paths["segments"]))
    return Folds.build(ds, labels, pd.read_parquet(paths["folds"]), 0.2, "pooled")


def startup_values(study: optuna.Study) -> list:
    """(params, value) of the study's seeded startup trials, sorted: what two runs must share."""
    return sorted((tuple(sorted(t.params.items())), t.value) for t in study.get_trials()
                  if t.system_attrs.get("fixed_params"))


def run_study(folds: Folds, n_trials: int, startup: int, spy=None) -> optuna.Study:
    spec = spec_for(folds, n_trials, startup)
    study = create_study(spec, "sqlite:///:memory:", "s", resume=False)
    optimize(study, spec, folds, spy=spy)
    return study


# -- params ----------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({"models": ["nosuch"], "spaces": {}}, "tune.models: 'nosuch' is not a registered base model"),
    ({"models": ["ridge"]}, "tune.spaces.ridge: missing"),
    ({"models": ["ridge"], "spaces": {"ridge": {"alpha": "log 0 10"}}}, "tune.spaces.ridge.alpha: got 'log 0 10', expected low < high and low > 0"),
    ({"spaces": {"ridge": {"alpha": "uniform 1 2"}}}, "tune.spaces.ridge.alpha: got 'uniform 1 2', expected '<kind> <low> <high>'"),
    ({"spaces": {"lightgbm": {"num_leaves": "int 4 6.5"}}}, "tune.spaces.lightgbm.num_leaves: got 'int 4 6.5', expected numeric bounds (integers)"),
    ({"spaces": {"ridge": {"alpha": [1.0]}}}, "tune.spaces.ridge.alpha: got [1.0], expected at least two different choices"),
    ({"metric": "r2"}, "tune.metric: got 'r2', expected one of"),
    ({"n_trials": 0}, "tune.n_trials: got 0, expected >= 1"),
    ({"pruner": "hyperband"}, "tune.pruner: got 'hyperband'"),
    ({"nosuch": 1}, "tune: unknown key(s) ['nosuch']"),
])
def test_bad_tune_params_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(TuneConfig, data, "tune")
    assert str(e.value).startswith(message), str(e.value)


def test_the_default_params_tune_nothing_and_parse():
    import yaml

    cfg = from_dict(TuneConfig, yaml.safe_load((ROOT / "params.yaml").read_text())["tune"], "tune")
    assert cfg.models == () and cfg.apply is False
    for name, space in cfg.spaces.items():  # every declared space parses
        assert distributions(space, name)


def test_startup_points_depend_on_the_seed_only_and_stay_in_range():
    d = distributions({"a": "intlog 10 400", "b": "int 1 3", "c": "log 1e-3 1", "d": "float 0 1", "e": ["x", "y"]}, "m")
    p1, p2, p3 = startup_points(d, 50, 0), startup_points(d, 50, 0), startup_points(d, 50, 1)
    assert p1 == p2 and p1 != p3
    for p in p1:
        assert all(dist._contains(dist.to_internal_repr(p[k])) for k, dist in d.items())
    assert {p["b"] for p in p1} == {1, 2, 3}


# -- leakage ---------------------------------------------------------------------------------

def test_no_test_segment_row_reaches_the_objective(files):
    """Poisoning every test-segment row (features 1e30, labels -1e3) changes no trial's fold
    scores, and no fold dataset fitted holds a test-segment key or a later timestamp; poisoning the
    val segment instead (inside the folds) does change them, so the comparison can fail."""
    _, paths = files
    segs = pd.read_parquet(paths["segments"])
    test_keys = segs.loc[segs["segment"] == "test", KEYS]
    t0 = test_keys["timestamp"].min()
    seen = []

    def spy(fold_ds):
        seen.append(fold_ds.keys)

    clean = trials_table(run_study(load(paths), 5, 3))
    poisoned = trials_table(run_study(load(paths, poison="test"), 5, 3, spy=spy))
    fold_cols = [c for c in clean if c.startswith("fold") and c[4:].isdigit()]
    assert len(fold_cols) >= 2 and clean["state"].eq("COMPLETE").sum() >= 3
    pd.testing.assert_frame_equal(clean[["value", *fold_cols]], poisoned[["value", *fold_cols]])
    assert seen and all(k["timestamp"].max() < t0 for k in seen)
    assert all(k.merge(test_keys, on=KEYS).empty for k in seen)
    control = trials_table(run_study(load(paths, poison="val"), 5, 3))
    assert not np.allclose(clean["value"].to_numpy(), control["value"].to_numpy(), equal_nan=True)


@pytest.mark.parametrize("n_trials, startup", [(4, 8), (4, 4), (6, 2)])
def test_a_study_runs_exactly_n_trials(files, n_trials, startup):
    """n_trials finished trials whatever the number of enqueued startup points (the seeded points
    wait in the study; they must not count as trials, or a study with n_trials <= startup_trials
    would stop after its first)."""
    _, paths = files
    study = run_study(load(paths), n_trials, startup)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == n_trials, states


# -- many workers, one study -----------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_share_one_postgres_study(files, postgres_url):
    """Two `alphafactory tune-worker` processes on one study in a real PostgreSQL server: the
    study ends with n_trials trials (at most one more: each worker starts a trial only while fewer
    exist, and two may start the last one together), every trial number and parameter set once,
    and the seeded startup trials equal a single-worker run's, point by point and value by value.
    The TPE trials after them differ: TPE conditions on the finished trials, which two workers see
    in another order (and each worker has its own sampler seed)."""
    d, paths = files
    n, startup = 10, 6
    folds = load(paths)
    spec = spec_for(folds, n, startup)
    create_study(spec, postgres_url, "af-ridge", resume=False)
    cmd = [sys.executable, "-m", "alphafactory.cli", "tune-worker", "--storage", postgres_url, "--study", "af-ridge",
           "--dvc-yaml", str(d / "dvc.yaml")]
    procs = [subprocess.Popen([*cmd, "--worker", str(w)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for w in (1, 2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    assert all("tune-worker" in log_ and "trial" in log_ for log_ in logs)  # both ran trials
    shared = optuna.load_study(study_name="af-ridge", storage=postgres_url)
    trials = [t for t in shared.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert n <= len(trials) <= n + 1
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    single = run_study(folds, n, startup)

    assert len(startup_values(single)) == startup
    assert startup_values(shared) == startup_values(single)
    best_startup = max(v for _, v in startup_values(single))
    assert shared.best_value >= best_startup and single.best_value >= best_startup


def test_a_worker_on_other_data_is_refused(files):
    _, paths = files
    folds = load(paths)
    spec = spec_for(folds, 3, 1)
    other = StudySpec(**{**spec.attrs(), "data_hash": "0" * 16})
    study = create_study(other, "sqlite:///:memory:", "s", resume=False)
    with pytest.raises(ConfigError, match="was created on other data"):
        optimize(study, other, folds)


def test_a_tuned_model_without_its_block_in_the_stage_params_is_named(tmp_path):
    from alphafactory.tune import check_stage_params

    check_stage_params(from_dict(TuneConfig, {"models": ["lightgbm"], "spaces": {"lightgbm": {"num_leaves": "int 4 8"}}},
                                 "tune"), ROOT / "dvc.yaml")  # the documented example is listed
    cfg = from_dict(TuneConfig, {"models": ["lstm"], "spaces": {"lstm": {"hidden": "int 8 16"}}}, "tune")
    with pytest.raises(ConfigError, match=r"'lstm' needs \['neural.lstm', 'train.lookback', 'neural.trainer', 'neural.inputs'\]"):
        check_stage_params(cfg, ROOT / "dvc.yaml")


# -- networks on raw OHLCV windows (neural.inputs) -------------------------------------------

RAW = {"kind": "raw", "resolutions": [[1, 8], [5, 4]]}  # 20 bars of history


def tune_lstm(paths, inputs, storage: str, n_trials: int = 2):
    """The tune stage's run_tuning for lstm (2 trials, both seeded startup points) with
    ``neural.inputs`` ``inputs``, the bars attached as the stage attaches them."""
    extra = {"neural": {"lookback": 8, "trainer": {"epochs": 2, "batch_size": 256, "patience": 2},
                        "inputs": inputs}}
    cfg = from_dict(TuneConfig, {"models": ["lstm"], "n_trials": n_trials, "startup_trials": 2, "pruner": "none",
                                 "spaces": {"lstm": {"hidden": "int 4 12"}}}, "tune")
    ds, labels = load_development_data(paths["features"], paths["labels"], paths["segments"],
                                       paths["bars"] if needs_bars(cfg.models, extra) else None)
    return run_tuning(cfg, ds, labels, pd.read_parquet(paths["folds"]), blocks={}, extra=extra, train_seed=0,
                      task="regression", scope="pooled", val_frac=0.2, scorer={"metric": "ic", "horizon": None},
                      storage=storage, workdir=paths["bars"].parent / "work")


def test_a_network_on_raw_windows_is_tuned_and_a_worker_joins_it(files, tmp_path):
    """lstm under neural.inputs.kind raw: the stage attaches the prepared bars, every trial
    completes, and the fold scores differ from the same trials on the features (same seeded
    points, other inputs). A tune-worker joins the study, reading the bars named in dvc.yaml; one
    whose dvc.yaml names no --bars is refused in one line."""
    d, paths = files
    assert needs_bars(("lstm",), {"neural": {"inputs": RAW}})
    assert not needs_bars(("ridge",), {"neural": {"inputs": RAW}})  # only a network reads them
    feats = tune_lstm(paths, None, "sqlite:///:memory:")[1]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary, raw, _ = tune_lstm(paths, RAW, url)
    assert summary["models"]["lstm"]["complete"] == 2 and raw["state"].eq("COMPLETE").all()
    fold_cols = [c for c in raw if c.startswith("fold") and c[4:].isdigit()]
    assert len(fold_cols) >= 2 and np.isfinite(raw[fold_cols].to_numpy()).all()
    assert raw["p_hidden"].tolist() == feats["p_hidden"].tolist()  # the same seeded points ...
    assert not np.allclose(raw[fold_cols].to_numpy(), feats[fold_cols].to_numpy())  # ... on other inputs

    # a worker joins with one more trial to run (its data hash covers the bars)
    study = optuna.load_study(study_name="alphafactory-lstm", storage=url)
    spec = StudySpec(**{**study.user_attrs["spec"], "n_trials": 3})
    study.set_user_attr("spec", spec.attrs())
    args = argparse.Namespace(storage=url, study="alphafactory-lstm", worker=1, timeout=None,
                              dvc_yaml=str(d / "dvc.yaml"))
    assert tune.run(args) == 0
    done = optuna.load_study(study_name="alphafactory-lstm", storage=url).get_trials()
    assert sum(t.state.name == "COMPLETE" for t in done) == 3
    no_bars = tmp_path / "dvc.yaml"
    no_bars.write_text((d / "dvc.yaml").read_text().replace(f" --bars {paths['bars']}", ""))
    with pytest.raises(ConfigError, match=r"reads raw OHLCV windows .* has no --bars; expected --bars"):
        tune.run(argparse.Namespace(**{**vars(args), "dvc_yaml": str(no_bars)}))


def test_a_worker_with_other_bars_is_refused(files, tmp_path):
    """The study's data hash covers the bars a raw network reads: the same features with other
    bars are other data; a feature-only study's hash is what it was."""
    _, paths = files
    ds, labels = load_development_data(paths["features"], paths["labels"], paths["segments"], paths["bars"])
    plain, _ = load_development_data(paths["features"], paths["labels"], paths["segments"])
    assert fold_hash(plain) == data_hash(plain)  # feature-only studies keep their hash
    other = pd.read_parquet(paths["bars"]).assign(volume=lambda b: b["volume"] * 2)
    moved = with_bars(replace(plain, bars=None, bar_rows=None), other)
    assert len({fold_hash(ds), fold_hash(moved), fold_hash(plain)}) == 3
    # a cluster task carries the folds, bars included: the same hash over there
    assert fold_hash(pickle.loads(pickle.dumps(ds))) == fold_hash(ds)
    folds = Folds.build(ds, labels, pd.read_parquet(paths["folds"]), 0.2, "pooled")
    theirs = Folds.build(moved, labels, pd.read_parquet(paths["folds"]), 0.2, "pooled")
    spec = StudySpec(model="lstm", block={}, space={"hidden": "int 4 12"},
                     extra={"lookback": 8, "trainer": {"epochs": 1}, "inputs": RAW},
                     scorer={"metric": "ic", "horizon": None}, seed=0, task="regression", scope="pooled",
                     val_frac=0.2, pruner="none", n_trials=1, startup_trials=1, tune_seed=7,
                     data_hash=fold_hash(theirs.datasets[0][1]))
    study = create_study(spec, "sqlite:///:memory:", "s", resume=False)
    with pytest.raises(ConfigError, match="was created on other data"):
        optimize(study, spec, folds)
