"""Leakage audit: ``alphafactory audit`` runs the library's own code path in-process (no DVC)
on synthetic panels whose truth is known, and reports six checks, each with its statistic,
threshold and PASS/FAIL. The exit code is 0 only if every check that ran passed.

The code path is the pipeline's: ``load_bars`` (synthetic source, validated) →
``compute_features`` + warm-up drop → ``make_labels`` → ``assign_segments`` / ``make_folds`` →
``assemble`` → ``fit_models`` (each family with its params block) → ``Stacker`` → ``metrics``.
Settings come from ``params.yaml`` (features, label, split, model blocks, train, blend), so the
audit checks the configuration the pipeline runs.

Checks
------
causality   Features are recomputed after truncating, then perturbing, every bar after each of
            ``cuts`` cut points, on a ragged panel (late listings, delistings, gaps). Statistic:
            features whose value at or before a cut moved (tolerance 1e-5 relative); threshold 0.
            ``inject_leak`` adds ``leak_fwd_ret_h{h}``, the future h-bar return (shortest h), to
            the features everywhere, to show that this check (and ``innovation``) flag it.
labels      Recomputed from the bars, not read from the label stage: each label's end bar and log
            return, the dataset's targets, and the label windows of every segment and CV fold
            (configured mode, plus CPCV). Statistic: violating rows (a train/val label ending at
            or after the next segment's first timestamp; a fold's training label window
            overlapping one of its test label windows; a fold row reaching the test segment; a
            wrong label or target); threshold 0.
permuted    Targets of the planted-signal panel shuffled within train and within val (whole rows,
            all horizons); every model and ensemble refit. Statistic: the largest
            |IC(forecast, y - oracle)| / SE over models and horizons; threshold 3. The raw IC
            against y is reported too, but it is not the statistic: a model fit to shuffled
            targets is a random function of the features, and on a panel with signal such a
            function correlates with the predictable part of y by chance, by more than sampling
            error (seen: 2.8 SE on a clean pipeline). Against the innovation y - oracle, which no
            causal forecast can know, the null holds exactly, so 3 SE means what it says.
noise       A pure-noise panel (``signal_strength`` 0, oracle 0): every model's and ensemble's
            |test IC| / SE <= 3 at every horizon.
signal      Planted signal: the stacking ensemble's test IC over the oracle's IC on the same rows,
            at the shortest horizon (where the signal strength is defined), >= ``min_share``
            (0.75). Every model's IC and share at every horizon is reported. ``signal`` (CLI
            ``--signal``) picks the kind of planted signal (``data.synthetic.signal``: linear,
            cross_sectional, interaction, regime, drift, mixed); the noise panel is the same for
            all. The permuted and innovation checks run on that panel too, against the raw
            return whatever ``label.normalize`` trains on.
innovation  On the planted-signal fit, every model's |IC(forecast, y - oracle)| / SE <= 3: a model
            that predicts the innovation sees the future, whatever its IC against y.

Standard error of an IC
-----------------------
The IC is the pooled Pearson correlation over n test rows (symbols x timestamps). Under the
null of no relation its variance is not 1/n: h-bar labels of consecutive bars overlap (h - 1
shared bars) and symbols share a market factor, so the per-row terms are correlated in time and
across symbols. We use ``SE = max(sqrt(h / n), SE_nw)``: ``n_eff = n / h`` is the overlap
correction for independent symbols, and ``SE_nw`` is a Newey-West (Bartlett, 2h lags) estimate on
the per-timestamp sums of the standardised cross-products, which also covers cross-sectional
correlation. ``n_eff = 1 / SE^2`` is reported.
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphafactory import models
from alphafactory.blend import BlendConfig, Stacker
from alphafactory.config import from_dict, load_params, section, to_dict
from alphafactory.data.frequency import FrequencyInfo, infer_frequency
from alphafactory.data.sources import DataConfig, load_bars
from alphafactory.data.synthetic import SIGNALS, SyntheticConfig
from alphafactory.dataset import assemble, drop_warmup
from alphafactory.errors import ConfigError
from alphafactory.evaluation import metrics
from alphafactory.evaluation.evaluate import scored_rows
from alphafactory.features import FeatureConfig, compute_features, warmup_bars
from alphafactory.io import write_json
from alphafactory.labels import KEYS, LabelConfig, make_labels
from alphafactory.split import SEGMENTS, SplitConfig, assign_segments, make_folds
from alphafactory.train import fit_models

log = logging.getLogger(__name__)

CHECKS = ("causality", "labels", "permuted", "noise", "signal", "innovation")
DEFAULT_MODELS = ("lightgbm", "xgboost", "catboost", "lstm", "tcn")
QUICK_MODELS = ("lightgbm",)
RTOL, ATOL = 1e-5, 1e-6  # float32 features recomputed on a different panel layout
CHECK_SYMBOLS = 12  # symbols of the ragged panel of the causality and label checks
THREAD_KEYS = {"num_threads", "nthread", "thread_count", "threads", "n_jobs"}


@dataclass(frozen=True)
class AuditConfig:
    """What the audit runs. Panels: ``symbols`` x ``bars`` daily bars; the planted-signal panel
    uses ``seed`` and ``signal_strength``, the noise panel ``seed + 1`` and strength 0.
    ``horizons`` None = ``label.horizons`` of the params."""

    models: tuple[str, ...] = DEFAULT_MODELS
    checks: tuple[str, ...] = CHECKS
    symbols: int = 30
    bars: int = 1500
    signal_strength: float = 0.1
    signal: str = "linear"  # kind of the planted signal (data.synthetic.signal)
    seed: int = 7
    horizons: tuple[int, ...] | None = None
    cuts: int = 3  # cut points of the causality check
    z: float = 3.0  # standard errors allowed by the IC checks
    min_share: float = 0.75  # ensemble IC / oracle IC required by the signal check
    inject_leak: bool = False
    threads: int | None = None  # CPU threads of every model and the blend (None: as in params)
    model_groups: tuple[str, ...] | None = None  # feature groups of the fits (None: features.groups)

    def validate(self) -> None:
        bad = [c for c in self.checks if c not in CHECKS]
        if bad or not self.checks:
            raise ConfigError(f"audit checks: got {list(self.checks)}, "
                              f"expected a non-empty subset of {list(CHECKS)}")
        unknown = [m for m in self.models if m not in models.REGISTRY]
        if unknown or not self.models:
            raise ConfigError(f"audit models: got {list(self.models)}; unknown {unknown}, "
                              f"expected some of {sorted(models.REGISTRY)}")
        if self.symbols < 3:
            raise ConfigError(f"audit symbols: got {self.symbols}, expected >= 3 (cross-sectional features)")
        if self.bars < 400:
            raise ConfigError(f"audit bars: got {self.bars}, expected >= 400 (warm-up, segments, folds)")
        if self.signal not in SIGNALS:
            raise ConfigError(f"audit signal: got {self.signal!r}, expected one of {list(SIGNALS)}")
        if not 0.0 < self.signal_strength < 1.0:
            raise ConfigError(f"audit signal_strength: got {self.signal_strength}, expected 0 < x < 1")
        if self.cuts < 1:
            raise ConfigError(f"audit cuts: got {self.cuts}, expected >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"audit threads: got {self.threads}, expected >= 1")


QUICK_GROUPS = ("returns", "volatility", "volume")  # the groups that carry the planted signal


def quick_config(**overrides: Any) -> AuditConfig:
    """The ``--quick`` audit, same checks and thresholds on less work: LightGBM only, horizons 1
    and 5, 2 cut points, single-threaded fits on the returns/volatility/volume feature groups
    (the causality and label checks still use every configured feature)."""
    base = {"models": QUICK_MODELS, "horizons": (1, 5), "cuts": 2, "threads": 1,
            "model_groups": QUICK_GROUPS}
    return AuditConfig(**{**base, **overrides})


# ---------------------------------------------------------------------------------------------
# settings from params.yaml
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The pipeline configuration the audit reuses (resolved from a params mapping)."""

    features: FeatureConfig
    label: LabelConfig
    split: SplitConfig
    blend: BlendConfig
    seed: int
    lookback: int
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # params block per model
    trainer: dict[str, Any] = field(default_factory=dict)

    def with_threads(self, n: int) -> Settings:
        """Every model block, the neural trainer and the blend's CatBoost on ``n`` CPU threads."""
        blocks = dict(self.blocks)
        for spec in models.REGISTRY.values():
            keys = THREAD_KEYS & {f.name for f in fields(spec.cls.Params)}
            if keys:
                blocks[spec.name] = {**blocks.get(spec.name, {}), **{k: n for k in keys}}
        blend = replace(self.blend, catboost=replace(self.blend.catboost, thread_count=n))
        return replace(self, blocks=blocks, trainer={**self.trainer, "threads": n}, blend=blend)

    @classmethod
    def from_params(cls, params: dict[str, Any], horizons: tuple[int, ...] | None) -> Settings:
        label = section(params, "label", LabelConfig)
        if horizons is not None:
            label = from_dict(LabelConfig, {**to_dict(label), "horizons": list(horizons)}, "label")
        train = params.get("train") or {}
        blocks = {}
        for spec in models.REGISTRY.values():
            block = (params.get(spec.family) or {}).get(spec.name)
            if block is not None:
                blocks[spec.name] = block
        return cls(
            features=section(params, "features", FeatureConfig), label=label,
            split=section(params, "split", SplitConfig), blend=section(params, "blend", BlendConfig),
            seed=int(train.get("seed", 42)), lookback=int(train.get("lookback", 32)), blocks=blocks,
            trainer=dict((params.get("neural") or {}).get("trainer") or {}),
        )


