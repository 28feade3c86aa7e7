"""Explanations (tree SHAP, permutation importance), rolling IC, the deflated-Sharpe selection
and the HTML report. The pipeline-level checks reuse the session ``project`` fixture, whose
`dvc repro` already ran the explain and report stages."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from alphafactory import models
from alphafactory.config import check, from_dict
from alphafactory.errors import ConfigError
from alphafactory.evaluation.explain import (
    ExplainConfig,
    permutation_importance,
    prefix_groups,
    shap_values,
    supports_shap,
    top_features,
)
from alphafactory.evaluation.metrics import rolling_ic
from alphafactory.evaluation.report import ReportConfig, ReportInputs, render
from alphafactory.models.base import XY

HORIZONS = (1, 5)
# One thread: on a busy 2-core machine, OpenMP's spinning threads make a 2-thread LightGBM fit of
# this size take ~30 s instead of 0.2 s.
FAST = {"lightgbm": {"n_estimators": 40, "min_child_samples": 10, "early_stopping_rounds": 10, "num_threads": 1},
        "xgboost": {"n_estimators": 40, "min_child_weight": 1.0, "early_stopping_rounds": 10, "nthread": 1},
        "catboost": {"iterations": 40, "early_stopping_rounds": 10, "thread_count": 1}}


def planted(n: int = 900, n_features: int = 6, signal: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (n, F) standard normal; Y (n, H): 0.5 * X[:, signal] plus unit noise, per horizon."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    Y = np.stack([0.5 * X[:, signal] + rng.normal(size=n) for _ in HORIZONS], axis=1).astype(np.float32)
    return X, Y


def fitted(name: str, X: np.ndarray, Y: np.ndarray, tmp_path) -> models.Model:
    """Fit on the first 2/3, early-stop on the rest, then save and load (what the stage sees)."""
    cut = 2 * len(X) // 3
    model = models.create(name, FAST[name], horizons=HORIZONS, seed=0)
    model.fit(XY(X[:cut], Y[:cut]), XY(X[cut:], Y[cut:]))
    models.save(model, tmp_path / name)
    return models.load(tmp_path / name)


@pytest.mark.parametrize("name", ["lightgbm", "xgboost", "catboost"])
def test_shap_values_add_up_to_the_forecast(name, tmp_path):
    X, Y = planted(n=600)
    model = fitted(name, X, Y, tmp_path)
    assert supports_shap(model)
    rows = X[:25]
    phi, base = shap_values(model, rows)
    assert phi.shape == (25, len(HORIZONS), X.shape[1]) and base.shape == (25, len(HORIZONS))
    np.testing.assert_allclose(phi.sum(-1) + base, model.predict(rows), rtol=1e-5, atol=1e-6)
    # the planted feature carries the most attribution at every horizon
    assert (np.abs(phi).mean(0).argmax(-1) == 2).all()


def test_shap_of_a_lightgbm_random_forest_adds_up(tmp_path):
    """rf mode averages its trees, but LightGBM's pred_contrib sums them (LightGBM #6217)."""
    import lightgbm as lgb

    X, Y = planted(n=600)
    params = {"boosting": "rf", "objective": "regression", "num_leaves": 15, "bagging_fraction": 0.7,
              "bagging_freq": 1, "feature_fraction": 0.8, "num_threads": 1, "verbosity": -1, "seed": 0}
    model = models.create("lightgbm", FAST["lightgbm"], horizons=HORIZONS)
    model.estimators_ = [lgb.train(params, lgb.Dataset(X, np.ascontiguousarray(Y[:, j])), num_boost_round=20)
                         for j in range(len(HORIZONS))]
    model.fitted_ = True
    models.save(model, tmp_path / "rf")
    for m in (model, models.load(tmp_path / "rf")):
        phi, base = shap_values(m, X[:25])
        np.testing.assert_allclose(phi.sum(-1) + base, m.predict(X[:25]), rtol=1e-6, atol=1e-9)


def test_permutation_importance_finds_the_planted_feature(tmp_path):
    X, Y = planted()
    model = fitted("lightgbm", X, Y, tmp_path)
    groups = {f"x{j}": [j] for j in range(X.shape[1])}
    table = permutation_importance(model, X[600:], Y[600:], groups, n_seeds=3, seed=1)
    assert len(table) == len(groups) * len(HORIZONS)
    for h, part in table.groupby("horizon"):
        part = part.set_index("feature")
        assert part["ic_drop"].idxmax() == "x2", (h, part["ic_drop"].to_dict())
        assert part.loc["x2", "ic_drop"] > 0.2 and part.loc["x2", "mse_rise"] > 0.1
        assert part.drop(index="x2")["ic_drop"].abs().max() < 0.05
    np.testing.assert_array_equal(X, planted()[0])  # the caller's array is left alone


