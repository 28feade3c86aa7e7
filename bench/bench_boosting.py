"""Seed-000 boosting benchmark: a per-ticker training loop against alphafactory's pooled boosters.

    python bench/bench_boosting.py [--ref-tickers 3] [--ref-repeats 1] [--repeats 3]

Workload (the reference system's, issue 4): 22 tickers x 3,487 hourly bars x 85 features,
horizons 1, 4 and 24 bars, LightGBM + XGBoost + CatBoost with early stopping on a time-ordered
70/15/15 split. The panel is generated in-process and is the same for every setup:

* bars: ``make_synthetic`` (22 symbols, freq "1h", seed 7, planted signal ``--signal``,
  3,487 + 64 warm-up + 24 label bars per symbol);
* features: ``compute_features`` with the default config (237 columns); 85 of them are kept,
  evenly spaced in the pipeline's column order (``linspace(0, 236, 85)``), so every feature
  group is represented; warm-up rows and rows without all three labels are dropped, which
  leaves exactly 3,487 rows per ticker;
* targets: ``make_labels`` forward log returns ``ret_h{1,4,24}``.

Setups (each fits all three families on all three horizons, then forecasts test):

* ``reference``: like seed 000. For each ticker, its rows cut 70/15/15 by position (no purge);
  ``StandardScaler`` fit on train; for each horizon ``LGBMRegressor(n_estimators=1000,
  learning_rate=0.05)`` (early stopping 50 via callback), ``XGBRegressor(n_estimators=1000,
  learning_rate=0.05, max_depth=6, early_stopping_rounds=50)`` and ``CatBoostRegressor(
  iterations=1000, learning_rate=0.05, depth=6, early_stopping_rounds=50)``, all with their
  default (all-core) threads and early-stopped on val. Timed on the first ``--ref-tickers``
  tickers and extrapolated linearly to 22.
* ``ours pooled``: alphafactory's way. One model per family across all tickers,
  ``models.create(name, params.yaml boosting block, horizons=(1, 4, 24), seed=train.seed)``,
  ``fit(XY(train), XY(val))`` on the pooled rows of ``assign_segments`` (same cut timestamps for
  every ticker, purged by the 24-bar label, ``split.embargo`` bars dropped after each cut).
* ``ours per_symbol``: the same registered models and segments under ``train.scope:
  per_symbol``, through the library path of the ``train@boosting`` stage
  (``train.fit_models(..., scope="per_symbol", fan=FanOut())``: one model per ticker and family,
  saved in native formats to a temporary directory, val and test forecasts, the uncertainty
  calibration), to separate the effect of pooling from that of the hyperparameters. In process
  the stage runs the symbols side by side, ``num_threads`` (2) one-thread fits at once on local
  processes (``train.split_threads``); timed on ``--per-symbol-tickers`` tickers (all 22 by
  default). ``ours per_symbol, one at a time`` (``--serial-repeats``, default 1; 0 leaves it
  out): the same with ``fan=None``, every fit on this process with its 2 threads, as a ``cv``
  fold runs them.

The timed span of a setup is fitting plus test forecasts (data generation is shared and untimed).
CPU seconds count this process and its worker processes (``psutil``).

Quality is scored on the same rows for every setup: the test rows (ours, i.e. after the embargo;
a subset of the reference's test rows, checked) of the tickers that every setup fitted. For each
horizon: pooled Pearson IC, mean per-ticker IC, rank IC, RMSE and directional accuracy of the
setup's forecast (the equal-weight mean of its three boosters; per-family ICs in a second table),
and of the true conditional expectation (``oracle``) as the ceiling. Standard errors come from a
block bootstrap over time (blocks of ``--block`` consecutive test timestamps, all tickers
together, so that overlapping 24-bar labels and the market factor do not shrink them); ``dIC``
is the paired difference to the reference on the same resamples. "Not worse beyond noise" means
``dIC > -2 SE`` at every horizon.

Threads: every library keeps its default thread count (all cores) or its params.yaml value, but
``OMP_WAIT_POLICY`` defaults to ``passive`` here unless set in the environment. With the OpenMP
default (threads spin while they wait) a 2-thread LightGBM fit on a 2-core machine that is busy
with other work ran 20x slower (127 s instead of 6 s for 200 trees on 2,440 x 85 rows), so the
timings would measure the neighbours' load. Run with ``OMP_WAIT_POLICY=active`` to time the
OpenMP default on an idle machine. Both setups run under the same policy.

Prints markdown tables with the load average (the machine is shared); exits with status 1 if ours
pooled misses ``--target`` seconds for 22 tickers or is worse than the reference beyond noise, or
if ours per_symbol misses ``--per-symbol-target`` seconds or ``--per-symbol-speedup`` times the
reference's wall time (timed in the same run), both for 22 tickers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# Read once, when OpenMP starts: lightgbm, xgboost, sklearn and alphafactory.models are imported
# lazily, after this line (numpy and pandas do not use OpenMP).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (1, 4, 24)
FAMILIES = ("lightgbm", "xgboost", "catboost")
N_TICKERS = 22
ROWS_PER_TICKER = 3487
N_FEATURES = 85
REF_LR = 0.05
REF_ROUNDS = 1000
REF_PATIENCE = 50
Preds = dict[str, np.ndarray]  # family -> (n_rows, H) forecasts, NaN where not forecast


@dataclass(frozen=True)
class Panel:
    """The benchmark panel, rows sorted by (symbol, timestamp).

    X: (n, 85) float32 features; Y: (n, 3) float32 forward log returns; oracle: (n, 3) exact
    conditional expectation of Y; sym: (n,) int ticker codes (0 = first ticker); tcode: (n,) int
    timestamp codes in time order; segment: (n,) ours (train/val/test/purged); ref_segment: (n,)
    the reference's positional 70/15/15 cut per ticker (train/val/test).
    """

    X: np.ndarray
    Y: np.ndarray
    oracle: np.ndarray
    sym: np.ndarray
    tcode: np.ndarray
    segment: np.ndarray
    ref_segment: np.ndarray


def make_panel(n_tickers: int, rows: int, signal: float, split_block: dict) -> Panel:
    """Generate bars, features, labels and both splits (see the module docstring)."""
    from alphafactory.config import from_dict
    from alphafactory.data.frequency import infer_frequency
    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
    from alphafactory.features import FeatureConfig, compute_features, warmup_bars
    from alphafactory.labels import LabelConfig, make_labels
    from alphafactory.split import SplitConfig, assign_segments

    fcfg = FeatureConfig()
    syn = SyntheticConfig(symbols=n_tickers, bars=rows + 64 + max(HORIZONS), freq="1h", seed=7,
                          signal_strength=signal)
    bars, oracle = make_synthetic(syn, horizons=HORIZONS)
    freq = infer_frequency(bars)
    warm = warmup_bars(fcfg, freq)
    if warm != 64:
        sys.exit(f"feature warm-up is {warm} bars, expected 64: update the bar count in make_panel")
    feats = compute_features(bars, fcfg, freq)
    labels = make_labels(bars, LabelConfig(horizons=HORIZONS))
    names = [c for c in feats.columns if c not in ("symbol", "timestamp")]
    keep = [names[i] for i in np.linspace(0, len(names) - 1, N_FEATURES).round().astype(int)]
    ycols = [f"ret_h{h}" for h in HORIZONS]
    pos = bars.groupby("symbol", sort=False).cumcount().to_numpy()
    ok = (pos >= warm) & labels[ycols].notna().all(axis=1).to_numpy()
    per = pd.Series(ok).groupby(bars["symbol"].to_numpy()).sum()
    if not (per == rows).all():
        sys.exit(f"expected {rows} usable rows per ticker, got {per.to_dict()}")
    lab = labels.loc[ok].reset_index(drop=True)
    X = np.ascontiguousarray(feats.loc[ok, keep].to_numpy(np.float32))
    if not np.isfinite(X).all():
        sys.exit("non-finite features after the warm-up: the benchmark panel is broken")
    orc = oracle.pivot_table(index=["symbol", "timestamp"], columns="horizon", values="yhat")
    orc = orc.reindex(pd.MultiIndex.from_frame(lab[["symbol", "timestamp"]]))[list(HORIZONS)]
    seg = assign_segments(lab, HORIZONS, from_dict(SplitConfig, split_block, "split"))
    # The reference: each ticker's rows cut by position, 70% / 15% / 15%, nothing purged.
    p = np.arange(len(lab)) % rows  # rows are (symbol, timestamp)-sorted, `rows` per ticker
    ref = np.where(p < int(0.7 * rows), "train", np.where(p < int(0.85 * rows), "val", "test"))
    return Panel(
        X=X, Y=lab[ycols].to_numpy(np.float32), oracle=orc.to_numpy(np.float64),
        sym=pd.factorize(lab["symbol"])[0], tcode=pd.factorize(lab["timestamp"], sort=True)[0],
        segment=seg["segment"].to_numpy().astype(str), ref_segment=ref,
    )


# -- the three setups ---------------------------------------------------------------------------

@dataclass
class FamilyStats:
    """Per family, summed over fits: wall and CPU seconds (CPU: all threads of this process)
    and the number of trees kept by early stopping, one entry per fitted booster."""

    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0.0))
    trees: dict[str, list[int]] = field(default_factory=lambda: {f: [] for f in FAMILIES})

    def add(self, fam: str, wall0: float, cpu0: float, trees: list[int]) -> None:
        self.wall[fam] += time.perf_counter() - wall0
        self.cpu[fam] += cpu_seconds() - cpu0
        self.trees[fam] += trees


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its live worker processes."""
    import psutil

    total = time.process_time()
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:  # exited between the listing and the read
            continue
        total += t.user + t.system
    return total


