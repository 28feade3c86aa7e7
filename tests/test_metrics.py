"""Hand-worked checks for alphafactory.evaluation.metrics.

Every expected number below is worked out by hand in the comment next to it; the code
under test is never used to produce an expected value.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from alphafactory.evaluation import metrics as M

# ---------------------------------------------------------------------------------------------
# regression_metrics
# ---------------------------------------------------------------------------------------------

Y = np.array([0.01, -0.02, 0.03])
YHAT = np.array([0.02, -0.01, -0.01])


def test_regression_metrics_hand_example() -> None:
    out = M.regression_metrics(Y, YHAT)
    # errors yhat - y = [0.01, 0.01, -0.04]
    # MAE = (0.01 + 0.01 + 0.04) / 3 = 0.02
    assert out["mae"] == pytest.approx(0.02)
    # SSE = 1e-4 + 1e-4 + 16e-4 = 18e-4 ; RMSE = sqrt(6e-4) = 0.0244948974
    assert out["rmse"] == pytest.approx(math.sqrt(6e-4))
    assert out["rmse"] == pytest.approx(0.0244948974)
    # mean(y) = 0.02/3 ; SST = sum y^2 - n*mean^2 = 14e-4 - 3*(4/9)e-4 = (38/3)e-4
    # R2 = 1 - 18 / (38/3) = 1 - 54/38 = -8/19 = -0.4210526
    assert out["r2"] == pytest.approx(-8 / 19)
    # signs y = (+,-,+), yhat = (+,-,-): 2 of 3 agree
    assert out["dir_acc"] == pytest.approx(2 / 3)
    # Pearson (in units of 1e-2): y dev = [1/3, -8/3, 7/3], yhat dev = [2, -1, -1]
    # cov-sum = 2/3 + 8/3 - 7/3 = 1 ; Syy = 38/3 ; Spp = 6  ->  1/sqrt(76) = 0.1147078
    assert out["ic"] == pytest.approx(1 / math.sqrt(76))
    # Spearman: ranks y = [2,1,3], ranks yhat = [3,1.5,1.5]; dev [0,-1,1] . [1,-.5,-.5] = 0
    assert out["rank_ic"] == pytest.approx(0.0, abs=1e-12)
    assert out["n"] == 3


def test_regression_metrics_baselines() -> None:
    # constant forecast at mean(y): SSE == SST -> R2 = 0 exactly; IC undefined -> NaN
    mean_fc = M.regression_metrics(Y, np.full(3, Y.mean()))
    assert mean_fc["r2"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(mean_fc["ic"]) and math.isnan(mean_fc["rank_ic"])
    # zero forecast: SSE = sum y^2 = 14e-4 ; R2 = 1 - 14/(38/3) = 1 - 42/38 = -2/19
    zero = M.regression_metrics(Y, np.zeros(3))
    assert zero["r2"] == pytest.approx(-2 / 19)
    assert zero["r2"] < 0
    assert zero["dir_acc"] == 0.0  # a zero forecast never has the sign of a non-zero y
    assert math.isnan(zero["ic"]) and math.isnan(zero["rank_ic"])


def test_dir_acc_zero_handling() -> None:
    # row 0 has y == 0 -> excluded; row 1: yhat == 0 -> wrong; rows 2, 3 right -> 2/3
    y = np.array([0.0, 0.01, -0.01, 0.02])
    yhat = np.array([0.5, 0.0, -0.3, 0.1])
    assert M.regression_metrics(y, yhat)["dir_acc"] == pytest.approx(2 / 3)
    # all y == 0 -> no row to score -> NaN
    assert math.isnan(M.regression_metrics(np.zeros(3), np.array([1.0, 2.0, 3.0]))["dir_acc"])


@pytest.mark.parametrize(
    ("y", "yhat"),
    [
        (np.array([0.01, np.nan, 0.02]), np.array([0.0, 0.1, 0.2])),
        (np.array([0.01, 0.02, 0.03]), np.array([0.0, np.inf, 0.2])),
        (np.array([0.01, 0.02]), np.array([0.0, 0.1, 0.2])),
        (np.array([[0.01, 0.02]]), np.array([[0.0, 0.1]])),
        (np.array([]), np.array([])),
    ],
)
def test_regression_metrics_rejects_bad_input(y: np.ndarray, yhat: np.ndarray) -> None:
    with pytest.raises(ValueError):
        M.regression_metrics(y, yhat)


# ---------------------------------------------------------------------------------------------
# cross_sectional_ic
# ---------------------------------------------------------------------------------------------


def _cs_frame() -> pd.DataFrame:
    rows = []
    ts = pd.date_range("2024-01-01", periods=5, freq="D")
    # t0: yhat == y order              -> pearson 1, spearman 1
    # t1: yhat reversed                 -> pearson -1, spearman -1
    # t2: y=[1,2,3], yhat=[1,10,2]      -> spearman of ranks [1,3,2] = 0.5
    #     pearson: y dev [-1,0,1], yhat dev [-10/3, 17/3, -7/3]; cov-sum = 10/3 - 7/3 = 1
    #     Syy = 2, Spp = (100 + 289 + 49)/9 = 438/9 -> 1/sqrt(2*438/9) = 1/sqrt(97.333..)
    # t3: only 2 symbols                -> dropped (min_symbols=3)
    # t4: constant yhat                 -> dropped
    spec = {
        ts[0]: ([1, 2, 3], [1, 2, 3]),
        ts[1]: ([1, 2, 3], [3, 2, 1]),
        ts[2]: ([1, 2, 3], [1, 10, 2]),
        ts[3]: ([1, 2], [1, 2]),
        ts[4]: ([1, 2, 3], [5, 5, 5]),
    }
    for t, (ys, ps) in spec.items():
        for i, (yv, pv) in enumerate(zip(ys, ps, strict=True)):
            rows.append({"timestamp": t, "symbol": f"S{i}", "y": float(yv), "yhat": float(pv)})
    # shuffle row order: the grouping must not depend on it
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_cross_sectional_ic_hand_example() -> None:
    out = M.cross_sectional_ic(_cs_frame(), min_symbols=3)
    assert out["n_periods"] == 3
    p2 = 1 / math.sqrt(2 * 438 / 9)  # 0.1013606
    ics = np.array([1.0, -1.0, p2])
    # mean = p2/3 ; std(ddof=1) by hand
    mean = (1 - 1 + p2) / 3
    std = math.sqrt(((1 - mean) ** 2 + (-1 - mean) ** 2 + (p2 - mean) ** 2) / 2)
    assert out["ic_mean"] == pytest.approx(mean)
    assert out["ic_mean"] == pytest.approx(ics.mean())
    assert out["ic_std"] == pytest.approx(std)
    assert out["icir"] == pytest.approx(mean / std)
    # rank ICs [1, -1, 0.5]: mean 1/6 ; deviations 5/6, -7/6, 1/3 ->
    # sum sq = 25/36 + 49/36 + 4/36 = 78/36 ; /2 -> 13/12 ; std = sqrt(13/12) = 1.0408330
    assert out["rank_ic_mean"] == pytest.approx(1 / 6)
    assert out["rank_ic_std"] == pytest.approx(math.sqrt(13 / 12))
    assert out["rank_icir"] == pytest.approx((1 / 6) / math.sqrt(13 / 12))


def test_cross_sectional_ic_not_enough_symbols() -> None:
    out = M.cross_sectional_ic(_cs_frame(), min_symbols=4)
    assert out["n_periods"] == 0
    assert all(math.isnan(out[k]) for k in ("ic_mean", "ic_std", "icir", "rank_ic_mean"))


def test_cross_sectional_ic_rejects_missing_column() -> None:
    with pytest.raises(ValueError, match="yhat"):
        M.cross_sectional_ic(_cs_frame().drop(columns="yhat"))


# ---------------------------------------------------------------------------------------------
# sharpe_ratio / max_drawdown / performance_summary
# ---------------------------------------------------------------------------------------------

# r = [0.02, 0, 0.02, 0]: mean 0.01, deviations +-0.01, std(ddof=1) = 0.01*sqrt(4/3)
# per-period SR = 0.01 / (0.01*sqrt(4/3)) = sqrt(3/4)
R4 = pd.Series([0.02, 0.0, 0.02, 0.0])


def test_sharpe_daily_and_hourly_annualisation() -> None:
    # daily: sqrt(3/4 * 252) = sqrt(189) = 13.7477271
    assert M.sharpe_ratio(R4, 252) == pytest.approx(13.7477271, rel=1e-8)
    # hourly US session, 7 bars/day: sqrt(3/4 * 1764) = sqrt(1323) = 36.3730670
    assert M.sharpe_ratio(R4, 252 * 7) == pytest.approx(36.3730670, rel=1e-8)


def test_sharpe_horizon_annualisation() -> None:
    # daily bars, 5-bar holding periods: 252/5 = 50.4 periods/yr -> sqrt(3/4*50.4) = sqrt(37.8)
    assert M.sharpe_ratio(R4, 252, horizon=5) == pytest.approx(6.1481705, rel=1e-8)
    # hourly bars, 7-bar (one day) holding: 1764/7 = 252 periods/yr -> same as daily h=1
    assert M.sharpe_ratio(R4, 252 * 7, horizon=7) == pytest.approx(math.sqrt(189))


def test_sharpe_degenerate() -> None:
    assert math.isnan(M.sharpe_ratio(pd.Series([0.01, 0.01, 0.01]), 252))
    assert math.isnan(M.sharpe_ratio(pd.Series([0.01]), 252))
    with pytest.raises(ValueError, match="periods_per_year"):
        M.sharpe_ratio(R4, 0)
    with pytest.raises(ValueError, match="horizon"):
        M.sharpe_ratio(R4, 252, horizon=0)


def test_max_drawdown_known_path() -> None:
    # +10%, -20%, +5% -> equity 1.1, 0.88, 0.924 ; worst fall 1.1 -> 0.88 = 20%
    assert M.max_drawdown(pd.Series([0.10, -0.20, 0.05])) == pytest.approx(0.2)
    # starting capital 1 is a peak: -10% first -> 0.9 -> drawdown 0.1
    assert M.max_drawdown(pd.Series([-0.10, 0.05])) == pytest.approx(0.1)
    # equity 1.1, .88, .924, 1.2012, .6006 -> new peak 1.2012 then -50%
    assert M.max_drawdown(pd.Series([0.1, -0.2, 0.05, 0.3, -0.5])) == pytest.approx(0.5)
    # only gains -> 0 ; a return below -100% is ruin -> 1.0
    assert M.max_drawdown(pd.Series([0.01, 0.02])) == 0.0
    assert M.max_drawdown(pd.Series([0.1, -1.5, 0.2])) == pytest.approx(1.0)


def test_performance_summary_hand_example() -> None:
    out = M.performance_summary(R4, periods_per_year=252, horizon=1)
    assert out["ann_return"] == pytest.approx(0.01 * 252)  # arithmetic: 2.52
    # ann_vol = 0.01*sqrt(4/3)*sqrt(252) = sqrt(0.0336) = 0.1833030
    assert out["ann_vol"] == pytest.approx(math.sqrt(0.0336))
    assert out["sharpe"] == pytest.approx(math.sqrt(189))
    assert out["total_return"] == pytest.approx(1.02**2 - 1)  # 0.0404
    assert out["max_drawdown"] == 0.0
    assert out["win_rate"] == pytest.approx(1.0)  # zero periods excluded: 2 wins of 2
    assert out["n_periods"] == 4

    path = M.performance_summary(pd.Series([0.10, -0.20, 0.05]), 252, horizon=5)
    # mean = -0.05/3 ; ann_return = mean * 252/5
    assert path["ann_return"] == pytest.approx(-0.05 / 3 * 50.4)
    assert path["max_drawdown"] == pytest.approx(0.2)
    assert path["total_return"] == pytest.approx(0.924 - 1)
    assert path["win_rate"] == pytest.approx(2 / 3)


def test_performance_summary_empty_and_nan() -> None:
    out = M.performance_summary(pd.Series([], dtype=float), 252, 1)
    assert out["n_periods"] == 0 and math.isnan(out["sharpe"])
    with pytest.raises(ValueError, match="returns"):
        M.performance_summary(pd.Series([0.1, np.nan]), 252, 1)


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------


def _panel(symbol: str, simple: list[float], yhat: list[float], start: int = 0) -> pd.DataFrame:
    """One symbol, consecutive daily timestamps from day ``start``; y = log(1 + simple)."""
    n = len(simple)
    return pd.DataFrame(
        {
            "symbol": symbol,
            "timestamp": pd.date_range("2024-01-01", periods=n + start, freq="D")[start:],
            "y": np.log1p(np.asarray(simple, dtype=float)),
            "yhat": np.asarray(yhat, dtype=float),
        }
    )


def test_strategy_returns_costs_and_flip() -> None:
    # positions +1, -1, -1, +1 ; turnover 1 (entry from 0), 2 (flip), 0, 2 (flip)
    # simple returns 0.01, -0.02, 0.03, 0.02 -> gross 0.01, 0.02, -0.03, 0.02
    # cost 10 bps = 0.001 per unit of turnover -> net 0.009, 0.018, -0.03, 0.018
    df = _panel("A", [0.01, -0.02, 0.03, 0.02], [0.3, -0.1, -0.2, 0.5])
    out = M.strategy_returns(df, horizon=1, cost_bps=10.0)
    assert list(out.columns) == ["gross", "net", "turnover"]
    np.testing.assert_allclose(out["gross"], [0.01, 0.02, -0.03, 0.02], atol=1e-12)
    np.testing.assert_allclose(out["turnover"], [1.0, 2.0, 0.0, 2.0])
    np.testing.assert_allclose(out["net"], [0.009, 0.018, -0.03, 0.018], atol=1e-12)
    # a flip costs exactly twice a one-way trade
    flip_cost = out["gross"].iloc[1] - out["net"].iloc[1]
    entry_cost = out["gross"].iloc[0] - out["net"].iloc[0]
    assert flip_cost == pytest.approx(2 * entry_cost)


def test_strategy_returns_threshold() -> None:
    # |yhat| > 0.002 only for row 1 -> positions 0, -1, 0
    df = _panel("A", [0.01, -0.02, 0.03], [0.001, -0.005, 0.0005])
    out = M.strategy_returns(df, horizon=1, cost_bps=0.0, threshold=0.002)
    np.testing.assert_allclose(out["gross"], [0.0, 0.02, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["turnover"], [0.0, 1.0, 1.0])


def test_strategy_returns_non_overlapping_grid() -> None:
    # A: 12 rows, h=5 -> rows 0, 5, 10 ; B: 7 rows -> rows 0, 5.
    # simple return of row i is i/100 so the selected rows show up in the output.
    a = _panel("A", [i / 100 for i in range(12)], [1.0] * 12)
    b = _panel("B", [i / 100 for i in range(7)], [-1.0] * 7)
    df = pd.concat([a, b]).sample(frac=1.0, random_state=1)  # order must not matter
    out = M.strategy_returns(df, horizon=5, cost_bps=0.0)
    days = pd.date_range("2024-01-01", periods=12, freq="D")
    assert list(out.index) == [days[0], days[5], days[10]]
    # t0: A long 0.00, B short 0.00 -> 0 ; t5: A +0.05, B -0.05 -> mean 0 ; t10: A only 0.10
    np.testing.assert_allclose(out["gross"], [0.0, 0.0, 0.10], atol=1e-12)
    # turnover: t0 both enter (1 each) -> mean 1 ; later no change
    np.testing.assert_allclose(out["turnover"], [1.0, 0.0, 0.0])

    # one clock for every symbol: C starts on day 2, so it trades on days 5 and 10 of the panel
    # grid (not on a grid of its own, days 2 and 7)
    c = _panel("C", [0.0] * 8, [1.0] * 8, start=2)
    out2 = M.strategy_returns(pd.concat([a, c]), horizon=5, cost_bps=0.0)
    assert list(out2.index) == [days[i] for i in (0, 5, 10)]
    # offset 2 of the same panel: days 2 and 7 (A and C), 12 is past the end
    out3 = M.strategy_returns(pd.concat([a, c]), horizon=5, cost_bps=0.0, offset=2)
    assert list(out3.index) == [days[2], days[7]]
    np.testing.assert_allclose(out3["gross"], [0.01, 0.035], atol=1e-12)  # mean(A .02, C 0), mean(.07, 0)
    with pytest.raises(ValueError, match="offset"):
        M.strategy_returns(a, horizon=5, cost_bps=0.0, offset=5)


def test_strategy_grid_is_aligned_by_timestamp_when_a_bar_is_missing() -> None:
    """One missing bar of one symbol must not move the other symbol's periods or its own later
    ones. Counting each symbol's own rows (the old grid) put A's periods on days 0, 5, 11 once
    day 3 was gone, off the panel's 0, 5, 10, and traded A on a day B did not."""
    n = 16
    a = _panel("A", [0.01 * (i % 3 - 1) for i in range(n)], [1.0] * n)
    b = _panel("B", [0.02 * ((i + 1) % 3 - 1) for i in range(n)], [-1.0] * n)
    full = M.strategy_returns(pd.concat([a, b]), horizon=5, cost_bps=10.0)
    gap = M.strategy_returns(pd.concat([a.drop(index=3), b]), horizon=5, cost_bps=10.0)
    days = pd.date_range("2024-01-01", periods=n, freq="D")
    assert list(gap.index) == list(full.index) == [days[i] for i in (0, 5, 10, 15)]
    pd.testing.assert_frame_equal(gap, full)  # day 3 is not a grid day: nothing changes
    # a missing grid day: A is out of that period only, B's book and A's later ones stand
    gap2 = M.strategy_returns(pd.concat([a.drop(index=5), b]), horizon=5, cost_bps=0.0)
    assert list(gap2.index) == list(full.index)
    assert gap2["gross"].iloc[1] == pytest.approx(-math.expm1(b["y"].iloc[5]))  # B alone, short
    np.testing.assert_allclose(gap2["gross"].iloc[2:], full["gross"].iloc[2:], atol=1e-15)
    # A re-enters after the gap: one unit of turnover from flat, B none
    assert gap2["turnover"].iloc[2] == pytest.approx(0.5)


