"""Alpha158-class feature groups against naive per-window references; scale invariance of the
features; cross-sectional normalisation (features.cs_normalize)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from alphafactory.features import FeatureConfig, compute_features, compute_features_batched
from test_features import ALL_GROUPS, KEYS, changed_features, check_causal, feature_cols, hourly_timestamps, make_bars

WINDOWS = (5, 12)
ALPHA = FeatureConfig(groups=("kbar", "price_ratio", "rolling_ops", "price_volume", "up_down", "volume_ops"),
                      windows=WINDOWS)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    b = make_bars(pd.bdate_range("2020-01-01", periods=90), n_symbols=2, seed=5)
    # Ties and flat stretches: a repeated close (rank ties), a repeated high (argmax ties), flat volume.
    b.loc[30:36, "close"] = b.loc[30, "close"]
    b.loc[30:36, "open"] = b.loc[30, "close"]
    b.loc[30:36, ["high", "low"]] = b.loc[30, "close"]
    b.loc[60:70, "volume"] = 1000.0
    return b


@pytest.fixture(scope="module")
def feats(bars: pd.DataFrame) -> pd.DataFrame:
    return compute_features(bars, ALPHA)


def per_window(x: np.ndarray, w: int, f) -> np.ndarray:
    """f(window) for every trailing w-bar window of one symbol's (n,) series; NaN before."""
    out = np.full(len(x), np.nan)
    for t in range(w - 1, len(x)):
        out[t] = f(x[t - w + 1 : t + 1], t)
    return out


