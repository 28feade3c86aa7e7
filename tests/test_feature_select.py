"""Feature selection (``train.select``): fitted on the train rows only, each method finds a planted
informative feature among noise, top_k/threshold mean what the docs say, bad params fail in one
line naming the key, and models fitted on a subset record it and forecast from it (CV folds,
explain, and a bundle forecasting from raw bars)."""
from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from alphafactory.config import from_dict, load_params, section
from alphafactory.dataset import Dataset
from alphafactory.errors import ConfigError
from alphafactory.feature_select import SelectConfig, inner_holdout, select_dataset
from alphafactory.params_check import check_params
from alphafactory.train import TrainConfig, fit_models

METHODS = ("correlation", "importance", "permutation")
N_NOISE = 12
PLANTED = "f_signal"
FAST = {"lightgbm": {"n_estimators": 40, "early_stopping_rounds": 10, "num_threads": 1}}


def panel(n_symbols: int = 3, n_bars: int = 800, seed: int = 0) -> Dataset:
    """Rows sorted by symbol then time; one feature (``f_signal``) drives both horizons' targets,
    the others are noise; segments: the first 60% of each symbol's bars train, next 20% val,
    last 20% test."""
    rng = np.random.default_rng(seed)
    n = n_symbols * n_bars
    names = [f"noise_{i:02d}" for i in range(N_NOISE)]
    names.insert(5, PLANTED)
    X = rng.normal(size=(n, len(names))).astype(np.float32)
    s = X[:, 5]
    Y = np.stack([0.4 * s + rng.normal(size=n), 0.3 * s + rng.normal(size=n)], 1).astype(np.float32)
    Y[rng.random(Y.shape) < 0.02] = np.nan  # a few unlabelled rows
    pos = np.tile(np.arange(n_bars), n_symbols)
    seg = np.where(pos < 0.6 * n_bars, "train", np.where(pos < 0.8 * n_bars, "val", "test"))
    keys = pd.DataFrame({"symbol": np.repeat([f"S{i}" for i in range(n_symbols)], n_bars),
                         "timestamp": np.tile(pd.date_range("2020-01-01", periods=n_bars, freq="D"), n_symbols)})
    return Dataset(keys=keys, X=X, Y=Y, feature_names=names, horizons=(1, 5), segment=seg.astype(str),
                   sym_codes=np.repeat(np.arange(n_symbols), n_bars), vol=np.full(n, 0.01),
                   C=np.ones_like(Y))


def cfg(method: str, **kw) -> SelectConfig:
    return from_dict(SelectConfig, {"method": method, "rounds": 40, **kw}, "train.select")


@pytest.mark.parametrize("method", METHODS)
def test_each_method_picks_the_planted_feature(method):
    ds = panel()
    kept, sel = select_dataset(ds, cfg(method, top_k=1), seed=0)
    assert sel.columns == [PLANTED] and kept.feature_names == [PLANTED]
    np.testing.assert_array_equal(kept.X[:, 0], ds.X[:, 5])
    others = [v for k, v in sel.scores.items() if k != PLANTED and np.isfinite(v)]
    assert sel.scores[PLANTED] > 5 * max(others)


@pytest.mark.parametrize("method", METHODS)
def test_selection_reads_the_train_rows_only(method):
    """Poisoning val and test (a noise feature that knows their targets, scrambled signal, NaN
    targets) changes neither the kept columns nor a single score."""
    ds = panel()
    _, clean = select_dataset(ds, cfg(method, top_k=3), seed=1)
    bad = panel()
    later = bad.segment != "train"
    bad.X[later, 0] = bad.Y[later, 0] * 100  # noise_00 "predicts" val/test perfectly
    bad.X[later, 5] = np.random.default_rng(9).normal(size=later.sum())
    bad.Y[later & (np.arange(len(later)) % 2 == 0)] = np.nan
    _, poisoned = select_dataset(bad, cfg(method, top_k=3), seed=1)
    assert poisoned.columns == clean.columns
    assert poisoned.scores == pytest.approx(clean.scores, nan_ok=True, rel=0, abs=0)
    # ...whereas the same poison in the train rows does move it (the test can fail)
    worse = panel()
    worse.X[worse.segment == "train", 0] = worse.Y[worse.segment == "train", 0] * 100
    _, moved = select_dataset(worse, cfg(method, top_k=1), seed=1)
    assert moved.columns == ["noise_00"]


