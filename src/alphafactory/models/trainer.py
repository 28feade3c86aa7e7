"""The one trainer shared by every PyTorch model.

Plain functions, no framework: seeding, device choice, mini-batches gathered lazily from
windows, masked multi-horizon MSE (a missing horizon label contributes nothing), gradient
clipping, mixed precision on CUDA, evaluation under ``torch.no_grad()``, early stopping on the
validation loss and restore of the best weights. A model file only defines its ``nn.Module``.
"""
from __future__ import annotations

import copy
import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn

from alphafactory.config import Interval, from_dict, to_dict
from alphafactory.dataset import Windows
from alphafactory.errors import ConfigError
from alphafactory.io import Directory
from alphafactory.models import dist, export
from alphafactory.models.base import CLIP, XY, Model, standardize
from alphafactory.progress import progress
from alphafactory.raw_windows import InputsConfig, init_kwargs, inputs_config

log = logging.getLogger(__name__)


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
    # quantile levels a regression network forecasts, trained by the pinball loss (empty: off);
    # its yhat_std and prob_up are then its own (models.dist, "quantile")
    quantiles: tuple[Annotated[float, Interval(gt=0, lt=1)], ...] = ()
    # A budget for wide panels (null: none). epoch_rows: the train windows an epoch steps through,
    # drawn without replacement anew each epoch (every window while there are at most that many).
    # val_rows: the val windows the early-stopping loss is taken on, evenly spaced over the val
    # set and the same every epoch. Forecasts are made on every row either way.
    epoch_rows: Annotated[int | None, Interval(ge=1)] = None
    val_rows: Annotated[int | None, Interval(ge=1)] = None

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"neural.trainer.device: got {self.device!r}, expected auto, cpu, cuda or cuda:<n>")
        q = list(self.quantiles)
        if q and (q != sorted(set(q)) or 0.5 not in q or len(q) < 3):
            raise ConfigError(f"neural.trainer.quantiles: got {q}; expected increasing levels in (0, 1), "
                              "0.5 among them (the forecast) and one on each side (the spread), e.g. [0.1, 0.5, 0.9]")


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


def _val_subset(val: XY, rows: int | None) -> XY:
    """``val`` itself while it has at most ``rows`` rows, else ``rows`` of them evenly spaced
    (windows are ordered by symbol, then time: every symbol and period keeps its share)."""
    n = len(val.Y)
    if rows is None or n <= rows:
        return val
    take = np.linspace(0, n - 1, rows).round().astype(np.int64)  # distinct: the spacing is > 1
    X = val.X[take] if isinstance(val.X, np.ndarray) else val.X.take(take)  # windows stay lazy
    return XY(X, val.Y[take])


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
    n_train, n_val = len(train.Y), len(val.Y)
    n_epoch = min(cfg.epoch_rows or n_train, n_train)
    val = _val_subset(val, cfg.val_rows)
    if n_epoch < n_train or len(val.Y) < n_val:
        log.info("%s: %d of %d train windows an epoch, early stopping on %d of %d val windows "
                 "(neural.trainer.epoch_rows, val_rows)", desc, n_epoch, n_train, len(val.Y), n_val)
    yv = torch.as_tensor(val.Y, device=device)
    best, best_state, bad = float("inf"), copy.deepcopy(net.state_dict()), 0
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    with progress(desc=desc, total=cfg.epochs, unit="epoch") as epochs:
        for epoch in range(cfg.epochs):
            net.train()
            order = gen.permutation(n_train)[:n_epoch]
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