def fit_reference(panel: Panel, tickers: list[int], seed: int, stats: FamilyStats) -> Preds:
    """Seed 000's loop: per ticker, per horizon, three sklearn-API boosters. Returns test
    forecasts (NaN outside the fitted tickers' reference test rows)."""
    import catboost as cb
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.preprocessing import StandardScaler

    out = {f: np.full(panel.Y.shape, np.nan) for f in FAMILIES}
    for t in tickers:
        mine = panel.sym == t
        tr, va, te = (np.flatnonzero(mine & (panel.ref_segment == s)) for s in ("train", "val", "test"))
        scaler = StandardScaler().fit(panel.X[tr])
        Xtr, Xva, Xte = (scaler.transform(panel.X[i]) for i in (tr, va, te))
        for j in range(len(HORIZONS)):
            ytr, yva = panel.Y[tr, j], panel.Y[va, j]
            fits: dict[str, Callable[[], object]] = {
                "lightgbm": lambda Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva: lgb.LGBMRegressor(
                    n_estimators=REF_ROUNDS, learning_rate=REF_LR, random_state=seed, verbose=-1,
                ).fit(Xtr, ytr, eval_X=Xva, eval_y=yva,
                      callbacks=[lgb.early_stopping(REF_PATIENCE, verbose=False)]),
                "xgboost": lambda Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva: xgb.XGBRegressor(
                    n_estimators=REF_ROUNDS, learning_rate=REF_LR, max_depth=6,
                    early_stopping_rounds=REF_PATIENCE, random_state=seed,
                ).fit(Xtr, ytr, eval_set=[(Xva, yva)], verbose=False),
                "catboost": lambda Xtr=Xtr, ytr=ytr, Xva=Xva, yva=yva: cb.CatBoostRegressor(
                    iterations=REF_ROUNDS, learning_rate=REF_LR, depth=6,
                    early_stopping_rounds=REF_PATIENCE, random_seed=seed, verbose=False,
                    allow_writing_files=False,
                ).fit(Xtr, ytr, eval_set=(Xva, yva)),
            }
            for fam in FAMILIES:
                t0, c0 = time.perf_counter(), cpu_seconds()
                est = fits[fam]()
                out[fam][te, j] = est.predict(Xte)  # sklearn APIs predict at the best iteration
                stats.add(fam, t0, c0, [_trees(fam, est)])
    return out


