"""Time splits purged by the label horizon plus an embargo.

All symbols are cut at the same timestamps. A row belongs to a segment by its own timestamp; it is
purged when its longest label ends at or after the start of the next segment (its label would
overlap data the next segment evaluates on), and the first ``embargo`` bars of each symbol after
each boundary are dropped as well (serially correlated features right after a boundary).

Cross-validation folds (:func:`make_folds`) live inside the development period only (train + val:
rows whose own longest label ends before the test segment starts), so the test segment stays
untouched for the final evaluation. The development timestamps are cut into contiguous time
groups of (nearly) equal numbers of distinct timestamps. A fold tests on one or more groups and
trains on rows of the other groups, with a gap on both sides of every test block (López de Prado,
*Advances in Financial Machine Learning*, ch. 7):

* purge: a training row whose label window ``[t, end_h{H}]`` (H = longest horizon) overlaps the
  block's label span ``[first test timestamp, last test label end]`` is dropped;
* embargo: the ``embargo`` bars of each symbol next to the purged ones are dropped too, on both
  sides (after a block, as López de Prado's embargo; before it, so that the gap before a test
  block is purge + embargo bars, as between the segments). Test blocks are never trimmed.

Modes (``split.cv_mode``): ``expanding`` walk-forward (fold i tests group i + 1 and trains on
every earlier group), ``rolling`` walk-forward (the same test blocks, training limited to the
last ``cv_train_bars`` distinct timestamps before the gap), and ``cpcv``, combinatorial purged
cross-validation: ``cv_folds`` groups, every choice of ``cv_test_groups`` of them is one split
(C(N, k) folds), training rows before and after the test blocks.

Walk-forward refit blocks (:func:`refit_blocks`, the ``backtest`` stage) apply the same purge and
embargo before each block of the *test* segment: a model refitted for block k trains only on rows
whose labels end, purge and embargo included, before the block starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Annotated, Literal

import numpy as np
import pandas as pd

from alphafactory.config import Interval, check
from alphafactory.errors import ConfigError

SEGMENTS = ("train", "val", "test")
CV_MODES = ("expanding", "rolling", "cpcv")
ROLES = ("train", "test")  # values of the folds' ``role`` column


@dataclass(frozen=True)
class SplitConfig:
    val_frac: Annotated[float, Interval(gt=0, lt=0.5)] = 0.15
    test_frac: Annotated[float, Interval(gt=0, lt=0.5)] = 0.15
    embargo: Annotated[int, Interval(ge=0)] = 5  # bars dropped after each boundary, on top of the purge
    cv_folds: Annotated[int, Interval(ge=2)] = 4  # walk-forward: test blocks; cpcv: time groups N
    cv_mode: Literal["expanding", "rolling", "cpcv"] = "expanding"
    # rolling: training window in distinct timestamps
    cv_train_bars: Annotated[int | None, Interval(ge=1)] = None
    cv_test_groups: Annotated[int, Interval(ge=1)] = 2  # cpcv: groups k held out per split

    def validate(self) -> None:
        if self.val_frac + self.test_frac >= 0.8:
            raise ConfigError(f"split: val_frac + test_frac = {self.val_frac + self.test_frac}, expected < 0.8")
        if self.cv_mode == "rolling" and self.cv_train_bars is None:
            raise ConfigError("split.cv_train_bars: got None with cv_mode 'rolling', expected the "
                              "training window length in timestamps (an integer >= 1)")
        if self.cv_mode != "rolling" and self.cv_train_bars is not None:
            raise ConfigError(
                f"split.cv_train_bars: got {self.cv_train_bars!r} with cv_mode {self.cv_mode!r}, "
                f"expected null (a training window applies to cv_mode 'rolling' only)"
            )
        if self.cv_mode == "cpcv" and self.cv_test_groups >= self.cv_folds:
            raise ConfigError(
                f"split.cv_test_groups: got {self.cv_test_groups} with cv_folds {self.cv_folds}, expected "
                f"1 <= cv_test_groups < cv_folds (some groups must be left to train on)"
            )


def boundaries(timestamps: np.ndarray, cfg: SplitConfig) -> tuple[np.datetime64, np.datetime64]:
    """(val_start, test_start): timestamps at the row quantiles 1 - val - test and 1 - test."""
    ts = np.sort(np.asarray(timestamps, dtype="datetime64[ns]"))
    n = len(ts)
    val_start = ts[int(np.floor(n * (1 - cfg.val_frac - cfg.test_frac)))]
    test_start = ts[int(np.floor(n * (1 - cfg.test_frac)))]
    if not ts[0] < val_start < test_start:
        raise ValueError(f"split: too few distinct timestamps ({len(np.unique(ts))}) to cut three segments")
    return val_start, test_start


def assign_segments(labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig) -> pd.DataFrame:
    """One row per labels row: ``symbol, timestamp, segment`` with segment in
    {train, val, test, purged}. ``labels`` comes from :func:`alphafactory.labels.make_labels`
    (sorted by symbol, timestamp, with ``end_h{h}`` columns)."""
    ts = labels["timestamp"].to_numpy("datetime64[ns]")
    val_start, test_start = boundaries(ts, cfg)
    seg = np.where(ts >= test_start, 2, np.where(ts >= val_start, 1, 0))
    # Label end of the longest horizon; rows without one (end of data) end "never" within the panel.
    end = labels[f"end_h{max(horizons)}"].to_numpy("datetime64[ns]")
    nat = np.isnat(end)
    purged = np.zeros(len(ts), dtype=bool)
    purged |= (seg == 0) & (nat | (end >= val_start))
    purged |= (seg == 1) & (nat | (end >= test_start))
    if cfg.embargo:
        codes = pd.factorize(labels["symbol"])[0]
        for start in (val_start, test_start):
            after = ts >= start
            # position of each row among its symbol's rows at or after the boundary
            rank = pd.Series(after).groupby(codes).cumsum().to_numpy()
            purged |= after & (rank <= cfg.embargo)
    names = np.array(SEGMENTS + ("purged",))
    out = np.where(purged, 3, seg)
    return pd.DataFrame(
        {"symbol": labels["symbol"].to_numpy(), "timestamp": ts, "segment": names[out]}
    )


# ---------------------------------------------------------------------------------------------
# Cross-validation folds inside the development period (train + val)
# ---------------------------------------------------------------------------------------------


def development_mask(labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig) -> np.ndarray:
    """(n,) bool: rows before the test segment whose longest label also ends before it starts.
    Folds use these rows only, so no fold ever reads a test-segment bar, as feature or label."""
    ts = labels["timestamp"].to_numpy("datetime64[ns]")
    _, test_start = boundaries(ts, cfg)
    end = labels[f"end_h{max(horizons)}"].to_numpy("datetime64[ns]")
    return (ts < test_start) & ~np.isnat(end) & (end < test_start)


class _Panel:
    """Per-row arrays of one labels panel (sorted by symbol, timestamp) and the purge + embargo
    gaps around a block of timestamps, shared by the CV folds and the walk-forward refit blocks."""

    def __init__(self, labels: pd.DataFrame, horizons: tuple[int, ...], embargo: int):
        self.embargo = embargo
        self.symbol = labels["symbol"].to_numpy()
        self.ts = labels["timestamp"].to_numpy("datetime64[ns]")
        self.end = labels[f"end_h{max(horizons)}"].to_numpy("datetime64[ns]")
        self.codes = pd.factorize(labels["symbol"])[0]
        same = self.codes[1:] == self.codes[:-1]
        if (np.diff(self.codes) < 0).any() or (self.ts[1:][same] <= self.ts[:-1][same]).any():
            raise ValueError("folds: labels must be sorted by (symbol, timestamp) with unique rows, "
                             "as make_labels returns them")
        self.n_sym = int(self.codes.max()) + 1 if len(self.codes) else 0
        # 0-based position of each row among its symbol's rows (bars), for per-symbol embargoes
        starts = np.r_[0, np.flatnonzero(~same) + 1]
        self.pos = np.arange(len(self.ts)) - np.repeat(starts, np.diff(np.r_[starts, len(self.ts)]))

    def _count(self, mask: np.ndarray) -> np.ndarray:
        """Rows of each row's symbol that satisfy ``mask``, broadcast to rows: (n,)."""
        return np.bincount(self.codes, weights=mask, minlength=self.n_sym)[self.codes]

    def _gap_before(self, t0: np.datetime64) -> np.ndarray:
        """Rows before a test block starting at t0 that may not train: the purge (label ends at or
        after t0) plus the ``embargo`` bars of each symbol just before the purged ones."""
        before = self.ts < t0
        rank = self._count(before) - self.pos  # 1 = the symbol's last bar before t0
        purged = before & (self.end >= t0)
        reach = np.zeros(self.n_sym)
        np.maximum.at(reach, self.codes[purged], rank[purged])
        return before & (purged | (rank <= reach[self.codes] + self.embargo))

    def _gap_after(self, t1: np.datetime64, label_end: np.datetime64) -> np.ndarray:
        """Rows after a test block ending at t1 that may not train: the purge (timestamp at or
        before the block's last label end, so the label windows overlap) plus the next
        ``embargo`` bars of each symbol."""
        after_purge = self.ts > label_end
        rank = self.pos - self._count(~after_purge) + 1  # 1 = the symbol's first bar after it
        return (self.ts > t1) & (~after_purge | (rank <= self.embargo))


