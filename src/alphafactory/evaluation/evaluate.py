"""Test-period evaluation: every model, the ensemble and naive baselines scored on the same rows.

Only the test segment is scored: no model trained or early-stopped on it, and the meta-learner
was fit on val. For each horizon the scored rows are the labelled test rows that every model
forecast, so figures in one table are comparable.

Classification task (forecasts carry ``p_short, p_neutral, p_long``): each model that has class
probabilities also gets accuracy, macro and per-class F1, log loss and one-vs-rest ROC AUC
against the label stage's SHORT/NEUTRAL/LONG class on the same rows, and the confusion-matrix
plot shows its predicted (most probable) class against the true one. Under regression that plot
shows the direction (sign) of the forecast against the direction of the realised return.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd

from alphafactory.config import Interval
from alphafactory.evaluation import metrics
from alphafactory.labels import KEYS, PROBA_COLUMNS

BASELINES = ("zero", "train_mean", "momentum", "buy_and_hold")


@dataclass(frozen=True)
class EvaluateConfig:
    cost_bps: Annotated[float, Interval(ge=0)] = 5.0  # one-way trading cost, basis points
    threshold: Annotated[float, Interval(ge=0)] = 0.0  # |yhat| needed before the sign strategy trades
    # share of names per side of the cross-sectional long/short book
    ls_quantile: Annotated[float, Interval(gt=0, le=0.5)] = 0.25
    min_symbols_cs: Annotated[int, Interval(ge=2)] = 3  # symbols needed at a timestamp for per-timestamp IC
    ic_window: Annotated[int, Interval(ge=2)] = 63  # bars (timestamps) per window of the rolling-IC plot


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
    out["ic_se"] = metrics.ic_standard_error(table[["timestamp", "y"]].assign(yhat=table[model]), horizon)
    trade = table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[model])
    out.update(metrics.trading_metrics(trade, horizon, periods_per_year, cfg.cost_bps,
                                       threshold=cfg.threshold, quantile=cfg.ls_quantile))
    if table["symbol"].nunique() >= cfg.min_symbols_cs:
        cs = metrics.cross_sectional_ic(table[["timestamp"]].assign(y=table["y"], yhat=table[model]),
                                        min_symbols=cfg.min_symbols_cs)
        out.update({f"cs_{k}": v for k, v in cs.items()})
    return out


def calibration_scores(preds: pd.DataFrame, table: pd.DataFrame, model: str, horizon: int) -> dict[str, float]:
    """Coverage of yhat ± k·yhat_std and the Brier score of prob_up on the scored rows, for
    models that carry uncertainty (baselines do not)."""
    if "yhat_std" not in preds.columns:
        return {}
    p = preds[(preds["model"] == model) & (preds["horizon"] == horizon)]
    p = table[KEYS + ["y"]].merge(p[KEYS + ["yhat", "yhat_std", "prob_up"]], on=KEYS, how="inner")
    if p.empty or p["yhat_std"].isna().any():
        return {}
    cover = metrics.interval_coverage(p["y"].to_numpy(), p["yhat"].to_numpy(), p["yhat_std"].to_numpy())
    out = {k: v for k, v in cover.items() if k.startswith("cover_")}
    out["brier"] = metrics.brier_score(p["y"].to_numpy(), p["prob_up"].to_numpy())
    return out


def classification_scores(preds: pd.DataFrame, labels: pd.DataFrame, table: pd.DataFrame, model: str,
                          horizon: int) -> dict[str, float]:
    """Classification metrics of ``model`` on the scored rows, for models with class
    probabilities (``{}`` otherwise). The confusion matrix is left to the plot."""
    p = class_rows(preds, labels, table, model, horizon)
    if p is None:
        return {}
    proba = p[list(PROBA_COLUMNS)].to_numpy()
    out = metrics.classification_metrics(p["cls"].to_numpy(), proba.argmax(1) - 1, proba)
    return {k: v for k, v in out.items() if k not in ("confusion", "n")}


def class_rows(preds: pd.DataFrame, labels: pd.DataFrame, table: pd.DataFrame, model: str,
               horizon: int) -> pd.DataFrame | None:
    """Scored rows of ``model`` with its class probabilities and the true class ``cls``
    (-1/0/1), or None when the model has no class probabilities."""
    if not all(c in preds.columns for c in PROBA_COLUMNS):
        return None
    p = preds[(preds["model"] == model) & (preds["horizon"] == horizon)]
    p = table[KEYS].merge(p[KEYS + list(PROBA_COLUMNS)], on=KEYS, how="inner")
    if p.empty or p[list(PROBA_COLUMNS)].isna().any().any():
        return None
    cls = labels.set_index(KEYS)[f"cls_h{horizon}"]
    p["cls"] = cls.reindex(pd.MultiIndex.from_frame(p[KEYS])).to_numpy()
    return p.dropna(subset=["cls"])


def confusion_table(preds: pd.DataFrame, labels: pd.DataFrame, table: pd.DataFrame, models: list[str],
                    horizon: int) -> dict[str, pd.DataFrame]:
    """``confusion.csv`` (one row per scored row: actual, predicted) for DVC's confusion template.

    Classification: the ensemble's (else the first classifier's) most probable class against the
    true SHORT/NEUTRAL/LONG class. Regression: the ensemble's (else the first model's) direction,
    up/down/flat, against the direction of the realised return."""
    names = {-1: "SHORT", 0: "NEUTRAL", 1: "LONG"}
    with_proba = [m for m in models if class_rows(preds, labels, table, m, horizon) is not None]
    if with_proba:
        focus = "ensemble" if "ensemble" in with_proba else with_proba[0]
        p = class_rows(preds, labels, table, focus, horizon)
        actual = p["cls"].astype(int).map(names)
        predicted = pd.Series(p[list(PROBA_COLUMNS)].to_numpy().argmax(1) - 1).map(names)
    else:
        focus = "ensemble" if "ensemble" in models else models[0]
        direction = {-1.0: "down", 0.0: "flat", 1.0: "up"}
        actual = pd.Series(np.sign(table["y"].to_numpy())).map(direction)
        predicted = pd.Series(np.sign(table[focus].to_numpy())).map(direction)
    return {"confusion.csv": pd.DataFrame({"actual": actual.to_numpy(), "predicted": predicted.to_numpy(),
                                           "model": focus})}


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` returns: ``metrics`` {model: {"h<k>": {metric: value}}} plus
    ``_selection`` (shortest horizon), the long predictions with ``y``, the plot tables by file
    name, and ``select_best``'s result at every horizon."""
    metrics: dict
    predictions: pd.DataFrame
    plots: dict[str, pd.DataFrame]
    selections: dict[int, dict]