class NeuralModel(Model):
    """Base for PyTorch families: feature scaling fit on train rows only, per-horizon target
    scaling, the shared trainer, and state-dict artifacts. Subclasses implement ``build``.
    Classification: the network has 3 logits per horizon, trained with cross-entropy.
    A family whose ``distribution`` is a head of :mod:`alphafactory.models.dist` (``deepar``)
    has 2 outputs per horizon (mean, raw scale), trained by that head's negative
    log-likelihood; ``predict`` is the mean, ``predict_dist`` gives (mean, std).

    Seed averaging (``neural.trainer.seeds`` = k > 1): k networks, seeds ``seed .. seed+k-1``,
    each built, trained and early-stopped by the same rule on the same data (``nets_``); the
    model forecasts their mean (a classifier: the mean of their class probabilities, which stays
    a distribution, not the softmax of mean logits). ``history_`` then holds each member's curves
    under ``members``; :meth:`predict_members` gives each member's forecasts. k = 1 is one network,
    trained, saved and exported exactly as without the option."""

    packages = ("torch",)

    def __init__(self, params: dict[str, Any] | None = None, *, horizons: tuple[int, ...] = (1,),
                 seed: int = 0, task: str = "regression", lookback: int = 32,
                 trainer: TrainerConfig | dict | None = None,
                 inputs: InputsConfig | dict | None = None) -> None:
        super().__init__(params, horizons=horizons, seed=seed, task=task)
        if self.input_kind == "sequence" and lookback < 1:
            raise ValueError(f"{self.name}: lookback {lookback}, expected >= 1")
        self.lookback = int(lookback)
        self.inputs = inputs_config(inputs)  # neural.inputs: features, raw OHLCV windows, or both
        if self.inputs.raw:
            if self.input_kind != "sequence":
                raise ConfigError(f"neural.inputs.kind {self.inputs.kind}: {self.name} reads one bar's features, "
                                  "not a window; raw windows are for the sequence models (kind: features for it)")
            self.inputs.check(self.lookback)
        self.trainer = trainer if isinstance(trainer, TrainerConfig) else from_dict(
            TrainerConfig, trainer, "neural.trainer")
        if self.trainer.quantiles and (self.classifier or type(self).distribution is not NeuralModel.distribution):
            why = "train.task classification" if self.classifier else f"its own {self.distribution} head"
            raise ConfigError(f"neural.trainer.quantiles: {list(self.trainer.quantiles)} with {self.name}, which has "
                              f"{why}; quantiles need a regression network without one (quantiles: [])")

    @property
    def distribution(self) -> str | None:
        """``quantile`` under ``neural.trainer.quantiles`` (regression), else None; a family with
        its own head (``deepar``) overrides this."""
        return "quantile" if self.trainer.quantiles and not self.classifier else None

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        raise NotImplementedError

    def _init_kwargs(self) -> dict[str, Any]:
        return {"lookback": self.lookback, "trainer": to_dict(self.trainer), **init_kwargs(self.inputs)}

    # Features are z-scored with train statistics, NaN → 0 (the train mean) and clipped to ±CLIP:
    # base.standardize, the same rule the ONNX export traces.
    def _scale(self, X: Any) -> Any:
        def z(a: np.ndarray) -> np.ndarray:
            return standardize(a, self.mean_, self.std_, CLIP).astype(np.float32)

        if isinstance(X, Windows) and X.raw is not None:  # raw channels: scaled per batch, with the features
            return _Scaled(X, self.mean_, self.std_)
        if isinstance(X, Windows):
            return Windows(z(X.base), X.ends, X.lookback)
        return z(np.asarray(X, np.float32))

    def _train_rows(self, X: Any) -> np.ndarray:
        if isinstance(X, Windows):
            return X.base[X.ends]  # the train rows themselves, not the bars before them
        X = np.asarray(X, np.float32)
        return X.reshape(-1, X.shape[-1])

    @property
    def n_outputs(self) -> int:
        if self.distribution == "quantile":
            return len(self.horizons) * len(self.trainer.quantiles)
        return len(self.horizons) * (3 if self.classifier else 2 if self.distribution else 1)

    def loss_fn(self) -> Any:
        """The training loss of the network's outputs against the scaled targets (B, H)."""
        if self.classifier:
            return masked_cross_entropy
        if self.distribution == "quantile":
            return dist.pinball_loss(self.trainer.quantiles)
        if self.distribution:
            return dist.nll_loss(self.distribution, self.dist_df)
        return masked_mse

    def _fit_scaler(self, X: Any) -> np.ndarray:
        """Set the feature scaling (``mean_``, ``std_``, (F,) each) from the train rows of X; returns
        those rows (n, F). Raw window channels (``neural.inputs``): their statistics over every
        step of up to ``RAW_SCALER_WINDOWS`` evenly spaced train windows, after the features'."""
        if isinstance(X, Windows) and X.raw is not None:
            take = np.unique(np.linspace(0, len(X) - 1, min(len(X), RAW_SCALER_WINDOWS)).astype(np.int64))
            raw = X.raw.windows(take, X.lookback).reshape(-1, X.raw.cfg.channels)
            feats = X.base[X.ends] if X.features else np.zeros((len(X), 0), np.float32)
            m1, s1 = _moments(feats)
            m2, s2 = _moments(raw)
            self.mean_, self.std_ = np.concatenate([m1, m2]), np.concatenate([s1, s2])
            return feats
        rows = self._train_rows(X)
        self.mean_, self.std_ = _moments(rows)
        return rows

    def _fit(self, train: XY, val: XY) -> None:
        self._fit_scaler(train.X)
        if self.classifier:  # class indices are not scaled
            self.y_scale_ = np.ones(len(self.horizons), np.float32)
        else:
            self.y_scale_ = np.nanstd(train.Y, axis=0).astype(np.float32)
            self.y_scale_ = np.where(self.y_scale_ > 0, self.y_scale_, 1.0).astype(np.float32)
        n_features = len(self.mean_)  # the features' count, plus the raw channels (neural.inputs)
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
                               loss_fn=self.loss_fn(),
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
        """Each member's forecast (n, H), class probabilities (n, H, 3) float64, or for a
        distribution (n, H, 2): its mean and std."""
        device = device or select_device(self.trainer.device)
        channels = getattr(X, "shape", (0,))[-1]
        if self.input_kind == "sequence" and channels != self.n_features_:
            raise ValueError(f"{self.name}: windows of {channels} channels, expected {self.n_features_} "
                             f"(neural.inputs.kind {self.inputs.kind}: features"
                             f"{' + raw OHLCV windows' if self.inputs.raw else ''})")
        Xs, outs = self._scale(X), []
        for net in self.nets_:
            net.to(device)
            out = predict_network(net, Xs, device)
            net.to("cpu")
            if self.classifier:  # logits (n, H * 3) → probabilities (n, H, 3)
                outs.append(torch.softmax(torch.as_tensor(out, dtype=torch.float64).reshape(len(out), -1, 3),
                                          -1).numpy())
            elif self.distribution:  # (n, 2H) or (n, H * Q) → mean, std in target units (float32, as ONNX)
                mean, std = self.mean_std(torch.as_tensor(out))
                outs.append(np.stack([mean.numpy() * self.y_scale_, std.numpy() * self.y_scale_], -1))
            else:
                outs.append(out * self.y_scale_)
        return outs

    def mean_std(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A distributional network's outputs → (mean, std), each (B, H), in scaled target units."""
        if self.distribution == "quantile":
            return dist.quantile_mean_std(out, self.trainer.quantiles)
        return dist.mean_std(out, self.dist_df)

    def _predict(self, X: Any, device: torch.device | None = None) -> np.ndarray:
        outs = self._member_outputs(X, device)
        if self.distribution:
            return mixture(outs)[0]
        return outs[0] if len(outs) == 1 else np.mean(np.stack(outs), axis=0)

    def _predict_dist(self, X: Any, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
        return mixture(self._member_outputs(X, device))

    def predict_members(self, X: Any) -> np.ndarray:
        """(k, n, H) float64: each seed member's forecast (a classifier's expected return under
        that member's class probabilities); ``predict`` is their mean for a regressor."""
        self._check_fitted()
        outs = self._member_outputs(X)
        if self.classifier:
            return np.stack([self.expected_return(np.asarray(p, np.float64)) for p in outs])
        if self.distribution:
            outs = [o[..., 0] for o in outs]
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

    def _export(self, directory: Path, *, like: Path | None = None, where: Path | None = None) -> Path:
        """The forward pass as ONNX (:func:`alphafactory.models.export.write_export`)."""
        return export.write_export(self, directory, like=like, where=where)


RAW_SCALER_WINDOWS = 2048  # train windows whose raw channels set their scaling (all steps of each)


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) (F,) float32 of rows (n, F), NaN skipped; a constant or all-NaN column gets
    mean 0 / std 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: mean 0, std 1 below
        mean = np.nanmean(rows, axis=0).astype(np.float32)
        std = np.nanstd(rows, axis=0).astype(np.float32)
    return np.nan_to_num(mean), np.where(np.isfinite(std) & (std > 1e-8), std, 1.0).astype(np.float32)


class _Scaled:
    """Windows with raw channels, scaled per batch on materialisation (``base.standardize``,
    as the ONNX graph scales its input): ``len`` and ``[idx]`` as :class:`Windows`."""

    def __init__(self, windows: Windows, mean: np.ndarray, std: np.ndarray) -> None:
        self.windows, self.mean, self.std = windows, mean, std

    def __len__(self) -> int:
        return len(self.windows)

    def take(self, idx: np.ndarray) -> _Scaled:
        return _Scaled(self.windows.take(idx), self.mean, self.std)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return standardize(self.windows[idx].astype(np.float32), self.mean, self.std, CLIP).astype(np.float32)


def mixture(outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (n, H), of the equal-weight mixture of k members' (n, H, 2) means and
    stds (one member: its own, unchanged): the mean of the means, and
    ``sqrt(mean(std² + mean²) - mean²)`` (within-member plus between-member variance)."""
    if len(outs) == 1:
        return outs[0][..., 0], outs[0][..., 1]
    o = np.stack(outs).astype(np.float64)  # (k, n, H, 2)
    mean = o[..., 0].mean(0)
    var = (o[..., 1] ** 2 + o[..., 0] ** 2).mean(0) - mean ** 2
    return mean, np.sqrt(np.maximum(var, 0.0))
