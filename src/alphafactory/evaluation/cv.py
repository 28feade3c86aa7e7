"""Walk-forward (or CPCV) cross-validation metrics inside the development period.

For every fold of ``data/split/folds.parquet`` the models of ``cv.models`` are refitted with the
hyperparameters the training stages use, and their forecasts on the fold's test block are scored
with the same point-forecast metrics as the test period (:func:`metrics.regression_metrics`), plus
accuracy, macro F1 and log loss of the class probabilities under `train.task: classification`.
The test segment is never read: folds only hold rows of train + val (see :mod:`alphafactory.split`).

Each fold becomes a :class:`Dataset` whose ``segment`` array is rewritten, so the training code
path is the one of the training stages (:func:`alphafactory.train.fit_models`):

* the fold's test rows → ``test`` (forecast and scored);
* the last ``val_frac`` of the fold's distinct training timestamps → ``val`` (early stopping and
  the uncertainty calibration ``fit_models`` always fits);
* the earlier training rows whose longest label ends before that val block starts → ``train``;
* every other row (training rows whose label reaches into val, rows the fold does not use, the
  real val and test segments) → ``purged``.

``train.task`` and ``train.scope`` are those of the training stages. Under classification the
scored forecast is ``yhat``, the expected return under the class probabilities, as in the test
evaluation. Under ``per_symbol`` a fold only forecasts the symbols that have train and val rows
in it (one model per symbol needs both).

The fold models are fitted into a working directory and deleted: they are not outputs. The
stage passes one next to its metrics file (:func:`alphafactory.io.scratch_dir`), so a killed run
leaves nothing in the system temp directory and the next run removes what it left.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd

from alphafactory import models
from alphafactory.compute import FanOut
from alphafactory.config import Interval, NonEmpty, Unique, check
from alphafactory.dataset import KEYS, Dataset
from alphafactory.errors import ConfigError
from alphafactory.evaluation import metrics
from alphafactory.feature_select import SelectConfig, select_dataset
from alphafactory.labels import PROBA_COLUMNS
from alphafactory.split import ROLES
from alphafactory.train import TrainConfig, family_inputs, fit_models, single_machine
from alphafactory.uncertainty import MIN_ROWS

log = logging.getLogger(__name__)
FAMILIES = ("boosting", "neural", "classical")  # families whose models the training stages fit
FIGURES = ("ic", "rank_ic", "r2", "dir_acc", "mae", "rmse")  # per fold, then mean and std
CLASS_FIGURES = ("accuracy", "macro_f1", "log_loss")  # also, under train.task: classification


@dataclass(frozen=True)
class CVConfig:
    models: Annotated[tuple[str, ...], NonEmpty(), Unique()] = ("lightgbm", "ridge")
    # share of each fold's training timestamps (the latest) used as val
    val_frac: Annotated[float, Interval(gt=0, le=0.5)] = 0.2

    def validate(self) -> None:
        check_base_models("cv.models", self.models)


def base_models() -> list[str]:
    """The registered models a refit stage (cv, backtest, tune) can fit: those of :data:`FAMILIES`."""
    return sorted(n for n, s in models.REGISTRY.items() if s.family in FAMILIES)


def check_base_models(key: str, names: Iterable[str]) -> None:
    """``ConfigError`` naming ``key`` for the first of ``names`` that is not a :func:`base_models` one."""
    able = base_models()
    for name in names:
        if name not in able:
            raise ConfigError(f"{key}: {name!r} is not a registered base model; expected some of {able}")


def refit_inputs(params: dict[str, Any], train: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a refit stage passes to :func:`alphafactory.train.fit_models` for any model of
    :data:`FAMILIES`: the params block per model name, and the constructor arguments per family
    (as the training stages read them, ``train``: the ``TrainConfig``). A refit is one piece of
    work on one worker: ``distributed`` is off in every block (:func:`~alphafactory.train.single_machine`)."""
    blocks, extra = {}, {}
    for family in FAMILIES:
        _, b, extra[family] = family_inputs(params, family, train)
        blocks.update(b)
    return single_machine(blocks), extra


