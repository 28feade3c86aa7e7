"""LSTM over a window of bars; the last hidden state feeds one linear head for all horizons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from alphafactory.config import Interval
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class LSTMParams:
    hidden: Annotated[int, Interval(ge=1)] = 32
    layers: Annotated[int, Interval(ge=1)] = 1
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1


class LSTMNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: LSTMParams) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, p.hidden, p.layers, batch_first=True,
                            dropout=p.dropout if p.layers > 1 else 0.0)
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(p.hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        out, _ = self.lstm(x)  # (B, L, hidden)
        return self.head(self.drop(out[:, -1]))  # (B, H)


@register("lstm", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class LSTMModel(NeuralModel):
    Params = LSTMParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return LSTMNet(n_features, n_outputs, self.params)
