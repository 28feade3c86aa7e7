"""Fit a list of registered models on one dataset and collect their out-of-sample forecasts.

Shared by the ``train@<family>`` stages (and ``cv``): each model is fitted on the train segment, early-stopped on val,
saved in native formats, and asked for val and test forecasts (val forecasts feed the stacking
meta-learner; test forecasts are evaluated). ``task="classification"`` fits the models on the
SHORT/NEUTRAL/LONG labels; their forecasts are then expected returns under the predicted class
probabilities, and the probabilities themselves are kept as ``p_short, p_neutral, p_long``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd

from alphafactory import models, raw_windows
from alphafactory.compute import FanOut
from alphafactory.config import Interval, from_dict
from alphafactory.dataset import Dataset
from alphafactory.errors import ConfigError
from alphafactory.evaluation.metrics import regression_metrics
from alphafactory.feature_select import SelectConfig, select_dataset
from alphafactory.io import ParquetRows, write_json
from alphafactory.labels import PROBA_COLUMNS
from alphafactory.models.base import TASKS, XY, Model
from alphafactory.models.per_symbol import PerSymbolModel
from alphafactory.raw_windows import InputsConfig
from alphafactory.uncertainty import apply_calibration, distribution_prob_up, fit_calibration

log = logging.getLogger(__name__)
PRED_SEGMENTS = ("val", "test")
SCOPES = ("pooled", "per_symbol")
SEED_IC_FILE = "seed_ic.json"  # in the stage's dvclive dir, for seed-averaged networks


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml, shared by the training stages."""

    seed: int = 42
    lookback: Annotated[int, Interval(ge=1)] = 32  # bars per window of the sequence models
    task: Literal["regression", "classification"] = "regression"
    scope: Literal["pooled", "per_symbol"] = "pooled"  # one model across symbols, or one per symbol
    # feature columns the models are fitted on, chosen on the train rows (alphafactory.feature_select)
    select: SelectConfig = field(default_factory=SelectConfig)


# Keys of a family's params section shared by all its models (not a model's block).
FAMILY_SHARED: dict[str, tuple[str, ...]] = {"neural": ("trainer", "inputs")}


def family_section(params: dict[str, Any], family: str, task: str | None = None
                   ) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """Read a model family's params section (named after the family): ``models`` (the enabled
    names, in order), one params block per model of that family, and the keys the family's
    models share (``FAMILY_SHARED``, e.g. ``neural.trainer``).
    Returns (names, blocks by model name, shared values). Unknown keys and names are errors, and
    so is an enabled model that does not support ``task`` (when given)."""
    reserved = FAMILY_SHARED.get(family, ())
    sec = params.get(family) or {}
    names = sec.get("models", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{family}.models: got {names!r}, expected a list of model names")
    of_family = sorted(n for n, s in models.REGISTRY.items() if s.family == family)
    for key in [*names, *(k for k in sec if k not in ("models", *reserved))]:
        if key not in of_family:
            raise ConfigError(f"{family}: {key!r} is not a registered {family} model; expected one of {of_family}")
    if task is not None:
        unsupported = [n for n in names if task not in models.REGISTRY[n].tasks]
        if unsupported:
            able = [n for n in of_family if task in models.REGISTRY[n].tasks]
            raise ConfigError(f"{family}.models: {unsupported} do not support train.task {task!r}; "
                              f"{family} models that do: {able}")
    blocks = {k: v for k, v in sec.items() if k in of_family}
    return tuple(names), blocks, {k: sec.get(k) for k in reserved}


def family_inputs(params: dict[str, Any], family: str, train: TrainConfig, task: str | None = None
                  ) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any] | None]:
    """What :func:`fit_models` needs for one family: (enabled names, params blocks, constructor
    arguments every model of the family takes: ``train.lookback`` and ``neural.trainer`` for the
    neural family, None for the others)."""
    names, blocks, shared = family_section(params, family, task=task)
    extra = {"lookback": train.lookback, **shared} if family == "neural" else None
    return names, blocks, extra