def _fit_ours(panel: Panel, rows: np.ndarray, blocks: dict, seed: int, out: Preds,
              stats: FamilyStats) -> None:
    """Fit each registered family on ``rows`` (ours segments) and forecast their test rows."""
    from alphafactory import models
    from alphafactory.models.base import XY

    tr, va, te = (rows[panel.segment[rows] == s] for s in ("train", "val", "test"))
    for fam in FAMILIES:
        t0, c0 = time.perf_counter(), cpu_seconds()
        m = models.create(fam, blocks[fam], horizons=HORIZONS, seed=seed)
        m.fit(XY(panel.X[tr], panel.Y[tr]), XY(panel.X[va], panel.Y[va]))
        out[fam][te] = m.predict(panel.X[te])
        stats.add(fam, t0, c0, [_trees(fam, e) for e in m.estimators_])


def _trees(fam: str, est: object) -> int:
    """Trees kept after early stopping by one fitted booster of ``fam``: ours (native boosters)
    or the reference's (scikit-learn wrappers)."""
    if fam == "lightgbm":
        return int(getattr(est, "best_iteration_", None) or est.best_iteration)
    if fam == "xgboost":
        if hasattr(est, "get_booster"):
            return int(est.best_iteration) + 1
        return int(est.num_boosted_rounds())  # ours: already cut at the best iteration
    return int(est.get_best_iteration()) + 1


