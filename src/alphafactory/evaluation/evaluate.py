"""Test-period evaluation: every model, the ensemble and naive baselines scored on the same rows.

Only the test segment is scored: no model trained or early-stopped on it, and the meta-learner
was fit on val. For each horizon the scored rows are the labelled test rows that every model
forecast, so figures in one table are comparable.

Classification task (forecasts carry ``p_short, p_neutral, p_long``): each model that has class
probabilities also gets accuracy, macro and per-class F1, log loss and one-vs-rest ROC AUC
against the label stage's SHORT/NEUTRAL/LONG class on the same rows, and the confusion-matrix
plot shows its predicted (most probable) class against the true one. Under regression that plot
shows the direction (sign) of the forecast against the direction of the realised return.

Walk-forward models (the backtest stage's ``<name>_wf``, refitted every few test bars) are scored
like every other model, on the same rows; ``_models`` lists them under ``walk_forward``, and the
headline puts the best of them beside its single fit. They are selection candidates: a
walk-forward refit is one more strategy tried, so it counts in the deflated Sharpe's trials.

Raw returns, whatever the training target: every IC (pooled, rank, cross-sectional, rolling),
the direction accuracy and every trading book score ``yhat`` against the raw forward log return
``ret_h{h}``. Under ``label.normalize`` other than ``none`` a forecast is a score in the target's
units (vol-scaled, or relative to the cross-section), so only MAE/RMSE/R² and the calibration of
``yhat_std``/``prob_up`` are against the target ``y`` (the units the models and the blend were fit
in); the sign strategy trades the score's sign (above/below the cross-section for the cs
targets), ``evaluate.threshold`` is in the score's units, and the quantile book uses ranks only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from alphafactory.config import Interval
from alphafactory.dataset import horizons_of
from alphafactory.evaluation import metrics
from alphafactory.labels import KEYS, PROBA_COLUMNS

BASELINES = ("zero", "train_mean", "momentum", "buy_and_hold")
# Quantile levels of the Gaussian N(yhat, yhat_std²) the pinball loss scores (metrics/test.json "pinball")
PINBALL_LEVELS = (0.1, 0.5, 0.9)


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
    segment = _segments_of(labels, segments)
    lab = labels
    # compared as a column (arrow strings: no Python string per row), then kept as masks
    test, train = (segment == "test").to_numpy(dtype=bool), (segment == "train").to_numpy(dtype=bool)
    logc = np.log(bars["close"].to_numpy())
    codes = pd.factorize(bars["symbol"])[0]
    # the test rows' keys, once for every baseline and horizon (``.array``: no Python strings)
    symbol, timestamp = lab["symbol"].array[test], lab["timestamp"].to_numpy()[test]
    frames = []
    for h in horizons:
        y = lab[f"y_h{h}"].to_numpy()
        train_y = y[train & ~np.isnan(y)]
        scale = float(np.mean(np.abs(train_y)))
        past = np.full(len(logc), np.nan)
        past[h:] = logc[h:] - logc[:-h]
        past[h:][codes[h:] != codes[:-h]] = np.nan
        # labels and bars are both one row per bar sorted by (symbol, timestamp)
        mom = np.sign(np.nan_to_num(past)) * scale
        values = {"zero": np.zeros(len(y)), "train_mean": np.full(len(y), float(train_y.mean())),
                  "momentum": mom, "buy_and_hold": np.full(len(y), scale)}
        for name, v in values.items():
            frames.append(pd.DataFrame({"symbol": symbol, "timestamp": timestamp,
                                        "model": name, "horizon": h, "yhat": v[test]}))
    return pd.concat(frames, ignore_index=True)


def _segments_of(labels: pd.DataFrame, segments: pd.DataFrame) -> pd.Series:
    """(n_labels,) segment of each labels row. The split stage writes one segments row per labels
    row in the same order; then the column is taken as is (no merged copy of the labels), else
    the tables are merged on the keys (one to one, as before)."""
    same = (len(labels) == len(segments)
            and np.array_equal(labels["timestamp"].to_numpy(), segments["timestamp"].to_numpy())
            # compared as arrays (arrow strings stay arrow: no Python string per row)
            and bool((labels["symbol"].array == segments["symbol"].array).all()))
    if same:
        return segments["segment"]
    merged = labels[KEYS].merge(segments, on=KEYS, validate="1:1")
    if len(merged) != len(labels) or not merged[KEYS].equals(labels[KEYS].reset_index(drop=True)):
        raise ValueError(f"evaluate: the segments do not cover the labels rows one to one "
                         f"({len(merged)} of {len(labels)} labels rows matched, or not in their order)")
    return merged["segment"]


def read_test_forecasts(paths: list[str]) -> pd.DataFrame:
    """The ``segment == "test"`` rows of forecast files, concatenated in order, without the
    ``segment`` column: only those rows are kept, one row group at a time (:func:`_read_where`).
    Columns: ``symbol, timestamp, model, horizon, yhat`` and whatever else the files carry."""
    frames = [_read_where(p, lambda t: pc.equal(t.column("segment"), "test")).drop(columns="segment")
              for p in paths]
    return pd.concat(frames, ignore_index=True)


def _read_where(path: str, keep: Callable[[pa.Table], pa.ChunkedArray]) -> pd.DataFrame:
    """The rows of a parquet file where ``keep(row_group)`` is true, in file order, decoding one
    row group at a time (a filtered ``pd.read_parquet`` decodes several at once, whole), as
    ``pd.read_parquet`` would give them."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    parts = [g.filter(keep(g)) for g in (f.read_row_group(i) for i in range(f.num_row_groups))]
    table = pa.concat_tables(parts) if parts else f.schema_arrow.empty_table()
    del parts
    out = table.to_pandas()
    del table
    pa.default_memory_pool().release_unused()
    return out


