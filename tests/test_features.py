"""Feature panel: shape/dtype contract, warm-up, causality of every feature, config errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory import features
from alphafactory.config import from_dict
from alphafactory.data.frequency import infer_frequency
from alphafactory.evaluation.audit import perturb_after
from alphafactory.features import DEFAULT_GROUPS, FEATURE_GROUPS, FeatureConfig, compute_features, warmup_bars

KEYS = ["symbol", "timestamp"]
ALL_GROUPS = FeatureConfig(groups=FEATURE_GROUPS)  # the causality checks cover every group


def make_bars(timestamps: pd.DatetimeIndex, n_symbols: int, seed: int) -> pd.DataFrame:
    """Random-walk OHLCV panel with valid bar geometry, sorted by (symbol, timestamp)."""
    rng = np.random.default_rng(seed)
    n = len(timestamps)
    frames = []
    for s in range(n_symbols):
        close = rng.uniform(5, 500) * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
        open_ = close * np.exp(rng.normal(0, 0.004, n))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n)))
        frames.append(pd.DataFrame({
            "symbol": f"S{s:02d}", "timestamp": timestamps, "open": open_, "high": high,
            "low": low, "close": close, "volume": rng.lognormal(13, 0.5, n),
        }))
    return pd.concat(frames, ignore_index=True)


def hourly_timestamps(n_days: int) -> pd.DatetimeIndex:
    """7 hourly bars per business day (10:00..16:00): overnight and weekend gaps."""
    days = pd.bdate_range("2021-03-01", periods=n_days)
    return pd.DatetimeIndex((days.values[:, None] + np.arange(10, 17) * np.timedelta64(1, "h")).ravel())


@pytest.fixture(scope="module")
def daily_bars() -> pd.DataFrame:
    return make_bars(pd.bdate_range("2019-01-01", periods=300), n_symbols=3, seed=1)


@pytest.fixture(scope="module")
def intraday_bars() -> pd.DataFrame:
    return make_bars(hourly_timestamps(45), n_symbols=3, seed=2)


@pytest.fixture(scope="module")
def daily_features(daily_bars: pd.DataFrame) -> pd.DataFrame:
    return compute_features(daily_bars, FeatureConfig())


def feature_cols(feats: pd.DataFrame) -> list[str]:
    return [c for c in feats.columns if c not in KEYS]


def check_contract(bars: pd.DataFrame, feats: pd.DataFrame, cfg: FeatureConfig,
                   min_features: int) -> None:
    cols = feature_cols(feats)
    assert list(feats.columns[:2]) == KEYS
    assert len(cols) >= min_features, len(cols)
    assert len(set(feats.columns)) == feats.shape[1]
    assert feats.index.equals(bars.index)
    assert feats["symbol"].equals(bars["symbol"]) and feats["timestamp"].equals(bars["timestamp"])
    not_f32 = [c for c in cols if feats[c].dtype != np.float32]
    assert not not_f32, f"not float32: {not_f32}"
    X = feats[cols].to_numpy()
    has_inf = [c for c, bad in zip(cols, np.isinf(X).any(axis=0), strict=True) if bad]
    assert not has_inf, f"inf in {has_inf}"
    warm = warmup_bars(cfg, infer_frequency(bars))
    pos = bars.groupby("symbol", sort=False).cumcount().to_numpy()
    nan_after = [c for c, bad in zip(cols, np.isnan(X[pos >= warm]).any(axis=0), strict=True) if bad]
    assert not nan_after, f"NaN after warm-up ({warm} bars) in {nan_after}"
    # The warm-up is tight: some feature is still undefined on the bar just before it.
    assert np.isnan(X[pos == warm - 1]).any()


def changed_features(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Feature columns whose values differ between two frames of the same rows."""
    assert a[KEYS].reset_index(drop=True).equals(b[KEYS].reset_index(drop=True))
    cols = feature_cols(a)
    assert cols == feature_cols(b)
    same = np.isclose(a[cols].to_numpy(np.float64), b[cols].to_numpy(np.float64),
                      rtol=1e-5, atol=1e-6, equal_nan=True)
    return [c for c, ok in zip(cols, same.all(axis=0), strict=True) if not ok]


