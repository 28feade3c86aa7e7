"""Cross-validation metrics (stage cv): fold datasets never mix a fold's test rows into its
train or val rows, and the fold-test forecasts are scored on aligned rows."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from alphafactory import models
from alphafactory.config import from_dict
from alphafactory.dataset import KEYS, assemble, drop_warmup
from alphafactory.errors import ConfigError
from alphafactory.evaluation.cv import CVConfig, cross_validate, fold_segments
from alphafactory.labels import LabelConfig, make_labels
from alphafactory.split import SplitConfig, assign_segments, make_folds
from conftest import random_bars

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (1, 5)
WARMUP = 5


@pytest.fixture(scope="module")
def panel():
    """3 symbols x 500 bars: labels, expanding folds, and a dataset with one noisy feature that
    knows the 1-bar target (so a correctly aligned fold-test IC is high) and one pure noise."""
    bars = random_bars(n_symbols=3, n_bars=500, seed=5)
    labels = make_labels(bars, LabelConfig(horizons=HORIZONS))
    split = SplitConfig(embargo=2, cv_folds=3)
    folds = make_folds(labels, HORIZONS, split)
    rng = np.random.default_rng(0)
    y1 = labels["y_h1"].to_numpy()
    features = labels[KEYS].assign(knows=y1 + rng.normal(0, 0.5 * np.nanstd(y1), len(y1)),
                                   noise=rng.normal(size=len(y1)))
    features = drop_warmup(features, WARMUP)
    ds = assemble(features, labels, labels[KEYS].assign(segment="purged"), HORIZONS)
    end = ds.keys.merge(labels[KEYS + [f"end_h{max(HORIZONS)}"]], on=KEYS, how="left")
    return labels, folds, ds, end[f"end_h{max(HORIZONS)}"].to_numpy("datetime64[ns]"), split


def test_fold_test_rows_are_never_train_or_val(panel):
    labels, folds, ds, label_end, split = panel
    keys = ds.keys.assign(row=np.arange(len(ds.keys)))
    real_test = assign_segments(labels, HORIZONS, split)["segment"].to_numpy() == "test"
    real_test_keys = labels.loc[real_test, KEYS]
    ts = ds.keys["timestamp"].to_numpy("datetime64[ns]")
    assert folds["fold"].nunique() == 3
    for _, fold in folds.groupby("fold"):
        seg = fold_segments(ds, fold, label_end, val_frac=0.2)
        assert set(seg) <= {"train", "val", "test", "purged"}
        rows = {role: keys.merge(fold.loc[fold["role"] == role, KEYS], on=KEYS)["row"].to_numpy()
                for role in ("train", "test")}
        # every fold-test row with features is "test", and nothing else is
        assert np.array_equal(np.flatnonzero(seg == "test"), np.sort(rows["test"]))
        train, val = np.flatnonzero(seg == "train"), np.flatnonzero(seg == "val")
        assert len(train) and len(val)
        # train and val are carved out of the fold's training rows only
        assert set(train) | set(val) <= set(rows["train"])
        # val is the latest part; no train label reaches into it
        assert ts[train].max() < ts[val].min()
        assert label_end[train].max() < ts[val].min()
        # the latest 20% of the fold's training timestamps (rounded up) are val
        stamps = np.unique(ts[rows["train"]])
        assert len(np.unique(ts[val])) == math.ceil(0.2 * len(stamps))
        # the real test segment is never used by any fold
        used = keys.loc[seg != "purged", KEYS]
        assert used.merge(real_test_keys, on=KEYS).empty


def test_cross_validate_scores_every_fold(panel):
    labels, folds, ds, _, _ = panel
    cfg = CVConfig(models=("ridge", "lightgbm"), val_frac=0.25)
    blocks = {"lightgbm": {"n_estimators": 40, "early_stopping_rounds": 10, "min_child_samples": 20,
                           "num_threads": 1}}
    out = cross_validate(ds, labels, folds, cfg, blocks=blocks, seed=0)
    assert set(out) == {"_folds", "ridge", "lightgbm"}
    assert set(out["_folds"]) == {"fold0", "fold1", "fold2"}
    for fid, span in out["_folds"].items():
        test = folds[(folds["fold"] == int(fid[4:])) & (folds["role"] == "test")]
        with_features = test.merge(ds.keys, on=KEYS)
        assert span["test_rows"] == len(with_features)
        assert span["train_end"] < span["val_start"] <= span["val_end"]
        for model in ("ridge", "lightgbm"):
            for h in HORIZONS:
                # labelled test rows of the fold (h-bar labels exist for every fold row)
                assert out[model][f"h{h}"][fid]["n"] == len(with_features)
    for model in ("ridge", "lightgbm"):
        for h in HORIZONS:
            entry = out[model][f"h{h}"]
            assert set(entry) == {"fold0", "fold1", "fold2", "mean", "std"}
            for stat in ("mean", "std"):
                assert set(entry[stat]) == {"ic", "rank_ic", "r2", "dir_acc", "mae", "rmse"}
                assert all(math.isfinite(v) for v in entry[stat].values()), (model, h, stat)
            ics = [entry[f"fold{i}"]["ic"] for i in range(3)]
            assert entry["mean"]["ic"] == pytest.approx(np.mean(ics))
            assert entry["std"]["ic"] == pytest.approx(np.std(ics, ddof=1))
        # forecasts scored against their own rows: the feature that knows y_h1 gives a high IC
        assert out[model]["h1"]["mean"]["ic"] > 0.5, out[model]["h1"]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="cv.models: 'nope'"):
        from_dict(CVConfig, {"models": ["nope"]}, "cv")
    with pytest.raises(ConfigError, match="cv.val_frac"):
        from_dict(CVConfig, {"val_frac": 0.9}, "cv")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(CVConfig, {"folds": 3}, "cv")


def test_dvc_stage_declares_what_the_configured_models_read():
    """dvc.yaml lists the params block of every model in params.yaml's cv.models, and a dep that
    covers its model file (the model directory), so a change to them reruns cv."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["cv"]
    cfg = from_dict(CVConfig, yaml.safe_load((ROOT / "params.yaml").read_text())["cv"], "cv")
    for name in cfg.models:
        spec = models.get(name)
        assert f"{spec.family}.{name}" in stage["params"], name
        module = Path("src", *spec.module.split(".")).with_suffix(".py")
        assert any(Path(d) == module or Path(d) in module.parents for d in stage["deps"]), name
        if spec.family == "neural":
            assert {"train.lookback", "neural.trainer", "neural.inputs"} <= set(stage["params"])


