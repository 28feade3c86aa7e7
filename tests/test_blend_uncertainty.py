"""Ensembles fit on val forecasts, and uncertainty calibrated on val."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory.blend import BlendConfig, Stacker, _oof_blocks
from alphafactory.config import from_dict
from alphafactory.uncertainty import apply_calibration, fit_calibration


def test_calibration_recovers_the_residual_scale_and_prob_up():
    rng = np.random.default_rng(0)
    n = 20000
    vol = rng.uniform(0.01, 0.03, n)
    yhat = rng.normal(0, 0.005, (n, 1))
    y = yhat + rng.normal(0, 1, (n, 1)) * 0.8 * vol[:, None]  # residual sd = 0.8 * vol
    cal = fit_calibration(yhat, y, vol, (1,))
    assert cal.scale[0] == pytest.approx(0.8, rel=0.02)
    std, prob = apply_calibration(cal, yhat, vol)
    np.testing.assert_allclose(std[:, 0], 0.8 * vol, rtol=0.02)
    # ~68% of outcomes inside ±1 std, and P(up) matches the observed frequency by bin
    assert np.mean(np.abs(y - yhat) <= std) == pytest.approx(0.683, abs=0.015)
    bins = np.digitize(prob[:, 0], [0.3, 0.5, 0.7])
    for b in range(4):
        m = bins == b
        if m.sum() > 500:
            assert prob[m, 0].mean() == pytest.approx((y[m, 0] > 0).mean(), abs=0.03)


def test_calibration_horizon_scaling():
    rng = np.random.default_rng(1)
    vol = np.full(5000, 0.02)
    yhat = np.zeros((5000, 1))
    y = rng.normal(0, 0.02 * np.sqrt(5), (5000, 1))
    cal = fit_calibration(yhat, y, vol, (5,))
    assert cal.scale[0] == pytest.approx(1.0, rel=0.05)  # sd of a 5-bar return is vol * sqrt(5)


def _panel(n_ts=400, n_sym=5, seed=0):
    """Member forecasts for val and test: 'good' carries signal, 'noise' does not."""
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2020-01-01", periods=n_ts)
    rows = pd.MultiIndex.from_product([[f"S{i}" for i in range(n_sym)], ts], names=["symbol", "timestamp"])
    sig = rng.normal(0, 0.01, len(rows))
    y = sig + rng.normal(0, 0.01, len(rows))
    seg = np.where(rows.get_level_values("timestamp") < ts[n_ts // 2], "val", "test")
    frames = []
    for name, f in {"good": sig, "noise": rng.normal(0, 0.01, len(rows)), "half": 0.5 * sig}.items():
        frames.append(pd.DataFrame({"symbol": rows.get_level_values(0), "timestamp": rows.get_level_values(1),
                                    "segment": seg, "model": name, "horizon": 1, "yhat": f,
                                    "yhat_std": 0.01, "prob_up": 0.5}))
    labels = pd.DataFrame({"symbol": rows.get_level_values(0), "timestamp": rows.get_level_values(1), "y_h1": y})
    return pd.concat(frames, ignore_index=True), labels


@pytest.mark.parametrize("meta", ["ridge", "catboost"])
def test_ensembles_learn_from_val_and_round_trip(meta, tmp_path):
    preds, labels = _panel()
    cfg = from_dict(BlendConfig, {"meta": meta, "catboost": {"iterations": 50}}, "blend")
    st = Stacker(cfg, ["good", "noise", "half"], (1,), seed=3).fit(preds, labels)
    w = st.models_["blending"][1]["weights"]
    assert min(w) >= 0 and sum(w) == pytest.approx(1.0) and w[1] < 0.2  # little weight on noise
    car = st.models_["caruana"][1]["weights"]
    assert car[0] == max(car)  # greedy selection picks the informative member most
    test = st.predict(preds, "test")
    assert set(test["model"]) == {"ensemble", "voting", "blending", "caruana"}
    y = labels.set_index(["symbol", "timestamp"])["y_h1"]
    for m, g in test.groupby("model"):
        ic = np.corrcoef(g["yhat"], y.reindex(pd.MultiIndex.from_frame(g[["symbol", "timestamp"]])))[0, 1]
        assert ic > 0.4, (m, ic)  # the signal member alone has IC ~0.7
        assert (g["yhat_std"] > 0).all() and g["prob_up"].between(0, 1).all()
    st.save(tmp_path / "blend")
    again = Stacker.load(tmp_path / "blend").predict(preds, "test")
    pd.testing.assert_frame_equal(again, test)


def test_oof_blocks_purge_neighbours():
    ts = np.repeat(np.arange(100), 3)
    for train, test in _oof_blocks(ts, 4, purge=5):
        assert not (train & test).any()
        t = ts[test]
        near = (ts >= t.min() - 5) & (ts <= t.max() + 5)
        assert not (train & near).any()


def test_blend_config_rejects_unknown_method():
    with pytest.raises(ValueError, match="bagging"):
        from_dict(BlendConfig, {"methods": ["ensemble", "bagging"]}, "blend")


def test_constant_members_get_no_weight_and_collinear_ones_do_not_break_the_fit(caplog):
    """On a small panel, early-stopped boosters that keep one tree forecast a constant: the
    stacking system used to be singular (LinAlgError). Every method leaves them out, with a log."""
    preds, labels = _panel()
    const = preds[preds["model"] == "good"].assign(model="const", yhat=0.0004)
    twin = preds[preds["model"] == "good"].assign(model="twin")  # collinear with good
    preds = pd.concat([preds, const, twin], ignore_index=True)
    members = ["const", "good", "noise", "twin"]
    with caplog.at_level("INFO", logger="alphafactory"):
        st = Stacker(from_dict(BlendConfig, {}, "blend"), members, (1,), seed=0).fit(preds, labels)
    assert "h1: const left out of every method: constant val forecasts" in caplog.text
    for method in ("ensemble", "voting", "blending", "caruana"):
        w = st.models_[method][1]["weights"]
        assert w[0] == 0 and np.isfinite(w).all(), (method, w)
    assert st.models_["voting"][1]["weights"] == [0.0, 1 / 3, 1 / 3, 1 / 3]
    test = st.predict(preds, "test")
    assert test["yhat"].notna().all() and test.groupby("model")["yhat"].std().gt(0).all()


def test_every_member_constant_is_one_clear_error():
    from alphafactory.errors import ConfigError

    preds, labels = _panel()
    preds["yhat"] = 0.001
    with pytest.raises(ConfigError, match=r"^blend: every base model forecasts a constant on the 1000 val rows at "
                                          r"horizon 1; the panel is too small to train on"):
        Stacker(from_dict(BlendConfig, {}, "blend"), ["good", "noise", "half"], (1,)).fit(preds, labels)


@pytest.mark.parametrize("meta", ["ridge", "catboost"])
def test_predict_arrays_is_predict_bit_for_bit(meta):
    """The serving path's predict_arrays gives predict's numbers exactly, on two horizons, with
    class probabilities, and NaN where a member has no forecast (a row predict leaves out)."""
    from alphafactory.labels import PROBA_COLUMNS

    one, labels = _panel(n_ts=200, n_sym=3, seed=4)
    rng = np.random.default_rng(1)
    preds = pd.concat([one, one.assign(horizon=5, yhat=one["yhat"] * 2 + rng.normal(0, 0.002, len(one)),
                                       yhat_std=rng.uniform(0.01, 0.03, len(one)))], ignore_index=True)
    preds[list(PROBA_COLUMNS)] = rng.dirichlet([1, 1, 1], len(preds))
    labels["y_h5"] = labels["y_h1"] * 2
    members = ["good", "noise", "half"]
    cfg = from_dict(BlendConfig, {"meta": meta, "catboost": {"iterations": 30}}, "blend")
    st = Stacker(cfg, members, (1, 5), seed=3).fit(preds, labels)
    test = preds[preds["segment"] == "test"].sort_values(["model", "horizon", "symbol", "timestamp"], ignore_index=True)
    test.loc[7, "yhat"] = np.nan  # 'good' has no h1 forecast for one row
    want = st.predict(test, "test").set_index(["model", "horizon", "symbol", "timestamp"]).sort_index()
    first = (test["model"] == "good") & (test["horizon"] == 1)
    keys = test.loc[first, ["symbol", "timestamp"]].reset_index(drop=True)

    def cube(col):  # (n, H, M) in keys' row order
        p = test.pivot_table(index=["symbol", "timestamp"], columns=["horizon", "model"], values=col, dropna=False)
        return np.stack([np.stack([p[(h, m)].reindex(pd.MultiIndex.from_frame(keys)).to_numpy() for m in members], -1)
                         for h in (1, 5)], 1)

    got = st.predict_arrays(cube("yhat"), cube("yhat_std"), np.stack([cube(c) for c in PROBA_COLUMNS], -1))
    assert set(got) == set(cfg.methods)
    for method, cols in got.items():
        for j, h in enumerate((1, 5)):
            ok = ~np.isnan(cols["yhat"][:, j])
            assert ok.sum() == len(keys) - (h == 1)  # the row without a member forecast is NaN
            w = want.loc[(method, h)].reindex(pd.MultiIndex.from_frame(keys[ok]))
            for c in ("yhat", "yhat_std", "prob_up", *PROBA_COLUMNS):
                np.testing.assert_array_equal(cols[c][ok, j], w[c].to_numpy(), err_msg=f"{method} h{h} {c}")
    with pytest.raises(ValueError, match="shape"):
        st.predict_arrays(cube("yhat")[:, :1], cube("yhat_std")[:, :1])
