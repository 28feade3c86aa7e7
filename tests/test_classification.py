"""train.task: classification downstream of the models: ensembles mix class probabilities with
their weights, and evaluate scores them (metrics and the confusion table) on the same rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory.blend import BlendConfig, Stacker, mixture_weights
from alphafactory.config import from_dict
from alphafactory.evaluation.evaluate import EvaluateConfig, confusion_table, evaluate
from alphafactory.labels import PROBA_COLUMNS


def test_mixture_weights_are_non_negative_and_sum_to_one():
    np.testing.assert_allclose(mixture_weights({"weights": [0.6, -0.2, 0.2]}, 3), [0.75, 0, 0.25])
    np.testing.assert_allclose(mixture_weights({"weights": [-1.0, -2.0]}, 2), [0.5, 0.5])
    np.testing.assert_allclose(mixture_weights(object(), 4), [0.25] * 4)  # a CatBoost meta: no weights


def _panel(n_ts=300, n_sym=4, seed=0):
    """Three classifier members: 'good' puts 0.8 on the true class, 'half' 0.5, 'flat' is uniform
    (a constant forecast, which every blend method leaves out)."""
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2020-01-01", periods=n_ts)
    rows = pd.MultiIndex.from_product([[f"S{i}" for i in range(n_sym)], ts], names=["symbol", "timestamp"])
    y = rng.normal(0, 0.01, len(rows))
    cls = np.where(y > 0.005, 1.0, np.where(y < -0.005, -1.0, 0.0))
    seg = np.where(rows.get_level_values("timestamp") < ts[n_ts // 2], "val", "test")
    good = np.full((len(rows), 3), 0.1)
    good[np.arange(len(rows)), cls.astype(int) + 1] = 0.8
    half = np.full((len(rows), 3), 0.25)
    half[np.arange(len(rows)), cls.astype(int) + 1] = 0.5
    frames = []
    for name, P in {"good": good, "half": half, "flat": np.full((len(rows), 3), 1 / 3)}.items():
        yhat = P @ np.array([-0.01, 0.0, 0.01])
        frames.append(pd.DataFrame({"symbol": rows.get_level_values(0), "timestamp": rows.get_level_values(1),
                                    "segment": seg, "model": name, "horizon": 1, "yhat": yhat,
                                    "yhat_std": 0.01, "prob_up": 0.5,
                                    **{c: P[:, k] for k, c in enumerate(PROBA_COLUMNS)}}))
    labels = pd.DataFrame({"symbol": rows.get_level_values(0), "timestamp": rows.get_level_values(1),
                           "y_h1": y, "ret_h1": y, "cls_h1": cls})
    return pd.concat(frames, ignore_index=True), labels


def test_ensembles_carry_mixed_class_probabilities_and_evaluate_scores_them():
    preds, labels = _panel()
    cfg = from_dict(BlendConfig, {"methods": ["ensemble", "voting", "blending"]}, "blend")
    st = Stacker(cfg, ["good", "half", "flat"], (1,), seed=0).fit(preds, labels)
    test = st.predict(preds, "test")
    P = test[list(PROBA_COLUMNS)].to_numpy()
    assert np.allclose(P.sum(1), 1.0) and (P >= 0).all()
    voting = test[test["model"] == "voting"][list(PROBA_COLUMNS)].to_numpy()
    member = preds[(preds["segment"] == "test")].pivot(index=["symbol", "timestamp"], columns="model",
                                                       values=list(PROBA_COLUMNS))
    # the mean of the members that vary; the constant 'flat' gets no weight
    np.testing.assert_allclose(voting[:, 2], (member[("p_long", "good")] + member[("p_long", "half")]).to_numpy() / 2)

    scored = pd.concat([preds[preds["segment"] == "test"], test], ignore_index=True).drop(columns="segment")
    ev = evaluate(scored, labels, 252.0, EvaluateConfig())
    result, plots = ev.metrics, ev.plots
    good, flat = result["good"]["h1"], result["flat"]["h1"]
    assert good["accuracy"] == pytest.approx(1.0) and good["macro_f1"] == pytest.approx(1.0)
    assert good["log_loss"] == pytest.approx(-np.log(0.8))
    assert flat["log_loss"] == pytest.approx(np.log(3)) and flat["roc_auc"] == pytest.approx(0.5)
    assert result["voting"]["h1"]["accuracy"] == pytest.approx(1.0)  # mean of 0.8 and 0.5 still wins
    conf = plots["confusion.csv"]
    assert conf["model"].iloc[0] == "ensemble" and set(conf["actual"]) == {"SHORT", "NEUTRAL", "LONG"}
    assert len(conf) == result["ensemble"]["h1"]["n"]


def test_regression_confusion_is_the_direction():
    table = pd.DataFrame({"symbol": "S", "timestamp": pd.bdate_range("2020-01-01", periods=4),
                          "y": [0.01, -0.02, 0.03, -0.01], "ensemble": [0.1, 0.2, -0.1, 0.0]})
    conf = confusion_table(pd.DataFrame(columns=["model", "horizon", "yhat"]), pd.DataFrame(), table, ["ensemble"], 1)
    assert conf["confusion.csv"][["actual", "predicted"]].values.tolist() == [
        ["up", "up"], ["down", "up"], ["up", "down"], ["down", "flat"]]