def test_top_k_and_threshold_semantics():
    ds = panel()
    _, sel = select_dataset(ds, cfg("importance", top_k=4), seed=0)
    assert len(sel.columns) == 4
    assert sel.columns == [n for n in ds.feature_names if n in sel.columns]  # the table's order
    best = sorted(sel.scores, key=lambda k: -sel.scores[k])[:4]
    assert set(sel.columns) == set(best)
    cut = sorted(sel.scores.values())[-3]  # the third-best score: three features reach it
    _, thr = select_dataset(ds, cfg("importance", threshold=cut), seed=0)
    assert set(thr.columns) == {k for k, v in sel.scores.items() if v >= cut} and len(thr.columns) == 3
    assert thr.to_dict()["kept"] == 3 and thr.to_dict()["of"] == len(ds.feature_names)
    with pytest.raises(ConfigError, match=r"^train.select.top_k: got 99, but importance leaves 13 candidate"):
        select_dataset(ds, cfg("importance", top_k=99), seed=0)
    with pytest.raises(ConfigError, match=r"^train.select.threshold: got 2.0, but no feature scores that much"):
        select_dataset(ds, cfg("importance", threshold=2.0), seed=0)
    # none: the dataset itself, untouched
    same, none = select_dataset(ds, SelectConfig(), seed=0)
    assert same is ds and none is None


def test_correlation_drops_a_near_copy_of_a_better_feature():
    ds = panel()
    rng = np.random.default_rng(3)
    ds.X[:, 0] = ds.X[:, 5] + rng.normal(0, 0.05, len(ds.X))  # noise_00: a near copy of the signal
    _, sel = select_dataset(ds, cfg("correlation", threshold=0.0), seed=0)
    assert (PLANTED in sel.columns) != ("noise_00" in sel.columns)  # exactly one of the pair
    dropped = "noise_00" if PLANTED in sel.columns else PLANTED
    assert np.isnan(sel.scores[dropped]) and len(sel.columns) == len(ds.feature_names) - 1
    _, loose = select_dataset(ds, cfg("correlation", threshold=0.0, max_corr=1.0), seed=0)
    assert len(loose.columns) == len(ds.feature_names)  # max_corr 1: nothing is a duplicate


def test_inner_holdout_is_the_latest_stamps_with_a_purge():
    ts = np.tile(pd.date_range("2020-01-01", periods=10, freq="D").to_numpy(), 2)
    sym = np.repeat([0, 1], 10)
    fit, hold = inner_holdout(ts, sym, 0.2, purge=3)
    assert hold.tolist() == ([False] * 8 + [True] * 2) * 2
    assert fit.tolist() == ([True] * 5 + [False] * 5) * 2  # the 3 rows before the hold-out purged
    assert not (fit & hold).any()


@pytest.mark.parametrize("select, message", [
    ({"method": "importance"}, r"^train.select: method 'importance' needs exactly one of top_k and threshold"),
    ({"method": "correlation", "top_k": 5, "threshold": 0.1}, r"^train.select: method 'correlation' needs exactly"),
    ({"method": "shap", "top_k": 5}, r"^train.select.method: got 'shap', expected one of \['none', 'correlation'"),
    ({"method": "importance", "top_k": 0}, r"^train.select.top_k: got 0, expected >= 1$"),
    ({"method": "importance", "top_k": 2.5}, r"^train.select.top_k: got 2.5, expected an integer$"),
    ({"method": "correlation", "threshold": 0.0, "max_corr": 0}, r"^train.select.max_corr: got 0.0, expected in \(0, 1\]$"),
    ({"method": "permutation", "top_k": 3, "holdout_frac": 1.0}, r"^train.select.holdout_frac: got 1.0, expected in \(0, 1\)$"),
    ({"method": "importance", "topk": 3}, r"^train.select: unknown key\(s\) \['topk'\]"),
])
def test_bad_params_fail_in_one_line_naming_the_key(select, message):
    with pytest.raises(ConfigError, match=message) as e:
        from_dict(TrainConfig, {"select": select}, "train")
    assert "\n" not in str(e.value)
    params = load_params()  # the whole file, as the check_params stage reads it
    params["train"] = {**params["train"], "select": select}
    with pytest.raises(ConfigError, match=message):
        check_params(params)


def test_default_is_none_and_method_none_ignores_top_k():
    assert section(load_params(), "train", TrainConfig).select == SelectConfig()
    assert not from_dict(SelectConfig, {"method": "none", "top_k": 5}).active


