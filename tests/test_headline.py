"""The review loop's figures: the IC's standard error, metrics/headline.json and the table the
evaluate stage prints."""
import math

import numpy as np
import pandas as pd
import pytest

from alphafactory.evaluation import metrics
from alphafactory.evaluation.evaluate import EvaluateConfig, evaluate, headline, summary_table


def factor_panel(rng, n_t=250, n_sym=10, common=0.0, signal=0.1):
    """y and yhat share a per-timestamp common factor of weight ``common`` (market moves) plus a
    per-row signal: with common > 0, rows at a timestamp are dependent."""
    f = np.repeat(rng.standard_normal(n_t), n_sym)
    e = rng.standard_normal(n_t * n_sym)
    y = common * f + e
    yhat = common * f + signal * e + rng.standard_normal(n_t * n_sym)
    return pd.DataFrame({"timestamp": np.repeat(pd.bdate_range("2020-01-01", periods=n_t), n_sym), "y": y, "yhat": yhat})


@pytest.mark.parametrize("common", [0.0, 1.0])
def test_ic_se_matches_the_spread_of_ic_across_panels(common):
    rng = np.random.default_rng(0)
    panels = [factor_panel(rng, common=common) for _ in range(200)]
    true_se = np.std([np.corrcoef(p["y"], p["yhat"])[0, 1] for p in panels], ddof=1)
    est = np.median([metrics.ic_standard_error(p, horizon=1) for p in panels[:20]])
    assert est == pytest.approx(true_se, rel=0.25), (est, true_se)
    naive = (1 - np.corrcoef(panels[0]["y"], panels[0]["yhat"])[0, 1] ** 2) / math.sqrt(len(panels[0]) - 3)
    if common:  # dependent rows: the i.i.d. formula is far too small, the block bootstrap is not
        assert naive < 0.6 * true_se


def test_ic_se_is_deterministic_and_undefined_for_constant_forecasts():
    p = factor_panel(np.random.default_rng(1))
    assert metrics.ic_standard_error(p, 5) == metrics.ic_standard_error(p, 5)
    assert math.isnan(metrics.ic_standard_error(p.assign(yhat=0.0), 1))
    assert math.isnan(metrics.ic_standard_error(p.head(30), 20))  # fewer than 2 blocks of 20 bars


def scored_panel():
    """Test rows of 4 symbols with a good, a weak and a stacked model, plus baselines."""
    rng = np.random.default_rng(3)
    n_t, syms = 300, ["A", "B", "C", "D"]
    ts = pd.bdate_range("2021-01-01", periods=n_t)
    keys = pd.DataFrame({"symbol": np.repeat(syms, n_t), "timestamp": np.tile(ts, len(syms))})
    y = rng.standard_normal(len(keys)) * 0.01
    labels = keys.assign(y_h1=y, ret_h1=y)
    fc = {"good": y + rng.standard_normal(len(y)) * 0.02, "weak": y + rng.standard_normal(len(y)) * 0.1}
    fc["ensemble"] = 0.7 * fc["good"] + 0.3 * fc["weak"]
    fc.update(zero=np.zeros(len(y)), momentum=np.sign(rng.standard_normal(len(y))) * 0.01,
              buy_and_hold=np.full(len(y), 0.01))
    preds = pd.concat([keys.assign(model=m, horizon=1, yhat=v) for m, v in fc.items()], ignore_index=True)
    return preds, labels


def test_headline_names_the_best_base_model_and_baseline():
    preds, labels = scored_panel()
    ev = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",))
    h = headline(ev)["h1"]
    full = ev.metrics
    assert h["model"] == "ensemble"
    assert h["ic"] == pytest.approx(full["ensemble"]["h1"]["ic"], rel=1e-3)  # 4 significant digits
    assert 0 < h["ic_se"] < 0.1 and h["cs_ic"] == pytest.approx(full["ensemble"]["h1"]["cs_ic_mean"], rel=1e-3)
    assert h["best"]["model"] == "good" and h["best"]["ic"] > full["weak"]["h1"]["ic"]
    assert h["baseline"]["ic_model"] == "momentum"          # the only baseline with an IC
    assert h["baseline"]["sharpe_model"] in ("momentum", "buy_and_hold")
    assert h["selection"]["n_trials"] == 3 and 0 <= h["selection"]["dsr"] <= 1
    assert "oracle_share" not in h  # no oracle: real data
    numbers = [v for k, v in pd.json_normalize(headline(ev)).iloc[0].items() if isinstance(v, float)]
    assert len(numbers) <= 18


