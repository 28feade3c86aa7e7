"""The HTML report: one self-contained page that compares every model on the test period.

``render`` turns the pipeline's outputs (metrics, plot tables, explanations, split summary, data
info) into a single HTML string: inline CSS, figures as inline SVG drawn with matplotlib's Agg
backend, no script and no network resource, so it opens from the file system or an e-mail
attachment. The output is deterministic (no timestamps, fixed SVG ids), so an unchanged input
gives an unchanged file.
"""
from __future__ import annotations

import html
import io
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Annotated, Any, Literal

# matplotlib keeps its font cache and config under ~/.cache and ~/.config unless told otherwise:
# a pipeline run writes nothing outside the repository, the DVC cache and the temp directory.
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "alphafactory-matplotlib"))
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from alphafactory.config import Interval, NonEmpty

log = logging.getLogger(__name__)

# metric key -> (column label, format, better): better 1 = higher is better, -1 = lower, 0 = neither
METRICS: dict[str, tuple[str, str, int]] = {
    "ic": ("IC", "f4", 1),
    "ic_se": ("IC SE", "f4", 0),  # block-bootstrap standard error of the IC: not a score to rank
    "ic_t": ("IC t", "f2", 0),  # IC / its SE: evidence, not a score to rank
    "rank_ic": ("rank IC", "f4", 1),
    "rank_ic_se": ("rank IC SE", "f4", 0),
    "cs_ic_mean": ("CS IC", "f4", 1),
    "cs_ic_se": ("CS IC SE", "f4", 0),  # Newey-West, lag h - 1
    "cs_ic_t": ("CS IC t", "f2", 0),
    "cs_icir": ("CS ICIR", "f3", 1),  # per period
    "cs_icir_ann": ("CS ICIR ann.", "f2", 1),
    "cs_rank_ic_mean": ("CS rank IC", "f4", 1),
    "r2": ("R²", "f4", 1),
    "dir_acc": ("dir. acc.", "pct", 1),
    "mae": ("MAE", "e", -1),
    "rmse": ("RMSE", "e", -1),
    "sharpe": ("Sharpe net", "f2", 1),
    "sharpe_gross": ("Sharpe gross", "f2", 1),
    "ann_return": ("ann. return net", "pct", 1),
    "max_drawdown": ("max DD", "pct", -1),
    "win_rate": ("win rate", "pct", 1),
    "turnover": ("turnover", "f2", 0),
    "ls_sharpe": ("L/S Sharpe", "f2", 1),
    "ls_ann_return": ("L/S ann. return", "pct", 1),
    "ls_max_drawdown": ("L/S max DD", "pct", -1),
    "brier": ("Brier", "f4", -1),
    "crps": ("CRPS", "e", -1),  # Gaussian N(yhat, yhat_std²), closed form: the uncertainty's score
    "pinball": ("pinball 10/50/90", "e", -1),  # mean pinball loss of the Gaussian quantiles 0.1, 0.5, 0.9
    "cover_1.00": ("cover ±1σ", "pct", 0),
    "cover_1.96": ("cover ±1.96σ", "pct", 0),
    "oracle_share": ("IC / oracle", "f2", 1),
    "accuracy": ("accuracy", "pct", 1),  # train.task: classification
    "macro_f1": ("macro F1", "f3", 1),
    "log_loss": ("log loss", "f4", -1),
    "roc_auc": ("ROC AUC", "f3", 1),
    "n": ("rows", "int", 0),
}
CLASS_METRICS = ("accuracy", "macro_f1", "log_loss", "roc_auc")  # appended under classification
# a baseline that never trades trivially has no drawdown: not worth flagging as "beats every model"
NOT_A_SKILL = ("max_drawdown", "ls_max_drawdown", "turnover", "n")
DEFAULT_METRICS = ("ic", "ic_t", "rank_ic", "cs_ic_mean", "r2", "dir_acc", "sharpe", "ann_return", "max_drawdown",
                   "turnover", "ls_sharpe", "ls_max_drawdown")
# a column of one of these figures shows "value ± SE" (the SE from the same row of metrics/test.json)
SE_OF = {"ic": "ic_se", "rank_ic": "rank_ic_se", "cs_ic_mean": "cs_ic_se", "cs_rank_ic_mean": "cs_rank_ic_se"}
# Figures above these deserve a leakage check before anything else (the report's own advice):
LEAK_IC = 0.1  # |IC| at any horizon
LEAK_DIR_ACC = 0.55  # directional accuracy at the 1-bar horizon


@dataclass(frozen=True)
class ReportConfig:
    title: str = "alphafactory: test-period model comparison"
    # columns of the comparison tables, in order
    metrics: Annotated[tuple[Literal[tuple(METRICS)], ...], NonEmpty()] = DEFAULT_METRICS
    top_features: Annotated[int, Interval(ge=1)] = 20  # bars in the feature-importance figure