def test_fit_models_records_and_forecasts_from_the_selected_columns(tmp_path):
    from alphafactory import models
    from alphafactory.evaluation.explain import ExplainConfig, explain_models

    ds = panel()
    res = fit_models(ds, ("lightgbm", "ridge"), FAST, tmp_path, seed=0, select=cfg("importance", top_k=3))
    kept = json.loads((tmp_path / "lightgbm/manifest.json").read_text())["meta"]["features"]
    assert len(kept) == 3 and PLANTED in kept
    test = ds.rows("test")
    for r in res:
        man = json.loads((tmp_path / r.name / "manifest.json").read_text())
        assert man["meta"]["features"] == kept
        assert man["meta"]["selection"]["method"] == "importance" and man["meta"]["selection"]["kept"] == 3
        got = models.load(tmp_path / r.name).predict(ds.with_features(kept).X[test])  # (n, H)
        want = r.predictions.loc[r.predictions["segment"] == "test", "yhat"].to_numpy().reshape(len(test), 2)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        # the full-width table is not what it was fitted on (neither model checks the width itself)
        with pytest.raises((ValueError, lgb.basic.LightGBMError)):
            models.load(tmp_path / r.name).predict(ds.X[test])
    # explain scores the models on their own columns of the full table
    out = explain_models([tmp_path / "lightgbm", tmp_path / "ridge"], ds,
                         ExplainConfig(shap_rows=200, perm_rows=200, perm_seeds=1, perm_features=3))
    assert set(out.top["feature"]) <= set(kept)


def test_method_none_leaves_fit_models_byte_identical(tmp_path):
    ds = panel()
    fit_models(ds, ("ridge",), {}, tmp_path / "a", seed=0)
    fit_models(ds, ("ridge",), {}, tmp_path / "b", seed=0, select=SelectConfig())
    for f in (tmp_path / "a/ridge").iterdir():
        assert f.read_bytes() == (tmp_path / "b/ridge" / f.name).read_bytes(), f.name


@pytest.mark.slow
def test_a_bundle_of_selected_models_forecasts_from_raw_bars(project, tmp_path):
    """Models fitted on a selected subset, blended and bundled, forecast from raw bars what they
    forecast in training: the bundle computes every feature and feeds each model its columns."""
    from alphafactory import dataset
    from alphafactory.blend import BlendConfig, Stacker
    from alphafactory.features import FeatureConfig
    from alphafactory.labels import LabelConfig
    from alphafactory.serving.bundle import build_bundle
    from alphafactory.serving.inference import FORECAST_KEYS, load_bundle, predict

    repo, _ = project
    ds = dataset.load(repo / "data/features/features.parquet", repo / "data/labels/labels.parquet",
                      repo / "data/split/segments.parquet")
    select = cfg("importance", top_k=15)
    results = [*fit_models(ds, ("lightgbm",), FAST, tmp_path / "boosting", seed=0, select=select),
               *fit_models(ds, ("ridge",), {}, tmp_path / "classical", seed=0, select=select)]
    preds = pd.concat([r.predictions for r in results], ignore_index=True)
    labels = pd.read_parquet(repo / "data/labels/labels.parquet")
    Stacker(BlendConfig(), ["lightgbm", "ridge"], ds.horizons, seed=0).fit(preds, labels).save(tmp_path / "blend")
    params = load_params(repo / "params.yaml")
    build_bundle([tmp_path / "boosting", tmp_path / "classical"], tmp_path / "blend", tmp_path / "bundle",
                 features=section(params, "features", FeatureConfig), label=section(params, "label", LabelConfig),
                 lookback=params["train"]["lookback"],
                 info=json.loads((repo / "data/prepared/info.json").read_text()))
    bundle = load_bundle(tmp_path / "bundle")
    kept = json.loads((tmp_path / "boosting/lightgbm/manifest.json").read_text())["meta"]["features"]
    assert list(bundle.feature_columns) == kept and len(kept) == 15 < len(ds.feature_names)
    out = predict(pd.read_parquet(repo / "data/prepared/bars.parquet"), bundle, asof="all")
    for r in results:
        ref = r.predictions[r.predictions["segment"] == "test"]
        ref = ref.assign(horizon=ref["horizon"].astype(out["horizon"].dtype))[FORECAST_KEYS + ["yhat"]]
        got = ref.merge(out[FORECAST_KEYS + [r.name]], on=FORECAST_KEYS, how="left")
        assert len(got) > 1000 and got[r.name].notna().all(), r.name
        np.testing.assert_allclose(got[r.name], got["yhat"], rtol=1e-5, atol=1e-6 * got["yhat"].abs().max())