def fit_pooled(panel: Panel, blocks: dict, seed: int, stats: FamilyStats) -> Preds:
    """alphafactory's way: one model per family over all tickers' rows."""
    out = {f: np.full(panel.Y.shape, np.nan) for f in FAMILIES}
    _fit_ours(panel, np.arange(len(panel.Y)), blocks, seed, out, stats)
    return out


def fit_per_symbol(panel: Panel, tickers: list[int], blocks: dict, seed: int, stats: FamilyStats,
                   fan: object | None) -> Preds:
    """``train.scope: per_symbol`` the way the train@boosting stage runs it: ``fit_models`` on a
    Dataset of ``tickers``' rows, one family at a time (to time each), into a scratch directory.
    fan: a ``compute.FanOut`` (in process: symbols side by side) or None (one at a time)."""
    import tempfile

    from alphafactory.dataset import Dataset
    from alphafactory.train import fit_models

    rows = np.flatnonzero(np.isin(panel.sym, tickers))
    keys = pd.DataFrame({"symbol": np.char.add("T", panel.sym[rows].astype("U2")),
                         "timestamp": panel.tcode[rows]})
    ds = Dataset(keys=keys, X=panel.X[rows], Y=panel.Y[rows],
                 feature_names=[f"f{i}" for i in range(panel.X.shape[1])], horizons=HORIZONS,
                 segment=panel.segment[rows], sym_codes=pd.factorize(keys["symbol"])[0],
                 vol=np.ones(len(rows)))
    where = pd.MultiIndex.from_frame(keys)
    out = {f: np.full(panel.Y.shape, np.nan) for f in FAMILIES}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in FAMILIES:
            t0, c0 = time.perf_counter(), cpu_seconds()
            (res,) = fit_models(ds, (fam,), blocks, tmp, seed=seed, scope="per_symbol", fan=fan)
            stats.add(fam, t0, c0, [_trees(fam, e) for m in res.model.members.values() for e in m.estimators_])
            test = res.predictions[res.predictions["segment"] == "test"]
            at = where.get_indexer(pd.MultiIndex.from_frame(test[["symbol", "timestamp"]]))
            col = np.searchsorted(HORIZONS, test["horizon"].to_numpy())
            out[fam][rows[at], col] = test["yhat"].to_numpy()
    return out


# -- scoring ------------------------------------------------------------------------------------

def _corr(m: np.ndarray) -> np.ndarray:
    """Pearson r from summed moments (..., 6) = (n, sx, sy, sxx, syy, sxy); NaN where a side is
    constant (its variance is round-off of its second moment) or n < 2."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(m, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        ok = (n >= 2) & (vx > 1e-9 * sxx) & (vy > 1e-9 * syy)
        r = (sxy - sx * sy / n) / np.sqrt(np.where(ok, vx * vy, 1.0))
    return np.where(ok, np.clip(r, -1.0, 1.0), np.nan)


def _moments(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(n,) pairs → (n, 6) per-row moment terms of :func:`_corr`."""
    return np.column_stack([np.ones_like(y), f, y, f * f, y * y, f * y])