class LastStepModel:
    """A stand-in sequence model: forecasts = feature 1 at the window's last step, per horizon."""

    horizons = HORIZONS
    name = "last_step"

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.repeat(X[:, -1, 1:2], len(self.horizons), axis=1).astype(np.float64)


def test_permutation_importance_shuffles_whole_windows_of_sequence_inputs():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 5, 3)).astype(np.float32)  # (n, L, F)
    Y = np.repeat(X[:, -1, 1:2], len(HORIZONS), axis=1) + rng.normal(0, 0.5, (400, len(HORIZONS)))
    Y[:7, 1] = np.nan  # unlabelled rows are skipped, not fatal
    table = permutation_importance(LastStepModel(), X, Y, {"a": [0], "b": [1], "c": [2]}, n_seeds=2)
    drop = table.set_index(["horizon", "feature"])["ic_drop"]
    for h in HORIZONS:
        assert drop[(h, "b")] > 0.8 and abs(drop[(h, "a")]) < 1e-12 and abs(drop[(h, "c")]) < 1e-12


def test_rolling_ic_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    ts = np.repeat(pd.bdate_range("2020-01-01", periods=40).to_numpy(), 3)
    df = pd.DataFrame({"timestamp": ts, "y": rng.normal(size=len(ts)), "yhat": rng.normal(size=len(ts))})
    df["yhat"] += 0.5 * df["y"]
    got = rolling_ic(df, 10)
    days = np.unique(ts)
    assert got.index.equals(pd.Index(days, name="timestamp")) and got.iloc[:9].isna().all()
    for i in range(9, len(days)):
        part = df[(df["timestamp"] >= days[i - 9]) & (df["timestamp"] <= days[i])]  # 10 bars
        assert got.iloc[i] == pytest.approx(np.corrcoef(part["y"], part["yhat"])[0, 1], abs=1e-10)
    const = rolling_ic(df.assign(yhat=0.1), 10)
    assert const.isna().all()
    with pytest.raises(ValueError, match="window"):
        rolling_ic(df, 1)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="perm_sedes"):
        from_dict(ExplainConfig, {"perm_sedes": 3}, "explain")
    with pytest.raises(ValueError, match="explain.permute"):
        check(ExplainConfig(permute="random"), "explain")
    with pytest.raises(ValueError, match="report.metrics"):
        check(ReportConfig(metrics=("ic", "sharpe_ratio")), "report")


def test_top_features_and_prefix_groups():
    shap = pd.DataFrame({"model": "m", "horizon": [1, 1, 1, 5, 5, 5], "feature": ["a", "b", "c"] * 2,
                         "mean_abs_shap": 1.0, "share": [0.5, 0.3, 0.2, 0.1, 0.6, 0.3]})
    top = top_features(shap, 2)
    assert top["feature"].tolist() == ["b", "a"] and top["importance"].tolist() == pytest.approx([0.45, 0.3])
    assert prefix_groups(["vol_cc_5", "rsi_14", "vol_pk_5"]) == {"vol": ["vol_cc_5", "vol_pk_5"], "rsi": ["rsi_14"]}


def tiny_inputs() -> ReportInputs:
    days = pd.bdate_range("2021-03-01", periods=30).strftime("%Y-%m-%dT%H:%M:%S")
    fig = {"ic": 0.03, "sharpe": 0.5, "max_drawdown": 0.1, "r2": -0.01}
    return ReportInputs(
        metrics={"lightgbm": {"h1": fig}, "ensemble": {"h1": {**fig, "ic": 0.04}},
                 "zero": {"h1": {"ic": None, "sharpe": None, "max_drawdown": 0.0, "r2": 0.0}},
                 "_selection": {"best_model": "ensemble", "horizon": 1, "baselines": ["zero"], "dsr": 0.2,
                                "n_trials": 2}},
        split={"train": {"start": "2020-01-01 00:00:00", "end": "2020-12-31 00:00:00", "rows": 500},
               "test": {"start": "2021-03-01 00:00:00", "end": "2021-04-09 00:00:00", "rows": 60}},
        info={"source": "synthetic", "frequency": {"label": "1D"}, "symbols": {"A": 300, "B": 300}},
        plots={"cumulative_return.csv": pd.DataFrame({  # long, as evaluate.plot_tables writes it
            "timestamp": np.tile(days, 3), "model": np.repeat(["lightgbm", "ensemble", "zero"], 30),
            "kind": np.repeat(["model", "model", "baseline"], 30),
            "cumulative_return": np.r_[np.linspace(0, 0.1, 30), np.linspace(0, -0.1, 30), np.zeros(30)]})},
        explain={"top_features.csv": pd.DataFrame({"rank": [1, 2], "feature": ["vol_cc_5", "rsi_14"],
                                                   "importance": [0.3, 0.2]})},
        ic_window=63)


