"""TimesNet (Wu, Hu, Liu, Zhou, Wang & Long 2023, "TimesNet: Temporal 2D-Variation Modeling for
General Time Series Analysis", ICLR 2023).

Each bar's features are embedded to ``d_model`` values (one linear map, plus a learned position
embedding), then ``layers`` TimesBlocks run, each with a residual connection and LayerNorm as in
the paper. A TimesBlock
1. takes the ``top_k`` periods of the window (p = lookback // f for the top_k frequencies f of
   the Fourier amplitude spectrum);
2. for each period, zero-pads the window at its end to a multiple of p and folds it into a 2D
   grid (B, d_model, L/p, p): columns are the phases within a period, rows the successive
   periods, so a 2D kernel sees intra-period and inter-period variation at once;
3. runs an Inception block (2D convolutions of kernels 1, 3, ..., 2*kernels-1, averaged), GELU,
   and a second Inception block back to ``d_model`` channels, then unfolds to (B, L, d_model);
4. sums the top_k results weighted by the softmax of each window's own amplitude at those
   frequencies.
The head, as in the paper's classification head: GELU, dropout, flatten the (L, d_model)
states and one linear map to the outputs (H forecasts, or 3 logits per horizon).

Differences from the paper, and why:
- the periods are chosen once, at fit, from the amplitude spectrum of the train windows (the
  mean over windows and features of the z-scored inputs), and kept (saved with the model). The
  paper picks them per mini-batch from the batch-averaged spectrum of the block's input, which
  makes a window's forecast depend on the other windows of its batch (the conformance suite's
  row-by-row check would fail) and the graph's reshapes depend on the data (no ONNX export);
- the amplitudes that weight the periods are a discrete Fourier transform at the chosen
  frequencies only (a fixed cos/sin basis, a matrix product), not a full FFT: the same numbers,
  and an ONNX graph without DFT ops;
- defaults are small (``d_model`` 16, ``ff`` 32, 2 blocks, 3 kernels, top 3 periods) so it
  trains on CPU; the paper's are 32-64 wide with 6 kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from alphafactory.config import Interval
from alphafactory.dataset import Windows
from alphafactory.io import Directory
from alphafactory.models import register
from alphafactory.models.base import XY
from alphafactory.models.trainer import NeuralModel

SPECTRUM_ROWS = 4096  # train windows (evenly spaced) whose spectrum chooses the periods


@dataclass(frozen=True)
class TimesNetParams:
    d_model: Annotated[int, Interval(ge=1)] = 16
    ff: Annotated[int, Interval(ge=1)] = 32  # channels between the two Inception blocks
    layers: Annotated[int, Interval(ge=1)] = 2  # TimesBlocks
    top_k: Annotated[int, Interval(ge=1)] = 3  # periods per block
    kernels: Annotated[int, Interval(ge=1)] = 3  # 2D kernels 1, 3, ..., 2 * kernels - 1 per Inception block
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1


def top_periods(windows: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """(frequencies, periods) of the ``k`` largest amplitudes of the mean spectrum of ``windows``
    (n, L, F): frequency f in 1 .. L // 2 (the constant term excluded), period L // f; fewer
    than k when the window has fewer frequencies. Largest first; ties to the lower frequency."""
    L = windows.shape[1]
    amp = np.abs(np.fft.rfft(windows.astype(np.float64), axis=1)).mean(axis=(0, 2))  # (L // 2 + 1,)
    amp[0] = -np.inf  # the mean level is not a period
    freqs = [int(f) for f in np.argsort(-amp[:L // 2 + 1], kind="stable")[:min(k, L // 2)]]
    return freqs, [max(1, L // f) for f in freqs]


class Inception2d(nn.Module):
    """The paper's Inception block: 2D convolutions of kernel 1, 3, ..., 2n-1 ('same' padding), averaged."""

    def __init__(self, c_in: int, c_out: int, n: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 2 * i + 1, padding=i) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, rows, cols)
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out / len(self.convs)


