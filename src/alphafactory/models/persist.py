"""Saving and loading models: the one module that knows the on-disk format.

A saved model is a directory: the family's native artifacts (``Model._save_state``: LightGBM
text, XGBoost UBJ, CatBoost ``.cbm``, torch tensors, JSON) plus ``manifest.json``, which names the
registered model, its hyperparameters, horizons, task, constructor arguments, the state the
artifacts need, the library versions it was made with and the caller's ``meta``. A per-symbol
model (:class:`~alphafactory.models.per_symbol.PerSymbolModel`) is a top manifest (the same keys,
plus ``scope`` and ``symbols``: symbol → subdirectory) over one saved model per symbol, in
``symbols/<k>/``.

:func:`save` writes either atomically (the directory appears complete or not at all); with
``portable`` (the training stages) every model also writes its portable form next to its
artifacts (``Model._export``: a PyTorch model's ONNX export, :mod:`alphafactory.models.export`).
:func:`load` rebuilds either from a path or an :class:`alphafactory.io.Directory` (a bundle's
verified files, through which every file is then read); nothing is unpickled, so loading runs no
code. A bundle loads its models with :func:`alphafactory.serving.onnx_runtime.load`, which reuses
:func:`load` with its own loader for the models it runs through ONNX Runtime.
"""
from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from alphafactory.config import to_dict
from alphafactory.io import Directory, atomic_dir
from alphafactory.models.base import MANIFEST, Forecaster, Model
from alphafactory.models.per_symbol import SCOPE, PerSymbolModel
from alphafactory.models.registry import get

FORMAT_VERSION = 1
SYMBOLS_DIR = "symbols"

# (files, manifest) -> the model a manifest of a single (not per-symbol) model describes
Loader = Callable[[Directory, dict[str, Any]], Forecaster]


def version(pkg: str) -> str | None:
    """The installed version of distribution ``pkg``, None if it is not installed."""
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """What a manifest records: the versions of alphafactory, numpy and ``packages``."""
    return {p: version(p) for p in ("alphafactory", "numpy", *packages)}


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def save(model: Model | PerSymbolModel, directory: str | Path, meta: dict[str, Any] | None = None, *,
         portable: bool = False) -> None:
    """Write ``model`` (fitted) to ``directory`` atomically; ``meta`` (JSON) goes in its manifest.
    ``portable``: every model also writes its portable form (``Model._export``), for bundles."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        if isinstance(model, PerSymbolModel):
            _write_per_symbol(model, tmp, meta, portable, where=directory)
        else:
            _write_model(model, tmp, meta, portable, where=directory)
    model.meta_ = meta or {}


def _write_model(model: Model, directory: Path, meta: dict[str, Any] | None, portable: bool, *,
                 where: Path, like: Path | None = None) -> Path | None:
    """Write one fitted model into the existing, empty ``directory`` (whose final name is
    ``where``); return its export file (``portable``), if it has one."""
    model._check_fitted()
    state = model._save_state(directory)
    _write_manifest(directory, {
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "family": model.family,
        "input_kind": model.input_kind,
        "params": to_dict(model.params),
        "horizons": list(model.horizons),
        "seed": model.seed,
        "task": model.task,
        "class_returns": model.class_returns_.tolist() if model.classifier else None,
        "init": model._init_kwargs(),
        "state": state,
        "versions": versions(model.packages),
        "meta": meta or {},
    })
    return model._export(directory, like=like, where=where) if portable else None


def _write_per_symbol(model: PerSymbolModel, directory: Path, meta: dict[str, Any] | None,
                      portable: bool, *, where: Path) -> None:
    paths, like = {}, None
    for k, s in enumerate(model.symbols):
        paths[s] = f"{SYMBOLS_DIR}/{k:04d}"  # symbol names may hold any character: numbered dirs
        sub = directory / paths[s]
        sub.mkdir(parents=True)
        sub.chmod(0o755)  # as atomic_dir makes a model dir
        # one export traced; the other symbols' reuse its graph (``like``)
        like = _write_model(model.members[s], sub, {"symbol": s}, portable, where=where / paths[s], like=like)
    first = model.first
    _write_manifest(directory, {
        "format_version": FORMAT_VERSION, "scope": SCOPE, "model": model.name, "family": model.family,
        "input_kind": model.input_kind, "horizons": list(model.horizons), "task": model.task,
        "init": first._init_kwargs(), "symbols": paths, "meta": meta or {},
        "versions": versions(first.packages),
    })


def read_manifest(directory: str | Path | Directory) -> tuple[Directory, dict[str, Any]]:
    """(the directory's files, its manifest), the format version checked."""
    files = directory if isinstance(directory, Directory) else Directory(directory)
    manifest = files.read_json(MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else manifest
        raise files.error(f"{files}/{MANIFEST}: format_version {found!r}, expected {FORMAT_VERSION}")
    return files, manifest


def load(directory: str | Path | Directory, *, loader: Loader | None = None) -> Forecaster:
    """Rebuild the saved model in ``directory`` (a path, or a :class:`~alphafactory.io.Directory`
    such as a bundle's verified files, through which every file is then read): a registered
    :class:`Model`, or a :class:`PerSymbolModel` of them. ``loader`` builds each single model
    from its files and manifest instead of :func:`load_native` (a bundle's loader runs PyTorch
    models through ONNX Runtime)."""
    files, manifest = read_manifest(directory)
    if manifest.get("scope") == SCOPE:
        members = {s: load(files.sub(rel), loader=loader) for s, rel in manifest["symbols"].items()}
        model = PerSymbolModel(manifest["model"], members)
        model.meta_ = manifest.get("meta", {})
        return model
    return (loader or load_native)(files, manifest)


def load_native(files: Directory, manifest: dict[str, Any]) -> Model:
    """The registered model a single model's manifest describes, from its native artifacts."""
    cls = get(manifest["model"]).cls
    model = cls(manifest["params"], horizons=tuple(manifest["horizons"]), seed=manifest["seed"],
                task=manifest.get("task", "regression"), **manifest.get("init", {}))
    if model.classifier:
        model.class_returns_ = np.asarray(manifest["class_returns"], np.float64)
    model._load_state(files, manifest["state"])
    model.meta_ = manifest.get("meta", {})
    model.fitted_ = True
    return model


def single_models(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(directory, manifest) of every single model saved under ``directory``: itself, or each
    symbol's of a per-symbol model. Reads the manifests only (no model library is imported)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    if manifest.get("scope") == SCOPE:
        for rel in manifest["symbols"].values():
            yield from single_models(directory / rel)
    else:
        yield directory, manifest