@dataclass(frozen=True)
class ReportInputs:
    metrics: dict[str, Any]  # metrics/test.json: {model: {"h<k>": {metric: value}}, "_selection": {...}}
    split: dict[str, Any]  # data/split/summary.json: {segment: {start, end, rows}}
    info: dict[str, Any]  # data/prepared/info.json: source, symbols, frequency, start, end
    plots: dict[str, pd.DataFrame]  # metrics/plots/*.csv by file name
    explain: dict[str, pd.DataFrame]  # metrics/explain/*.csv by file name
    ic_window: int | None = None  # bars per rolling-IC window (evaluate.ic_window)
    tune: dict[str, Any] | None = None  # metrics/tune/summary.json (None or no models: no tuning section)
    tune_trials: pd.DataFrame | None = None  # metrics/tune/trials.csv


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

_STYLE = {
    "svg.hashsalt": "alphafactory",  # fixed element ids: same input, same bytes
    "svg.fonttype": "none",  # text stays text: smaller, searchable, rendered in the page's font
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _svg(fig: plt.Figure) -> str:
    """The figure as an inline <svg> element (no XML prolog, DOCTYPE or metadata block)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)


WALK_FORWARD = "_wf"  # name suffix of the backtest stage's walk-forward refits (lightgbm_wf)


def _styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """Distinct solid line colours: tab10 without its grey (grey marks the baselines), then Dark2;
    dashed only beyond those 17 names. A walk-forward refit (``<model>_wf``) of a model drawn too
    takes that model's colour, dash-dotted, so the pair reads as one."""
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    palette += [c for i, c in enumerate(plt.get_cmap("Dark2").colors) if i != 7]
    paired = {n for n in names if n.endswith(WALK_FORWARD) and n.removesuffix(WALK_FORWARD) in names}
    own = [n for n in names if n not in paired]
    out = {n: {"color": palette[i % len(palette)], "ls": "-" if i < len(palette) else "--"}
           for i, n in enumerate(own)}
    out.update({n: {"color": out[n.removesuffix(WALK_FORWARD)]["color"], "ls": "-."} for n in paired})
    return out


def _dates(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts)


def _wide(long: pd.DataFrame | None, value: str) -> pd.DataFrame | None:
    """A long plot table of metrics/plots (``timestamp, model, ..., value``) as one column per
    model, sorted by timestamp."""
    if long is None:
        return None
    return long.pivot(index="timestamp", columns="model", values=value).sort_index().reset_index()


def fig_cumulative(cum: pd.DataFrame, models: list[str], baselines: list[str], best: str | None) -> str:
    """Cumulative net return of the sign strategy: one line per model, baselines dashed."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(10, 4.2))
        x = _dates(cum["timestamp"])
        styles = _styles(models)
        for m in [m for m in models if m in cum.columns]:
            ax.plot(x, 100 * cum[m], **styles[m], lw=2.6 if m == best else 1.2, label=m)
        for m in [b for b in baselines if b in cum.columns]:
            ax.plot(x, 100 * cum[m], color="0.35", lw=1.0, ls="--" if m == "buy_and_hold" else ":",
                    label=f"{m} (baseline)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel("cumulative net return, %")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        return _svg(fig)


def fig_rolling_ic(roll: pd.DataFrame, models: list[str], baselines: list[str], window: str) -> str:
    """Rolling pooled IC per model."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(10, 3.6))
        x = _dates(roll["timestamp"])
        styles = _styles(models)
        for m in [m for m in models if m in roll.columns]:
            ax.plot(x, roll[m], **styles[m], lw=1.2, label=m)
        for m in [b for b in baselines if b in roll.columns]:
            ax.plot(x, roll[m], color="0.35", lw=1.0, ls=":", label=f"{m} (baseline)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel(f"IC over trailing {window} bars")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        return _svg(fig)


def fig_scatter(sc: pd.DataFrame, model: str) -> str:
    """Predicted against realised return, with the least-squares line."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 4.2))
        x, y = 100 * sc["predicted"].to_numpy(), 100 * sc["realised"].to_numpy()
        ax.scatter(x, y, s=5, alpha=0.35, color="#1f77b4", linewidths=0)
        if len(x) > 2 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, slope * xs + icpt, color="#d62728", lw=1.5,
                    label=f"least squares (IC {np.corrcoef(x, y)[0, 1]:.3f})")
            ax.legend(loc="upper left", frameon=False, fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlabel(f"{model} forecast, %")
        ax.set_ylabel("realised target, %")
        return _svg(fig)


def fig_calibration(cal: pd.DataFrame, model: str) -> str:
    """Reliability of P(up): observed frequency of up moves against the mean forecast per bin."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 4.2))
        lo = float(min(cal["mean_pred"].min(), cal["obs_freq"].min(), 0.4)) - 0.05
        hi = float(max(cal["mean_pred"].max(), cal["obs_freq"].max(), 0.6)) + 0.05
        ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="perfectly calibrated")
        ax.plot(cal["mean_pred"], cal["obs_freq"], "o", color="#2ca02c", ms=6, label=model)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("forecast P(up), bin mean")
        ax.set_ylabel("observed share of up moves")
        ax.legend(loc="lower right", frameon=False, fontsize=8)
        return _svg(fig)


def fig_top_features(top: pd.DataFrame, k: int) -> str:
    """Horizontal bars of the mean SHAP share, best on top."""
    t = top.head(k).iloc[::-1]
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.24 * len(t) + 0.8))
        ax.barh(t["feature"], 100 * t["importance"], color="#1f77b4")
        ax.set_xlabel("share of mean |SHAP|, % (mean over tree models and horizons)")
        ax.grid(axis="y", visible=False)
        return _svg(fig)


