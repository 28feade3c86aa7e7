"""N-HiTS (Challu et al. 2023), simplified for windows of many features.

Choice for many features: the F features of each bar are first *projected* to ``channels``
values by one linear map shared over time, giving a residual stream (B, channels, L). Flattening
the raw (L, F) window instead (32 x 237 = 7,584 values) would make every block's input and
backcast thousands wide; the projection keeps blocks small and gives the backcast a compact
space to explain.

Stacks run from coarse to fine. Every block of stack s
1. max-pools its residual input over time with kernel ``pool_sizes[s]`` (multi-rate sampling);
2. runs an MLP on the flattened pooled input;
3. emits a backcast (channels, L) that is subtracted from the residual (residual backcast), and
   forecast coefficients at ``ceil(max(h) / downsample[s])`` knots spread evenly over the
   horizons' span [min(h), max(h)] bars; the forecast at horizon h is their linear
   interpolation at h (hierarchical interpolation: coarse stacks give a smooth term structure,
   fine ones the detail).
The forecast is the sum over all blocks: (B, H), one value per horizon.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F

from alphafactory.config import Interval, NonEmpty
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class NHITSParams:
    channels: Annotated[int, Interval(ge=1)] = 16  # features projected to this many channels per bar
    # max-pool kernel (bars) per stack, coarse to fine
    pool_sizes: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], NonEmpty()] = (8, 4, 1)
    # forecast knots every this many bars, per stack
    downsample: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], NonEmpty()] = (16, 4, 1)
    blocks: Annotated[int, Interval(ge=1)] = 1  # blocks per stack
    hidden: Annotated[int, Interval(ge=1)] = 64  # width of each block's MLP
    layers: Annotated[int, Interval(ge=1)] = 2  # hidden layers of each block's MLP
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1

    def validate(self) -> None:
        if len(self.pool_sizes) != len(self.downsample):
            raise ConfigError(f"neural.nhits: pool_sizes {list(self.pool_sizes)} and downsample "
                              f"{list(self.downsample)} have different lengths; expected one of each per stack")


def interpolation_basis(horizons: tuple[int, ...], n_knots: int) -> torch.Tensor:
    """(n_knots, H) linear-interpolation weights from knots evenly spread over
    [min(h), max(h)] bars to the horizons; one knot gives the same value at every horizon."""
    h = torch.tensor(sorted(horizons), dtype=torch.float64)
    if n_knots == 1 or h[-1] == h[0]:
        return torch.ones(n_knots, len(h), dtype=torch.float32) / n_knots
    knots = torch.linspace(float(h[0]), float(h[-1]), n_knots, dtype=torch.float64)
    spacing = knots[1] - knots[0]
    hat = (1 - (h[None, :] - knots[:, None]).abs() / spacing).clamp(min=0)  # hat functions
    order = torch.argsort(torch.argsort(torch.tensor(horizons)))  # back to the given horizon order
    return hat[:, order].float()


class Block(nn.Module):
    def __init__(self, channels: int, lookback: int, pool: int, basis: torch.Tensor, p: NHITSParams) -> None:
        super().__init__()
        self.pool = min(pool, lookback)  # a kernel longer than the window pools all of it
        n_in = channels * math.ceil(lookback / self.pool)
        layers: list[nn.Module] = []
        for i in range(p.layers):
            layers += [nn.Linear(n_in if i == 0 else p.hidden, p.hidden), nn.ReLU(), nn.Dropout(p.dropout)]
        self.mlp = nn.Sequential(*layers)
        self.backcast = nn.Linear(p.hidden, channels * lookback)
        self.forecast = nn.Linear(p.hidden, basis.shape[0])
        self.register_buffer("basis", basis, persistent=False)  # rebuilt from the horizons

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (B, C, L) residual → (backcast (B, C, L), forecast (B, H))."""
        pooled = F.max_pool1d(r, self.pool, self.pool, ceil_mode=True) if self.pool > 1 else r
        z = self.mlp(pooled.flatten(1))  # (B, hidden)
        return self.backcast(z).view_as(r), self.forecast(z) @ self.basis.to(z.dtype)


class NHITSNet(nn.Module):
    def __init__(self, n_features: int, horizons: tuple[int, ...], p: NHITSParams, lookback: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, p.channels)
        blocks = []
        for pool, down in zip(p.pool_sizes, p.downsample, strict=True):
            basis = interpolation_basis(horizons, max(1, math.ceil(max(horizons) / down)))
            blocks += [Block(p.channels, lookback, pool, basis, p) for _ in range(p.blocks)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        r = self.proj(x).transpose(1, 2)  # (B, C, L) residual stream
        out = 0
        for block in self.blocks:
            back, fore = block(r)
            r = r - back
            out = out + fore
        return out  # (B, H)


# Regression only: its stacks forecast a curve interpolated across the horizons.
@register("nhits", family="neural", input_kind="sequence", tasks=("regression",))
class NHITSModel(NeuralModel):
    Params = NHITSParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        assert n_outputs == len(self.horizons), (n_outputs, self.horizons)
        return NHITSNet(n_features, self.horizons, self.params, self.lookback)
