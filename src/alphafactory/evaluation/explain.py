"""Which features the trained models use, measured on the test period.

* **Tree SHAP** for tree models (any model whose per-horizon estimators are LightGBM, XGBoost or
  CatBoost boosters: the boosting family, and a random forest in LightGBM's rf mode): the
  libraries' own exact contributions (``Booster.predict(pred_contrib=True)``,
  ``Booster.predict(DMatrix, pred_contribs=True)``, ``get_feature_importance(type="ShapValues")``).
  Per row, the contributions plus the expected value add up to the forecast (checked on every
  call). Summarised as mean |SHAP| per feature and horizon, and as each feature's share of the
  total.
* **Permutation importance** for every other registered model (neural, ridge, SVR, ...), through
  nothing but ``Model.predict``: a feature (or a group of features) is shuffled across the test
  rows and the drop in test IC is measured, averaged over a few seeds. Sequence models get the
  feature's whole window shuffled across samples, so each window stays a coherent series that
  no longer belongs to its row. To stay fast, only a capped, evenly spaced set of test rows is
  scored and only a subset of features is shuffled: the top features by SHAP share, or groups of
  features that share a name prefix (``vol_*``, ``rsi_*``).
* A network that reads raw OHLCV windows (``neural.inputs.kind`` raw or both,
  :mod:`alphafactory.raw_windows`) is given them, built from the prepared bars as in training,
  and gets one more group per resolution ``[k, n]``: ``raw_<k>x<n>``, its 5 channels (open, high,
  low, close, volume) shuffled together across rows by the same code and permutations as a
  feature group, after the feature groups (none under ``raw``: it reads no feature column). Its
  rows of ``permutation.csv`` have ``kind`` ``raw``. Tree SHAP covers tree models only, which
  never read raw windows, so a raw network has permutation importance alone, like every network.

Only test rows are used: nothing here feeds back into training or model selection.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd

from alphafactory import models, raw_windows
from alphafactory.compute import FanOut, single_threaded_blas
from alphafactory.config import Interval
from alphafactory.dataset import Dataset
from alphafactory.errors import ConfigError
from alphafactory.models.base import Model, float_matrix
from alphafactory.progress import progress

log = logging.getLogger(__name__)
PERMUTE_MODES = ("top_shap", "prefix")


@dataclass(frozen=True)
class ExplainConfig:
    shap_rows: Annotated[int, Interval(ge=0)] = 2000  # test rows for SHAP, evenly spaced over the test period (0: all)
    top_k: Annotated[int, Interval(ge=1)] = 20  # features in the top-features table
    # top_shap: the perm_features top features by SHAP | prefix: name groups
    permute: Literal["top_shap", "prefix"] = "top_shap"
    perm_features: Annotated[int, Interval(ge=1)] = 10  # top_shap mode: how many features are shuffled one at a time
    perm_rows: Annotated[int, Interval(ge=0)] = 1000  # test rows scored per shuffle, evenly spaced (0: all)
    perm_seeds: Annotated[int, Interval(ge=1)] = 3  # shuffles averaged per feature
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# SHAP
# ---------------------------------------------------------------------------------------------


def _booster_kind(est: Any) -> str | None:
    """'lightgbm', 'xgboost', 'catboost' or None for an estimator without native tree SHAP."""
    import catboost as cb
    import lightgbm as lgb
    import xgboost as xgb

    if isinstance(est, lgb.Booster):
        return "lightgbm"
    if isinstance(est, xgb.Booster):
        return "xgboost"
    if isinstance(est, cb.CatBoost):
        return "catboost"
    return None


def supports_shap(model: Model) -> bool:
    """True when every per-horizon estimator of ``model`` is a LightGBM/XGBoost/CatBoost booster
    fitted for regression. A classifier's forecast (an expected return under its class
    probabilities) is not additive in the trees' raw scores, so classifiers get permutation
    importance instead."""
    if getattr(model, "task", "regression") != "regression":
        return False
    ests = getattr(model, "estimators_", None)
    return bool(ests) and all(_booster_kind(e) is not None for e in ests)


def _lightgbm_rf(est: Any) -> bool:
    """True for a LightGBM booster trained in random-forest mode (any alias of ``boosting``)."""
    params = getattr(est, "params", None) or {}
    return any(params.get(k) in ("rf", "random_forest") for k in ("boosting", "boosting_type", "boost"))


def _contributions(est: Any, X: np.ndarray) -> np.ndarray:
    """(n, F + 1) float64: per-feature contributions, then the expected value (last column)."""
    kind = _booster_kind(est)
    if kind == "lightgbm":
        # the same trees predict() uses (see LightGBMModel._predict_one); a loaded booster has
        # best_iteration <= 0, meaning all of them
        n_iter = est.best_iteration if est.best_iteration > 0 else est.current_iteration()
        out = est.predict(X, pred_contrib=True, num_iteration=n_iter)
        if _lightgbm_rf(est):
            # rf mode predicts the mean of its trees but pred_contrib returns their sum
            # (LightGBM issue #6217, open in 4.7): average the contributions the same way
            out = np.asarray(out, dtype=np.float64) / n_iter
    elif kind == "xgboost":
        import xgboost as xgb

        out = est.predict(xgb.DMatrix(X), pred_contribs=True)
    elif kind == "catboost":
        import catboost as cb

        out = est.get_feature_importance(type="ShapValues", data=cb.Pool(X))
    else:
        raise ValueError(f"no native SHAP for estimator {type(est).__name__}; "
                         "expected a LightGBM, XGBoost or CatBoost booster")
    out = np.asarray(out, dtype=np.float64)
    if out.shape != (len(X), X.shape[1] + 1):
        raise ValueError(f"{kind} contributions have shape {out.shape}, expected {(len(X), X.shape[1] + 1)}")
    return out


def shap_values(model: Model, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact tree SHAP of a tree model (see ``supports_shap``).

    X: (n, F) float32 (or float64) features. Returns (phi, base): phi (n, H, F) contributions per horizon and
    feature, base (n, H) expected values; ``phi.sum(-1) + base == model.predict(X)`` up to
    float rounding.
    """
    if not supports_shap(model):
        raise ValueError(f"model {model.name!r} has no native tree SHAP; use permutation_importance")
    X = float_matrix(X)
    parts = [_contributions(e, X) for e in progress(model.estimators_, desc=f"{model.name} SHAP",
                                                     unit="horizon")]  # H x (n, F + 1)
    stacked = np.stack(parts, axis=1)  # (n, H, F + 1)
    return stacked[..., :-1], stacked[..., -1]