def test_strategy_returns_rejects_bad_input() -> None:
    df = _panel("A", [0.01, 0.02], [1.0, 1.0])
    with pytest.raises(ValueError, match="horizon"):
        M.strategy_returns(df, horizon=0, cost_bps=0.0)
    with pytest.raises(ValueError, match="cost_bps"):
        M.strategy_returns(df, horizon=1, cost_bps=-1.0)
    with pytest.raises(ValueError, match="duplicate"):
        M.strategy_returns(pd.concat([df, df]), horizon=1, cost_bps=0.0)
    bad = df.copy()
    bad.loc[0, "y"] = np.nan
    with pytest.raises(ValueError, match="y"):
        M.strategy_returns(bad, horizon=1, cost_bps=0.0)


def test_buy_and_hold() -> None:
    df = pd.concat([_panel("A", [0.01, -0.02], [-1.0, -1.0]), _panel("B", [0.03, 0.0], [0, 0])])
    out = M.buy_and_hold_returns(df, horizon=1)
    # long both regardless of yhat: t0 mean(0.01, 0.03) = 0.02 ; t1 mean(-0.02, 0) = -0.01
    np.testing.assert_allclose(out["gross"], [0.02, -0.01], atol=1e-12)
    np.testing.assert_allclose(out["net"], out["gross"])  # no cost charged


