"""Feature selection fitted on the training rows only (``train.select``).

The featurize stage computes every feature group for every row; which columns a model then sees
is a *fit* step, like the model itself, so it lives here and runs inside
:func:`alphafactory.train.fit_models`: once per training stage, once per CV fold (on the fold's
train rows) and once per refit of any other caller of ``fit_models``. It reads the rows whose
segment is ``train`` and nothing else: val stays for early stopping and calibration, test for
scoring.

Every method gives each feature a score (higher is better) on the train rows; ``top_k`` keeps
the k best, ``threshold`` keeps those scoring at least that much. The kept columns stay in the
features table's order. Scores are averaged over the horizons (the columns of ``Y``: forward
returns, also under ``train.task: classification``).

* ``correlation``: score = |Pearson correlation with the target|, on the rows where both are
  finite. Features are first de-duplicated greedily: in decreasing score, a feature whose
  |correlation| with an already kept feature exceeds ``max_corr`` is dropped (feature-feature
  correlations on the train rows, missing values set to the column mean).
* ``importance``: share of the total split gain of a LightGBM booster per horizon (``rounds``
  trees, fixed settings, no early stopping: there is no val to stop on), summed to 1 per horizon.
* ``permutation``: the latest ``holdout_frac`` of the train timestamps is an inner hold-out;
  the train rows less than max(horizon) of their symbol's train rows before it are purged (their
  labels reach into it); a LightGBM booster per horizon is fitted on the rest as above. Score =
  hold-out Pearson IC minus the IC with that one feature shuffled (a seeded permutation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd

from alphafactory.config import Interval
from alphafactory.dataset import Dataset
from alphafactory.errors import ConfigError

log = logging.getLogger(__name__)
METHODS = ("none", "correlation", "importance", "permutation")
KEY = "train.select"  # where the block lives in params.yaml: every error names its keys from here

# The selector's own booster (importance, permutation): a small, heavily regularised LightGBM,
# fixed so that a selection depends on the data, ``rounds`` and the seed only.
_LGB_PARAMS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15,
               "min_data_in_leaf": 100, "feature_fraction": 0.7, "bagging_fraction": 0.8,
               "bagging_freq": 1, "lambda_l2": 10.0, "num_threads": 2, "deterministic": True,
               "force_col_wise": True, "verbose": -1}


@dataclass(frozen=True)
class SelectConfig:
    """``train.select``: which feature columns the models are fitted on."""

    method: Literal["none", "correlation", "importance", "permutation"] = "none"
    top_k: Annotated[int | None, Interval(ge=1)] = None  # keep the k best-scored features
    threshold: float | None = None  # or keep those scoring >= this (units: see the method)
    max_corr: Annotated[float, Interval(gt=0, le=1)] = 0.9  # correlation: de-duplication cut-off
    rounds: Annotated[int, Interval(ge=1)] = 200  # importance, permutation: trees per horizon
    holdout_frac: Annotated[float, Interval(gt=0, lt=1)] = 0.2  # permutation: inner hold-out share

    def validate(self) -> None:
        if self.method != "none" and (self.top_k is None) == (self.threshold is None):
            raise ConfigError(f"{KEY}: method {self.method!r} needs exactly one of top_k and threshold; "
                              f"got top_k={self.top_k}, threshold={self.threshold}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ConfigError(f"{KEY}.threshold: got {self.threshold}, expected a finite number")

    @property
    def active(self) -> bool:
        return self.method != "none"


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`fit_selection`: the kept columns (in the candidates' order) and the
    score of every candidate (NaN for one dropped as a duplicate by ``correlation``)."""

    method: str
    columns: list[str]
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a model manifest's ``meta.selection``): the method, how many columns it
        kept of how many, and the kept columns' scores, best first."""
        kept = sorted(self.columns, key=lambda c: -self.scores[c])
        return {"method": self.method, "kept": len(self.columns), "of": len(self.scores),
                "scores": {c: round(float(self.scores[c]), 8) for c in kept}}


