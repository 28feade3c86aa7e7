"""Data read in parts (issue 19, memory): the lazy feature view (io.ParquetRows) read from a file
of several row groups, dataset.load's lazy and in-memory forms, and LightGBM trained and
predicting on the view: the same Dataset, boosters and forecasts as from the array in memory."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory import dataset, models, train
from alphafactory.feature_select import SelectConfig
from alphafactory.io import ParquetRows, write_parquet_pieces
from alphafactory.labels import KEYS
from alphafactory.models.base import XY


def write_panel(tmp_path, n_symbols: int = 6, bars: int = 700, F: int = 9, seed: int = 0):
    """(features path, labels path, segments path, feature frame) of a planted-signal panel,
    the features written in pieces of 2 symbols with row groups of 500 rows."""
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2015-01-01", periods=bars)
    sym = np.repeat([f"S{i}" for i in range(n_symbols)], bars)
    X = rng.normal(size=(n_symbols * bars, F)).astype(np.float32)
    X[rng.random(X.shape) < 0.03] = np.nan
    feats = pd.DataFrame(X, columns=[f"f{j}" for j in range(F)])
    feats.insert(0, "timestamp", np.tile(ts, n_symbols))
    feats.insert(0, "symbol", sym)
    y = np.nan_to_num(X[:, 0]) * 0.3 + np.nan_to_num(X[:, 1]) * X[:, 2].clip(-1, 1) * 0.2 + rng.normal(size=len(X))
    labels = feats[KEYS].copy()
    for h, k in ((1, 1.0), (5, 0.7)):
        labels[f"y_h{h}"] = (y * k).astype(np.float32)
        labels[f"cls_h{h}"] = np.where(np.abs(y) > 0.5, np.sign(y), 0.0).astype(np.float32)
        labels[f"ret_h{h}"] = (y * k * 0.01).astype(np.float32)
    labels.loc[labels.groupby("symbol").cumcount() >= bars - 5, "y_h5"] = np.nan  # h5 not labelled at the end
    labels["vol"] = 0.01
    pos = labels.groupby("symbol").cumcount().to_numpy()
    segments = labels[KEYS].assign(segment=np.select([pos < 400, pos < 550], ["train", "val"], "test"))
    # a feature row with no label (dropped by the join), so the view is not the identity
    labels, segments = labels.drop(index=[3, 1500]), segments.drop(index=[3, 1500])
    paths = [tmp_path / n for n in ("features.parquet", "labels.parquet", "segments.parquet")]
    write_parquet_pieces((feats.iloc[i:i + 2 * bars] for i in range(0, len(feats), 2 * bars)), paths[0],
                         row_group_size=500)
    labels.to_parquet(paths[1], index=False)
    segments.to_parquet(paths[2], index=False)
    return *map(str, paths), feats


def test_lazy_view_reads_the_rows_asked_for(tmp_path):
    fpath, _, _, feats = write_panel(tmp_path)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(fpath).metadata.num_row_groups > 6
    cols = [c for c in feats.columns if c not in KEYS]
    full = feats[cols].to_numpy()
    rows = np.flatnonzero(np.arange(len(feats)) % 7 != 3)
    view = ParquetRows(fpath, cols, rows, np.float32)
    assert view.shape == (len(rows), len(cols))
    assert np.array_equal(np.asarray(view), full[rows], equal_nan=True)
    part = view[100:1700]
    assert np.array_equal(part.read(5, 900), full[rows[100:1700][5:900]], equal_nan=True)
    assert np.array_equal(np.concatenate(list(view.batches(333))), full[rows], equal_nan=True)
    assert np.array_equal(view.row(2500, block=64), full[rows[2500]], equal_nan=True)
    assert np.array_equal(view.select(["f3", "f1"]).read(0, 10), full[rows[:10]][:, [3, 1]], equal_nan=True)


def test_a_read_in_any_row_order_fills_each_row_from_its_group(tmp_path):
    """Rows out of file order, repeated, and spread over many row groups in one read: each is
    filled from its own group, in the order asked for, one group decoded at a time."""
    fpath, _, _, feats = write_panel(tmp_path)
    cols = [c for c in feats.columns if c not in KEYS]
    full = feats[cols].to_numpy()
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(fpath).metadata
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    rows = np.random.default_rng(1).permutation(len(feats))[:300]
    rows = np.concatenate([rows, rows[:50], [0, len(feats) - 1]])
    view = ParquetRows(fpath, cols, rows, np.float32)
    assert np.array_equal(view.read(), full[rows], equal_nan=True)
    touched = len(np.unique(np.searchsorted(starts, rows, side="right")))
    assert 6 < touched and view.group_reads == touched  # each group decoded once


def test_a_pass_over_a_view_reads_each_row_group_once(tmp_path):
    """Consecutive reads share the row group at their boundary; the last one read is kept, so a
    pass in parts of any size reads each group of the view's rows once (not about twice)."""
    fpath, _, _, feats = write_panel(tmp_path)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(fpath).metadata
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    cols = [c for c in feats.columns if c not in KEYS]
    rows = np.flatnonzero(np.arange(len(feats)) % 700 < 400)  # a train segment: each symbol's first rows
    touched = len(np.unique(np.searchsorted(starts, rows, side="right")))  # groups holding a view row
    assert touched > 6
    for size in (333, 500, 777):
        view = ParquetRows(fpath, cols, rows, np.float32)
        assert np.array_equal(np.concatenate(list(view.batches(size))), feats[cols].to_numpy()[rows], equal_nan=True)
        assert view.group_reads == touched


