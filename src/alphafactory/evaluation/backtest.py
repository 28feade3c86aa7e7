"""Walk-forward retraining over the test period: refit, forecast the next block, repeat.

The training stages fit each model once, before the test segment, and that one fit forecasts the
whole test period; nobody would trade a model that way for long. Here the models of
``backtest.models`` are refitted every ``backtest.retrain_every`` test bars and each refit forecasts
only the block of test bars that follows it, out of sample:

* blocks: :func:`alphafactory.split.refit_blocks` cuts the test segment's timestamps into
  consecutive blocks (together they are exactly the test rows, without overlap) and gives each
  block its training rows: every labelled row before the block, of any segment (earlier test
  blocks included once their labels are known), minus the purge and embargo that a CV fold
  leaves before its test block (``split.embargo``); ``window: rolling`` keeps only the last
  ``window_bars`` timestamps of them, ``expanding`` all;
* early stopping and the uncertainty calibration use the latest ``val_frac`` of those training
  timestamps, with the earlier rows whose label reaches into it purged
  (:func:`alphafactory.evaluation.cv.fold_segments`, as in the CV folds): never the block being
  forecast;
* each block is then one call of :func:`alphafactory.train.fit_models` per family, the training
  stages' own fit path, with their hyperparameters, ``train.task`` and ``train.scope``
  (``per_symbol`` fits one model per symbol per block and needs every symbol to have train and
  val rows in every window, or fails naming the symbol).

The forecasts are the test rows of every block, in the long format of ``data/preds/<family>.parquet``
(segment ``test``), each model renamed ``<name>_wf`` (:data:`SUFFIX`), so the evaluate stage scores
them with the same code and on the same rows as every single-fit model. The block models are
fitted into a working directory and deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd

from alphafactory import models
from alphafactory.compute import FanOut
from alphafactory.config import Interval, NonEmpty, Unique, check
from alphafactory.dataset import KEYS, Dataset
from alphafactory.errors import ConfigError
from alphafactory.evaluation.cv import FAMILIES, RefitSpec, check_base_models, fold_segments, segment_spans
from alphafactory.feature_select import SelectConfig
from alphafactory.uncertainty import MIN_ROWS

log = logging.getLogger(__name__)
SUFFIX = "_wf"  # model name of a walk-forward refit: <name>_wf (evaluate and report pair them by it)


@dataclass(frozen=True)
class BacktestConfig:
    models: Annotated[tuple[str, ...], NonEmpty(), Unique()] = ("lightgbm", "ridge")
    retrain_every: Annotated[int, Interval(ge=1)] = 63  # test bars (distinct timestamps) per refit block
    window: Literal["expanding", "rolling"] = "expanding"
    window_bars: Annotated[int | None, Interval(ge=1)] = None  # rolling: training window, in timestamps
    # share of each refit's training timestamps (the latest) used as val: early stopping, calibration
    val_frac: Annotated[float, Interval(gt=0, le=0.5)] = 0.2

    def validate(self) -> None:
        check_base_models("backtest.models", self.models)
        if self.window == "rolling" and self.window_bars is None:
            raise ConfigError("backtest.window_bars: got None with window 'rolling', expected the training "
                              "window length in timestamps (an integer >= 1)")
        if self.window != "rolling" and self.window_bars is not None:
            raise ConfigError(f"backtest.window_bars: got {self.window_bars!r} with window {self.window!r}, "
                              "expected null (a training window length applies to window 'rolling' only)")


@dataclass(frozen=True)
class _BlockJob:
    """One refit block, a piece of work that may run on another process (:mod:`alphafactory.compute`)."""

    bid: int
    ds: Dataset  # the whole panel, its segment that of this block (train, val, test, purged)
    spec: RefitSpec


def _run_block(job: _BlockJob) -> tuple[int, list[pd.DataFrame], float]:
    """Refit every model on one block's train rows and forecast its test rows: (block id, the
    forecasts of each model, seconds). ``train.select`` is refitted on each block's train rows."""
    t0 = time.perf_counter()
    preds = job.spec.fit(job.ds, f"block{job.bid}-", select=job.spec.select)
    return job.bid, [p[p["segment"] == "test"] for p in preds], time.perf_counter() - t0