def _ls_frame() -> pd.DataFrame:
    # two timestamps, five symbols, h=1
    # t0 yhat: a .5, b .1, c 0, d -.2, e -.4  -> long a, short e
    # t1 yhat: a -.5, b .6, c 0, d .1, e .2   -> long b, short a
    t = pd.date_range("2024-01-01", periods=2, freq="D")
    yhat = {"a": [0.5, -0.5], "b": [0.1, 0.6], "c": [0.0, 0.0], "d": [-0.2, 0.1], "e": [-0.4, 0.2]}
    simple = {
        "a": [0.04, 0.01],
        "b": [0.00, 0.03],
        "c": [0.5, 0.5],
        "d": [0.5, 0.5],
        "e": [-0.02, 0.5],
    }
    rows = [
        {"symbol": s, "timestamp": t[i], "y": math.log1p(simple[s][i]), "yhat": yhat[s][i]}
        for s in yhat
        for i in range(2)
    ]
    return pd.DataFrame(rows)


def test_long_short_weights_returns_turnover() -> None:
    out = M.long_short_returns(_ls_frame(), horizon=1, cost_bps=10.0, quantile=0.2)
    # k = floor(0.2*5) = 1 name per side, weights +0.5 / -0.5
    # t0: 0.5*0.04 - 0.5*(-0.02) = 0.03 ; turnover from flat = 0.5 + 0.5 = 1
    # t1: 0.5*0.03 - 0.5*0.01 = 0.01 ; turnover a .5->-.5 (1) + b 0->.5 (.5) + e -.5->0 (.5) = 2
    np.testing.assert_allclose(out["gross"], [0.03, 0.01], atol=1e-12)
    np.testing.assert_allclose(out["turnover"], [1.0, 2.0])
    # net = gross - 0.001 * turnover
    np.testing.assert_allclose(out["net"], [0.029, 0.008], atol=1e-12)


