"""Walk-forward retraining over the test period (stage backtest): refit blocks tile the test rows,
each refit trains only on rows whose labels end a purge + embargo before its block, and the
block forecasts are those of a model refitted on exactly those rows."""
from __future__ import annotations

import dataclasses
import math
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from alphafactory import models
from alphafactory.config import from_dict
from alphafactory.dataset import KEYS, assemble, drop_warmup
from alphafactory.errors import ConfigError
from alphafactory.evaluation.backtest import BacktestConfig, walk_forward
from alphafactory.evaluation.evaluate import EvaluateConfig, evaluate, headline, summary_table
from alphafactory.labels import LabelConfig, make_labels
from alphafactory.models.base import XY
from alphafactory.split import SplitConfig, assign_segments, refit_blocks
from alphafactory.train import fit_models
from conftest import random_bars
from test_folds import EMBARGO, HORIZONS, H, check_gaps, joined

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    """4 symbols x 700 bars; S03 lists late and S02 has a gap inside the test period."""
    bars = random_bars(n_symbols=4, n_bars=700, seed=3)
    ts = bars["timestamp"]
    late = (bars["symbol"] == "S03") & (ts < ts.iloc[90])
    gap = (bars["symbol"] == "S02") & (ts >= ts.iloc[620]) & (ts < ts.iloc[630])
    return make_labels(bars[~(late | gap)].reset_index(drop=True), LabelConfig(horizons=HORIZONS))


def _test_rows(labels: pd.DataFrame, test_frac: float = 0.15) -> np.ndarray:
    """(n,) bool: the labels rows of the test segment."""
    cfg = SplitConfig(val_frac=0.15, test_frac=test_frac, embargo=EMBARGO)
    return assign_segments(labels, HORIZONS, cfg)["segment"].to_numpy() == "test"


def test_blocks_tile_the_test_rows_with_the_cv_purge_and_embargo(labels: pd.DataFrame) -> None:
    test = _test_rows(labels)
    table = refit_blocks(labels, test, HORIZONS, EMBARGO, every=20)
    assert list(table.columns) == ["symbol", "timestamp", "fold", "group", "role"]
    # the gaps the CV folds are tested for: no training label window reaches its block, and at
    # least EMBARGO bars of each symbol between its last training bar and the first crossing one
    check_gaps(labels, table)
    df = joined(labels, table)
    tests = [df[(df["fold"] == k) & (df["role"] == "test")] for k in sorted(df["fold"].unique())]
    trains = [df[(df["fold"] == k) & (df["role"] == "train")] for k in sorted(df["fold"].unique())]
    # the blocks tile the test rows: every test row in exactly one block, nothing else forecast
    forecast = pd.concat(tests)[KEYS]
    assert not forecast.duplicated().any()
    expected = labels.loc[test, KEYS]
    assert len(forecast) == len(expected) and forecast.merge(expected, on=KEYS).shape[0] == len(expected)
    stamps = [t["timestamp"].nunique() for t in tests]
    assert stamps[:-1] == [20] * (len(stamps) - 1) and 1 <= stamps[-1] <= 20
    assert len(tests) == math.ceil(labels.loc[test, "timestamp"].nunique() / 20)
    for a, b in pairwise(tests):  # consecutive, in time order
        assert a["timestamp"].max() < b["timestamp"].min()
    for k, (tr, te) in enumerate(zip(trains, tests, strict=True)):
        t0 = te["timestamp"].min()
        assert (tr["timestamp"] < t0).all() and (tr["end"] < t0).all()  # only resolved past labels
        assert set(te["group"]) == {k} and (tr["group"] < k).all()
    # expanding: each refit trains on everything the previous one did, and more, including the
    # earlier test blocks once their labels have ended
    for a, b in pairwise(trains):
        assert set(zip(a["symbol"], a["timestamp"], strict=True)) < set(zip(b["symbol"], b["timestamp"], strict=True))
    assert trains[-1].merge(tests[0][KEYS], on=KEYS).shape[0] == len(tests[0])
    # the gap is tight: for a full-history symbol, exactly H (purge) + EMBARGO bars before the block
    lab0 = labels[labels["symbol"] == "S00"].reset_index(drop=True)
    for tr, te in zip(trains, tests, strict=True):
        first = lab0.index[lab0["timestamp"] == te.loc[te["symbol"] == "S00", "timestamp"].min()][0]
        last = lab0.index[lab0["timestamp"] == tr.loc[tr["symbol"] == "S00", "timestamp"].max()][0]
        assert first - last - 1 == H + EMBARGO