def evaluate(preds: pd.DataFrame, labels: pd.DataFrame, periods_per_year: float, cfg: EvaluateConfig,
             oracle: pd.DataFrame | None = None, ensembles: tuple[str, ...] = (), extra_trials: int = 0) -> Evaluation:
    """Score every model of ``preds`` (test rows, long format, baselines included); ``ensembles``
    names the models of ``preds`` that are blends of the others (the blend stage's).

    With an oracle (synthetic data), the metrics also hold {"oracle": ...} figures on the same
    rows and each model's ``oracle_share`` = its IC / the oracle's IC. ``_models`` (not a model)
    lists the ``ensembles``, ``base`` models and ``baselines`` scored. ``extra_trials``: strategies
    tried besides the candidates (the tune stage's trials), counted in the deflated Sharpe ratio."""
    horizons = sorted(preds["horizon"].unique())
    models = list(dict.fromkeys(preds["model"]))
    result: dict = {m: {} for m in models}
    long_frames, plots, selections = [], {}, {}
    if oracle is not None and len(oracle):
        preds = pd.concat([preds, oracle.assign(model="oracle").reindex(columns=preds.columns)], ignore_index=True)
        result["oracle"] = {}
    for h in horizons:
        table = scored_rows(preds, labels, h)
        if table.empty:
            raise ValueError(f"evaluate: no labelled test rows that every model forecast at horizon {h}")
        for m in result:
            result[m][f"h{h}"] = score(table, m, h, periods_per_year, cfg)
            result[m][f"h{h}"].update(calibration_scores(preds, table, m, h))
            result[m][f"h{h}"].update(classification_scores(preds, labels, table, m, h))
        if "oracle" in result:
            oic = result["oracle"][f"h{h}"]["ic"]
            for m in models:
                result[m][f"h{h}"]["oracle_share"] = float(result[m][f"h{h}"]["ic"] / oic) if oic else float("nan")
        for m in models:
            long_frames.append(pd.DataFrame({"symbol": table["symbol"], "timestamp": table["timestamp"],
                                             "horizon": h, "model": m, "yhat": table[m], "y": table["y"]}))
        if h == horizons[0]:
            plots.update(plot_tables(table, models, h, cfg))
            plots.update(calibration_table(preds, table, models, h))
            plots.update(confusion_table(preds, labels, table, models, h))
        selections[int(h)] = select_best(table, result, models, h, periods_per_year, cfg, extra_trials)
    result["_selection"] = selections[int(horizons[0])]  # not a model: see select_best
    result["_models"] = model_roles(models, ensembles)
    return Evaluation(result, pd.concat(long_frames, ignore_index=True), plots, selections)


