"""Test-period evaluation: every model, the ensemble and naive baselines scored on the same rows.

Only the test segment is scored: no model trained or early-stopped on it, and the meta-learner
was fit on val. For each horizon the scored rows are the labelled test rows that every model
forecast, so figures in one table are comparable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alphafactory import metrics

KEYS = ["symbol", "timestamp"]
BASELINES = ("zero", "train_mean", "momentum", "buy_and_hold")


@dataclass(frozen=True)
class EvaluateConfig:
    cost_bps: float = 5.0  # one-way trading cost, basis points
    threshold: float = 0.0  # |yhat| needed before the sign strategy trades
    ls_quantile: float = 0.25  # share of names per side of the cross-sectional long/short book
    min_symbols_cs: int = 3  # symbols needed at a timestamp for per-timestamp IC

    def validate(self) -> None:
        if self.cost_bps < 0:
            raise ValueError(f"evaluate.cost_bps: got {self.cost_bps}, expected >= 0")
        if not 0 < self.ls_quantile <= 0.5:
            raise ValueError(f"evaluate.ls_quantile: got {self.ls_quantile}, expected in (0, 0.5]")


def baseline_forecasts(bars: pd.DataFrame, labels: pd.DataFrame, segments: pd.DataFrame,
                       horizons: tuple[int, ...]) -> pd.DataFrame:
    """Naive forecasts for the test rows, long format (symbol, timestamp, model, horizon, yhat).

    zero: no move. train_mean: the mean target over train rows. momentum: the sign of the last
    h-bar log return (known at t) times the mean absolute train target. buy_and_hold: always
    long (a constant positive forecast)."""
    lab = labels.merge(segments, on=KEYS, validate="1:1")
    logc = np.log(bars["close"].to_numpy())
    codes = pd.factorize(bars["symbol"])[0]
    test = lab["segment"].to_numpy() == "test"
    frames = []
    for h in horizons:
        y = lab[f"y_h{h}"].to_numpy()
        train_y = y[(lab["segment"].to_numpy() == "train") & ~np.isnan(y)]
        scale = float(np.mean(np.abs(train_y)))
        past = np.full(len(logc), np.nan)
        past[h:] = logc[h:] - logc[:-h]
        past[h:][codes[h:] != codes[:-h]] = np.nan
        # labels and bars are both one row per bar sorted by (symbol, timestamp)
        mom = np.sign(np.nan_to_num(past)) * scale
        values = {"zero": np.zeros(len(y)), "train_mean": np.full(len(y), float(train_y.mean())),
                  "momentum": mom, "buy_and_hold": np.full(len(y), scale)}
        for name, v in values.items():
            frames.append(pd.DataFrame({"symbol": lab["symbol"].to_numpy()[test],
                                        "timestamp": lab["timestamp"].to_numpy()[test],
                                        "model": name, "horizon": h, "yhat": v[test]}))
    return pd.concat(frames, ignore_index=True)


def scored_rows(preds: pd.DataFrame, labels: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Wide table for one horizon: symbol, timestamp, y (target), ret (raw log return) and one
    column per model, restricted to labelled rows every model forecast."""
    p = preds[preds["horizon"] == horizon]
    w = p.pivot(index=KEYS, columns="model", values="yhat")
    lab = labels.set_index(KEYS)[[f"y_h{horizon}", f"ret_h{horizon}"]].rename(
        columns={f"y_h{horizon}": "y", f"ret_h{horizon}": "ret"})
    w = w.join(lab, how="inner").dropna()
    return w.reset_index().sort_values(KEYS, kind="stable").reset_index(drop=True)


def score(table: pd.DataFrame, model: str, horizon: int, periods_per_year: float,
          cfg: EvaluateConfig) -> dict[str, float]:
    """All test figures of one model at one horizon."""
    out = metrics.regression_metrics(table["y"].to_numpy(), table[model].to_numpy())
    trade = table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[model])
    out.update(metrics.trading_metrics(trade, horizon, periods_per_year, cfg.cost_bps,
                                       threshold=cfg.threshold, quantile=cfg.ls_quantile))
    if table["symbol"].nunique() >= cfg.min_symbols_cs:
        cs = metrics.cross_sectional_ic(table[["timestamp"]].assign(y=table["y"], yhat=table[model]),
                                        min_symbols=cfg.min_symbols_cs)
        out.update({f"cs_{k}": v for k, v in cs.items()})
    return out


def evaluate(preds: pd.DataFrame, labels: pd.DataFrame, periods_per_year: float, cfg: EvaluateConfig,
             oracle: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame, dict[str, pd.DataFrame]]:
    """Score every model of ``preds`` (test rows, long format, baselines included).

    Returns (metrics {model: {"h<k>": {metric: value}}}, long predictions with y, plot tables).
    With an oracle (synthetic data), also {"oracle": ...} figures on the same rows and each
    model's ``oracle_share`` = its IC / the oracle's IC."""
    horizons = sorted(preds["horizon"].unique())
    models = list(dict.fromkeys(preds["model"]))
    result: dict = {m: {} for m in models}
    long_frames, plots = [], {}
    if oracle is not None and len(oracle):
        preds = pd.concat([preds, oracle.assign(model="oracle")[preds.columns]], ignore_index=True)
        result["oracle"] = {}
    for h in horizons:
        table = scored_rows(preds, labels, h)
        if table.empty:
            raise ValueError(f"evaluate: no labelled test rows that every model forecast at horizon {h}")
        for m in result:
            result[m][f"h{h}"] = score(table, m, h, periods_per_year, cfg)
        if "oracle" in result:
            oic = result["oracle"][f"h{h}"]["ic"]
            for m in models:
                result[m][f"h{h}"]["oracle_share"] = float(result[m][f"h{h}"]["ic"] / oic) if oic else float("nan")
        for m in models:
            long_frames.append(pd.DataFrame({"symbol": table["symbol"], "timestamp": table["timestamp"],
                                             "horizon": h, "model": m, "yhat": table[m], "y": table["y"]}))
        if h == horizons[0]:
            plots.update(plot_tables(table, models, h, cfg))
    return result, pd.concat(long_frames, ignore_index=True), plots


def plot_tables(table: pd.DataFrame, models: list[str], horizon: int, cfg: EvaluateConfig) -> dict[str, pd.DataFrame]:
    """Data behind the DVC plots for the shortest horizon."""
    curves = {}
    for m in models:
        book = metrics.strategy_returns(table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[m]),
                                        horizon, cfg.cost_bps, cfg.threshold)
        curves[m] = np.cumprod(1.0 + book["net"].to_numpy()) - 1.0
        index = book.index
    cum = pd.DataFrame(curves, index=index).rename_axis("timestamp").reset_index()
    cum["timestamp"] = cum["timestamp"].dt.strftime("%Y-%m-%d %H:%M")
    focus = "ensemble" if "ensemble" in models else models[0]
    scatter = pd.DataFrame({"predicted": table[focus], "realised": table["y"]})
    return {"cumulative_return.csv": cum, "predicted_vs_realised.csv": scatter}