def test_report_is_deterministic_and_marks_the_best_model():
    a, b = render(tiny_inputs(), ReportConfig()), render(tiny_inputs(), ReportConfig())
    assert a == b  # unchanged inputs give unchanged bytes, so DVC skips nothing downstream by accident
    assert re.search(r'<td class="best">0\.0400</td>', a)  # ensemble's IC is the best IC
    assert "2021-03-01 – 2021-04-09" in a and "<svg" in a and "<script" not in a


@pytest.mark.slow
def test_explain_stage_outputs(project):
    repo, _ = project
    out = repo / "metrics/explain"
    kinds = pd.read_csv(out / "models.csv").set_index("model")["method"]
    shap = pd.read_csv(out / "shap.csv")
    assert set(shap["model"]) == set(kinds[kinds == "shap"].index) >= {"lightgbm", "xgboost", "catboost"}
    assert set(shap["horizon"]) == {1, 5, 20}
    shares = shap.groupby(["model", "horizon"])["share"].sum()
    assert np.allclose(shares, 1.0)
    top = pd.read_csv(out / "top_features.csv")
    assert top["importance"].is_monotonic_decreasing and len(top) == 20
    perm = pd.read_csv(out / "permutation.csv")
    assert set(perm["model"]) == set(kinds[kinds == "permutation"].index) >= {"lstm", "tcn"}
    assert set(perm["feature"]) == set(top["feature"].head(10))  # top_shap mode: the top SHAP features
    assert perm["ic_drop"].notna().all()


@pytest.mark.slow
def test_deflated_sharpe_of_the_selected_model(project):
    repo, _ = project
    sel = json.loads((repo / "metrics/test.json").read_text())["_selection"]
    assert 0.0 <= sel["dsr"] <= 1.0 and 0.0 <= sel["psr"] <= 1.0
    assert sel["dsr"] < sel["psr"]  # selecting among several models deflates the evidence
    assert sel["best_model"] in sel["candidates"] and not set(sel["candidates"]) & set(sel["baselines"])
    assert sel["n_trials"] == len(sel["candidates"]) >= 6
    assert sel["horizon"] == 1


@pytest.mark.slow
def test_report_is_self_contained_and_complete(project):
    repo, _ = project
    page = (repo / "reports/index.html").read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)  # no network fetch
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//|@import|<script|<link|<iframe", page, re.I)
    metrics = json.loads((repo / "metrics/test.json").read_text())
    for name in (k for k in metrics if not k.startswith("_")):
        assert f'<td class="name">{name}</td>' in page, name
    split = json.loads((repo / "data/split/summary.json").read_text())
    for seg in ("train", "val", "test"):
        assert split[seg]["start"][:10] in page and split[seg]["end"][:10] in page
    assert page.count("<svg") >= 5  # cumulative return, rolling IC, scatter, calibration, features, permutation


def test_report_shows_error_bars_and_flags_figures_for_a_leakage_check():
    inputs = tiny_inputs()
    m = inputs.metrics
    m["lightgbm"]["h1"].update(ic_se=0.011, ic_t=0.03 / 0.011, dir_acc=0.52)
    m["ensemble"]["h1"].update(ic=0.14, ic_se=0.02, dir_acc=0.57)
    page = render(inputs, ReportConfig())
    assert re.search(r'<td>0\.0300<span class="se"> ± 0\.0110</span></td>', page)  # IC ± SE in the table
    assert "<th>IC t</th>" in page and "<td>2.73</td>" in page
    assert "Check for leakage" in page
    assert "ensemble, horizon 1: IC +0.1400 ± 0.0200 (|IC| above 0.1)" in page
    assert "ensemble, horizon 1: directional accuracy 57.0% (above 55%)" in page
    assert "lightgbm, horizon 1" not in page  # 0.03 and 52 % are ordinary
    assert "Check for leakage" not in render(tiny_inputs(), ReportConfig())