def plot_tables(table: pd.DataFrame, models: list[str], horizon: int, cfg: EvaluateConfig) -> dict[str, pd.DataFrame]:
    """Data behind the DVC plots for the shortest horizon. The two time series are long tables,
    ``timestamp, model, kind, <value>`` (kind: ``baseline`` or ``model``), so a plot colours
    whatever models were configured without naming them; timestamps are ISO 8601 strings, which
    Vega-Lite parses on a temporal axis."""
    cum, roll = [], []
    for m in models:
        kind = "baseline" if m in BASELINES else "model"
        book = metrics.strategy_returns(table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[m]),
                                        horizon, cfg.cost_bps, cfg.threshold)
        cum.append(pd.DataFrame({"timestamp": book.index, "model": m, "kind": kind,
                                 "cumulative_return": np.cumprod(1.0 + book["net"].to_numpy()) - 1.0}))
        # constant forecasts (zero, train_mean, buy_and_hold) have no IC; rows before the first full window neither
        ic = metrics.rolling_ic(table[["timestamp"]].assign(y=table["y"], yhat=table[m]), cfg.ic_window).dropna()
        roll.append(pd.DataFrame({"timestamp": ic.index, "model": m, "kind": kind, "rolling_ic": ic.to_numpy()}))
    cum, roll = (pd.concat(frames, ignore_index=True) for frames in (cum, roll))
    for frame in (cum, roll):
        frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    focus = "ensemble" if "ensemble" in models else models[0]
    scatter = pd.DataFrame({"predicted": table[focus], "realised": table["y"]})
    return {"cumulative_return.csv": cum, "predicted_vs_realised.csv": scatter, "rolling_ic.csv": roll}


def calibration_table(preds: pd.DataFrame, table: pd.DataFrame, models: list[str], horizon: int) -> dict[str, pd.DataFrame]:
    """Reliability of the ensemble's (else the first model's) ``prob_up`` on the scored rows, in
    10 equal-count bins (equal-width bins would put nearly every row in the two bins around 0.5):
    ``{"calibration.csv": bin, mean_pred, obs_freq, count}``, or ``{}`` when the forecasts carry
    no ``prob_up``. ``obs_freq`` is the share of rows with ``y > 0``."""
    if "prob_up" not in preds.columns:
        return {}
    focus = "ensemble" if "ensemble" in models else models[0]
    p = preds[(preds["model"] == focus) & (preds["horizon"] == horizon)]
    p = table[KEYS + ["y"]].merge(p[KEYS + ["prob_up"]], on=KEYS, how="inner")
    if p.empty or p["prob_up"].isna().any():
        return {}
    bins = pd.qcut(p["prob_up"].rank(method="first"), min(10, len(p)), labels=False)  # ties split by order
    rel = (pd.DataFrame({"bin": bins, "mean_pred": p["prob_up"], "obs_freq": (p["y"] > 0).astype(float)})
           .groupby("bin", sort=True).agg(mean_pred=("mean_pred", "mean"), obs_freq=("obs_freq", "mean"),
                                          count=("obs_freq", "size")).reset_index())
    return {"calibration.csv": rel}