class TimesBlock(nn.Module):
    def __init__(self, lookback: int, freqs: list[int], periods: list[int], p: TimesNetParams) -> None:
        super().__init__()
        self.lookback, self.periods = lookback, periods
        self.conv = nn.Sequential(Inception2d(p.d_model, p.ff, p.kernels), nn.GELU(),
                                  Inception2d(p.ff, p.d_model, p.kernels))
        t = torch.arange(lookback, dtype=torch.float64)[:, None] * torch.tensor(freqs, dtype=torch.float64)
        angle = 2 * math.pi * t / lookback  # (L, k): the DFT at the chosen frequencies
        self.register_buffer("cos", torch.cos(angle).float(), persistent=False)
        self.register_buffer("sin", torch.sin(angle).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, d)
        B, L, d = x.shape
        re, im = torch.einsum("bld,lk->bkd", x, self.cos), torch.einsum("bld,lk->bkd", x, self.sin)
        # (B, k): this window's own amplitudes, averaged over channels (a sum and a division, not
        # .mean: the exporter would name that node "mean", the name of PortableNet's feature means)
        weight = torch.softmax(torch.sqrt(re * re + im * im + 1e-12).sum(-1) / d, dim=1)
        out = torch.zeros_like(x)
        for i, period in enumerate(self.periods):
            rows = math.ceil(L / period)
            z = F.pad(x, (0, 0, 0, rows * period - L))  # (B, rows * period, d): zeros at the end
            z = z.reshape(B, rows, period, d).permute(0, 3, 1, 2)  # (B, d, rows, period)
            z = self.conv(z).permute(0, 2, 3, 1).reshape(B, rows * period, d)[:, :L]  # (B, L, d)
            out = out + z * weight[:, i, None, None]
        return out + x  # residual


class TimesNetNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: TimesNetParams, lookback: int,
                 freqs: list[int], periods: list[int]) -> None:
        super().__init__()
        self.lookback = lookback
        self.embed = nn.Linear(n_features, p.d_model)
        self.pos = nn.Parameter(torch.randn(lookback, p.d_model) * 0.02)
        self.blocks = nn.ModuleList(TimesBlock(lookback, freqs, periods, p) for _ in range(p.layers))
        self.norm = nn.LayerNorm(p.d_model)
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(lookback * p.d_model, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        if x.shape[1] != self.lookback:
            raise ValueError(f"timesnet: window of {x.shape[1]} bars, expected the lookback {self.lookback}")
        z = self.drop(self.embed(x) + self.pos)  # (B, L, d)
        for block in self.blocks:
            z = self.norm(block(z))  # the paper shares one LayerNorm over the blocks
        return self.head(self.drop(F.gelu(z)).flatten(1))  # (B, L * d) → (B, n_outputs)


@register("timesnet", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class TimesNetModel(NeuralModel):
    Params = TimesNetParams

    def _fit(self, train: XY, val: XY) -> None:
        # The periods, from the spectrum of (at most SPECTRUM_ROWS evenly spaced) train windows,
        # z-scored with the train rows' statistics as the network sees them.
        n = len(train.X)
        take = np.unique(np.linspace(0, n - 1, min(n, SPECTRUM_ROWS)).astype(np.int64))
        self._fit_scaler(train.X)  # fitted again, identically, by NeuralModel._fit
        sample = train.X.take(take) if isinstance(train.X, Windows) else np.asarray(train.X)[take]
        self.freqs_, self.periods_ = top_periods(self._scale(np.asarray(sample, np.float32)), self.params.top_k)
        super()._fit(train, val)

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return TimesNetNet(n_features, n_outputs, self.params, self.lookback, self.freqs_, self.periods_)

    def _save_state(self, directory: Path) -> dict[str, Any]:
        return {**super()._save_state(directory), "freqs": self.freqs_, "periods": self.periods_}

    def _load_state(self, directory: Directory, state: dict[str, Any]) -> None:
        self.freqs_, self.periods_ = [int(f) for f in state["freqs"]], [int(p) for p in state["periods"]]
        super()._load_state(directory, state)