def test_summary_table_lists_every_model_with_ic_and_se():
    preds, labels = scored_panel()
    ev = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",))
    text = summary_table(ev.metrics, headline(ev))
    r = ev.metrics["good"]["h1"]
    assert f"{r['ic']:+.4f} ± {r['ic_se']:.4f}" in text
    lines = {line.split()[0]: line for line in text.splitlines()[2:] if line.strip()}
    assert {"ensemble", "good", "weak", "momentum"} <= set(lines)
    assert "zero" not in lines  # a baseline that is best at nothing is left out
    assert "deflated Sharpe" in text and max(len(line) for line in text.splitlines()) <= 120


def test_exp_run_set_changes_one_line_of_params_yaml(tmp_path):
    """`dvc exp run -S` rewrites params.yaml through DVC's own YAML writer; the committed file is
    in that style, so one changed key is a one-line diff in review."""
    import difflib
    from pathlib import Path

    from dvc.utils.hydra import apply_overrides

    original = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    for override, line in [("train.lookback=16", "+  lookback: 16"), ("neural.trainer.epochs=5", "+    epochs: 5"),
                           ("features.windows=[5,10]", None)]:
        path = tmp_path / "params.yaml"
        path.write_text(original)
        apply_overrides(str(path), [override])
        diff = [d for d in difflib.unified_diff(original.splitlines(), path.read_text().splitlines(), n=0)
                if d[:1] in "+-" and not d.startswith(("+++", "---"))]
        if line is None:  # a shorter list: exactly the removed items
            assert diff == ["-  - 20", "-  - 60"], diff
        else:
            assert len(diff) == 2 and diff[1].startswith(line), diff


def test_ic_t_is_calibrated_on_a_noise_panel_whose_dates_share_a_factor():
    """30 symbols, forecasts unrelated to the outcome, but each side has its own market factor
    per date. The 1/sqrt(n) SE treats the 7,500 rows as independent and makes noise look like
    signal; the date-block bootstrap's t-statistic has the spread of a standard normal."""
    rng = np.random.default_rng(5)
    n_t, n_sym = 250, 30
    ts = np.repeat(pd.bdate_range("2020-01-01", periods=n_t), n_sym)
    ts_naive, ts_boot = [], []
    for _ in range(60):
        y = np.repeat(rng.standard_normal(n_t), n_sym) + rng.standard_normal(n_t * n_sym)
        yhat = np.repeat(rng.standard_normal(n_t), n_sym) + rng.standard_normal(n_t * n_sym)
        ic = np.corrcoef(y, yhat)[0, 1]
        ts_naive.append(ic * math.sqrt(len(y)))
        ts_boot.append(ic / metrics.ic_standard_error(pd.DataFrame({"timestamp": ts, "y": y, "yhat": yhat}), 1))
    assert np.std(ts_boot) == pytest.approx(1.0, abs=0.3)
    assert np.std(ts_naive) > 2.0  # |IC| of noise routinely "3 sigma" by 1/sqrt(n)


def test_every_ic_carries_its_error_bar():
    preds, labels = scored_panel()
    ev = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",))
    r = ev.metrics["good"]["h1"]
    assert r["ic_t"] == pytest.approx(r["ic"] / r["ic_se"])
    assert r["rank_ic_t"] == pytest.approx(r["rank_ic"] / r["rank_ic_se"]) and 0 < r["rank_ic_se"] < 0.1
    assert r["cs_ic_t"] == pytest.approx(r["cs_ic_mean"] / r["cs_ic_se"])
    assert r["cs_icir_ann"] == pytest.approx(r["cs_icir"] * math.sqrt(252))
    assert math.isnan(ev.metrics["zero"]["h1"]["ic_t"])  # a constant forecast has no IC
    h = headline(ev)["h1"]
    assert h["ic_t"] == pytest.approx(h["ic"] / h["ic_se"], rel=1e-3) and h["cs_ic_se"] > 0


