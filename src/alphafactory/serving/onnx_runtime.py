"""A PyTorch model's ONNX export run by ONNX Runtime, and the loader a bundle uses for its models.

The training stage saves every PyTorch model with its export (``save(..., portable=True)``, see
:mod:`alphafactory.models.export`): feature scaling, network and output transform as one graph,
``net.onnx``, described by ``onnx.json`` next to the model's manifest. :func:`load` loads a saved
model as a bundle forecasts with it: a model of a family in ``EXPORTED_FAMILIES`` (less ``NATIVE_MODELS``) as an
:class:`OnnxModel`, any other from its native files, a per-symbol model as a per-symbol model of
those. So loading a bundle and forecasting never import PyTorch, unless it holds one of ``NATIVE_MODELS`` (about 2 s of a cold start on
2 cores; ONNX Runtime imports in 0.05 s).

Forecasts equal the PyTorch model's to float32 rounding (checked at export, recorded in
``onnx.json``, and by the tests against the evaluate stage's forecasts). An ``OnnxModel`` is a
:class:`~alphafactory.models.base.Forecaster`, not a trainable model: it only forecasts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alphafactory import raw_windows
from alphafactory.io import Directory
from alphafactory.models import persist
from alphafactory.models.base import Forecaster
from alphafactory.models.portable import ONNX_INFO, exported, import_onnxruntime

# Rows per ONNX Runtime call: bounds the materialised windows and the memory ONNX Runtime keeps in
# its arena after the largest call (lookback 32 x 237 features: ~200 MB per model at 1024, 800 MB
# at 4096; the same speed per row).
BATCH = 1024


def load(directory: str | Path | Directory) -> Forecaster:
    """The saved model in ``directory`` as a bundle forecasts with it (see the module docstring);
    a model of an exported family without its export is an error naming the missing file."""
    return persist.load(directory, loader=_load_single)


def _load_single(files: Directory, manifest: dict[str, Any]) -> Forecaster:
    if exported(manifest):
        return OnnxModel(files, manifest)
    return persist.load_native(files, manifest)


class OnnxModel(Forecaster):
    """Stands in for the registered model named in ``manifest`` (same name, family, input kind,
    horizons, task and lookback); ``predict``/``predict_proba`` as for the PyTorch model."""

    def __init__(self, directory: Path | Directory, manifest: dict[str, Any]) -> None:
        ort = import_onnxruntime()
        directory = directory if isinstance(directory, Directory) else Directory(directory)
        info_path = f"{directory}/{ONNX_INFO}"
        if not directory.exists(ONNX_INFO):
            raise directory.error(f"{info_path}: missing; a PyTorch model in a bundle needs the ONNX export the "
                                  f"training stage writes (retrain: dvc repro train@neural, then bundle)")
        info = directory.read_json(ONNX_INFO)
        self.name, self.family = manifest["model"], manifest["family"]
        self.input_kind = manifest["input_kind"]
        super().__init__(horizons=manifest["horizons"], task=manifest.get("task", "regression"))
        self.seed = int(manifest["seed"])
        self.lookback = int(manifest.get("init", {}).get("lookback", 1))
        self.inputs = raw_windows.inputs_config(manifest.get("init", {}).get("inputs"))  # neural.inputs
        if self.classifier:
            self.class_returns_ = np.asarray(manifest["class_returns"], np.float64)
        head = info.get("distribution")  # a distributional family's graph: outputs y (mean) and y_std
        if head is not None:
            self.distribution, self.dist_df = head["head"], head.get("df")
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

    def _run(self, X: Any) -> list[np.ndarray]:
        """Every output of the graph for the rows of X: [y] or, for a distribution, [y, y_std]."""
        n = len(X)
        out = []
        for s in range(0, n, BATCH):
            batch = np.ascontiguousarray(X[s:s + BATCH], dtype=np.float32)  # lazy Windows too
            if batch.shape[1:] != self.input_shape:
                raise ValueError(f"{self.name}: input rows of shape {batch.shape[1:]}, expected {self.input_shape}")
            out.append(self.session_.run(None, {"x": batch}))
        tail = (len(self.horizons), 3) if self.classifier else (len(self.horizons),)
        k = 2 if self.distribution else 1
        return [np.concatenate([o[i] for o in out]) if out else np.zeros((0, *tail), np.float32) for i in range(k)]

    def _predict(self, X: Any) -> np.ndarray:
        return self._run(X)[0]

    def _predict_dist(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self._run(X)
        return mean, std