def naive_symbol(b: pd.DataFrame, w: int) -> dict[str, np.ndarray]:
    """The Alpha158-class features of one symbol, one window at a time, written from the formulas."""
    o, h, lo, c, v = (b[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
    n = len(c)
    prev = lambda x: np.r_[np.nan, x[:-1]]  # noqa: E731
    ref = {}
    ref[f"roc_{w}"] = np.r_[np.full(w, np.nan), c[:-w]] / c

    def line(y, t):  # least-squares line of y on 0..w-1
        slope, icept = np.polyfit(np.arange(w), y, 1)
        fit = icept + slope * np.arange(w)
        ss = ((y - y.mean()) ** 2).sum()
        r2 = 0.0 if ss == 0 else 1 - ((y - fit) ** 2).sum() / ss
        return slope, r2, y[-1] - fit[-1]

    fits = [line(c[t - w + 1 : t + 1], t) if t >= w - 1 else (np.nan,) * 3 for t in range(n)]
    slope, r2, resid = (np.array(z) for z in zip(*fits, strict=True))
    ref.update({
        f"ma_{w}": per_window(c, w, lambda x, t: x.mean()) / c,
        f"std_{w}": per_window(c, w, lambda x, t: x.std(ddof=1)) / c,
        f"beta_{w}": slope / c, f"rsqr_{w}": r2, f"resi_{w}": resid / c,
        f"max_{w}": per_window(h, w, lambda x, t: x.max()) / c,
        f"min_{w}": per_window(lo, w, lambda x, t: x.min()) / c,
        f"qtlu_{w}": per_window(c, w, lambda x, t: np.quantile(x, 0.8)) / c,
        f"qtld_{w}": per_window(c, w, lambda x, t: np.quantile(x, 0.2)) / c,
        # average rank of the last value among the window, over w
        f"rank_{w}": per_window(c, w, lambda x, t: ((x < x[-1]).sum() + ((x == x[-1]).sum() + 1) / 2) / w),
        f"imax_{w}": per_window(h, w, lambda x, t: (w - 1 - int(np.argmax(x))) / w),
        f"imin_{w}": per_window(lo, w, lambda x, t: (w - 1 - int(np.argmin(x))) / w),
    })
    ref[f"imxd_{w}"] = ref[f"imin_{w}"] - ref[f"imax_{w}"]

    def corr(a, b):
        def f(_, t):
            x, y = a[t - w + 1 : t + 1], b[t - w + 1 : t + 1]
            if np.isnan(x).any() or np.isnan(y).any():
                return np.nan
            return 0.0 if x.std() == 0 or y.std() == 0 else np.corrcoef(x, y)[0, 1]
        return per_window(a, w, f)

    r = np.log(c / prev(c))
    lv = np.log1p(v)
    ref[f"corr_{w}"] = corr(c, lv)
    ref[f"cord_{w}"] = corr(r, lv - prev(lv))

    def shares(d):
        up = per_window(d, w, lambda x, t: 0.5 if np.abs(x).sum() == 0 else np.maximum(x, 0).sum() / np.abs(x).sum())
        down = per_window(d, w, lambda x, t: 0.5 if np.abs(x).sum() == 0 else np.maximum(-x, 0).sum() / np.abs(x).sum())
        return up, down

    dc = c - prev(c)
    ref[f"cntp_{w}"] = per_window(dc, w, lambda x, t: (x > 0).mean())
    ref[f"cntn_{w}"] = per_window(dc, w, lambda x, t: (x < 0).mean())
    ref[f"cntd_{w}"] = ref[f"cntp_{w}"] - ref[f"cntn_{w}"]
    ref[f"sump_{w}"], ref[f"sumn_{w}"] = shares(dc)
    ref[f"sumd_{w}"] = ref[f"sump_{w}"] - ref[f"sumn_{w}"]
    ref[f"vma_{w}"] = per_window(v, w, lambda x, t: x.mean()) / v
    ref[f"vstd_{w}"] = per_window(v, w, lambda x, t: x.std(ddof=1)) / v
    arv = np.abs(c / prev(c) - 1) * v
    ref[f"wvma_{w}"] = per_window(arv, w, lambda x, t: 0.0 if x.mean() == 0 else x.std(ddof=1) / x.mean())
    ref[f"vsump_{w}"], ref[f"vsumn_{w}"] = shares(v - prev(v))
    ref[f"vsumd_{w}"] = ref[f"vsump_{w}"] - ref[f"vsumn_{w}"]
    return ref


def naive_bar(b: pd.DataFrame) -> dict[str, np.ndarray]:
    o, h, lo, c = (b[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    top, bot, rng = np.maximum(o, c), np.minimum(o, c), h - lo
    safe = lambda num: np.where(rng == 0, 0.0, num / np.where(rng == 0, 1, rng))  # noqa: E731
    prev = lambda x: np.r_[np.nan, x[:-1]]  # noqa: E731
    return {
        "kmid": (c - o) / o, "klen": rng / o, "kmid2": safe(c - o), "kup": (h - top) / o, "kup2": safe(h - top),
        "klow": (bot - lo) / o, "klow2": safe(bot - lo), "ksft": (2 * c - h - lo) / o, "ksft2": safe(2 * c - h - lo),
        "open_0": o / c, "high_0": h / c, "low_0": lo / c,
        "open_1": prev(o) / c, "high_1": prev(h) / c, "low_1": prev(lo) / c, "close_1": prev(c) / c,
    }


def test_alpha_matches_naive_reference(bars: pd.DataFrame, feats: pd.DataFrame) -> None:
    """Every Alpha158-class column equals its formula computed window by window, per symbol
    (ties in rank and argmax, a flat price stretch, flat volume included)."""
    checked = set()
    for sym, b in bars.groupby("symbol", sort=False):
        f = feats[feats["symbol"] == sym]
        want = naive_bar(b)
        for w in WINDOWS:
            want.update(naive_symbol(b, w))
        for name, x in want.items():
            got = f[name].to_numpy(np.float64)
            # warm-up rows are NaN in the panel (the group's warm-up); compare where both exist
            defined = ~np.isnan(got)
            assert defined[-20:].all(), name
            np.testing.assert_allclose(got[defined], x[defined], rtol=2e-5, atol=2e-6, err_msg=f"{sym} {name}")
            checked.add(name)
    assert checked == set(feature_cols(feats)), set(feature_cols(feats)) ^ checked


def test_alpha_ranges(feats: pd.DataFrame) -> None:
    for w in WINDOWS:
        for name, lo, hi in ((f"rsqr_{w}", 0, 1), (f"rank_{w}", 1 / w, 1), (f"imax_{w}", 0, (w - 1) / w),
                             (f"cntd_{w}", -1, 1), (f"sump_{w}", 0, 1), (f"corr_{w}", -1, 1)):
            x = feats[name].dropna()
            assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6, name


def scaled(bars: pd.DataFrame, symbol: str, price: float, volume: float) -> pd.DataFrame:
    out = bars.copy()
    mine = (out["symbol"] == symbol).to_numpy()
    out.loc[mine, ["open", "high", "low", "close"]] *= price
    out.loc[mine, "volume"] *= volume
    return out


# log(1 + volume) keeps zero-volume bars finite; its "+1" is the one place a feature sees the
# volume's unit, below float32 resolution for volumes >> 1 (shares, contracts) and material only
# for volumes of order 1 (volumes in millions, lots). Those columns, and the ranks of them:
LOG1P_VOLUME = ("logvolume_chg_", "volume_z_", "volume_ret_corr_", "volume_trend_", "corr_", "cord_",
                "cs_rank_volume_z_", "cs_demean_volume_z_", "sess_volume_rel", "vsurprise_", "vret_")


@pytest.mark.parametrize("daily", [True, False])
def test_features_are_scale_free(daily: bool) -> None:
    """A symbol's prices x100 and volumes x1000 change no feature (every group, daily and
    intraday bars); with volumes of order 1 only the log(1 + volume) columns move."""
    stamps = pd.bdate_range("2019-01-01", periods=200) if daily else hourly_timestamps(40)
    bars = make_bars(stamps, n_symbols=3, seed=11)
    full = compute_features(bars, ALL_GROUPS)
    moved_by = compute_features(scaled(bars, "S01", 100.0, 1000.0), ALL_GROUPS)
    moved = changed_features(full, moved_by)  # volumes ~4e5: the "+1" shows in the 6th digit at most
    assert all(c.startswith(LOG1P_VOLUME) for c in moved), moved
    assert np.nanmax(np.abs(full[moved].to_numpy(np.float64) - moved_by[moved].to_numpy(np.float64)), initial=0) < 1e-4
    small = bars.assign(volume=np.random.default_rng(0).lognormal(1.0, 1.0, len(bars)))
    moved = changed_features(compute_features(small, ALL_GROUPS),
                             compute_features(scaled(small, "S01", 100.0, 1000.0), ALL_GROUPS))
    assert moved and all(c.startswith(LOG1P_VOLUME) for c in moved), moved


@pytest.mark.parametrize("how", ["zscore", "rank"])
def test_cs_normalize(how: str) -> None:
    """Every feature but the calendar group's is normalised across the symbols of its timestamp
    (against a groupby reference); batches and tails agree; the result stays causal."""
    bars = make_bars(pd.bdate_range("2019-01-01", periods=160), n_symbols=4, seed=3)
    plain = FeatureConfig(windows=(5, 20), groups=("returns", "rsi", "calendar", "rolling_ops", "cross_sectional"))
    cfg = dataclasses.replace(plain, cs_normalize=how)
    raw, got = compute_features(bars, plain), compute_features(bars, cfg)
    calendar = {"dow", "month", "dom", "bar_gap"} | {f"{k}_{t}" for k in ("dow", "month", "dom", "doy")
                                                     for t in ("sin", "cos")}
    by = raw.groupby("timestamp")
    for name in feature_cols(raw):
        x = raw[name].astype(np.float64)
        if name in calendar:
            want = x
        elif how == "rank":
            want = by[name].rank(pct=True)
        else:
            mean, std = by[name].transform("mean"), by[name].transform(lambda s: s.std(ddof=0))
            want = ((x - mean) / std).where(std > 0, 0.0).where(x.notna())
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)  # from float32 inputs
    batched = compute_features_batched(bars, dataclasses.replace(cfg, symbol_batch=3))
    pd.testing.assert_frame_equal(batched, got, check_exact=False, rtol=1e-5, atol=1e-6)
    tail = compute_features(bars, cfg, tail=7)
    assert changed_features(got.loc[tail.index], tail) == []
    assert (got[KEYS].groupby("timestamp").size() == 4).all()
    check_causal(bars, cfg, cut_fracs=(0.5,))


def test_cs_normalize_config() -> None:
    with pytest.raises(ValueError, match="cs_normalize"):
        FeatureConfig(cs_normalize="minmax")


def test_serving_needs_the_cross_section(caplog: pytest.LogCaptureFixture) -> None:
    """A bundle with cs_normalize refuses a one-symbol request and warns on absent symbols."""
    from types import SimpleNamespace

    from alphafactory.errors import InputError
    from alphafactory.serving.inference import _check_panel

    bundle = SimpleNamespace(symbols=["S00", "S01", "S02"], models={},
                             features=FeatureConfig(groups=("returns",), cs_normalize="zscore"))
    bars = make_bars(pd.bdate_range("2020-01-01", periods=5), n_symbols=2, seed=0)
    with pytest.raises(InputError, match="cs_normalize: zscore"):
        _check_panel(bars[bars["symbol"] == "S00"], bundle)
    _check_panel(bars, bundle)
    assert "S02" in caplog.text and "cs_normalize" in caplog.text
    plain = SimpleNamespace(symbols=bundle.symbols, models={}, features=FeatureConfig(groups=("returns",)))
    _check_panel(bars[bars["symbol"] == "S00"], plain)  # without cs_normalize one symbol is fine


def test_volume_surprise_is_the_residual_of_a_trailing_fit(bars):
    """vsurprise_w against a per-window least-squares fit written from the formula (numpy
    lstsq of log(1+v) on 1, |r|/sigma and log sigma, sigma the std of the w returns before
    each bar of the window); windows under 10 bars get no column."""
    cfg = FeatureConfig(groups=("volume_surprise",), windows=(5, 12))
    f = compute_features(bars, cfg)
    assert [c for c in feature_cols(f)] == ["vsurprise_12"]
    w = 12
    checked = 0
    for sym, b in bars.groupby("symbol", sort=True):
        lv = np.log1p(b["volume"].to_numpy(np.float64))
        r = np.r_[np.nan, np.diff(np.log(b["close"].to_numpy(np.float64)))]
        ref = np.full(len(b), np.nan)
        for t in range(2 * w, len(b)):
            rows = range(t - w + 1, t + 1)
            sig = np.array([np.std(r[u - w:u], ddof=1) for u in rows])
            X = np.column_stack([np.ones(w), np.abs(r[list(rows)]) / sig, np.log(sig)])
            y = lv[list(rows)]
            beta, *_ = np.linalg.lstsq(X, y, rcond=None)
            e = y - X @ beta
            ref[t] = e[-1] / np.sqrt((e ** 2).mean()) if (e ** 2).mean() > 1e-12 * y.var() else 0.0
        got = f.loc[f["symbol"] == sym, "vsurprise_12"].to_numpy(np.float64)
        assert np.isnan(got[:2 * w]).all()
        np.testing.assert_allclose(got[2 * w:], ref[2 * w:], rtol=2e-5, atol=2e-5)
        checked += len(b) - 2 * w
    assert checked > 100
    # it is not the volume z-score: the fit takes out what volatility and |return| explain
    z = compute_features(bars, FeatureConfig(groups=("volume",), windows=(12,)))["volume_z_12"]
    assert abs(np.corrcoef(f["vsurprise_12"].dropna(), z[f["vsurprise_12"].notna()])[0, 1]) < 0.999


def test_volume_return_is_the_scaled_return_times_the_volume_surprise(bars):
    """vret_{k}_w against the formula: the k-bar log return over (sigma sqrt(k)), sigma the std
    of the w 1-bar returns before the bar, times vsurprise_w; computed without the
    volume_surprise group, and the same numbers with it."""
    cfg = FeatureConfig(groups=("volume_return",), windows=(5, 12))
    f = compute_features(bars, cfg)
    assert feature_cols(f) == ["vret_1_12", "vret_5_12"]
    both = compute_features(bars, FeatureConfig(groups=("volume_surprise", "volume_return"), windows=(5, 12)))
    for k in (1, 5):
        np.testing.assert_array_equal(both[f"vret_{k}_12"].to_numpy(), f[f"vret_{k}_12"].to_numpy())
    w, checked = 12, 0
    for sym, b in bars.groupby("symbol", sort=True):
        lc = np.log(b["close"].to_numpy(np.float64))
        r = np.r_[np.nan, np.diff(lc)]
        vs = both.loc[both["symbol"] == sym, "vsurprise_12"].to_numpy(np.float64)
        for k in (1, 5):
            got = f.loc[f["symbol"] == sym, f"vret_{k}_12"].to_numpy(np.float64)
            assert np.isnan(got[:2 * w]).all()
            ref = np.array([(lc[t] - lc[t - k]) / (np.std(r[t - w:t], ddof=1) * np.sqrt(k)) * vs[t]
                            for t in range(2 * w, len(b))])
            np.testing.assert_allclose(got[2 * w:], ref, rtol=2e-5, atol=2e-5)
            checked += len(ref)
    assert checked > 100
    tail = compute_features(bars, cfg, tail=5)  # what predict computes: the last bars' values
    assert changed_features(f.loc[tail.index], tail) == []