def test_oracle_share_is_null_when_the_oracle_ic_is_not_significant():
    """A share of an IC that is itself noise can take any value of either sign: null, and the
    reason recorded. A significant oracle IC keeps the share."""
    preds, labels = scored_panel()
    keys = preds.loc[preds["model"] == "good", ["symbol", "timestamp", "horizon"]]
    rng = np.random.default_rng(9)
    noise = keys.assign(yhat=rng.standard_normal(len(keys)))
    ev = evaluate(preds, labels, 252.0, EvaluateConfig(), oracle=noise, ensembles=("ensemble",))
    assert abs(ev.metrics["oracle"]["h1"]["ic_t"]) < 1.96
    assert all(math.isnan(ev.metrics[m]["h1"]["oracle_share"]) for m in ("good", "weak", "ensemble"))
    assert "not significant" in ev.metrics["_oracle_share"]["h1"]
    h = headline(ev)["h1"]
    assert h["oracle_share"] is None and "not significant" in h["oracle_share_note"]

    y = labels.set_index(["symbol", "timestamp"])["y_h1"]
    truth = keys.assign(yhat=y.reindex(pd.MultiIndex.from_frame(keys[["symbol", "timestamp"]])).to_numpy())
    ev = evaluate(preds, labels, 252.0, EvaluateConfig(), oracle=truth, ensembles=("ensemble",))
    r = ev.metrics["good"]["h1"]
    assert r["oracle_share"] == pytest.approx(r["ic"] / ev.metrics["oracle"]["h1"]["ic"])
    assert "oracle_share_note" not in headline(ev)["h1"]


def test_deflated_sharpe_counts_every_trial_and_uses_their_spread():
    preds, labels = scored_panel()
    base = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",)).metrics
    sel = base["_selection"]
    per_period = [base[m]["h1"]["sharpe_per_period"] for m in ("good", "weak", "ensemble")]
    assert sel["n_trials"] == sel["n_candidates"] == 3 and sel["extra_trials"] == 0
    assert sel["sharpe_var_source"] == "candidates"
    assert sel["sharpe_trials_var"] == pytest.approx(np.var(per_period, ddof=1))
    assert sel["sharpe_trials_var"] != pytest.approx(1 / (sel["n_periods"] - 1))  # not the noise default
    assert sel["expected_max_sharpe"] == pytest.approx(metrics.expected_max_sharpe(3, sel["sharpe_trials_var"]))
    tuned = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",), extra_trials=40).metrics
    t = tuned["_selection"]
    assert t["n_trials"] == 43 and t["extra_trials"] == 40 and t["best_model"] == sel["best_model"]
    assert t["dsr"] < sel["dsr"] and t["psr"] == sel["psr"]
    with pytest.raises(ValueError, match="extra_trials"):
        evaluate(preds, labels, 252.0, EvaluateConfig(), extra_trials=-1)


def test_ic_and_trading_score_the_raw_return_under_a_normalised_target():
    """label.normalize trains on y != ret: ICs, direction and trading against ret; MAE/RMSE/R²
    against y (the forecast's units)."""
    preds, labels = scored_panel()
    raw = evaluate(preds, labels, 252.0, EvaluateConfig(), ensembles=("ensemble",)).metrics
    rng = np.random.default_rng(4)
    scrambled = labels.assign(y_h1=rng.standard_normal(len(labels)))  # a target unrelated to ret
    ev = evaluate(preds, scrambled, 252.0, EvaluateConfig(), ensembles=("ensemble",)).metrics
    for m in ("good", "weak", "ensemble"):
        for k in ("ic", "rank_ic", "ic_se", "dir_acc", "cs_ic_mean", "sharpe", "ls_sharpe"):
            if k in raw[m]["h1"]:
                assert ev[m]["h1"][k] == pytest.approx(raw[m]["h1"][k], nan_ok=True), (m, k)
        assert ev[m]["h1"]["rmse"] != pytest.approx(raw[m]["h1"]["rmse"])
        p = preds[(preds.model == m)].merge(scrambled, on=["symbol", "timestamp"])
        assert ev[m]["h1"]["rmse"] == pytest.approx(float(np.sqrt(np.mean((p.yhat - p.y_h1) ** 2))))
    assert raw["good"]["h1"]["ic"] > 0.3