def wants_bars(*extras: dict[str, Any] | None, names: tuple[str, ...] = ()) -> bool:
    """Whether any family's constructor arguments (:func:`family_inputs`) ask for raw OHLCV
    windows (``neural.inputs.kind`` raw or both), or any of the models ``names`` to be fitted
    reads the bars itself (a class with ``reads_bars``: ``chronos``); both need the prepared bars."""
    return (any(raw_windows.inputs_config((e or {}).get("inputs")).raw for e in extras)
            or any(getattr(models.get(n).cls, "reads_bars", False) for n in names))


def apply_tuned(names: tuple[str, ...], blocks: dict[str, Any], tuned: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``blocks`` (params block per model) with the tune stage's best params over the hand-set
    values of those of ``names`` (the family's enabled models) it tuned
    (``data/tune/applied.json``: ``{model: params}``, empty unless ``tune.apply``)."""
    out = dict(blocks)
    for name, values in tuned.items():
        if name in names:
            out[name] = {**(out.get(name) or {}), **values}
            log.info("%s: tuned params applied (tune.apply): %s", name, values)
    return out


@dataclass(frozen=True)
class TrainResult:
    name: str
    model: Model | PerSymbolModel  # a per-symbol model under train.scope: per_symbol
    predictions: pd.DataFrame  # symbol, timestamp, segment, model, horizon, yhat, yhat_std, prob_up
    #                            (+ p_short, p_neutral, p_long for the classification task)
    seconds: float
    # neural.trainer.seeds > 1 (pooled scope): the val IC of each seed member, see seed_spread
    seed_ic: dict[str, dict[str, Any]] | None = None


def segment_data(ds: Dataset, segment: str, input_kind: str, lookback: int,
                 task: str = "regression", inputs: InputsConfig | None = None) -> tuple[np.ndarray, XY]:
    """(row indices, XY) of one segment in the shape a model of ``input_kind`` consumes.
    Sequence models only get rows with a full window of their own symbol's history (and, with
    raw ``inputs``, the ``inputs.history()`` bars their raw windows read: ``neural.inputs``).
    Classification: Y holds the class indices and R the targets."""
    rows = ds.rows(segment)
    if input_kind == "sequence":
        rows = raw_windows.history_rows(ds, ds.window_ends(rows, lookback), inputs)
    X = raw_windows.dataset_windows(ds, rows, lookback, inputs) if input_kind == "sequence" else ds.X[rows]
    if task == "classification":
        if ds.C is None:
            raise ValueError("the classification task needs class labels (Dataset.C)")
        return rows, XY(X, ds.C[rows], R=ds.Y[rows])
    return rows, XY(X, ds.Y[rows])


def data_hash(ds: Dataset) -> str:
    """The first 16 hex digits of the SHA-256 of X, Y and the segments' bytes (a lazy X hashed
    part by part: the same digest)."""
    h = hashlib.sha256()
    # the arrays' own buffers, not .tobytes() copies (that of X alone is the size of the features)
    for part in ds.X.batches() if isinstance(ds.X, ParquetRows) else [ds.X]:
        h.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))
    for a in (ds.Y, ds.segment.astype("U8")):
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()[:16]


def reads_in_parts(family_models: tuple[str, ...], blocks: dict[str, Any], scope: str,
                   select: SelectConfig | None) -> bool:
    """Whether a training stage can leave the features on disk (``dataset.load(lazy=True)``):
    every enabled model reads a lazy view in parts (LightGBM, not distributed), one pooled fit
    each, no feature selection. The models and forecasts are the same either way."""
    return (bool(family_models) and scope == "pooled" and not (select is not None and select.active)
            and all(getattr(models.get(n).cls, "reads_parts", False) and not distributed(blocks.get(n))
                    for n in family_models))


def long_predictions(keys: pd.DataFrame, horizons: tuple[int, ...], pred: np.ndarray, std: np.ndarray,
                     prob: np.ndarray, segment: str, name: str, proba: np.ndarray | None = None) -> pd.DataFrame:
    """(n, H) forecasts, their std and P(up) → long rows
    (symbol, timestamp, segment, model, horizon, yhat, yhat_std, prob_up), plus the class
    probabilities ``p_short, p_neutral, p_long`` when ``proba`` (n, H, 3) is given."""
    n, H = pred.shape
    classes = {} if proba is None else {c: proba[:, :, k].reshape(-1).astype(np.float64)
                                        for k, c in enumerate(PROBA_COLUMNS)}
    return pd.DataFrame({
        "symbol": np.repeat(keys["symbol"].to_numpy(), H),
        "timestamp": np.repeat(keys["timestamp"].to_numpy(), H),
        "segment": segment,
        "model": name,
        "horizon": np.tile(np.asarray(horizons, np.int64), n),
        "yhat": pred.reshape(-1).astype(np.float64),
        "yhat_std": std.reshape(-1).astype(np.float64),
        "prob_up": prob.reshape(-1).astype(np.float64),
        **classes,
    })


def _seeds(model: Model) -> int:
    """Networks a model averages over (``neural.trainer.seeds``); 1 for the other families."""
    return getattr(getattr(model, "trainer", None), "seeds", 1)


def seed_spread(model: Model, X: Any, Y: np.ndarray, avg: np.ndarray) -> dict[str, dict[str, Any]] | None:
    """How far the IC of a seed-averaged network (``neural.trainer.seeds`` = k > 1) moves with
    the seed: per horizon ``h<k>``, the pooled Pearson IC (``metrics.regression_metrics``' ``ic``,
    the figure ``metrics/test.json`` reports) of each member's forecasts of ``X`` against ``Y``
    (n, H) (labelled rows only) as ``ic`` (in seed order, from ``seeds``), their ``ic_mean``,
    ``ic_std`` (ddof=1), ``ic_min``, ``ic_max``, ``k``, and ``ic_averaged``: the IC of ``avg``,
    the model's own (averaged) forecasts. None for a model that is not seed-averaged. Called on
    val rows only: the test period stays for evaluation, which sees only the averaged forecasts."""
    k = _seeds(model)
    if k < 2:
        return None
    members = model.predict_members(X)  # (k, n, H)
    out = {}
    for j, h in enumerate(model.horizons):
        ok = np.isfinite(Y[:, j])
        ics = np.array([regression_metrics(Y[ok, j], m[ok, j])["ic"] for m in members])
        out[f"h{h}"] = {"k": k, "seeds": [model.seed + i for i in range(k)], "ic": ics.tolist(),
                        "ic_mean": float(ics.mean()), "ic_std": float(ics.std(ddof=1)),
                        "ic_min": float(ics.min()), "ic_max": float(ics.max()),
                        "ic_averaged": regression_metrics(Y[ok, j], avg[ok, j])["ic"]}
    return out


def write_seed_spread(results: list[TrainResult], live_dir: str | Path) -> None:
    """``<live_dir>/seed_ic.json``: ``{model: seed_spread(...)}`` of the seed-averaged models
    among ``results``; nothing is written when there are none (``neural.trainer.seeds: 1``)."""
    spread = {r.name: r.seed_ic for r in results if r.seed_ic}
    if spread:
        write_json(spread, Path(live_dir) / SEED_IC_FILE)


def distributed(block: dict[str, Any] | None) -> bool:
    """Whether a params block asks for distributed training (``boosting.<m>.distributed: true``)."""
    return (block or {}).get("distributed") is True


def single_machine(blocks: dict[str, Any]) -> dict[str, Any]:
    """``blocks`` with ``distributed`` off: the refits of cv, backtest and tune fan out by fold
    (block, trial) instead, each fit on one worker, so their results never depend on the cluster."""
    return {k: {**b, "distributed": False} if distributed(b) else b for k, b in blocks.items()}


def fit_forecast(ds: Dataset, name: str, block: dict[str, Any] | None, *, seed: int,
                 extra: dict[str, Any] | None = None, task: str = "regression",
                 client: Any = None) -> tuple[Model, dict[str, tuple]]:
    """Fit one model on ``ds``'s train rows (early-stopping on val) and forecast val and test:
    returns (model, {segment: (row indices, (n, H) forecasts, (n, H, 3) class probabilities or None,
    (n, H) std of the model's own distribution or None)}).
    client: the Dask client a ``distributed: true`` block trains on (:mod:`alphafactory.models.distributed`)."""
    spec = models.get(name)
    lookback = (extra or {}).get("lookback", 1)
    on_cluster = {"client": client} if distributed(block) else {}  # only the families with the key take it
    model = models.create(name, block, horizons=ds.horizons, seed=seed, task=task, **(extra or {}), **on_cluster)
    inputs = raw_windows.of_model(model)
    _, train = segment_data(ds, "train", spec.input_kind, lookback, task, inputs)
    _, val = segment_data(ds, "val", spec.input_kind, lookback, task, inputs)
    if len(train.Y) == 0 or len(val.Y) == 0:
        if spec.input_kind == "sequence" and len(ds.rows("train")) and len(ds.rows("val")):
            # rows exist, but none has a full window of its own symbol's history
            longest = int(ds.keys.groupby("symbol").size().max())
            if inputs.raw:
                raise ConfigError(f"neural.inputs.resolutions: {name}'s raw windows read {inputs.history()} bars of "
                                  f"history, which leaves {len(train.Y)} train and {len(val.Y)} val windows; "
                                  "expected shorter resolutions or more bars per symbol")
            raise ConfigError(f"train.lookback: got {lookback}, but {name} then has {len(train.Y)} train and "
                              f"{len(val.Y)} val windows (the longest symbol has {longest} rows); "
                              f"expected a lookback shorter than that")
        raise ConfigError(f"{name}: {len(train.Y)} train and {len(val.Y)} val rows; need both "
                          "(per_symbol needs every symbol to span the train and val periods)")
    model.fit(train, val)
    if isinstance(ds.X, ParquetRows) and spec.input_kind != "sequence":
        # features on disk: val and test forecast in one pass over the file (their rows
        # interleave symbol by symbol, so a pass per segment read every row group twice); the
        # same forecasts, as the models forecast row by row
        seg_rows = [segment_data(ds, seg, spec.input_kind, lookback, inputs=inputs)[0] for seg in PRED_SEGMENTS]
        both = np.concatenate(seg_rows)
        order = np.argsort(both, kind="stable")  # file order: one pass
        back = np.empty_like(order)
        back[order] = np.arange(len(order))  # forecasts in file order -> in the order of ``both``
        cuts = np.cumsum([len(r) for r in seg_rows])[:-1]
        split = [np.split(a[back], cuts) if a is not None else [None] * len(seg_rows)
                 for a in _forecast(model, ds.X[both[order]])]
        return model, {seg: (r, *(s[i] for s in split))
                       for i, (seg, r) in enumerate(zip(PRED_SEGMENTS, seg_rows, strict=True))}
    forecasts = {}
    for seg in PRED_SEGMENTS:
        rows, data = segment_data(ds, seg, spec.input_kind, lookback, inputs=inputs)
        forecasts[seg] = (rows, *_forecast(model, data.X))
    return model, forecasts


def _forecast(model: Model, X: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(forecasts (n, H), class probabilities (n, H, 3) or None, own std (n, H) or None) of X."""
    if model.classifier:
        proba = model.predict_proba(X)
        return model.expected_return(proba), proba, None
    if model.distribution:  # its own predictive distribution: the mean is the forecast
        mean, std = model.predict_dist(X)
        return mean, None, std
    return model.predict(X), None, None


def _fit_symbol(job: tuple[Dataset, str, str, dict[str, Any] | None, int, dict[str, Any] | None, str,
                             dict[str, int]]) -> tuple[Model, dict[str, tuple]]:
    """One symbol's fit (a piece of work that may run on another process): ``job`` is
    (that symbol's rows of the dataset, symbol, model name, params block, seed, extra, task,
    params to restore on the fitted model: the configured threads of :func:`split_threads`)."""
    sub, sym, name, block, seed, extra, task, restore = job
    try:
        model, forecasts = fit_forecast(sub, name, block, seed=seed, extra=extra, task=task)
    except ConfigError as e:  # e.g. a class missing from this symbol's train rows
        raise ConfigError(f"train.scope per_symbol, symbol {sym!r}: {e}") from e
    if restore:  # the manifest records the configured threads, not this fit's share of them
        model.params = replace(model.params, **restore)
    return model, forecasts


def split_threads(name: str, block: dict[str, Any] | None, n_fits: int, fan: FanOut | None
                  ) -> tuple[int, dict[str, Any] | None, dict[str, int]]:
    """How to run ``n_fits`` fits of model ``name`` side by side in this machine's processes:
    (processes, the params block each fit gets, params to restore on the fitted models).

    A model of T threads per fit (its ``threads_param``) runs P = min(T, n_fits, cores) fits at
    once with T // P threads each, so the machine runs the T threads it was given. Small fits
    (one symbol's few thousand rows) spend much of each round waiting for their threads to meet,
    so P one-thread fits side by side finish sooner than P two-thread fits one after the other.
    The boosters were the same in every check (deterministic LightGBM, XGBoost hist and CatBoost
    grew the same trees on 1 and 2 threads: tests/test_per_symbol.py, and bench_boosting.py
    compares all 198 fits of its 22 tickers); a library whose trees depended on the thread count
    would make side-by-side forecasts differ in the last bits. One process (and the block
    unchanged) under a Dask cluster (its workers are the side by side), with ``fan`` None (a
    caller that is itself one piece of a fan-out, e.g. a cv fold) and for models without threads."""
    key = models.get(name).cls.threads_param
    if fan is None or fan.cfg is not None or key is None or n_fits < 2:
        return 1, block, {}
    spec = models.get(name)
    threads = int(getattr(from_dict(spec.cls.Params, block, f"{spec.family}.{name}"), key))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = min(threads, n_fits, cores)
    if processes < 2:
        return 1, block, {}
    return processes, {**(block or {}), key: threads // processes}, {key: threads}


def _fit_per_symbol(ds: Dataset, name: str, block: dict[str, Any] | None, *, seed: int,
                    extra: dict[str, Any] | None, task: str, fan: FanOut | None = None
                    ) -> tuple[PerSymbolModel, dict[str, tuple]]:
    """One model per symbol, each on that symbol's rows; forecasts gathered back into ``ds`` rows.
    fan: where the symbols' fits run (None: one after the other here; in process: side by side
    on local processes, :func:`split_threads`); every symbol's model has the same seed, so the
    models do not depend on where or in which order they are fitted."""
    symbols = ds.keys["symbol"].to_numpy()
    by_symbol = [np.flatnonzero(ds.sym_codes == code) for code in np.unique(ds.sym_codes)]
    processes, fit_block, restore = split_threads(name, block, len(by_symbol), fan)
    jobs = [(ds.subset(rows), str(symbols[rows[0]]), name, fit_block, seed, extra, task, restore)
            for rows in by_symbol]
    fits = (fan or FanOut()).map(_fit_symbol, jobs, desc=f"{name} per symbol", unit="symbol",
                                 processes=processes)
    members, parts = {}, {seg: [] for seg in PRED_SEGMENTS}
    for rows, job, (model, fc) in zip(by_symbol, jobs, fits, strict=True):
        members[job[1]] = model
        for seg, (r, pred, proba, std) in fc.items():
            parts[seg].append((rows[r], pred, proba, std))
    forecasts = {}
    for seg, chunks in parts.items():
        rows = np.concatenate([c[0] for c in chunks])
        order = np.argsort(rows, kind="stable")
        pred = np.concatenate([c[1] for c in chunks])[order]
        proba = None if chunks[0][2] is None else np.concatenate([c[2] for c in chunks])[order]
        std = None if chunks[0][3] is None else np.concatenate([c[3] for c in chunks])[order]
        forecasts[seg] = (rows[order], pred, proba, std)
    log.info("%s: %d per-symbol models", name, len(members))
    return PerSymbolModel(name, members), forecasts


def fit_models(ds: Dataset, names: tuple[str, ...], blocks: dict[str, Any], out_dir: str | Path, *,
               seed: int, extra: dict[str, Any] | None = None, task: str = "regression",
               scope: str = "pooled", select: SelectConfig | None = None,
               fan: FanOut | None = None) -> list[TrainResult]:
    """Fit, save (``out_dir/<name>``) and forecast each model in ``names``.

    blocks: params block per model name; extra: constructor arguments for every model of this
    family (lookback and trainer settings for the neural ones); task: ``train.task``; scope:
    ``train.scope`` (``pooled``: one model on every symbol's rows; ``per_symbol``: one per symbol,
    see :mod:`alphafactory.models.per_symbol`). The uncertainty calibration is fit on the val
    forecasts of all symbols either way. select: ``train.select``; unless None or method none,
    the feature columns are first chosen on ``ds``'s train rows only (once, for every model and
    every symbol: :func:`alphafactory.feature_select.select_dataset`), and each model is fitted
    on, and records in its manifest (``meta.features``, ``meta.selection``), those columns.
    fan: where the per-symbol fits run (:mod:`alphafactory.compute`; None: in this process), and
    the cluster a pooled ``distributed: true`` booster trains on (None, or in process: an error)."""
    if task not in TASKS:
        raise ValueError(f"train.task: got {task!r}, expected one of {list(TASKS)}")
    if scope not in SCOPES:
        raise ValueError(f"train.scope: got {scope!r}, expected one of {list(SCOPES)}")
    results = []
    ds, selection = select_dataset(ds, select, seed=seed)
    meta = {"features": ds.feature_names, "data_hash": data_hash(ds)}
    if selection is not None:
        meta["selection"] = selection.to_dict()
    for name in names:
        spec = models.get(name)
        lookback = (extra or {}).get("lookback", 1)
        t0 = time.perf_counter()
        log.info("%s: fitting (%s) on %d train rows, val for early stopping/scoring", name, scope,
                 len(ds.rows("train")))
        if scope == "per_symbol":
            if distributed(blocks.get(name)):
                raise ConfigError(f"{spec.family}.{name}.distributed: true with train.scope per_symbol; expected "
                                  "train.scope: pooled (per_symbol fans the symbols' fits out instead)")
            model, forecasts = _fit_per_symbol(ds, name, blocks.get(name), seed=seed, extra=extra, task=task, fan=fan)
        else:
            client = (fan or FanOut()).client if distributed(blocks.get(name)) else None
            model, forecasts = fit_forecast(ds, name, blocks.get(name), seed=seed, extra=extra, task=task,
                                            client=client)
        vrows, vpred, _, _ = forecasts["val"]
        seed_ic = None
        if model.symbols is not None:  # a model per symbol
            if _seeds(model.first) > 1:
                log.info("%s: per-symbol models: the seed spread of the val IC is not computed", name)
        elif _seeds(model) > 1:
            _, val = segment_data(ds, "val", spec.input_kind, lookback, inputs=raw_windows.of_model(model))
            seed_ic = seed_spread(model, val.X, val.Y, vpred)
            log.info("%s: val IC over %d seeds: %s", name, model.trainer.seeds, "; ".join(
                f"{h} {s['ic_mean']:.4f} ± {s['ic_std']:.4f} (min {s['ic_min']:.4f}, max {s['ic_max']:.4f}, "
                f"averaged {s['ic_averaged']:.4f})" for h, s in seed_ic.items()))
        cal = fit_calibration(vpred, ds.Y[vrows], ds.vol[vrows], ds.horizons)
        models.save(model, Path(out_dir) / name, meta={**meta, "calibration": cal.to_dict(),
                                                       "lookback": lookback if spec.input_kind == "sequence" else None},
                    portable=True)  # PyTorch models: plus their ONNX export, which bundles forecast with
        frames = []
        for seg, (rows, pred, proba, own_std) in forecasts.items():
            std, prob = apply_calibration(cal, pred, ds.vol[rows])
            if own_std is not None:  # a distributional model reports its own (see alphafactory.uncertainty)
                std, prob = own_std, distribution_prob_up(pred, own_std, model.dist_df)
            frames.append(long_predictions(ds.keys.iloc[rows], ds.horizons, pred, std, prob, seg, name, proba))
        secs = time.perf_counter() - t0
        log.info("%s: done in %.1f s", name, secs)
        results.append(TrainResult(name, model, pd.concat(frames, ignore_index=True), secs, seed_ic))
    return results


def _network_loss(model: Model) -> str:
    """The name of the shared trainer's loss for ``model``: cross-entropy, the negative
    log-likelihood of its distribution's head, or the MSE, of targets scaled by their train std."""
    if model.classifier:
        return "log loss"
    if model.distribution:
        return f"NLL {model.distribution} (target / train std)"
    return "MSE (target / train std)"


def log_curves(results: list[TrainResult], live_dir: str | Path) -> None:
    """Per-iteration (boosting), per-tree (random forest) or per-epoch (neural) training curves,
    one dvclive custom plot per model with train and val together, the data of one DVC plot
    each: ``<live_dir>/plots/custom/<model>.json``, records ``{model, horizon, split, step (from 1),
    <loss>}``. ``horizon`` is ``h<k>``, or ``all`` for a network trained on every horizon at once;
    ``split`` is ``train`` or ``val``; the loss column is named after the loss and comes last,
    where DVC takes a plot's y (and its axis title) from. A curve of one point (ridge, SVR,
    logistic: one exact fit scored once) is left out, and a model without any curve writes no
    file; per-symbol models write none either (one curve per symbol would swamp the plot)."""
    from dvclive import Live

    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        for r in results:
            if r.model.symbols is not None:
                log.info("%s: per-symbol models: training curves not logged", r.name)
                continue
            hist = r.model.history_
            if "members" in hist:  # seed-averaged network: each member's curves, split "<split> seed <s>"
                curves = {("all", f"{k.removesuffix('_loss')} seed {m['seed']}"): v
                          for m in hist["members"] for k, v in m.items() if k.endswith("_loss")}
                loss = _network_loss(r.model)
            elif all(isinstance(v, dict) for v in hist.values()):  # per horizon: {"h1": {"train": [...], "val": [...]}}
                curves = {(h, split): v for h, per in hist.items() for split, v in per.items()}
                loss = "log loss" if r.model.classifier else "MSE"
            else:  # one network for all horizons: {"train_loss": [...], "val_loss": [...], "best_epoch": [k]}
                curves = {("all", k.removesuffix("_loss")): v for k, v in hist.items() if k != "best_epoch"}
                loss = _network_loss(r.model)
            records = [{"model": r.name, "horizon": h, "split": split, "step": i + 1, loss: float(x)}
                       for (h, split), v in curves.items() if len(v) > 1 for i, x in enumerate(v)]
            if records:
                live.log_plot(r.name, records, x="step", y=loss, template=None)
            else:
                log.info("%s: no training curve (a single fit), no plot", r.name)
