"""The ``compute`` section: the stages' fan-out gives the in-process results, byte for byte, on a
real Dask cluster (a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, started
here with the CLIs), also when a worker is killed mid-stage (cv folds, per-symbol fits,
permutation importance, featurize batches, backtest's refit blocks; tune's trials: its seeded
startup trials); an unreachable scheduler is one clear error naming its address; in process, Dask
is never imported. ``distributed: true`` boosters train over both workers and forecast close to
one machine (the IC differences are printed: ``pytest -s``)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphafactory import models
from alphafactory.compute import ComputeConfig, FanOut, fan_out
from alphafactory.config import from_dict
from alphafactory.dataset import KEYS, assemble, drop_warmup
from alphafactory.errors import ConfigError
from alphafactory.evaluation.cv import CVConfig, cross_validate
from alphafactory.evaluation.explain import permutation_importance
from alphafactory.labels import LabelConfig, make_labels
from alphafactory.params_check import check_params
from alphafactory.split import SplitConfig, make_folds
from alphafactory.train import fit_models
from conftest import random_bars
from test_per_symbol import dataset as per_symbol_dataset
from test_tune import files  # noqa: F401  (a fixture: the tune stage's inputs)

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).parent / "dask")
HORIZONS = (1, 5)
LGB = {"lightgbm": {"n_estimators": 60, "early_stopping_rounds": 10, "min_child_samples": 20, "num_threads": 1}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, a Client watching it): a real scheduler and two single-threaded
    worker processes (each under its nanny, which restarts it if it dies), stopped after."""
    from dask.distributed import Client

    log = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "passive"}
    cmds = [[DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"]]
    cmds += [[DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}",
              "--local-directory", str(log / f"w{i}")] for i in range(2)]
    procs = []
    try:
        for i, cmd in enumerate(cmds):
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(log / f"{i}.log", "w")))  # noqa: SIM115
            if i == 0:
                time.sleep(1.0)
        client = Client(address, timeout=30)
        client.wait_for_workers(2, timeout=60)
        yield address, client
        client.close()
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def cv_panel():
    """3 symbols x 700 bars with two features, expanding folds (as tests/test_cv.py)."""
    bars = random_bars(n_symbols=3, n_bars=700, seed=11)
    labels = make_labels(bars, LabelConfig(horizons=HORIZONS))
    folds = make_folds(labels, HORIZONS, SplitConfig(embargo=2, cv_folds=4))
    rng = np.random.default_rng(1)
    y1 = labels["y_h1"].to_numpy()
    features = labels[KEYS].assign(knows=y1 + rng.normal(0, 0.5 * np.nanstd(y1), len(y1)),
                                   noise=rng.normal(size=len(y1)), noise2=rng.normal(size=len(y1)))
    ds = assemble(drop_warmup(features, 5), labels, labels[KEYS].assign(segment="purged"), HORIZONS)
    return ds, labels, folds


def _cv(cv_panel, fan=None):
    ds, labels, folds = cv_panel
    cfg = CVConfig(models=("ridge", "lightgbm"), val_frac=0.25)
    return json.dumps(cross_validate(ds, labels, folds, cfg, blocks=LGB, seed=3, fan=fan), sort_keys=True)


def _workers(stream) -> set[str]:
    """Workers that ran a task of this package's fan-out, from a ``get_task_stream`` record."""
    return {t["worker"] for t in stream.data if "_call" in t["key"]}


# -- in process -------------------------------------------------------------------------------