def test_rolling_window_keeps_the_last_window_bars(labels: pd.DataFrame) -> None:
    test = _test_rows(labels)
    expanding = refit_blocks(labels, test, HORIZONS, EMBARGO, every=25)
    rolling = refit_blocks(labels, test, HORIZONS, EMBARGO, every=25, window_bars=80)
    check_gaps(labels, rolling)
    for k in sorted(rolling["fold"].unique()):
        e, r = expanding[expanding["fold"] == k], rolling[rolling["fold"] == k]
        pd.testing.assert_frame_equal(e[e["role"] == "test"].reset_index(drop=True),
                                      r[r["role"] == "test"].reset_index(drop=True))
        e_tr, r_tr = e[e["role"] == "train"], r[r["role"] == "train"]
        assert r_tr["timestamp"].nunique() == 80 and r_tr["timestamp"].max() == e_tr["timestamp"].max()
        assert set(zip(r_tr["symbol"], r_tr["timestamp"], strict=True)) <= set(zip(e_tr["symbol"], e_tr["timestamp"], strict=True))
    with pytest.raises(ValueError, match="window_bars: got 100000"):
        refit_blocks(labels, test, HORIZONS, EMBARGO, every=25, window_bars=100_000)
    with pytest.raises(ValueError, match="every=0"):
        refit_blocks(labels, test, HORIZONS, EMBARGO, every=0)


def break_panel(flip: bool):
    """3 symbols x 900 bars, 30% test, one feature that knows the 1-bar target with a sign that
    flips (``flip``) 150 test bars before the end, plus a noise feature."""
    bars = random_bars(n_symbols=3, n_bars=900, seed=11)
    labels = make_labels(bars, LabelConfig(horizons=HORIZONS))
    seg = assign_segments(labels, HORIZONS, SplitConfig(val_frac=0.15, test_frac=0.3, embargo=EMBARGO))
    test = seg["segment"].to_numpy() == "test"
    ts = labels["timestamp"]
    t_break = np.sort(ts[test].unique())[-150]
    rng = np.random.default_rng(0)
    y1 = labels["y_h1"].to_numpy()
    sign = np.where(flip & (ts >= t_break).to_numpy(), -1.0, 1.0)
    feats = labels[KEYS].assign(knows=sign * np.nan_to_num(y1) + rng.normal(0, 0.5 * np.nanstd(y1), len(y1)),
                                noise=rng.normal(size=len(y1)))
    feats = drop_warmup(feats, 5)
    return labels, test, feats, seg, t_break


def _single_and_walk_forward(labels, test, feats, seg, cfg, tmp_path):
    single_ds = assemble(feats, labels, seg, HORIZONS)
    single = fit_models(single_ds, ("ridge",), {}, tmp_path / "single", seed=0)[0].predictions
    single = single[single["segment"] == "test"]
    table = refit_blocks(labels, test, HORIZONS, EMBARGO, cfg.retrain_every, cfg.window_bars)
    ds = assemble(feats, labels, labels[KEYS].assign(segment="purged"), HORIZONS)
    wf, spans = walk_forward(ds, labels, table, cfg, blocks={}, seed=0, workdir=tmp_path / "wf")
    return single, wf, spans, table, ds


def _ic_after(preds: pd.DataFrame, labels: pd.DataFrame, t: pd.Timestamp) -> float:
    p = preds[(preds["horizon"] == 1) & (preds["timestamp"] >= t)].merge(labels[KEYS + ["y_h1"]], on=KEYS)
    p = p.dropna(subset=["y_h1"])
    return float(np.corrcoef(p["yhat"], p["y_h1"])[0, 1])


