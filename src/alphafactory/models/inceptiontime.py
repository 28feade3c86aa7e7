"""InceptionTime (Ismail Fawaz, Lucas, Forestier, Pelletier, Schmidt, Weber, Webb, Idoumghar,
Muller & Petitjean 2020, "InceptionTime: Finding AlexNet for time series classification", Data
Mining and Knowledge Discovery 34).

A stack of ``depth`` Inception modules over the window (channels = features, time = bars), with
a residual connection every 3 modules, then global average pooling over time and one linear
layer to the outputs (H forecasts, or 3 logits per horizon), as in the paper. Each module:
1. a bottleneck 1x1 convolution to ``bottleneck`` channels (when its input is wider);
2. ``len(kernel_sizes)`` parallel convolutions of the bottleneck with those kernel sizes
   ('same' padding over the window), and a max-pool (3, stride 1) of the module's input followed
   by a 1x1 convolution, each ``filters`` channels;
3. their concatenation ((len(kernel_sizes) + 1) * filters channels), BatchNorm and ReLU.
A residual connection adds a 1x1 convolution + BatchNorm of the input of 3 modules back to
their output, then ReLU. ``depth`` not a multiple of 3: the last modules have no shortcut.

Differences from the paper, and why:
- kernel sizes (9, 19, 39) instead of (10, 20, 40): odd kernels pad the window symmetrically;
  the longest still covers a window of the default 32 bars from any bar;
- smaller defaults (``filters`` 16, ``bottleneck`` 16, ``depth`` 3) than the paper's (32, 32,
  6), so it trains on CPU; one network, not the paper's ensemble of five (``neural.trainer.seeds``
  gives that ensemble: 5 seeds averaged);
- the convolutions see the whole window both ways ('same' padding, as the paper): a bar's state
  reads later bars *of the same window*, which are all at or before the forecast bar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F

from alphafactory.config import Interval, NonEmpty
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class InceptionTimeParams:
    filters: Annotated[int, Interval(ge=1)] = 16  # channels per branch
    bottleneck: Annotated[int, Interval(ge=1)] = 16  # 1x1 bottleneck width
    kernel_sizes: Annotated[tuple[Annotated[int, Interval(ge=1)], ...], NonEmpty()] = (9, 19, 39)
    depth: Annotated[int, Interval(ge=1)] = 3  # Inception modules; a residual connection every 3
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1  # before the head (not in the paper)


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, p: InceptionTimeParams) -> None:
        super().__init__()
        self.bottleneck = nn.Conv1d(c_in, p.bottleneck, 1, bias=False) if c_in > p.bottleneck else nn.Identity()
        width = p.bottleneck if c_in > p.bottleneck else c_in
        self.convs = nn.ModuleList(nn.Conv1d(width, p.filters, k, padding=k // 2, bias=False)
                                   for k in p.kernel_sizes)
        self.pool_conv = nn.Conv1d(c_in, p.filters, 1, bias=False)
        self.bn = nn.BatchNorm1d(p.filters * (len(p.kernel_sizes) + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        z = self.bottleneck(x)
        pooled = self.pool_conv(F.max_pool1d(x, 3, stride=1, padding=1))
        return F.relu(self.bn(torch.cat([conv(z) for conv in self.convs] + [pooled], dim=1)))


class Shortcut(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(y + self.bn(self.conv(x)))


class InceptionTimeNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: InceptionTimeParams) -> None:
        super().__init__()
        width = p.filters * (len(p.kernel_sizes) + 1)
        self.inception = nn.ModuleList(InceptionModule(n_features if i == 0 else width, p) for i in range(p.depth))
        self.shortcuts = nn.ModuleList(Shortcut(n_features if i == 0 else width, width)
                                       for i in range(p.depth // 3))
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        z = x.transpose(1, 2)  # (B, F, L)
        res = z
        for i, module in enumerate(self.inception):
            z = module(z)
            if i % 3 == 2:  # every third module: add the shortcut from 3 modules back
                z = self.shortcuts[i // 3](res, z)
                res = z
        # global average pooling over time, (B, C) → (B, n_outputs); a sum and a division, not
        # .mean: the exporter would name that node "mean", the name of PortableNet's feature means
        return self.head(self.drop(z.sum(-1) / z.shape[-1]))


@register("inceptiontime", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class InceptionTimeModel(NeuralModel):
    Params = InceptionTimeParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return InceptionTimeNet(n_features, n_outputs, self.params)