class _FoldBuilder(_Panel):
    """The panel plus the time groups of the development period that the CV folds hold out."""

    def __init__(self, labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig, n_groups: int):
        super().__init__(labels, horizons, cfg.embargo)
        self.cfg = cfg
        self.dev = development_mask(labels, horizons, cfg)
        self.stamps = np.unique(self.ts[self.dev])  # distinct development timestamps, sorted
        if len(self.stamps) < 2 * n_groups:
            raise ValueError(
                f"split.cv_folds: {n_groups} time groups need at least {2 * n_groups} distinct "
                f"timestamps before the test segment, got {len(self.stamps)}"
            )
        # time group of each distinct timestamp: n_groups contiguous runs of near-equal length
        self.stamp_group = np.arange(len(self.stamps)) * n_groups // len(self.stamps)
        self.group = np.full(len(self.ts), -1, dtype=np.int64)
        self.group[self.dev] = self.stamp_group[np.searchsorted(self.stamps, self.ts[self.dev])]

    def fold(self, test_groups: tuple[int, ...], walk_forward: bool) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) row masks for one fold holding out ``test_groups`` (sorted)."""
        test = self.dev & np.isin(self.group, test_groups)
        train = self.dev & ~np.isin(self.group, test_groups)
        if walk_forward:
            train &= self.group < test_groups[0]
        # contiguous runs of test groups are one test block each
        runs = np.split(np.asarray(test_groups), np.flatnonzero(np.diff(test_groups) > 1) + 1)
        for run in runs:
            in_run = np.flatnonzero(np.isin(self.stamp_group, run))
            block = test & np.isin(self.group, run)
            t0, t1 = self.stamps[in_run[0]], self.stamps[in_run[-1]]
            train &= ~self._gap_before(t0) & ~self._gap_after(t1, self.end[block].max())
        return train, test

    def frame(self, masks: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
        """Long table: one row per (fold, row used by that fold)."""
        parts = []
        for i, (train, test) in enumerate(masks):
            if not train.any() or not test.any():
                raise ValueError(
                    f"split: fold {i} has {int(train.sum())} training and {int(test.sum())} test rows "
                    f"after the purge and embargo; expected both > 0 (use fewer split.cv_folds, a "
                    f"smaller split.embargo or more data)"
                )
            rows = np.flatnonzero(train | test)
            parts.append(pd.DataFrame({
                "symbol": self.symbol[rows], "timestamp": self.ts[rows], "fold": np.int64(i),
                "group": self.group[rows], "role": np.where(test[rows], ROLES[1], ROLES[0]),
            }))
        return pd.concat(parts, ignore_index=True)


def walk_forward_folds(labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig) -> pd.DataFrame:
    """Walk-forward folds over the development period (``cv_mode`` expanding or rolling).

    The development timestamps are cut into ``cv_folds + 1`` time groups; fold i tests on group
    i + 1 and trains on the groups before it, purged and embargoed before the test block. Rolling
    mode keeps only the last ``cv_train_bars`` distinct timestamps of that training set.
    labels: :func:`alphafactory.labels.make_labels` output (sorted by symbol, timestamp).
    Returns the long table ``symbol, timestamp, fold, group, role`` (role train | test); rows a
    fold does not list are unused by it (purged, embargoed, later, or outside the window).
    """
    check(cfg, "split")
    if cfg.cv_mode == "cpcv":
        raise ValueError("walk_forward_folds: split.cv_mode is 'cpcv'; call cpcv_folds (or make_folds)")
    fb = _FoldBuilder(labels, horizons, cfg, cfg.cv_folds + 1)
    masks = []
    for i in range(cfg.cv_folds):
        train, test = fb.fold((i + 1,), walk_forward=True)
        if cfg.cv_mode == "rolling":
            stamps = np.unique(fb.ts[train])
            if len(stamps) < cfg.cv_train_bars:
                raise ValueError(
                    f"split.cv_train_bars: got {cfg.cv_train_bars}, but fold {i} has only "
                    f"{len(stamps)} training timestamps; expected <= {len(stamps)} (or fewer cv_folds)"
                )
            train &= fb.ts >= stamps[-cfg.cv_train_bars]
        masks.append((train, test))
    return fb.frame(masks)


def cpcv_splits(n_groups: int, k: int) -> list[tuple[int, ...]]:
    """The C(n_groups, k) held-out group sets of combinatorial purged CV, in lexicographic order
    (split i of this list is fold i)."""
    if not 1 <= k < n_groups:
        raise ValueError(f"cpcv: got {k} test groups of {n_groups}, expected 1 <= k < n_groups")
    return list(combinations(range(n_groups), k))


def cpcv_paths(n_groups: int, k: int) -> np.ndarray:
    """(C(n_groups - 1, k - 1), n_groups) int: the fold whose forecasts fill group g on backtest
    path p. Every group is tested by C(N-1, k-1) folds; path p takes the p-th of them, so each
    (fold, test group) pair is used by exactly one path."""
    splits = cpcv_splits(n_groups, k)
    n_paths = math.comb(n_groups - 1, k - 1)
    out = np.empty((n_paths, n_groups), dtype=np.int64)
    for g in range(n_groups):
        out[:, g] = [i for i, s in enumerate(splits) if g in s]
    return out


def cpcv_folds(labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig) -> pd.DataFrame:
    """Combinatorial purged cross-validation over the development period.

    ``cv_folds`` time groups; each of the C(cv_folds, cv_test_groups) splits tests on its groups
    and trains on all the others, purged and embargoed on both sides of every test block.
    Same long format as :func:`walk_forward_folds`; fold i holds out ``cpcv_splits(N, k)[i]``.
    """
    check(cfg, "split")
    splits = cpcv_splits(cfg.cv_folds, cfg.cv_test_groups)
    fb = _FoldBuilder(labels, horizons, cfg, cfg.cv_folds)
    return fb.frame([fb.fold(s, walk_forward=False) for s in splits])


def make_folds(labels: pd.DataFrame, horizons: tuple[int, ...], cfg: SplitConfig) -> pd.DataFrame:
    """The folds of ``cfg.cv_mode``: :func:`cpcv_folds` for cpcv, else :func:`walk_forward_folds`."""
    check(cfg, "split")
    if cfg.cv_mode == "cpcv":
        return cpcv_folds(labels, horizons, cfg)
    return walk_forward_folds(labels, horizons, cfg)


def fold_summary(folds: pd.DataFrame) -> list[dict]:
    """Per fold: test groups, train/test rows and time spans (JSON-ready)."""
    out = []
    for fold, g in folds.groupby("fold", sort=True):
        tr, te = g[g["role"] == "train"], g[g["role"] == "test"]
        out.append({
            "fold": int(fold), "test_groups": sorted(int(x) for x in te["group"].unique()),
            "train_rows": int(len(tr)), "test_rows": int(len(te)),
            "train_start": str(tr["timestamp"].min()), "train_end": str(tr["timestamp"].max()),
            "test_start": str(te["timestamp"].min()), "test_end": str(te["timestamp"].max()),
        })
    return out


# ---------------------------------------------------------------------------------------------
# Walk-forward refit blocks over the test segment (the backtest stage)
# ---------------------------------------------------------------------------------------------


def refit_blocks(labels: pd.DataFrame, test: np.ndarray, horizons: tuple[int, ...], embargo: int,
                 every: int, window_bars: int | None = None) -> pd.DataFrame:
    """Refit blocks of a walk-forward backtest over the test segment.

    The distinct timestamps of the ``test`` rows are cut into consecutive blocks of ``every``
    timestamps (the last one may be shorter); block k forecasts the test rows of its timestamps
    ``[t_k, t_{k+1})``, so the blocks tile the test rows without overlap. Its model trains on the
    labelled rows before ``t_k`` of any segment (train, val, purged, the earlier test blocks) minus
    the gap a CV fold leaves before its test block (:meth:`_Panel._gap_before`): the purge (a
    label ending at or after ``t_k``) plus ``embargo`` bars of each symbol before the purged ones.
    ``window_bars`` (rolling window): keep only the last ``window_bars`` distinct timestamps of
    those rows; None: an expanding window.

    labels: :func:`alphafactory.labels.make_labels` output (sorted by symbol, timestamp); test:
    (n,) bool, the labels rows of the test segment (:func:`assign_segments`). Returns the long
    table of :func:`walk_forward_folds`: ``symbol, timestamp, fold, group, role`` (fold: the
    block; group: the block whose timestamps the row's falls in, -1 before the first; role
    train | test), which :func:`alphafactory.evaluation.cv.fold_segments` turns into segments.
    """
    if every < 1:
        raise ValueError(f"refit_blocks: got every={every}, expected >= 1")
    panel = _Panel(labels, horizons, embargo)
    test = np.asarray(test, dtype=bool)
    if test.shape != panel.ts.shape:
        raise ValueError(f"refit_blocks: test mask has {test.shape[0]} rows, labels {panel.ts.shape[0]}")
    stamps = np.unique(panel.ts[test])
    if not len(stamps):
        raise ValueError("refit_blocks: the test segment has no rows")
    starts = stamps[::every]
    labelled = ~np.isnat(panel.end)
    group = np.searchsorted(starts, panel.ts, side="right") - 1  # block of each row's timestamp; -1 before
    parts = []
    for k, t0 in enumerate(starts):
        t1 = starts[k + 1] if k + 1 < len(starts) else None
        block = test & (panel.ts >= t0) & (True if t1 is None else panel.ts < t1)
        train = labelled & (panel.ts < t0) & ~panel._gap_before(t0)
        if window_bars is not None:
            fit_stamps = np.unique(panel.ts[train])
            if len(fit_stamps) < window_bars:
                raise ValueError(
                    f"backtest.window_bars: got {window_bars}, but refit block {k} has only "
                    f"{len(fit_stamps)} training timestamps before it; expected <= {len(fit_stamps)}")
            train &= panel.ts >= fit_stamps[-window_bars]
        if not train.any():
            raise ValueError(f"refit_blocks: block {k} (from {t0}) has no training rows before it")
        rows = np.flatnonzero(train | block)
        parts.append(pd.DataFrame({
            "symbol": panel.symbol[rows], "timestamp": panel.ts[rows], "fold": np.int64(k),
            "group": group[rows], "role": np.where(block[rows], ROLES[1], ROLES[0]),
        }))
    return pd.concat(parts, ignore_index=True)
