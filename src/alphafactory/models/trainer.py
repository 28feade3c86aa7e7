"""The one trainer shared by every PyTorch model.

Plain functions, no framework: seeding, device choice, mini-batches gathered lazily from
windows, masked multi-horizon MSE (a missing horizon label contributes nothing), gradient
clipping, mixed precision on CUDA, evaluation under ``torch.no_grad()``, early stopping on the
validation loss and restore of the best weights. A model file only defines its ``nn.Module``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn

from alphafactory.config import Interval, from_dict, to_dict
from alphafactory.errors import ConfigError
from alphafactory.io import Directory
from alphafactory.models.base import XY, Model, _version
from alphafactory.progress import progress

ONNX_OPSET = 18
# ONNX Runtime and PyTorch run the same float32 network with other kernels; measured differences
# are ~1e-7 of the largest output.
ONNX_RTOL = 1e-4


@dataclass(frozen=True)
class TrainerConfig:
    epochs: Annotated[int, Interval(ge=1)] = 30
    batch_size: Annotated[int, Interval(ge=1)] = 256
    lr: Annotated[float, Interval(gt=0)] = 1e-3
    weight_decay: Annotated[float, Interval(ge=0)] = 1e-4
    patience: Annotated[int, Interval(ge=1)] = 5  # epochs without val improvement before stopping
    grad_clip: Annotated[float, Interval(gt=0)] = 1.0  # max gradient norm
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    threads: Annotated[int, Interval(ge=1)] = 2  # CPU threads for torch
    seeds: Annotated[int, Interval(ge=1)] = 1  # networks per model, seeds seed .. seed+seeds-1; forecasts their mean

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"neural.trainer.device: got {self.device!r}, expected auto, cpu, cuda or cuda:<n>")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch(X: Any, idx: np.ndarray) -> np.ndarray:
    return X[idx]  # works for arrays and lazy Windows alike: (b, F) or (b, L, F)


def masked_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the labelled entries of y (B, H); NaN labels are skipped."""
    mask = ~torch.isnan(y)
    diff = torch.where(mask, pred - torch.nan_to_num(y), torch.zeros_like(pred))
    return (diff * diff).sum() / mask.sum().clamp(min=1)


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled entries of y (B, H) of class indices (NaN skipped);
    logits (B, H * K), K classes per horizon."""
    B, H = y.shape
    mask = ~torch.isnan(y)
    ce = nn.functional.cross_entropy(logits.reshape(B * H, -1), torch.nan_to_num(y).long().reshape(-1),
                                     reduction="none").reshape(B, H)
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / mask.sum().clamp(min=1)


def predict_network(net: nn.Module, X: Any, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(X), batch_size):
            xb = torch.as_tensor(_batch(X, np.arange(s, min(s + batch_size, len(X)))), device=device)
            out.append(net(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_network(net: nn.Module, train: XY, val: XY, cfg: TrainerConfig, seed: int,
                loss_fn: Any = masked_mse, desc: str = "train") -> dict[str, list[float]]:
    """Train ``net`` in place; returns the per-epoch history. Y arrays are (n, H), already scaled
    (regression, ``masked_mse``) or class indices (``masked_cross_entropy``). ``desc`` names the
    progress bar: one step per epoch, train and val loss in its postfix, and a bar over the
    batches of an epoch that lasts more than a few seconds."""
    torch.set_num_threads(cfg.threads)
    seed_everything(seed)
    device = select_device(cfg.device)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    gen = np.random.default_rng(seed)
    yv = torch.as_tensor(val.Y, device=device)
    best, best_state, bad = float("inf"), copy.deepcopy(net.state_dict()), 0
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    with progress(desc=desc, total=cfg.epochs, unit="epoch") as epochs:
        for epoch in range(cfg.epochs):
            net.train()
            order = gen.permutation(len(train.Y))
            total, count = 0.0, 0
            for s in progress(range(0, len(order), cfg.batch_size), desc=f"{desc} epoch {epoch + 1}",
                              unit="batch", leave=False, delay=3.0):
                idx = order[s:s + cfg.batch_size]
                xb = torch.as_tensor(_batch(train.X, idx), device=device)
                yb = torch.as_tensor(train.Y[idx], device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    pred = net(xb)
                loss = loss_fn(pred.float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            pv = torch.as_tensor(predict_network(net, val.X, device), device=device)
            val_loss = loss_fn(pv, yv).item()
            history["train_loss"].append(total / max(count, 1))
            history["val_loss"].append(val_loss)
            epochs.set_postfix({"train_loss": history["train_loss"][-1], "val_loss": val_loss,
                                "best": int(np.argmin(history["val_loss"])) + 1}, refresh=False)
            epochs.update(1)
            if val_loss < best - 1e-9:
                best, best_state, bad = val_loss, copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    epochs.set_postfix_str(f"{epochs.postfix}, early stop", refresh=False)
                    break
    net.load_state_dict(best_state)
    history["best_epoch"] = [int(np.argmin(history["val_loss"]))]
    return history


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
    :meth:`NeuralModel._predict`, as one graph. Several networks (``neural.trainer.seeds`` > 1):
    their mean forecast, the mean of their class probabilities for a classifier. One network is
    held as ``net`` (initializer names ``net.*``, the graph of a single-seed model unchanged),
    several as the ``ModuleList`` ``nets`` (``nets.0.*``, ``nets.1.*``, ...)."""

    def __init__(self, net: nn.Module | list[nn.Module], mean: np.ndarray, std: np.ndarray,
                 y_scale: np.ndarray, classifier: bool) -> None:
        super().__init__()
        nets = list(net) if isinstance(net, (list, tuple, nn.ModuleList)) else [net]
        if len(nets) == 1:
            self.net = nets[0]
        else:
            self.nets = nn.ModuleList(nets)
        self.classifier = classifier
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("y_scale", torch.as_tensor(y_scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) or (B, L, F) raw features
        z = (x - self.mean) / self.std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z).clamp(-5.0, 5.0)  # as _scale
        nets = [self.net] if hasattr(self, "net") else list(self.nets)
        ys = [net(z) for net in nets]  # k × (B, H) forecasts, or (B, H * 3) logits
        if self.classifier:  # average probabilities, not logits
            return _average([torch.softmax(y.reshape(y.shape[0], -1, 3), dim=-1) for y in ys])  # (B, H, 3)
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