@dataclass(frozen=True)
class Scorer:
    """Scores forecasts on fixed rows with a block bootstrap over time.

    rows: (n,) scored row indices; block: (n,) block id of each row; sym: (n,) ticker codes;
    draws: (B, n_blocks) resampled block ids, shared by every forecast (paired differences).
    """

    rows: np.ndarray
    block: np.ndarray
    sym: np.ndarray
    draws: np.ndarray

    @classmethod
    def build(cls, panel: Panel, rows: np.ndarray, block_len: int, n_boot: int, seed: int) -> Scorer:
        t = panel.tcode[rows]
        block = (t - t.min()) // block_len
        n_blocks = int(block.max()) + 1
        draws = np.random.default_rng(seed).integers(0, n_blocks, (n_boot, n_blocks))
        return cls(rows, block, pd.factorize(panel.sym[rows])[0], draws)

    def ic_draws(self, y: np.ndarray, f: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(pooled IC, mean per-ticker IC, their (B,) bootstrap draws)."""
        n_blocks, n_sym = self.draws.shape[1], int(self.sym.max()) + 1
        m = np.zeros((n_blocks, n_sym, 6))
        # Centred first: fewer digits cancel in the moment formulas.
        np.add.at(m, (self.block, self.sym), _moments(y - y.mean(), f - f.mean()))
        boot = m[self.draws].sum(axis=1)  # (B, n_sym, 6)
        pooled = _corr(m.sum(axis=(0, 1)))
        per = float(np.nanmean(_corr(m.sum(axis=0))))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample may make a ticker constant
            per_b = np.nanmean(_corr(boot), axis=1)
        return float(pooled), per, _corr(boot.sum(axis=1)), per_b

    def score(self, y: np.ndarray, f: np.ndarray) -> dict[str, float | np.ndarray]:
        """Quality of (n,) forecasts f against (n,) outcomes y on the scored rows."""
        from scipy.stats import rankdata

        from alphafactory.evaluation.metrics import regression_metrics

        reg = regression_metrics(y, f)
        ic, per, ic_b, per_b = self.ic_draws(y, f)
        rank_ic, _, _, _ = self.ic_draws(rankdata(y), rankdata(f))
        return {"ic": ic, "ic_se": float(np.nanstd(ic_b)), "ic_b": ic_b, "tic": per,
                "tic_se": float(np.nanstd(per_b)), "rank_ic": rank_ic, "rmse": reg["rmse"],
                "dir_acc": reg["dir_acc"], "n": reg["n"]}


# -- driver -------------------------------------------------------------------------------------

@dataclass
class Run:
    """One setup's timings: per repeat wall and CPU seconds (all threads of this process),
    per-family stats summed over repeats, and the last repeat's test forecasts."""

    name: str
    tickers: int
    wall: list[float]
    cpu: list[float]
    stats: FamilyStats
    preds: Preds

    def per_22(self, secs: float) -> float:
        return secs * N_TICKERS / self.tickers


def timed(name: str, tickers: int, repeats: int, fit: Callable[[FamilyStats], Preds]) -> Run:
    run = Run(name, tickers, [], [], FamilyStats(), {})
    for i in range(repeats):
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), cpu_seconds()
        run.preds = fit(run.stats)
        run.wall.append(time.perf_counter() - t0)
        run.cpu.append(cpu_seconds() - c0)
        print(f"{name}: repeat {i + 1}/{repeats}: {run.wall[-1]:.1f} s wall, {run.cpu[-1]:.1f} s CPU "
              f"on {tickers} tickers (1-min load average before: {load:.2f})", file=sys.stderr, flush=True)
    return run