def fold_segments(ds: Dataset, fold: pd.DataFrame, label_end: np.ndarray, val_frac: float) -> np.ndarray:
    """(n,) str segment array of one fold over the rows of ``ds``.

    fold: the fold's rows of the folds table (``symbol, timestamp, role``); label_end: (n,)
    datetime64 end of each ds row's longest label (NaT where unlabelled). Fold rows without
    features (warm-up) are not in ``ds`` and are skipped, so a fold may end up with few or no
    train and val rows: :func:`cross_validate` skips such folds."""
    keys = ds.keys.assign(_row=np.arange(len(ds.keys)))
    hit = keys.merge(fold[KEYS + ["role"]], on=KEYS, how="inner", validate="1:1")
    rows, role = hit["_row"].to_numpy(), hit["role"].to_numpy()
    ts = ds.keys["timestamp"].to_numpy("datetime64[ns]")
    seg = np.full(len(ts), "purged", dtype=object)
    seg[rows[role == ROLES[1]]] = "test"
    fit = rows[role == ROLES[0]]
    stamps = np.unique(ts[fit])
    if not len(stamps):
        return seg.astype(str)
    v0 = stamps[len(stamps) - max(1, math.ceil(val_frac * len(stamps)))]  # first val timestamp
    seg[fit[ts[fit] >= v0]] = "val"
    # purge: a train row whose longest label ends at or after v0 overlaps val
    keep = fit[(ts[fit] < v0) & ~np.isnat(label_end[fit]) & (label_end[fit] < v0)]
    seg[keep] = "train"
    return seg.astype(str)


def _symbols_with_train_and_val(ds: Dataset) -> Dataset:
    """``ds`` without the symbols that have no train or no val rows (``per_symbol`` fits one model
    per symbol, which needs both). All rows of a kept symbol stay, as sequence-window history."""
    fit = np.intersect1d(ds.sym_codes[ds.segment == "train"], ds.sym_codes[ds.segment == "val"])
    return ds.subset(np.flatnonzero(np.isin(ds.sym_codes, fit)))


def segment_spans(ds: Dataset, seg: np.ndarray) -> dict[str, Any]:
    """Rows and time span of the train, val and test parts of one fold (JSON-ready; the span of
    an empty part is None)."""
    ts = ds.keys["timestamp"]
    out: dict[str, Any] = {}
    for name in ("train", "val", "test"):
        t = ts[seg == name]
        lo, hi = (str(t.min()), str(t.max())) if len(t) else (None, None)
        out.update({f"{name}_rows": int(len(t)), f"{name}_start": lo, f"{name}_end": hi})
    return out


def label_ends(ds: Dataset, labels: pd.DataFrame) -> np.ndarray:
    """(n,) datetime64 end of each ``ds`` row's longest label (NaT where unlabelled), from the
    label stage's ``end_h{max horizon}``: what :func:`fold_segments` purges with."""
    end_col = f"end_h{max(ds.horizons)}"
    ends = ds.keys.merge(labels[KEYS + [end_col]], on=KEYS, how="left", validate="1:1")
    return ends[end_col].to_numpy("datetime64[ns]")


def fold_dataset(ds: Dataset, fold: pd.DataFrame, label_end: np.ndarray, val_frac: float,
                 scope: str = "pooled") -> tuple[Dataset, dict[str, Any], list[str]]:
    """One fold as a :class:`Dataset` (segments from :func:`fold_segments`; under ``per_symbol``
    only the symbols with train and val rows), its rows and spans (:func:`segment_spans`, plus
    ``scored``), and the parts with fewer than ``MIN_ROWS`` rows (``["12 train"]``; empty: the
    fold is scored). Shared by :func:`cross_validate` and the tune stage."""
    fold_ds = dataclasses.replace(ds, segment=fold_segments(ds, fold, label_end, val_frac))
    if scope == "per_symbol":
        fold_ds = _symbols_with_train_and_val(fold_ds)
    span = segment_spans(fold_ds, fold_ds.segment)
    short = [f"{span[f'{part}_rows']} {part}" for part in ("train", "val", "test") if span[f"{part}_rows"] < MIN_ROWS]
    span["scored"] = not short
    return fold_ds, span, short