class NeuralModel(Model):
    """Base for PyTorch families: feature scaling fit on train rows only, per-horizon target
    scaling, the shared trainer, and state-dict artifacts. Subclasses implement ``build``.
    Classification: the network has 3 logits per horizon, trained with cross-entropy.

    Seed averaging (``neural.trainer.seeds`` = k > 1): k networks, seeds ``seed .. seed+k-1``,
    each built, trained and early-stopped by the same rule on the same data (``nets_``); the
    model forecasts their mean (a classifier: the mean of their class probabilities, which stays
    a distribution, not the softmax of mean logits). ``history_`` then holds each member's curves
    under ``members``; :meth:`predict_members` gives each member's forecasts. k = 1 is one network,
    trained, saved and exported exactly as without the option."""

    packages = ("torch",)

    def __init__(self, params: dict[str, Any] | None = None, *, horizons: tuple[int, ...] = (1,),
                 seed: int = 0, task: str = "regression", lookback: int = 32,
                 trainer: TrainerConfig | dict | None = None) -> None:
        super().__init__(params, horizons=horizons, seed=seed, task=task)
        if self.input_kind == "sequence" and lookback < 1:
            raise ValueError(f"{self.name}: lookback {lookback}, expected >= 1")
        self.lookback = int(lookback)
        self.trainer = trainer if isinstance(trainer, TrainerConfig) else from_dict(
            TrainerConfig, trainer, "neural.trainer")

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        raise NotImplementedError

    def _init_kwargs(self) -> dict[str, Any]:
        return {"lookback": self.lookback, "trainer": to_dict(self.trainer)}

    # Features are z-scored with train statistics, clipped to ±5 and NaN → 0 (the train mean).
    def _scale(self, X: Any) -> Any:
        from alphafactory.dataset import Windows

        def z(a: np.ndarray) -> np.ndarray:
            a = (a - self.mean_) / self.std_
            return np.nan_to_num(np.clip(a, -5, 5), nan=0.0).astype(np.float32)

        if isinstance(X, Windows):
            return Windows(z(X.base), X.ends, X.lookback)
        return z(np.asarray(X, np.float32))

    def _train_rows(self, X: Any) -> np.ndarray:
        from alphafactory.dataset import Windows

        if isinstance(X, Windows):
            return X.base[X.ends]  # the train rows themselves, not the bars before them
        X = np.asarray(X, np.float32)
        return X.reshape(-1, X.shape[-1])

    @property
    def n_outputs(self) -> int:
        return len(self.horizons) * (3 if self.classifier else 1)

    def _fit(self, train: XY, val: XY) -> None:
        rows = self._train_rows(train.X)
        self.mean_ = np.nanmean(rows, axis=0).astype(np.float32)
        std = np.nanstd(rows, axis=0).astype(np.float32)
        self.mean_ = np.nan_to_num(self.mean_)
        self.std_ = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0).astype(np.float32)
        if self.classifier:  # class indices are not scaled
            self.y_scale_ = np.ones(len(self.horizons), np.float32)
        else:
            self.y_scale_ = np.nanstd(train.Y, axis=0).astype(np.float32)
            self.y_scale_ = np.where(self.y_scale_ > 0, self.y_scale_, 1.0).astype(np.float32)
        n_features = rows.shape[-1]
        self.n_features_ = n_features
        train_s = XY(self._scale(train.X), (train.Y / self.y_scale_).astype(np.float32))
        val_s = XY(self._scale(val.X), (val.Y / self.y_scale_).astype(np.float32))
        k = self.trainer.seeds
        self.nets_, members = [], []
        for i in range(k):
            seed = self.seed + i
            seed_everything(seed)
            net = self.build(n_features, self.n_outputs)
            hist = fit_network(net, train_s, val_s, self.trainer, seed,
                               loss_fn=masked_cross_entropy if self.classifier else masked_mse,
                               desc=self.name if k == 1 else f"{self.name} seed {seed} ({i + 1}/{k})")
            net.to("cpu")
            self.nets_.append(net)
            members.append(hist)
        # one network: its curves as they are; k: {"members": [{"seed": s, curves...}, ...]}
        self.history_ = members[0] if k == 1 else {
            "members": [{"seed": self.seed + i, **h} for i, h in enumerate(members)]}

    @property
    def net_(self) -> nn.Module:
        """The network of a single-seed model (the first member of a seed-averaged one)."""
        return self.nets_[0]

    def _member_outputs(self, X: Any, device: torch.device | None = None) -> list[np.ndarray]:
        """Each member's forecast (n, H), or class probabilities (n, H, 3) float64."""
        device = device or select_device(self.trainer.device)
        Xs, outs = self._scale(X), []
        for net in self.nets_:
            net.to(device)
            out = predict_network(net, Xs, device)
            net.to("cpu")
            if self.classifier:  # logits (n, H * 3) → probabilities (n, H, 3)
                outs.append(torch.softmax(torch.as_tensor(out, dtype=torch.float64).reshape(len(out), -1, 3),
                                          -1).numpy())
            else:
                outs.append(out * self.y_scale_)
        return outs

    def _predict(self, X: Any, device: torch.device | None = None) -> np.ndarray:
        outs = self._member_outputs(X, device)
        return outs[0] if len(outs) == 1 else np.mean(np.stack(outs), axis=0)

    def predict_members(self, X: Any) -> np.ndarray:
        """(k, n, H) float64: each seed member's forecast (a classifier's expected return under
        that member's class probabilities); ``predict`` is their mean for a regressor."""
        self._check_fitted()
        outs = self._member_outputs(X)
        if self.classifier:
            return np.stack([self.expected_return(np.asarray(p, np.float64)) for p in outs])
        return np.stack([np.asarray(o, np.float64).reshape(len(X), len(self.horizons)) for o in outs])

    def _save_state(self, directory: Path) -> dict[str, Any]:
        # one network: its state dict as is; k networks: member i's entries prefixed "i."
        # (the state dict of a ModuleList), all in the one tensors-only file
        tensors = {(k if len(self.nets_) == 1 else f"{i}.{k}"): v.detach().cpu().contiguous()
                   for i, net in enumerate(self.nets_) for k, v in net.state_dict().items()}
        tensors.update({"_scaler_mean": torch.as_tensor(self.mean_), "_scaler_std": torch.as_tensor(self.std_),
                        "_y_scale": torch.as_tensor(self.y_scale_)})
        torch.save(tensors, directory / "weights.pt")
        return {"weights": "weights.pt", "n_features": self.n_features_}

    def _load_state(self, directory: Directory, state: dict[str, Any]) -> None:
        tensors = directory.load(state["weights"], lambda p: torch.load(p, map_location="cpu", weights_only=True),
                                 "weights file")
        self.mean_ = tensors.pop("_scaler_mean").numpy()
        self.std_ = tensors.pop("_scaler_std").numpy()
        self.y_scale_ = tensors.pop("_y_scale").numpy()
        self.n_features_ = int(state["n_features"])
        k = self.trainer.seeds
        self.nets_ = [self.build(self.n_features_, self.n_outputs) for _ in range(k)]
        if k == 1:
            self.nets_[0].load_state_dict(tensors)
        else:
            nn.ModuleList(self.nets_).load_state_dict(tensors)

    def export_onnx(self, path: Path, *, like: Path | None = None, opset: int = ONNX_OPSET,
                    check_rows: int = 257) -> dict[str, Any]:
        """Write the forward pass (:class:`PortableNet`) to the ONNX file ``path``, batch size free,
        then check ONNX Runtime against PyTorch on ``check_rows`` random rows (NaNs and values
        beyond the ±5 clip included) and on one row. Returns what the bundle records in
        ``onnx.json``; raises ValueError naming the model if the two disagree beyond float32
        rounding (``ONNX_RTOL`` of the largest output).

        ``like``: the export of a model with the same architecture (another symbol's, under
        ``train.scope: per_symbol``). Its graph is reused with this model's weights put in (the
        graph is written unoptimized, so its initializers keep the state-dict names; ONNX Runtime
        optimizes it when it loads it): ~0.1 s instead of 3 to 10 s of tracing. The same check
        runs, and a graph that fails it or does not fit is exported afresh."""
        self._check_fitted()
        net = PortableNet(self.nets_, self.mean_, self.std_, self.y_scale_, self.classifier).eval()
        shape = (self.lookback, self.n_features_) if self.input_kind == "sequence" else (self.n_features_,)
        if like is not None and _swap_weights(like, path, net):
            try:
                return self._check_export(path, shape, check_rows, opset, reused=like)
            except ValueError:
                pass  # a weight the graph folded into a constant: trace it
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                net, (torch.zeros((2, *shape)),), dynamo=True, opset_version=opset, optimize=False,
                verbose=False, input_names=["x"], output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("batch")},))
            program.save(str(path))
        _strip_provenance(path)
        return self._check_export(path, shape, check_rows, opset)

    def _check_export(self, path: Path, shape: tuple[int, ...], check_rows: int, opset: int,
                      reused: Path | None = None) -> dict[str, Any]:
        from alphafactory.models.onnx_model import import_onnxruntime

        ort = import_onnxruntime()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(self.seed)
        x = (self.mean_ + 3.0 * self.std_ * rng.standard_normal((check_rows, *shape))).astype(np.float32)
        x[rng.random(x.shape) < 0.05] = np.nan
        worst, scale = 0.0, 0.0
        for batch in (x, x[:1]):
            ref = self._predict(batch, torch.device("cpu"))  # as ONNX Runtime here: no TF32 convs
            got = session.run(None, {"x": batch})[0]
            if got.shape != ref.shape:
                raise ValueError(f"{self.name}: the ONNX export gives shape {got.shape}, PyTorch {ref.shape}")
            worst = max(worst, float(np.abs(got - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
        if not worst <= ONNX_RTOL * scale:
            raise ValueError(f"{self.name}: ONNX Runtime and PyTorch forecasts differ by up to {worst:.3g} "
                             f"(largest forecast {scale:.3g}); expected at most {ONNX_RTOL:g} of it")
        return {"file": path.name, "opset": opset, "input": ["batch", *shape],
                "output": ["batch", len(self.horizons), *([3] if self.classifier else [])],
                "graph": f"reused from {os.path.relpath(reused, path.parent)}" if reused else "traced",
                "check": {"rows": check_rows, "max_abs_diff": float(f"{worst:.1e}"), "max_abs": float(f"{scale:.3g}")},
                "versions": {p: _version(p) for p in ("torch", "onnx", "onnxscript", "onnxruntime")}}


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
