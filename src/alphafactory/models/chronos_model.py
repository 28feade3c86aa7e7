"""Chronos and Chronos-Bolt (Ansari et al. 2024, "Chronos: Learning the Language of Time Series"),
pretrained time-series foundation models, as a zero-shot baseline: nothing is trained.

``neural.chronos.path`` is a local directory holding a checkpoint (``config.json`` +
``model.safetensors``, as ``save_pretrained`` writes it; a Chronos (T5) or a Chronos-Bolt one,
told apart by its config). Nothing is ever downloaded: the path must be a directory on disk,
``local_files_only`` is passed to every load and the Hugging Face hub is put offline before the
library is first imported. Only safetensors weights are read (a ``pytorch_model.bin`` is a pickle).

What it forecasts: for a row at bar ``t`` of a symbol, the model reads that symbol's closes at
bars ``t - context_length + 1 .. t`` (strictly causal), divided by the close at ``t`` (Chronos
rescales its input by the mean absolute value anyway; dividing makes the forecast path start at
1), and forecasts the next ``max(horizons)`` bars as quantiles. For horizon h:

* ``yhat = log(q50_h)``, the median forecast log return over h bars (the log is monotone, so it
  is the median of the log return too);
* ``yhat_std = (log q_hi - log q_lo) / (2 z)``, the std of the normal with the same central
  ``interval`` (``q_lo``, ``q_hi`` its quantiles, ``z`` the standard normal's ``q_hi`` quantile):
  the model's own predictive spread (``predict_dist``), not the volatility scale.

Quantiles are sorted per step before use (a quantile head may cross) and floored at 1e-6 of the
as-of close (a forecast price at or below zero has no log return). The forecasts are in raw
log-return units: under ``label.normalize`` other than ``none`` the targets are not, and this
model is not rescaled to them.

Inputs: the closes come from the prepared bars through the raw-window machinery of
:mod:`alphafactory.raw_windows` (the model's ``inputs`` are the raw resolution
``[1, context_length]``, so the training stages load the bars, drop rows with less history than
``context_length`` and a bundle's request must carry that much history); it reads the closes of
``Windows.raw`` directly, so ``context_length`` is not bounded by ``train.lookback``.

Saving copies the checkpoint into the model's directory (``checkpoint/``, SHA-256 in the
manifest, checked on load), so a saved model or a bundle forecasts without the original path.
There is no ONNX export: a bundle loads it natively (:meth:`Model._export` returns None).

Determinism: Chronos-Bolt is deterministic. Chronos (T5) samples ``num_samples`` paths; each
predict call seeds PyTorch's generator with the model's seed, so the same call gives the same
forecasts, but a row's samples depend on the rows batched with it (row by row and all rows at once
agree only in distribution).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any, Literal

import numpy as np

from alphafactory.config import Interval
from alphafactory.dataset import Windows
from alphafactory.errors import ConfigError
from alphafactory.io import Directory
from alphafactory.models import register
from alphafactory.models.base import XY, Model
from alphafactory.raw_windows import InputsConfig

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"  # the copy of the checkpoint inside a saved model's directory
# The files a checkpoint directory may hold that loading reads; config and weights are required.
REQUIRED = ("config.json", "model.safetensors")
OPTIONAL = ("generation_config.json",)
FLOOR = 1e-6  # lowest forecast price, relative to the as-of close


@dataclass(frozen=True)
class ChronosParams:
    # a local directory with a Chronos or Chronos-Bolt checkpoint (config.json + model.safetensors);
    # null: not set (the model cannot be fitted); never downloaded
    path: str | None = None
    context_length: Annotated[int, Interval(ge=1)] = 512  # closes per forecast (the row's bar and those before it)
    interval: Annotated[float, Interval(gt=0, lt=1)] = 0.8  # central interval whose quantiles give yhat_std
    num_samples: Annotated[int, Interval(ge=1)] = 20  # sample paths per row (Chronos T5 only; Bolt has a quantile head)
    batch_size: Annotated[int, Interval(ge=1)] = 256  # rows per forward pass
    device: Literal["cpu", "cuda", "auto"] = "cpu"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_files(path: str | None, key: str = "neural.chronos.path") -> dict[str, Path]:
    """The files of the checkpoint directory ``path`` that loading reads, by name; ConfigError
    naming the path when it is unset, not a directory or lacks a required file."""
    if path is None:
        raise ConfigError(f"{key}: not set; expected a local directory with a Chronos checkpoint "
                          f"({' + '.join(REQUIRED)}); nothing is downloaded")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{key}: {str(root)!r} is not a directory; expected a local directory with a "
                          f"Chronos checkpoint ({' + '.join(REQUIRED)}); nothing is downloaded")
    missing = [f for f in REQUIRED if not (root / f).is_file()]
    if missing:
        pickle = " (pytorch_model.bin is a pickle and is not read)" if (root / "pytorch_model.bin").exists() else ""
        raise ConfigError(f"{key}: {str(root)!r} has no {missing}; expected a Chronos checkpoint "
                          f"({' + '.join(REQUIRED)}) saved by save_pretrained{pickle}")
    return {f: root / f for f in (*REQUIRED, *OPTIONAL) if (root / f).is_file()}


def load_pipeline(root: Path, device: str, key: str) -> Any:
    """A Chronos or Chronos-Bolt pipeline from the local checkpoint directory ``root``, offline."""
    # before the first import of huggingface_hub (it reads these once); local_files_only below
    # covers a library imported earlier
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from chronos import BaseChronosPipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return BaseChronosPipeline.from_pretrained(str(root), device_map=device, dtype=torch.float32,
                                                   local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:  # the library's errors for a bad checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}: {str(root)!r} is not a loadable Chronos checkpoint: {first}") from e


@register("chronos", family="neural", input_kind="sequence")
class ChronosModel(Model):
    """Zero-shot Chronos forecasts of each row's forward log returns (see the module docstring).
    ``fit`` trains nothing: it loads and fingerprints the checkpoint."""

    Params = ChronosParams
    packages = ("chronos-forecasting", "transformers", "torch")
    distribution = "gaussian"  # yhat_std: the normal with the forecast's central interval
    reads_bars = True  # the training stages load the prepared bars for it (alphafactory.train.wants_bars)

    def __init__(self, params: dict[str, Any] | None = None, *, horizons: tuple[int, ...] = (1,),
                 seed: int = 0, task: str = "regression", lookback: int = 32,
                 trainer: dict[str, Any] | None = None, inputs: Any = None) -> None:
        # trainer and inputs (neural.trainer, neural.inputs) are the family's shared arguments:
        # nothing is trained, and the model reads its own raw closes
        super().__init__(params, horizons=horizons, seed=seed, task=task)
        self.lookback = int(lookback)
        self.inputs = InputsConfig(kind="raw", resolutions=((1, self.params.context_length),))

    def _init_kwargs(self) -> dict[str, Any]:
        return {"lookback": self.lookback}

    # -- zero-shot "fit" ------------------------------------------------------------------
    def _fit(self, train: XY, val: XY) -> None:
        files = checkpoint_files(self.params.path)
        self._use(Path(self.params.path).expanduser(), {f: sha256(p) for f, p in files.items()},
                  "neural.chronos.path")
        self.history_ = {}  # nothing is trained: no curve
        log.info("chronos: zero-shot %s from %s (%s), context %d bars", self.pipeline_kind_, self.params.path,
                 self.files_["model.safetensors"][:12], self.params.context_length)

    def _use(self, root: Path, files: dict[str, str], key: str) -> None:
        self.pipeline_ = load_pipeline(root, self.params.device, key)
        self.root_ = root  # where the checkpoint is read from: params.path, or a saved model's copy
        self.pipeline_kind_ = type(self.pipeline_).__name__
        self.files_ = files
        cfg = self.pipeline_.model.config  # Chronos: a ChronosConfig; Bolt: the T5 config with chronos_config
        trained = getattr(cfg, "prediction_length", None) or (getattr(cfg, "chronos_config", None) or {}).get(
            "prediction_length")
        if trained is not None and max(self.horizons) > trained:
            log.warning("chronos: horizon %d is beyond the %d steps the checkpoint forecasts at once; longer "
                        "forecasts are rolled out and may degrade", max(self.horizons), trained)

    # -- forecasting ------------------------------------------------------------------------
    def _contexts(self, X: Any) -> np.ndarray:
        """(n, context_length) float32 closes up to each row's bar over its close (NaN before a
        symbol's first bar), from the raw source of the windows ``X``."""
        if not isinstance(X, Windows) or X.raw is None:
            raise ValueError(f"{self.name}: expected sequence windows with the prepared bars (raw_windows."
                             f"sequence_input with the bars), got {type(X).__name__}")
        bars, at = X.raw.bars, np.asarray(X.raw.at, np.int64)
        L = self.params.context_length
        back = (L - 1) - np.arange(L)  # (L,) bars before the as-of bar
        idx = at[:, None] - back  # (n, L)
        own = back[None, :] <= bars.pos[at][:, None]  # the bar belongs to the row's symbol
        with np.errstate(invalid="ignore"):
            ctx = np.where(own, bars.close[np.where(own, idx, 0)] / bars.close[at][:, None], np.nan)
        return ctx.astype(np.float32)

    def _quantiles(self, X: Any) -> np.ndarray:
        """(n, H, 3) sorted quantiles (lo, median, hi) of the forecast price over the as-of close."""
        import torch

        ctx = self._contexts(X)
        # rounded: (1 - 0.8) / 2 is 0.09999999999999998, which Bolt interpolates between its
        # trained levels instead of reading its 0.1 head
        lo = round((1.0 - self.params.interval) / 2, 12)
        levels = [lo, 0.5, round(1.0 - lo, 12)]
        steps = max(self.horizons)
        cols = np.asarray(self.horizons) - 1
        kw = {"num_samples": self.params.num_samples} if self.pipeline_kind_ == "ChronosPipeline" else {}
        out = []
        device = self.pipeline_.model.device
        # the generator state is restored afterwards: forecasting leaves the caller's seed alone
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                warnings.catch_warnings():
            torch.manual_seed(self.seed)  # Chronos T5 samples; Bolt draws nothing
            warnings.filterwarnings("ignore", message="We recommend keeping prediction length")  # logged at fit
            for i in range(0, len(ctx), self.params.batch_size):
                q, _ = self.pipeline_.predict_quantiles(torch.from_numpy(ctx[i:i + self.params.batch_size]),
                                                        prediction_length=steps, quantile_levels=levels, **kw)
                out.append(q.float().cpu().numpy()[:, cols, :])  # (b, H, 3)
        q = np.concatenate(out) if out else np.zeros((0, len(cols), 3), np.float32)
        return np.sort(q.astype(np.float64), axis=-1)

    def _predict_dist(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        q = np.log(np.maximum(self._quantiles(X), FLOOR))  # (n, H, 3) log returns
        z = NormalDist().inv_cdf(1.0 - (1.0 - self.params.interval) / 2)
        return q[..., 1], (q[..., 2] - q[..., 0]) / (2 * z)

    def _predict(self, X: Any) -> np.ndarray:
        return self._predict_dist(X)[0]

    # -- persistence ------------------------------------------------------------------------
    def _save_state(self, directory: Path) -> dict[str, Any]:
        (directory / CHECKPOINT).mkdir()
        for name, digest in self.files_.items():
            src = self.root_ / name
            shutil.copyfile(src, directory / CHECKPOINT / name)
            if sha256(directory / CHECKPOINT / name) != digest:
                raise ConfigError(f"neural.chronos.path: {src} changed since the model was fitted; "
                                  "expected the checkpoint it was fitted with")
        return {"checkpoint": CHECKPOINT, "pipeline": self.pipeline_kind_, "sha256": self.files_}

    def _load_state(self, directory: Directory, state: dict[str, Any]) -> None:
        sub = directory.sub(state["checkpoint"])
        paths = {name: sub.path(name) for name in state["sha256"]}
        for name, path in paths.items():
            if sha256(path) != state["sha256"][name]:
                raise directory.error(f"{path}: SHA-256 differs from the manifest's; expected the checkpoint "
                                      "the model was saved with")
        self._use(paths["config.json"].parent, dict(state["sha256"]), f"{directory}/{state['checkpoint']}")