def test_in_process_is_a_plain_loop_and_imports_no_dask():
    code = ("import sys\nfrom alphafactory.compute import ComputeConfig, fan_out\n"
            "import alphafactory.train, alphafactory.evaluation.cv, alphafactory.evaluation.explain\n"
            "with fan_out(ComputeConfig()) as fan:\n    out = fan.map(abs, [1, -2, 3])\n"
            "assert out == [1, 2, 3], out\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'joblib')))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_config_is_checked_with_the_rest_of_params():
    assert from_dict(ComputeConfig, {"cluster": "tcp://10.0.0.5:8786"}, "compute").cluster == "tcp://10.0.0.5:8786"
    with pytest.raises(ConfigError, match=r"compute.cluster: got '10.0.0.5', expected null .*'local' or a scheduler"):
        from_dict(ComputeConfig, {"cluster": "10.0.0.5"}, "compute")
    with pytest.raises(ConfigError, match=r"compute.workers: got 0, expected >= 1"):
        from_dict(ComputeConfig, {"cluster": "local", "workers": 0}, "compute")
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["compute"]["cluster"] is None  # the default: in process
    params["compute"]["nosuch"] = 1
    with pytest.raises(ConfigError, match=r"compute: unknown key\(s\) \['nosuch'\]"):
        check_params(params)


def test_unreachable_scheduler_is_one_clear_error_naming_the_address():
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with fan_out(ComputeConfig(cluster=address, connect_timeout=1.0)) as fan:
        with pytest.raises(ConfigError, match=rf"compute.cluster: no Dask scheduler answered at {address} within 1 s"):
            fan.map(abs, [1, -2])
    assert time.perf_counter() - t0 < 15


def test_an_unreachable_scheduler_fails_the_stage_in_one_line(tmp_path):
    """The cv stage, run as DVC runs it, ends with one line (exit 2), not a traceback."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    address = f"tcp://127.0.0.1:{_free_port()}"
    params["compute"] = {"cluster": address, "connect_timeout": 1.0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ds, labels, folds = _small_stage_inputs(tmp_path)
    p = subprocess.run([sys.executable, "stages/cv.py", "--params", str(tmp_path / "params.yaml"),
                        "--features", ds, "--labels", labels, "--folds", folds,
                        "--bars", str(tmp_path / "bars.parquet"),  # read under neural.inputs raw/both only
                        "--metrics", str(tmp_path / "cv.json"), "--fold-spans", str(tmp_path / "spans.json")],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: compute.cluster: no Dask scheduler answered at {address}"), p.stderr
    assert "Traceback" not in p.stderr


def _small_stage_inputs(tmp_path: Path) -> tuple[str, str, str]:
    bars = random_bars(n_symbols=2, n_bars=400, seed=2)
    labels = make_labels(bars, LabelConfig(horizons=(1, 5, 20)))
    folds = make_folds(labels, (1, 5, 20), SplitConfig(cv_folds=2))
    features = drop_warmup(labels[KEYS].assign(f=np.arange(len(labels), dtype=np.float32)), 5)
    paths = [str(tmp_path / n) for n in ("features.parquet", "labels.parquet", "folds.parquet")]
    for df, p in zip((features, labels, folds), paths, strict=True):
        df.to_parquet(p)
    return paths[0], paths[1], paths[2]


# -- on a real cluster ------------------------------------------------------------------------

@pytest.mark.slow
def test_cv_folds_on_the_cluster_match_in_process(cluster, cv_panel):
    address, client = cluster
    from dask.distributed import get_task_stream

    here = _cv(cv_panel)
    with get_task_stream(client=client) as stream, fan_out(ComputeConfig(cluster=address)) as fan:
        assert fan.workers == 2
        there = _cv(cv_panel, fan=fan)
    assert there == here  # every figure of every fold, byte for byte
    assert len(_workers(stream)) == 2  # the folds really were spread over both workers


@pytest.mark.slow
def test_per_symbol_fits_on_the_cluster_match_in_process(cluster, tmp_path):
    address, client = cluster
    ds = per_symbol_dataset(n_sym=4)
    names = ("ridge", "lightgbm")
    from dask.distributed import get_task_stream

    here = fit_models(ds, names, LGB, tmp_path / "here", seed=1, scope="per_symbol")
    with get_task_stream(client=client) as stream, fan_out(ComputeConfig(cluster=address)) as fan:
        there = fit_models(ds, names, LGB, tmp_path / "there", seed=1, scope="per_symbol", fan=fan)
    assert len(_workers(stream)) == 2
    for a, b in zip(here, there, strict=True):
        pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=True)
    # the saved models (written by the driver from what the workers returned): the same bytes
    saved = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*") if p.is_file())
    assert len(saved) > 8
    for f in saved:
        assert (tmp_path / "there" / f).read_bytes() == (tmp_path / "here" / f).read_bytes(), f
    X, syms = ds.X[-20:], ds.keys["symbol"].to_numpy()[-20:]
    np.testing.assert_array_equal(models.load(tmp_path / "there" / "lightgbm").predict(X, syms),
                                  here[1].model.predict(X, syms))


def _wide_dataset(n_sym: int = 2, n_bars: int = 5000, n_features: int = 237):
    """Symbols with the default feature count: big enough that numpy's BLAS splits ridge's
    products over threads in the driver (but not on a worker, whose BLAS has one thread)."""
    from alphafactory.dataset import Dataset

    rng = np.random.default_rng(5)
    X = rng.normal(size=(n_sym * n_bars, n_features)).astype(np.float32)
    Y = (X[:, :3] @ np.full((3, 2), 0.1) + rng.normal(size=(len(X), 2))).astype(np.float32)
    pos = np.tile(np.arange(n_bars), n_sym)
    seg = np.where(pos < 3000, "train", np.where(pos < 4000, "val", "test"))
    keys = pd.DataFrame({"symbol": np.repeat([f"S{i}" for i in range(n_sym)], n_bars),
                         "timestamp": np.tile(pd.date_range("2000-01-01", periods=n_bars, freq="D").to_numpy(), n_sym)})
    return Dataset(keys=keys, X=X, Y=Y, feature_names=[f"f{i}" for i in range(n_features)], horizons=(1, 2),
                   segment=seg, sym_codes=np.repeat(np.arange(n_sym), n_bars), vol=np.full(len(X), 0.01))


@pytest.mark.slow
def test_ridge_on_many_features_on_the_cluster_matches_in_process(cluster, tmp_path):
    """Without single-threaded BLAS in every piece of work, the driver's two BLAS threads and the
    worker's one give ridge forecasts that differ in their last bits."""
    address, _ = cluster
    ds = _wide_dataset()
    here = fit_models(ds, ("ridge",), {}, tmp_path / "here", seed=0, scope="per_symbol")[0]
    with fan_out(ComputeConfig(cluster=address)) as fan:
        there = fit_models(ds, ("ridge",), {}, tmp_path / "there", seed=0, scope="per_symbol", fan=fan)[0]
    pd.testing.assert_frame_equal(here.predictions, there.predictions, check_exact=True)


@pytest.mark.slow
def test_permutation_importance_on_the_cluster_matches_in_process(cluster):
    address, _ = cluster
    ds = per_symbol_dataset(n_sym=1)  # one symbol: the pooled ridge learns its sign
    model = models.create("ridge", None, horizons=ds.horizons, seed=0)
    model.fit(*[_xy(ds, s) for s in ("train", "val")])
    X, Y = ds.X[ds.rows("test")], ds.Y[ds.rows("test")]
    groups = {f: [i] for i, f in enumerate(ds.feature_names)}
    here = permutation_importance(model, X, Y, groups, n_seeds=3, seed=4)
    with fan_out(ComputeConfig(cluster=address)) as fan:
        there = permutation_importance(model, X, Y, groups, n_seeds=3, seed=4, fan=fan)
    pd.testing.assert_frame_equal(here, there, check_exact=True)
    assert here.loc[here["feature"] == "f0", "ic_drop"].min() > 0.1  # the feature the targets load on


@pytest.mark.slow
@pytest.mark.parametrize("freq", ["1D", "1h"])
def test_featurize_in_symbol_batches_on_the_cluster_matches_in_process(cluster, freq):
    """Per-symbol groups in batches of whole symbols on the workers, the cross-sectional ones on
    the whole panel: the in-process frame of the same features.symbol_batch, byte for byte."""
    from dask.distributed import get_task_stream

    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
    from alphafactory.features import FeatureConfig, compute_features, compute_features_batched

    address, client = cluster
    bars = make_synthetic(SyntheticConfig(symbols=5, bars=400, freq=freq), horizons=(1,))[0]
    cfg = FeatureConfig(symbol_batch=2)
    assert "cross_sectional" in cfg.groups
    here = compute_features_batched(bars, cfg)
    with get_task_stream(client=client) as stream, fan_out(ComputeConfig(cluster=address)) as fan:
        there = compute_features_batched(bars, cfg, fan=fan)
    assert len([t for t in stream.data if "_call" in t["key"]]) == 3  # batches of 2, 2 and 1 symbols
    assert any(c.startswith("cs_rank_") for c in here.columns)
    pd.testing.assert_frame_equal(here, there, check_exact=True)
    # and, up to the last bits of the EW features, the one-batch frame
    whole = compute_features(bars, cfg)
    pd.testing.assert_frame_equal(whole, there, check_exact=False, rtol=1e-5)
    assert compute_features_batched(bars, FeatureConfig()).equals(compute_features(bars, FeatureConfig()))


def _xy(ds, segment):
    from alphafactory.models.base import XY

    rows = ds.rows(segment)
    return XY(ds.X[rows], ds.Y[rows])


@pytest.mark.slow
def test_a_worker_killed_mid_stage_is_replaced_and_the_run_gives_the_same_results(cluster, cv_panel):
    """SIGKILL the worker running a fold once another fold has finished: the nanny starts a new
    worker, the scheduler reruns the lost fold, and the cv result is the in-process one."""
    address, client = cluster
    here = _cv(cv_panel)
    pids = client.run(os.getpid)  # {worker address: its process id}
    out: dict = {}

    def run() -> None:
        try:
            with fan_out(ComputeConfig(cluster=address)) as fan:
                out["there"] = _cv(cv_panel, fan=fan)
        except BaseException as e:  # re-raised in the test thread below
            out["error"] = e

    def done_tasks(dask_scheduler) -> int:
        return sum(ts.state == "memory" and "_call" in str(ts.key) for ts in dask_scheduler.tasks.values())

    thread = threading.Thread(target=run)
    thread.start()
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline and thread.is_alive():
        if client.run_on_scheduler(done_tasks) >= 1:
            busy = [w for w, keys in client.processing().items() if any("_call" in str(k) for k in keys)]
            if busy:
                victim = busy[0]
                os.kill(pids[victim], signal.SIGKILL)
                break
        time.sleep(0.05)
    thread.join(timeout=120)
    assert victim is not None, "no fold was running on a worker after the first finished"
    assert "error" not in out, out.get("error")
    assert out["there"] == here
    client.wait_for_workers(2, timeout=60)  # the nanny replaced the killed worker process
    now = client.run(os.getpid)
    assert victim not in now and pids[victim] not in now.values()


def _signal_dataset(n_sym: int = 4, n_bars: int = 1500, seed: int = 7):
    """A pooled panel with a linear and an interaction signal (IC ~0.3), classes for the
    classification task: train 60 %, val 20 %, test 20 % of each symbol's bars."""
    from alphafactory.dataset import Dataset

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_sym * n_bars, 6)).astype(np.float32)
    signal = 0.3 * X[:, 0] + 0.3 * np.tanh(X[:, 1] * X[:, 2])
    Y = np.stack([signal + rng.normal(size=len(X)) for _ in HORIZONS], 1).astype(np.float32)
    C = np.where(Y > 0.4, 2.0, np.where(Y < -0.4, 0.0, 1.0)).astype(np.float32)
    pos = np.tile(np.arange(n_bars), n_sym)
    seg = np.where(pos < 0.6 * n_bars, "train", np.where(pos < 0.8 * n_bars, "val", "test"))
    keys = pd.DataFrame({"symbol": np.repeat([f"S{i}" for i in range(n_sym)], n_bars),
                         "timestamp": np.tile(pd.date_range("2000-01-01", periods=n_bars, freq="D").to_numpy(), n_sym)})
    return Dataset(keys=keys, X=X, Y=Y, feature_names=[f"f{i}" for i in range(6)], horizons=HORIZONS, segment=seg,
                   sym_codes=np.repeat(np.arange(n_sym), n_bars), vol=np.full(len(X), 0.01), C=C)


