"""Temporal convolutional network (Bai et al. 2018): dilated causal convolutions with residual
blocks; the output at the last time step feeds one linear head for all horizons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F

from alphafactory.config import Interval
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class TCNParams:
    channels: Annotated[int, Interval(ge=1)] = 32
    levels: Annotated[int, Interval(ge=1)] = 3  # dilations 1, 2, 4, ...
    kernel_size: Annotated[int, Interval(ge=1)] = 3
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1


class CausalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (k - 1) * dilation  # left padding only: no look into later steps
        self.conv1 = nn.Conv1d(c_in, c_out, k, dilation=dilation)
        self.conv2 = nn.Conv1d(c_out, c_out, k, dilation=dilation)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        y = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        y = self.drop(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(y + self.skip(x))


class TCNNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: TCNParams) -> None:
        super().__init__()
        blocks, c_in = [], n_features
        for i in range(p.levels):
            blocks.append(CausalBlock(c_in, p.channels, p.kernel_size, 2**i, p.dropout))
            c_in = p.channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(p.channels, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        y = self.blocks(x.transpose(1, 2))  # (B, C, L)
        return self.head(y[:, :, -1])  # (B, H)


@register("tcn", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class TCNModel(NeuralModel):
    Params = TCNParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return TCNNet(n_features, n_outputs, self.params)
