"""Multi-layer perceptron on the features of one bar (tabular input, no window): a stack of
Linear + GELU + Dropout layers and one linear head for all horizons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from alphafactory.config import Interval
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class MLPParams:
    hidden: Annotated[int, Interval(ge=1)] = 64  # width of every hidden layer
    layers: Annotated[int, Interval(ge=1)] = 2  # number of hidden layers
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1


class MLPNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: MLPParams) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(p.layers):
            layers += [nn.Linear(width, p.hidden), nn.GELU(), nn.Dropout(p.dropout)]
            width = p.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, F)
        return self.head(self.body(x))  # (B, H)


@register("mlp", family="neural", input_kind="tabular", tasks=("regression", "classification"))
class MLPModel(NeuralModel):
    Params = MLPParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return MLPNet(n_features, n_outputs, self.params)