BOOST = {"lightgbm": {"n_estimators": 400, "early_stopping_rounds": 20, "num_threads": 1},
         "xgboost": {"n_estimators": 400, "early_stopping_rounds": 20, "nthread": 1}}


def _test_ic(res, ds) -> dict[int, float]:
    p = res.predictions[res.predictions["segment"] == "test"]
    truth = ds.keys.assign(**{f"y{h}": ds.Y[:, j] for j, h in enumerate(ds.horizons)})
    out = {}
    for h in ds.horizons:
        t = p[p["horizon"] == h].merge(truth, on=KEYS)
        out[h] = float(np.corrcoef(t["yhat"], t[f"y{h}"])[0, 1])
    return out


@pytest.mark.slow
def test_distributed_boosters_on_the_cluster_forecast_as_one_machine(cluster, tmp_path):
    """boosting.<m>.distributed: true trains one booster over both workers (lightgbm.dask,
    xgboost.dask; rows split between them), early-stopped on val: its test IC is within 0.02 of
    the single-machine fit's on the same data, its forecasts correlate > 0.95 with them, and it
    is saved in the native format the single-machine model is, loading back to the same forecasts;
    a second distributed fit on the same cluster gives the same XGBoost forecasts, bit for bit,
    and LightGBM forecasts of the same IC within 0.02 (not the same bits: see models/distributed.py)."""
    from dask.distributed import get_task_stream

    address, client = cluster
    ds = _signal_dataset()
    names = ("lightgbm", "xgboost")
    here = fit_models(ds, names, BOOST, tmp_path / "here", seed=3)
    dist_blocks = {k: {**b, "distributed": True} for k, b in BOOST.items()}
    with get_task_stream(client=client) as stream, fan_out(ComputeConfig(cluster=address)) as fan:
        there = fit_models(ds, names, dist_blocks, tmp_path / "there", seed=3, fan=fan)
        again = fit_models(ds, names, dist_blocks, tmp_path / "again", seed=3, fan=fan)
    assert len({t["worker"] for t in stream.data}) == 2  # both workers trained
    xgb_there, xgb_again = there[1].predictions, again[1].predictions
    pd.testing.assert_frame_equal(xgb_there, xgb_again, check_exact=True)  # XGBoost: the same booster
    # LightGBM: the Dask interface ranks the machines in the scheduler's order, which varies from
    # run to run, and a machine's rank decides which features it bins on its own rows: close only
    ic1, ic2 = _test_ic(there[0], ds), _test_ic(again[0], ds)
    assert all(abs(ic1[h] - ic2[h]) < 0.02 for h in HORIZONS), (ic1, ic2)
    rows = []
    for a, b in zip(here, there, strict=True):
        ic_a, ic_b = _test_ic(a, ds), _test_ic(b, ds)
        pa, pb = (r.predictions[r.predictions["segment"] == "test"]["yhat"].to_numpy() for r in (a, b))
        for h in ds.horizons:
            rows.append(f"{a.name:9s} h{h}: single-machine IC {ic_a[h]:+.4f}, distributed {ic_b[h]:+.4f}, "
                        f"difference {ic_b[h] - ic_a[h]:+.4f}")
            assert abs(ic_b[h] - ic_a[h]) < 0.02, rows[-1]
            assert ic_b[h] > 0.2
        assert np.corrcoef(pa, pb)[0, 1] > 0.95
        stopped = [len(v["val"]) for v in b.model.history_.values()]
        assert all(n < 400 for n in stopped), stopped  # early-stopped on val, not run to n_estimators
        saved = sorted(p.name for p in (tmp_path / "there" / a.name).iterdir())
        assert saved == sorted(p.name for p in (tmp_path / "here" / a.name).iterdir())
        loaded = models.load(tmp_path / "there" / a.name)
        np.testing.assert_allclose(loaded.predict(ds.X[-50:]), b.model.predict(ds.X[-50:]), rtol=1e-6)
    print("\n" + "\n".join(rows))  # the IC differences, in the test output (pytest -s)