def test_long_short_quantile_two_names_per_side() -> None:
    # quantile 0.4 of 5 names -> k = 2 per side, weights +-0.25
    # t0 long a (.04), b (0) ; short d (.5), e (-.02): .25*(.04 + 0) - .25*(.5 - .02) = -0.11
    out = M.long_short_returns(_ls_frame(), horizon=1, cost_bps=0.0, quantile=0.4)
    assert out["gross"].iloc[0] == pytest.approx(-0.11)
    assert out["turnover"].iloc[0] == pytest.approx(1.0)


def _ranked_cross_section(n: int) -> pd.DataFrame:
    """One timestamp, symbol i has yhat = i and simple return i/1000."""
    return pd.DataFrame(
        {
            "symbol": [f"s{i:03d}" for i in range(n)],
            "timestamp": pd.Timestamp("2024-01-01"),
            "y": np.log1p(np.arange(n) / 1000),
            "yhat": np.arange(n, dtype=float),
        }
    )


def test_long_short_names_per_side_rounds_down() -> None:
    # 7 names, quantile 0.2: k = floor(1.4) = 1 -> long s6 (.006) short s0 (0): .5*.006 = .003
    out = M.long_short_returns(_ranked_cross_section(7), horizon=1, cost_bps=0.0, quantile=0.2)
    assert out["gross"].iloc[0] == pytest.approx(0.003)
    # 100 names, quantile 0.29: 0.29*100 = 28.999999999999996 in floats, but k must be 29:
    # long 71..99 (mean 85), short 0..28 (mean 14) -> 0.5 * (0.085 - 0.014) = 0.0355
    # (k = 28 would give long 72..99 mean 85.5, short 0..27 mean 13.5 -> 0.036)
    out = M.long_short_returns(_ranked_cross_section(100), horizon=1, cost_bps=0.0, quantile=0.29)
    assert out["gross"].iloc[0] == pytest.approx(0.0355)
    assert out["turnover"].iloc[0] == pytest.approx(1.0)