def test_lazy_load_is_the_in_memory_dataset(tmp_path):
    fpath, lpath, spath, _ = write_panel(tmp_path)
    mem, lazy = dataset.load(fpath, lpath, spath), dataset.load(fpath, lpath, spath, lazy=True)
    whole = dataset.assemble(pd.read_parquet(fpath), pd.read_parquet(lpath), pd.read_parquet(spath), (1, 5))
    assert isinstance(lazy.X, ParquetRows) and isinstance(mem.X, np.ndarray)
    assert np.array_equal(mem.X, whole.X, equal_nan=True) and mem.X.flags.c_contiguous
    assert np.array_equal(np.asarray(lazy.X), mem.X, equal_nan=True)
    for a, b in ((lazy, mem), (mem, whole)):
        assert a.keys.equals(b.keys) and a.feature_names == b.feature_names
        assert np.array_equal(a.Y, b.Y, equal_nan=True) and (a.segment == b.segment).all()
    assert train.data_hash(lazy) == train.data_hash(mem)
    import hashlib  # the digest of the bytes copies data_hash hashed before (saved in every manifest)

    old = hashlib.sha256(mem.X.tobytes() + mem.Y.tobytes() + mem.segment.astype("U8").tobytes()).hexdigest()[:16]
    assert train.data_hash(mem) == old


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_lightgbm_on_the_lazy_view_is_the_in_memory_model(tmp_path, task):
    """Binned from a lightgbm.Sequence over the view (h1, fully labelled: the shared bins) and
    from a row subset of it (h5, unlabelled at the end): the saved boosters are byte for byte
    those fitted on the arrays, and so are the forecasts, predicted part by part."""
    fpath, lpath, spath, _ = write_panel(tmp_path)
    mem, lazy = dataset.load(fpath, lpath, spath), dataset.load(fpath, lpath, spath, lazy=True)
    block = {"n_estimators": 40, "early_stopping_rounds": 10, "num_threads": 1, "min_child_samples": 20}
    out = {}
    for tag, ds in (("mem", mem), ("lazy", lazy)):
        model, forecasts = train.fit_forecast(ds, "lightgbm", block, seed=3, task=task)
        models.save(model, tmp_path / tag, meta={})
        out[tag] = forecasts
    for h in ("h1", "h5"):
        a, b = ((tmp_path / t / f"{h}.txt").read_bytes() for t in ("mem", "lazy"))
        assert a == b and len(a) > 1000
    for seg in ("val", "test"):
        assert np.array_equal(out["mem"][seg][0], out["lazy"][seg][0])
        assert np.array_equal(out["mem"][seg][1], out["lazy"][seg][1])
        if task == "classification":
            assert np.array_equal(out["mem"][seg][2], out["lazy"][seg][2])


def test_lazy_features_forecast_val_and_test_in_one_pass(tmp_path, monkeypatch):
    """On the lazy view val and test are forecast together (one pass over the file), and each
    segment gets its own rows' forecasts, as from the arrays in memory."""
    fpath, lpath, spath, _ = write_panel(tmp_path)
    calls = []
    forecast = train._forecast
    monkeypatch.setattr(train, "_forecast", lambda model, X: calls.append(len(X)) or forecast(model, X))
    block = {"n_estimators": 20, "num_threads": 1}
    lazy = dataset.load(fpath, lpath, spath, lazy=True)
    _, got = train.fit_forecast(lazy, "lightgbm", block, seed=1)
    assert calls == [len(lazy.rows("val")) + len(lazy.rows("test"))]
    _, want = train.fit_forecast(dataset.load(fpath, lpath, spath), "lightgbm", block, seed=1)
    assert calls[1:] == [len(lazy.rows("val")), len(lazy.rows("test"))]
    for seg in ("val", "test"):
        assert np.array_equal(got[seg][0], want[seg][0]) and np.array_equal(got[seg][1], want[seg][1])
        assert got[seg][2] is None and got[seg][3] is None


