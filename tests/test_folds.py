"""Cross-validation folds inside train + val: purged, embargoed, never touching the test segment."""
from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from alphafactory.config import check, from_dict
from alphafactory.errors import ConfigError
from alphafactory.labels import LabelConfig, make_labels
from alphafactory.split import (
    SplitConfig,
    boundaries,
    cpcv_folds,
    cpcv_paths,
    cpcv_splits,
    make_folds,
    walk_forward_folds,
)
from conftest import random_bars

HORIZONS = (1, 5, 20)
H = max(HORIZONS)
EMBARGO = 3


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    """4 symbols x 700 bars; S03 lists late and S02 has a gap, so bars != timestamps."""
    bars = random_bars(n_symbols=4, n_bars=700, seed=3)
    ts = bars["timestamp"]
    late = (bars["symbol"] == "S03") & (ts < ts.iloc[90])
    gap = (bars["symbol"] == "S02") & (ts >= ts.iloc[300]) & (ts < ts.iloc[310])
    return make_labels(bars[~(late | gap)].reset_index(drop=True), LabelConfig(horizons=HORIZONS))


def cfg(**kw) -> SplitConfig:
    return SplitConfig(val_frac=0.15, test_frac=0.15, embargo=EMBARGO, **kw)


def joined(labels: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Fold rows with their label end and position among their symbol's bars."""
    lab = labels[["symbol", "timestamp", f"end_h{H}"]].assign(pos=labels.groupby("symbol").cumcount())
    out = folds.merge(lab, on=["symbol", "timestamp"], how="left", validate="m:1")
    assert out["pos"].notna().all()
    return out.rename(columns={f"end_h{H}": "end"})


def blocks(test: pd.DataFrame) -> list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]]:
    """(first timestamp, last timestamp, last label end) of each run of consecutive test groups."""
    out = []
    groups = sorted(test["group"].unique())
    runs = np.split(np.array(groups), np.flatnonzero(np.diff(groups) > 1) + 1)
    for run in runs:
        t = test[test["group"].isin(run)]
        out.append((t["timestamp"].min(), t["timestamp"].max(), t["end"].max()))
    return out


def check_gaps(labels: pd.DataFrame, folds: pd.DataFrame) -> None:
    """Purge and embargo on both sides of every test block, counted in each symbol's own bars."""
    df = joined(labels, folds)
    lab = labels.assign(pos=labels.groupby("symbol").cumcount())
    for _, f in df.groupby("fold"):
        train, test = f[f["role"] == "train"], f[f["role"] == "test"]
        assert len(train) and len(test)
        for t0, t1, label_end in blocks(test):
            before = train[train["timestamp"] < t0]
            # purge: no training label window reaches the block
            assert (before["end"] < t0).all()
            after = train[train["timestamp"] > t1]
            assert (after["timestamp"] > label_end).all()
            for sym, g in lab.groupby("symbol"):
                crossing = g[(g["timestamp"] < t0) & (g[f"end_h{H}"] >= t0)]
                b = before[before["symbol"] == sym]
                if len(b) and len(crossing):
                    # at least EMBARGO bars between the last training bar and the first crossing one
                    assert crossing["pos"].min() - b["pos"].max() - 1 >= EMBARGO
                a = after[after["symbol"] == sym]
                if len(a):
                    first_free = g.loc[g["timestamp"] > label_end, "pos"].min()
                    assert a["pos"].min() - first_free >= EMBARGO