def test_long_short_global_grid_and_errors() -> None:
    # four timestamps, h=2 -> grid timestamps 0 and 2
    frames = [_panel(s, [0.01] * 4, [v] * 4) for s, v in (("a", 1.0), ("b", -1.0))]
    out = M.long_short_returns(pd.concat(frames), horizon=2, cost_bps=0.0)
    days = pd.date_range("2024-01-01", periods=4, freq="D")
    assert list(out.index) == [days[0], days[2]]
    np.testing.assert_allclose(out["gross"], [0.0, 0.0], atol=1e-12)  # same return both legs
    np.testing.assert_allclose(out["turnover"], [1.0, 0.0])
    with pytest.raises(ValueError, match="symbol"):
        M.long_short_returns(frames[0], horizon=1, cost_bps=0.0)
    with pytest.raises(ValueError, match="quantile"):
        M.long_short_returns(pd.concat(frames), horizon=1, cost_bps=0.0, quantile=0.6)


def test_trading_metrics_keys_and_values() -> None:
    df = _panel("A", [0.01, -0.02, 0.03, 0.02], [0.3, -0.1, -0.2, 0.5])
    out = M.trading_metrics(df, horizon=1, periods_per_year=252, cost_bps=10.0)
    assert not any(k.startswith("ls_") for k in out)  # one symbol: no long/short block
    # net = [0.009, 0.018, -0.03, 0.018] ; mean = 0.015/4 = 0.00375 -> ann 0.945
    assert out["ann_return"] == pytest.approx(0.00375 * 252)
    # gross = [0.01, 0.02, -0.03, 0.02] ; mean 0.005 -> ann 1.26
    assert out["ann_return_gross"] == pytest.approx(0.005 * 252)
    assert out["turnover"] == pytest.approx((1 + 2 + 0 + 2) / 4)
    assert out["win_rate"] == pytest.approx(3 / 4)
    # equity on net: 1.009, 1.027162, 0.99634714 ... peak 1.027162 -> drawdown 0.03
    assert out["max_drawdown"] == pytest.approx(0.03)
    assert out["sharpe"] < out["sharpe_gross"]

    both = M.trading_metrics(_ls_frame(), horizon=1, periods_per_year=252, cost_bps=10.0)
    for key in ("ls_sharpe", "ls_sharpe_gross", "ls_ann_return", "ls_max_drawdown", "ls_turnover"):
        assert key in both
    assert both["ls_ann_return"] == pytest.approx((0.029 + 0.008) / 2 * 252)
    assert both["ls_turnover"] == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------
