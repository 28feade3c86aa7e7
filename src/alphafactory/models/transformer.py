"""Causal Transformer encoder over a window of bars.

Each bar's features are projected to ``d_model``, a positional encoding (learned or sinusoidal)
is added, and a pre-norm ``nn.TransformerEncoder`` runs with a causal mask, so the state at step
t attends only to steps <= t. The state at the last step (the bar being forecast) feeds one
linear head for all horizons.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class TransformerParams:
    d_model: Annotated[int, Interval(ge=1)] = 32
    heads: Annotated[int, Interval(ge=1)] = 2
    layers: Annotated[int, Interval(ge=1)] = 2
    ff: Annotated[int, Interval(ge=1)] = 64  # width of each layer's feed-forward block
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    pos_encoding: Literal["sinusoidal", "learned"] = "sinusoidal"

    def validate(self) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"neural.transformer.d_model: got {self.d_model} with heads {self.heads}; "
                              "expected d_model divisible by heads")


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) fixed encoding of Vaswani et al. 2017 (sin on even, cos on odd dims)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(length, length) bool mask, True where attention is forbidden (key after query)."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), diagonal=1)


class TransformerNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: TransformerParams, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.proj = nn.Linear(n_features, p.d_model)
        if p.pos_encoding == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, p.d_model) * 0.02)
        else:  # a buffer outside the state dict: it is rebuilt, never loaded
            self.register_buffer("pos", sinusoidal_encoding(max_len, p.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(p.d_model, p.heads, p.ff, p.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # Nested tensors only serve padding masks, which windows never need.
        self.encoder = nn.TransformerEncoder(layer, p.layers, norm=nn.LayerNorm(p.d_model),
                                             enable_nested_tensor=False)
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(p.d_model, n_outputs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, F) → (B, L, d_model); the state at step t depends on steps <= t only."""
        L = x.shape[1]
        if L > self.max_len:
            raise ValueError(f"transformer: window of {L} bars, longer than the lookback {self.max_len} "
                             "it was built for")
        h = self.drop(self.proj(x) + self.pos[:L])  # (B, L, d)
        return self.encoder(h, mask=causal_mask(L, x.device), is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        return self.head(self.encode(x)[:, -1])  # (B, H)


@register("transformer", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class TransformerModel(NeuralModel):
    Params = TransformerParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return TransformerNet(n_features, n_outputs, self.params, self.lookback)