def score_fold(preds: pd.DataFrame, ds: Dataset) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"h<k>": figures}} on one fold's test forecasts.

    preds: long forecasts of :func:`fit_models` (test rows only). As in the test-period evaluation,
    each horizon is scored on the labelled rows that every model forecast, so the figures of one
    fold are comparable across models."""
    ycols = {h: f"y_h{h}" for h in ds.horizons}
    # the raw forward return when the dataset has it: figures mean the same whatever label.normalize is
    raw = ds.Y if ds.R is None else ds.R
    truth = pd.DataFrame(raw, columns=list(ycols.values())).assign(**{k: ds.keys[k].to_numpy() for k in KEYS})
    classes = None  # classification task: class indices 0/1/2 per horizon, scored with the probabilities
    if ds.C is not None and all(c in preds.columns for c in PROBA_COLUMNS):
        classes = pd.DataFrame(ds.C, columns=list(ycols.values()), index=pd.MultiIndex.from_frame(ds.keys[KEYS]))
    out: dict = {m: {} for m in dict.fromkeys(preds["model"])}
    for h, col in ycols.items():
        wide = preds[preds["horizon"] == h].pivot(index=KEYS, columns="model", values="yhat")
        table = wide.join(truth.set_index(KEYS)[col], how="inner").dropna()
        if table.empty:
            raise ValueError(f"cv: no labelled fold-test rows that every model forecast at horizon {h}")
        for m in out:
            fig = metrics.regression_metrics(table[col].to_numpy(), table[m].to_numpy())
            out[m][f"h{h}"] = {k: fig[k] for k in (*FIGURES, "n")}
            if classes is not None:
                out[m][f"h{h}"].update(_class_figures(preds, classes[col], table.index, m, h))
    return out


def _class_figures(preds: pd.DataFrame, cls: pd.Series, index: pd.Index, model: str, h: int) -> dict[str, float]:
    """Accuracy, macro F1 and log loss of ``model``'s class probabilities on the scored rows."""
    p = preds[(preds["model"] == model) & (preds["horizon"] == h)].set_index(KEYS)[list(PROBA_COLUMNS)]
    proba, c = p.reindex(index).to_numpy(), cls.reindex(index).to_numpy()
    ok = ~np.isnan(c) & np.isfinite(proba).all(1)
    fig = metrics.classification_metrics(c[ok] - 1, proba[ok].argmax(1) - 1, proba[ok])
    return {k: fig[k] for k in CLASS_FIGURES}


def summarise(per_fold: dict[int, dict]) -> dict:
    """Figures by fold id ``{fold: {model: {"h<k>": figures}}}`` → ``{model: {"h<k>":
    {"fold<i>": figures, "mean": ..., "std": ...}}}``. Mean and std (ddof=1) are over the folds
    where a figure is defined; NaN (written as null) where none or, for std, fewer than two are."""
    first = next(iter(per_fold.values()))
    out: dict = {}
    for m, by_h in first.items():
        out[m] = {}
        for hk in by_h:
            entry: dict = {f"fold{i}": f[m][hk] for i, f in per_fold.items()}
            entry["mean"], entry["std"] = {}, {}
            for k in (k for k in first[m][hk] if k != "n"):
                v = np.array([f[m][hk][k] for f in per_fold.values()], dtype=np.float64)
                v = v[np.isfinite(v)]
                entry["mean"][k] = float(v.mean()) if len(v) else math.nan
                entry["std"][k] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            out[m][hk] = entry
    return out


@dataclass(frozen=True)
class RefitSpec:
    """What every refit of the ``cv`` folds and the ``backtest`` blocks fits, whichever fold or
    block: the models per family, their params blocks and constructor arguments, and where."""

    by_family: dict[str, list[str]]
    blocks: dict[str, Any]
    extra: dict[str, dict[str, Any]] | None
    seed: int
    task: str
    scope: str
    select: SelectConfig | None
    workdir: str  # an existing directory on the caller's machine (a worker without it: its own temp dir)

    def fit(self, ds: Dataset, prefix: str, select: SelectConfig | None = None) -> list[pd.DataFrame]:
        """Fit every model on ``ds``'s train rows (``select``: fitted on them first) in a temporary
        directory of ``workdir``, deleted after; their predictions (every segment), one frame each."""
        preds = []
        parent = self.workdir if Path(self.workdir).is_dir() else None
        with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as tmp:
            for family, names in self.by_family.items():
                results = fit_models(ds, tuple(names), self.blocks, tmp, seed=self.seed,
                                     extra=(self.extra or {}).get(family), task=self.task, scope=self.scope,
                                     select=select)
                preds += [r.predictions for r in results]
        return preds


@dataclass(frozen=True)
class _FoldJob:
    """Everything one fold's refit needs, so that it can run on another process or machine."""

    fid: int
    ds: Dataset
    fold: pd.DataFrame
    label_end: np.ndarray
    cfg: CVConfig
    spec: RefitSpec


def _run_fold(job: _FoldJob) -> tuple[int, dict[str, Any], dict | None, float]:
    """Refit and score one fold: (fold id, its span, its scores or None when skipped, seconds).
    The fold's models are fitted in a temporary directory of ``job.spec.workdir``, deleted after."""
    t0 = time.perf_counter()
    fold_ds, span, _ = fold_dataset(job.ds, job.fold, job.label_end, job.cfg.val_frac, job.spec.scope)
    if not span["scored"]:
        return job.fid, span, None, time.perf_counter() - t0
    fold_ds, selection = select_dataset(fold_ds, job.spec.select, seed=job.spec.seed)  # on the fold's train rows
    if selection is not None:
        span["selected"] = len(selection.columns)
        span["selected_features"] = selection.columns
    preds = job.spec.fit(fold_ds, f"fold{job.fid}-")
    p = pd.concat(preds, ignore_index=True)
    return job.fid, span, score_fold(p[p["segment"] == "test"], fold_ds), time.perf_counter() - t0