def check_causal(bars: pd.DataFrame, cfg: FeatureConfig, cut_fracs: tuple[float, ...]) -> None:
    full = compute_features(bars, cfg)
    stamps = np.sort(bars["timestamp"].unique())
    for i, frac in enumerate(cut_fracs):
        cut = pd.Timestamp(stamps[int(frac * (len(stamps) - 1))])
        early = (bars["timestamp"] <= cut).to_numpy()
        truncated = compute_features(bars[early].reset_index(drop=True), cfg)
        bad = changed_features(full[early], truncated)
        assert not bad, f"truncating after {cut} changed earlier values of {bad}"
        perturbed = compute_features(perturb_after(bars, cut, seed=i), cfg)
        # The perturbation must reach the features, or the check above proves nothing.
        assert changed_features(full[~early], perturbed[~early])
        bad = changed_features(full[early], perturbed[early])
        assert not bad, f"changing bars after {cut} changed earlier values of {bad}"


def test_daily_contract(daily_bars: pd.DataFrame, daily_features: pd.DataFrame) -> None:
    check_contract(daily_bars, daily_features, FeatureConfig(), min_features=150)
    cols = feature_cols(daily_features)
    for name in ("ret_5", "logret_20", "vol_gk_20", "vol_pk_5", "vol_rs_60", "atr_pct_14", "rsi_14",
                 "macd_12_26", "macd_hist_12_26_9", "stoch_k_20", "bb_pos_20", "sma_dist_60",
                 "ema_slope_20", "candle_clv", "candle_gap", "volume_z_20", "obv_slope_20",
                 "skew_60", "kurt_20", "dist_high_60", "dow_sin", "month", "mtd_ret",
                 "mtf_ret_z_21", "cs_rank_logret_5", "cs_demean_rsi_14"):
        assert name in cols, name
    assert not any(c.startswith(("tod_", "sess_")) for c in cols)


def test_daily_values(daily_bars: pd.DataFrame, daily_features: pd.DataFrame) -> None:
    f, b = daily_features, daily_bars
    prev = b.groupby("symbol")["close"].shift(5)
    np.testing.assert_allclose(f["ret_5"], (b["close"] / prev - 1).astype(np.float32), rtol=1e-5)
    assert np.nanmin(f["rsi_14"]) >= 0 and np.nanmax(f["rsi_14"]) <= 100
    assert np.nanmin(f["stoch_k_20"]) >= 0 and np.nanmax(f["stoch_k_20"]) <= 1
    assert np.nanmax(f["dist_high_20"]) <= 1e-6 and np.nanmin(f["dist_low_20"]) >= -1e-6
    # Ranks are percentiles among the 3 symbols; demeaned values sum to ~0 per timestamp.
    ranks = np.sort(f["cs_rank_logret_1"].dropna().unique().astype(np.float64))
    np.testing.assert_allclose(ranks, [1 / 3, 2 / 3, 1.0], rtol=1e-6)
    sums = f.groupby("timestamp")["cs_demean_logret_1"].sum()
    assert np.abs(sums).max() < 1e-6


def test_matches_per_symbol_pandas(daily_bars: pd.DataFrame, daily_features: pd.DataFrame) -> None:
    """The whole-panel rolling/EWM shortcuts equal plain per-symbol pandas computations."""
    f, b = daily_features, daily_bars
    by = b.groupby("symbol", sort=False)
    close = by["close"]
    logret = np.log(b["close"]).groupby(b["symbol"]).diff()
    ewm = lambda s, **kw: s.groupby(b["symbol"]).transform(lambda x: x.ewm(**kw).mean())  # noqa: E731
    d = close.diff()
    gain, loss = d.clip(lower=0), (-d).clip(lower=0)
    rsi = 100 * ewm(gain, alpha=1 / 14, min_periods=14) / (
        ewm(gain, alpha=1 / 14, min_periods=14) + ewm(loss, alpha=1 / 14, min_periods=14))
    tr = np.maximum(b["high"], close.shift()) - np.minimum(b["low"], close.shift())
    fast, slow = ewm(b["close"], span=12, min_periods=12), ewm(b["close"], span=26, min_periods=26)
    line = (fast - slow) / b["close"]
    expected = {
        "vol_cc_20": logret.groupby(b["symbol"]).transform(lambda x: x.rolling(20).std()),
        "skew_20": logret.groupby(b["symbol"]).transform(lambda x: x.rolling(20).skew()),
        "sma_dist_60": b["close"] / close.transform(lambda x: x.rolling(60).mean()) - 1,
        "ema_dist_20": b["close"] / ewm(b["close"], span=20, min_periods=20) - 1,
        "rsi_14": rsi,
        "atr_pct_14": ewm(tr, alpha=1 / 14, min_periods=14) / b["close"],
        "macd_hist_12_26_9": line - ewm(line, span=9, min_periods=9),
    }
    for name, want in expected.items():
        np.testing.assert_allclose(f[name], want.astype(np.float32), rtol=2e-5, atol=1e-6, err_msg=name)


