"""Raw multi-resolution OHLCV windows (``neural.inputs``, :mod:`alphafactory.raw_windows`): the
block aggregates against a hand computation, strict causality (bars after the as-of bar change
nothing, a bar inside the window does), the history they need (rows dropped in training, one-line
refusals), and the whole path: training with raw and both, the ONNX export's check, the bundle's
forecasts from request bars equal to the training stage's, and the manifest of a feature-only
network unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphafactory import models
from alphafactory.blend import BlendConfig, Stacker
from alphafactory.errors import ConfigError, DataValidationError
from alphafactory.raw_windows import Bars, InputsConfig, inputs_config, with_bars
from alphafactory.serving.bundle import build_bundle
from alphafactory.serving.inference import load_bundle, predict
from alphafactory.train import fit_models, segment_data
from conftest import random_bars, small_dataset

HORIZONS = (1, 5)
SMALL = InputsConfig(kind="both", resolutions=((1, 8), (5, 4), (10, 3)))  # history 30 bars
TRAINER = {"epochs": 2, "batch_size": 128}


def _tiny_bars() -> pd.DataFrame:
    n = 12
    t = np.arange(n, dtype=np.float64)
    return pd.DataFrame({"symbol": "A", "timestamp": pd.bdate_range("2021-01-01", periods=n),
                         "open": 100 + t, "high": 102 + t + (t % 3), "low": 98 + t - (t % 2),
                         "close": 101 + t, "volume": 10 + t})


def test_blocks_are_the_ohlcv_of_complete_past_blocks_normalised_to_the_asof_close():
    bars = _tiny_bars()
    cfg = InputsConfig(kind="raw", resolutions=((1, 2), (3, 3)))
    assert cfg.history() == 9 and cfg.channels == 10
    w = Bars.from_frame(bars).windows(np.array([11]), cfg, lookback=4)[0]  # as of the last bar (t = 11)
    assert w.shape == (4, 10)
    o, h, lo, c, v = (bars[f].to_numpy() for f in ("open", "high", "low", "close", "volume"))
    ref = c[11]
    # (3, 3): blocks of bars 3-5, 6-8, 9-11, in the last 3 steps; the first step is padding
    for j, (a, b) in enumerate([(3, 5), (6, 8), (9, 11)]):
        want = np.log([o[a] / ref, h[a:b + 1].max() / ref, lo[a:b + 1].min() / ref, c[b] / ref])
        np.testing.assert_allclose(w[1 + j, 5:9], want, rtol=1e-6)
    vol = np.array([v[3:6].sum(), v[6:9].sum(), v[9:12].sum()])
    np.testing.assert_allclose(w[1:, 9], np.log1p(vol / vol.mean()), rtol=1e-6)
    assert np.isnan(w[0, 5:]).all()
    # (1, 2): the last two bars themselves in the last two steps; the as-of close is log 1 = 0
    np.testing.assert_allclose(w[2:, 0], np.log(o[10:12] / ref), rtol=1e-6)
    assert w[3, 3] == 0.0 and np.isnan(w[:2, :5]).all()


def test_windows_are_strictly_causal():
    """Changing every bar after the as-of bar changes no window up to it; changing a bar inside
    the 21-bar block of the longest resolution does (the test could fail)."""
    bars = random_bars(n_symbols=2, n_bars=400, seed=3)
    cfg = InputsConfig(kind="raw")  # the default resolutions: 252 bars of history
    at = np.array([260, 300, 399 - 40])  # rows of symbol S00
    asof = at.max()
    later = bars.copy()
    after = (later["symbol"] == "S00").to_numpy() & (np.arange(len(later)) > asof)
    later.loc[after, ["open", "high", "low", "close"]] *= 3.0
    later.loc[after, "volume"] *= 100.0
    a = Bars.from_frame(bars).windows(at, cfg, 32)
    b = Bars.from_frame(later).windows(at, cfg, 32)
    np.testing.assert_array_equal(a, b)
    inside = bars.copy()
    inside.loc[at[0] - 200, "high"] *= 1.5  # in a 21-bar block of the window as of at[0]
    c = Bars.from_frame(inside).windows(at[:1], cfg, 32)
    assert not np.array_equal(np.nan_to_num(a[:1]), np.nan_to_num(c))


def test_too_little_history_is_an_error_and_config_is_checked():
    bars = Bars.from_frame(_tiny_bars())
    with pytest.raises(ValueError, match="2 bars of history; expected at least 9"):
        bars.windows(np.array([1]), InputsConfig(kind="raw", resolutions=((3, 3),)), 4)
    with pytest.raises(ConfigError, match="neural.inputs.kind: got 'ohlc'"):
        inputs_config({"kind": "ohlc"})
    with pytest.raises(ConfigError, match=r"a resolution of 12 blocks, more than the 8 steps of train.lookback"):
        models.create("lstm", {}, horizons=HORIZONS, lookback=8, inputs={"kind": "raw", "resolutions": [[5, 12]]})
    with pytest.raises(ConfigError, match="mlp reads one bar's features"):
        models.create("mlp", {}, horizons=HORIZONS, inputs={"kind": "both"})


def _panel(n_bars: int = 260):
    bars = random_bars(n_symbols=3, n_bars=n_bars, seed=1)
    freq, features, label, labels, ds = small_dataset(bars, HORIZONS)
    return bars, freq, features, label, labels, with_bars(ds, bars)


def test_training_drops_rows_without_the_history_and_needs_the_bars():
    bars, *_, ds = _panel()
    long = InputsConfig(kind="both", resolutions=((1, 8), (10, 6)))  # 60 bars: past the features' warm-up
    rows, data = segment_data(ds, "train", "sequence", 8, inputs=long)
    plain, _ = segment_data(ds, "train", "sequence", 8)
    assert data.X.shape == (len(rows), 8, len(ds.feature_names) + 10)
    assert ds.bars.pos[ds.bar_rows[rows]].min() == long.history() - 1 > ds.bars.pos[ds.bar_rows[plain]].min()
    assert set(rows) < set(plain)
    np.testing.assert_array_equal(np.asarray(data.X)[:, :, :len(ds.feature_names)],
                                  np.asarray(ds.windows(rows, 8)))  # the feature channels as without raw
    from dataclasses import replace

    with pytest.raises(ConfigError, match="need the prepared bars"):
        segment_data(replace(ds, bars=None, bar_rows=None), "train", "sequence", 8, inputs=long)


@pytest.fixture(scope="module")
def raw_bundle(tmp_path_factory):
    """lstm with inputs both and tcn with inputs raw, trained, exported (the ONNX check runs in
    save) and bundled with ridge, as the pipeline's stages would."""
    root = tmp_path_factory.mktemp("raw")
    bars, freq, features, label, labels, ds = _panel()
    results = []
    for name, kind in (("lstm", "both"), ("tcn", "raw")):
        extra = {"lookback": 8, "trainer": TRAINER, "inputs": {"kind": kind, "resolutions": [[1, 8], [5, 4], [10, 3]]}}
        results += fit_models(ds, (name,), {}, root / "models" / "neural", seed=0, extra=extra)
    results += fit_models(ds, ("ridge",), {}, root / "models" / "classical", seed=0)
    preds = pd.concat([r.predictions for r in results], ignore_index=True)
    Stacker(BlendConfig(), [r.name for r in results], HORIZONS).fit(preds, labels).save(root / "models" / "blend")
    info = {"frequency": freq.to_dict(), "symbols": sorted(bars["symbol"].unique()), "rows": len(bars),
            "start": str(bars["timestamp"].min()), "end": str(bars["timestamp"].max()), "source": "test"}
    build_bundle([root / "models" / "neural", root / "models" / "classical"], root / "models" / "blend",
                 root / "bundle", features=features, label=label, lookback=8, info=info)
    return root, bars, preds