def test_walk_forward_is_a_manual_refit_per_block(tmp_path) -> None:
    labels, test, feats, seg, _ = break_panel(flip=False)
    cfg = BacktestConfig(models=("ridge",), retrain_every=30, val_frac=0.2)
    single, wf, spans, table, ds = _single_and_walk_forward(labels, test, feats, seg, cfg, tmp_path)
    assert set(wf["model"]) == {"ridge_wf"} and set(wf["segment"]) == {"test"}
    assert list(wf.columns) == list(single.columns)
    # same rows as the single fit: evaluate scores both on the same test rows
    pd.testing.assert_frame_equal(wf[KEYS + ["horizon"]].sort_values(KEYS + ["horizon"]).reset_index(drop=True),
                                  single[KEYS + ["horizon"]].sort_values(KEYS + ["horizon"]).reset_index(drop=True))
    assert sorted(spans) == [f"block{k}" for k in range(table["fold"].nunique())]
    end = ds.keys.merge(labels[KEYS + [f"end_h{H}"]], on=KEYS, how="left")[f"end_h{H}"].to_numpy("datetime64[ns]")
    ts = ds.keys["timestamp"].to_numpy("datetime64[ns]")
    row = ds.keys.assign(row=np.arange(len(ds.keys)))
    for k in sorted(table["fold"].unique()):
        blk = table[table["fold"] == k]
        fit = np.sort(row.merge(blk.loc[blk["role"] == "train", KEYS], on=KEYS)["row"].to_numpy())
        target = np.sort(row.merge(blk.loc[blk["role"] == "test", KEYS], on=KEYS)["row"].to_numpy())
        # val: the latest 20% of the fit timestamps (rounded up); train: earlier rows whose label ends before it
        stamps = np.unique(ts[fit])
        v0 = stamps[len(stamps) - math.ceil(0.2 * len(stamps))]
        val, train = fit[ts[fit] >= v0], fit[(ts[fit] < v0) & (end[fit] < v0)]
        assert spans[f"block{k}"]["train_rows"] == len(train) and spans[f"block{k}"]["val_rows"] == len(val)
        assert spans[f"block{k}"]["test_rows"] == len(target)
        model = models.create("ridge", {}, horizons=HORIZONS, seed=0)
        model.fit(XY(ds.X[train], ds.Y[train]), XY(ds.X[val], ds.Y[val]))
        got = (wf[wf["timestamp"].isin(ds.keys["timestamp"].iloc[target])]
               .pivot(index=KEYS, columns="horizon", values="yhat").reindex(pd.MultiIndex.from_frame(ds.keys.iloc[target][KEYS])))
        np.testing.assert_allclose(got.to_numpy(), model.predict(ds.X[target]), rtol=1e-6, atol=1e-9)
    # refitted models are not the single fit
    merged = wf.merge(single, on=KEYS + ["horizon"], suffixes=("_wf", ""))
    assert not np.allclose(merged["yhat_wf"], merged["yhat"])


def test_refitting_on_a_rolling_window_follows_a_structural_break(tmp_path) -> None:
    """After the feature's sign flips, the single fit keeps the old sign (IC strongly negative)
    while rolling refits learn the new one within a window (IC positive over the last bars)."""
    labels, test, feats, seg, t_break = break_panel(flip=True)
    cfg = BacktestConfig(models=("ridge",), retrain_every=10, window="rolling", window_bars=60, val_frac=0.2)
    single, wf, _, _, _ = _single_and_walk_forward(labels, test, feats, seg, cfg, tmp_path)
    settle = np.sort(labels["timestamp"].unique())  # once the window (plus purge + embargo) lies after the break
    settle = settle[np.searchsorted(settle, t_break) + 60 + H + EMBARGO + 10]
    ic_single, ic_wf = _ic_after(single, labels, settle), _ic_after(wf, labels, settle)
    assert ic_single < -0.5 and ic_wf > 0.5, (ic_single, ic_wf)
    # and before the break both see the same sign
    before = wf[wf["timestamp"] < t_break]
    assert _ic_after(before, labels, before["timestamp"].min()) > 0.5


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="backtest.models: 'nope'"):
        from_dict(BacktestConfig, {"models": ["nope"]}, "backtest")
    with pytest.raises(ConfigError, match="backtest.window_bars: got None with window 'rolling'"):
        from_dict(BacktestConfig, {"window": "rolling"}, "backtest")
    with pytest.raises(ConfigError, match="backtest.window_bars: got 50 with window 'expanding'"):
        from_dict(BacktestConfig, {"window_bars": 50}, "backtest")
    with pytest.raises(ConfigError, match="backtest.retrain_every: got 0, expected >= 1"):
        from_dict(BacktestConfig, {"retrain_every": 0}, "backtest")
    with pytest.raises(ConfigError, match="backtest.models: got \\[\\], expected at least one item"):
        from_dict(BacktestConfig, {"models": []}, "backtest")