def test_daily_causal(daily_bars: pd.DataFrame) -> None:
    check_contract(daily_bars, compute_features(daily_bars, ALL_GROUPS), ALL_GROUPS, min_features=350)
    check_causal(daily_bars, ALL_GROUPS, cut_fracs=(0.15, 0.42, 0.77))


def test_intraday(intraday_bars: pd.DataFrame) -> None:
    cfg = FeatureConfig()
    assert infer_frequency(intraday_bars).intraday
    feats = compute_features(intraday_bars, cfg)
    check_contract(intraday_bars, feats, cfg, min_features=150)
    cols = feature_cols(feats)
    for name in ("tod_frac", "tod_sin", "tod_cos", "sess_ret_open", "prev_sess_range", "mtf_ret_z_1d",
                 "mtf_vol_ratio_5d"):
        assert name in cols, name
    assert not any(c.startswith(("wtd_", "mtd_")) for c in cols)
    check_causal(intraday_bars, ALL_GROUPS, cut_fracs=(0.3, 0.61))


def test_ragged_panel() -> None:
    """Symbols listed and delisted at different dates; cross-sectional features still causal."""
    dates = pd.bdate_range("2019-01-01", periods=320)
    parts = [make_bars(dates[a:b], 1, seed=a).assign(symbol=f"R{i}")
             for i, (a, b) in enumerate([(0, 320), (40, 300), (90, 320), (0, 150)])]
    bars = pd.concat(parts, ignore_index=True)
    feats = compute_features(bars, FeatureConfig())
    check_contract(bars, feats, FeatureConfig(), min_features=150)
    check_causal(bars, ALL_GROUPS, cut_fracs=(0.4,))


def test_flat_prices_and_zero_volume(daily_bars: pd.DataFrame) -> None:
    """A halted symbol (constant price, no volume for longer than any window) yields finite
    features, not NaN: degenerate ranges and dispersions map to neutral values."""
    bars = daily_bars.copy()
    pos = bars.groupby("symbol").cumcount().to_numpy()
    halted = (bars["symbol"] == "S01").to_numpy() & (pos >= 100) & (pos < 190)
    bars.loc[halted, ["open", "high", "low", "close"]] = 42.0
    bars.loc[halted, "volume"] = 0.0
    feats = compute_features(bars, ALL_GROUPS)
    check_contract(bars, feats, ALL_GROUPS, min_features=350)
    assert feats.loc[halted, "vol_cc_60"].iloc[-1] == 0 and feats.loc[halted, "skew_60"].iloc[-1] == 0


def test_threads_and_rank_paths_agree(daily_bars: pd.DataFrame, daily_features: pd.DataFrame,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """n_jobs and the dense-grid vs groupby cross-sectional ranking change nothing."""
    monkeypatch.setattr(features, "_DENSE_GRID_MAX", 0)  # force the groupby ranking
    serial = compute_features(daily_bars, FeatureConfig(), n_jobs=1)
    pd.testing.assert_frame_equal(serial, daily_features, check_exact=True)
    with pytest.raises(ValueError, match="n_jobs"):
        compute_features(daily_bars, FeatureConfig(), n_jobs=0)


def test_rank_rows_pct_is_pandas_rank() -> None:
    """The cross-sectional ranks' own kernel gives pandas' ``rank(axis=1, pct=True)`` bit for
    bit: ties (average rank), NaN, all-NaN rows, -0.0 beside 0.0, inf, float32 and float64."""
    rng = np.random.default_rng(3)
    for trial in range(60):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 30)))
        grid = (rng.integers(0, 5, shape).astype(np.float64) if trial % 2
                else rng.normal(size=shape))
        grid[rng.random(shape) < 0.3] = np.nan
        if trial % 3 == 0:
            grid[:, 0] = -0.0
        if trial % 5 == 0:
            grid[0] = np.nan
        if trial % 7 == 0:
            grid[-1, -1] = np.inf
        if trial % 4 < 2:
            grid = grid.astype(np.float32)
        want = pd.DataFrame(grid).rank(axis=1, pct=True).to_numpy()
        assert features._rank_rows_pct(grid).tobytes() == want.tobytes(), trial