def select_best(table: pd.DataFrame, result: dict, models: list[str], horizon: int,
                periods_per_year: float, cfg: EvaluateConfig, extra_trials: int = 0) -> dict:
    """The model with the highest net Sharpe at ``horizon`` and its deflated Sharpe ratio.

    Candidates are every scored model except the baselines (base models and ensembles), so
    ``n_trials`` is their number plus ``extra_trials`` (every tuning trial beyond the one each
    tuned model enters as, ``tuning_trials`` in the output). The DSR (Bailey & Lopez de Prado 2014) is the probability that
    the winner's true Sharpe ratio beats the best of ``n_trials`` skill-less strategies, from the
    per-period Sharpe, skew and raw kurtosis of its net returns (non-overlapping h-bar periods);
    the trials' Sharpe variance is the noise-only ``1 / (n_periods - 1)``. Written to
    ``metrics/test.json`` under ``_selection`` (not a model)."""
    from scipy.stats import kurtosis, skew

    candidates = [m for m in models if m not in BASELINES]
    n_trials = len(candidates) + extra_trials  # strategies tried: the candidates and the tuning trials
    out: dict = {"horizon": int(horizon), "criterion": "sharpe", "n_trials": n_trials, "tuning_trials": extra_trials,
                 "candidates": candidates, "baselines": [m for m in models if m in BASELINES],
                 "best_model": None, "sharpe": float("nan"), "sharpe_per_period": float("nan"),
                 "n_periods": 0, "skew": float("nan"), "kurtosis": float("nan"),
                 "expected_max_sharpe": float("nan"), "psr": float("nan"), "dsr": float("nan")}
    scored = {m: result[m][f"h{horizon}"]["sharpe"] for m in candidates}
    scored = {m: s for m, s in scored.items() if s is not None and np.isfinite(s)}
    if not scored:
        return out
    best = max(scored, key=scored.get)  # first of equals, in model order
    book = metrics.strategy_returns(table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[best]),
                                    horizon, cfg.cost_bps, cfg.threshold)
    r = book["net"].to_numpy()
    out.update(best_model=best, sharpe=float(scored[best]), n_periods=int(len(r)))
    if len(r) < 3:
        return out
    sr = float(r.mean() / r.std(ddof=1))
    sk, ku = float(skew(r)), float(kurtosis(r, fisher=False))
    out.update(sharpe_per_period=sr, skew=sk, kurtosis=ku,
               expected_max_sharpe=metrics.expected_max_sharpe(n_trials, 1.0 / (len(r) - 1)),
               psr=metrics.probabilistic_sharpe_ratio(sr, len(r), sk, ku),
               dsr=metrics.deflated_sharpe_ratio(sr, n_trials, len(r), sk, ku))
    return out


# Figures of metrics/headline.json, under their short names there: what a reviewer decides on.
HEADLINE = {"ic": "ic", "ic_se": "ic_se", "rank_ic": "rank_ic", "cs_ic": "cs_ic_mean", "sharpe": "sharpe",
            "max_dd": "max_drawdown", "oracle_share": "oracle_share"}


def _sig(value: Any, digits: int = 4) -> Any:
    """``value`` rounded to ``digits`` significant digits (None when undefined); non-floats as is."""
    if isinstance(value, bool) or not isinstance(value, float | int | np.floating):
        return value
    return float(f"{value:.{digits}g}") if np.isfinite(value) else None


def _best(result: dict, names: list[str], key: str, metric: str) -> str | None:
    """The model of ``names`` with the highest finite ``metric`` at horizon ``key`` (first of equals)."""
    scored = {m: result[m][key].get(metric) for m in names}
    scored = {m: v for m, v in scored.items() if v is not None and np.isfinite(v)}
    return max(scored, key=scored.get) if scored else None


def model_roles(models: list[str], ensembles: tuple[str, ...] | list[str] = ()) -> dict[str, list[str]]:
    """Split scored model names, in their order, into ``ensembles``, ``base`` models and ``baselines``."""
    roles: dict[str, list[str]] = {"ensembles": [], "base": [], "baselines": []}
    for m in models:
        if m == "oracle" or m.startswith("_"):
            continue
        roles["baselines" if m in BASELINES else "ensembles" if m in ensembles else "base"].append(m)
    return roles