def _fmt(x: float, se: float | None = None, nd: int = 4) -> str:
    return f"{x:.{nd}f}" if se is None else f"{x:.{nd}f} ± {se:.{nd}f}"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-tickers", type=int, default=3, help="tickers the reference is timed on")
    ap.add_argument("--per-symbol-tickers", type=int, default=N_TICKERS,
                    help="tickers ours per_symbol is timed on")
    ap.add_argument("--ref-repeats", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of ours (pooled and per_symbol)")
    ap.add_argument("--serial-repeats", type=int, default=1,
                    help="repeats of ours per_symbol one fit at a time (0: not run)")
    ap.add_argument("--signal", type=float, default=0.1, help="planted 1-bar IC of the synthetic panel")
    ap.add_argument("--block", type=int, default=35,
                    help="bootstrap block, in test timestamps (35 = 5 sessions)")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--target", type=float, default=60.0,
                    help="wall seconds allowed to ours pooled on 22 tickers")
    ap.add_argument("--per-symbol-target", type=float, default=60.0,
                    help="wall seconds allowed to ours per_symbol on 22 tickers")
    ap.add_argument("--per-symbol-speedup", type=float, default=6.0,
                    help="least reference / ours per_symbol wall-time ratio, 22 tickers each")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key for this run, as dvc exp run -S does "
                         "(e.g. boosting.catboost.border_count=64); repeatable")
    args = ap.parse_args()
    for key in ("ref_tickers", "per_symbol_tickers"):
        v = getattr(args, key)
        if not 1 <= v <= N_TICKERS:
            ap.error(f"--{key.replace('_', '-')}: got {v}, expected 1..{N_TICKERS}")
    for key in ("ref_repeats", "repeats", "block", "boot", "serial_repeats"):
        if getattr(args, key) < (0 if key == "serial_repeats" else 1):
            ap.error(f"--{key.replace('_', '-')}: got {getattr(args, key)}, expected >= 1")
    if not 0.0 <= args.signal < 1.0:
        ap.error(f"--signal: got {args.signal}, expected 0 <= x < 1 (it is a correlation)")
    return args


def _with_overrides(path: str, overrides: list[str]) -> str:
    """A temporary copy of the params file with ``overrides`` applied by DVC's own writer, the
    one ``dvc exp run -S`` uses; a bad override is one line and an exit."""
    import shutil
    import tempfile

    from dvc.utils.hydra import apply_overrides

    out = Path(tempfile.mkdtemp(prefix="bench_boosting_")) / "params.yaml"
    shutil.copyfile(path, out)
    try:
        apply_overrides(str(out), overrides)
    except ValueError as exc:  # DVC's InvalidArgumentError; hydra's reason is its cause
        reason = " ".join(str(exc.__cause__ or exc).split())
        sys.exit(f"--set {' '.join(overrides)}: {reason}")
    return str(out)