def walk_forward(ds: Dataset, labels: pd.DataFrame, blocks_table: pd.DataFrame, cfg: BacktestConfig, *,
                 blocks: dict[str, Any], seed: int, extra: dict[str, dict[str, Any]] | None = None,
                 task: str = "regression", scope: str = "pooled", select: SelectConfig | None = None,
                 workdir: str | Path | None = None, fan: FanOut | None = None
                 ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Refit ``cfg.models`` before every block of ``blocks_table`` and forecast the block.

    ds: the whole panel (its ``segment`` is replaced per block); labels: the label stage's table
    (for ``end_h{max horizon}``); blocks_table: :func:`alphafactory.split.refit_blocks` output;
    blocks: params block per model name; extra: constructor arguments per family; task, scope:
    ``train.task``, ``train.scope``; workdir: an existing directory to fit the block models in (the
    caller deletes it), else a temporary one; fan: where the blocks' refits run
    (:mod:`alphafactory.compute`; None: one after the other here), each block one piece of work,
    the forecasts identical whatever the number of workers.

    Returns (forecasts, spans): the long forecasts of every block's test rows (columns of
    :func:`alphafactory.train.long_predictions`, models named ``<name>_wf``), and per block
    ``block<k>`` its train, val and forecast (``test``) rows and time spans.
    A block whose refit has fewer than ``MIN_ROWS`` train or val rows with features is an error,
    not skipped: a missing block would shrink the rows every model is scored on."""
    check(cfg, "backtest")
    end_col = f"end_h{max(ds.horizons)}"
    ends = ds.keys.merge(labels[KEYS + [end_col]], on=KEYS, how="left", validate="1:1")
    label_end = ends[end_col].to_numpy("datetime64[ns]")
    by_family: dict[str, list[str]] = {}
    for name in cfg.models:
        spec = models.get(name)
        if task not in spec.tasks:
            able = sorted(n for n, s in models.REGISTRY.items() if s.family in FAMILIES and task in s.tasks)
            raise ConfigError(f"backtest.models: {name!r} does not support train.task {task!r}; "
                              f"models that do: {able}")
        by_family.setdefault(spec.family, []).append(name)
    ids = sorted(int(b) for b in blocks_table["fold"].unique())
    if not ids:
        raise ValueError("backtest: the refit blocks table has no rows")
    preds, spans, jobs = [], {}, []
    for bid in ids:  # every block's rows first: a short one fails before any fit
        seg = fold_segments(ds, blocks_table[blocks_table["fold"] == bid], label_end, cfg.val_frac)
        span = segment_spans(dataclasses.replace(ds, segment=seg), seg)
        short = [f"{span[f'{p}_rows']} {p}" for p in ("train", "val") if span[f"{p}_rows"] < MIN_ROWS]
        if short:
            raise ValueError(f"backtest: refit block {bid} has {', '.join(short)} rows with features, "
                             f"expected >= {MIN_ROWS} each (a larger backtest.window_bars or val_frac)")
        spans[f"block{bid}"] = span  # no seconds in it: the file must come out byte-identical
        jobs.append((bid, seg))
    with contextlib.ExitStack() as stack:
        tmp = Path(workdir) if workdir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="alphafactory-backtest-")))
        spec = RefitSpec(by_family, blocks, extra, seed, task, scope, select, str(tmp))
        work = [_BlockJob(bid, dataclasses.replace(ds, segment=seg), spec) for bid, seg in jobs]
        for bid, block_preds, secs in (fan or FanOut()).map(_run_block, work, desc="refit blocks", unit="block"):
            preds += block_preds
            span = spans[f"block{bid}"]
            log.info("backtest block %d/%d: fit on %d train + %d val rows (%s..%s), forecast %d rows %s..%s, "
                     "%.1f s", bid + 1, len(ids), span["train_rows"], span["val_rows"], span["train_start"][:10],
                     span["val_end"][:10], span["test_rows"], span["test_start"][:10], span["test_end"][:10], secs)
    out = pd.concat(preds, ignore_index=True)
    out["model"] = out["model"] + SUFFIX
    out = out.sort_values(["model", "symbol", "timestamp", "horizon"], kind="stable").reset_index(drop=True)
    if out.duplicated(["model", "symbol", "timestamp", "horizon"]).any():
        raise AssertionError("backtest: a test row was forecast by two refit blocks")
    return out, spans