def test_dvc_stage_declares_what_the_configured_models_read() -> None:
    """dvc.yaml lists the params block of every model in params.yaml's backtest.models, and a dep
    that covers its model file, so a change to them reruns the backtest."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["backtest"]
    cfg = from_dict(BacktestConfig, yaml.safe_load((ROOT / "params.yaml").read_text())["backtest"], "backtest")
    for name in cfg.models:
        spec = models.get(name)
        assert f"{spec.family}.{name}" in stage["params"], name
        module = Path("src", *spec.module.split(".")).with_suffix(".py")
        assert any(Path(d) == module or Path(d) in module.parents for d in stage["deps"]), name
        if spec.family == "neural":
            assert {"train.lookback", "neural.trainer", "neural.inputs"} <= set(stage["params"])
    assert "split.embargo" in stage["params"]


def test_evaluate_scores_walk_forward_models_beside_their_single_fit() -> None:
    rng = np.random.default_rng(3)
    n_t, syms = 300, ["A", "B", "C", "D"]
    keys = pd.DataFrame({"symbol": np.repeat(syms, n_t), "timestamp": np.tile(pd.bdate_range("2021-01-01", periods=n_t), 4)})
    y = rng.standard_normal(len(keys)) * 0.01
    labels = keys.assign(y_h1=y, ret_h1=y)
    fc = {"ridge": y + rng.standard_normal(len(y)) * 0.1, "ridge_wf": y + rng.standard_normal(len(y)) * 0.02,
          "ensemble": y + rng.standard_normal(len(y)) * 0.05, "zero": np.zeros(len(y))}
    preds = pd.concat([keys.assign(model=m, horizon=1, yhat=v) for m, v in fc.items()], ignore_index=True)
    ev = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",), walk_forward=("ridge_wf",))
    roles = ev.metrics["_models"]
    assert roles == {"ensembles": ["ensemble"], "base": ["ridge"], "walk_forward": ["ridge_wf"], "baselines": ["zero"]}
    # a walk-forward refit is one more strategy tried: a selection candidate, counted in the DSR
    assert ev.selections[1]["n_trials"] == 3 and "ridge_wf" in ev.selections[1]["candidates"]
    head = headline(ev)["h1"]
    assert head["best"]["model"] == "ridge"  # the best *base* model: refits are reported apart
    wf = head["walk_forward"]
    assert wf["model"] == "ridge_wf" and wf["single_fit"]["model"] == "ridge"
    assert wf["ic"] == pytest.approx(ev.metrics["ridge_wf"]["h1"]["ic"], rel=1e-3)
    assert wf["single_fit"]["sharpe"] == pytest.approx(ev.metrics["ridge"]["h1"]["sharpe"], rel=1e-3)
    assert wf["ic"] > wf["single_fit"]["ic"]
    table = summary_table(ev.metrics, headline(ev))
    lines = table.splitlines()
    at = {m: next(i for i, line in enumerate(lines) if line.startswith(m + " ")) for m in ("ensemble", "ridge", "ridge_wf")}
    assert at["ensemble"] < at["ridge"] < at["ridge_wf"] and lines[at["ridge_wf"] - 1] == ""  # its own group


def test_report_compares_each_refit_with_its_single_fit() -> None:
    from alphafactory.evaluation.report import ReportConfig, _styles, render
    from test_explain_report import tiny_inputs

    inputs = tiny_inputs()
    m = dict(inputs.metrics)
    m["lightgbm_wf"] = {"h1": {"ic": 0.05, "ic_se": 0.01, "sharpe": 0.9, "max_drawdown": 0.1, "r2": 0.0}}
    m["_models"] = {"ensembles": ["ensemble"], "base": ["lightgbm"], "walk_forward": ["lightgbm_wf"],
                    "baselines": ["zero"]}
    page = render(dataclasses.replace(inputs, metrics=m), ReportConfig())
    section = page[page.index("Does the edge survive refitting?"):]
    section = section[:section.index("</table>")]
    assert re.search(r'<td class="name">lightgbm</td><td class="fam">single fit</td><td>0\.0300 ± –</td><td>0\.50</td>', section)
    assert re.search(r'<td class="name">lightgbm_wf</td><td class="fam">walk-forward</td><td>0\.0500 ± 0\.0100</td>'
                     r'<td>0\.90</td><td>0\.0200</td>', section)
    # in the comparison table under its own family; without refits the section is left out
    assert re.search(r'<td class="name">lightgbm_wf</td><td class="fam">walk-forward</td>', page)
    assert "Does the edge survive refitting?" not in render(inputs, ReportConfig())
    # a refit is drawn in its single fit's colour, dash-dotted; the other models keep their colours
    styles = _styles(["lightgbm", "ridge", "lightgbm_wf", "other_wf"])
    assert styles["lightgbm_wf"] == {"color": styles["lightgbm"]["color"], "ls": "-."}
    assert styles["ridge"] == _styles(["lightgbm", "ridge"])["ridge"] and styles["other_wf"]["ls"] == "-"