def _abs_corr(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(F,) |Pearson correlation| of each column of ``X`` (n, F) with ``y`` (n,), each on the
    rows where both are finite; 0 where fewer than 3 rows or a constant side."""
    ok = np.isfinite(y)
    X, y = X[ok].astype(np.float64), y[ok].astype(np.float64)
    valid = np.isfinite(X)
    n = valid.sum(0)
    safe_n = np.maximum(n, 1)
    yy = np.where(valid, y[:, None], 0.0)
    dx = np.where(valid, X - np.where(valid, X, 0.0).sum(0) / safe_n, 0.0)
    dy = np.where(valid, yy - yy.sum(0) / safe_n, 0.0)
    den = np.sqrt((dx * dx).sum(0) * (dy * dy).sum(0))
    r = np.divide((dx * dy).sum(0), den, out=np.zeros(X.shape[1]), where=den > 0)
    return np.where(n >= 3, np.abs(r), 0.0)


def _feature_corr(X: np.ndarray) -> np.ndarray:
    """(F, F) |correlation| between the columns of ``X`` (n, F), missing values at the column
    mean; 0 for a constant column."""
    X = X.astype(np.float64)
    mean = np.nanmean(np.where(np.isfinite(X), X, np.nan), axis=0) if len(X) else np.zeros(X.shape[1])
    mean = np.nan_to_num(mean)
    Z = np.where(np.isfinite(X), X, mean) - mean
    sd = np.sqrt((Z * Z).mean(0))
    Z = np.divide(Z, sd, out=np.zeros_like(Z), where=sd > 0)
    return np.abs(Z.T @ Z) / max(len(Z), 1)


def _correlation_scores(X: np.ndarray, Y: np.ndarray, max_corr: float) -> np.ndarray:
    score = np.mean([_abs_corr(X, Y[:, j]) for j in range(Y.shape[1])], axis=0)
    C = _feature_corr(X)
    kept: list[int] = []
    out = np.full(len(score), np.nan)
    for j in np.argsort(-score, kind="stable"):  # a loop over features, not rows
        if not kept or C[j, kept].max() <= max_corr:
            kept.append(j)
            out[j] = score[j]
    return out


def _boosters(X: np.ndarray, Y: np.ndarray, rounds: int, seed: int) -> list[Any]:
    """One selector booster per column of ``Y``, each on its labelled rows."""
    import lightgbm as lgb  # deferred: serving imports this module's importers, never LightGBM's sklearn

    out = []
    for j in range(Y.shape[1]):
        ok = np.isfinite(Y[:, j])
        if ok.sum() < 2 * _LGB_PARAMS["min_data_in_leaf"]:
            raise ValueError(f"{KEY}: {int(ok.sum())} labelled train rows at horizon column {j}; expected at "
                             f"least {2 * _LGB_PARAMS['min_data_in_leaf']} to fit the selector's booster")
        params = {**_LGB_PARAMS, "seed": seed + j}
        out.append(lgb.train(params, lgb.Dataset(X[ok], Y[ok, j], free_raw_data=True), num_boost_round=rounds))
    return out


def _importance_scores(X: np.ndarray, Y: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    shares = []
    for b in _boosters(X, Y, rounds, seed):
        gain = b.feature_importance("gain").astype(np.float64)
        shares.append(gain / gain.sum() if gain.sum() > 0 else gain)
    return np.mean(shares, axis=0)


def inner_holdout(timestamps: np.ndarray, symbols: np.ndarray, frac: float, purge: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(fit, hold-out) boolean masks over train rows (sorted by symbol, then time): hold-out =
    the latest ``frac`` of the distinct timestamps; fit = the earlier rows, less each symbol's
    last ``purge`` rows before the hold-out (a label of h <= purge bars reaches into it)."""
    stamps = np.unique(timestamps)
    if len(stamps) < 2:
        raise ValueError(f"{KEY}.holdout_frac: the train rows span {len(stamps)} timestamp(s); expected "
                         "at least 2 to carve an inner hold-out")
    cut = stamps[len(stamps) - max(1, int(np.ceil(frac * len(stamps))))]
    hold = timestamps >= cut
    before = ~hold
    # per row: its symbol's rows before the cut from this one on (1 = the last one before the cut)
    rev = pd.Series(before[::-1].astype(np.int64)).groupby(symbols[::-1]).cumsum().to_numpy()[::-1]
    rank = np.where(before, rev, 0)
    return before & (rank > purge), hold


def _ic(y: np.ndarray, p: np.ndarray) -> float:
    if len(y) < 3 or np.std(y) == 0 or np.std(p) == 0:
        return 0.0
    return float(np.corrcoef(y, p)[0, 1])


def _permutation_scores(X: np.ndarray, Y: np.ndarray, fit: np.ndarray, hold: np.ndarray, rounds: int,
                        seed: int) -> np.ndarray:
    boosters = _boosters(X[fit], Y[fit], rounds, seed)
    drops = np.zeros((Y.shape[1], X.shape[1]))
    rng = np.random.default_rng(seed)
    for j, b in enumerate(boosters):
        ok = hold & np.isfinite(Y[:, j])
        Xh, yh = X[ok].copy(), Y[ok, j]
        base = _ic(yh, b.predict(Xh))
        for f in range(X.shape[1]):
            orig = Xh[:, f].copy()
            Xh[:, f] = orig[rng.permutation(len(orig))]
            drops[j, f] = base - _ic(yh, b.predict(Xh))
            Xh[:, f] = orig
    return drops.mean(0)


def fit_selection(X: np.ndarray, Y: np.ndarray, names: list[str], cfg: SelectConfig, *, seed: int,
                  timestamps: np.ndarray | None = None, symbols: np.ndarray | None = None,
                  max_horizon: int = 1) -> Selection:
    """Score the columns of ``X`` and keep those ``cfg`` asks for.

    X: (n, F) float32 features of the *training* rows, sorted by symbol then time; Y: (n, H)
    their targets (NaN where unlabelled); names: the F column names; timestamps, symbols: (n,)
    of the same rows, needed by ``permutation`` (inner hold-out); max_horizon: the longest label
    in bars (the purge before that hold-out). Raises ConfigError when ``top_k`` exceeds F or no
    feature reaches ``threshold``."""
    if X.shape[1] != len(names):
        raise ValueError(f"{KEY}: X has {X.shape[1]} columns but {len(names)} names")
    if cfg.method == "none":
        return Selection("none", list(names), {n: 0.0 for n in names})
    if cfg.method == "correlation":
        score = _correlation_scores(X, Y, cfg.max_corr)
    elif cfg.method == "importance":
        score = _importance_scores(X, Y, cfg.rounds, seed)
    elif cfg.method == "permutation":
        if timestamps is None or symbols is None:
            raise ValueError(f"{KEY}: method permutation needs the rows' timestamps and symbols")
        fit, hold = inner_holdout(np.asarray(timestamps), np.asarray(symbols), cfg.holdout_frac, max_horizon)
        score = _permutation_scores(X, Y, fit, hold, cfg.rounds, seed)
    else:
        raise ValueError(f"{KEY}.method: got {cfg.method!r}, expected one of {list(METHODS)}")
    ranked = np.where(np.isnan(score), -np.inf, score)
    candidates = int(np.isfinite(ranked).sum())
    if cfg.top_k is not None:
        if cfg.top_k > candidates:
            raise ConfigError(f"{KEY}.top_k: got {cfg.top_k}, but {cfg.method} leaves {candidates} candidate "
                              f"features of {len(names)}; expected at most {candidates}")
        keep = np.zeros(len(names), bool)
        keep[np.argsort(-ranked, kind="stable")[:cfg.top_k]] = True
    else:
        keep = ranked >= cfg.threshold
        if not keep.any():
            raise ConfigError(f"{KEY}.threshold: got {cfg.threshold}, but no feature scores that much under "
                              f"{cfg.method} (best {np.max(ranked):.6g}); expected a lower threshold")
    columns = [n for n, k in zip(names, keep, strict=True) if k]
    return Selection(cfg.method, columns, {n: float(s) for n, s in zip(names, score, strict=True)})


def select_dataset(ds: Dataset, cfg: SelectConfig | None, *, seed: int) -> tuple[Dataset, Selection | None]:
    """``ds`` restricted to the columns :func:`fit_selection` keeps when fitted on its ``train``
    rows (the val and test rows are never read); ``(ds, None)`` unchanged under method none."""
    if cfg is None or not cfg.active:
        return ds, None
    rows = ds.rows("train")
    if len(rows) == 0:
        raise ValueError(f"{KEY}: no train rows to fit the feature selection on")
    sel = fit_selection(ds.X[rows], ds.Y[rows], ds.feature_names, cfg, seed=seed,
                        timestamps=ds.keys["timestamp"].to_numpy()[rows], symbols=ds.sym_codes[rows],
                        max_horizon=max(ds.horizons))
    best = list(sel.to_dict()["scores"])[:10]
    log.info("%s: %s kept %d of %d features (fitted on %d train rows); best: %s", KEY, cfg.method,
             len(sel.columns), len(ds.feature_names), len(rows), ", ".join(best))
    return ds.with_features(sel.columns), sel