# ---------------------------------------------------------------------------------------------
# panels and features
# ---------------------------------------------------------------------------------------------


def synthetic_panel(cfg: AuditConfig, strength: float, seed: int,
                    horizons: tuple[int, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(bars, oracle) of a synthetic daily panel through the prepare stage's ``load_bars``."""
    syn = SyntheticConfig(symbols=cfg.symbols, bars=cfg.bars, seed=seed, signal_strength=strength,
                          signal=cfg.signal)
    bars, oracle = load_bars(DataConfig(source="synthetic", synthetic=syn, min_bars=cfg.bars), horizons=horizons)
    assert oracle is not None  # the synthetic source always has one
    return bars, oracle


def ragged(bars: pd.DataFrame, seed: int, n_symbols: int = CHECK_SYMBOLS) -> pd.DataFrame:
    """The first ``n_symbols`` symbols with uneven histories: a third list late, a third delist
    early (15% of bars each), and 0.5% of all bars are missing (gaps)."""
    rng = np.random.default_rng(seed)
    bars = bars[bars["symbol"].isin(pd.unique(bars["symbol"])[:n_symbols])].reset_index(drop=True)
    codes = pd.factorize(bars["symbol"])[0]
    pos = bars.groupby("symbol", sort=False).cumcount().to_numpy()
    n = bars.groupby("symbol", sort=False)["timestamp"].transform("size").to_numpy()
    cut = (0.15 * n).astype(int)
    keep = ~(((codes % 3 == 1) & (pos < cut)) | ((codes % 3 == 2) & (pos >= n - cut)))
    keep &= rng.random(len(bars)) >= 0.005
    return bars[keep].reset_index(drop=True)


def leak_name(h: int) -> str:
    return f"leak_fwd_ret_h{h}"


def future_return(bars: pd.DataFrame, h: int) -> np.ndarray:
    """(n,) log(close[t+h] / close[t]) within each symbol, NaN for the last h bars: the
    deliberately leaked feature of ``--inject-leak``."""
    logc = np.log(bars["close"].to_numpy(np.float64))
    ahead = pd.Series(logc, index=bars.index).groupby(bars["symbol"].to_numpy(), sort=False).shift(-h)
    return (ahead.to_numpy() - logc).astype(np.float32)


Featurizer = Callable[[pd.DataFrame, FrequencyInfo], pd.DataFrame]


def make_featurizer(fcfg: FeatureConfig, leak_h: int | None) -> Featurizer:
    """bars → the pipeline's features (warm-up kept), plus the leaked column if ``leak_h``."""

    def featurize(bars: pd.DataFrame, freq: FrequencyInfo) -> pd.DataFrame:
        feats = compute_features(bars, fcfg, freq=freq)
        if leak_h is not None:
            feats[leak_name(leak_h)] = future_return(bars, leak_h)
        return feats

    return featurize


@dataclass
class Panel:
    """One panel through featurize, label and split: features (warm-up dropped), labels and
    segments (one row per labels row), plus the oracle (``symbol, timestamp, horizon, yhat``)."""

    features: pd.DataFrame
    labels: pd.DataFrame
    segments: pd.DataFrame
    oracle: pd.DataFrame


def build_panel(bars: pd.DataFrame, oracle: pd.DataFrame, st: Settings,
                featurize: Featurizer) -> Panel:
    """bars → features (warm-up dropped), labels and segments, as the pipeline's stages do."""
    freq = infer_frequency(bars)
    feats = drop_warmup(featurize(bars, freq), warmup_bars(st.features, freq))
    labels = make_labels(bars, st.label)
    return Panel(feats, labels, assign_segments(labels, st.label.horizons, st.split), oracle)


# ---------------------------------------------------------------------------------------------
# check results and IC statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One line of the report: PASS when ``statistic <rule> threshold`` (NaN fails)."""

    name: str
    statistic: float
    threshold: float
    rule: str  # "<=" or ">=": how statistic must compare with threshold
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.statistic):
            return False
        return self.statistic <= self.threshold if self.rule == "<=" else self.statistic >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def ic_stats(y: np.ndarray, yhat: np.ndarray, timestamps: np.ndarray, h: int) -> dict[str, float]:
    """Pooled Pearson IC of (n,) forecasts with (n,) realised h-bar returns and its standard
    error under no relation: ``max(sqrt(h / n), SE_nw)`` (module docstring). Returns ic, se,
    n_eff = 1 / se^2, n and z = ic / se; ic and z are NaN for a constant forecast."""
    y = np.asarray(y, np.float64)
    f = np.asarray(yhat, np.float64)
    n = len(y)
    ic = metrics.regression_metrics(y, f)["ic"]
    se = math.sqrt(h / n)
    if np.std(f) > 0 and np.std(y) > 0:
        u = (y - y.mean()) / y.std()
        v = (f - f.mean()) / f.std()
        e = u * v - np.mean(u * v)
        s = pd.Series(e).groupby(np.asarray(timestamps)).sum().sort_index().to_numpy()  # (T,)
        lags = 2 * h
        lrv = float(s @ s)
        for k in range(1, min(lags, len(s) - 1) + 1):
            lrv += 2.0 * (1.0 - k / (lags + 1)) * float(s[k:] @ s[:-k])
        se = max(se, math.sqrt(max(lrv, 0.0)) / n)
    return {"ic": float(ic), "se": se, "n_eff": 1.0 / se**2, "n": int(n), "z": float(ic / se)}


def ics_on_test_rows(preds: pd.DataFrame, labels: pd.DataFrame,
                     horizons: tuple[int, ...]) -> dict[str, dict[str, dict]]:
    """{model: {"h<k>": stats}} on the test rows every model and the oracle forecast.

    preds: long test forecasts (symbol, timestamp, model, horizon, yhat) including the oracle's
    (model "oracle"). stats: :func:`ic_stats` of the forecast against the realised return y
    (``ic``, ``se``, ``n_eff``, ``n``, ``z``) and against the innovation ``y - oracle``
    (``ic_innov``, ``se_innov``, ``z_innov``): the part of y that no causal forecast can know, so
    its IC is 0 up to sampling error for every model that does not see the future."""
    out: dict[str, dict[str, dict]] = {}
    for h in horizons:
        table = scored_rows(preds, labels, h)
        if table.empty:
            raise ValueError(f"audit: no labelled test rows that every model forecast at horizon {h}")
        ts = table["timestamp"].to_numpy()
        y = table["ret"].to_numpy()  # the raw return, whatever label.normalize trains on
        innov = y - table["oracle"].to_numpy()
        for m in dict.fromkeys(preds["model"]):
            f = table[m].to_numpy()
            st = ic_stats(y, f, ts, h)
            inn = ic_stats(innov, f, ts, h)
            st.update(ic_innov=inn["ic"], se_innov=inn["se"], z_innov=inn["z"])
            out.setdefault(m, {})[f"h{h}"] = st
    return out


# ---------------------------------------------------------------------------------------------
# a. causality
# ---------------------------------------------------------------------------------------------


def perturb_after(bars: pd.DataFrame, cut: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Bars after ``cut`` with new prices and volumes (valid bar geometry); earlier bars as is."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    late = (out["timestamp"] > cut).to_numpy()
    k = int(late.sum())
    o = out.loc[late, "open"].to_numpy() * np.exp(rng.normal(0, 0.05, k))
    c = out.loc[late, "close"].to_numpy() * np.exp(rng.normal(0, 0.05, k))
    hi = np.maximum(np.maximum(o, c), out.loc[late, "high"].to_numpy() * np.exp(rng.normal(0, 0.05, k)))
    lo = np.minimum(np.minimum(o, c), out.loc[late, "low"].to_numpy() * np.exp(rng.normal(0, 0.05, k)))
    out.loc[late, ["open", "high", "low", "close"]] = np.column_stack([o, hi, lo, c])
    out.loc[late, "volume"] = out.loc[late, "volume"].to_numpy() * rng.lognormal(0, 0.5, k)
    return out


def changed_features(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Feature columns whose values differ between two feature frames of the same rows."""
    cols = [c for c in a.columns if c not in KEYS]
    if not (a[KEYS].reset_index(drop=True).equals(b[KEYS].reset_index(drop=True)) and cols == [
            c for c in b.columns if c not in KEYS]):
        raise AssertionError("feature frames of different rows or columns")  # internal invariant
    same = np.isclose(a[cols].to_numpy(np.float64), b[cols].to_numpy(np.float64),
                      rtol=RTOL, atol=ATOL, equal_nan=True)
    return [c for c, ok in zip(cols, same.all(axis=0), strict=True) if not ok]


def check_causality(bars: pd.DataFrame, featurize: Featurizer,
                    cuts: int, seed: int) -> Check:
    """a. No feature value at or before a cut moves when the bars after it are dropped or changed."""
    freq = infer_frequency(bars)
    full = featurize(bars, freq)
    stamps = np.sort(bars["timestamp"].unique())
    leaks: dict[str, list[str]] = {}
    moved_later = []
    for i, frac in enumerate(np.linspace(0.3, 0.85, cuts)):
        cut = pd.Timestamp(stamps[int(frac * (len(stamps) - 1))])
        early = (bars["timestamp"] <= cut).to_numpy()
        truncated = featurize(bars[early].reset_index(drop=True), freq)
        perturbed = featurize(perturb_after(bars, cut, seed + i), freq)
        bad = set(changed_features(full[early], truncated)) | set(changed_features(full[early], perturbed[early]))
        for name in bad:
            leaks.setdefault(name, []).append(str(cut.date()))
        # the perturbation must reach later features, or the comparison above proves nothing
        moved_later.append(len(changed_features(full[~early], perturbed[~early])))
    names = sorted(leaks)
    n_features = full.shape[1] - 2
    if min(moved_later) == 0:
        return Check("causality", math.nan, 0, "<=",
                     "perturbing later bars changed no later feature: the check is void",
                     {"features": n_features, "moved_after_cut": moved_later})
    summary = (f"{len(names)} of {n_features} features move when later bars change"
               + (f": {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}" if names else ""))
    return Check("causality", float(len(names)), 0, "<=", summary,
                 {"features": n_features, "leaking": leaks, "cuts": cuts, "moved_after_cut": moved_later})


# ---------------------------------------------------------------------------------------------
# b. labels, segments and folds recomputed from the bars
# ---------------------------------------------------------------------------------------------


def _bar_ahead(bars: pd.DataFrame, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(timestamp, log return) of the bar h bars later of the same symbol (NaT/NaN if none)."""
    g = bars.groupby("symbol", sort=False)
    end = g["timestamp"].shift(-h).to_numpy("datetime64[ns]")
    logc = np.log(bars["close"].to_numpy(np.float64))
    ahead = pd.Series(logc, index=bars.index).groupby(bars["symbol"].to_numpy(), sort=False).shift(-h).to_numpy()
    return end, ahead - logc


def _overlaps(start: np.ndarray, end: np.ndarray, t_start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """(n,) bool: does [start, end] intersect the union of the intervals [t_start, t_end]?"""
    order = np.argsort(t_start, kind="stable")
    s, e = t_start[order], np.maximum.accumulate(t_end[order])  # running reach of the union
    j = np.searchsorted(s, end, side="right") - 1  # last test interval starting at or before end
    return (j >= 0) & (e[np.maximum(j, 0)] >= start)


def check_labels(bars: pd.DataFrame, st: Settings, featurize: Featurizer) -> Check:
    """b. Labels, segments, dataset targets and CV folds against label ends recomputed from bars."""
    horizons = st.label.horizons
    H = max(horizons)
    labels = make_labels(bars, st.label)
    seg = assign_segments(labels, horizons, st.split)
    if not (labels[KEYS].equals(bars[KEYS].reset_index(drop=True)) and seg[KEYS].equals(labels[KEYS])):
        raise AssertionError("labels/segments rows differ from bars")  # internal invariant
    ts = bars["timestamp"].to_numpy("datetime64[ns]")
    counts: dict[str, int] = {}
    ends = {}
    for h in horizons:
        end, ret = _bar_ahead(bars, h)
        ends[h] = end
        got_end = labels[f"end_h{h}"].to_numpy("datetime64[ns]")
        got_ret = labels[f"ret_h{h}"].to_numpy()
        counts[f"label_end_h{h}"] = int((~((got_end == end) | (np.isnat(got_end) & np.isnat(end)))).sum())
        same = np.isclose(got_ret, ret, rtol=1e-9, atol=1e-12, equal_nan=True)
        counts[f"label_return_h{h}"] = int((~same).sum())
    end = ends[H]
    segment = seg["segment"].to_numpy()
    first = {s: ts[segment == s].min() for s in SEGMENTS}
    margins = {}
    for s, nxt in (("train", "val"), ("val", "test")):
        rows = segment == s
        counts[f"{s}_label_reaches_{nxt}"] = int((np.isnat(end[rows]) | (end[rows] >= first[nxt])).sum())
        counts[f"{s}_rows_after_{nxt}_starts"] = int((ts[rows] >= first[nxt]).sum())
        margins[f"{s}_last_label_end"] = str(pd.Timestamp(end[rows].max()))
        margins[f"{nxt}_first_timestamp"] = str(pd.Timestamp(first[nxt]))
    # targets in the model-ready dataset sit on the rows they belong to
    freq = infer_frequency(bars)
    ds = assemble(drop_warmup(featurize(bars, freq), warmup_bars(st.features, freq)), labels, seg, horizons)
    lab_rows = labels.reset_index()[KEYS + ["index"]]
    at = ds.keys.merge(lab_rows, on=KEYS, how="left", validate="1:1")["index"].to_numpy()
    for j, h in enumerate(horizons):
        want = labels[f"y_h{h}"].to_numpy()[at]
        same = np.isclose(ds.Y[:, j], want, rtol=1e-6, atol=1e-7, equal_nan=True)
        counts[f"dataset_target_h{h}"] = int((~same).sum())
    # CV folds: the configured mode, plus CPCV (training rows on both sides of a test block)
    modes = [st.split]
    if st.split.cv_mode != "cpcv":
        k = min(st.split.cv_test_groups, st.split.cv_folds - 1)
        modes.append(replace(st.split, cv_mode="cpcv", cv_train_bars=None, cv_test_groups=k))
    n_folds = 0
    idx = pd.MultiIndex.from_frame(bars[KEYS].reset_index(drop=True))
    for cfg in modes:
        folds = make_folds(labels, horizons, cfg)
        rows = idx.get_indexer(pd.MultiIndex.from_frame(folds[KEYS]))
        if (rows < 0).any():
            raise AssertionError("fold rows missing from the bars")  # internal invariant
        bad_overlap = bad_test = 0
        for _, f in folds.groupby("fold", sort=True):
            r = rows[f.index.to_numpy()]
            test = (f["role"] == "test").to_numpy()
            tr, te = r[~test], r[test]
            bad_overlap += int(_overlaps(ts[tr], end[tr], ts[te], end[te]).sum())
            bad_test += int(((ts[r] >= first["test"]) | np.isnat(end[r]) | (end[r] >= first["test"])).sum())
            n_folds += 1
        counts[f"{cfg.cv_mode}_fold_train_overlaps_test"] = bad_overlap
        counts[f"{cfg.cv_mode}_fold_rows_in_test_segment"] = bad_test
    total = int(sum(counts.values()))
    bad = {k: v for k, v in counts.items() if v}
    summary = (f"{total} violating rows over {len(labels)} labels, 3 segments, {n_folds} folds"
               + (f": {bad}" if bad else ""))
    return Check("labels", float(total), 0, "<=", summary, {"violations": counts, **margins})


# ---------------------------------------------------------------------------------------------
# permuted, noise, signal, innovation: fitted models
# ---------------------------------------------------------------------------------------------


def fit_and_forecast(panel: Panel, st: Settings, names: tuple[str, ...], work: Path,
                     labels_for_fit: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fit ``names`` (each family with its params) and the blend on one panel; return long test
    forecasts of every model and ensemble (symbol, timestamp, model, horizon, yhat).
    ``labels_for_fit``: targets to train and blend on (default the panel's own labels)."""
    labels = panel.labels if labels_for_fit is None else labels_for_fit
    horizons = st.label.horizons
    ds = assemble(panel.features, labels, panel.segments, horizons)
    preds = []
    for family in dict.fromkeys(models.get(n).family for n in names):
        members = tuple(n for n in names if models.get(n).family == family)
        extra = {"lookback": st.lookback, "trainer": st.trainer} if family == "neural" else None
        results = fit_models(ds, members, st.blocks, work / family, seed=st.seed, extra=extra)
        preds.extend(r.predictions for r in results)
    base = pd.concat(preds, ignore_index=True)
    stacker = Stacker(st.blend, list(names), horizons, seed=st.seed).fit(base, labels)
    out = pd.concat([base[base["segment"] == "test"], stacker.predict(base, "test")], ignore_index=True)
    return out[KEYS + ["model", "horizon", "yhat"]]


def with_oracle(preds: pd.DataFrame, oracle: pd.DataFrame) -> pd.DataFrame:
    """``preds`` plus the oracle's forecasts (model "oracle") for the same (symbol, timestamp)."""
    keys = preds[KEYS].drop_duplicates()
    o = oracle.merge(keys, on=KEYS, how="inner").assign(model="oracle")
    return pd.concat([preds, o[KEYS + ["model", "horizon", "yhat"]]], ignore_index=True)


def permuted_labels(labels: pd.DataFrame, segments: pd.DataFrame, horizons: tuple[int, ...],
                    seed: int) -> pd.DataFrame:
    """``labels`` with whole target rows (every y_h{h}) shuffled within train and within val."""
    out = labels.copy()
    cols = [out.columns.get_loc(f"y_h{h}") for h in horizons]
    rng = np.random.default_rng(seed)
    seg = segments["segment"].to_numpy()
    for s in ("train", "val"):
        rows = np.flatnonzero(seg == s)
        out.iloc[rows, cols] = labels.iloc[rng.permutation(rows), cols].to_numpy()
    return out


def check_null(name: str, ics: dict[str, dict[str, dict]], z: float, what: str, innovation: bool) -> Check:
    """c/d/f. Every model's test IC (against y, or with ``innovation`` against y - oracle) within
    z standard errors of 0 at every horizon. A constant forecast (IC undefined) carries no
    information and passes."""
    key, label = ("z_innov", "IC(y - oracle)") if innovation else ("z", "IC")
    ic_key = "ic_innov" if innovation else "ic"
    zs = {(m, hk): abs(s[key]) for m, per in ics.items() if m != "oracle" for hk, s in per.items()
          if math.isfinite(s[key])}
    constant = sorted({m for m, per in ics.items() if m != "oracle"
                       for s in per.values() if not math.isfinite(s[key])})
    worst = max(zs, key=zs.get) if zs else None
    stat = zs[worst] if worst else 0.0
    if worst:
        w = ics[worst[0]][worst[1]]
        summary = (f"{what}: max |{label}|/SE = {stat:.2f} ({worst[0]} {worst[1]}: {label} {w[ic_key]:+.4f}, "
                   f"SE {w['se_innov' if innovation else 'se']:.4f}, IC {w['ic']:+.4f})")
    else:
        summary = f"{what}: every forecast constant"
    if constant:
        summary += f"; constant forecasts (IC undefined, no signal): {constant}"
    return Check(name, float(stat), z, "<=", summary,
                 {"ic": {m: per for m, per in ics.items() if m != "oracle"}})


def check_signal(ics: dict[str, dict[str, dict]], horizons: tuple[int, ...], min_share: float) -> Check:
    """e. Stacking ensemble IC / oracle IC at the shortest horizon."""
    hk = f"h{min(horizons)}"
    if "ensemble" not in ics:
        raise ConfigError("audit: the blend produced no 'ensemble' (stacking) forecasts; "
                          "blend.methods must include ensemble")
    oic, eic = ics["oracle"][hk]["ic"], ics["ensemble"][hk]["ic"]
    share = eic / oic if oic > 0 else math.nan
    shares = {m: {k: (s["ic"] / ics["oracle"][k]["ic"] if ics["oracle"][k]["ic"] > 0 else math.nan)
                  for k, s in per.items()} for m, per in ics.items() if m != "oracle"}
    summary = (f"ensemble IC {eic:+.4f} / oracle IC {oic:+.4f} = share {share:.2f} at {hk} "
               f"(SE {ics['ensemble'][hk]['se']:.4f}, n {ics['ensemble'][hk]['n']})")
    return Check("signal", float(share), min_share, ">=", summary, {"ic": ics, "share": shares})



# ---------------------------------------------------------------------------------------------
# the audit
# ---------------------------------------------------------------------------------------------


def run_audit(cfg: AuditConfig | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the checks of ``cfg`` with the pipeline settings of ``params`` (a parsed params.yaml;
    None = library defaults). Returns the report: ``passed``, ``seconds``, ``config`` and
    ``checks`` (one dict per check: name, statistic, threshold, rule, passed, summary, detail)."""
    cfg = cfg or AuditConfig()
    cfg.validate()
    t0 = time.perf_counter()
    st = Settings.from_params(params or {}, cfg.horizons)
    horizons = st.label.horizons
    leak_h = min(horizons) if cfg.inject_leak else None
    featurize = make_featurizer(st.features, leak_h)
    fit_st = st if cfg.threads is None else st.with_threads(cfg.threads)
    if cfg.model_groups is not None:
        fit_st = replace(fit_st, features=replace(st.features, groups=tuple(cfg.model_groups)))
    fit_featurize = make_featurizer(fit_st.features, leak_h)
    checks: list[Check] = []
    bars, oracle = synthetic_panel(cfg, cfg.signal_strength, cfg.seed, horizons)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        log.info("audit: %s done in %.1f s", name, timings[name])
        return out

    if "causality" in cfg.checks:
        checks.append(timed("causality",
                            lambda: check_causality(ragged(bars, cfg.seed), featurize, cfg.cuts, cfg.seed)))
    if "labels" in cfg.checks:
        checks.append(timed("labels", lambda: check_labels(ragged(bars, cfg.seed), st, featurize)))
    names = cfg.models
    with tempfile.TemporaryDirectory(prefix="alphafactory-audit-") as tmp:
        work = Path(tmp)
        signal = None
        if {"permuted", "signal", "innovation"} & set(cfg.checks):
            signal = timed("signal panel", lambda: build_panel(bars, oracle, fit_st, fit_featurize))
        if {"signal", "innovation"} & set(cfg.checks):
            preds = timed("signal fit", lambda: fit_and_forecast(signal, fit_st, names, work / "signal"))
            ics = ics_on_test_rows(with_oracle(preds, signal.oracle), signal.labels, horizons)
            if "signal" in cfg.checks:
                checks.append(check_signal(ics, horizons, cfg.min_share))
            if "innovation" in cfg.checks:
                checks.append(check_null("innovation", ics, cfg.z, "planted-signal fit", innovation=True))
        if "permuted" in cfg.checks:
            perm = permuted_labels(signal.labels, signal.segments, horizons, cfg.seed)
            preds = timed("permuted fit", lambda: fit_and_forecast(signal, fit_st, names, work / "permuted", perm))
            ics = ics_on_test_rows(with_oracle(preds, signal.oracle), signal.labels, horizons)
            checks.append(check_null("permuted", ics, cfg.z, "targets shuffled in train and val", innovation=True))
        if "noise" in cfg.checks:
            nbars, noracle = synthetic_panel(cfg, 0.0, cfg.seed + 1, horizons)
            noise = timed("noise panel", lambda: build_panel(nbars, noracle, fit_st, fit_featurize))
            preds = timed("noise fit", lambda: fit_and_forecast(noise, fit_st, names, work / "noise"))
            ics = ics_on_test_rows(with_oracle(preds, noise.oracle), noise.labels, horizons)
            checks.append(check_null("noise", ics, cfg.z, "pure-noise panel", innovation=False))
    order = {c: i for i, c in enumerate(CHECKS)}
    checks.sort(key=lambda c: order[c.name])
    return {
        "passed": all(c.passed for c in checks),
        "seconds": round(time.perf_counter() - t0, 1),
        "timings": timings,
        "config": {**asdict(cfg), "horizons": list(horizons),
                   "leak_feature": leak_name(leak_h) if leak_h else None},
        "checks": [c.to_dict() for c in checks],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a fixed-width table, plus per-model test ICs of the signal panel."""
    lines = [f"{'check':<10} {'statistic':>10} {'rule':>4} {'threshold':>9}  {'result':<6} summary"]
    for c in report["checks"]:
        stat = f"{c['statistic']:.3f}" if math.isfinite(c["statistic"]) else "nan"
        lines.append(f"{c['name']:<10} {stat:>10} {c['rule']:>4} {c['threshold']:>9.3g}  "
                     f"{'PASS' if c['passed'] else 'FAIL':<6} {c['summary']}")
    sig = next((c for c in report["checks"] if c["name"] == "signal"), None)
    if sig:
        ics = sig["detail"]["ic"]
        hks = list(ics["oracle"])
        lines.append("")
        lines.append("signal panel, test IC (share of the oracle's IC):")
        lines.append(f"{'model':<12}" + "".join(f"{hk:>18}" for hk in hks))
        for m, per in ics.items():
            cells = []
            for hk in hks:
                share = sig["detail"]["share"].get(m, {}).get(hk)
                cells.append(f"{per[hk]['ic']:+.4f}" + (f" ({share:.2f})" if share is not None else "       "))
            lines.append(f"{m:<12}" + "".join(f"{c:>18}" for c in cells))
    lines.append("")
    lines.append(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=_csv(str), default=None,
                        help=f"comma-separated models (default {','.join(DEFAULT_MODELS)}; "
                             f"--quick: {','.join(QUICK_MODELS)})")
    parser.add_argument("--checks", type=_csv(str), default=CHECKS, help=f"subset of {','.join(CHECKS)}")
    parser.add_argument("--quick", action="store_true", help="small fast audit: LightGBM, horizons 1,5")
    parser.add_argument("--inject-leak", action="store_true",
                        help="add the future return as a feature: the audit must FAIL and name it")
    parser.add_argument("--params", default=None, help="params.yaml to audit (default ./params.yaml if present)")
    parser.add_argument("--horizons", type=_csv(int), default=None, help="default: label.horizons")
    parser.add_argument("--symbols", type=int, default=None, help="synthetic panel symbols (default 30)")
    parser.add_argument("--bars", type=int, default=None, help="bars per symbol (default 1500)")
    parser.add_argument("--strength", type=float, default=None, help="planted signal IC (default 0.1)")
    parser.add_argument("--seed", type=int, default=None, help="panel seed (default 7)")
    parser.add_argument("--signal", choices=SIGNALS, default=None,
                        help="kind of planted signal of the signal panel (default linear; docs/data.md)")
    parser.add_argument("--min-share", type=float, default=None,
                        help="ensemble/oracle IC share the signal check needs (default 0.75)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of every fit (default: as in params; --quick: 1)")
    parser.add_argument("--out", default=None, help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    """`alphafactory audit`: print the table; exit 0 only if every check passed."""
    over: dict[str, Any] = {k: v for k, v in {
        "models": args.models, "horizons": args.horizons, "symbols": args.symbols, "bars": args.bars,
        "signal_strength": args.strength, "seed": args.seed, "threads": args.threads,
        "signal": args.signal, "min_share": args.min_share}.items() if v is not None}
    over.update(checks=tuple(args.checks), inject_leak=args.inject_leak)
    cfg = quick_config(**over) if args.quick else AuditConfig(**over)
    if args.params and not Path(args.params).is_file():
        raise ConfigError(f"--params {args.params}: no such file; expected a params.yaml")
    path = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    params = load_params(path) if path else {}
    report = run_audit(cfg, params)
    print(format_report(report))
    if args.out:
        write_json(report, args.out)
    return 0 if report["passed"] else 1
