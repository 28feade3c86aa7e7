"""N-BEATS (Oreshkin, Carpov, Chapados and Bengio 2020, "N-BEATS: Neural basis expansion
analysis for interpretable time series forecasting", ICLR 2020), for windows of many features.

Doubly residual stacking, as in the paper: each block runs a fully connected ReLU stack on its
residual input, emits expansion coefficients theta_b and theta_f, and maps them through a basis
to a backcast (subtracted from the residual the next block sees) and a forecast (added to the
model's output). Stack types, set per stack with ``stacks``:
- ``generic``: learned linear bases (the paper's N-BEATS-G), ``theta`` coefficients each way;
- ``trend``: polynomial bases of degree ``degree`` in t (forecast: t = h / max(h) at the
  horizons; backcast: t = i / L over the window), so the stack's forecast is a polynomial of the
  horizon;
- ``seasonality``: Fourier bases cos(2 pi k t), sin(2 pi k t), k = 1 .. ``harmonics``.
``stacks: [trend, seasonality]`` is the paper's interpretable N-BEATS-I (each stack's forecast is
one named component, :meth:`NBEATSNet.stack_forecasts`); ``[generic]`` is N-BEATS-G.
``share_weights`` shares one block's weights across the blocks of a stack (the paper does so in
its interpretable configuration).

Choice for many features, the same as :mod:`alphafactory.models.nhits`: the F features of each
bar are first projected to ``channels`` values by one linear map shared over time, giving the
residual stream (B, channels, L); backcasts live in that space (per channel, in the stack's
basis). Defaults are small (2 layers of 64 instead of 4 of 256 or 512) to train on a CPU.
Regression only: the forecast basis is a curve over the horizons, not class logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from alphafactory.config import Interval, NonEmpty
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel

STACK_TYPES = ("generic", "trend", "seasonality")


@dataclass(frozen=True)
class NBEATSParams:
    stacks: Annotated[tuple[Literal[STACK_TYPES], ...], NonEmpty()] = ("trend", "seasonality")
    blocks: Annotated[int, Interval(ge=1)] = 3  # blocks per stack
    share_weights: bool = True  # one set of block weights per stack
    # features projected to this many channels per bar; 4 and dropout 0.1: best val loss on the
    # bundled data (0.327; 16 channels without dropout overfit from the first epoch, 0.397)
    channels: Annotated[int, Interval(ge=1)] = 4
    hidden: Annotated[int, Interval(ge=1)] = 64  # width of each block's FC stack
    layers: Annotated[int, Interval(ge=1)] = 2  # FC layers per block
    theta: Annotated[int, Interval(ge=1)] = 8  # generic: coefficients of each learned basis
    degree: Annotated[int, Interval(ge=0)] = 2  # trend: polynomial degree
    harmonics: Annotated[int, Interval(ge=1)] = 2  # seasonality: Fourier harmonics
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1


def trend_basis(t: torch.Tensor, degree: int) -> torch.Tensor:
    """(degree + 1, len(t)): rows t**0 .. t**degree."""
    return torch.stack([t ** i for i in range(degree + 1)])


def seasonality_basis(t: torch.Tensor, harmonics: int) -> torch.Tensor:
    """(2 * harmonics, len(t)): cos(2 pi k t) then sin(2 pi k t), k = 1 .. harmonics."""
    k = torch.arange(1, harmonics + 1, dtype=t.dtype)[:, None]
    return torch.cat([torch.cos(2 * math.pi * k * t), torch.sin(2 * math.pi * k * t)])


class Block(nn.Module):
    def __init__(self, kind: str, channels: int, lookback: int, horizons: tuple[int, ...], p: NBEATSParams) -> None:
        super().__init__()
        self.kind, self.channels, self.lookback = kind, channels, lookback
        layers: list[nn.Module] = []
        for i in range(p.layers):
            layers += [nn.Linear(channels * lookback if i == 0 else p.hidden, p.hidden), nn.ReLU(),
                       nn.Dropout(p.dropout)]
        self.fc = nn.Sequential(*layers)
        if kind == "generic":  # learned bases g_b, g_f (linear maps of theta)
            self.theta_b, self.theta_f = nn.Linear(p.hidden, p.theta), nn.Linear(p.hidden, p.theta)
            self.basis_b = nn.Linear(p.theta, channels * lookback)
            self.basis_f = nn.Linear(p.theta, len(horizons))
            return
        t_f = torch.tensor(horizons, dtype=torch.float32) / max(horizons)
        t_b = torch.arange(lookback, dtype=torch.float32) / lookback
        if kind == "trend":
            bf, bb = trend_basis(t_f, p.degree), trend_basis(t_b, p.degree)
        else:
            bf, bb = seasonality_basis(t_f, p.harmonics), seasonality_basis(t_b, p.harmonics)
        # fixed bases, rebuilt from the horizons and lookback: never loaded
        self.register_buffer("fixed_f", bf, persistent=False)  # (P, H)
        self.register_buffer("fixed_b", bb, persistent=False)  # (P, L)
        self.theta_b = nn.Linear(p.hidden, channels * bb.shape[0], bias=False)  # per channel
        self.theta_f = nn.Linear(p.hidden, bf.shape[0], bias=False)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (B, C, L) residual → (backcast (B, C, L), forecast (B, H))."""
        z = self.fc(r.flatten(1))  # (B, hidden)
        if self.kind == "generic":
            return self.basis_b(self.theta_b(z)).view_as(r), self.basis_f(self.theta_f(z))
        tb = self.theta_b(z).view(-1, self.channels, self.fixed_b.shape[0])  # (B, C, P); -1 keeps the batch free
        return tb @ self.fixed_b, self.theta_f(z) @ self.fixed_f


class NBEATSNet(nn.Module):
    def __init__(self, n_features: int, horizons: tuple[int, ...], p: NBEATSParams, lookback: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, p.channels)
        self.stack_kinds = p.stacks
        blocks = []  # the distinct blocks; ``schedule`` runs them in order, repeating shared ones
        self.schedule: list[tuple[int, int]] = []  # (stack, block index) per step
        for s, kind in enumerate(p.stacks):
            for b in range(p.blocks):
                if b == 0 or not p.share_weights:
                    blocks.append(Block(kind, p.channels, lookback, horizons, p))
                self.schedule.append((s, len(blocks) - 1))
        self.blocks = nn.ModuleList(blocks)

    def stack_forecasts(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, F) → each stack's forecast (S, B, H); their sum is the forecast."""
        r = self.proj(x).transpose(1, 2)  # (B, C, L) residual stream
        out = [0] * len(self.stack_kinds)
        for s, b in self.schedule:
            back, fore = self.blocks[b](r)
            r = r - back
            out[s] = out[s] + fore
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        return self.stack_forecasts(x).sum(0)  # (B, H)


@register("nbeats", family="neural", input_kind="sequence", tasks=("regression",))
class NBEATSModel(NeuralModel):
    Params = NBEATSParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        assert n_outputs == len(self.horizons), (n_outputs, self.horizons)
        return NBEATSNet(n_features, self.horizons, self.params, self.lookback)
