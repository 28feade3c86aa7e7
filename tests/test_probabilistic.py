"""Probabilistic forecasts as a capability: a family that predicts its own distribution
(``deepar``) reports its own ``yhat_std`` and ``prob_up`` through training, the bundle (its ONNX
graph's second output) and inference; evaluate scores every model's uncertainty with the CRPS
beside coverage; a point forecaster's outputs are unchanged (the volatility scale)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from alphafactory.blend import BlendConfig, Stacker
from alphafactory.dataset import Dataset
from alphafactory.evaluation import metrics
from alphafactory.evaluation.evaluate import calibration_scores, scored_rows
from alphafactory.models.per_symbol import PerSymbolModel
from alphafactory.models.trainer import mixture
from alphafactory.serving.bundle import build_bundle
from alphafactory.serving.inference import FORECAST_KEYS, load_bundle, predict
from alphafactory.train import fit_models
from alphafactory.uncertainty import Calibration, apply_calibration, distribution_prob_up
from conftest import random_bars, small_dataset

HORIZONS = (1, 2)
LOOKBACK = 6
NEURAL = {"lookback": LOOKBACK, "trainer": {"epochs": 3, "batch_size": 64, "device": "cpu"}}
DEEPAR = {"deepar": {"hidden": 8}}


def test_crps_gaussian_is_the_closed_form_of_the_integral():
    rng = np.random.default_rng(0)
    y, mu, sd = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.2, 2.0, 5)
    # CRPS = integral over x of (F(x) - 1[x >= y])^2
    ref = [integrate.quad(lambda x, i=i: (stats.norm.cdf(x, mu[i], sd[i]) - (x >= y[i])) ** 2, -30, y[i])[0]
           + integrate.quad(lambda x, i=i: (stats.norm.cdf(x, mu[i], sd[i]) - 1.0) ** 2, y[i], 30)[0]
           for i in range(5)]
    for i in range(5):
        assert metrics.crps_gaussian(y[i:i + 1], mu[i:i + 1], sd[i:i + 1]) == pytest.approx(ref[i], rel=1e-6)
    assert metrics.crps_gaussian([0.0], [0.0], [1.0]) == pytest.approx(2 * stats.norm.pdf(0) - 1 / np.sqrt(np.pi))
    assert metrics.crps_gaussian([1.0, -2.0], [0.5, 0.0], [0.0, 0.0]) == pytest.approx(1.25)  # |y - yhat|
    # the score rewards a calibrated std: the true one beats a std 3x too narrow or too wide
    y = rng.normal(0, 1.0, 20000)
    true, narrow, wide = (metrics.crps_gaussian(y, np.zeros_like(y), np.full_like(y, s)) for s in (1.0, 1 / 3, 3.0))
    assert true < narrow and true < wide
    with pytest.raises(ValueError, match="yhat_std must be >= 0"):
        metrics.crps_gaussian([0.0], [0.0], [-1.0])


def test_pinball_loss_by_hand_and_it_rewards_a_calibrated_std():
    # y = 1 against quantiles 0, 1, 3 at 0.1, 0.5, 0.9: errors e = 1, 0, -2 →
    # max(0.1 * 1, -0.9 * 1) = 0.1; 0; max(0.9 * -2, -0.1 * -2) = 0.2; y = -1 against 0, 0, 0:
    # 0.9 * 1 = 0.9; 0.5 * 1 = 0.5; 0.1 * 1 = 0.1. Mean over the 6 entries: 1.8 / 6.
    q = np.array([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    assert metrics.pinball_loss([1.0, -1.0], q, (0.1, 0.5, 0.9)) == pytest.approx(1.8 / 6)
    # the Gaussian quantiles of N(0, 1): 0 ± 1.2815516; y = 2: (0.1 * 3.2815516 + 0.5 * 2 + 0.9 * 0.7184484) / 3
    assert metrics.pinball_gaussian([2.0], [0.0], [1.0]) == pytest.approx(
        (0.1 * 3.2815516 + 0.5 * 2.0 + 0.9 * 0.7184484) / 3, rel=1e-6)
    assert metrics.pinball_gaussian([1.0, -2.0], [0.5, 0.0], [0.0, 0.0], (0.5,)) == pytest.approx(0.625)  # |e| / 2
    # a calibrated forecast beats one with the same mean and its std 3x too narrow or too wide
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1.0, 20000)
    true, narrow, wide = (metrics.pinball_gaussian(y, np.zeros_like(y), np.full_like(y, s)) for s in (1.0, 1 / 3, 3.0))
    assert true < narrow and true < wide
    with pytest.raises(ValueError, match=r"levels must be .* in \(0, 1\)"):
        metrics.pinball_gaussian([0.0], [0.0], [1.0], (0.5, 1.0))
    with pytest.raises(ValueError, match=r"q has shape \(2, 2\), expected \(2, 3\)"):
        metrics.pinball_loss([0.0, 1.0], np.zeros((2, 2)), (0.1, 0.5, 0.9))


def test_prob_up_of_a_distribution_and_the_mixture_of_seed_members():
    mean, std = np.array([[0.5, -1.0, 0.0]]), np.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(distribution_prob_up(mean, std), stats.norm.cdf(mean / std))
    scale = std * np.sqrt(3 / 5)  # Student-t, 5 df: std = scale * sqrt(5 / 3)
    np.testing.assert_allclose(distribution_prob_up(mean, std, 5.0), stats.t.cdf(mean / scale, 5))
    np.testing.assert_array_equal(distribution_prob_up(np.array([1.0, -1.0, 0.0]), np.zeros(3)), [1.0, 0.0, 0.5])
    a = np.stack([np.full((2, 1), 1.0), np.full((2, 1), 0.5)], -1)  # N(1, 0.5²)
    b = np.stack([np.full((2, 1), -1.0), np.full((2, 1), 1.0)], -1)  # N(-1, 1)
    m, s = mixture([a, b])
    np.testing.assert_allclose(m, 0.0)
    np.testing.assert_allclose(s, np.sqrt((0.25 + 1 + 1 + 1) / 2))  # E[x²] - E[x]²
    np.testing.assert_array_equal(mixture([a])[1], a[..., 1])  # one member: its own


def _dataset(n_sym: int = 3, n_bars: int = 200, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_sym * n_bars, 4)).astype(np.float32)
    Y = np.stack([0.5 * X[:, 0] + rng.normal(0, 0.5 + np.abs(X[:, 1])) for _ in HORIZONS], 1).astype(np.float32)
    pos = np.tile(np.arange(n_bars), n_sym)
    seg = np.where(pos < 120, "train", np.where(pos < 160, "val", "test"))
    ts = np.tile(pd.date_range("2020-01-01", periods=n_bars, freq="D").to_numpy(), n_sym)
    keys = pd.DataFrame({"symbol": np.repeat([f"S{i}" for i in range(n_sym)], n_bars), "timestamp": ts})
    return Dataset(keys=keys, X=X, Y=Y, feature_names=[f"f{i}" for i in range(4)], horizons=HORIZONS,
                   segment=seg, sym_codes=np.repeat(np.arange(n_sym), n_bars),
                   vol=rng.uniform(0.005, 0.02, len(X)), C=None)


@pytest.mark.parametrize("scope", ["pooled", "per_symbol"])
def test_training_reports_a_distributional_models_own_std_and_prob_up(tmp_path, scope):
    ds = _dataset()
    deepar, lstm = fit_models(ds, ("deepar", "lstm"), DEEPAR, tmp_path, seed=0, extra=NEURAL, scope=scope)
    assert deepar.model.distribution == "gaussian" and lstm.model.distribution is None
    if scope == "per_symbol":
        assert isinstance(deepar.model, PerSymbolModel)
    for r in (deepar, lstm):
        p = r.predictions.set_index(["symbol", "timestamp", "horizon"]).sort_index()
        cal = Calibration.from_dict(r.model.meta_["calibration"])  # fit and saved for both
        for seg in ("val", "test"):
            rows = ds.window_ends(ds.rows(seg), LOOKBACK)
            X, symbols = ds.windows(rows, LOOKBACK), ds.keys["symbol"].to_numpy()[rows]
            keys = pd.MultiIndex.from_arrays([np.repeat(symbols, len(HORIZONS)),
                                              np.repeat(ds.keys["timestamp"].to_numpy()[rows], len(HORIZONS)),
                                              np.tile(HORIZONS, len(rows))])
            got = p.loc[keys]
            mean = r.model.predict(X, symbols)
            if r is deepar:  # its own: the std of its distribution, P(up) under it
                _, std = r.model.predict_dist(X, symbols)
                prob = distribution_prob_up(mean, std)
            else:  # unchanged: the volatility scale calibrated on val
                std, prob = apply_calibration(cal, mean, ds.vol[rows])
            np.testing.assert_allclose(got["yhat"].to_numpy(), mean.reshape(-1), rtol=1e-6)
            np.testing.assert_allclose(got["yhat_std"].to_numpy(), std.reshape(-1), rtol=1e-6)
            np.testing.assert_allclose(got["prob_up"].to_numpy(), prob.reshape(-1), rtol=1e-6)
    # the volatility scale is one factor per horizon times vol; DeepAR's std is its own per row
    vs = lstm.predictions.query("segment == 'test' and horizon == 1")
    own = deepar.predictions.query("segment == 'test' and horizon == 1")
    vol = ds.vol[ds.window_ends(ds.rows("test"), LOOKBACK)]
    ratio = vs["yhat_std"].to_numpy() / vol
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    assert np.corrcoef(own["yhat_std"].to_numpy(), vol)[0, 1] < 0.5


def test_evaluate_scores_crps_beside_coverage(tmp_path):
    ds = _dataset()
    results = fit_models(ds, ("deepar", "lstm"), DEEPAR, tmp_path, seed=0, extra=NEURAL)
    preds = pd.concat([r.predictions for r in results], ignore_index=True).query("segment == 'test'")
    labels = ds.keys.assign(**{f"y_h{h}": ds.Y[:, j] for j, h in enumerate(HORIZONS)},
                            **{f"ret_h{h}": ds.Y[:, j] for j, h in enumerate(HORIZONS)})
    table = scored_rows(preds, labels, 1)
    for name in ("deepar", "lstm"):
        out = calibration_scores(preds, table, name, 1)
        p = table[["symbol", "timestamp", "y"]].merge(preds.query(f"model == '{name}' and horizon == 1"))
        assert out["crps"] == pytest.approx(metrics.crps_gaussian(p["y"], p["yhat"], p["yhat_std"]))
        assert out["pinball"] == pytest.approx(metrics.pinball_gaussian(p["y"], p["yhat"], p["yhat_std"],
                                                                        (0.1, 0.5, 0.9)))
        assert {"cover_1.00", "cover_1.96", "brier", "crps", "pinball"} <= set(out)


def test_a_bundle_forecasts_with_a_distributional_models_own_std(tmp_path):
    """Through the bundle (DeepAR's ONNX graph, two outputs), ``predict`` blends the members'
    forecasts and stds as the blend stage did on the training stage's predictions: DeepAR's
    own std, not its volatility scale. With the volatility scale the blend's yhat_std differs."""
    bars = random_bars(n_symbols=3, n_bars=420)
    freq, features, label, labels, ds = small_dataset(bars, HORIZONS)
    results = fit_models(ds, ("ridge",), {}, tmp_path / "models/classical", seed=0)
    results += fit_models(ds, ("deepar",), DEEPAR, tmp_path / "models/neural", seed=0, extra=NEURAL)
    preds = pd.concat([r.predictions for r in results], ignore_index=True)
    stacker = Stacker(BlendConfig(), [r.name for r in results], HORIZONS).fit(preds, labels)
    stacker.save(tmp_path / "models/blend")
    info = {"frequency": freq.to_dict(), "symbols": sorted(bars["symbol"].unique())}
    build_bundle([tmp_path / "models/classical", tmp_path / "models/neural"], tmp_path / "models/blend",
                 tmp_path / "bundle", features=features, label=label, lookback=LOOKBACK, info=info)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.models["deepar"].distribution == "gaussian" and bundle.models["ridge"].distribution is None
    got = predict(bars, bundle, asof="all")
    ref = stacker.predict(preds, "test").query("model == 'ensemble'")
    both = ref.merge(got, on=FORECAST_KEYS, suffixes=("_ref", ""))
    assert len(both) == len(ref) > 200
    for c in ("yhat", "yhat_std", "prob_up"):
        np.testing.assert_allclose(both[c], both[f"{c}_ref"], rtol=1e-5, atol=1e-6 * both[f"{c}_ref"].abs().max())
    # the check can fail: DeepAR's volatility-scale std instead of its own moves the blend's std
    own = preds.query("model == 'deepar' and segment == 'test'")["yhat_std"].to_numpy()
    cal = Calibration.from_dict(results[1].model.meta_["calibration"])
    rows = ds.window_ends(ds.rows("test"), LOOKBACK)
    vol_scale, _ = apply_calibration(cal, results[1].model.predict(ds.windows(rows, LOOKBACK)), ds.vol[rows])
    assert np.abs(vol_scale.reshape(-1) - own).max() > 0.1 * own.mean()


def test_quantile_option_trains_any_network_on_the_pinball_loss(tmp_path):
    """``neural.trainer.quantiles``: a network forecasts quantiles; its median is the forecast and
    the spread of its outermost quantiles its own std, which tracks planted heteroscedastic noise;
    the ONNX graph carries it; the loss is the pinball loss."""
    import json

    import torch

    from alphafactory import models
    from alphafactory.errors import ConfigError
    from alphafactory.models import dist
    from alphafactory.models.base import XY
    from alphafactory.serving import onnx_runtime

    out, y = torch.randn(5, 6), torch.randn(5, 2)
    y[1, 0] = float("nan")
    q = out.reshape(5, 2, 3)
    e = torch.nan_to_num(y)[..., None] - q
    taus = torch.tensor([0.1, 0.5, 0.9])
    ref = torch.where(e >= 0, taus * e, (taus - 1) * e).sum(-1)[~torch.isnan(y)].mean()
    torch.testing.assert_close(dist.pinball_loss((0.1, 0.5, 0.9))(out, y), ref)

    rng = np.random.default_rng(0)
    n, L = 3000, 4
    X = rng.normal(size=(n, L, 3)).astype(np.float32)
    noise = 0.2 + np.abs(X[:, -1, 1])
    Y = np.stack([0.5 * X[:, -1, 0] + noise * rng.normal(size=n) for _ in range(2)], 1).astype(np.float32)
    trainer = {"epochs": 20, "batch_size": 128, "lr": 3e-3, "device": "cpu", "quantiles": [0.1, 0.5, 0.9]}
    m = models.create("mlp", {"hidden": 16, "dropout": 0.0}, horizons=(1, 5), seed=0, lookback=L, trainer=trainer)
    m.fit(XY(X[:2000, -1], Y[:2000]), XY(X[2000:2500, -1], Y[2000:2500]))
    assert m.distribution == "quantile" and m.net_(torch.zeros(1, 3)).shape == (1, 6)
    mean, std = m.predict_dist(X[2500:, -1])
    for j in range(2):
        assert np.corrcoef(std[:, j], noise[2500:])[0, 1] > 0.7
        assert np.corrcoef(mean[:, j], X[2500:, -1, 0])[0, 1] > 0.7
    models.save(m, tmp_path / "mlp", meta={}, portable=True)
    info = json.loads((tmp_path / "mlp" / "onnx.json").read_text())
    assert info["distribution"] == {"head": "quantile", "df": None, "quantiles": [0.1, 0.5, 0.9]}
    got_mean, got_std = onnx_runtime.load(tmp_path / "mlp").predict_dist(X[2500:, -1])
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6 * np.abs(mean).max())
    np.testing.assert_allclose(got_std, std, rtol=1e-5, atol=1e-6 * std.max())
    for bad, match in (({"quantiles": [0.1, 0.9]}, "0.5 among them"), ({"quantiles": [0.5, 0.1, 0.9]}, "increasing")):
        with pytest.raises(ConfigError, match=match):
            models.create("mlp", horizons=(1,), trainer=bad)
    with pytest.raises(ConfigError, match="deepar, which has its own gaussian head"):
        models.create("deepar", horizons=(1,), trainer={"quantiles": [0.1, 0.5, 0.9]})
    with pytest.raises(ConfigError, match="train.task classification"):
        models.create("mlp", horizons=(1,), task="classification", trainer={"quantiles": [0.1, 0.5, 0.9]})