# probabilistic / deflated Sharpe
# ---------------------------------------------------------------------------------------------


def test_psr_at_benchmark_is_half() -> None:
    assert M.probabilistic_sharpe_ratio(0.1, 100, skew=-1.0, kurtosis=6.0, benchmark=0.1) == 0.5


def test_psr_hand_value() -> None:
    # SR 0.1, T=101: z = 0.1 * sqrt(100) / sqrt(1 + (3-1)/4 * 0.01) = 1/sqrt(1.005) = 0.99750934
    # Phi(0.99750934) = 0.84074133
    assert M.probabilistic_sharpe_ratio(0.1, 101) == pytest.approx(0.84074133, abs=1e-7)


def test_dsr_paper_example() -> None:
    # Bailey & Lopez de Prado (2014), numerical example: annual SR 2.5 on daily data
    # (250/yr), T=1250, N=100 trials, annualised Var[SR_n] = 0.5, skew -3, kurtosis 10.
    # Per-period: SR = 2.5/sqrt(250) = 0.15811388 ; V = 0.5/250 = 0.002
    # Phi^-1(1 - 1/100) = 2.32634787 ; Phi^-1(1 - 1/(100 e)) = 2.68021044
    # SR0 = sqrt(0.002) * (0.42278434*2.32634787 + 0.57721566*2.68021044) = 0.11317200
    # z = (0.15811388 - 0.11317200) * sqrt(1249) / sqrt(1 + 3*0.15811388 + 9/4*0.025)
    #   = 0.04494188 * 35.3411941 / 1.23706 = 1.2838160 ; Phi(z) = 0.90039683 (paper: 0.9004)
    dsr = M.deflated_sharpe_ratio(
        2.5 / math.sqrt(250), n_trials=100, n_obs=1250, skew=-3.0, kurtosis=10.0,
        sharpe_trials_var=0.5 / 250,
    )
    assert dsr == pytest.approx(0.90039683, abs=1e-6)
    assert M.expected_max_sharpe(100, 0.5 / 250) == pytest.approx(0.11317200, abs=1e-7)


def test_dsr_monotone_in_trials_and_single_trial() -> None:
    vals = [M.deflated_sharpe_ratio(0.1, n, n_obs=500, sharpe_trials_var=1 / 499) for n in (1, 2, 10, 100, 1000)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))
    # one trial: no selection bias, SR0 = 0 -> DSR == PSR against 0
    assert vals[0] == pytest.approx(M.probabilistic_sharpe_ratio(0.1, 500))
    with pytest.raises(ValueError, match="n_trials"):
        M.deflated_sharpe_ratio(0.1, 0, n_obs=500, sharpe_trials_var=1 / 499)
    with pytest.raises(ValueError, match="n_obs"):
        M.probabilistic_sharpe_ratio(0.1, 1)


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------


def test_interval_coverage() -> None:
    # yhat 0, std 1 -> |z| = 0.5, 1.2, 1.8, 3.0, 0.0
    y = np.array([0.5, -1.2, 1.8, -3.0, 0.0])
    out = M.interval_coverage(y, np.zeros(5), np.ones(5))
    assert out["cover_1.00"] == pytest.approx(2 / 5)  # 0.5, 0.0
    assert out["cover_1.645"] == pytest.approx(3 / 5)  # + 1.2
    assert out["cover_1.96"] == pytest.approx(4 / 5)  # + 1.8
    # nominal 2*Phi(k) - 1
    assert out["nominal_1.00"] == pytest.approx(0.68268949, abs=1e-8)
    assert out["nominal_1.645"] == pytest.approx(0.90003019, abs=1e-8)
    assert out["nominal_1.96"] == pytest.approx(0.95000421, abs=1e-8)
    with pytest.raises(ValueError, match="yhat_std"):
        M.interval_coverage(y, np.zeros(5), -np.ones(5))


def test_reliability_and_brier() -> None:
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.99, 1.0])
    y = np.array([-1.0, 1.0, -1.0, 1.0, 1.0, -1.0])
    rel = M.reliability(y, p, bins=10)
    assert len(rel) == 10
    assert list(rel["count"]) == [1, 2, 0, 0, 0, 0, 0, 0, 0, 3]
    # bin 1: mean(0.15, 0.12) = 0.135, observed 1 of 2 ; bin 9 (p=1.0 included): .98, 2/3
    assert rel.loc[1, "mean_pred"] == pytest.approx(0.135)
    assert rel.loc[1, "obs_freq"] == pytest.approx(0.5)
    assert rel.loc[9, "mean_pred"] == pytest.approx(0.98)
    assert rel.loc[9, "obs_freq"] == pytest.approx(2 / 3)
    assert math.isnan(rel.loc[4, "mean_pred"])
    # Brier: up = [1,0,0,1] (y == 0 is not up) ; sq err .04 .09 .25 .16 -> 0.54/4 = 0.135
    assert M.brier_score(np.array([1.0, -1.0, 0.0, 2.0]), np.array([0.8, 0.3, 0.5, 0.6])) == (
        pytest.approx(0.135)
    )
    with pytest.raises(ValueError, match="prob_up"):
        M.brier_score(np.array([1.0]), np.array([1.2]))


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------