def test_expanding_walk_forward(labels: pd.DataFrame) -> None:
    c = cfg(cv_folds=4)
    folds = walk_forward_folds(labels, HORIZONS, c)
    assert list(folds.columns) == ["symbol", "timestamp", "fold", "group", "role"]
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    check_gaps(labels, folds)
    df = joined(labels, folds)
    _, test_start = boundaries(labels["timestamp"].to_numpy(), c)
    # nothing from the test segment, as feature row or as label
    assert (df["timestamp"] < test_start).all() and (df["end"] < test_start).all()
    tests = [df[(df["fold"] == i) & (df["role"] == "test")] for i in range(4)]
    trains = [df[(df["fold"] == i) & (df["role"] == "train")] for i in range(4)]
    for i in range(4):
        assert trains[i]["timestamp"].max() < tests[i]["timestamp"].min()  # only the past trains
        assert set(tests[i]["group"]) == {i + 1}
    for a, b in pairwise(tests):  # test blocks disjoint and in time order
        assert a["timestamp"].max() < b["timestamp"].min()
    # expanding: each fold trains on everything the previous one did, and more
    sizes = [len(t) for t in trains]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    for a, b in pairwise(trains):
        assert set(zip(a["symbol"], a["timestamp"], strict=True)) < set(zip(b["symbol"], b["timestamp"], strict=True))
    # the gap is tight: the last training bar of a full-history symbol sits right before the
    # embargo, so the purge removes exactly the crossing labels and no more
    s0 = df[(df["symbol"] == "S00") & (df["fold"] == 2)]
    lab0 = labels[labels["symbol"] == "S00"].reset_index(drop=True)
    first_test = lab0.index[lab0["timestamp"] == tests[2]["timestamp"].min()][0]
    last_train = lab0.index[lab0["timestamp"] == s0.loc[s0["role"] == "train", "timestamp"].max()][0]
    assert first_test - last_train - 1 == H + EMBARGO


def test_rolling_walk_forward(labels: pd.DataFrame) -> None:
    expanding = walk_forward_folds(labels, HORIZONS, cfg(cv_folds=3))
    rolling = walk_forward_folds(labels, HORIZONS, cfg(cv_folds=3, cv_mode="rolling", cv_train_bars=60))
    check_gaps(labels, rolling)
    for i in range(3):
        e = expanding[(expanding["fold"] == i)]
        r = rolling[(rolling["fold"] == i)]
        # same test blocks; training is the last 60 timestamps of the expanding training set
        pd.testing.assert_frame_equal(e[e["role"] == "test"].reset_index(drop=True),
                                      r[r["role"] == "test"].reset_index(drop=True))
        e_tr, r_tr = e[e["role"] == "train"], r[r["role"] == "train"]
        assert r_tr["timestamp"].nunique() == 60
        assert r_tr["timestamp"].max() == e_tr["timestamp"].max()
        assert set(zip(r_tr["symbol"], r_tr["timestamp"], strict=True)) <= set(zip(e_tr["symbol"], e_tr["timestamp"], strict=True))
    starts = rolling[rolling["role"] == "train"].groupby("fold")["timestamp"].min()
    assert starts.is_monotonic_increasing and starts.nunique() == 3
    with pytest.raises(ValueError, match="cv_train_bars: got 100000"):
        walk_forward_folds(labels, HORIZONS, cfg(cv_folds=3, cv_mode="rolling", cv_train_bars=100_000))