@pytest.mark.parametrize("by_column", [False, True])
def test_out_masks_inf_and_warmup(by_column: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """_Out turns inf and float32 overflow into NaN and masks each warm-up, whether add (long
    panels) or finish (short ones) does the inf part; the whole frame is the same either way."""
    monkeypatch.setattr(features, "_INF_BY_COLUMN", 0 if by_column else 10**9)
    pos = np.tile(np.arange(5), 2)  # two symbols of 5 bars
    out = features._Out(pos, warm=2, dtype="float32")
    out.add("a", np.array([1.0, np.inf, 3.0, 1e39, -np.inf, 1.0, 2.0, 3.0, 4.0, 5.0]), 0)
    out.add("b", np.arange(10.0), 2)
    frame = out.frame(pd.RangeIndex(10))
    nan = [np.nan] * 2
    np.testing.assert_array_equal(frame["a"], np.array([1, np.nan, 3, np.nan, np.nan, 1, 2, 3, 4, 5], np.float32))
    np.testing.assert_array_equal(frame["b"], np.array([*nan, 2, 3, 4, *nan, 7, 8, 9], np.float32))


def test_inf_by_column_changes_nothing(daily_bars: pd.DataFrame, daily_features: pd.DataFrame,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "_INF_BY_COLUMN", 0)
    pd.testing.assert_frame_equal(compute_features(daily_bars, FeatureConfig()), daily_features, check_exact=True)


def test_single_symbol(daily_bars: pd.DataFrame) -> None:
    one = daily_bars[daily_bars["symbol"] == "S01"].reset_index(drop=True)
    feats = compute_features(one, FeatureConfig())
    check_contract(one, feats, FeatureConfig(), min_features=150)
    assert not any(c.startswith("cs_") for c in feats.columns)


def test_groups_subset(daily_bars: pd.DataFrame) -> None:
    cfg = FeatureConfig(groups=("rsi", "cross_sectional"), rsi_periods=(9,))
    feats = compute_features(daily_bars, cfg)
    assert feature_cols(feats) == ["rsi_9", "cs_rank_rsi_9", "cs_demean_rsi_9"]
    assert warmup_bars(cfg) == 9
    check_contract(daily_bars, feats, cfg, min_features=3)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="volatilty"):
        FeatureConfig(groups=("returns", "volatilty"))
    with pytest.raises(ValueError, match="volatilty"):
        from_dict(FeatureConfig, {"groups": ["volatilty"]}, "features")
    with pytest.raises(ValueError, match="-5"):
        FeatureConfig(windows=(-5, 10))
    with pytest.raises(ValueError, match="windows"):
        from_dict(FeatureConfig, {"windows": [0]}, "features")
    with pytest.raises(ValueError, match="fast < slow"):
        FeatureConfig(macd=((26, 12, 9),))
    with pytest.raises(ValueError, match="windowz"):
        from_dict(FeatureConfig, {"windowz": [5]}, "features")
    with pytest.raises(ValueError, match="rsi_99"):
        compute_features(make_bars(pd.bdate_range("2020-01-01", periods=80), 2, 0),
                         FeatureConfig(cs_features=("rsi_99",)))
    cfg = from_dict(FeatureConfig, {"windows": [3, 7], "macd": [[3, 8, 4]]}, "features")
    assert cfg.windows == (3, 7) and cfg.macd == ((3, 8, 4),)
    assert FeatureConfig().groups == DEFAULT_GROUPS and set(DEFAULT_GROUPS) < set(FEATURE_GROUPS)


def test_bad_bars(daily_bars: pd.DataFrame) -> None:
    cfg = FeatureConfig()
    with pytest.raises(ValueError, match="volume"):
        compute_features(daily_bars.drop(columns="volume"), cfg)
    shuffled = daily_bars.sample(frac=1.0, random_state=0).reset_index(drop=True)
    with pytest.raises(ValueError, match="sorted"):
        compute_features(shuffled, cfg)
    bad = daily_bars.copy()
    bad.loc[7, "low"] = -1.0
    with pytest.raises(ValueError, match="low"):
        compute_features(bad, cfg)