@pytest.mark.slow
def test_distributed_lightgbm_classifier_on_the_cluster(cluster, tmp_path):
    address, _ = cluster
    ds = _signal_dataset(n_bars=800)
    block = {"lightgbm": {**BOOST["lightgbm"], "distributed": True}}
    here = fit_models(ds, ("lightgbm",), BOOST, tmp_path / "here", seed=3, task="classification")[0]
    with fan_out(ComputeConfig(cluster=address)) as fan:
        there = fit_models(ds, ("lightgbm",), block, tmp_path / "there", seed=3, task="classification", fan=fan)[0]
    proba = there.model.predict_proba(ds.X[-100:])
    np.testing.assert_allclose(proba.sum(axis=2), 1.0, rtol=1e-6)
    ic_a, ic_b = _test_ic(here, ds), _test_ic(there, ds)
    assert all(abs(ic_b[h] - ic_a[h]) < 0.03 for h in HORIZONS), (ic_a, ic_b)


def test_distributed_without_a_cluster_is_one_clear_error(tmp_path):
    import yaml

    ds = _signal_dataset(n_sym=1, n_bars=200)
    block = {"xgboost": {**BOOST["xgboost"], "distributed": True}}
    with pytest.raises(ConfigError, match=r"^boosting.xgboost.distributed: true trains on a Dask cluster, but "
                                          r"compute.cluster is null; expected compute.cluster: local"):
        fit_models(ds, ("xgboost",), block, tmp_path, seed=0)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["boosting"]["lightgbm"]["distributed"] is False  # the default
    params["boosting"]["lightgbm"]["distributed"] = True
    with pytest.raises(ConfigError, match=r"^boosting.lightgbm.distributed: true trains on a Dask cluster"):
        check_params(params)
    params["train"]["scope"] = "per_symbol"
    params["compute"]["cluster"] = "local"
    with pytest.raises(ConfigError, match=r"^boosting.lightgbm.distributed: true with train.scope per_symbol"):
        check_params(params)
    params["train"]["scope"] = "pooled"
    assert "lightgbm" in check_params(params)