def read_table(path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """``pd.read_parquet(path, columns=columns)``, then the decoded row groups that Arrow's
    allocator keeps for reuse are handed back to the system (at 1,000 symbols x 2,520 bars that
    is ~0.3 GiB of resident memory per table that nothing uses)."""
    out = pd.read_parquet(path, columns=columns)
    pa.default_memory_pool().release_unused()
    return out


def models_in(path: str) -> tuple[str, ...]:
    """The model names of a forecast file, in order of first appearance (its ``model`` column alone)."""
    return tuple(dict.fromkeys(pd.read_parquet(path, columns=["model"])["model"]))


def label_columns(path: str) -> list[str]:
    """The columns of the labels file that evaluation reads: the keys and, per horizon, the
    target ``y_h``, the raw return ``ret_h`` and the class ``cls_h`` (not ``vol`` nor ``end_h``)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    return [c for c in names if c in KEYS or c.startswith(("y_h", "ret_h", "cls_h"))]


def in_window(frame: pd.DataFrame, preds: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``frame`` whose timestamp lies within the first and last timestamp of ``preds``:
    a superset of the rows any forecast of ``preds`` can be scored on (the scored rows are an
    inner join on the keys), so evaluating on it gives the same figures as on the whole table."""
    if preds.empty:
        return frame.iloc[:0]
    ts = frame["timestamp"]
    return frame[(ts >= preds["timestamp"].min()) & (ts <= preds["timestamp"].max())].reset_index(drop=True)


def read_oracle(path: str, preds: pd.DataFrame) -> pd.DataFrame:
    """The oracle forecasts (``symbol, timestamp, horizon, yhat``) within ``preds``' timestamps
    (:func:`in_window`), kept one row group at a time (:func:`_read_where`): the oracle of the other
    segments is never held whole."""
    if preds.empty:
        return pd.read_parquet(path).iloc[:0]
    lo, hi = pa.scalar(preds["timestamp"].min().as_unit("ns")), pa.scalar(preds["timestamp"].max().as_unit("ns"))
    return _read_where(path, lambda t: pc.and_(pc.greater_equal(t.column("timestamp"), lo),
                                               pc.less_equal(t.column("timestamp"), hi)))


def read_scored_inputs(forecasts: list[str], bars: str, labels: str, segments: str,
                       oracle: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(preds, labels, oracle) as :func:`evaluate` scores them, reading only that: the test rows
    of the ``forecasts`` files plus the naive baselines (from the bars' close), the label columns
    used within the test window (:func:`in_window`), and the oracle within it. The same figures as
    reading every table whole (tests/test_evaluate_inputs.py)."""
    lab = read_table(labels, columns=label_columns(labels))
    preds = pd.concat([read_test_forecasts(forecasts),
                       baseline_forecasts(read_table(bars, columns=["symbol", "close"]), lab,
                                          read_table(segments), horizons_of(lab))], ignore_index=True)
    return preds, in_window(lab, preds), read_oracle(oracle, preds)


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
    """All test figures of one model at one horizon.

    The IC, rank IC, direction, cross-sectional IC and trading figures score ``yhat`` against
    the raw forward return ``ret``, whatever ``label.normalize`` is; ``mae``, ``rmse`` and ``r2``
    against the training target ``y``, in ``yhat``'s own units (``y == ret`` with ``none``)."""
    out = metrics.regression_metrics(table["ret"].to_numpy(), table[model].to_numpy())
    if not np.array_equal(table["y"].to_numpy(), table["ret"].to_numpy()):  # a normalised target
        err = metrics.regression_metrics(table["y"].to_numpy(), table[model].to_numpy())
        out.update({k: err[k] for k in ("mae", "rmse", "r2")})
    pooled = table[["timestamp"]].assign(y=table["ret"], yhat=table[model])
    out["ic_se"] = metrics.ic_standard_error(pooled, horizon)
    out["ic_t"] = _ratio(out["ic"], out["ic_se"])
    # the rank IC is the Pearson IC of the ranks: the same date-block bootstrap, ranks held fixed
    ranked = pooled.assign(y=pooled["y"].rank().to_numpy(), yhat=pooled["yhat"].rank().to_numpy())
    out["rank_ic_se"] = metrics.ic_standard_error(ranked, horizon)
    out["rank_ic_t"] = _ratio(out["rank_ic"], out["rank_ic_se"])
    trade = table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[model])
    out.update(metrics.trading_metrics(trade, horizon, periods_per_year, cfg.cost_bps,
                                       threshold=cfg.threshold, quantile=cfg.ls_quantile))
    if table["symbol"].nunique() >= cfg.min_symbols_cs:
        cs = metrics.cross_sectional_ic(table[["timestamp"]].assign(y=table["ret"], yhat=table[model]),
                                        min_symbols=cfg.min_symbols_cs, horizon=horizon,
                                        periods_per_year=periods_per_year)
        out.update({f"cs_{k}": v for k, v in cs.items()})
    return out


def _ratio(num: float, den: float) -> float:
    """``num / den`` (a t-statistic), NaN when either is undefined or ``den`` is not positive."""
    return float(num / den) if np.isfinite(num) and np.isfinite(den) and den > 0 else float("nan")


# |t| of the oracle's IC below which its IC is noise, and a share of it means nothing
ORACLE_T_MIN = 1.96


def oracle_share_status(oracle_row: dict[str, float]) -> tuple[bool, str]:
    """Whether ``oracle_share`` is defined at a horizon, and why (one line).

    The share is a model's IC divided by the oracle's; when the oracle's own test IC is not
    significantly different from 0 (``|ic / ic_se| < ORACLE_T_MIN``; its true IC may still be
    positive, the test rows are too few or too noisy to show it) the ratio divides by noise and
    can take any value of either sign, so it is null."""
    ic, se = oracle_row.get("ic", float("nan")), oracle_row.get("ic_se", float("nan"))
    if np.isfinite(ic) and ic != 0 and se == 0:  # every resample gave the same IC: exact, not noise
        return True, f"defined: the oracle's IC {ic:+.4f} ± 0 (the same in every resample)"
    t = _ratio(ic, se)
    if not np.isfinite(t):
        return False, f"null: the oracle's IC has no standard error (IC {ic:.4f})"
    if abs(t) < ORACLE_T_MIN:
        return False, (f"null: the oracle's IC {ic:+.4f} ± {se:.4f} (t {t:+.2f}) is not significant "
                       f"(|t| < {ORACLE_T_MIN}), so a share of it is noise")
    return True, f"defined: the oracle's IC {ic:+.4f} ± {se:.4f} (t {t:+.2f})"


def calibration_scores(preds: pd.DataFrame, table: pd.DataFrame, model: str, horizon: int) -> dict[str, float]:
    """Coverage of yhat ± k·yhat_std, the Brier score of prob_up, the CRPS of the Gaussian
    N(yhat, yhat_std²) (``crps``, closed form) and the mean pinball loss of its quantiles at
    ``PINBALL_LEVELS`` (``pinball``) on the scored rows, for models that carry uncertainty
    (baselines do not). A quantile network's (``neural.trainer.quantiles``) yhat and yhat_std are
    its median and the spread of its outer quantiles, so ``pinball`` scores their Gaussian
    quantiles (its own, recentred symmetrically on the median), not the stored outputs. yhat_std is a distributional model's own (``deepar``), the
    volatility scale for the others (:mod:`alphafactory.uncertainty`), so ``crps`` beside the
    coverage shows which is the better-calibrated, sharper uncertainty."""
    if "yhat_std" not in preds.columns:
        return {}
    p = preds[(preds["model"] == model) & (preds["horizon"] == horizon)]
    p = table[KEYS + ["y"]].merge(p[KEYS + ["yhat", "yhat_std", "prob_up"]], on=KEYS, how="inner")
    if p.empty or p["yhat_std"].isna().any():
        return {}
    cover = metrics.interval_coverage(p["y"].to_numpy(), p["yhat"].to_numpy(), p["yhat_std"].to_numpy())
    out = {k: v for k, v in cover.items() if k.startswith("cover_")}
    out["brier"] = metrics.brier_score(p["y"].to_numpy(), p["prob_up"].to_numpy())
    out["crps"] = metrics.crps_gaussian(p["y"].to_numpy(), p["yhat"].to_numpy(), p["yhat_std"].to_numpy())
    out["pinball"] = metrics.pinball_gaussian(p["y"].to_numpy(), p["yhat"].to_numpy(), p["yhat_std"].to_numpy(),
                                              PINBALL_LEVELS)
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
             oracle: pd.DataFrame | None = None, ensembles: tuple[str, ...] = (),
             extra_trials: int = 0, walk_forward: tuple[str, ...] = ()) -> Evaluation:
    """Score every model of ``preds`` (test rows, long format, baselines included); ``ensembles``
    names the models of ``preds`` that are blends of the others (the blend stage's),
    ``walk_forward`` those refitted through the test period (the backtest stage's).

    ``extra_trials``: configurations tried before these models and not scored here (e.g. the
    trials of a hyperparameter search); they count in the deflated Sharpe ratio's number of
    trials (see :func:`select_best`). This is the one place where such a count enters.

    With an oracle (synthetic data), the metrics also hold {"oracle": ...} figures on the same
    rows and each model's ``oracle_share`` = its IC / the oracle's IC, null at a horizon where
    the oracle's IC is not significant (``_oracle_share`` says why, per horizon; see
    :func:`oracle_share_status`). ``_models`` (not a model) lists the ``ensembles``, ``base``
    models, ``walk_forward`` models and ``baselines`` scored."""
    if isinstance(extra_trials, bool) or not isinstance(extra_trials, int | np.integer) or extra_trials < 0:
        raise ValueError(f"extra_trials must be an integer >= 0, got {extra_trials!r}")
    horizons = sorted(preds["horizon"].unique())
    models = list(dict.fromkeys(preds["model"]))
    result: dict = {m: {} for m in models}
    long_frames, plots, selections, oracle_notes = [], {}, {}, {}
    if oracle is not None and len(oracle):
        oracle = oracle.assign(model="oracle").reindex(columns=preds.columns)
        result["oracle"] = {}
    else:
        oracle = None
    for h in horizons:
        # The oracle's rows join the forecasts one horizon at a time, for the scored rows alone (no
        # copy of the whole long table): the calibration and class scores of "oracle" are {} either
        # way (it has no yhat_std, prob_up or class probabilities: rows without them, or no rows).
        at_h = preds[preds["horizon"] == h]
        if oracle is not None:
            at_h = pd.concat([at_h, oracle[oracle["horizon"] == h]], ignore_index=True)
        table = scored_rows(at_h, labels, h)
        del at_h
        if table.empty:
            raise ValueError(f"evaluate: no labelled test rows that every model forecast at horizon {h}")
        for m in result:
            result[m][f"h{h}"] = score(table, m, h, periods_per_year, cfg)
            result[m][f"h{h}"].update(calibration_scores(preds, table, m, h))
            result[m][f"h{h}"].update(classification_scores(preds, labels, table, m, h))
        if "oracle" in result:
            defined, why = oracle_share_status(result["oracle"][f"h{h}"])
            oracle_notes[f"h{h}"] = why
            oic = result["oracle"][f"h{h}"]["ic"]
            for m in models:
                result[m][f"h{h}"]["oracle_share"] = float(result[m][f"h{h}"]["ic"] / oic) if defined else float("nan")
        for m in models:
            long_frames.append(pd.DataFrame({"symbol": table["symbol"], "timestamp": table["timestamp"],
                                             "horizon": h, "model": m, "yhat": table[m], "y": table["y"]}))
        if h == horizons[0]:
            plots.update(plot_tables(table, models, h, cfg))
            plots.update(calibration_table(preds, table, models, h))
            plots.update(confusion_table(preds, labels, table, models, h))
        selections[int(h)] = select_best(table, result, models, h, periods_per_year, cfg, extra_trials)
    result["_selection"] = selections[int(horizons[0])]  # not a model: see select_best
    if oracle_notes:
        result["_oracle_share"] = oracle_notes  # not a model: whether oracle_share is defined, per horizon
    result["_models"] = model_roles(models, ensembles, walk_forward)
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
        ic = metrics.rolling_ic(table[["timestamp"]].assign(y=table["ret"], yhat=table[m]), cfg.ic_window).dropna()
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

    Candidates are every scored model except the baselines (base models, ensembles and
    walk-forward refits). The DSR (Bailey & Lopez de Prado 2014) is the probability that the
    winner's true Sharpe ratio beats the expected best of ``n_trials`` skill-less strategies, with:

    * ``n_trials = n_candidates + extra_trials``: every configuration that was tried, the
      candidates scored here and ``extra_trials`` tried before (tuning trials). Each counts as
      an independent trial (not reduced for correlation between candidates);
    * ``sharpe_trials_var``: the variance (ddof 1) of the candidates' per-period net Sharpe
      ratios, as the paper estimates it from the trials; trials not scored here are assumed to
      spread alike. With fewer than 2 finite candidate Sharpes the pure-noise
      ``1 / (n_periods - 1)`` is used instead (``sharpe_var_source`` says which);
    * the winner's per-period Sharpe (mean over the h grid offsets, as ``sharpe``), and the skew
      and raw kurtosis of its net period returns pooled over the offsets; ``n_periods`` is the
      length of one offset's grid (the pooled returns overlap, so they are not more observations).

    Written to ``metrics/test.json`` under ``_selection`` (not a model)."""
    from scipy.stats import kurtosis, skew

    candidates = [m for m in models if m not in BASELINES]
    n_trials = len(candidates) + int(extra_trials)
    out: dict = {"horizon": int(horizon), "criterion": "sharpe", "n_trials": n_trials,
                 "n_candidates": len(candidates), "extra_trials": int(extra_trials),
                 "candidates": candidates, "baselines": [m for m in models if m in BASELINES],
                 "best_model": None, "sharpe": float("nan"), "sharpe_per_period": float("nan"),
                 "n_periods": 0, "skew": float("nan"), "kurtosis": float("nan"),
                 "sharpe_trials_var": float("nan"), "sharpe_var_source": None,
                 "expected_max_sharpe": float("nan"), "psr": float("nan"), "dsr": float("nan")}
    row = {m: result[m][f"h{horizon}"] for m in candidates}
    scored = {m: r["sharpe"] for m, r in row.items() if r.get("sharpe") is not None and np.isfinite(r["sharpe"])}
    if not scored:
        return out
    best = max(scored, key=scored.get)  # first of equals, in model order
    n_obs = int(row[best]["n_periods"])
    out.update(best_model=best, sharpe=float(scored[best]), n_periods=n_obs)
    if n_obs < 3:
        return out
    trade = table[["symbol", "timestamp"]].assign(y=table["ret"], yhat=table[best])
    r = np.concatenate([metrics.strategy_returns(trade, horizon, cfg.cost_bps, cfg.threshold, offset=o)["net"]
                        .to_numpy() for o in range(horizon)])
    per_period = [row[m]["sharpe_per_period"] for m in scored]
    if len(per_period) >= 2:
        var, source = float(np.var(per_period, ddof=1)), "candidates"
    else:
        var, source = 1.0 / (n_obs - 1), "noise"
    sr = float(row[best]["sharpe_per_period"])
    sk, ku = float(skew(r)), float(kurtosis(r, fisher=False))
    out.update(sharpe_per_period=sr, skew=sk, kurtosis=ku, sharpe_trials_var=var, sharpe_var_source=source,
               expected_max_sharpe=metrics.expected_max_sharpe(n_trials, var),
               psr=metrics.probabilistic_sharpe_ratio(sr, n_obs, sk, ku),
               dsr=metrics.deflated_sharpe_ratio(sr, n_trials, n_obs, sk, ku, sharpe_trials_var=var))
    return out


# Figures of metrics/headline.json, under their short names there: what a reviewer decides on.
HEADLINE = {"ic": "ic", "ic_se": "ic_se", "ic_t": "ic_t", "rank_ic": "rank_ic", "cs_ic": "cs_ic_mean",
            "cs_ic_se": "cs_ic_se", "sharpe": "sharpe", "max_dd": "max_drawdown", "oracle_share": "oracle_share"}


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


def model_roles(models: list[str], ensembles: tuple[str, ...] | list[str] = (),
                walk_forward: tuple[str, ...] | list[str] = ()) -> dict[str, list[str]]:
    """Split scored model names, in their order, into ``ensembles``, ``base`` models,
    ``walk_forward`` models and ``baselines``."""
    roles: dict[str, list[str]] = {"ensembles": [], "base": [], "walk_forward": [], "baselines": []}
    for m in models:
        if m == "oracle" or m.startswith("_"):
            continue
        role = ("baselines" if m in BASELINES else "ensembles" if m in ensembles
                else "walk_forward" if m in walk_forward else "base")
        roles[role].append(m)
    return roles


def _figures(row: dict, model: str) -> dict:
    """The headline's short figures of one model: name, IC, its SE and net Sharpe."""
    return {"model": model, "ic": _sig(row["ic"]), "ic_se": _sig(row["ic_se"]), "sharpe": _sig(row["sharpe"])}


def headline(ev: Evaluation) -> dict:
    """``metrics/headline.json``: per horizon, a few figures for the review loop.

    ``h<k>``: the ensemble's (the first ensemble, else the best base model) IC, its
    date-block-bootstrap SE and t-statistic, rank IC, cross-sectional IC (3+ symbols) and its
    Newey-West SE, net Sharpe, max drawdown and, on synthetic data, its share of the oracle's IC
    (null with ``oracle_share_note`` when the oracle's IC is not significant); ``selection``: the model with the best net
    Sharpe among all candidates, its deflated Sharpe ratio and its probabilistic Sharpe ratio
    (P(true Sharpe > 0)); ``best``: the base model with the highest test IC (a choice made on the
    test period: read it with the DSR); ``walk_forward`` (when the backtest stage ran): the
    walk-forward model with the highest test IC, its IC, SE and Sharpe, and under ``single_fit``
    the same figures of the model it refits (``lightgbm`` for ``lightgbm_wf``), so a reviewer sees
    whether the edge survives refitting; ``baseline``: the best naive baseline's IC and Sharpe
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
        if "oracle_share" in entry and entry["oracle_share"] is None and key in result.get("_oracle_share", {}):
            entry["oracle_share_note"] = result["_oracle_share"][key]
        entry["selection"] = {"model": sel["best_model"], "dsr": _sig(sel["dsr"]), "psr": _sig(sel["psr"]),
                              "n_trials": sel["n_trials"]}
        if best is not None:
            entry["best"] = _figures(result[best][key], best)
        wf = _best(result, roles.get("walk_forward", []), key, "ic")
        if wf is not None:
            single = wf.removesuffix("_wf")  # backtest.SUFFIX (not imported: it would pull in the models)
            entry["walk_forward"] = _figures(result[wf][key], wf)
            if single in result:
                entry["walk_forward"]["single_fit"] = _figures(result[single][key], single)
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
    groups = [roles["ensembles"], roles["base"], roles.get("walk_forward", []),
              [m for m in roles["baselines"] if m in shown_baselines]]
    rows = [m for g in groups for m in g]
    group_of = {m: i for i, g in enumerate(groups) for m in g}

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
        if i and group_of[m] != group_of[rows[i - 1]]:
            lines.append("")  # ensembles | base models | walk-forward refits | baselines
        lines.append(f"{m:<{width}}" + "".join(f"{cell(m, k):>27}" for k in keys))
    for k in keys:
        sel = headline_[k]["selection"]
        if sel["model"] is not None:
            lines.append(f"{k}: selected {sel['model']} (best net Sharpe of {sel['n_trials']} candidates), "
                         f"deflated Sharpe {_num(sel['dsr']):.2f}, P(Sharpe > 0) {_num(sel['psr']):.2f}")
    return "\n".join(lines)
