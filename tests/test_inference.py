"""Forecasting from a trained bundle: the bundle stage, load_bundle's integrity checks, predict()
against the pipeline's own test forecasts, `alphafactory predict` into parquet, SQLite and a real
PostgreSQL server, and a bundle pulled from a DVC remote into a fresh clone.

Uses the session `project` fixture (one small `dvc repro`, conftest.py) and leaves it as found,
and conftest.py's `postgres_url` server."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from alphafactory import cli
from alphafactory.config import load_params, section
from alphafactory.errors import BundleError, DataValidationError, InputError
from alphafactory.features import FeatureConfig, compute_feature_matrix, compute_features
from alphafactory.labels import LabelConfig
from alphafactory.serving.bundle import build_bundle, file_table
from alphafactory.serving.db import read_predictions, write_predictions
from alphafactory.serving.inference import (
    FORECAST_KEYS,
    LINEAGE,
    ewm_memory_bars,
    history_bars,
    list_models,
    load_bundle,
    model_info,
    predict,
    trim_history,
)
from conftest import random_bars
from pipeline_utils import BIN, MODELS, sh

pytestmark = pytest.mark.slow
HEAD = ["yhat", "yhat_std", "prob_up"]


@pytest.fixture(scope="module")
def bundle(project):
    repo, _ = project
    return load_bundle(repo / "bundle")


@pytest.fixture(scope="module")
def bars(project) -> pd.DataFrame:
    repo, _ = project
    return pd.read_parquet(repo / "data/prepared/bars.parquet")


@pytest.fixture(scope="module")
def every_bar(bundle, bars) -> pd.DataFrame:
    return predict(bars, bundle, asof="all")


def test_bundle_is_self_contained_and_hashed(project, bundle):
    repo, _ = project
    root = repo / "bundle"
    manifest = json.loads((root / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in on_disk if f != "manifest.json"]
    assert all(len(v["sha256"]) == 64 and v["size"] > 0 for v in manifest["files"].values())
    config = json.loads((root / "bundle.json").read_text())
    assert config["horizons"] == [1, 5, 20] and config["lookback"] == 10  # SMALL: train.lookback 10
    assert config["symbols"] == ["AAPL", "GOOG", "IBM", "MSFT"]
    assert config["frequency"]["label"] == "1D"
    assert config["feature_columns"] == json.loads((repo / "models/boosting/lightgbm/manifest.json")
                                                   .read_text())["meta"]["features"]
    assert {"numpy", "lightgbm", "catboost", "torch"} <= set(config["versions"])
    for m in MODELS:  # copies of the trained model dirs, native formats only
        assert (root / "models" / m / "manifest.json").read_bytes() == next(
            repo.glob(f"models/*/{m}/manifest.json")).read_bytes()
    assert not [p for p in root.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    blend = json.loads((repo / "models/blend/manifest.json").read_text())
    assert sorted(blend["members"]) == sorted(MODELS)
    others = [m for m in blend["config"]["methods"] if m != "ensemble"]
    assert list_models(bundle) == [*blend["members"], *others]
    info = model_info(bundle)
    assert info["base_models"][0] == {"name": "lightgbm", "family": "boosting", "input_kind": "tabular"}
    assert info["has_neural"] and info["feature_count"] == len(config["feature_columns"])
    assert info["min_bars"] == info["warmup_bars"] + 10
    assert json.loads(json.dumps(info)) == info


def test_build_bundle_is_deterministic_and_refuses_stale_models(project, tmp_path):
    repo, _ = project
    families = [str(d) for d in sorted((repo / "models").iterdir()) if d.is_dir() and d.name != "blend"]
    params = load_params(repo / "params.yaml")  # what the bundle stage read
    kwargs = dict(features=section(params, "features", FeatureConfig), label=section(params, "label", LabelConfig),
                  lookback=params["train"]["lookback"], info=json.loads((repo / "data/prepared/info.json").read_text()))
    build_bundle(families, repo / "models/blend", tmp_path / "again", **kwargs)
    assert (tmp_path / "again/manifest.json").read_bytes() == (repo / "bundle/manifest.json").read_bytes()
    with pytest.raises(BundleError, match=r"lstm/manifest.json: lookback 10, expected train.lookback 6"):
        build_bundle(families, repo / "models/blend", tmp_path / "b", **{**kwargs, "lookback": 6})
    with pytest.raises(BundleError, match=r"horizons \[1, 5, 20\], expected label.horizons \[1, 5\]"):
        build_bundle(families, repo / "models/blend", tmp_path / "b", **{**kwargs, "label": LabelConfig(horizons=(1, 5))})
    with pytest.raises(BundleError, match=r"blender members \['lstm', 'tcn'\] have no trained model dir"):
        build_bundle([f for f in families if not f.endswith("neural")], repo / "models/blend", tmp_path / "b", **kwargs)
    shutil.copytree(repo / "models/neural", tmp_path / "neural")
    (tmp_path / "neural/lstm/onnx.json").unlink()  # saved without portable=True
    with pytest.raises(BundleError, match=r"neural/lstm/onnx.json: missing; a PyTorch model needs the ONNX "
                                          r"export that the training stage writes"):
        build_bundle([f if not f.endswith("neural") else str(tmp_path / "neural") for f in families],
                     repo / "models/blend", tmp_path / "b", **kwargs)
    assert not (tmp_path / "b").exists()


def test_predict_all_reproduces_the_evaluated_test_forecasts(project, every_bar):
    """One feature path: forecasts from raw bars equal the evaluate stage's, model by model.

    The bundle runs the PyTorch models through their ONNX export: other float32 kernels, so
    those forecasts (and the blends of them) agree to float32 rounding, ~1e-7 of their scale
    (measured: ~1e-9 here), not to the last bit."""
    repo, _ = project
    test = pd.read_parquet(repo / "data/predictions/test.parquet")
    roles = json.loads((repo / "metrics/test.json").read_text())["_models"]
    # the bundle holds what was trained once (base models, blends), not the walk-forward refits
    models = [m for m in test["model"].unique() if m in roles["base"] or m in roles["ensembles"]]
    assert {*MODELS, "ensemble"} <= set(models)
    for m in models:
        col = "yhat" if m == "ensemble" else m
        ref = test.loc[test["model"] == m, FORECAST_KEYS + ["yhat"]].rename(columns={"yhat": "ref"})
        got = ref.merge(every_bar[FORECAST_KEYS + [col]], on=FORECAST_KEYS, how="left")
        assert len(got) > 1000 and got[col].notna().all(), m
        np.testing.assert_allclose(got[col], got["ref"], rtol=1e-5, atol=1e-6 * got["ref"].abs().max(), err_msg=m)
    # The headline uncertainty is the blend stage's calibrated one.
    blend = pd.read_parquet(repo / "data/preds/blend.parquet")
    blend = blend[(blend["segment"] == "test") & (blend["model"] == "ensemble")]
    got = blend.merge(every_bar, on=FORECAST_KEYS, suffixes=("_ref", ""))
    assert len(got) == len(blend)
    for c in HEAD:
        np.testing.assert_allclose(got[c], got[f"{c}_ref"], rtol=1e-5, atol=1e-6 * got[f"{c}_ref"].abs().max(), err_msg=c)
    assert list(every_bar.columns[:9]) == FORECAST_KEYS + LINEAGE + HEAD
    # Lineage: the bundle, and h business days ahead (daily bars, Monday to Friday).
    assert (every_bar["bundle_sha256"] == load_bundle(repo / "bundle").digest).all()
    assert (every_bar["bundle_version"] == 2).all()
    target = pd.DatetimeIndex(every_bar["target_timestamp"])
    assert (target.day_of_week < 5).all() and (target > every_bar["timestamp"]).all()
    friday = every_bar[(every_bar["timestamp"].dt.day_of_week == 4) & (every_bar["horizon"] == 1)]
    assert len(friday) and (friday["target_timestamp"] == friday["timestamp"] + pd.Timedelta(days=3)).all()
    assert ((every_bar["prob_up"] > 0) & (every_bar["prob_up"] < 1)).all()
    assert (every_bar["yhat_std"] > 0).all()


def test_predict_in_symbol_batches_equals_one_batch(bundle, bars, every_bar, monkeypatch):
    """predict runs the models and the blender on batches of whole symbols (memory bound): one
    batch per symbol gives the same forecasts as all four symbols in one batch."""
    from alphafactory.serving import inference

    n = every_bar.groupby("symbol").size() // len(bundle.horizons)
    assert n.sum() < inference.CHUNK_ROWS  # every_bar: one batch
    monkeypatch.setattr(inference, "CHUNK_ROWS", int(n.min()) // 2)
    got = predict(bars, bundle, asof="all")
    assert list(got.columns) == list(every_bar.columns)
    pd.testing.assert_frame_equal(got[FORECAST_KEYS], every_bar[FORECAST_KEYS])
    pd.testing.assert_frame_equal(got[LINEAGE], every_bar[LINEAGE])
    cols = [c for c in got.columns if c not in FORECAST_KEYS + LINEAGE]
    np.testing.assert_allclose(got[cols].to_numpy(), every_bar[cols].to_numpy(), rtol=1e-6, atol=1e-9)
    batches = inference._symbol_batches(pd.Series(list("aaabbbbcddddde")), max_rows=4)
    assert [(b.start, b.stop) for b in batches] == [(0, 3), (3, 7), (7, 8), (8, 13), (13, 14)]
    assert [(b.start, b.stop) for b in inference._symbol_batches(pd.Series(list("aaabbbbc")), 7)] == [(0, 7), (7, 8)]


def test_load_and_predict_never_import_torch(project, every_bar, tmp_path):
    """A forecasting machine needs no PyTorch: in a process where ``import torch`` fails, the
    bundle loads and forecasts every bar exactly as here."""
    repo, _ = project
    out = tmp_path / "preds.parquet"
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch: ModuleNotFoundError\n"
        "import pandas as pd\n"
        "from alphafactory.serving.inference import load_bundle, predict\n"
        f"bars = pd.read_parquet({str(repo / 'data/prepared/bars.parquet')!r})\n"
        f"predict(bars, load_bundle({str(repo / 'bundle')!r}), asof='all').to_parquet({str(out)!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out), every_bar.reset_index(drop=True))


def test_asof_uses_a_trimmed_history_and_never_later_bars(bundle, bars, every_bar):
    ts = np.sort(bars["timestamp"].unique())
    at = pd.Timestamp(ts[-200])
    # Later bars are dropped before anything else: doubling every later price changes nothing.
    future = bars["timestamp"] > at
    shocked = bars.copy()
    shocked.loc[future, ["open", "high", "low", "close"]] *= 2.0
    got = predict(shocked, bundle, asof=at)
    assert set(got["timestamp"]) == {at} and got["symbol"].nunique() == 4
    ref = every_bar[every_bar["timestamp"] == at].reset_index(drop=True)
    # history_bars() keeps enough bars for the exponentially weighted features to come out as on
    # the full history (measured: ~1e-8 on the neural forecasts, 0 on the trees).
    pd.testing.assert_frame_equal(got[LINEAGE], ref[LINEAGE])
    cols = [c for c in got.columns if c not in FORECAST_KEYS + LINEAGE]
    np.testing.assert_allclose(got[cols].to_numpy(), ref[cols].to_numpy(), rtol=1e-6, atol=1e-7)
    # Default asof: each symbol's last bar.
    last = predict(bars, bundle)
    assert (last.groupby("symbol")["timestamp"].max() == bars.groupby("symbol")["timestamp"].max()).all()
    assert len(last) == 4 * len(bundle.horizons)


def test_load_bundle_imports_only_what_its_models_need(project):
    """In a fresh process: the modules of the bundle's tree and linear models, ONNX Runtime for
    the neural ones, and neither PyTorch (~2 s) nor scikit-learn (LightGBM and XGBoost would
    import it for their unused scikit-learn wrappers: ~1 s)."""
    from alphafactory import models

    repo, _ = project
    code = ("import json, sys; from alphafactory.serving.inference import load_bundle; load_bundle(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'torch') "
            "or m.startswith('alphafactory.models.'))))")
    out = subprocess.run([sys.executable, "-c", code, str(repo / "bundle")], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == sorted({models.get(m).module for m in MODELS if models.get(m).family != "neural"}
                                     | {"alphafactory.models.base", "alphafactory.models.per_symbol",
                                        "alphafactory.models.persist", "alphafactory.models.portable",
                                        "alphafactory.models.registry"})


def test_history_bars_covers_the_longest_memory(bundle):
    # EMA of 60 bars (alpha 2/61) is the slowest: (59/61)^m <= 1e-6.
    assert ewm_memory_bars(bundle.features) == int(np.ceil(np.log(1e-6) / np.log1p(-2 / 61)))
    assert history_bars(bundle) == bundle.min_bars + ewm_memory_bars(bundle.features)


def _intraday_bars() -> pd.DataFrame:
    ts = pd.date_range("2021-01-04 09:30", periods=1800, freq="15min")
    ts = ts[(ts.hour >= 9) & (ts.hour < 16) & (ts.day_of_week < 5)]
    b = random_bars(n_symbols=3, n_bars=len(ts))
    return b.assign(timestamp=np.tile(ts, 3))


@pytest.mark.parametrize("kind", ["daily", "short_warmup", "ragged", "intraday"])
def test_features_of_the_last_bars_equal_the_full_computation(kind):
    """predict featurizes only what a forecast from the last bar reads (compute_features(tail=k)):
    finite-window features from the last k + warm-up bars, the long-memory ones (EWMs, previous
    week/month/session) from all. Fails if a feature reads further back than its warm-up."""
    if kind == "intraday":
        b = _intraday_bars()
    else:
        b = random_bars(n_symbols=4, n_bars=400)
    if kind == "ragged":  # S01 ends 50 bars early, S02 starts late: cross-sections differ in size
        pos = b.groupby("symbol").cumcount()
        b = b[~((b["symbol"] == "S01") & (pos >= 350)) & ~((b["symbol"] == "S02") & (pos < 150))]
        b = b.reset_index(drop=True)
    # short_warmup: a 31-bar warm-up, shorter than the ~45 bars back to a previous month's start
    cfg = FeatureConfig(windows=(5, 10), mtf_scales=(5,)) if kind == "short_warmup" else FeatureConfig()
    full = compute_features(b, cfg)
    for k in (1, 10):
        got = compute_features(b, cfg, tail=k)
        ref = full.groupby("symbol", sort=False).tail(k)
        assert list(got.index) == list(ref.index) and list(got.columns) == list(ref.columns)
        assert got.notna().all().all()
        np.testing.assert_allclose(got.iloc[:, 2:].to_numpy(np.float64), ref.iloc[:, 2:].to_numpy(np.float64),
                                   rtol=1e-6, atol=1e-9, err_msg=f"{kind}, tail={k}")
        # predict's matrix form: the same numbers, bit for bit, in any column order, for the same rows
        cols = list(got.columns[2:])[::-1]
        rows, X, missing = compute_feature_matrix(b, cfg, cols, tail=k)
        assert missing == [] and X.flags.c_contiguous and X.dtype == got[cols[0]].dtype
        assert list(b.index[rows]) == list(got.index)
        np.testing.assert_array_equal(X, got[cols].to_numpy())
        assert compute_feature_matrix(b, cfg, [*cols[:3], "no_such_feature"], tail=k)[1:] == (None, ["no_such_feature"])


def test_trim_history_keeps_whole_cross_sections():
    b = random_bars(n_symbols=3, n_bars=50)
    b = b[~((b["symbol"] == "S01") & (b.index % 50 < 20))].reset_index(drop=True)  # S01 starts late
    out = trim_history(b, 10)
    assert out.groupby("symbol").size().min() == 10
    cut = out["timestamp"].min()
    assert out.groupby("symbol").size().to_dict() == b[b["timestamp"] >= cut].groupby("symbol").size().to_dict()


def test_predict_errors_name_the_problem(bundle, bars):
    short = bars[(bars["symbol"] != "IBM") | (bars["timestamp"] >= bars["timestamp"].max() - pd.Timedelta(days=60))]
    with pytest.raises(DataValidationError, match=rf"'IBM' has \d+; expected at least {bundle.min_bars} bars"):
        predict(short, bundle)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['volume'\]"):
        predict(bars.drop(columns="volume"), bundle)
    with pytest.raises(InputError, match="asof: cannot parse 'yesterday'"):
        predict(bars, bundle, asof="yesterday")
    with pytest.raises(DataValidationError, match="no bar at or before asof=1990-01-01"):
        predict(bars, bundle, asof="1990-01-01")
    with pytest.raises(DataValidationError, match="cross-sectional features need >= 2 symbols"):
        predict(bars[bars["symbol"] == "AAPL"], bundle)
    with pytest.raises(InputError, match=f"history: got 5, expected at least {bundle.min_bars}"):
        predict(bars, bundle, history=5)


def test_load_bundle_refuses_a_tampered_bundle(project, tmp_path):
    repo, _ = project

    def copy() -> Path:
        dest = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(repo / "bundle", dest)
        return dest

    b = copy()
    f = b / "models/lightgbm/h1.txt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit flipped
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"models/lightgbm/h1.txt: sha256 .* the file was modified"):
        load_bundle(b)
    b = copy()
    f = b / "models/lstm/weights.pt"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"models/lstm/weights.pt: \d+ bytes, manifest says \d+; the file is truncated"):
        load_bundle(b)
    b = copy()
    (b / "blend/manifest.json").unlink()
    with pytest.raises(BundleError, match=r"blend/manifest.json: missing"):
        load_bundle(b)
    b = copy()
    (b / "models/catboost/extra.cbm").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"models/catboost/extra.cbm: not listed in manifest.json"):
        load_bundle(b)
    b = copy()
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**man, "format_version": 99}))
    with pytest.raises(BundleError, match=r"manifest.json: bundle format_version 99 is not supported; "
                                          r"this alphafactory reads format_version 2"):
        load_bundle(b)
    b = copy()  # a PyTorch model without its ONNX export, every hash made to match
    (b / "models/lstm/onnx.json").unlink()
    (b / "models/lstm/net.onnx").unlink()
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**man, "files": file_table(b)}))
    with pytest.raises(BundleError, match=r"models/lstm/onnx.json: missing; a PyTorch model in a bundle "
                                          r"needs the ONNX export"):
        load_bundle(b)
    with pytest.raises(BundleError, match="is not a bundle"):
        load_bundle(tmp_path)


def test_cli_predict_to_parquet_and_sqlite_is_idempotent(project, bundle, bars, tmp_path):
    repo, _ = project
    src = tmp_path / "bars"  # a directory of per-symbol CSV files, as `prepare` accepts
    src.mkdir()
    for sym, g in bars.groupby("symbol"):
        g.drop(columns="symbol").to_csv(src / f"{sym}.csv", index=False)
    out = tmp_path / "preds.parquet"
    assert cli.main(["predict", "--bars", str(src), "--models", str(repo / "bundle"), "--out", str(out)]) == 0
    expected = predict(bars, bundle)
    got = pd.read_parquet(out)
    assert list(got.columns) == list(expected.columns)
    np.testing.assert_allclose(got[HEAD].to_numpy(), expected[HEAD].to_numpy(), rtol=1e-12)

    url = f"sqlite:///{tmp_path / 'preds.db'}"
    args = ["predict", "--bars", str(src), "--models", str(repo / "bundle"), "--db", url, "--asof", "2012-06-29"]
    for _ in range(2):  # the second run updates the same rows, it adds none
        assert cli.main(args) == 0
    table = read_predictions(url)
    assert len(table) == 4 * 3 and not table.duplicated(FORECAST_KEYS).any()
    assert set(table.columns) == set(expected.columns)
    assert (table["timestamp"] == pd.Timestamp("2012-06-29")).all()
    with sa.create_engine(url).begin() as conn:
        assert sa.inspect(conn).get_pk_constraint("preds")["constrained_columns"] == FORECAST_KEYS
        conn.execute(sa.text("CREATE TABLE seed (ticker TEXT, dt DATE, horizon TEXT, "
                             "PRIMARY KEY (ticker, dt, horizon))"))
    with pytest.raises(InputError, match=r"table 'seed' has primary key \['ticker', 'dt', 'horizon'\], "
                                         r"expected \['symbol', 'timestamp', 'horizon'\]"):
        write_predictions(table, url, table="seed")
    assert cli.main(["predict", "--bars", str(src), "--models", str(tmp_path), "--out", str(out)]) == 2


def test_postgres_upsert_is_idempotent_and_adds_new_model_columns(bundle, bars, postgres_url):
    preds = predict(bars, bundle)
    assert write_predictions(preds, postgres_url) == len(preds)
    changed = preds.assign(yhat=preds["yhat"] + 1.0)
    write_predictions(changed, postgres_url)  # same keys: updated in place
    table = read_predictions(postgres_url)
    assert len(table) == len(preds) and not table.duplicated(FORECAST_KEYS).any()
    np.testing.assert_allclose(table["yhat"], changed["yhat"], rtol=1e-12)
    np.testing.assert_allclose(table["lstm"], preds["lstm"], rtol=1e-12)
    # A bundle with another base model: its column is added; older rows keep NULL there.
    later = preds.assign(timestamp=preds["timestamp"] + pd.Timedelta(days=1), gru=0.5)
    write_predictions(later, postgres_url)
    table = read_predictions(postgres_url)
    assert len(table) == 2 * len(preds)
    assert table["gru"].isna().sum() == len(preds) and (table["gru"].dropna() == 0.5).all()


def test_pushed_bundle_forecasts_in_a_fresh_clone_without_retraining(project, bundle, bars, tmp_path):
    repo, _ = project
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    sh(repo, "dvc", "remote", "add", "--local", "-d", "inference-test", str(remote))
    try:
        sh(repo, "dvc", "push", "-q", "bundle")  # what a consumer needs, nothing else
    finally:
        sh(repo, "dvc", "remote", "remove", "--local", "inference-test")
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "remote", "add", "-d", "store", str(remote))
    sh(clone, "dvc", "pull", "-q", "bundle")  # the bundle alone: no data, no model dirs
    assert not (clone / "models/boosting").exists()
    out = tmp_path / "preds.parquet"
    sh(clone, str(BIN / "alphafactory"), "predict", "--bars", str(repo / "data/prepared/bars.parquet"),
       "--out", str(out))
    got, expected = pd.read_parquet(out), predict(bars, bundle)
    pd.testing.assert_frame_equal(got, expected)