def test_classification_hand_example() -> None:
    y_true = np.array([-1, -1, 0, 0, 1, 1, 1])
    y_pred = np.array([-1, 0, 0, 0, 1, -1, 1])
    out = M.classification_metrics(y_true, y_pred)
    # rows = true (-1, 0, 1), cols = predicted
    assert out["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert out["accuracy"] == pytest.approx(5 / 7)
    # F1 = 2tp / (2tp + fp + fn): short 2/(2+1+1) = .5 ; neutral 4/(4+1+0) = .8 ; long 4/(4+0+1)
    assert out["f1_short"] == pytest.approx(0.5)
    assert out["f1_neutral"] == pytest.approx(0.8)
    assert out["f1_long"] == pytest.approx(0.8)
    assert out["macro_f1"] == pytest.approx(0.7)
    assert math.isnan(out["log_loss"]) and math.isnan(out["roc_auc"])


def test_classification_proba_hand_example() -> None:
    y_true = np.array([-1, -1, 0, 0, 1, 1])
    proba = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.4, 0.4, 0.2],
            [0.3, 0.5, 0.2],
            [0.5, 0.2, 0.3],
            [0.1, 0.2, 0.7],
            [0.2, 0.5, 0.3],
        ]
    )
    out = M.classification_metrics(y_true, np.array([-1, -1, 0, -1, 1, 0]), proba=proba)
    # true-class probs .6 .4 .5 .2 .7 .3 ; -ln(product = 0.00504)/6 = 0.88172487
    assert out["log_loss"] == pytest.approx(0.88172487, abs=1e-8)
    # one-vs-rest AUC by pair counting (ties count 1/2):
    #  SHORT: pos .6,.4 vs neg .3,.5,.1,.2 -> 4 + 3 = 7/8
    #  NEUTRAL: pos .5,.2 vs neg .3,.4,.2,.5 -> (3 + .5) + (.5) = 4/8
    #  LONG: pos .7,.3 vs neg .1,.2,.2,.3 -> 4 + 3.5 = 7.5/8
    expected = (7 / 8 + 4 / 8 + 7.5 / 8) / 3  # 0.77083333
    assert out["roc_auc"] == pytest.approx(expected)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr"))
    # a class missing from y_true -> AUC undefined -> NaN
    part = M.classification_metrics(y_true[:4], y_true[:4], proba=proba[:4])
    assert math.isnan(part["roc_auc"])
    assert math.isnan(part["f1_long"])  # absent in both truth and prediction
    assert part["macro_f1"] == pytest.approx(1.0)  # mean over the two classes present