def test_raw_networks_train_export_and_forecast_from_request_bars(raw_bundle):
    root, bars, preds = raw_bundle
    for name, kind in (("lstm", "both"), ("tcn", "raw")):
        manifest = json.loads((root / "models" / "neural" / name / "manifest.json").read_text())
        assert manifest["init"]["inputs"]["kind"] == kind
        onnx = json.loads((root / "models" / "neural" / name / "onnx.json").read_text())
        assert onnx["input"][-1] == manifest["state"]["n_features"] == (15 if kind == "raw" else 15 + len(
            manifest["meta"]["features"]))
    bundle = load_bundle(root / "bundle")
    assert bundle.min_bars >= SMALL.history()
    got = predict(bars, bundle, asof="all")
    test = preds[preds["segment"] == "test"]
    for name in ("lstm", "tcn"):
        want = test[test["model"] == name].merge(got[["symbol", "timestamp", "horizon", name]],
                                                 on=["symbol", "timestamp", "horizon"], how="left")
        assert len(want) > 50 and want[name].notna().all()
        np.testing.assert_allclose(want[name], want["yhat"], rtol=1e-4, atol=1e-6)
    last = predict(bars, bundle)  # from each symbol's last bar: the windows of a trimmed history
    tail = got.groupby("symbol").tail(len(HORIZONS)).reset_index(drop=True)
    np.testing.assert_allclose(last["lstm"], tail["lstm"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(last["tcn"], tail["tcn"], rtol=1e-4, atol=1e-6)
    # a later bar changes nothing before it: forecast as of a past bar from all bars, and from bars cut there
    asof = bars["timestamp"].iloc[-20]
    cut = bars[bars["timestamp"] <= asof]
    np.testing.assert_allclose(predict(bars, bundle, asof=asof)["tcn"], predict(cut, bundle)["tcn"], rtol=1e-6)
    short = bars.groupby("symbol").tail(bundle.min_bars - 1)
    with pytest.raises(DataValidationError, match=r"raw OHLCV windows 30 bars"):
        predict(short, bundle)


def test_feature_only_manifest_has_no_inputs_key(tmp_path):
    *_, ds = _panel()
    (r,) = fit_models(ds, ("lstm",), {}, tmp_path, seed=0, extra={"lookback": 8, "trainer": TRAINER, "inputs": None})
    manifest = json.loads((Path(tmp_path) / "lstm" / "manifest.json").read_text())
    assert "inputs" not in manifest["init"] and r.model.inputs == InputsConfig()


SEQUENCE = sorted(n for n, s in models.REGISTRY.items() if s.family == "neural" and s.input_kind == "sequence"
                  and "regression" in s.tasks)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skip(
    reason="chronos reads its own raw closes, not neural.inputs, and has no ONNX export: tests/test_chronos.py"))
    if n == "chronos" else n for n in SEQUENCE])
def test_every_sequence_family_trains_and_exports_with_raw_windows(name, tmp_path):
    """Every registered sequence network reads the (B, L, F + 5R) windows unchanged: it fits,
    forecasts every test row, and its ONNX export passes the check against PyTorch (in save)."""
    *_, ds = _panel()
    extra = {"lookback": 8, "trainer": {"epochs": 1, "batch_size": 256},
             "inputs": {"kind": "both", "resolutions": [[1, 8], [5, 4]]}}
    blocks = {"patchtst": {"patch_len": 4, "stride": 3}}  # patches must fit the 8-bar window
    (r,) = fit_models(ds, (name,), blocks, tmp_path, seed=0, extra=extra)
    test = r.predictions[r.predictions["segment"] == "test"]
    assert len(test) and np.isfinite(test["yhat"]).all()
    onnx = json.loads((tmp_path / name / "onnx.json").read_text())
    assert onnx["input"] == ["batch", 8, len(ds.feature_names) + 10]