def test_lightgbm_predicts_a_view_as_its_array(tmp_path, monkeypatch):
    fpath, lpath, spath, _ = write_panel(tmp_path)
    ds = dataset.load(fpath, lpath, spath, lazy=True)
    X = np.asarray(ds.X)
    rows = ds.rows("train")
    model = models.create("lightgbm", {"n_estimators": 15, "num_threads": 1}, horizons=ds.horizons, seed=0)
    model.fit(XY(X[rows], ds.Y[rows]), XY(X[ds.rows("val")], ds.Y[ds.rows("val")]))
    reads = []
    read = ParquetRows.read
    monkeypatch.setattr(ParquetRows, "read", lambda self, *a: reads.append(a) or read(self, *a))
    assert np.array_equal(model.predict(ds.X), model.predict(X))
    assert len(reads) == -(-len(X) // 65536)  # each part read once, for every horizon


def test_reads_in_parts_only_where_every_model_can():
    on = SelectConfig()
    assert train.reads_in_parts(("lightgbm",), {}, "pooled", on)
    assert not train.reads_in_parts(("lightgbm", "xgboost"), {}, "pooled", on)
    assert not train.reads_in_parts(("lightgbm",), {}, "per_symbol", on)
    assert not train.reads_in_parts(("lightgbm",), {"lightgbm": {"distributed": True}}, "pooled", on)
    assert not train.reads_in_parts((), {}, "pooled", on)


def _long_forecasts(name: str, n: int, seed: int, proba: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = np.tile(pd.bdate_range("2020-01-01", periods=n // 4).to_numpy(), 4)[:n]
    out = {"symbol": np.repeat(["A", "B", "C", "D"], n // 4)[:n], "timestamp": ts,
           "segment": np.where(np.arange(n) % 3 == 0, "val", "test"), "model": name,
           "horizon": np.tile(np.array([1, 5], np.int64), n // 2 + 1)[:n], "yhat": rng.normal(size=n),
           "yhat_std": rng.random(n), "prob_up": rng.random(n)}
    if proba:
        out |= {c: rng.random(n) for c in ("p_short", "p_neutral", "p_long")}
    return pd.DataFrame(out)


def test_forecasts_written_a_model_at_a_time_are_the_concat(tmp_path):
    """The train stage writes each model's forecasts as its own row groups (no concat copy): the
    table read back is the concat's, bit for bit; frames whose columns differ are concatenated
    (NaN where a model has no class probabilities), and one frame is write_parquet's bytes."""
    import pyarrow.parquet as pq

    from alphafactory.io import write_parquet, write_parquet_concat

    frames = [_long_forecasts(m, n, i) for i, (m, n) in enumerate((("lightgbm", 1200), ("xgboost", 900), ("cat", 4)))]
    path = tmp_path / "preds.parquet"
    assert write_parquet_concat(frames, path, row_group_size=500) == 2104
    assert pq.ParquetFile(path).metadata.num_row_groups == 3 + 2 + 1
    pd.testing.assert_frame_equal(pd.read_parquet(path), pd.concat(frames, ignore_index=True), check_exact=True)
    mixed = [frames[0], _long_forecasts("clf", 800, 7, proba=True)]
    write_parquet_concat(mixed, path)
    got, want = pd.read_parquet(path), pd.concat(mixed, ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got["p_long"].isna().sum() == 1200
    write_parquet_concat(frames[:1], path)
    write_parquet(frames[0], tmp_path / "one.parquet")
    assert path.read_bytes() == (tmp_path / "one.parquet").read_bytes()
    with pytest.raises(ValueError, match="no frames"):
        write_parquet_concat([], path)


def test_the_join_sorts_tables_out_of_order_and_keeps_them_in_order(tmp_path):
    """The join hashes symbol codes and skips its sort when the rows are in (symbol, timestamp)
    order: tables given shuffled give the Dataset of the tables in order."""
    fpath, lpath, spath, feats = write_panel(tmp_path)
    labels, segments = pd.read_parquet(lpath), pd.read_parquet(spath)
    want = dataset.assemble(feats, labels, segments, (1, 5))
    order = np.random.default_rng(2).permutation
    got = dataset.assemble(feats.iloc[order(len(feats))], labels.iloc[order(len(labels))],
                           segments.iloc[order(len(segments))], (1, 5))
    assert got.keys.equals(want.keys) and (got.sym_codes == want.sym_codes).all()
    assert np.array_equal(got.X, want.X, equal_nan=True) and np.array_equal(got.Y, want.Y, equal_nan=True)
    assert (got.segment == want.segment).all() and np.array_equal(got.C, want.C, equal_nan=True)
    assert want.keys.equals(want.keys.sort_values(KEYS, ignore_index=True))