@pytest.mark.parametrize("n, k", [(5, 2), (4, 1)])
def test_cpcv(labels: pd.DataFrame, n: int, k: int) -> None:
    c = cfg(cv_folds=n, cv_mode="cpcv", cv_test_groups=k)
    folds = cpcv_folds(labels, HORIZONS, c)
    assert folds["fold"].nunique() == math.comb(n, k)
    tested = folds[folds["role"] == "test"].groupby("fold")["group"].unique()
    assert [tuple(sorted(g)) for g in tested] == cpcv_splits(n, k)
    counts = pd.Series([g for gs in tested for g in gs]).value_counts()
    assert sorted(counts.index) == list(range(n)) and (counts == math.comb(n - 1, k - 1)).all()
    # every fold tests whole groups: the rows of a group are the same whichever fold tests it
    per_group = folds[folds["role"] == "test"].groupby(["group", "fold"]).size().unstack()
    assert (per_group.nunique(axis=1, dropna=True) == 1).all()
    check_gaps(labels, folds)
    _, test_start = boundaries(labels["timestamp"].to_numpy(), c)
    assert (joined(labels, folds)["end"] < test_start).all()
    # training rows on both sides of a middle test block
    middle = [i for i, s in enumerate(cpcv_splits(n, k)) if 0 not in s and n - 1 not in s][0]
    f = folds[folds["fold"] == middle]
    t = f[f["role"] == "test"]["timestamp"]
    tr = f[f["role"] == "train"]["timestamp"]
    assert (tr < t.min()).any() and (tr > t.max()).any()
    # backtest paths: each path tests every group once; each (fold, group) pair is used once
    paths = cpcv_paths(n, k)
    assert paths.shape == (math.comb(n - 1, k - 1), n)
    pairs = {(int(paths[p, g]), g) for p in range(paths.shape[0]) for g in range(n)}
    assert len(pairs) == paths.size
    assert pairs == {(i, g) for i, s in enumerate(cpcv_splits(n, k)) for g in s}
    assert make_folds(labels, HORIZONS, c).equals(folds)


@pytest.mark.parametrize("params, match", [
    ({"cv_folds": 1}, "split.cv_folds: got 1"),
    ({"cv_mode": "walk"}, "split.cv_mode: got 'walk'"),
    ({"cv_mode": "rolling"}, "split.cv_train_bars: got None with cv_mode 'rolling'"),
    ({"cv_mode": "rolling", "cv_train_bars": 0}, "split.cv_train_bars: got 0"),
    ({"cv_train_bars": 50}, "split.cv_train_bars: got 50 with cv_mode 'expanding'"),
    ({"cv_mode": "cpcv", "cv_folds": 4, "cv_test_groups": 4}, "split.cv_test_groups: got 4 with cv_folds 4"),
    ({"cv_test_groups": 0}, "split.cv_test_groups: got 0"),
])
def test_config_errors(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_dict(SplitConfig, params, "split")
    with pytest.raises(ValueError, match=match):
        check(SplitConfig(**params), "split")


def test_config_types_and_misuse(labels: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="split.cv_folds: got '4', expected an integer"):
        from_dict(SplitConfig, {"cv_folds": "4"}, "split")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SplitConfig, {"cv_fold": 4}, "split")
    assert from_dict(SplitConfig, {"cv_mode": "rolling", "cv_train_bars": 250}, "split").cv_train_bars == 250
    with pytest.raises(ValueError, match="cv_mode is 'cpcv'"):
        walk_forward_folds(labels, HORIZONS, cfg(cv_mode="cpcv"))
    with pytest.raises(ValueError, match="split.cv_folds: 401 time groups need at least 802"):
        walk_forward_folds(labels, HORIZONS, cfg(cv_folds=400))
    with pytest.raises(ValueError, match="fold 0 has 0 training and [0-9]+ test rows"):
        walk_forward_folds(labels, HORIZONS, cfg(cv_folds=199))
    with pytest.raises(ValueError, match="sorted by \\(symbol, timestamp\\)"):
        walk_forward_folds(labels.iloc[::-1].reset_index(drop=True), HORIZONS, cfg())


def test_split_stage_writes_folds(project) -> None:
    """The pipeline's split stage writes the configured folds next to the segments."""
    repo, _ = project
    folds = pd.read_parquet(repo / "data/split/folds.parquet")
    seg = pd.read_parquet(repo / "data/split/segments.parquet")
    assert list(folds.columns) == ["symbol", "timestamp", "fold", "group", "role"]
    assert folds["fold"].nunique() == 4 and set(folds["role"]) == {"train", "test"}
    assert folds["timestamp"].max() < seg.loc[seg["segment"] == "test", "timestamp"].min()
    import json

    summary = json.loads((repo / "data/split/summary.json").read_text())
    assert summary["folds"]["mode"] == "expanding" and len(summary["folds"]["folds"]) == 4
