"""A neural model's forward pass as ONNX, run by ONNX Runtime: what a bundle forecasts with.

The training stage saves every PyTorch model with its export (``save(..., portable=True)`` →
:func:`write_export` → ``NeuralModel.export_onnx``): feature scaling, network and output
transform as one graph, ``net.onnx``, described by ``onnx.json`` next to the model's manifest.
:func:`alphafactory.models.load` with ``portable=True`` returns an :class:`OnnxModel` for a
PyTorch model's directory, so loading a bundle and forecasting never import PyTorch (about 2 s
of a cold start on 2 cores; ONNX Runtime imports in 0.05 s).

Forecasts equal the PyTorch model's to float32 rounding (checked at export, recorded in
``onnx.json``, and by the tests against the evaluate stage's forecasts). An ``OnnxModel`` only
forecasts: fitting or saving one is an error.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from alphafactory.io import Directory
from alphafactory.models.base import Model

ONNX_INFO = "onnx.json"
ONNX_FILE = "net.onnx"
log = logging.getLogger(__name__)
# Rows per ONNX Runtime call: bounds the materialised windows and the memory ONNX Runtime keeps in
# its arena after the largest call (lookback 32 x 237 features: ~200 MB per model at 1024, 800 MB
# at 4096; the same speed per row).
BATCH = 1024


def import_onnxruntime() -> Any:
    """``onnxruntime``, its telemetry events off. Importing it is what writes its device id and
    event store under ``~/.cache/Microsoft/DeveloperTools``; ``alphafactory/__init__.py`` sets
    ``ORT_DISABLE_TELEMETRY=1`` (unless set) before any import of it, which stops that."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


class OnnxModel(Model):
    """Stands in for the registered model named in ``manifest`` (same name, family, input kind,
    horizons, task and lookback); ``predict``/``predict_proba`` as for the PyTorch model."""

    def __init__(self, directory: Path | Directory, manifest: dict[str, Any]) -> None:  # noqa: D107 (no super: no params to check)
        ort = import_onnxruntime()
        directory = directory if isinstance(directory, Directory) else Directory(directory)
        info_path = f"{directory}/{ONNX_INFO}"
        if not directory.exists(ONNX_INFO):
            raise directory.error(f"{info_path}: missing; a PyTorch model in a bundle needs the ONNX export the "
                                  f"training stage writes (retrain: dvc repro train@neural, then bundle)")
        info = directory.read_json(ONNX_INFO)
        self.name, self.family = manifest["model"], manifest["family"]
        self.input_kind = manifest["input_kind"]
        self.horizons = tuple(int(h) for h in manifest["horizons"])
        self.seed, self.task = int(manifest["seed"]), manifest.get("task", "regression")
        self.lookback = int(manifest.get("init", {}).get("lookback", 1))
        if self.classifier:
            self.class_returns_ = np.asarray(manifest["class_returns"], np.float64)
        self.input_shape = tuple(info["input"][1:])
        want = (self.lookback, int(manifest["state"]["n_features"])) if self.input_kind == "sequence" \
            else (int(manifest["state"]["n_features"]),)
        if self.input_shape != want:
            raise ValueError(f"{info_path}: input {info['input']}, expected [batch, {', '.join(map(str, want))}] "
                             f"(the model's {'lookback and ' if len(want) == 2 else ''}feature count)")
        options = ort.SessionOptions()
        # Idle ONNX Runtime threads sleep rather than spin: the tree libraries' OpenMP threads
        # run next to them (the same reason as OMP_WAIT_POLICY=passive).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session_ = directory.load(info["file"], lambda p: ort.InferenceSession(
            str(p), options, providers=["CPUExecutionProvider"]), "ONNX graph")
        self.meta_ = manifest.get("meta", {})
        self.fitted_ = True

    def _predict(self, X: Any) -> np.ndarray:
        n = len(X)
        out = []
        for s in range(0, n, BATCH):
            batch = np.ascontiguousarray(X[s:s + BATCH], dtype=np.float32)  # lazy Windows too
            if batch.shape[1:] != self.input_shape:
                raise ValueError(f"{self.name}: input rows of shape {batch.shape[1:]}, expected {self.input_shape}")
            out.append(self.session_.run(None, {"x": batch})[0])
        tail = (len(self.horizons), 3) if self.classifier else (len(self.horizons),)
        return np.concatenate(out) if out else np.zeros((0, *tail), np.float32)

    def fit(self, train: Any, val: Any) -> OnnxModel:
        raise TypeError(f"{self.name}: an exported (ONNX) model only forecasts; fit the registered model")

    _fit = fit  # type: ignore[assignment]

    def _save_state(self, directory: Path) -> dict[str, Any]:
        raise TypeError(f"{self.name}: an exported (ONNX) model is written by the PyTorch model's "
                        f"save(..., portable=True), not by its own save()")

    def _load_state(self, directory: Path, state: dict[str, Any]) -> None:
        raise TypeError("OnnxModel is built by alphafactory.models.load(directory, portable=True)")


def write_export(model: Model, directory: Path, *, like: Path | None = None,
                 where: Path | None = None) -> Path:
    """Export the fitted PyTorch ``model`` to ONNX into ``directory`` (``net.onnx`` plus
    ``onnx.json``); return the ONNX file. ``like``: an export of the same architecture whose graph
    can be reused (another symbol's). Raises ValueError naming ``where`` (the directory's final
    name, when ``directory`` is a temporary one) if the export fails its check."""
    where = where or directory
    if not hasattr(model, "export_onnx"):
        raise ValueError(f"{where}: model {model.name!r} is in the neural family but has no "
                         f"export_onnx(); expected a subclass of models.trainer.NeuralModel")
    start = time.perf_counter()
    try:
        info = model.export_onnx(directory / ONNX_FILE, like=like)
    except ValueError as e:
        raise ValueError(f"{where}: the ONNX export failed its check: {e}") from e
    log.info("%s: exported to ONNX (graph %s) in %.1f s (ONNX Runtime vs PyTorch: max |diff| %.1e, "
             "largest forecast %.3g)", where, info["graph"], time.perf_counter() - start,
             info["check"]["max_abs_diff"], info["check"]["max_abs"])
    (directory / ONNX_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory / ONNX_FILE