def test_classification_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="y_true"):
        M.classification_metrics(np.array([2, 0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="proba"):
        M.classification_metrics(np.array([1, 0]), np.array([1, 0]), proba=np.ones((2, 3)))


def test_long_short_is_flat_on_a_constant_cross_section():
    # Constant forecasts rank nothing: no positions, no cost, zero return every period.
    df = pd.DataFrame({
        "symbol": ["A", "B", "C", "D"] * 3,
        "timestamp": np.repeat(pd.date_range("2024-01-01", periods=3), 4),
        "y": [0.01, -0.02, 0.03, 0.00] * 3,
        "yhat": [0.5] * 12,
    })
    book = M.long_short_returns(df, horizon=1, cost_bps=10.0, quantile=0.25)
    assert (book["gross"] == 0).all() and (book["turnover"] == 0).all() and (book["net"] == 0).all()


def test_long_short_tied_names_share_the_slots() -> None:
    """Four names tied for the last long slot share it: 1/4 of the slot each, whatever their
    names. The old tie-break gave the whole slot to the first name alphabetically, so renaming
    symbols changed the book."""
    t = pd.Timestamp("2024-01-01")
    yhat = {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1, "e": 0.5, "f": -0.3, "g": -0.4, "h": -0.5}
    simple = {"a": 0.04, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.01, "f": 0.0, "g": 0.0, "h": -0.02}
    df = pd.DataFrame([{"symbol": s, "timestamp": t, "y": math.log1p(simple[s]), "yhat": v}
                       for s, v in yhat.items()])
    # k = floor(0.25 * 8) = 2 per side: long e (0.25) and a..d (0.25 / 4 each); short h, g
    out = M.long_short_returns(df, horizon=1, cost_bps=0.0, quantile=0.25)
    assert out["gross"].iloc[0] == pytest.approx(0.25 * 0.01 + 0.0625 * 0.04 + 0.25 * 0.02)
    assert out["turnover"].iloc[0] == pytest.approx(1.0)  # 0.5 per side, as with no tie
    # the names do not matter: the tied winner renamed to sort last gives the same book
    renamed = df.assign(symbol=df["symbol"].replace({"a": "z"}))
    assert M.long_short_returns(renamed, horizon=1, cost_bps=0.0, quantile=0.25)["gross"].iloc[0] == \
        pytest.approx(out["gross"].iloc[0])


def test_trading_metrics_average_over_every_grid_offset() -> None:
    """At h > 1 every figure is the mean over the h start offsets, not the figure of offset 0.
    A panel whose returns on offset-0 days are all good and elsewhere bad shows it."""
    n, h = 60, 3
    simple = [0.02 if i % h == 0 else -0.01 for i in range(n)]
    df = pd.concat([_panel("A", simple, [1.0] * n), _panel("B", [-r for r in simple], [-1.0] * n)])
    out = M.trading_metrics(df, horizon=h, periods_per_year=252, cost_bps=0.0)
    per_offset = [M.performance_summary(M.strategy_returns(df, h, 0.0, offset=o)["net"], 252, h)
                  for o in range(h)]
    assert out["ann_return"] == pytest.approx(np.mean([p["ann_return"] for p in per_offset]))
    # offset 0 alone (the old figure) makes +2 % every period; offsets 1 and 2 lose 1 %
    assert per_offset[0]["ann_return"] == pytest.approx(0.02 * 252 / h)
    assert out["ann_return"] == pytest.approx((0.02 - 0.01 - 0.01) / 3 * 252 / h)
    assert out["n_offsets"] == h and out["n_periods"] == n // h
    noisy = df.assign(y=df["y"] + np.random.default_rng(0).normal(0, 0.01, len(df)))
    out = M.trading_metrics(noisy, horizon=h, periods_per_year=252, cost_bps=5.0)
    sharpes = [M.sharpe_ratio(M.strategy_returns(noisy, h, 5.0, offset=o)["net"], 252, h) for o in range(h)]
    assert out["sharpe"] == pytest.approx(np.mean(sharpes))
    assert out["sharpe_offset_min"] == pytest.approx(min(sharpes))
    assert out["sharpe_offset_min"] < out["sharpe"] < out["sharpe_offset_max"]
    assert out["sharpe_per_period"] == pytest.approx(np.mean(sharpes) / math.sqrt(252 / h))
    ls = [M.sharpe_ratio(M.long_short_returns(noisy, h, 5.0, 0.5, offset=o)["net"], 252, h) for o in range(h)]
    assert M.trading_metrics(noisy, h, 252, 5.0, quantile=0.5)["ls_sharpe"] == pytest.approx(np.mean(ls))


def test_newey_west_se_hand_value_and_overlap() -> None:
    # x = [1, 2, 3, 4]: mean 2.5, d = [-1.5, -.5, .5, 1.5]; g0 = 5/4, g1 = (.75 - .25 + .75)/4 = 1.25/4
    # lag 1: lrv = 1.25 + 2 * (1 - 1/2) * 0.3125 = 1.5625 ; SE = sqrt(1.5625 / 4) = 0.625
    assert M.newey_west_se([1.0, 2.0, 3.0, 4.0], 1) == pytest.approx(0.625)
    assert M.newey_west_se([1.0, 2.0, 3.0, 4.0], 0) == pytest.approx(np.std([1, 2, 3, 4]) / 2)
    assert math.isnan(M.newey_west_se([1.0], 3))
    with pytest.raises(ValueError, match="lag"):
        M.newey_west_se([1.0, 2.0], -1)
    # sums of h consecutive shocks (what overlapping h-bar labels are): lag h - 1 gets the spread
    # of the mean across samples; the i.i.d. formula (lag 0) is sqrt(h) too small
    rng = np.random.default_rng(0)
    h, T = 5, 500
    means, nw, iid = [], [], []
    for _ in range(300):
        x = np.convolve(rng.standard_normal(T + h - 1), np.ones(h), mode="valid")
        means.append(x.mean())
        nw.append(M.newey_west_se(x, h - 1))
        iid.append(M.newey_west_se(x, 0))
    assert np.median(nw) == pytest.approx(np.std(means), rel=0.2)
    assert np.median(iid) < 0.6 * np.std(means)


def test_cross_sectional_ic_error_bars_and_annualised_ir() -> None:
    out = M.cross_sectional_ic(_cs_frame(), min_symbols=3, horizon=1, periods_per_year=252)
    ics = np.array([1.0, -1.0, 1 / math.sqrt(2 * 438 / 9)])
    assert out["ic_se"] == pytest.approx(np.std(ics) / math.sqrt(3))  # lag 0 at h = 1
    assert out["ic_t"] == pytest.approx(ics.mean() / out["ic_se"])
    assert out["icir_ann"] == pytest.approx(out["icir"] * math.sqrt(252))
    h5 = M.cross_sectional_ic(_cs_frame(), min_symbols=3, horizon=5, periods_per_year=252)
    assert h5["ic_se"] == pytest.approx(M.newey_west_se(ics, 4))
    assert h5["icir_ann"] == pytest.approx(out["icir"] * math.sqrt(252 / 5))
    assert "icir_ann" not in M.cross_sectional_ic(_cs_frame())


def test_dsr_needs_the_observed_spread_of_the_trials() -> None:
    """Candidates that share a signal spread far less than noise: the noise variance
    1/(T-1) overstates the expected maximum and deflates a real edge away."""
    n_obs, sr = 500, 0.12
    noise = M.deflated_sharpe_ratio(sr, 10, n_obs, sharpe_trials_var=1 / (n_obs - 1))
    observed = M.deflated_sharpe_ratio(sr, 10, n_obs, sharpe_trials_var=0.0004)
    assert observed > 0.95 > noise
    with pytest.raises(TypeError):
        M.deflated_sharpe_ratio(sr, 10, n_obs)  # no hidden default for the spread
