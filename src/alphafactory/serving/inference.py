"""Forecasts from raw bars with a trained bundle, and the ``alphafactory predict`` command.

One feature path: bars are validated like ``prepare`` does, featurized by the same
``features.compute_features`` + warm-up drop as the ``featurize`` stage, cut into windows of
``lookback`` bars for the sequence models, forecast by every base model, then stacked by the
blender. So on the pipeline's own bars, ``predict(..., asof="all")`` reproduces the forecasts the
``evaluate`` stage scored (a test checks it). A forecast from each symbol's last bar featurizes
only the ``lookback`` rows it reads (``compute_features(..., tail=)``, equal to the full
computation up to float rounding; a test checks that too).

    bundle = load_bundle("bundle")
    preds = predict(bars, bundle)                       # from each symbol's last bar
    preds = predict(bars, bundle, asof="2013-06-28")    # from the last bar at or before it
    preds = predict(bars, bundle, asof="all")           # every bar with enough history

Cross-sectional features rank each symbol against the others at the same timestamp, so pass the
same panel of symbols the models were trained on (a warning says when it differs).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphafactory import raw_windows
from alphafactory.blend import Stacker
from alphafactory.config import from_dict
from alphafactory.data.frequency import FrequencyInfo
from alphafactory.data.layout import symbol_starts
from alphafactory.data.validate import validate_bars
from alphafactory.dataset import feature_dtype
from alphafactory.errors import BundleError, ConfigError, DataValidationError, InputError
from alphafactory.features import FeatureConfig, compute_feature_matrix, compute_features, warmup_bars
from alphafactory.labels import PROBA_COLUMNS, LabelConfig, trailing_vol
from alphafactory.models.base import Forecaster
from alphafactory.serving import bundle as bundle_files
from alphafactory.serving import onnx_runtime
from alphafactory.uncertainty import Calibration, apply_calibration

log = logging.getLogger(__name__)

# Weight an exponentially weighted feature may still owe to the bars cut off by the default
# history trim (see ``history_bars``); measured effect on forecasts in the README.
HISTORY_TOL = 1e-6
FORECAST_KEYS = ["symbol", "timestamp", "horizon"]  # one forecast row: labels.KEYS + horizon
# Lineage of every forecast row, right after its key: the time it forecasts (see target_timestamps),
# the bundle that made it (sha256 of its manifest.json) and that bundle's format version.
LINEAGE = ["target_timestamp", "bundle_sha256", "bundle_version"]
# Forecast bars per pass of the models and the blender (predict's memory bound past the
# features; measured in the README). Larger is no faster: every step is vectorised per batch.
CHUNK_ROWS = 20_000
# Bars up to which predict featurizes in one thread: on a few thousand bars the feature
# groups take less time than starting compute_features' thread pool (measured in docs/serve.md),
# and a server already runs several forecasts at once. The values do not depend on it.
SERIAL_FEATURE_ROWS = 20_000
SMALL_TABLE_ROWS = 4096  # feature rows that _feature_matrix copies at once (see there)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. ``models``: base models by name, blender members first."""

    path: Path
    digest: str  # sha256 of manifest.json: identifies the bundle (and, through it, every file)
    features: FeatureConfig
    label: LabelConfig  # vol_window sets the volatility that scales yhat_std
    frequency: FrequencyInfo
    horizons: tuple[int, ...]
    lookback: int
    feature_columns: tuple[str, ...]
    symbols: tuple[str, ...]
    models: dict[str, Forecaster]
    calibration: dict[str, Calibration]  # per base model: yhat_std and prob_up from val
    blender: Stacker
    primary: str  # the blend method whose forecast is ``yhat`` (the stacking "ensemble")
    config: dict[str, Any]  # bundle.json as written by the bundle stage
    version: int  # manifest.json format_version (verify() loads only bundle_files.FORMAT_VERSION)

    @cached_property  # a bundle's settings never change; read a few times per forecast
    def warmup(self) -> int:
        """Leading bars of each symbol without every feature (dropped, as in ``featurize``)."""
        return warmup_bars(self.features, self.frequency)

    @cached_property
    def window(self) -> int:
        """Bars of features one forecast reads: the longest sequence-model lookback, else 1."""
        return max([m.lookback for m in self.models.values()
                    if m.input_kind == "sequence"], default=1)

    @cached_property
    def min_bars(self) -> int:
        """Bars a symbol needs up to the forecast bar: warm-up + lookback (and at least the
        ``label.vol_window`` returns that scale ``yhat_std``, and the bars of raw OHLCV windows)."""
        return max(self.warmup + self.window, self.label.vol_window + 1,
                   raw_windows.history_needed(self.models.values()))