def fig_permutation(perm: pd.DataFrame, horizon: int) -> str:
    """Heat map of the IC drop per shuffled feature (rows) and model (columns) at one horizon."""
    p = perm[perm["horizon"] == horizon]
    wide = p.pivot_table(index="feature", columns="model", values="ic_drop", sort=False)
    wide = wide.loc[wide.mean(axis=1).sort_values(ascending=False).index]
    v = wide.to_numpy()
    lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(1.1 * wide.shape[1] + 2.8, 0.3 * wide.shape[0] + 1.2))
        im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(wide.shape[1]), wide.columns)
        ax.set_yticks(range(wide.shape[0]), wide.index)
        for (i, j), val in np.ndenumerate(v):
            if np.isfinite(val):
                ax.text(j, i, f"{val:+.3f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(val) > 0.6 * lim else "black")
        fig.colorbar(im, ax=ax, label="IC drop when shuffled", shrink=0.8)
        return _svg(fig)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1b1f24;
  margin:0;background:#f5f6f8}
main{max-width:1320px;margin:0 auto;padding:20px 28px 40px;background:#fff}
h1{font-size:24px;margin:6px 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:2px solid #e3e6ea;
  padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#57606a;margin:0 0 12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.box{background:#f6f8fa;border:1px solid #d8dee4;border-radius:6px;padding:10px 14px}
.note{background:#fff8e1;border-color:#f0d58c}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
div.wide{overflow-x:auto;max-width:100%}div.wide th,div.wide td{padding:3px 6px}
th,td{padding:3px 8px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}
td.name,th.name{text-align:left}td.fam{text-align:left;color:#57606a}
tr.sep td{background:#eef1f4;color:#57606a;font-weight:600;text-align:left;font-size:11.5px;
  text-transform:uppercase;letter-spacing:.04em}
tbody.baselines td{color:#57606a;font-style:italic}
td.best{background:#d6f5d6;font-weight:700;color:#0b5d1e}
td.beats{background:#ffe2c6;font-weight:700}
tr.top td.name{font-weight:700}
figure{margin:10px 0 18px}figcaption{color:#57606a;font-size:12.5px;margin-top:4px}
svg{max-width:100%;height:auto}
code{background:#f0f2f5;padding:0 3px;border-radius:3px}
span.se{color:#57606a;font-weight:400;font-size:11px}
.leak{background:#fde8e8;border-color:#e8a0a0}
"""


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "e":
        return f"{value:.2e}"
    return f"{value:.{kind[1:]}f}"


def _day(ts: Any) -> str:
    return str(ts)[:10] if ts is not None else "?"


def _period(split: dict[str, Any], seg: str) -> str:
    s = split.get(seg) or {}
    return f"{_day(s.get('start'))} – {_day(s.get('end'))}"


def _groups(metrics: dict[str, Any], families: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(models, baselines, other) in the order of metrics/test.json; keys starting with _ are not models."""
    sel = metrics.get("_selection") or {}
    names = [k for k in metrics if not k.startswith("_")]
    baselines = [b for b in sel.get("baselines", []) if b in metrics]
    other = [n for n in names if n == "oracle"]
    models = [n for n in names if n not in baselines and n not in other]
    order = {"boosting": 0, "neural": 1, "classical": 2, "ensemble": 3, "walk-forward": 4}
    models.sort(key=lambda n: order.get(families.get(n, "ensemble"), 2))
    return models, baselines, other


def comparison_table(metrics: dict[str, Any], horizon: str, columns: tuple[str, ...],
                     families: dict[str, str], best_model: str | None = None) -> str:
    """One horizon's table: models (best value per column marked), then baselines, then oracle.

    A baseline cell that beats every model in its column is marked too: the models did not
    beat the naive forecast on that figure."""
    models, baselines, other = _groups(metrics, families)

    def val(name: str, key: str) -> float:
        v = (metrics.get(name, {}).get(horizon) or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan

    best: dict[str, float] = {}
    for key in columns:
        better = METRICS[key][2]
        vals = [val(m, key) for m in models]
        finite = [v for v in vals if math.isfinite(v)]
        if better and finite:
            best[key] = max(finite) if better > 0 else min(finite)
    head = "".join(f"<th>{html.escape(METRICS[c][0])}</th>" for c in columns)
    out = [f'<div class="wide"><table><thead><tr><th class="name">model</th><th class="name">family</th>{head}</tr></thead>']

    def rows(names: list[str], is_model: bool) -> list[str]:
        lines = []
        for name in names:
            cells = []
            for key in columns:
                v, better = val(name, key), METRICS[key][2]
                cls = ""
                if key in best and math.isfinite(v):
                    if is_model and v == best[key]:
                        cls = ' class="best"'
                    elif not is_model and name != "oracle" and key not in NOT_A_SKILL and (v - best[key]) * better > 0:
                        cls = ' class="beats"'
                text = _fmt(v, METRICS[key][1])
                se = val(name, SE_OF[key]) if key in SE_OF else math.nan
                if math.isfinite(v) and math.isfinite(se):
                    text += f'<span class="se"> ± {_fmt(se, METRICS[key][1])}</span>'
                cells.append(f"<td{cls}>{text}</td>")
            fam = "baseline" if not is_model and name != "oracle" else families.get(name, "ensemble")
            if name == "oracle":
                fam = "true expectation"
            tr = ' class="top"' if name == best_model else ""
            lines.append(f'<tr{tr}><td class="name">{html.escape(name)}</td><td class="fam">{html.escape(fam)}'
                         f"</td>{''.join(cells)}</tr>")
        return lines

    span = len(columns) + 2
    out.append("<tbody>" + "".join(rows(models, True)) + "</tbody>")
    if baselines:
        out.append(f'<tbody class="baselines"><tr class="sep"><td colspan="{span}">naive baselines</td></tr>'
                   + "".join(rows(baselines, False)) + "</tbody>")
    if other:
        out.append(f'<tbody><tr class="sep"><td colspan="{span}">oracle (synthetic data: the true conditional '
                   "expectation)</td></tr>" + "".join(rows(other, False)) + "</tbody>")
    out.append("</table></div>")
    return "".join(out)


def confusion_html(conf: pd.DataFrame, period: str) -> str:
    """The confusion-matrix counts of ``confusion.csv`` (actual, predicted, model) as a table."""
    order = [c for c in ("SHORT", "NEUTRAL", "LONG", "down", "flat", "up")
             if c in set(conf["actual"]) | set(conf["predicted"])]
    counts = pd.crosstab(conf["actual"], conf["predicted"]).reindex(index=order, columns=order, fill_value=0)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in order)
    best = ' class="best"'
    rows = "".join(f"<tr><th>{html.escape(a)}</th>" + "".join(
        f"<td{best if a == p else ''}>{int(counts.loc[a, p]):,}</td>" for p in order) + "</tr>"
        for a in order)
    model = html.escape(str(conf["model"].iloc[0]))
    kind = "class" if "SHORT" in order or "LONG" in order else "direction"
    return (f"<figure><table><tr><th>true \\ predicted</th>{head}</tr>{rows}</table><figcaption>Confusion "
            f"matrix of {model}: predicted against true {kind} on {len(conf):,} test rows ({period}); the "
            "diagonal is correct.</figcaption></figure>")


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _span(frame: pd.DataFrame) -> str:
    ts = frame["timestamp"]
    return f"{_day(ts.iloc[0])} – {_day(ts.iloc[-1])}" if len(ts) else "no rows"


@dataclass(frozen=True)
class _Page:
    """What every section of the report reads: the inputs, plus the names and periods derived once."""

    inputs: ReportInputs
    cfg: ReportConfig
    models_csv: pd.DataFrame  # model, family, method of the explain stage
    families: dict[str, str]
    models: list[str]
    baselines: list[str]
    sel: dict[str, Any]  # metrics["_selection"]
    horizons: list[str]  # "h1", "h5", ...
    h0: str  # the selection's horizon, which the figures show
    freq: str
    test: str  # the test period, as text

    @classmethod
    def of(cls, inputs: ReportInputs, cfg: ReportConfig) -> _Page:
        m = inputs.metrics
        models_csv = inputs.explain.get("models.csv", pd.DataFrame(columns=["model", "family", "method"]))
        families = dict(zip(models_csv["model"], models_csv["family"], strict=True))
        families.update({w: "walk-forward" for w in (m.get("_models") or {}).get("walk_forward", [])})
        models, baselines, _ = _groups(m, families)
        sel = m.get("_selection") or {}
        horizons = sorted({h for k in models + baselines for h in (m[k] or {})}, key=lambda h: int(h[1:]))
        h0 = f"h{sel['horizon']}" if sel.get("horizon") is not None else (horizons[0] if horizons else "h1")
        return cls(inputs, cfg, models_csv, families, models, baselines, sel, horizons, h0,
                   (inputs.info.get("frequency") or {}).get("label", "?"), _period(inputs.split, "test"))


def _head(pg: _Page) -> str:
    e, title = html.escape, html.escape(pg.cfg.title)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>"
            f"<body><main><h1>{title}</h1>"
            f"<p class=\"sub\">Test period <b>{pg.test}</b> · {len(pg.models)} models, {len(pg.baselines)} baselines · "
            f"horizons {', '.join(h[1:] for h in pg.horizons)} bars · {e(pg.freq)} bars</p>")


def _data_section(pg: _Page) -> str:
    """The data, the segments and what each was used for, and how to read the figures."""
    e, split, info = html.escape, pg.inputs.split, pg.inputs.info
    symbols = info.get("symbols") or {}
    seg_rows = "".join(
        f"<tr><td class=\"name\">{s}</td><td>{_day((split.get(s) or {}).get('start'))}</td>"
        f"<td>{_day((split.get(s) or {}).get('end'))}</td><td>{_fmt((split.get(s) or {}).get('rows'), 'int')}</td>"
        f"<td class=\"fam\">{desc}</td></tr>"
        for s, desc in (("train", "models fit here"), ("val", "early stopping, ensemble weights, calibration"),
                        ("test", "every figure in this report"),
                        ("purged", "dropped: labels overlapping the next segment, plus the embargo"))
        if s in split)
    sym = ", ".join(f"{e(str(k))} ({v:,} bars)" for k, v in symbols.items())
    return (
        "<div class=\"grid\"><div class=\"box\"><h3>Data</h3>"
        f"<p>Source <b>{e(str(info.get('source', '?')))}</b>, {e(pg.freq)} bars, "
        f"{_day(info.get('start'))} – {_day(info.get('end'))}.<br>{len(symbols)} symbols: {sym}.</p>"
        "<table><thead><tr><th class=\"name\">segment</th><th>start</th><th>end</th><th>rows</th>"
        f"<th class=\"name\">used for</th></tr></thead><tbody>{seg_rows}</tbody></table></div>"
        "<div class=\"box note\"><h3>How to read this</h3><ul>"
        "<li><b>IC</b> is the correlation of forecast and realised return over all test rows, shown ± its "
        "standard error from a bootstrap of whole test dates in blocks (rows of one date share the market, "
        "so they are not independent); <b>IC t</b> is IC / SE. <b>CS IC</b> is the mean per-date "
        "cross-sectional IC ± its Newey–West SE (lag h − 1). For daily returns an IC of 0.02–0.06 is "
        "realistic and useful; above 0.1 is rare and deserves a leakage check.</li>"
        "<li><b>Sharpe net</b> is the annualised Sharpe ratio of a per-symbol sign strategy (long if the "
        "forecast is positive, short if negative) after trading costs, on non-overlapping h-bar periods "
        "of one clock for all symbols, averaged over the h possible start offsets; annual returns are "
        "arithmetic. <b>L/S</b> is the long/short book of the top and bottom names (tied names share "
        "the slots).</li>"
        "<li>Green cells: best model per column. Orange cells: a naive baseline beats every model on that "
        "figure. Baselines (zero, train mean, momentum, buy and hold) are what any model must beat.</li>"
        "<li>The test period was never used to fit, stop or select anything. With a few hundred test "
        "periods, a Sharpe ratio has a standard error of about 1 (annualised), so small differences are noise; "
        "the deflated Sharpe ratio below accounts for picking the best of several models.</li></ul></div></div>")


def leakage_flags(metrics: dict[str, Any], horizons: list[str], names: list[str]) -> list[str]:
    """One line of text per figure that calls for a leakage check: ``|IC| > LEAK_IC`` at any
    horizon, directional accuracy above ``LEAK_DIR_ACC`` at the 1-bar horizon."""
    flags = []
    for name in names:
        for h in horizons:
            row = (metrics.get(name) or {}).get(h) or {}
            ic, se, acc = row.get("ic"), row.get("ic_se"), row.get("dir_acc")
            if isinstance(ic, (int, float)) and math.isfinite(ic) and abs(ic) > LEAK_IC:
                err = f" ± {se:.4f}" if isinstance(se, (int, float)) and math.isfinite(se) else ""
                flags.append(f"{name}, horizon {h[1:]}: IC {ic:+.4f}{err} (|IC| above {LEAK_IC:g})")
            if h == "h1" and isinstance(acc, (int, float)) and math.isfinite(acc) and acc > LEAK_DIR_ACC:
                flags.append(f"{name}, horizon 1: directional accuracy {100 * acc:.1f}% "
                             f"(above {100 * LEAK_DIR_ACC:g}%)")
    return flags


def _leakage_section(pg: _Page) -> str:
    """Figures too good to take at face value (the oracle is the truth and is not checked)."""
    flags = leakage_flags(pg.inputs.metrics, pg.horizons, pg.models + pg.baselines)
    if not flags:
        return (f"<p class=\"sub\">Leakage check: no model has |IC| above {LEAK_IC:g} or 1-bar directional "
                f"accuracy above {100 * LEAK_DIR_ACC:g}%.</p>")
    items = "".join(f"<li>{html.escape(f)}</li>" for f in flags)
    return ("<div class=\"box leak\"><h3>Check for leakage</h3><p>These figures are above what forecasts "
            f"of returns usually reach (|IC| {LEAK_IC:g}, 1-bar directional accuracy {100 * LEAK_DIR_ACC:g}%). "
            "Before trusting them, check that no feature uses information from after the forecast time and "
            "that labels do not overlap the training data (<code>alphafactory audit</code>); with few "
            f"independent test periods (long horizons) read them with their error bars.</p><ul>{items}</ul></div>")


def _selection_section(pg: _Page) -> str:
    """The selected model, its probabilistic and deflated Sharpe ratios."""
    sel = pg.sel
    if not sel.get("best_model"):
        return ""
    return (
        "<h2>Best model and its deflated Sharpe ratio</h2><div class=\"box\"><p>"
        f"At horizon <b>{sel['horizon']}</b>, the highest net Sharpe among {len(sel.get('candidates') or [])} models "
        f"(baselines excluded) is <b>{html.escape(str(sel['best_model']))}</b>: {_fmt(sel.get('sharpe'), 'f2')} "
        f"annualised ({_fmt(sel.get('sharpe_per_period'), 'f4')} per period over {sel.get('n_periods')} "
        f"periods; skew {_fmt(sel.get('skew'), 'f2')}, kurtosis {_fmt(sel.get('kurtosis'), 'f2')}).<br>"
        f"Probabilistic Sharpe ratio (true Sharpe &gt; 0): <b>{_fmt(sel.get('psr'), 'f3')}</b>. "
        f"<b>Deflated Sharpe ratio</b> (true Sharpe &gt; the expected best of {sel.get('n_trials')} "
        f"skill-less trials{_trials_note(sel)}, {_fmt(sel.get('expected_max_sharpe'), 'f4')} per period): "
        f"<b>{_fmt(sel.get('dsr'), 'f3')}</b>. Values above 0.95 indicate a Sharpe ratio unlikely to be "
        "luck of the selection.</p></div>")


def _trials_note(sel: dict[str, Any]) -> str:
    """How the DSR's trials were counted and spread, for its sentence ("" for an older test.json)."""
    parts = []
    if sel.get("extra_trials"):
        parts.append(f"{sel.get('n_candidates')} models + {sel['extra_trials']} tuning trials")
    source = {"candidates": "the variance of the candidates' Sharpe ratios",
              "noise": "the Sharpe variance of pure noise"}.get(sel.get("sharpe_var_source"))
    if source:
        parts.append(f"spread by {source}, {_fmt(sel.get('sharpe_trials_var'), 'e')}")
    return f" ({'; '.join(parts)})" if parts else ""


# tune.metric → the test.json figure it is compared with
TUNE_TEST_FIGURE = {"ic": "ic", "rank_ic": "rank_ic", "icir": "cs_icir", "sharpe": "sharpe"}


def fig_tune_history(trials: pd.DataFrame, metric: str) -> str:
    """Optimisation history: each complete trial's mean CV score, the best so far, one panel row
    per model; pruned trials marked at the bottom."""
    names = list(dict.fromkeys(trials["model"]))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.8 * len(names)), squeeze=False)
        for ax, name in zip(axes[:, 0], names, strict=True):
            t = trials[trials["model"] == name]
            done, pruned = t[t["state"] == "COMPLETE"], t[t["state"] == "PRUNED"]
            ax.plot(done["number"], done["value"], "o", ms=4, color="#1f77b4", label="complete trial")
            ax.step(t["number"], t["best_so_far"],
                    where="post", color="#d62728", lw=1.6, label="best so far")
            if len(pruned):
                lo = done["value"].min() if len(done) else 0.0
                ax.plot(pruned["number"], np.full(len(pruned), lo), "x", color="0.5", label="pruned")
            ax.set_title(name, fontsize=9)
            ax.set_ylabel(f"mean CV {metric}")
            ax.legend(loc="lower right", frameon=False, fontsize=8)
        axes[-1, 0].set_xlabel("trial")
        return _svg(fig)


def fig_tune_importance(importance: dict[str, dict[str, float]]) -> str:
    """fANOVA importance of each tuned hyperparameter, one bar group per model."""
    rows = [(f"{m}: {k}", v) for m, imp in importance.items() for k, v in sorted(imp.items(), key=lambda kv: kv[1])]
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(rows) + 0.8))
        ax.barh([r[0] for r in rows], [100 * r[1] for r in rows], color="#1f77b4")
        ax.set_xlabel("share of the CV-score variance explained (fANOVA), %")
        ax.grid(axis="y", visible=False)
        return _svg(fig)


def _tuning_section(pg: _Page) -> str:
    """The tune stage's studies: trials, CV scores and their spread, the CV-vs-test gap of each
    winner, the optimisation history and parameter importances. Empty when nothing was tuned."""
    tune = pg.inputs.tune or {}
    studies = tune.get("models") or {}
    if not studies:
        return ""
    applied = "applied to training (tune.apply: true)" if tune.get("apply") else \
        "<b>not</b> applied (tune.apply: false: the models were trained with their hand-set params)"
    rows = []
    for name, st in studies.items():
        metric, h = st["metric"], st.get("horizon")
        fig = TUNE_TEST_FIGURE[metric]
        hs = [h] if h is not None else [int(k[1:]) for k in pg.horizons]
        vals = [(pg.inputs.metrics.get(name) or {}).get(f"h{x}", {}).get(fig) for x in hs]
        test = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
        cv, se, sp = st.get("best_value"), st.get("best_fold_se"), st.get("spread") or {}
        gap = test - cv if test is not None and cv is not None else None
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{st['n_trials']}</td><td>{st['pruned']}</td>"
                    f"<td>{html.escape(metric)} {'h' + str(h) if h is not None else '(mean of horizons)'}</td>"
                    f"<td>{_fmt(cv, 'f4')} ± {_fmt(se, 'f4')}</td><td>{_fmt(sp.get('min'), 'f4')} / "
                    f"{_fmt(sp.get('median'), 'f4')} / {_fmt(sp.get('max'), 'f4')}</td><td>{_fmt(sp.get('std'), 'f4')}"
                    f"</td><td>{_fmt(test, 'f4')}</td><td>{_fmt(gap, 'f4')}</td></tr>")
    out = ["<h2>Hyperparameter tuning</h2><div class=\"box\"><p>",
           f"{tune.get('n_trials')} trials in all, scored on the purged CV folds of train + val only (the test "
           f"period never reached the objective); the best params were {applied}. The deflated Sharpe ratio "
           f"above counts every trial as a strategy tried.</p><table><tr><th>model</th><th>trials</th>"
           "<th>pruned</th><th>metric</th><th>best CV (± fold SE)</th><th>CV min / median / max</th>"
           "<th>CV std</th><th>test</th><th>test − CV</th></tr>", *rows, "</table></div>"]
    if pg.inputs.tune_trials is not None and len(pg.inputs.tune_trials):
        out.append(_figure(fig_tune_history(pg.inputs.tune_trials, next(iter(studies.values()))["metric"]),
                           "Optimisation history: mean CV score of each complete trial and the best so far."))
    importance = {m: st["importance"] for m, st in studies.items() if st.get("importance")}
    if importance:
        out.append(_figure(fig_tune_importance(importance), "Parameter importance (fANOVA over the complete trials)."))
    return "".join(out)


def _comparison_section(pg: _Page) -> str:
    """One comparison table per horizon."""
    m = pg.inputs.metrics
    parts = [f"<h2>Model comparison on the test period ({pg.test})</h2>"]
    columns = tuple(pg.cfg.metrics)
    if any("accuracy" in (m.get(name) or {}).get(pg.h0, {}) for name in pg.models):  # train.task: classification
        columns += tuple(k for k in CLASS_METRICS if k not in columns)
    for h in pg.horizons:
        parts.append(f"<h3>Horizon {h[1:]} bar{'s' if h != 'h1' else ''} ahead</h3>")
        parts.append(comparison_table(m, h, columns, pg.families, pg.sel.get("best_model") if h == pg.h0 else None))
    parts.append("<p class=\"sub\">± is one standard error (IC: date-block bootstrap; CS IC: Newey–West). "
                 "Returns and drawdowns are net of trading costs; the h-bar strategies hold non-overlapping "
                 "h-bar periods, and their figures are means over the h start offsets. – means undefined "
                 "(e.g. the IC of a constant forecast).</p>")
    return "".join(parts)


def _performance_section(pg: _Page) -> str:
    """Cumulative return and rolling IC over the test period; forecast against realised, calibration
    and confusion of the focus model (the ensemble when there is one)."""
    e, m, plots, h0, test = html.escape, pg.inputs.metrics, pg.inputs.plots, pg.h0, pg.test
    parts = [f"<h2>Performance over the test period (horizon {h0[1:]})</h2>"]
    cum = _wide(plots.get("cumulative_return.csv"), "cumulative_return")
    if cum is not None and len(cum):
        log.info("report: cumulative return figure")
        parts.append(_figure(fig_cumulative(cum, pg.models, pg.baselines, pg.sel.get("best_model")),
                             f"Cumulative net return of the sign strategy, {_span(cum)} (test period, "
                             f"{h0[1:]}-bar horizon, compounded). Thick line: the best model by net Sharpe."
                             + _WF_LINES * any(n.endswith(WALK_FORWARD) for n in cum.columns)))
    roll = _wide(plots.get("rolling_ic.csv"), "rolling_ic")
    if roll is not None and len(roll):
        log.info("report: rolling IC figure")
        window = str(pg.inputs.ic_window or "?")
        parts.append(_figure(fig_rolling_ic(roll, pg.models, pg.baselines, window),
                             f"Rolling IC over the trailing {window} test bars, all symbols pooled, "
                             f"{_span(roll)} (the first window ends {_day(roll['timestamp'].iloc[0])})."
                             + _WF_LINES * any(n.endswith(WALK_FORWARD) for n in roll.columns)))
    sc, cal = plots.get("predicted_vs_realised.csv"), plots.get("calibration.csv")
    focus = "ensemble" if "ensemble" in m else (pg.models[0] if pg.models else "?")
    cells = []
    if sc is not None and len(sc):
        log.info("report: predicted vs realised figure")
        cells.append(_figure(fig_scatter(sc, focus), f"{e(focus)} forecast against the realised "
                             f"{h0[1:]}-bar target, {len(sc):,} test rows ({test})."))
    if cal is not None and len(cal):
        log.info("report: calibration figure")
        cover = (m.get(focus) or {}).get(h0) or {}
        cov = ", ".join(f"±{k[6:]}σ: {_fmt(cover[k], 'pct')}" for k in ("cover_1.00", "cover_1.645", "cover_1.96")
                        if isinstance(cover.get(k), (int, float)))
        cells.append(_figure(fig_calibration(cal, focus), f"Calibration of {e(focus)}'s P(up) on the test rows "
                             f"({test}), {len(cal)} bins of equal row counts ({int(cal['count'].sum()):,} rows)."
                             + (f" Interval coverage (nominal 68.3%, 90%, 95%): {cov}." if cov else "")))
    else:
        cells.append("<p class=\"sub\">No calibration figure: the forecasts carry no <code>prob_up</code>.</p>")
    conf = plots.get("confusion.csv")
    if conf is not None and len(conf):
        log.info("report: confusion matrix")
        cells.append(confusion_html(conf, test))
    parts.append(f"<div class=\"grid\">{''.join(cells)}</div>")
    return "".join(parts)


_WF_LINES = (" Dash-dotted: the walk-forward refit (<code>_wf</code>) of the model of the same colour,"
             " refitted through the test period.")


def _walk_forward_section(pg: _Page) -> str:
    """Single fit against walk-forward refit: IC ± SE and net Sharpe of each refitted model and
    of the model it refits, per horizon ("" when the backtest stage scored nothing)."""
    m = pg.inputs.metrics
    refits = [w for w in (m.get("_models") or {}).get("walk_forward", []) if w.removesuffix(WALK_FORWARD) in m]
    if not refits:
        return ""

    def fig(name: str, h: str) -> tuple[str, str, float]:
        r = (m.get(name) or {}).get(h) or {}
        ic, se, sharpe = (r.get(k) for k in ("ic", "ic_se", "sharpe"))
        ok = isinstance(ic, (int, float)) and math.isfinite(ic)
        return (f"{_fmt(ic, 'f4')} ± {_fmt(se, 'f4')}" if ok else "–", _fmt(sharpe, "f2"),
                float(ic) if ok else math.nan)

    head = "".join(f"<th colspan=\"3\">horizon {h[1:]}</th>" for h in pg.horizons)
    sub = "<th>IC ± SE</th><th>Sharpe net</th><th>ΔIC</th>" * len(pg.horizons)
    rows = []
    for w in refits:
        single = w.removesuffix(WALK_FORWARD)
        for name, label in ((single, "single fit"), (w, "walk-forward")):
            cells = []
            for h in pg.horizons:
                ic_txt, sharpe_txt, ic = fig(name, h)
                delta = ic - fig(single, h)[2] if name == w else math.nan
                cells.append(f"<td>{ic_txt}</td><td>{sharpe_txt}</td><td>{_fmt(delta, 'f4') if name == w else ''}</td>")
            rows.append(f'<tr><td class="name">{html.escape(name)}</td><td class="fam">{label}</td>{"".join(cells)}</tr>')
    return ("<h2>Does the edge survive refitting?</h2><p class=\"sub\">Each <code>_wf</code> model is its single "
            "fit refitted every <code>backtest.retrain_every</code> test bars on the rows before each block (purged and "
            "embargoed as the CV folds) and forecasting only that block; both are scored on the same test rows "
            f"({pg.test}). IC ± block-bootstrap SE; ΔIC = walk-forward IC − single-fit IC.</p>"
            f'<div class="wide"><table><thead><tr><th class="name">model</th><th class="name">fit</th>{head}</tr>'
            f'<tr><th></th><th></th>{sub}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _explanations_section(pg: _Page) -> str:
    """Tree SHAP shares and permutation importance."""
    e, test, models_csv = html.escape, pg.test, pg.models_csv
    top, perm = pg.inputs.explain.get("top_features.csv"), pg.inputs.explain.get("permutation.csv")
    cells = []
    if top is not None and len(top):
        log.info("report: top features figure")
        shap_models = ", ".join(models_csv.loc[models_csv["method"] == "shap", "model"])
        cells.append(_figure(fig_top_features(top, pg.cfg.top_features),
                             f"Top {min(pg.cfg.top_features, len(top))} features by tree SHAP ({e(shap_models)}): "
                             f"each feature's share of the mean |SHAP| on test rows ({test}), averaged over "
                             "models and horizons."))
    if perm is not None and len(perm):
        log.info("report: permutation importance figure")
        hp = int(pg.h0[1:]) if int(pg.h0[1:]) in set(perm["horizon"]) else int(perm["horizon"].min())
        n_rows = int(perm["n_rows"].max())
        spread = perm.loc[perm["horizon"] == hp, "ic_drop_std"].median()
        cells.append(_figure(fig_permutation(perm, hp),
                             f"Permutation importance at horizon {hp}: drop in test IC when the feature "
                             f"is shuffled across up to {n_rows:,} test rows ({test}), mean over seeds "
                             f"(median spread between seeds {_fmt(spread, 'f3')}). Positive: the model relies "
                             "on it; near zero or negative: it does not."))
    body = (f"<div class=\"grid\">{''.join(cells)}</div>" if cells
            else "<p class=\"sub\">No explanations were computed.</p>")
    return "<h2>What the models use</h2>" + body


def _footer(pg: _Page) -> str:
    return ("<p class=\"sub\">Made by the <code>report</code> stage from <code>metrics/test.json</code>, "
            "<code>metrics/plots/</code>, <code>metrics/explain/</code> and <code>data/split/summary.json"
            "</code>. Training curves: <code>dvc plots show</code>.</p></main></body></html>\n")


# The report's sections, top to bottom: each takes the page and returns its HTML ("" to leave it out).
SECTIONS = (_head, _data_section, _leakage_section, _selection_section, _tuning_section, _comparison_section,
            _walk_forward_section, _performance_section, _explanations_section, _footer)


def render(inputs: ReportInputs, cfg: ReportConfig) -> str:
    """The whole report as one HTML string (see the module docstring): its :data:`SECTIONS` in order."""
    page = _Page.of(inputs, cfg)
    return "".join(section(page) for section in SECTIONS)