def cross_validate(ds: Dataset, labels: pd.DataFrame, folds: pd.DataFrame, cfg: CVConfig, *,
                   blocks: dict[str, Any], seed: int, extra: dict[str, dict[str, Any]] | None = None,
                   task: str = "regression", scope: str = "pooled", select: SelectConfig | None = None,
                   workdir: str | Path | None = None, fan: FanOut | None = None) -> dict:
    """Refit ``cfg.models`` on every fold and score their fold-test forecasts.

    ds: the whole panel (its ``segment`` is ignored and replaced per fold); labels: the label
    stage's table (for ``end_h{max horizon}``); folds: ``symbol, timestamp, fold, role`` from
    :func:`alphafactory.split.make_folds`; blocks: params block per model name (as the training
    stages read them); extra: constructor arguments per family (``{"neural": {"lookback": ...,
    "trainer": ...}}``); task, scope: ``train.task`` and ``train.scope``; select: ``train.select``,
    refitted on each fold's train rows (once per fold, for every model), its kept columns counted
    in the fold's span (``selected``, only when a method is set); workdir: an existing
    directory the fold models are fitted in (the caller deletes it), else a temporary one in
    the system temp directory; fan: where the folds run (:mod:`alphafactory.compute`; None: one
    after the other in this process), each fold one piece of work, the results identical.

    Returns ``{"_folds": {"fold<i>": rows, spans and ``scored``}, model: {"h<k>": {"fold<i>":
    figures, "mean": figures, "std": figures}}}``; figures are ``ic, rank_ic, r2, dir_acc, mae,
    rmse`` (per fold also ``n``). A fold with fewer than ``MIN_ROWS`` train, val or test rows
    with features (the first expanding fold on short data, mostly feature warm-up) is skipped:
    ``scored`` false and no figures."""
    check(cfg, "cv")
    label_end = label_ends(ds, labels)
    by_family: dict[str, list[str]] = {}
    for name in cfg.models:
        spec = models.get(name)
        if task not in spec.tasks:
            able = sorted(n for n, s in models.REGISTRY.items() if s.family in FAMILIES and task in s.tasks)
            raise ConfigError(f"cv.models: {name!r} does not support train.task {task!r}; models that do: {able}")
        by_family.setdefault(spec.family, []).append(name)
    fold_ids = sorted(int(f) for f in folds["fold"].unique())
    if not fold_ids:
        raise ValueError("cv: the folds table has no rows")
    per_fold: dict[int, dict] = {}
    spans: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(workdir) if workdir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="alphafactory-cv-")))
        spec = RefitSpec(by_family, blocks, extra, seed, task, scope, select, str(tmp))
        jobs = [_FoldJob(fid, ds, folds[folds["fold"] == fid], label_end, cfg, spec) for fid in fold_ids]
        fan = fan if fan is not None else FanOut()
        for i, (fid, span, scores, secs) in enumerate(fan.map(_run_fold, jobs, desc="cv folds", unit="fold")):
            spans[f"fold{fid}"] = span
            if scores is None:
                # typically the first expanding fold, whose training rows are mostly feature warm-up
                short = [f"{span[f'{part}_rows']} {part}" for part in ("train", "val", "test")
                         if span[f"{part}_rows"] < MIN_ROWS]
                log.warning("cv fold %d/%d skipped: %s rows with features, expected >= %d each", i + 1,
                            len(fold_ids), ", ".join(short), MIN_ROWS)
                continue
            per_fold[fid] = scores
            h = f"h{min(ds.horizons)}"
            log.info("cv fold %d/%d: train %d rows %s..%s, val %d, test %d rows %s..%s; done in %.1f s; %s IC: %s",
                     i + 1, len(fold_ids), span["train_rows"], span["train_start"][:10], span["train_end"][:10],
                     span["val_rows"], span["test_rows"], span["test_start"][:10], span["test_end"][:10], secs,
                     h, ", ".join(f"{m} {s[h]['ic']:+.4f}" for m, s in scores.items()))
    if not per_fold:
        raise ValueError(
            f"cv: no fold has >= {MIN_ROWS} train, val and test rows with features; got (train, val, test) "
            f"rows {[(f['train_rows'], f['val_rows'], f['test_rows']) for f in spans.values()]}; expected "
            f"more data, fewer split.cv_folds or a larger cv.val_frac")
    return {"_folds": spans, **summarise(per_fold)}