def headline(ev: Evaluation) -> dict:
    """``metrics/headline.json``: per horizon, a few figures for the review loop.

    ``h<k>``: the ensemble's (the first ensemble, else the best base model) IC, its
    block-bootstrap SE, rank IC, cross-sectional IC (3+ symbols), net Sharpe, max drawdown and,
    on synthetic data, its share of the oracle's IC; ``selection``: the model with the best net
    Sharpe among all candidates, its deflated Sharpe ratio and its probabilistic Sharpe ratio
    (P(true Sharpe > 0)); ``best``: the base model with the highest test IC (a choice made on the
    test period: read it with the DSR); ``baseline``: the best naive baseline's IC and Sharpe
    (each with its name). Figures are rounded to 4 significant
    digits (``metrics/test.json`` has them in full); an undefined one is null."""
    result = ev.metrics
    roles = result["_models"]
    out: dict = {}
    for h, sel in ev.selections.items():
        key = f"h{h}"
        best = _best(result, roles["base"], key, "ic")
        focus = roles["ensembles"][0] if roles["ensembles"] else best or roles["base"][0]
        row = result[focus][key]
        entry: dict = {"model": focus}
        entry.update({short: _sig(row[long]) for short, long in HEADLINE.items() if long in row})
        entry["selection"] = {"model": sel["best_model"], "dsr": _sig(sel["dsr"]), "psr": _sig(sel["psr"]),
                              "n_trials": sel["n_trials"]}
        if best is not None:
            b = result[best][key]
            entry["best"] = {"model": best, "ic": _sig(b["ic"]), "ic_se": _sig(b["ic_se"]), "sharpe": _sig(b["sharpe"])}
        base: dict = {}
        for metric in ("ic", "sharpe"):
            name = _best(result, roles["baselines"], key, metric)
            if name is not None:
                base.update({f"{metric}_model": name, metric: _sig(result[name][key][metric])})
        if base:
            entry["baseline"] = base
        out[key] = entry
    return out


def _num(value: Any) -> float:
    """A figure from metrics (a float, or None/NaN when undefined) as a float (NaN if undefined)."""
    return float("nan") if value is None else float(value)


def summary_table(metrics_: dict, headline_: dict) -> str:
    """The compact table the evaluate and report stages print, from ``metrics/test.json`` and
    ``metrics/headline.json`` (or ``evaluate``'s in-memory ``metrics`` and ``headline(...)``):
    model x horizon with IC ± SE and net Sharpe, the baselines that are best at some horizon, and
    the deflated Sharpe of each horizon's selection (marked *)."""
    roles = metrics_["_models"]
    keys = list(headline_)
    shown_baselines = {headline_[k].get("baseline", {}).get(f"{m}_model") for k in keys for m in ("ic", "sharpe")}
    rows = roles["ensembles"] + roles["base"] + [m for m in roles["baselines"] if m in shown_baselines]

    def cell(m: str, k: str) -> str:
        r = metrics_[m][k]
        ic, se, sharpe = _num(r.get("ic")), _num(r.get("ic_se")), _num(r.get("sharpe"))
        ic_txt = "—" if not np.isfinite(ic) else f"{ic:+.4f} ± " + (f"{se:.4f}" if np.isfinite(se) else "   n/a")
        sharpe_txt = f"{sharpe:+.2f}" if np.isfinite(sharpe) else "—"
        star = "*" if headline_[k]["selection"]["model"] == m else " "
        return f"{ic_txt:>18} {sharpe_txt:>7}{star}"

    width = max(len(m) for m in rows) + 2
    head = " " * width + "".join(f"{k + ': IC ± SE    Sharpe':>27}" for k in keys)
    lines = ["Test period, net of costs (IC ± block-bootstrap SE; Sharpe annualised; * = selected)", head]
    for i, m in enumerate(rows):
        if i and (m in roles["base"]) != (rows[i - 1] in roles["base"]):
            lines.append("")  # ensembles | base models | baselines
        lines.append(f"{m:<{width}}" + "".join(f"{cell(m, k):>27}" for k in keys))
    for k in keys:
        sel = headline_[k]["selection"]
        if sel["model"] is not None:
            lines.append(f"{k}: selected {sel['model']} (best net Sharpe of {sel['n_trials']} candidates), "
                         f"deflated Sharpe {_num(sel['dsr']):.2f}, P(Sharpe > 0) {_num(sel['psr']):.2f}")
    return "\n".join(lines)
