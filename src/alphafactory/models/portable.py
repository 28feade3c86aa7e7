"""The portable (ONNX) form of a model, as far as both its writer and its runner need it, and
nothing that imports PyTorch: the writer is :mod:`alphafactory.models.export` (training
stages), the runner :mod:`alphafactory.serving.onnx_runtime` (bundles).
"""
from __future__ import annotations

from typing import Any

ONNX_INFO = "onnx.json"  # next to the model's manifest: file, opset, shapes, the export check
ONNX_FILE = "net.onnx"
# Families a bundle forecasts with through their ONNX export (``Model._export``), because their
# library (PyTorch) is not a serving dependency; the others load their native files.
EXPORTED_FAMILIES = ("neural",)
# Models of those families that have no export and load their native files in a bundle too:
# chronos, a pretrained checkpoint run by its own library (chronos-forecasting on PyTorch), so a
# bundle holding it imports PyTorch when it loads.
NATIVE_MODELS = ("chronos",)


def exported(manifest: dict[str, Any]) -> bool:
    """Whether the saved model of ``manifest`` forecasts in a bundle through its ONNX export."""
    return manifest.get("family") in EXPORTED_FAMILIES and manifest.get("model") not in NATIVE_MODELS


def import_onnxruntime() -> Any:
    """``onnxruntime``, its telemetry events off. Importing it is what writes its device id and
    event store under ``~/.cache/Microsoft/DeveloperTools``; ``alphafactory/__init__.py`` sets
    ``ORT_DISABLE_TELEMETRY=1`` (unless set) before any import of it, which stops that."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort
