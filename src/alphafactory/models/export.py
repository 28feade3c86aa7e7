"""A PyTorch model's forward pass as ONNX: what a bundle forecasts with, written by the training
stages (``save(..., portable=True)`` → ``NeuralModel._export`` → :func:`write_export`).

Feature scaling, network(s) and output transform are one graph (:class:`PortableNet`),
``net.onnx``, described by ``onnx.json`` next to the model's manifest (:mod:`.portable` names
both); :class:`alphafactory.serving.onnx_runtime.OnnxModel` runs it without PyTorch. The export
is checked against PyTorch before it is written (:func:`export_onnx`), and its bytes depend only
on the weights and the graph (:func:`_strip_provenance`), so a retrain that changes nothing
changes no file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alphafactory.models import dist
from alphafactory.models.base import CLIP, standardize
from alphafactory.models.persist import version
from alphafactory.models.portable import ONNX_FILE, ONNX_INFO, import_onnxruntime

ONNX_OPSET = 18
# ONNX Runtime and PyTorch run the same float32 network with other kernels; measured differences
# are ~1e-7 of the largest output.
ONNX_RTOL = 1e-4
log = logging.getLogger(__name__)


def write_export(model: Any, directory: Path, *, like: Path | None = None,
                 where: Path | None = None) -> Path:
    """Export the fitted PyTorch ``model`` to ONNX into ``directory`` (``net.onnx`` plus
    ``onnx.json``); return the ONNX file. ``like``: an export of the same architecture whose graph
    can be reused (another symbol's). Raises ValueError naming ``where`` (the directory's final
    name, when ``directory`` is a temporary one) if the export fails its check."""
    where = where or directory
    start = time.perf_counter()
    try:
        info = export_onnx(model, directory / ONNX_FILE, like=like)
    except ValueError as e:
        raise ValueError(f"{where}: the ONNX export failed its check: {e}") from e
    log.info("%s: exported to ONNX (graph %s) in %.1f s (ONNX Runtime vs PyTorch: max |diff| %.1e, "
             "largest forecast %.3g)", where, info["graph"], time.perf_counter() - start,
             info["check"]["max_abs_diff"], info["check"]["max_abs"])
    (directory / ONNX_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory / ONNX_FILE


def export_onnx(model: Any, path: Path, *, like: Path | None = None, opset: int = ONNX_OPSET,
                check_rows: int = 257) -> dict[str, Any]:
    """Write the forward pass of the fitted ``model`` (a
    :class:`~alphafactory.models.trainer.NeuralModel`; :class:`PortableNet`) to the ONNX file
    ``path``, batch size free, then check ONNX Runtime against PyTorch on ``check_rows`` random rows (NaNs and values
    beyond the ±5 clip included) and on one row. Returns what the bundle records in
    ``onnx.json``; raises ValueError naming the model if the two disagree beyond float32
    rounding (``ONNX_RTOL`` of the largest output).

    ``like``: the export of a model with the same architecture (another symbol's, under
    ``train.scope: per_symbol``). Its graph is reused with this model's weights put in (the
    graph is written unoptimized, so its initializers keep the state-dict names; ONNX Runtime
    optimizes it when it loads it): ~0.1 s instead of 3 to 10 s of tracing. The same check
    runs, and a graph that fails it or does not fit is exported afresh."""
    model._check_fitted()
    net = PortableNet(model.nets_, model.mean_, model.std_, model.y_scale_, model.classifier,
                      distribution=model.distribution, df=model.dist_df,
                      quantiles=model.trainer.quantiles if model.distribution == "quantile" else ()).eval()
    shape = (model.lookback, model.n_features_) if model.input_kind == "sequence" else (model.n_features_,)
    if like is not None and _swap_weights(like, path, net):
        try:
            return _check_export(model, path, shape, check_rows, opset, reused=like)
        except ValueError:
            pass  # a weight the graph folded into a constant: trace it
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            net, (torch.zeros((2, *shape)),), dynamo=True, opset_version=opset, optimize=False,
            verbose=False, input_names=["x"], output_names=output_names(model),
            dynamic_shapes=({0: torch.export.Dim("batch")},))
        program.save(str(path))
    _strip_provenance(path)
    return _check_export(model, path, shape, check_rows, opset)


def output_names(model: Any) -> list[str]:
    """The graph's outputs: ``y`` (the forecast, a distribution's mean; class probabilities),
    and ``y_std`` (the std of a distribution) for a model with a ``distribution``."""
    return ["y", "y_std"] if model.distribution else ["y"]


def _reference(model: Any, batch: np.ndarray) -> list[np.ndarray]:
    """What each output of the graph must equal: the PyTorch model's, on CPU (as ONNX Runtime
    here: no TF32 convs)."""
    if model.distribution:
        return list(model._predict_dist(batch, torch.device("cpu")))
    return [model._predict(batch, torch.device("cpu"))]


def _check_export(model: Any, path: Path, shape: tuple[int, ...], check_rows: int, opset: int,
                  reused: Path | None = None) -> dict[str, Any]:
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(model.seed)
    x = (model.mean_ + 3.0 * model.std_ * rng.standard_normal((check_rows, *shape))).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    worst, scale = 0.0, 0.0
    names = output_names(model)
    if [o.name for o in session.get_outputs()] != names:
        raise ValueError(f"{model.name}: the ONNX export has outputs {[o.name for o in session.get_outputs()]}, "
                         f"expected {names}")
    for batch in (x, x[:1]):
        for ref, got in zip(_reference(model, batch), session.run(None, {"x": batch}), strict=True):
            if got.shape != ref.shape:
                raise ValueError(f"{model.name}: the ONNX export gives shape {got.shape}, PyTorch {ref.shape}")
            worst = max(worst, float(np.abs(got - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    if not worst <= ONNX_RTOL * scale:
        raise ValueError(f"{model.name}: ONNX Runtime and PyTorch forecasts differ by up to {worst:.3g} "
                         f"(largest forecast {scale:.3g}); expected at most {ONNX_RTOL:g} of it")
    head = {"head": model.distribution, "df": model.dist_df}
    if model.distribution == "quantile":
        head["quantiles"] = list(model.trainer.quantiles)
    extra = {"outputs": names, "distribution": head} if model.distribution else {}  # a point forecaster's: as it was
    return {"file": path.name, "opset": opset, "input": ["batch", *shape], **extra,
            "output": ["batch", len(model.horizons), *([3] if model.classifier else [])],
            "graph": f"reused from {os.path.relpath(reused, path.parent)}" if reused else "traced",
            "check": {"rows": check_rows, "max_abs_diff": float(f"{worst:.1e}"), "max_abs": float(f"{scale:.3g}")},
            "versions": {p: version(p) for p in ("torch", "onnx", "onnxscript", "onnxruntime")}}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter and its optimizer log every pass at INFO and warn about their own
    internals (deprecations, torchvision ops): keep the stage log to errors."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


class PortableNet(nn.Module):
    """What a bundle exports to ONNX: raw features in, forecasts out. The feature scaling, the
    network(s) and the output transform (target scale, or softmax over the 3 classes) of
    :meth:`~alphafactory.models.trainer.NeuralModel._predict`, as one graph. Several networks
    (``neural.trainer.seeds`` > 1): their mean forecast, the mean of their class probabilities for a classifier. One network is
    held as ``net`` (initializer names ``net.*``, the graph of a single-seed model unchanged),
    several as the ``ModuleList`` ``nets`` (``nets.0.*``, ``nets.1.*``, ...)."""

    def __init__(self, net: nn.Module | list[nn.Module], mean: np.ndarray, std: np.ndarray,
                 y_scale: np.ndarray, classifier: bool, distribution: str | None = None,
                 df: float | None = None, quantiles: tuple[float, ...] = ()) -> None:
        super().__init__()
        nets = list(net) if isinstance(net, (list, tuple, nn.ModuleList)) else [net]
        if len(nets) == 1:
            self.net = nets[0]
        else:
            self.nets = nn.ModuleList(nets)
        self.classifier = classifier
        self.distribution, self.df, self.quantiles = distribution, df, tuple(quantiles)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("y_scale", torch.as_tensor(y_scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z = standardize(x, self.mean, self.std, CLIP, xp=torch)  # x: (B, F) or (B, L, F) raw; as NeuralModel._scale
        nets = [self.net] if hasattr(self, "net") else list(self.nets)
        ys = [net(z) for net in nets]  # k × (B, H) forecasts, (B, H * 3) logits, or (B, 2H) distributions
        if self.classifier:  # average probabilities, not logits
            return _average([torch.softmax(y.reshape(y.shape[0], -1, 3), dim=-1) for y in ys])  # (B, H, 3)
        if self.distribution:  # (mean, std) (B, H) each; k members: their mixture (trainer.mixture)
            ms = [dist.quantile_mean_std(y, self.quantiles) if self.quantiles else dist.mean_std(y, self.df)
                  for y in ys]
            mean = _average([m for m, _ in ms])
            if len(ms) == 1:
                return mean * self.y_scale, ms[0][1] * self.y_scale
            second = _average([s * s + m * m for m, s in ms])
            return mean * self.y_scale, torch.sqrt(torch.clamp(second - mean * mean, min=0.0)) * self.y_scale
        return _average(ys) * self.y_scale  # (B, H)


def _average(ys: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the members' outputs; one output as is (the single-seed graph unchanged). A sum
    and a division, not ``torch.mean``: the exporter would name that node's output ``mean``,
    the name of PortableNet's feature-mean initializer, and ONNX Runtime refuses the duplicate."""
    if len(ys) == 1:
        return ys[0]
    total = ys[0]
    for y in ys[1:]:
        total = total + y
    return total / len(ys)