@pytest.mark.parametrize("how", ["mean", "sum", "std", "max", "min", "skew", "kurt"])
def test_rolling_kernel_is_pandas_rolling(how: str) -> None:
    """The panel's direct call of pandas' rolling kernels gives exactly what
    ``Series.rolling(indexer, min_periods=w).<how>()`` gives: on symbol-clipped windows, with
    NaN, +-inf, constant runs (std 0, skew/kurt NaN) and huge values (negative rounded variance)."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 600)
    x[[5, 50, 51, 300]] = np.nan
    x[[80, 81]] = [np.inf, -np.inf]
    x[100:140] = 3.25
    x[400:420] = 1e15 + rng.normal(0, 1, 20)
    starts = np.array([0, 230, 231, 470])  # 4 symbols, one with a single bar
    seg = np.searchsorted(starts, np.arange(600), side="right") - 1
    for w in (1, 2, 5, 21):
        end = np.arange(1, 601, dtype=np.int64)
        start = np.maximum(end - w, starts[seg])
        bounds = features._FixedBounds(start=start, end=end)
        want = getattr(pd.Series(x).rolling(bounds, min_periods=w), how)().to_numpy()
        got = features._roll_kernel(x, start, end, w, how)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64), err_msg=f"{how}, w={w}")
    with pytest.raises(ValueError, match="median"):
        features._roll_kernel(x, start, end, 2, "median")


def _toy_panel(x: np.ndarray, starts: np.ndarray) -> features._Panel:
    """A panel whose five bar columns are all x, with symbols starting at rows ``starts``."""
    codes = np.searchsorted(starts, np.arange(len(x)), side="right") - 1
    panel = object.__new__(features._Panel)
    with np.errstate(all="ignore"):
        panel._setup(codes, x, x, x, x, x, np.zeros(len(x), "datetime64[ns]"), None)
    return panel


def test_rolling_extremes_and_corr_are_pandas_rolling() -> None:
    """The panel's rolling max/min (by doubling, memoised across windows) and correlation are
    ``Series.rolling(indexer, min_periods=w).max()/.min()/.corr()`` bit for bit: NaN, +-inf,
    constant runs, symbol-clipped windows, windows that are and are not powers of two."""
    rng = np.random.default_rng(11)
    x = rng.normal(0, 1, 700)
    x[[5, 50, 51, 300]] = np.nan
    x[[80, 81, 500]] = [np.inf, -np.inf, np.inf]
    x[100:140] = 3.25
    y = rng.normal(0, 1, 700)
    y[[7, 81, 600]] = [np.nan, np.inf, np.nan]
    y[120:160] = -1.0
    starts = np.array([0, 230, 231, 470])  # 4 symbols, one with a single bar
    panel = _toy_panel(x, starts)
    for w in (1, 2, 3, 5, 8, 21, 60, 64):
        bounds = panel.windows(w)
        for how in ("max", "min"):
            for key in (None, "x"):  # memoised ladder and fresh ladder
                got = panel.roll(x, w, how, key)
                want = getattr(pd.Series(x).rolling(bounds, min_periods=w), how)().to_numpy()
                np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64), err_msg=f"{how}, w={w}")
        want = pd.Series(x).rolling(bounds, min_periods=w).corr(pd.Series(y)).to_numpy()
        got = features._roll_corr_kernel(x, y, bounds.start, bounds.end, w)
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64), err_msg=f"corr, w={w}")


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0 / 21, 1.0 / 14, 2.0 / 27])
def test_ewm_sum_kernel_is_pandas_ewm(alpha: float) -> None:
    """The panel's direct call of pandas' EWM kernel is ``Series.ewm(alpha, adjust=True).sum()``
    exactly: with leading and inner NaN and +-inf."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 500)
    x[:3] = np.nan
    x[[40, 41, 200]] = [np.nan, np.inf, -np.inf]
    want = pd.Series(x).ewm(alpha=alpha, adjust=True).sum().to_numpy()
    got = features._ewm_sum_kernel(x, alpha)
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    assert features._ewm_sum_kernel(np.zeros(0), alpha).shape == (0,)
    with pytest.raises(ValueError, match="alpha"):
        features._ewm_sum_kernel(x, 0.0)


def test_float64_storage_is_the_float32_table_unrounded(daily_bars: pd.DataFrame,
                                                       daily_features: pd.DataFrame) -> None:
    """features.dtype=float64 stores the same float64 computation without the final rounding:
    rounded to float32 it is the default table bit for bit, except the cross-sectional features
    (ranked and demeaned from the stored values); the dataset and the tree models keep it."""
    from alphafactory.dataset import assemble, feature_dtype
    from alphafactory.models.base import float_matrix

    wide = compute_features(daily_bars, FeatureConfig(dtype="float64"))
    cols = feature_cols(wide)
    assert cols == feature_cols(daily_features)
    assert set(wide[cols].dtypes) == {np.dtype(np.float64)} and set(daily_features[cols].dtypes) == {np.dtype(np.float32)}
    own = [c for c in cols if not c.startswith("cs_")]
    cs = [c for c in cols if c.startswith("cs_")]
    assert len(cs) == 22  # 11 default sources, ranked and demeaned
    narrowed = wide[own].astype(np.float32)
    np.testing.assert_array_equal(narrowed.to_numpy().view(np.int32), daily_features[own].to_numpy().view(np.int32))
    np.testing.assert_allclose(wide[cs], daily_features[cs], rtol=1e-5, atol=1e-6)
    assert (wide[cols].to_numpy() != narrowed.reindex(columns=cols).to_numpy()).any()  # really unrounded
    # consumers: the dataset's X and the tree models keep the stored type
    with pytest.raises(ValueError, match="float16"):
        feature_dtype(wide.astype({cols[0]: np.float16}), cols)
    labels = wide[KEYS].assign(y_h1=0.0, cls_h1=0.0, vol=0.01)
    segments = wide[KEYS].assign(segment="train")
    for frame, want in ((wide, np.float64), (daily_features, np.float32)):
        ds = assemble(frame, labels, segments, (1,))
        assert ds.X.dtype == want and float_matrix(ds.X).dtype == want
    assert float_matrix(np.zeros((2, 2), np.int64)).dtype == np.float32


@pytest.mark.parametrize("symbol_batch", [2, 3])
def test_streamed_batches_write_the_one_shot_table_bit_for_bit(tmp_path, symbol_batch: int) -> None:
    """featurize's streamed path (iter_features_batched, spilled batches, cross-sectional
    features on the panel, written piece by piece) gives the table of the in-memory
    compute_features_batched with the same symbol_batch, every value's bits included; a ragged
    panel, so that batches differ in length and the cross-sectional ranks mix them."""
    import pyarrow.parquet as pq

    from alphafactory.dataset import after_warmup, drop_warmup
    from alphafactory.io import write_parquet_pieces

    bars = make_bars(pd.bdate_range("2019-01-01", periods=260), n_symbols=7, seed=5)
    bars = bars[~((bars["symbol"] == "S03") & (bars.index % 260 < 40))].reset_index(drop=True)
    cfg = FeatureConfig(symbol_batch=symbol_batch)
    warm = warmup_bars(cfg, infer_frequency(bars))
    keep = after_warmup(bars, warm)
    # pieces of 300 rows: they cut symbols and batches in the middle
    pieces = list(features.iter_features_batched(bars, cfg, spill=str(tmp_path), piece_rows=300))
    assert len(pieces) > -(-7 // symbol_batch) and max(map(len, pieces)) == 300
    assert list(tmp_path.iterdir()) == []  # the spill is removed
    path = tmp_path / "f.parquet"
    n = write_parquet_pieces((p.loc[keep[p.index]].reset_index(drop=True) for p in pieces), path,
                             row_group_size=250)
    assert pq.ParquetFile(path).metadata.num_row_groups >= len(pieces)  # one or more per piece
    got = pd.read_parquet(path)
    want = drop_warmup(features.compute_features_batched(bars, cfg), warm)
    assert n == len(want) and list(got.columns) == list(want.columns)
    assert (got.dtypes == want.dtypes).all()
    assert got[["symbol", "timestamp"]].equals(want[["symbol", "timestamp"]])
    cols = feature_cols(want)
    assert any(c.startswith("cs_rank_") for c in cols)
    a, b = got[cols].to_numpy(), want[cols].to_numpy()
    assert a.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_one_piece_is_write_parquet_bytes(tmp_path, daily_bars: pd.DataFrame, daily_features: pd.DataFrame) -> None:
    """symbol_batch 0: one piece, written with exactly write_parquet's bytes (the default
    pipeline's features file does not change)."""
    from alphafactory.io import write_parquet, write_parquet_pieces

    pieces = list(features.iter_features_batched(daily_bars, FeatureConfig()))
    assert len(pieces) == 1 and pieces[0].equals(daily_features)
    write_parquet_pieces(iter(pieces), tmp_path / "a.parquet")
    write_parquet(daily_features, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