@pytest.mark.slow
def test_backtest_refit_blocks_on_the_cluster_match_in_process(cluster, tmp_path):
    """The walk-forward blocks, one piece of work each, on both workers: the forecasts (ridge and
    LightGBM) and the block spans of the in-process run, byte for byte."""
    from dask.distributed import get_task_stream

    from alphafactory.evaluation.backtest import BacktestConfig, walk_forward
    from alphafactory.split import refit_blocks
    from test_backtest import EMBARGO, break_panel

    labels, test, feats, _, _ = break_panel(flip=True)
    cfg = BacktestConfig(models=("ridge", "lightgbm"), retrain_every=60, val_frac=0.2)
    table = refit_blocks(labels, test, HORIZONS, EMBARGO, cfg.retrain_every, cfg.window_bars)
    ds = assemble(feats, labels, labels[KEYS].assign(segment="purged"), HORIZONS)
    address, client = cluster
    here = walk_forward(ds, labels, table, cfg, blocks=LGB, seed=2, workdir=tmp_path)
    with get_task_stream(client=client) as stream, fan_out(ComputeConfig(cluster=address)) as fan:
        there = walk_forward(ds, labels, table, cfg, blocks=LGB, seed=2, fan=fan)
    assert table["fold"].nunique() >= 4 and len(_workers(stream)) == 2
    pd.testing.assert_frame_equal(here[0], there[0], check_exact=True)
    assert json.dumps(here[1], sort_keys=True) == json.dumps(there[1], sort_keys=True)
    assert set(here[0]["model"]) == {"ridge_wf", "lightgbm_wf"}


@pytest.mark.slow
def test_tune_trials_on_the_cluster_share_one_study(cluster, files, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    """The tune stage's trials as one task per worker on one SQLite study (a relative path: the
    workers' working directories are their own): n_trials trials (one more at most in a race),
    each number once, the seeded startup trials equal to the in-process run's, point by point and
    value by value, and the callbacks see every trial here, in trial order."""
    from dask.distributed import get_task_stream

    from alphafactory.tune import create_study, optimize_on_cluster
    from test_tune import load, run_study, spec_for, startup_values

    address, client = cluster
    n, startup = 6, 4
    folds = load(files[1])
    spec = spec_for(folds, n, startup)
    monkeypatch.chdir(tmp_path)
    storage = "sqlite:///study.db"
    study = create_study(spec, storage, "s", resume=False)
    seen = []
    with get_task_stream(client=client) as stream, fan_out(ComputeConfig(cluster=address)) as fan:
        optimize_on_cluster(fan, study, folds, storage, callbacks=(lambda st, t: seen.append(t.number),))
    assert len(_workers(stream)) == 2  # both workers ran trials
    done = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert n <= len(done) <= n + 1 and len({t.number for t in done}) == len(done)
    assert seen == sorted(t.number for t in study.get_trials() if t.state.is_finished())
    single = run_study(folds, n, startup)

    assert len(startup_values(single)) == startup
    assert startup_values(study) == startup_values(single)


def test_fan_out_in_process_keeps_item_order():
    assert FanOut().map(str, range(5)) == ["0", "1", "2", "3", "4"]


@pytest.mark.slow
def test_the_pipeline_on_the_cluster_reruns_nothing_then_writes_the_same_bytes(project, cluster):
    """The small pipeline, its cv and explain stages forced to rerun on the cluster: setting
    compute reruns only check_params, and the rerun writes the in-process outputs byte for byte."""
    import yaml
    from dask.distributed import get_task_stream

    from pipeline_utils import ran_stages, sh

    repo, _ = project
    address, client = cluster
    outputs = [repo / "metrics/cv.json", *sorted((repo / "metrics/explain").glob("*.csv"))]
    before = {p: p.read_bytes() for p in outputs}
    try:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["compute"] = {**params.get("compute", {}), "cluster": address}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert ran_stages(sh(repo, "dvc", "repro")) == {"check_params"}  # results do not depend on it
        with get_task_stream(client=client) as stream:
            out = sh(repo, "dvc", "repro", "-f", "-s", "cv", "explain")
        assert ran_stages(out) == {"cv", "explain"}, out
        assert len(_workers(stream)) == 2
        for p, data in before.items():
            assert p.read_bytes() == data, p
        assert "up to date" in sh(repo, "dvc", "status")
    finally:
        sh(repo, "git", "checkout", "--", ".")
        sh(repo, "dvc", "checkout", "-q")


@pytest.mark.slow
def test_the_boosting_stage_trains_distributed_on_the_cluster(project, cluster):
    """`dvc repro train@boosting` with both boosters distributed on the cluster: the stage runs,
    its models are the native files a bundle reads, and they forecast like the in-process ones."""
    import yaml

    from pipeline_utils import ran_stages, sh

    repo, _ = project
    address, _ = cluster
    before = pd.read_parquet(repo / "data/preds/boosting.parquet")
    try:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["compute"] = {**params.get("compute", {}), "cluster": address}
        for n in ("lightgbm", "xgboost"):
            params["boosting"][n]["distributed"] = True
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = sh(repo, "dvc", "repro", "train@boosting")
        assert {"check_params", "train@boosting"} <= ran_stages(out), out
        after = pd.read_parquet(repo / "data/preds/boosting.parquet")
        both = before.merge(after, on=["symbol", "timestamp", "segment", "model", "horizon"], suffixes=("", "_d"))
        assert len(both) == len(before) == len(after)
        for n, suffix in (("lightgbm", ".txt"), ("xgboost", ".ubj")):
            dist = models.load(repo / "models/boosting" / n)
            assert sorted(p.suffix for p in (repo / "models/boosting" / n).iterdir() if p.name.startswith("h")) == \
                [suffix] * len(dist.horizons)
            m = both[(both["model"] == n) & (both["segment"] == "test")]
            assert not np.array_equal(m["yhat"], m["yhat_d"]), n  # really refitted, on the cluster
            assert np.corrcoef(m["yhat"], m["yhat_d"])[0, 1] > 0.8, n
    finally:
        sh(repo, "git", "checkout", "--", ".")
        sh(repo, "dvc", "checkout", "-q", "-f")