def _strip_provenance(path: Path) -> None:
    """Rewrite the ONNX file ``path`` without what the exporter records about how it was made:
    per node, the Python stack trace (absolute file paths and line numbers of this package), the
    FX node and module scope; for the graph, the ExportedProgram signature and range constraints
    (symbol names from the tracer's counter), and per value its FX name and input spec; doc
    strings; the local build tag of the producer
    version (``2.13.0+cpu``). None of it changes what the graph computes, but all of it changed
    the file's bytes (and so its DVC hash, and the bundle's) with the checkout's location or an
    edit elsewhere in the file. Names of nodes, values and initializers are kept: they come from
    the module's attribute names and the graph's structure."""
    import onnx

    proto = onnx.load(str(path))

    def clean(graph: onnx.GraphProto) -> None:
        del graph.metadata_props[:]
        graph.doc_string = ""
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            del value.metadata_props[:]  # the ExportedProgram's input/output specs, FX names
            value.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    clean(sub)

    clean(proto.graph)
    for fn in proto.functions:
        del fn.metadata_props[:]
        fn.doc_string = ""
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""
    del proto.metadata_props[:]
    proto.doc_string = ""
    proto.producer_version = proto.producer_version.split("+")[0]
    onnx.save(proto, str(path))


def _swap_weights(like: Path, path: Path, net: nn.Module) -> bool:
    """Write ``like``'s ONNX graph to ``path`` with ``net``'s weights; False (nothing written) if
    an initializer of ``like`` named as a weight of ``net`` has another shape or type."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(like))
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    for init in proto.graph.initializer:
        if init.name in state:
            new = numpy_helper.from_array(state[init.name], init.name)
            if tuple(new.dims) != tuple(init.dims) or new.data_type != init.data_type:
                return False
            init.CopyFrom(new)
    onnx.save(proto, str(path))
    return True