def test_folds_without_enough_rows_are_skipped_not_scored(panel):
    """A long feature warm-up leaves the first expanding fold without training rows: it is
    listed as not scored and the mean is over the other folds; with no fold left it is an error."""
    labels, folds, ds, _, _ = panel
    late = ds.subset(np.flatnonzero(ds.keys.groupby("symbol").cumcount().to_numpy() >= 120))  # more warm-up
    out = cross_validate(late, labels, folds, CVConfig(models=("ridge",)), blocks={}, seed=0)
    assert out["_folds"]["fold0"]["scored"] is False and out["_folds"]["fold0"]["train_rows"] < 30
    assert out["_folds"]["fold1"]["scored"] and out["_folds"]["fold2"]["scored"]
    h1 = out["ridge"]["h1"]
    assert set(h1) == {"fold1", "fold2", "mean", "std"}
    assert h1["mean"]["ic"] == pytest.approx((h1["fold1"]["ic"] + h1["fold2"]["ic"]) / 2)
    with pytest.raises(ValueError, match="no fold has >= 30"):
        cross_validate(late, labels, folds[folds["fold"] == 0], CVConfig(models=("ridge",)), blocks={}, seed=0)


LGB_SMALL = {"lightgbm": {"n_estimators": 40, "early_stopping_rounds": 10, "min_child_samples": 20,
                          "num_threads": 1}}


def test_classification_task_scores_the_expected_return(panel):
    labels, folds, ds, _, _ = panel
    out = cross_validate(ds, labels, folds, CVConfig(models=("lightgbm",)), blocks=LGB_SMALL, seed=0,
                         task="classification")
    assert all(math.isfinite(v) for v in out["lightgbm"]["h1"]["mean"].values())
    assert out["lightgbm"]["h1"]["fold0"]["n"] == out["_folds"]["fold0"]["test_rows"]
    fold = out["lightgbm"]["h1"]["fold0"]  # class figures of the class probabilities, same rows
    assert 0 < fold["accuracy"] <= 1 and 0 < fold["macro_f1"] <= 1 and fold["log_loss"] > 0
    assert set(out["lightgbm"]["h1"]["mean"]) >= {"accuracy", "macro_f1", "log_loss", "ic"}
    with pytest.raises(ConfigError, match="cv.models: 'ridge' does not support train.task 'classification'"):
        cross_validate(ds, labels, folds, CVConfig(models=("ridge",)), blocks={}, seed=0, task="classification")


def test_per_symbol_scope_leaves_out_symbols_without_train_rows(panel):
    """S02 lists 120 bars late: in fold 0 it has no train rows, so per_symbol (one model per
    symbol) cannot forecast it there; the other folds forecast every symbol, as pooled does."""
    labels, folds, ds, _, _ = panel
    late = ds.subset(np.flatnonzero((ds.keys["symbol"] != "S02").to_numpy()
                                    | (ds.keys.groupby("symbol").cumcount().to_numpy() >= 120)))
    cfg = CVConfig(models=("ridge",))
    pooled = cross_validate(late, labels, folds, cfg, blocks={}, seed=0)
    per_sym = cross_validate(late, labels, folds, cfg, blocks={}, seed=0, scope="per_symbol")
    s02_test0 = folds[(folds["fold"] == 0) & (folds["role"] == "test") & (folds["symbol"] == "S02")]
    s02_test0 = s02_test0.merge(late.keys, on=KEYS)
    assert len(s02_test0)  # S02 has fold-0 test rows that pooled scores
    assert per_sym["_folds"]["fold0"]["test_rows"] == pooled["_folds"]["fold0"]["test_rows"] - len(s02_test0)
    for fid in ("fold1", "fold2"):
        assert per_sym["_folds"][fid]["test_rows"] == pooled["_folds"][fid]["test_rows"]
        assert per_sym["ridge"]["h1"][fid]["ic"] != pooled["ridge"]["h1"][fid]["ic"]  # really per symbol


