"""iTransformer (Liu, Hu, Zhang, Wu, Wang, Ma and Long 2024, "iTransformer: Inverted
Transformers Are Effective for Time Series Forecasting", ICLR 2024).

The Transformer is inverted: a token is one *variate* (feature) over the whole window, not one
bar over all features. Each feature's lookback series (L,) is embedded to ``d_model`` by one
linear map shared by all features; the encoder's self-attention then runs *across the
features* (F tokens), so it learns how the variates relate, while the feed-forward block and
LayerNorm act on each variate's token on its own, as in the paper (post-norm layers and a final
LayerNorm, as in its code). There is no positional embedding: the order of the bars lives in the
embedding's weights, and the order of the tokens carries no meaning (the encoder is
permutation-equivariant over features).

Choices for this pipeline:
- the paper projects each variate's token to that variate's own future; here the target (a
  forward return) is not one of the variates, so each token is projected to ``head_dim`` values
  and one linear head maps the F x ``head_dim`` values to the horizons (3 logits per horizon
  for classification), the factored head of :mod:`alphafactory.models.patchtst` and for the
  same reason;
- no per-window normalisation of each variate (the paper's, from Non-stationary Transformers):
  the features are already z-scored on train rows, and re-normalising each window would erase
  their levels (a momentum feature's sign is its signal).
Cost is quadratic in the number of features (237 tokens on the bundled data), not in the
lookback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class ITransformerParams:
    d_model: Annotated[int, Interval(ge=1)] = 32
    heads: Annotated[int, Interval(ge=1)] = 2
    layers: Annotated[int, Interval(ge=1)] = 2
    ff: Annotated[int, Interval(ge=1)] = 64  # width of each layer's feed-forward block
    head_dim: Annotated[int, Interval(ge=1)] = 1  # values per variate that the head mixes across variates
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1

    def validate(self) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"neural.itransformer.d_model: got {self.d_model} with heads {self.heads}; "
                              "expected d_model divisible by heads")


class ITransformerNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: ITransformerParams, lookback: int) -> None:
        super().__init__()
        self.lookback = lookback
        self.embed = nn.Linear(lookback, p.d_model)  # a variate's whole window → one token
        self.drop = nn.Dropout(p.dropout)
        layer = nn.TransformerEncoderLayer(p.d_model, p.heads, p.ff, p.dropout, activation="gelu",
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, p.layers, norm=nn.LayerNorm(p.d_model),
                                             enable_nested_tensor=False)
        self.project = nn.Linear(p.d_model, p.head_dim)  # per variate, shared
        self.head = nn.Linear(n_features * p.head_dim, n_outputs)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, F) → encoded variate tokens (B, F, d_model)."""
        if x.shape[1] != self.lookback:
            raise ValueError(f"itransformer: window of {x.shape[1]} bars, expected the lookback {self.lookback}")
        return self.encoder(self.drop(self.embed(x.transpose(1, 2))))  # attention across the F tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        z = self.project(self.tokens(x))  # (B, F, head_dim)
        return self.head(self.drop(z.flatten(1)))  # (B, H), or (B, 3H) logits


@register("itransformer", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class ITransformerModel(NeuralModel):
    Params = ITransformerParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return ITransformerNet(n_features, n_outputs, self.params, self.lookback)