def ewm_memory_bars(cfg: FeatureConfig, tol: float = HISTORY_TOL) -> int:
    """Bars after which every exponentially weighted feature of ``cfg`` gives the older bars a
    total weight below ``tol``: (1 - alpha_min) ** m <= tol.

    Mirrors the EWM spans in ``features.py`` (vol_ewm and EMAs: 2/(w+1) over ``windows``; ATR
    and RSI: 1/n; MACD: 2/(span+1)); ``test_trimmed_history_matches_full_history`` fails if a
    feature with a longer memory is added."""
    groups = set(cfg.groups)
    alphas = []
    if groups & {"volatility", "moving_average"}:
        alphas += [2.0 / (w + 1.0) for w in cfg.windows]
    if "atr" in groups:
        alphas += [1.0 / n for n in cfg.atr_periods]
    if "rsi" in groups:
        alphas += [1.0 / n for n in cfg.rsi_periods]
    if "macd" in groups:
        alphas += [2.0 / (s + 1.0) for triple in cfg.macd for s in triple]
    if not alphas:
        return 0
    return int(math.ceil(math.log(tol) / math.log1p(-min(alphas))))


def history_bars(bundle: Bundle, tol: float = HISTORY_TOL) -> int:
    """Bars per symbol kept before featurizing for an as-of forecast: warm-up + lookback, plus
    enough earlier bars that features with a long memory (EWMs; the previous week/month/session
    aggregates, which need one more warm-up) come out as they do on the full history."""
    return bundle.min_bars + max(ewm_memory_bars(bundle.features, tol), bundle.warmup)