def test_feature_selection_is_refitted_on_each_folds_train_rows(panel, monkeypatch):
    """train.select inside CV: fitted once per scored fold, on that fold's train rows (never its
    val or test rows), and the models of the fold see only the kept columns."""
    import alphafactory.evaluation.cv as cv_module
    from alphafactory.feature_select import SelectConfig, select_dataset

    labels, folds, ds, label_end, _ = panel
    cfg = CVConfig(models=("ridge",), val_frac=0.25)
    seen = []

    def spy(fold_ds, select, *, seed):
        seen.append(fold_ds.segment.copy())
        return select_dataset(fold_ds, select, seed=seed)

    monkeypatch.setattr(cv_module, "select_dataset", spy)
    out = cross_validate(ds, labels, folds, cfg, blocks={}, seed=0,
                         select=SelectConfig(method="correlation", top_k=1))
    scored = [f for f in sorted(int(k[4:]) for k in out["_folds"]) if out["_folds"][f"fold{f}"]["scored"]]
    assert len(seen) == len(scored) >= 2
    for seg, fid in zip(seen, scored, strict=True):
        want = fold_segments(ds, folds[folds["fold"] == fid], label_end, cfg.val_frac)
        np.testing.assert_array_equal(seg, want)  # the train rows it fitted on are the fold's
        assert out["_folds"][f"fold{fid}"]["selected_features"] == ["knows"]
        assert out["_folds"][f"fold{fid}"]["selected"] == 1
    assert out["ridge"]["h1"]["mean"]["ic"] > 0.5  # ridge on "knows" alone still finds it
    plain = cross_validate(ds, labels, folds, cfg, blocks={}, seed=0)
    assert not any("selected" in s for s in plain["_folds"].values())


def test_fold_scores_use_the_raw_return_under_a_normalised_target():
    """score_fold scores against ds.R (ret_h) when the target Y is normalised."""
    import pandas as pd

    from alphafactory.dataset import Dataset
    from alphafactory.evaluation.cv import score_fold

    rng = np.random.default_rng(0)
    n_t, syms = 200, ["A", "B", "C"]
    keys = pd.DataFrame({"symbol": np.repeat(syms, n_t),
                         "timestamp": np.tile(pd.bdate_range("2020-01-01", periods=n_t), 3)})
    ret = rng.standard_normal((len(keys), 1)).astype(np.float32)
    ds = Dataset(keys=keys, X=np.zeros((len(keys), 1), np.float32), Y=rng.standard_normal((len(keys), 1)).astype(np.float32),
                 feature_names=["f"], horizons=(1,), segment=np.full(len(keys), "test"),
                 sym_codes=np.repeat(np.arange(3), n_t), vol=np.ones(len(keys)), R=ret)
    preds = keys.assign(model="m", horizon=1, yhat=ret[:, 0] + rng.standard_normal(len(keys)))
    got = score_fold(preds, ds)["m"]["h1"]
    assert got["ic"] == pytest.approx(np.corrcoef(preds["yhat"], ret[:, 0])[0, 1], rel=1e-5)
    assert got["ic"] > 0.5


def test_raw_input_networks_refit_per_fold_on_the_attached_bars(panel):
    """cv refits a network under ``neural.inputs.kind: raw`` through the same code as the train
    stage: with the prepared bars attached it scores every fold; without them it is an error."""
    from alphafactory.raw_windows import with_bars

    labels, folds, ds, _, _ = panel
    extra = {"neural": {"lookback": 8, "trainer": {"epochs": 1, "batch_size": 128},
                        "inputs": {"kind": "raw", "resolutions": [[1, 8], [10, 6]]}}}
    cfg = CVConfig(models=("lstm",))
    out = cross_validate(with_bars(ds, random_bars(n_symbols=3, n_bars=500, seed=5)), labels, folds, cfg,
                         blocks={}, seed=0, extra=extra)
    assert all(out["_folds"][f]["scored"] for f in out["_folds"])
    assert math.isfinite(out["lstm"]["h1"]["mean"]["ic"])
    with pytest.raises(ConfigError, match="the raw windows need the prepared bars"):
        cross_validate(ds, labels, folds, cfg, blocks={}, seed=0, extra=extra)
