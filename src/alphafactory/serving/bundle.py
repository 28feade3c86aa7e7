"""The forecasting bundle: one self-contained directory that turns raw bars into forecasts.

Layout (every path relative to the bundle directory)::

    manifest.json          format_version + {path: {sha256, size}} of every other file
    bundle.json            feature config, horizons, lookback, frequency, feature column order,
                           training symbols, base models (in blender order), library versions
    models/<name>/         a copy of each trained base model dir (its own manifest.json + native
                           files: LightGBM text, XGBoost UBJ, CatBoost .cbm, torch tensors; a
                           PyTorch model's forward pass exported to ONNX by the training stage:
                           net.onnx and onnx.json with shapes, opset and the export check)
    blend/                 the stacking meta-learner (manifest.json + .cbm or JSON coefficients)

Nothing in a bundle is pickled: loading it (``alphafactory.serving.inference.load_bundle``) reads JSON
and native model files only, after checking every file against ``manifest.json``. PyTorch models
forecast through ONNX Runtime there, so loading a bundle never imports PyTorch.

:func:`verify` returns a :class:`VerifiedBundle`, the only way the loaders reach a file: a path
read from any manifest must name one of the files it verified (no absolute path, no ``..``; a
bundle holds no symbolic links at all), so a crafted bundle cannot make them read anything else.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alphafactory.config import to_dict
from alphafactory.errors import BundleError
from alphafactory.features import FeatureConfig
from alphafactory.io import Directory, atomic_dir, safe_relpath
from alphafactory.labels import LabelConfig
from alphafactory.models.persist import single_models
from alphafactory.models.portable import ONNX_INFO, exported

FORMAT_VERSION = 2  # 2: PyTorch models carry an ONNX export (net.onnx, onnx.json)
MANIFEST = "manifest.json"
CONFIG = "bundle.json"
MODELS_DIR = "models"
BLEND_DIR = "blend"
# Distributions whose versions the bundle records (absent ones are left out): the libraries that
# read the native model files, plus the ones that shape the feature values.
PACKAGES = ("alphafactory", "numpy", "pandas", "pyarrow", "scipy", "lightgbm", "xgboost",
            "xgboost-cpu", "catboost", "onnxruntime", "torch", "onnx", "onnxscript")
# Of those, the ones that only built the models (training, ONNX export): a different installed
# version (or none) at load time does not change a forecast.
BUILD_ONLY = ("torch", "onnx", "onnxscript")
# Output columns of a forecast; a base model may not take one of these names.
RESERVED = ("symbol", "timestamp", "horizon", "yhat", "yhat_std", "prob_up",
            "target_timestamp", "bundle_sha256", "bundle_version")



def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def features_code_sha256() -> str:
    """sha256 of the installed ``alphafactory/features.py``: a bundle records it so a later
    change to the feature code (same names, other values) is reported when it is loaded."""
    from alphafactory import features

    return sha256_file(Path(features.__file__))


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; expected a saved model directory with a manifest")
    return json.loads(path.read_text())


def _discover(model_dirs: Sequence[str | Path]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """{model name: (its directory, its manifest)} over every ``<family dir>/<model>/``."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for family_dir in map(Path, model_dirs):
        if not family_dir.is_dir():
            raise BundleError(f"{family_dir}: no such directory; expected trained models in "
                              f"<dir>/<model>/manifest.json")
        for sub in sorted(p for p in family_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            man = _read_manifest(sub)
            name = man.get("model")
            if name != sub.name:
                raise BundleError(f"{sub / MANIFEST}: model {name!r}, expected {sub.name!r} (the directory name)")
            if name in found:
                raise BundleError(f"model {name!r} found twice: {found[name][0]} and {sub}")
            if name in RESERVED:
                raise BundleError(f"{sub}: model name {name!r} is reserved for an output column {list(RESERVED)}")
            found[name] = (sub, man)
    if not found:
        raise BundleError(f"no trained models under {[str(d) for d in model_dirs]}")
    return found


def _check_models(found: dict[str, tuple[Path, dict[str, Any]]], blend: dict[str, Any],
                  horizons: tuple[int, ...], lookback: int) -> list[str]:
    """Check the models agree with each other, the params and the blender; return their feature
    column order."""
    features = None
    for d, man in found.values():
        where = d / MANIFEST
        if tuple(man["horizons"]) != tuple(horizons):
            raise BundleError(f"{where}: horizons {man['horizons']}, expected label.horizons "
                              f"{list(horizons)} (stale model: rerun the training stage)")
        cols = man.get("meta", {}).get("features")
        if not cols:
            raise BundleError(f"{where}: no meta.features (the feature column order); expected a "
                              f"model saved by alphafactory.train.fit_models")
        if features is None:
            features = list(cols)
        elif list(cols) != features:
            raise BundleError(f"{where}: feature columns differ from the other models' "
                              f"({len(cols)} vs {len(features)}); expected one feature set")
        if man.get("input_kind") == "sequence" and man.get("init", {}).get("lookback") != lookback:
            raise BundleError(f"{where}: lookback {man.get('init', {}).get('lookback')}, expected "
                              f"train.lookback {lookback} (stale model: rerun the training stage)")
        if not man.get("meta", {}).get("calibration"):
            raise BundleError(f"{where}: no meta.calibration (the model's uncertainty calibration); "
                              f"expected a model saved by alphafactory.train.fit_models")
    missing = [m for m in blend["members"] if m not in found]
    if missing:
        raise BundleError(f"blender members {missing} have no trained model dir; found {sorted(found)}")
    if tuple(blend["horizons"]) != tuple(horizons):
        raise BundleError(f"blender horizons {blend['horizons']}, expected {list(horizons)}")
    assert features is not None
    return features


def _files(directory: Path) -> list[str]:
    """Posix paths, relative to ``directory``, of every file under it but the manifest."""
    rels = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(r for r in rels if r != MANIFEST)


def file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """{posix relative path: {sha256, size}} of every file under ``directory`` but the manifest."""
    return {rel: {"sha256": sha256_file(directory / rel), "size": (directory / rel).stat().st_size}
            for rel in _files(directory)}


def build_bundle(model_dirs: Sequence[str | Path], blend_dir: str | Path, out: str | Path, *,
                 features: FeatureConfig, label: LabelConfig, lookback: int,
                 info: dict[str, Any]) -> dict[str, Any]:
    """Assemble the bundle directory ``out`` atomically; return its ``bundle.json`` content.

    model_dirs: family directories holding ``<model>/manifest.json`` (models/boosting, ...).
    blend_dir: the saved :class:`alphafactory.blend.Stacker`.
    features, label, lookback: the ``features`` and ``label`` params sections and
        ``train.lookback`` the models were trained with (horizons and lookback are checked
        against the models' manifests; ``label.vol_window`` scales the forecast uncertainty).
    info: the prepare stage's ``info.json`` (bar frequency, symbols and their bar counts).
    """
    horizons = tuple(label.horizons)
    found = _discover(model_dirs)
    blend = _read_manifest(Path(blend_dir))
    columns = _check_models(found, blend, horizons, int(lookback))
    methods = list(blend.get("config", {}).get("methods", []))
    if not methods:
        raise BundleError(f"{Path(blend_dir) / MANIFEST}: no config.methods; expected a saved "
                          f"alphafactory.blend.Stacker")
    # The headline forecast: the stacking ensemble when it was fit, else the first method.
    primary = "ensemble" if "ensemble" in methods else methods[0]
    clash = sorted(set(methods) & set(found))
    if clash:
        raise BundleError(f"blend methods {clash} have the same names as base models")
    # Blender members first, in the blender's column order; other base models after them.
    order = [*blend["members"], *(n for n in found if n not in blend["members"])]
    config = {
        "features": to_dict(features),
        "label": to_dict(label),
        "horizons": list(horizons),
        "lookback": int(lookback),
        "frequency": info["frequency"],
        "feature_columns": columns,
        "symbols": sorted(info["symbols"]),
        # The prepared bars the models were fit on (train/val/test segments within them).
        "data": {k: info.get(k) for k in ("start", "end", "rows", "source")},
        "models": [{"name": n, "family": found[n][1]["family"], "input_kind": found[n][1]["input_kind"],
                    "path": f"{MODELS_DIR}/{n}"} for n in order],
        "blender": {"path": BLEND_DIR, "meta": blend["config"].get("meta"), "methods": methods,
                    "primary": primary, "members": blend["members"]},
        "features_code_sha256": features_code_sha256(),
        "versions": library_versions(),
    }
    with atomic_dir(out) as tmp:
        for name in order:
            _check_exported(found[name][0])
            shutil.copytree(found[name][0], tmp / MODELS_DIR / name)
        shutil.copytree(blend_dir, tmp / BLEND_DIR)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        manifest = {"format_version": FORMAT_VERSION, "files": file_table(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return config


def _check_exported(model_dir: Path) -> None:
    """A PyTorch model's dir (each symbol's, for a per-symbol model) must hold the ONNX export
    the training stage writes next to it: the bundle forecasts with that."""
    for d, man in single_models(model_dir):
        if exported(man) and not (d / ONNX_INFO).is_file():
            raise BundleError(f"{d / ONNX_INFO}: missing; a PyTorch model needs the ONNX export that "
                              f"the training stage writes next to it (retrain: dvc repro train@neural)")


class VerifiedBundle(Directory):
    """The files of a bundle that :func:`verify` checked, and nothing else: :meth:`path`,
    :meth:`load` and :meth:`read_json` refuse any other path (:class:`BundleError` naming it).
    ``config``: the parsed ``bundle.json``; ``digest``: the sha256 of ``manifest.json``."""

    error = BundleError

    def __init__(self, root: Path, files: frozenset[str], prefix: str = "", *,
                 config: dict[str, Any] | None = None, digest: str = "") -> None:
        super().__init__(root, prefix)
        self.files = files
        self.config = config if config is not None else {}
        self.digest = digest

    def _check(self, full: str) -> Path:
        path = self.root / full
        if full not in self.files:
            raise BundleError(f"{path}: not a file of the bundle (not listed in {MANIFEST}, so never "
                              f"verified); a model's manifest may name only files of its own directory")
        if path.resolve() != path:  # verify() refused every link; this holds unless it changed since
            raise BundleError(f"{path}: resolves to {path.resolve()}, outside the verified files")
        return path

    def exists(self, rel: str) -> bool:
        return self._rel(rel) in self.files

    def _sub(self, prefix: str) -> VerifiedBundle:
        return VerifiedBundle(self.root, self.files, prefix, config=self.config, digest=self.digest)


def _walk(root: Path) -> set[str]:
    """Posix paths, relative to ``root``, of every regular file under it; a symbolic link or a
    special file (FIFO, device, socket) anywhere below it is a :class:`BundleError`."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):  # never follows links
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{p}: a symbolic link (to {os.readlink(p)!r}); a bundle holds regular "
                                  f"files only (a DVC cache.type of symlink? use copy, reflink or hardlink)")
            if stat.S_ISREG(mode):
                found.add(p.relative_to(root).as_posix())
            elif not stat.S_ISDIR(mode):
                raise BundleError(f"{p}: not a regular file or directory; a bundle holds regular files only")
    return found


def _raise(e: OSError) -> None:
    raise BundleError(f"{e.filename}: cannot be listed ({e.strerror})") from e


def _file_entry(path: Path, rel: Any, want: Any) -> tuple[str, int, str]:
    """A manifest ``files`` entry checked for shape: (relative path, size, sha256)."""
    safe = safe_relpath(rel)
    if safe is None:
        raise BundleError(f"{path}: file path {rel!r} points outside the bundle; expected a relative "
                          f"path without '..'")
    if not (isinstance(want, dict) and isinstance(want.get("size"), int) and isinstance(want.get("sha256"), str)):
        raise BundleError(f"{path}: entry {rel!r} is {want!r}; expected {{\"sha256\": hex, \"size\": bytes}}")
    return safe, want["size"], want["sha256"]


def verify(directory: str | Path) -> VerifiedBundle:
    """Check ``directory`` against its manifest; return its verified files (and ``bundle.json``).

    Raises :class:`BundleError` naming the file for: no manifest, an unknown format_version, a
    path outside the bundle, a symbolic link or special file anywhere in it, a missing, truncated
    or modified file, and a file the manifest does not list. The loaders then read files through
    the returned :class:`VerifiedBundle` only, so nothing unchecked is ever read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such directory; expected a bundle (dvc pull bundle, or "
                          f"run the bundle stage)")
    root = directory.resolve()  # the bundle directory itself may be reached through a link
    path = directory / MANIFEST
    if not os.path.lexists(path):
        raise BundleError(f"{path}: missing; {directory} is not a bundle (expected {MANIFEST})")
    on_disk = _walk(root)  # refuses links first: the manifest itself is read only if it is a file
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise BundleError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format_version {version!r} is not supported; this "
                          f"alphafactory reads format_version {FORMAT_VERSION} (rebuild the bundle "
                          f"with the bundle stage of a matching version)")
    files = manifest.get("files")
    if not isinstance(files, dict) or CONFIG not in files:
        raise BundleError(f"{path}: expected 'files' listing {CONFIG} and the model files")
    checked = []
    for rel, want in files.items():
        rel, size, sha = _file_entry(path, rel, want)
        f = directory / rel
        if rel not in on_disk:
            raise BundleError(f"{f}: missing; the manifest lists it ({size} bytes)")
        have = f.stat().st_size
        if have != size:
            raise BundleError(f"{f}: {have} bytes, manifest says {size}; the file is "
                              f"truncated or modified")
        digest = sha256_file(f)
        if digest != sha:
            raise BundleError(f"{f}: sha256 {digest[:16]}..., manifest says {sha[:16]}...; "
                              f"the file was modified")
        checked.append(rel)
    extra = sorted(on_disk - set(checked) - {MANIFEST})
    if extra:
        raise BundleError(f"{directory / extra[0]}: not listed in {MANIFEST} ({len(extra)} unlisted "
                          f"file(s)); expected only the files the bundle stage wrote")
    verified = VerifiedBundle(root, frozenset(checked), digest=sha256_file(path))
    config = verified.read_json(CONFIG)
    if not isinstance(config, dict):
        raise BundleError(f"{directory / CONFIG}: a JSON {type(config).__name__}; expected an object")
    verified.config = config
    return verified