def load_bundle(path: str | Path) -> Bundle:
    """Verify every file of the bundle at ``path`` against its manifest, then load it.

    Reads JSON and native model files only (:func:`alphafactory.serving.onnx_runtime.load`,
    ``alphafactory.blend.Stacker.load``), and only the files it verified: every path a manifest
    names goes through the :class:`~alphafactory.serving.bundle.VerifiedBundle`. Nothing is unpickled.
    Raises :class:`BundleError` naming the file for a missing, truncated, modified or unlisted
    file, a symbolic link, a path outside the bundle, an unsupported format version, a file its
    library cannot read, and models that disagree with each other or with the blender. Library
    versions and feature code that differ from the ones the bundle was built with are logged as
    warnings."""
    path = Path(path)
    files = bundle_files.verify(path)
    config = files.config
    where = path / bundle_files.CONFIG
    try:
        features = from_dict(FeatureConfig, config["features"], "features")
        label = from_dict(LabelConfig, config["label"], "label")
        frequency = FrequencyInfo.from_dict(config["frequency"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad features, label or frequency section ({e})") from e
    specs = _model_specs(config, where)
    import_boosters_without_sklearn(files, specs)
    loaded: dict[str, Forecaster] = {}
    for name, rel in specs:
        model_dir = files.sub(rel)
        try:
            loaded[name] = onnx_runtime.load(model_dir)
        except BundleError:
            raise
        # A manifest of the wrong shape (missing keys, wrong types) or an unknown model family:
        # name the manifest.
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise BundleError(f"{model_dir}/manifest.json: cannot load model {name!r} "
                              f"({type(e).__name__}: {e})") from e
    blender_dir = files.sub(_get(config, "blender", dict, where).get("path"))
    try:
        blender = Stacker.load(blender_dir)
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise BundleError(f"{blender_dir}/manifest.json: cannot load the blender ({type(e).__name__}: {e})") from e
    bundle = _assemble_bundle(path, files, config, dict(specs), features, label, frequency, loaded, blender)
    _warn_environment(config, path)
    return bundle


def _get(config: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value = config.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"{where}: {key!r} is {str(value)[:80]!r}; expected a JSON "
                          f"{getattr(kind, '__name__', kind)}")
    return value


def _model_specs(config: dict[str, Any], where: Path) -> list[tuple[str, str]]:
    """(name, path) of every base model in ``bundle.json``, checked for shape."""
    specs = _get(config, "models", list, where)
    out: list[tuple[str, str]] = []
    for spec in specs:
        name = spec.get("name") if isinstance(spec, dict) else None
        rel = spec.get("path") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not isinstance(rel, str):
            raise BundleError(f"{where}: models entry {str(spec)[:80]!r}; expected {{\"name\": ..., \"path\": ...}}")
        if name in bundle_files.RESERVED or name in dict(out):
            raise BundleError(f"{where}: model name {name!r} is {'reserved' if name in bundle_files.RESERVED else 'repeated'}")
        out.append((name, rel))
    if not out:
        raise BundleError(f"{where}: no base models; expected at least one")
    return out


def _assemble_bundle(path: Path, files: bundle_files.VerifiedBundle, config: dict[str, Any],
                     dirs: dict[str, str], features: FeatureConfig, label: LabelConfig,
                     frequency: FrequencyInfo, loaded: dict[str, Forecaster], blender: Stacker) -> Bundle:
    """The :class:`Bundle`, once its models agree with ``bundle.json``, each other and the
    blender (what the bundle stage checked when it built it)."""
    where = path / bundle_files.CONFIG
    horizons = tuple(_get(config, "horizons", list, where))
    lookback = _get(config, "lookback", int, where)
    columns = tuple(_get(config, "feature_columns", list, where))
    spec = _get(config, "blender", dict, where)
    blend_at = f"{files.sub(spec['path'])}/manifest.json"
    for name, model in loaded.items():
        at = f"{files.sub(dirs[name])}/manifest.json"
        if model.name != name:
            raise BundleError(f"{at}: model {model.name!r}, but {where} names it {name!r}")
        if tuple(model.horizons) != horizons:
            raise BundleError(f"{at}: horizons {list(model.horizons)}, expected {list(horizons)} ({where})")
        meta = getattr(model, "meta_", None) or {}
        if list(meta.get("features") or ()) != list(columns):
            raise BundleError(f"{at}: meta.features differ from feature_columns in {where}; expected "
                              f"the {len(columns)} columns the bundle lists, in order")
        if model.input_kind == "sequence" and model.lookback != lookback:
            raise BundleError(f"{at}: lookback {model.lookback}, expected {lookback} ({where})")
    members = list(blender.members)
    if spec.get("members") != members:
        raise BundleError(f"{blend_at}: blender members {members}, but "
                          f"{where} lists {spec.get('members')}")
    missing = [m for m in members if m not in loaded]
    if missing:
        raise BundleError(f"{blend_at}: blender members {missing} are not "
                          f"base models of the bundle ({list(loaded)} in {where})")
    if tuple(blender.horizons) != horizons:
        raise BundleError(f"{blend_at}: horizons {list(blender.horizons)}, "
                          f"expected {list(horizons)} ({where})")
    methods = list(blender.cfg.methods)
    primary = spec.get("primary")
    if primary not in methods or set(methods) & set(loaded):
        raise BundleError(f"{where}: blender primary {primary!r} must be one of the blend methods {methods}, "
                          f"none of which may be a base model's name")
    try:
        calibration = {n: Calibration.from_dict(m.meta_["calibration"]) for n, m in loaded.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: a base model's meta.calibration is malformed ({type(e).__name__}: {e})") from e
    return Bundle(
        path=path, digest=files.digest, features=features, label=label, frequency=frequency,
        horizons=horizons, lookback=lookback, feature_columns=columns,
        symbols=tuple(_get(config, "symbols", list, where)), models=loaded, calibration=calibration,
        blender=blender, primary=primary, config=config, version=bundle_files.FORMAT_VERSION,
    )


def import_boosters_without_sklearn(files: bundle_files.VerifiedBundle, specs: list[tuple[str, str]]) -> None:
    """Import LightGBM and XGBoost, if the models of the bundle use them (the distributions their
    manifests record; a per-symbol model's top manifest records those of its first symbol's
    model), with scikit-learn hidden from them when no model records it and it is not imported
    yet. The one place in the package that touches ``sys.modules``.

    Why: both libraries import scikit-learn, when it is installed, only for their optional
    scikit-learn wrappers (``LGBMRegressor``, ``XGBRegressor``), and it imports scipy.stats with
    it: measured on a bundle of lightgbm, ridge and an LSTM (2 cores, light load), a cold
    ``load_bundle`` takes 0.35-0.45 s with this and 0.85-0.95 s without. A bundle loads native
    Boosters, which never use the wrappers, and the same native code computes the forecasts
    either way. The price: in this process those wrappers raise an ImportError when used;
    nothing in alphafactory uses them. This is a load-time saving, not what enforces the
    serving rule (never PyTorch or scikit-learn): ``tests/test_layers.py`` checks that, on the
    source and in a fresh process that loads a bundle and forecasts."""
    packages: set[str] = set()
    for _, rel in specs:
        man = files.sub(rel).read_json("manifest.json")
        versions = man.get("versions") if isinstance(man, dict) else None
        packages |= {p for p in versions if isinstance(p, str)} if isinstance(versions, dict) else set()
    libs = [m for m in ("lightgbm", "xgboost") if m in packages and m not in sys.modules]
    if not libs:
        return
    hide = "scikit-learn" not in packages and "sklearn" not in sys.modules
    if hide:
        sys.modules["sklearn"] = None  # type: ignore[assignment]  # import sklearn: ModuleNotFoundError
    try:
        for m in libs:
            importlib.import_module(m)
    finally:
        if hide and sys.modules.get("sklearn", ...) is None:
            del sys.modules["sklearn"]


def _warn_environment(config: dict[str, Any], path: Path) -> None:
    now = bundle_files.library_versions()
    diff = {k: (v, now.get(k)) for k, v in config.get("versions", {}).items()
            if now.get(k) != v and k not in bundle_files.BUILD_ONLY}
    if diff:
        log.warning("%s: built with other library versions than installed (bundle, installed): %s; "
                    "forecasts may differ slightly", path, diff)
    if config.get("features_code_sha256") != bundle_files.features_code_sha256():
        log.warning("%s: alphafactory/features.py differs from the one the bundle was built with; "
                    "features (and forecasts) may differ from the evaluated ones", path)


def list_models(bundle: Bundle) -> list[str]:
    """The component columns of :func:`predict`: base models (blender members first), then the
    blend methods other than the headline one."""
    return [*bundle.models, *(m for m in bundle.blender.cfg.methods if m != bundle.primary)]


def model_info(bundle: Bundle) -> dict[str, Any]:
    """What the bundle forecasts and what it needs, as plain JSON-able values."""
    cfg = bundle.config
    # The models' own record of the training data (labels + features); one hash when they agree.
    hashes = sorted({str(m.meta_["data_hash"]) for m in bundle.models.values()
                     if "data_hash" in (getattr(m, "meta_", None) or {})})
    return {
        "path": str(bundle.path),
        "bundle_sha256": bundle.digest,
        "bundle_version": bundle.version,
        "data": {**(cfg.get("data") or {}),  # absent from bundles built before it was recorded
                 "data_hash": hashes[0] if len(hashes) == 1 else (hashes or None)},
        "horizons": list(bundle.horizons),
        "base_models": [{k: m[k] for k in ("name", "family", "input_kind")} for m in cfg["models"]],
        "has_neural": any(m["family"] == "neural" for m in cfg["models"]),
        "blender": {k: cfg["blender"][k] for k in ("primary", "methods", "meta", "members")},
        "feature_count": len(bundle.feature_columns),
        "lookback": bundle.lookback,
        "warmup_bars": bundle.warmup,
        "min_bars": bundle.min_bars,
        "history_bars": history_bars(bundle),
        "frequency": bundle.frequency.label,
        "symbols": list(bundle.symbols),
        "versions": cfg["versions"],
    }


def _parse_asof(asof: Any) -> pd.Timestamp | str | None:
    if asof is None or (isinstance(asof, str) and asof == "all"):
        return asof
    try:
        ts = pd.Timestamp(asof)
    except (ValueError, TypeError) as e:
        raise InputError(f"asof: cannot parse {asof!r} as a timestamp; expected e.g. 2013-06-28, "
                         f"'2013-06-28 15:30', or 'all'") from e
    if ts is pd.NaT:
        raise InputError(f"asof: got {asof!r}, expected a timestamp or 'all'")
    # Bars are tz-naive UTC wall time (validate_bars); an aware asof is compared in UTC.
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def trim_history(bars: pd.DataFrame, keep: int) -> pd.DataFrame:
    """At least the last ``keep`` bars of every symbol, cut at one timestamp for all symbols so
    that every kept timestamp keeps its whole cross-section. bars: sorted by (symbol, timestamp)."""
    codes = pd.factorize(bars["symbol"], sort=False)[0]
    starts = symbol_starts(codes)  # (n_symbols,)
    ends = np.r_[starts[1:], len(bars)]
    first_kept = np.maximum(ends - keep, starts)
    ts = bars["timestamp"].to_numpy("datetime64[ns]")
    cutoff = ts[first_kept].min()
    return bars.loc[ts >= cutoff].reset_index(drop=True)


def _check_history(bars: pd.DataFrame, need: int, bundle: Bundle, asof: Any) -> None:
    sym = bars["symbol"].to_numpy()  # sorted (validate_bars): each symbol's rows are contiguous
    starts = symbol_starts(sym)
    sizes = np.diff(np.r_[starts, len(sym)])
    if (sizes < need).any():
        counts = pd.Series(sizes, index=sym[starts])
        short = counts[counts < need]
        listed = ", ".join(f"{s!r} has {n}" for s, n in short.head(10).items())
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        upto = f" up to asof={asof}" if asof is not None else ""
        raise DataValidationError(
            f"bars: too little history{upto}: {listed}{more}; expected at least {need} bars per "
            f"symbol (feature warm-up {bundle.warmup} + lookback {bundle.window}"
            f"{raw_windows.history_note(bundle.models.values())})")


def _check_panel(bars: pd.DataFrame, bundle: Bundle) -> None:
    present = set(pd.unique(bars["symbol"]))
    unknown = sorted(present - set(bundle.symbols))
    for name, model in bundle.models.items():
        if model.symbols is not None:  # a model per symbol
            missing = sorted(present - set(model.symbols))
            if missing:
                raise InputError(f"bars: {len(missing)} symbol(s) have no model {name!r}, which was trained per "
                                 f"symbol (train.scope: per_symbol): {missing[:10]}; its symbols: "
                                 f"{list(model.symbols[:20])}. Drop them, or forecast them with a bundle trained "
                                 "with train.scope: pooled")
    if unknown:
        log.warning("bars: %d symbol(s) not seen in training (forecast with the pooled models): %s",
                    len(unknown), unknown[:10])
    absent = sorted(set(bundle.symbols) - present)
    if absent and "cross_sectional" in bundle.features.groups:
        log.warning("bars: %d training symbol(s) absent: %s; cross-sectional features rank across "
                    "the symbols present, so forecasts differ from a run on the full panel",
                    len(absent), absent[:10])
    # features.cs_normalize is applied to the request's cross-section (compute_features): it
    # needs one, and equals the pipeline's features only with the training symbols all present.
    how = bundle.features.cs_normalize
    if how != "none" and len(present) < 2:
        raise InputError(f"bars: {len(present)} symbol(s); this bundle normalises every feature across the "
                         f"symbols at each timestamp (features.cs_normalize: {how}), so a request needs the "
                         f"cross-section: send the bars of all {len(bundle.symbols)} training symbols together")
    if how != "none" and absent:
        log.warning("bars: %d training symbol(s) absent: %s; features.cs_normalize: %s normalises across the "
                    "symbols present, so forecasts differ from a run on the full panel", len(absent),
                    absent[:10], how)


def predict(bars: pd.DataFrame, bundle: Bundle, asof: str | pd.Timestamp | None = None, *,
            history: int | None = None, source_name: str = "bars") -> pd.DataFrame:
    """Forecast every horizon from raw OHLCV bars.

    bars: raw table (``symbol, timestamp, open, high, low, close, volume``; any row order; the
        same rules as ``prepare``). Each symbol needs ``bundle.min_bars`` bars up to the forecast
        bar (warm-up + lookback).
    asof: None forecasts from each symbol's last bar; a timestamp, from each symbol's last bar at
        or before it (later bars are dropped first, so they cannot leak in); "all", from every
        bar with enough history (for backfills and checks; the full history is featurized).
    history: bars per symbol featurized for an as-of forecast (default :func:`history_bars`,
        which reproduces the full-history features); more is slower, never less faithful.
    Returns one row per (symbol, forecast bar, horizon), sorted: ``symbol, timestamp, horizon``
    (bars ahead); ``yhat``, ``yhat_std`` and ``prob_up`` of the headline blend method (the
    stacking ``ensemble``): the forecast in the training target's units
    (``label.normalize``: the h-bar log return with none, vol units with vol, a relative score
    across symbols with cs_rank/cs_zscore), its calibrated standard deviation and P(return > 0), calibrated on val
    like the pipeline's (:mod:`alphafactory.uncertainty`); with ``train.task: classification``,
    ``p_short, p_neutral, p_long`` of the headline method; then one ``yhat`` column per component
    (:func:`list_models`: each base model and the other blend methods). A bundle trained with
    ``train.scope: per_symbol`` forecasts each symbol with its own models and refuses symbols it
    has none for (:class:`InputError` naming them).
    """
    at = _parse_asof(asof)
    bars = validate_bars(bars, source_name)
    _check_panel(bars, bundle)
    if isinstance(at, pd.Timestamp):
        bars = bars.loc[bars["timestamp"].to_numpy() <= at.to_datetime64()].reset_index(drop=True)
        if bars.empty:
            raise DataValidationError(f"{source_name}: no bar at or before asof={asof}")
    all_rows = isinstance(at, str)
    if not all_rows:
        _check_history(bars, bundle.min_bars, bundle, asof)
        keep = history if history is not None else history_bars(bundle)
        if keep < bundle.min_bars:
            raise InputError(f"history: got {keep}, expected at least {bundle.min_bars} bars "
                             f"(warm-up {bundle.warmup} + lookback {bundle.window})")
        bars = trim_history(bars, keep)
    # As of the last bar, only each symbol's last `window` rows of features are read: the
    # finite-window features are computed on the bars they depend on only (see compute_features).
    n_jobs = 1 if len(bars) <= SERIAL_FEATURE_ROWS else 2
    cols = list(bundle.feature_columns)
    if all_rows:
        feats = compute_features(bars, bundle.features, freq=bundle.frequency, n_jobs=n_jobs)
        _check_columns([c for c in cols if c not in feats.columns], source_name)
        # Exactly the featurize stage's cut (drop_warmup), then every row with a full window of
        # its own symbol; X holds the rows past the cut (feature rows the windows read).
        pos = feats.groupby("symbol", sort=False).cumcount().to_numpy()
        kept = np.flatnonzero(pos >= bundle.warmup)
        need = max(bundle.warmup + bundle.window, raw_windows.history_needed(bundle.models.values()))
        rows = np.flatnonzero(pos[kept] >= need - 1)  # into X
        if len(rows) == 0:
            raise DataValidationError(f"{source_name}: no bar has {bundle.min_bars} bars of history "
                                      f"(warm-up {bundle.warmup} + lookback {bundle.window})")
        X = _feature_matrix(feats, cols, kept)  # (N, F)
        del feats  # the feature table (N x F): only X, its copy, is read from here on
        # The label stage's trailing volatility at each bar (known at t): it scales yhat_std.
        vol = trailing_vol(bars, bundle.label)[kept[rows]]
        at = kept[rows]  # the forecast bars' rows in `bars`
    else:
        # Each symbol's last `window` rows (all past the warm-up: _check_history), as a matrix.
        feat_rows, X, missing = compute_feature_matrix(bars, bundle.features, cols, freq=bundle.frequency,
                                                       n_jobs=n_jobs, tail=bundle.window)
        _check_columns(missing, source_name)  # (n_symbols * window, F)
        rows = np.arange(bundle.window - 1, len(X), bundle.window)  # each symbol's last bar
        # The label stage's volatility at the last bars, from their last vol_window returns.
        k = bundle.label.vol_window + 1
        vol = trailing_vol(bars.take(_tail(bars, k)), bundle.label)[k - 1::k]
        at = feat_rows[rows]
    keys = pd.DataFrame({c: bars[c].to_numpy()[at] for c in ("symbol", "timestamp")})  # (n,) forecast bars
    # The models and the blender run on a batch of whole symbols at a time (the features needed
    # the whole panel: cross-sectional ranks): their working memory (each model's copies of its
    # rows, the blender's long table, the components) is bounded by CHUNK_ROWS, not by the history.
    # Symbols come sorted (validate_bars), so the batches' sorted outputs concatenate sorted.
    panel = raw_windows.request_bars(bars, bundle.models.values())  # None unless a model reads raw windows
    bar_at = None if panel is None else at  # (n,) each forecast bar's row of bars
    out = [_forecast(X, rows[sel], keys.iloc[sel], vol[sel], bundle, panel, None if bar_at is None else bar_at[sel])
           for sel in _symbol_batches(keys["symbol"])]
    # 7-day daily bars (crypto): calendar days. 1970-01-01, day 0, was a Thursday (weekday 3).
    days = bars["timestamp"].to_numpy("datetime64[D]").astype(np.int64)
    weekends = bool(((days + 3) % 7 >= 5).any())
    return add_lineage(out[0] if len(out) == 1 else pd.concat(out, ignore_index=True), bundle, weekends=weekends)


def _check_columns(missing: list[str], source_name: str) -> None:
    if missing:
        why = " (cross-sectional features need >= 2 symbols)" if any(c.startswith("cs_") for c in missing) else ""
        raise DataValidationError(f"{source_name}: the features lack {len(missing)} column(s) the models "
                                  f"were trained on, e.g. {missing[:5]}{why}")


def target_timestamps(timestamp: pd.Series | np.ndarray, horizon: np.ndarray,
                      frequency: FrequencyInfo, *, weekends: bool = False) -> np.ndarray:
    """The time each forecast is for: its bar's ``timestamp`` + ``horizon`` bars, (n,) datetime64[ns].

    Daily bars (``1D``: trading days, as ``infer_frequency`` reads them) step ``h`` business
    days, Monday to Friday: a Friday bar's 1-bar forecast is for Monday. Exchange holidays are
    not known to the bundle, so a horizon that spans one ends a business day before the bar
    that really comes h bars later. ``weekends`` (predict sets it when the bars include a
    Saturday or Sunday: markets that trade every day) steps calendar days instead. Every other frequency steps ``h * bar_seconds`` of wall
    time: exact for weekly bars and for intraday bars within a session; an intraday horizon
    that crosses a session close names a time in the gap rather than the next session's bar."""
    ts = np.asarray(timestamp, "datetime64[ns]")
    h = np.asarray(horizon, np.int64)
    if frequency.label == "1D" and not frequency.intraday and not weekends:
        days = ts.astype("datetime64[D]")  # the bar's date (numpy floors, as normalize() does)
        # numpy's business-day arithmetic; a weekend bar counts from the Friday before: its next bar is Monday
        target = np.busday_offset(days, h, roll="backward")
        return (target.astype("datetime64[ns]") + (ts - days.astype("datetime64[ns]"))).astype("datetime64[ns]")
    step = np.timedelta64(int(round(frequency.bar_seconds * 1e9)), "ns")
    return (ts + h * step).astype("datetime64[ns]")


def add_lineage(preds: pd.DataFrame, bundle: Bundle, *, weekends: bool = False) -> pd.DataFrame:
    """``preds`` with the :data:`LINEAGE` columns inserted after ``symbol, timestamp, horizon``
    (``weekends``: see :func:`target_timestamps`)."""
    n = len(preds)
    lineage = {
        "target_timestamp": target_timestamps(preds["timestamp"], preds["horizon"].to_numpy(), bundle.frequency,
                                              weekends=weekends),
        "bundle_sha256": np.full(n, bundle.digest, dtype=object),  # one shared str object
        "bundle_version": np.full(n, bundle.version, dtype=np.int64),
    }
    rest = [c for c in preds.columns if c not in FORECAST_KEYS]
    # one frame from the columns' arrays (no copy of the blocks pd.concat would align)
    return pd.DataFrame({**{c: preds[c].to_numpy() for c in FORECAST_KEYS}, **lineage,
                         **{c: preds[c].to_numpy() for c in rest}}, index=preds.index)


def _feature_matrix(feats: pd.DataFrame, cols: list[str], take: np.ndarray | None = None) -> np.ndarray:
    """(n, F) C-contiguous matrix of ``feats[cols]`` (rows ``take``, default all), of their dtype
    (``features.dtype``, as the training stages read it from the features table), filled
    column by column past ``SMALL_TABLE_ROWS`` rows: ``feats[cols].to_numpy()`` would first copy
    the whole table (twice the memory; ~50 MiB more peak for 500 symbols, measured)."""
    if take is None and len(feats) <= SMALL_TABLE_ROWS:  # a few symbols: at once, ~10x faster
        return np.ascontiguousarray(feats[cols].to_numpy(feature_dtype(feats, cols)))
    n = len(feats) if take is None else len(take)
    X = np.empty((n, len(cols)), feature_dtype(feats, cols))
    for j, c in enumerate(cols):
        col = feats[c].to_numpy()
        X[:, j] = col if take is None else col[take]
    return X


def _symbol_batches(symbols: pd.Series, max_rows: int | None = None) -> list[slice]:
    """Consecutive slices of ``symbols`` (sorted, so each symbol's rows are contiguous), each of
    whole symbols and at most ``max_rows`` rows (default ``CHUNK_ROWS``; one symbol with more is
    a batch of its own)."""
    max_rows = CHUNK_ROWS if max_rows is None else max_rows
    codes = pd.factorize(symbols, sort=False)[0]
    starts = symbol_starts(codes)
    bounds = np.r_[starts, len(codes)]
    batches, first = [], 0
    for k in range(1, len(bounds)):
        if bounds[k] - bounds[first] > max_rows and k - 1 > first:
            batches.append(slice(int(bounds[first]), int(bounds[k - 1])))
            first = k - 1
    batches.append(slice(int(bounds[first]), int(bounds[-1])))
    return batches


def _forecast(X: np.ndarray, rows: np.ndarray, keys: pd.DataFrame, vol: np.ndarray,
              bundle: Bundle, panel: raw_windows.Bars | None = None, at: np.ndarray | None = None) -> pd.DataFrame:
    """Every model's and the blender's forecasts from the feature rows ``X[rows]`` (n,), whose
    symbol and timestamp are ``keys`` and trailing volatility ``vol`` (``panel``, ``at``: the
    bars and each row's bar in them, for the raw windows of ``neural.inputs``)."""
    components, probas, stds = {}, {}, {}
    symbols = keys["symbol"].to_numpy()
    for name, model in bundle.models.items():
        data = raw_windows.sequence_input(X, rows, model.lookback, raw_windows.of_model(model), panel, at) \
            if model.input_kind == "sequence" else X[rows]
        if model.classifier:  # (n, H, 3) class probabilities; the forecast is their expected return
            probas[name] = model.predict_proba(data, symbols)
            components[name] = model.expected_return(probas[name], symbols)
        elif model.distribution:  # its own predictive distribution: the mean, and its std (n, H) each
            components[name], stds[name] = model.predict_dist(data, symbols)
        else:
            components[name] = model.predict(data, symbols)  # (n, H)
    return _assemble(keys, vol, components, bundle, probas, stds)


def _tail(bars: pd.DataFrame, k: int) -> np.ndarray:
    """Row indices of each symbol's last ``k`` bars (every symbol has >= k), in order."""
    codes = pd.factorize(bars["symbol"], sort=False)[0]
    ends = np.r_[symbol_starts(codes)[1:], len(bars)]  # (n_symbols,)
    return (ends[:, None] + np.arange(-k, 0)).reshape(-1)


def _assemble(keys: pd.DataFrame, vol: np.ndarray, components: dict[str, np.ndarray],
              bundle: Bundle, probas: dict[str, np.ndarray] | None = None,
              stds: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Long (n * H) rows: keys x horizons, the blend methods' forecasts, the components.

    keys: (n,) symbol, timestamp; vol: (n,) trailing volatility; components: (n, H) per model;
    probas: (n, H, 3) class probabilities per model (classification task), mixed by the blender;
    stds: (n, H) per model that forecasts its own distribution: its yhat_std, which the blender
    reads instead of the volatility scale (as the training stage wrote it for the blend stage)."""
    n, H = len(keys), len(bundle.horizons)
    horizons = np.asarray(bundle.horizons, np.int64)
    # The members' forecasts as the blender reads them, (n, H, M) arrays: the rows are aligned
    # already (one per forecast bar), so no long table is built and pivoted back (what
    # Stacker.predict does on the pipeline's predictions; the same numbers, a test checks it).
    members = bundle.blender.members
    stds = stds or {}
    member_std = [stds[m] if m in stds else apply_calibration(bundle.calibration[m], components[m], vol)[0]
                  for m in members]  # (n, H) each
    classes = bool(probas) and all(m in probas for m in members)
    blended = bundle.blender.predict_arrays(
        np.stack([components[m] for m in members], axis=-1), np.stack(member_std, axis=-1),
        np.stack([probas[m] for m in members], axis=2) if classes else None)
    primary = blended[bundle.primary]
    others = [m for m in bundle.blender.cfg.methods if m != bundle.primary]
    out = pd.DataFrame({
        "symbol": np.repeat(keys["symbol"].to_numpy(), H), "timestamp": np.repeat(keys["timestamp"].to_numpy(), H),
        "horizon": np.tile(horizons, n),
        **{c: primary[c].reshape(-1) for c in ("yhat", "yhat_std", "prob_up")},
        **({c: primary[c].reshape(-1) for c in PROBA_COLUMNS} if classes else {}),
        **{name: pred.reshape(-1) for name, pred in components.items()},
        **{m: blended[m]["yhat"].reshape(-1) for m in others},
    })
    return _sorted(out)


def _sorted(out: pd.DataFrame) -> pd.DataFrame:
    """``out`` sorted by FORECAST_KEYS (stable); the rows usually come so already (keys sorted,
    horizons ascending): then checked in a few array operations instead of sorted."""
    sym, ts, h = (out[c].to_numpy() for c in FORECAST_KEYS)
    if len(out) < 2:
        return out
    same_sym = sym[1:] == sym[:-1]
    same_ts = same_sym & (ts[1:] == ts[:-1])
    if np.all((sym[1:] > sym[:-1]) | (same_sym & (ts[1:] > ts[:-1])) | (same_ts & (h[1:] >= h[:-1]))):
        return out
    return out.sort_values(FORECAST_KEYS, kind="stable", ignore_index=True)


# -- `alphafactory predict` -------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bars", required=True,
                        help="raw OHLCV bars: a CSV/parquet file or a directory of per-symbol files")
    parser.add_argument("--models", default="bundle", help="bundle directory (default: bundle)")
    parser.add_argument("--asof", default=None,
                        help="forecast from the last bar at or before this timestamp (default: each "
                             "symbol's last bar); 'all': every bar with enough history")
    parser.add_argument("--history", type=int, default=None,
                        help="bars per symbol featurized for an as-of forecast (default: enough for "
                             "the full-history features)")
    dest = parser.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="write the forecasts to this parquet file")
    dest.add_argument("--db", nargs="?", const="sqlite:///preds.db", metavar="URL",
                      help="upsert into a SQL table (SQLAlchemy URL; default sqlite:///preds.db)")
    parser.add_argument("--table", default="preds", help="table for --db (default: preds)")


def run(args: argparse.Namespace) -> int:
    """`alphafactory predict`: bundle + raw bars → forecasts in a parquet file or a SQL table."""
    from alphafactory.data.sources import load_file
    from alphafactory.io import write_parquet

    bundle = load_bundle(args.models)
    preds = predict(load_file(args.bars), bundle, asof=args.asof, history=args.history,
                    source_name=str(args.bars))
    n_sym = preds["symbol"].nunique()
    if args.out:
        write_parquet(preds, args.out)
        log.info("predict: %d rows (%d symbols x %d horizons) -> %s", len(preds), n_sym,
                 len(bundle.horizons), args.out)
    else:
        from alphafactory.serving.db import write_predictions

        n = write_predictions(preds, args.db, table=args.table)
        log.info("predict: upserted %d rows (%d symbols x %d horizons) into %s table %s", n, n_sym,
                 len(bundle.horizons), args.db.split("://")[0], args.table)
    return 0