def shap_summary(model: Model, X: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
    """Mean |SHAP| per horizon and feature of one tree model on rows X (n, F).

    Returns long rows ``model, horizon, feature, mean_abs_shap, share`` (share: the feature's
    fraction of the horizon's total mean |SHAP|, so horizons with different return scales compare)."""
    phi, base = shap_values(model, X)
    # Guard: the contributions must explain the forecasts the model really makes (same trees).
    pred = model.predict(X)
    err = float(np.max(np.abs(phi.sum(-1) + base - pred))) if len(X) else 0.0
    if err > 1e-3 * float(pred.std()) + 1e-9:
        raise ValueError(f"{model.name}: SHAP values + expected value differ from predict() by up to {err:.3g}; "
                         "expected them to add up (are the saved trees the ones predict uses?)")
    mean_abs = np.abs(phi).mean(axis=0)  # (H, F), in units of the target (log return)
    total = mean_abs.sum(axis=1, keepdims=True)
    share = np.divide(mean_abs, total, out=np.zeros_like(mean_abs), where=total > 0)
    H, F = mean_abs.shape
    return pd.DataFrame({
        "model": model.name,
        "horizon": np.repeat(np.asarray(model.horizons, np.int64), F),
        "feature": np.tile(np.asarray(feature_names, dtype=object), H),
        "mean_abs_shap": mean_abs.reshape(-1),
        "share": share.reshape(-1),
    })


def top_features(shap: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k features with the largest SHAP share averaged over models and horizons.

    Returns ``rank, feature, importance`` (importance: mean share, a fraction), best first."""
    if shap.empty:
        return pd.DataFrame({"rank": pd.Series(dtype="int64"), "feature": pd.Series(dtype=object),
                             "importance": pd.Series(dtype="float64")})
    mean = shap.groupby("feature", sort=True)["share"].mean()
    mean = mean.sort_values(ascending=False, kind="stable").head(k)
    return pd.DataFrame({"rank": np.arange(1, len(mean) + 1), "feature": mean.index.to_numpy(),
                         "importance": mean.to_numpy()})


# ---------------------------------------------------------------------------------------------
# permutation importance
# ---------------------------------------------------------------------------------------------


def prefix_groups(feature_names: list[str]) -> dict[str, list[str]]:
    """Features grouped by the name up to the first ``_`` (``vol_cc_20`` -> ``vol``), in order."""
    groups: dict[str, list[str]] = {}
    for name in feature_names:
        groups.setdefault(name.split("_", 1)[0], []).append(name)
    return groups


def _pearson_columns(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pearson correlation of a[:, j] and b[:, j] over mask[:, j]; a, b, mask (n, H) -> (H,).
    NaN where fewer than 2 rows or a side is constant."""
    m = mask.astype(np.float64)
    cnt = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a0 = np.where(mask, a, 0.0)
        b0 = np.where(mask, b, 0.0)
        da = np.where(mask, a - a0.sum(0) / cnt, 0.0)
        db = np.where(mask, b - b0.sum(0) / cnt, 0.0)
        r = (da * db).sum(0) / np.sqrt((da * da).sum(0) * (db * db).sum(0))
    r[(cnt < 2) | ~np.isfinite(r)] = np.nan
    return r


def _score(pred: np.ndarray, Y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IC, MSE) per horizon of forecasts ``pred`` (n, H) against ``Y`` (n, H) on ``mask``."""
    ic = _pearson_columns(pred, Y, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(mask, (pred - np.nan_to_num(Y)) ** 2, 0.0).sum(0) / mask.sum(0)
    return ic, mse


def _shuffled_scores(job: tuple[Model, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One group's shuffles (a piece of work that may run on another process): ``job`` is
    (model, X, Y, the group's column indices, (seeds, n) row permutations). Returns the (seeds, H)
    ICs and MSEs of the forecasts with the group's columns permuted by each permutation."""
    model, X, Y, cols, perms = job
    X = float_matrix(X).copy()  # shuffled in place below
    mask = ~np.isnan(Y)
    original = X[..., cols].copy()  # (n, k) or (n, L, k)
    ics, mses = [], []
    for perm in perms:
        X[..., cols] = original[perm]
        ic, mse = _score(model.predict(X), Y, mask)
        ics.append(ic)
        mses.append(mse)
    return np.asarray(ics), np.asarray(mses)


def permutation_importance(model: Model, X: np.ndarray, Y: np.ndarray, groups: dict[str, list[int]],
                           n_seeds: int = 3, seed: int = 0, fan: FanOut | None = None) -> pd.DataFrame:
    """Drop in test IC (and rise in MSE) when each group of feature columns is shuffled across rows.

    X: (n, F) or (n, L, F) float32 (or float64) model inputs (shuffled along axis 0, one feature column at a
    time for every window step together); Y: (n, H) realised targets, NaN where unlabelled;
    groups: label -> feature column indices shuffled together; fan: where the groups' shuffles
    run (:mod:`alphafactory.compute`; None: here). The permutations are drawn here, in group
    order from one generator seeded ``seed``, so the result does not depend on where they run.

    Returns long rows ``horizon, feature, base_ic, ic_drop, ic_drop_std, mse_rise`` per horizon
    and group: ``ic_drop = base_ic - shuffled_ic`` (mean over seeds; > 0 means the model uses it),
    ``ic_drop_std`` its spread over seeds (ddof=1, NaN for one seed), ``mse_rise`` the relative
    increase of MSE (0.01 = +1 %).
    """
    X = float_matrix(X)
    Y = np.asarray(Y, np.float64)
    if len(X) != len(Y) or Y.ndim != 2:
        raise ValueError(f"X has {len(X)} rows and Y shape {Y.shape}; expected Y (n, H) with n = {len(X)}")
    with single_threaded_blas():  # as in the shuffles' pieces of work, so ic_drop compares like with like
        base_ic, base_mse = _score(model.predict(X), Y, ~np.isnan(Y))
    rng = np.random.default_rng(seed)
    jobs = [(model, X, Y, np.asarray(cols, dtype=np.int64), np.stack([rng.permutation(len(X)) for _ in range(n_seeds)]))
            for cols in groups.values()]
    scores = (fan or FanOut()).map(_shuffled_scores, jobs, desc=f"{model.name} permutation", unit="group")
    rows = []
    for label, (ics, mses) in zip(groups, scores, strict=True):
        drops = base_ic[None, :] - ics  # (seeds, H)
        with np.errstate(invalid="ignore", divide="ignore"):
            rise = mses.mean(0) / base_mse - 1.0
        rows.append(pd.DataFrame({
            "horizon": np.asarray(model.horizons, np.int64), "feature": label, "base_ic": base_ic,
            "ic_drop": drops.mean(0), "ic_drop_std": drops.std(0, ddof=1) if n_seeds > 1 else np.nan,
            "mse_rise": rise,
        }))
    return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# the stage's work
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainResult:
    shap: pd.DataFrame  # model, horizon, feature, mean_abs_shap, share
    top: pd.DataFrame  # rank, feature, importance
    # model, horizon, feature, kind (feature | group | raw), base_ic, ic_drop, ic_drop_std, mse_rise, n_rows
    permutation: pd.DataFrame
    models: pd.DataFrame  # model, family, input_kind, method, n_rows

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"shap.csv": self.shap, "top_features.csv": self.top,
                "permutation.csv": self.permutation, "models.csv": self.models}


def evenly_spaced(rows: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` of ``rows`` (0: all), evenly spaced so the whole period is covered."""
    if cap == 0 or len(rows) <= cap:
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, cap).round().astype(np.int64))]


def model_dirs(parents: list[str | Path]) -> list[Path]:
    """Saved model directories (those with a manifest.json) under each family directory."""
    found = []
    for parent in map(Path, parents):
        if not parent.is_dir():
            raise ValueError(f"model directory {parent} does not exist; expected a family directory "
                             "such as models/boosting written by a training stage")
        found.extend(sorted(p for p in parent.iterdir() if (p / "manifest.json").is_file()))
    return found


def _inputs(model: Model, ds: Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, rows kept): (n, F) for tabular models, (n, L, F) windows for sequence models, with
    their raw OHLCV channels (n, L, F + 5R) or alone (n, L, 5R) under ``neural.inputs`` (only the
    rows with the history those read are kept, as in training)."""
    if model.input_kind != "sequence":
        return ds.X[rows], rows
    lookback = getattr(model, "lookback", None) or (getattr(model, "meta_", {}) or {}).get("lookback")
    if not lookback:
        raise ValueError(f"sequence model {model.name!r} records no lookback in its manifest")
    inputs = raw_windows.of_model(model)
    rows = raw_windows.history_rows(ds, ds.window_ends(rows, int(lookback)), inputs)
    return np.asarray(raw_windows.dataset_windows(ds, rows, int(lookback), inputs)), rows


def raw_groups(inputs: raw_windows.InputsConfig, n_features: int) -> dict[str, list[int]]:
    """The raw-window groups of a network reading ``inputs``: ``raw_<k>x<n>`` -> the input
    channels of that resolution (its 5 OHLCV channels, after the ``n_features`` feature channels
    under ``both``, from 0 under ``raw``); empty without raw inputs."""
    if not inputs.raw:
        return {}
    first = n_features if inputs.features else 0
    width = len(raw_windows.FIELDS)
    return {f"raw_{k}x{n}": list(range(first + width * r, first + width * (r + 1)))
            for r, (k, n) in enumerate(inputs.resolutions)}


def _trained_columns(loaded: list[tuple[Model, Path]], ds: Dataset) -> Dataset:
    """``ds`` restricted to the feature columns the models were fitted on (``meta.features``),
    when ``train.select`` chose a subset of the table's columns (the same one for every model:
    it is fitted on the same train rows); ``ds`` itself when they were fitted on all of them."""
    trained = {tuple((getattr(m, "meta_", {}) or {}).get("features") or ds.feature_names) for m, _ in loaded}
    if len(trained) == 1:
        (cols,) = trained
        if list(cols) != list(ds.feature_names) and set(cols) <= set(ds.feature_names):
            log.info("explain: the models were fitted on %d selected features of %d (train.select)",
                     len(cols), len(ds.feature_names))
            return ds.with_features(list(cols))
    return ds


def _check_features(model: Model, path: Path, ds: Dataset) -> None:
    trained = (getattr(model, "meta_", {}) or {}).get("features")
    if trained is not None and list(trained) != list(ds.feature_names):
        extra = sorted(set(ds.feature_names) - set(trained))[:5]
        missing = sorted(set(trained) - set(ds.feature_names))[:5]
        raise ValueError(f"{path}: trained on {len(trained)} feature columns, but the features table has "
                         f"{len(ds.feature_names)} (not trained on: {extra}; absent: {missing}); "
                         "expected the same columns in the same order: rerun the training stages")


def explain_models(dirs: list[Path], ds: Dataset, cfg: ExplainConfig, fan: FanOut | None = None,
                   bars: pd.DataFrame | None = None) -> ExplainResult:
    """Tree SHAP for tree models, then permutation importance for every other model in ``dirs``
    (each feature group's shuffles one piece of work for ``fan``, see :func:`permutation_importance`).
    ``bars``: the prepared bars ``ds`` was built from, attached when a network reads raw OHLCV
    windows (its raw groups are then shuffled too); such a network without them is a ConfigError."""
    test = ds.rows("test")
    if len(test) == 0:
        raise ValueError("no test rows in the dataset; expected the split stage to assign some")
    loaded = []
    for path in dirs:
        model = models.load(path)
        if model.symbols is not None:  # one model per symbol: no one model's features to rank
            log.info("explain: %s: per-symbol models (train.scope: per_symbol) are not explained", model.name)
            continue
        loaded.append((model, path))
    raw = [m.name for m, _ in loaded if raw_windows.of_model(m).raw]
    if raw and bars is None:
        raise ConfigError(f"explain: {raw} read raw OHLCV windows (neural.inputs); expected the prepared bars "
                          "they were trained on (explain_models bars=, the stage's --bars)")
    if raw:
        ds = raw_windows.with_bars(ds, bars)
    ds = _trained_columns(loaded, ds)
    for model, path in loaded:
        _check_features(model, path, ds)
    loaded = [m for m, _ in loaded]
    shap_frames, info = [], []
    shap_rows = evenly_spaced(test, cfg.shap_rows)
    for model in progress([m for m in loaded if supports_shap(m)], desc="explain: tree SHAP", unit="model"):
        t0 = time.perf_counter()
        shap_frames.append(shap_summary(model, ds.X[shap_rows], ds.feature_names))
        info.append((model, "shap", len(shap_rows)))
        log.info("explain: %s: tree SHAP on %d test rows x %d features x %d horizons in %.1f s",
                 model.name, len(shap_rows), len(ds.feature_names), len(model.horizons), time.perf_counter() - t0)
    shap = pd.concat(shap_frames, ignore_index=True) if shap_frames else pd.DataFrame(
        columns=["model", "horizon", "feature", "mean_abs_shap", "share"])
    top = top_features(shap, cfg.top_k)

    index = {n: i for i, n in enumerate(ds.feature_names)}
    if cfg.permute == "top_shap" and not top.empty:
        groups, kind = {f: [index[f]] for f in top["feature"].head(cfg.perm_features)}, "feature"
    else:
        if cfg.permute == "top_shap":
            log.info("explain: no tree model to rank features by SHAP; shuffling name-prefix groups")
        groups = {g: [index[f] for f in names] for g, names in prefix_groups(ds.feature_names).items()}
        kind = "group"
    perm_rows = evenly_spaced(test, cfg.perm_rows)
    perm_frames = []
    for model in progress([m for m in loaded if not supports_shap(m)], desc="explain: permutation",
                          unit="model"):
        t0 = time.perf_counter()
        inputs = raw_windows.of_model(model)
        extra = raw_groups(inputs, len(ds.feature_names))
        # after the feature groups, so those get the permutations a feature-only model gets
        own = {**(groups if inputs.features else {}), **extra}
        if len(own) < len(extra) + (len(groups) if inputs.features else 0):
            raise ValueError(f"explain: a feature group of {model.name} is named like a raw group "
                             f"{sorted(set(groups) & set(extra))}; expected distinct names")
        if extra:
            log.info("explain: %s reads raw OHLCV windows (neural.inputs.kind %s): its %d raw groups %s shuffled "
                     "like feature groups; no SHAP for it (tree SHAP covers tree models only)", model.name,
                     inputs.kind, len(extra), list(extra))
        X, rows = _inputs(model, ds, perm_rows)
        table = permutation_importance(model, X, ds.Y[rows], own, cfg.perm_seeds, cfg.seed, fan=fan)
        kinds = np.where(table["feature"].isin(list(extra)), "raw", kind)
        perm_frames.append(table.assign(model=model.name, kind=kinds, n_rows=len(rows)))
        info.append((model, "permutation", len(rows)))
        log.info("explain: %s: permutation importance of %d groups (%s) x %d seeds on %d test rows in %.1f s",
                 model.name, len(own), ", ".join(f"{(kinds == k).sum() // len(model.horizons)} {k}"
                                                 for k in dict.fromkeys(kinds)),
                 cfg.perm_seeds, len(rows), time.perf_counter() - t0)
    cols = ["model", "horizon", "feature", "kind", "base_ic", "ic_drop", "ic_drop_std", "mse_rise", "n_rows"]
    permutation = pd.concat(perm_frames, ignore_index=True)[cols] if perm_frames else pd.DataFrame(columns=cols)
    table = pd.DataFrame([(m.name, m.family, m.input_kind, how, n) for m, how, n in info],
                         columns=["model", "family", "input_kind", "method", "n_rows"])
    return ExplainResult(shap, top, permutation, table)
