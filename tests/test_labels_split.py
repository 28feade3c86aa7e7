"""Labels end where they say; splits are purged by the label horizon plus an embargo."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory.config import from_dict
from alphafactory.errors import ConfigError
from alphafactory.labels import LabelConfig, make_labels
from alphafactory.split import SplitConfig, assign_segments, boundaries
from conftest import random_bars


def test_forward_log_return_and_end_time(bars):
    lab = make_labels(bars, LabelConfig(horizons=(1, 5)))
    for sym, g in bars.groupby("symbol"):
        L = lab[lab["symbol"] == sym].reset_index(drop=True)
        c = g["close"].to_numpy()
        ts = g["timestamp"].to_numpy()
        np.testing.assert_allclose(L["ret_h5"].to_numpy()[:-5], np.log(c[5:] / c[:-5]))
        assert (L["end_h5"].to_numpy()[:-5] == ts[5:]).all()
        # the last h bars have no h-label: NaN, never filled, never taken from the next symbol
        assert L["ret_h5"].iloc[-5:].isna().all() and L["end_h5"].iloc[-5:].isna().all()
        assert L["ret_h1"].iloc[-1:].isna().all() and L["ret_h1"].iloc[:-1].notna().all()


def test_normalised_target_and_classes(bars):
    cfg = LabelConfig(horizons=(5,), normalize="vol", class_threshold=0.5, vol_window=20)
    lab = make_labels(bars, cfg)
    ok = lab["y_h5"].notna()
    np.testing.assert_allclose(lab.loc[ok, "y_h5"], lab.loc[ok, "ret_h5"] / (lab.loc[ok, "vol"] * np.sqrt(5)))
    z = lab.loc[ok, "y_h5"]
    cls = lab.loc[ok, "cls_h5"]
    assert (cls[z > 0.5] == 1).all() and (cls[z < -0.5] == -1).all() and (cls[z.abs() < 0.5] == 0).all()
    # trailing vol at t uses returns up to t only: the first vol_window bars have none
    first = lab.groupby("symbol").head(20)
    assert first["vol"].isna().all()


def test_cross_sectional_targets(bars):
    raw = make_labels(bars, LabelConfig(horizons=(1, 5)))
    for h in (1, 5):
        np.testing.assert_array_equal(raw[f"y_h{h}"].to_numpy(), raw[f"ret_h{h}"].to_numpy())
    z = make_labels(bars, LabelConfig(horizons=(1, 5), normalize="cs_zscore"))
    r = make_labels(bars, LabelConfig(horizons=(1, 5), normalize="cs_rank"))
    for h in (1, 5):
        ret = z[f"ret_h{h}"]
        np.testing.assert_array_equal(ret.to_numpy(), raw[f"ret_h{h}"].to_numpy())  # raw return kept
        n = ret.notna().groupby(z["timestamp"]).transform("sum")
        ok = ret.notna() & (n >= 2)
        g = z.loc[ok].groupby("timestamp")[f"y_h{h}"]
        np.testing.assert_allclose(g.mean(), 0.0, atol=1e-9)
        np.testing.assert_allclose(g.std(ddof=0), 1.0, rtol=1e-9)
        # the z-score is an affine map of the raw return within a timestamp
        want = ret[ok] - ret[ok].groupby(z.loc[ok, "timestamp"]).transform("mean")
        assert np.corrcoef(want, z.loc[ok, f"y_h{h}"])[0, 1] > 0.5
        assert z.loc[~ok, f"y_h{h}"].isna().all()
        gr = r.loc[ok].groupby("timestamp")[f"y_h{h}"]
        np.testing.assert_allclose(gr.mean(), 0.0, atol=1e-12)
        assert r.loc[ok, f"y_h{h}"].between(-0.5, 0.5).all()
        # same order within each timestamp as the raw return
        rk = ret[ok].groupby(z.loc[ok, "timestamp"]).rank()
        np.testing.assert_array_equal(rk.to_numpy(), r.loc[ok, f"y_h{h}"].groupby(z.loc[ok, "timestamp"]).rank().to_numpy())
        # classes stay those of the raw return
        np.testing.assert_array_equal(z[f"cls_h{h}"].to_numpy(), raw[f"cls_h{h}"].to_numpy())


def test_label_normalize_old_boolean_is_a_clear_error():
    for old, new in ((False, "none"), (True, "vol")):
        with pytest.raises(ConfigError, match=f"label.normalize: got {str(old).lower()}, the old boolean form.*"
                                              f"{'false is now none, true is vol'}"):
            from_dict(LabelConfig, {"normalize": old}, "label")
        assert from_dict(LabelConfig, {"normalize": new}, "label").normalize == new
    with pytest.raises(ConfigError, match="label.normalize"):
        from_dict(LabelConfig, {"normalize": "rank"}, "label")


def test_label_config_errors():
    with pytest.raises(ValueError, match="horizons"):
        from_dict(LabelConfig, {"horizons": [0, 5]}, "label")
    with pytest.raises(ConfigError, match="horizon_s"):
        from_dict(LabelConfig, {"horizon_s": [1]}, "label")


@pytest.mark.parametrize("embargo", [0, 3])
def test_purge_and_embargo(embargo):
    bars = random_bars(n_symbols=4, n_bars=400)
    # symbols with different histories: one starts late
    bars = bars[~((bars["symbol"] == "S03") & (bars["timestamp"] < bars["timestamp"].iloc[150]))].reset_index(drop=True)
    horizons = (1, 5, 20)
    lab = make_labels(bars, LabelConfig(horizons=horizons))
    cfg = SplitConfig(val_frac=0.2, test_frac=0.2, embargo=embargo)
    seg = assign_segments(lab, horizons, cfg)
    val_start, test_start = boundaries(lab["timestamp"].to_numpy(), cfg)
    df = lab.assign(segment=seg["segment"].to_numpy())
    end = df["end_h20"]
    # no train label reaches into val or test; no val label reaches into test
    assert (end[df["segment"] == "train"] < val_start).all()
    assert (end[df["segment"] == "val"] < test_start).all()
    # segments are in time order
    assert df.loc[df["segment"] == "train", "timestamp"].max() < val_start
    assert df.loc[df["segment"] == "test", "timestamp"].min() >= test_start
    # the last 20 bars of each symbol before a boundary are purged (longest label crosses it)
    for _, g in df.groupby("symbol"):
        before_val = g[g["timestamp"] < val_start]
        assert (before_val["segment"].iloc[-20:] == "purged").all()
        assert before_val["segment"].iloc[-21] == "train"
        after_test = g[g["timestamp"] >= test_start]
        assert (after_test["segment"].iloc[:embargo] == "purged").all()
        assert (after_test["segment"].iloc[embargo:] == "test").all()
        after_val = g[(g["timestamp"] >= val_start) & (g["timestamp"] < test_start)]
        assert (after_val["segment"].iloc[:embargo] == "purged").all()
        assert after_val["segment"].iloc[embargo] == "val"


def test_split_config_errors():
    with pytest.raises(ValueError, match="val_frac"):
        from_dict(SplitConfig, {"val_frac": 0.7}, "split")
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(SplitConfig, {"embargo": "5"}, "split")


def test_sequence_windows_never_cross_symbols_or_reach_ahead(bars):
    from alphafactory.dataset import assemble
    from alphafactory.features import FeatureConfig, compute_features

    lab = make_labels(bars, LabelConfig(horizons=(1,)))
    seg = assign_segments(lab, (1,), SplitConfig(embargo=0))
    feats = compute_features(bars, FeatureConfig(groups=("returns",)))
    ds = assemble(feats, lab, seg, (1,))
    rows = np.arange(len(ds.keys))
    ends = ds.window_ends(rows, lookback=16)
    w = ds.windows(ends, 16)
    # every window holds 16 consecutive bars of its own symbol, ending at its own row
    win_rows = ends[:, None] + np.arange(-15, 1)
    assert (ds.sym_codes[win_rows] == ds.sym_codes[ends][:, None]).all()
    assert (ds.keys["timestamp"].to_numpy()[win_rows] <= ds.keys["timestamp"].to_numpy()[ends][:, None]).all()
    np.testing.assert_array_equal(w[np.arange(3)][:, -1], ds.X[ends[:3]])
    # the first 15 rows of each symbol have no full window and are excluded
    first = pd.Series(rows).groupby(ds.sym_codes).head(15).to_numpy()
    assert not np.isin(first, ends).any()


def test_trailing_vol_is_pandas_groupby_rolling_std_bit_for_bit():
    """The labels' volatility calls pandas' rolling-variance kernel with the windows a groupby
    rolling builds: on ragged panels (symbols of 1-80 bars, a NaN close, returns of 1e-3 to 0.3)
    it equals ``groupby(codes).rolling(w, min_periods=w).std()`` exactly."""
    from alphafactory.labels import _shift_within, _trailing_vol

    rng = np.random.default_rng(1)
    for _ in range(100):
        lens = rng.integers(1, 80, size=rng.integers(1, 6))
        codes = np.repeat(np.arange(len(lens)), lens)
        logc = np.cumsum(rng.standard_normal(len(codes)) * rng.choice([1e-3, 1e-2, 0.3])) + rng.uniform(-3, 8)
        if rng.random() < 0.3:
            logc[rng.integers(0, len(logc))] = np.nan
        w = int(rng.integers(2, 30))
        r1 = logc - _shift_within(logc, codes, -1)
        ref = (pd.Series(r1).groupby(codes).rolling(w, min_periods=w).std()
               .reset_index(level=0, drop=True).sort_index().to_numpy())
        np.testing.assert_array_equal(_trailing_vol(logc, codes, w), ref)


def test_labels_take_the_c_library_log_the_same_bits_on_every_cpu(bars):
    """The log of the close is libm's, value by value (numpy's dispatches per CPU: its AVX-512
    kernel differs in the last bit of about one value in 2,400, which changed the labels' bytes,
    and dvc.lock, with the machine); the forward returns are differences of those logs."""
    import math

    from alphafactory.labels import log_close, trailing_vol

    b = bars.copy()
    b.loc[b.index[:3], "close"] = [1e-300, 1.0, 7e12]  # tiny, exactly 1, large
    logc = log_close(b)
    assert logc.dtype == np.float64
    assert (logc.view(np.int64) == np.array([math.log(x) for x in b["close"]]).view(np.int64)).all()
    lab = make_labels(b, LabelConfig(horizons=(1,)))
    codes = pd.factorize(b["symbol"])[0]
    same = np.r_[codes[1:] == codes[:-1], False]  # the next bar is the same symbol's
    ret = lab["ret_h1"].to_numpy()
    assert np.array_equal(ret[same], (np.r_[logc[1:], np.nan] - logc)[same]) and np.isnan(ret[~same]).all()
    assert np.array_equal(trailing_vol(b, LabelConfig()), lab["vol"].to_numpy(), equal_nan=True)
    assert len(log_close(b.iloc[:0])) == 0


@pytest.mark.parametrize("normalize", ["none", "vol", "cs_zscore", "cs_rank"])
def test_labels_in_symbol_batches_are_the_one_piece_table(tmp_path, normalize):
    """label.symbol_batch: the stage's pieces (a batch of whole symbols each, its own row groups)
    read back as the one-piece table bit for bit, on ragged symbols; the cross-sectional targets
    are one piece; symbol_batch 0 writes write_parquet's bytes."""
    import pyarrow.parquet as pq

    from alphafactory.io import write_parquet, write_parquet_pieces
    from alphafactory.labels import iter_labels

    rng = np.random.default_rng(3)
    frames = []
    for i, n in enumerate((40, 7, 90, 1, 55, 60, 33)):
        ts = pd.bdate_range("2021-01-01", periods=100)[rng.integers(0, 100 - n + 1):][:n]
        frames.append(pd.DataFrame({"symbol": f"S{i}", "timestamp": ts,
                                    "close": np.exp(np.cumsum(rng.normal(0, 0.02, n)) + 3)}))
    bars = pd.concat(frames, ignore_index=True)
    one = make_labels(bars, LabelConfig(horizons=(1, 5), normalize=normalize))
    cfg = LabelConfig(horizons=(1, 5), normalize=normalize, symbol_batch=2)
    path = tmp_path / "labels.parquet"
    write_parquet_pieces(iter_labels(bars, cfg), path, row_group_size=50)
    got = pd.read_parquet(path)
    pd.testing.assert_frame_equal(got, one, check_exact=True)
    floats = [c for c in one.columns if one[c].dtype == np.float64]
    assert np.array_equal(got[floats].to_numpy().view(np.int64), one[floats].to_numpy().view(np.int64))
    pieces = len(list(iter_labels(bars, cfg)))
    assert pieces == (1 if normalize.startswith("cs_") else 4)
    groups = pq.ParquetFile(path).metadata.num_row_groups
    assert groups == 1 if pieces == 1 else groups > pieces  # one piece: write_parquet's one group
    write_parquet_pieces(iter_labels(bars, LabelConfig(horizons=(1, 5), normalize=normalize)), path)
    write_parquet(one, tmp_path / "one.parquet")
    assert path.read_bytes() == (tmp_path / "one.parquet").read_bytes()