def main() -> int:
    args = _parse()
    # imported here so that their import cost stays out of the timings
    import catboost  # noqa: F401
    import lightgbm  # noqa: F401
    import sklearn  # noqa: F401
    import xgboost  # noqa: F401

    from alphafactory.config import load_params
    from alphafactory.train import family_section

    params = load_params(_with_overrides(args.params, args.set) if args.set else args.params)
    _, blocks, _ = family_section(params, "boosting")
    seed = int((params.get("train") or {}).get("seed", 42))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    panel = make_panel(N_TICKERS, ROWS_PER_TICKER, args.signal, params.get("split") or {})
    print(f"panel: {len(panel.Y):,} rows x {panel.X.shape[1]} features in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    ref_t, pt_t = list(range(args.ref_tickers)), list(range(args.per_symbol_tickers))
    ref = timed("reference", len(ref_t), args.ref_repeats,
                lambda st: fit_reference(panel, ref_t, seed, st))
    pooled = timed("ours pooled", N_TICKERS, args.repeats, lambda st: fit_pooled(panel, blocks, seed, st))
    from alphafactory.compute import FanOut

    per = timed("ours per_symbol", len(pt_t), args.repeats,
                lambda st: fit_per_symbol(panel, pt_t, blocks, seed, st, FanOut()))
    runs = [ref, pooled, per]
    if args.serial_repeats:
        serial = timed("ours per_symbol, one at a time", len(pt_t), args.serial_repeats,
                       lambda st: fit_per_symbol(panel, pt_t, blocks, seed, st, None))
        runs.append(serial)
        if not all(np.array_equal(serial.preds[f], per.preds[f], equal_nan=True) for f in FAMILIES):
            sys.exit("ours per_symbol: side by side and one at a time gave different forecasts")
    load1 = os.getloadavg()

    # Scored rows: ours test rows (after the embargo) of the tickers every setup fitted.
    if not (panel.ref_segment[panel.segment == "test"] == "test").all():
        sys.exit("ours test rows are not a subset of the reference's: the cut dates differ")
    common = min(len(ref_t), len(pt_t))
    rows = np.flatnonzero((panel.segment == "test") & (panel.sym < common))
    rows_all = np.flatnonzero(panel.segment == "test")
    scorer = Scorer.build(panel, rows, args.block, args.boot, seed)
    scorer_all = Scorer.build(panel, rows_all, args.block, args.boot, seed)

    def forecast(run: Run | None, fam: str, r: np.ndarray, j: int) -> np.ndarray:
        if run is None:
            return panel.oracle[r, j]
        f = (np.mean([run.preds[f][r, j] for f in FAMILIES], axis=0) if fam == "mean"
             else run.preds[fam][r, j])
        if not np.isfinite(f).all():
            sys.exit(f"{run.name}: missing {fam} forecasts on scored rows")
        return f

    def score(sc: Scorer, run: Run | None, fam: str, j: int) -> dict:
        return sc.score(panel.Y[sc.rows, j].astype(np.float64), forecast(run, fam, sc.rows, j))

    ref22_wall = ref.per_22(statistics.median(ref.wall))
    ref22_cpu = ref.per_22(statistics.median(ref.cpu))
    print(f"\n{os.cpu_count()} cores, python {sys.version.split()[0]}, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}; load average (1, 5, 15 min) at start "
          f"{tuple(round(x, 2) for x in load0)}, at end {tuple(round(x, 2) for x in load1)}")
    print(f"panel: {N_TICKERS} tickers x {ROWS_PER_TICKER:,} hourly bars x {N_FEATURES} features, "
          f"horizons {HORIZONS}, planted signal {args.signal}. Seconds: fit + test forecasts of all "
          "3 families x 3 horizons; CPU = all threads of the process. Quality: equal-weight mean of "
          f"the 3 boosters on the same {len(rows):,} test rows (first {common} tickers, fitted by "
          f"every setup); SE: block bootstrap over time ({args.block}-timestamp blocks, "
          f"{args.boot} resamples); dIC: paired difference to the reference.\n")
    print("| setup | tickers timed | wall s, median (min–max) | CPU s, median | wall s, 22 tickers "
          "| CPU s, 22 tickers | ours / reference (wall, CPU) | h | IC ± SE | mean ticker IC ± SE "
          "| dIC vs ref ± SE | rank IC | RMSE | dir acc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worse = []
    for run in [*runs, None]:
        for j, h in enumerate(HORIZONS):
            s, r = score(scorer, run, "mean", j), score(scorer, ref, "mean", j)
            d, se_d = s["ic"] - r["ic"], float(np.nanstd(s["ic_b"] - r["ic_b"]))
            if run is pooled and d < -2 * se_d:
                worse.append(h)
            cells = ["oracle (true E[y])" if run is None else run.name, "", "", "", "", "", ""]
            if j:
                cells[0] = ""
            elif run is not None:
                how = "" if run.tickers == N_TICKERS else " (extrap.)"
                w22, c22 = run.per_22(statistics.median(run.wall)), run.per_22(statistics.median(run.cpu))
                cells[1:] = [str(run.tickers),
                             f"{statistics.median(run.wall):.1f} ({min(run.wall):.1f}–{max(run.wall):.1f})",
                             f"{statistics.median(run.cpu):.1f}", f"{w22:.1f}{how}", f"{c22:.1f}{how}",
                             f"{w22 / ref22_wall:.3f}, {c22 / ref22_cpu:.3f}"]
            dic = "" if run is ref else _fmt(d, se_d)
            print("| " + " | ".join(cells) + f" | {h} | {_fmt(s['ic'], s['ic_se'])} "
                  f"| {_fmt(s['tic'], s['tic_se'])} | {dic} | {_fmt(s['rank_ic'])} "
                  f"| {s['rmse']:.5f} | {s['dir_acc']:.4f} |")

    print(f"\nPer family: seconds summed over the timed tickers' fits (3 horizons each), mean over "
          f"repeats; trees kept by early stopping (mean, min–max over fits); IC ± SE on the same "
          f"{len(rows):,} rows" + (f", then ours pooled on all {N_TICKERS} tickers' {len(rows_all):,} "
                                   "test rows" if len(rows) < len(rows_all) else "") + ".\n")
    print("| setup | model | wall s | CPU s | trees | " + " | ".join(f"IC h{h}" for h in HORIZONS) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(HORIZONS))
    for run in runs:
        n = len(run.wall)
        for fam in FAMILIES:
            tr = run.stats.trees[fam]
            ics = [score(scorer, run, fam, j) for j in range(len(HORIZONS))]
            print(f"| {run.name} | {fam} | {run.stats.wall[fam] / n:.1f} | {run.stats.cpu[fam] / n:.1f} "
                  f"| {np.mean(tr):.0f} ({min(tr)}–{max(tr)}) | "
                  + " | ".join(_fmt(s["ic"], s["ic_se"]) for s in ics) + " |")
    extra = [(pooled, f, f"ours pooled, all {N_TICKERS} tickers") for f in (*FAMILIES, "mean")]
    extra.append((None, "oracle", f"oracle, all {N_TICKERS} tickers"))
    for run, fam, label in extra if len(rows) < len(rows_all) else []:  # else: rows above
        ics = [score(scorer_all, run, fam, j) for j in range(len(HORIZONS))]
        print(f"| {label} | {'mean of 3' if fam == 'mean' else fam} | | | | "
              + " | ".join(_fmt(s["ic"], s["ic_se"]) for s in ics) + " |")

    ours = statistics.median(pooled.wall)
    ok_time = ours <= args.target
    print(f"\nours pooled: {ours:.1f} s wall ({statistics.median(pooled.cpu):.1f} s CPU) for {N_TICKERS} "
          f"tickers, target <= {args.target:.0f} s: {'met' if ok_time else 'MISSED'}; reference "
          f"extrapolated to {N_TICKERS} tickers: {ref22_wall:.1f} s wall ({ref22_cpu:.1f} s CPU); "
          f"speed-up {ref22_wall / ours:.1f}x wall, {ref22_cpu / statistics.median(pooled.cpu):.1f}x CPU")
    cores = len(os.sched_getaffinity(0))
    print(f"load: wall / CPU = {ours / statistics.median(pooled.cpu):.2f} for ours pooled; on an idle "
          f"machine its wall time would be at least CPU / {cores} cores = "
          f"{statistics.median(pooled.cpu) / cores:.1f} s")
    print("quality: ours pooled is " + (f"worse than the reference beyond noise (dIC < -2 SE) at h = {worse}"
                                         if worse else "not worse than the reference beyond noise "
                                         "(dIC > -2 SE) at every horizon"))
    ps22 = per.per_22(statistics.median(per.wall))
    ok_ps = ps22 <= args.per_symbol_target
    ok_speed = ref22_wall / ps22 >= args.per_symbol_speedup
    how = "" if per.tickers == N_TICKERS else f" (extrapolated from {per.tickers})"
    print(f"ours per_symbol: {ps22:.1f} s wall ({per.per_22(statistics.median(per.cpu)):.1f} s CPU) for "
          f"{N_TICKERS} tickers{how}, target <= {args.per_symbol_target:.0f} s: {'met' if ok_ps else 'MISSED'}; "
          f"speed-up over the reference {ref22_wall / ps22:.1f}x wall, target >= {args.per_symbol_speedup:g}x: "
          f"{'met' if ok_speed else 'MISSED'}")
    if args.serial_repeats:
        s22 = serial.per_22(statistics.median(serial.wall))
        print(f"ours per_symbol, one at a time: {s22:.1f} s wall for {N_TICKERS} tickers{how} "
              f"({ref22_wall / s22:.1f}x the reference); side by side is {s22 / ps22:.2f}x faster, "
              "forecasts identical")
    return 0 if ok_time and not worse and ok_ps and ok_speed else 1


if __name__ == "__main__":
    sys.exit(main())
