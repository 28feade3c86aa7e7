"""Temporal Fusion Transformer (Lim, Arık, Loeff and Pfister 2021, "Temporal Fusion Transformers
for interpretable multi-horizon time series forecasting", International Journal of Forecasting
37(4)), for windows of past features only.

The paper's blocks, in its order, on a window (B, L, F) of bars:
1. **variable selection** (its eq. 6-8): each feature's value at a bar is embedded to
   ``d_model`` by its own linear map and processed by its own gated residual network (GRN); a
   GRN on all the embeddings flattened gives softmax weights over the F features; the bar's
   state is the weighted sum (:meth:`TFTNet.variable_weights` returns the weights);
2. **sequence-to-sequence layer**: an LSTM over the selected states, then a gated skip
   connection (GLU, add, LayerNorm) back to its input (eq. 16-17);
3. **interpretable multi-head attention** (eq. 13-15): each head has its own query and key maps
   but all heads share one value map and their attention is averaged, so one (L,) weight
   vector says which bars the forecast used (:meth:`TFTNet.attention`); gated add & norm;
4. **position-wise feed-forward**: a GRN, then a gated skip connection around the whole
   temporal block back to the LSTM output (eq. 21-22); a linear head for all horizons.

Simplified for this pipeline, on purpose:
- no static covariates (the pooled model's rows carry no per-symbol metadata), so there is no
  static covariate encoder, static enrichment or context vector c_s; the GRNs take no context;
- no known future inputs, so no decoder LSTM over future steps: the horizons are the outputs of
  the last bar's state (one value per horizon, or 3 logits per horizon for classification)
  instead of one decoder position per horizon, and point forecasts (MSE) instead of quantiles;
- only the last bar's query is computed: the forecast reads the attention of that one query
  over the window (all keys are at or before it, so the paper's causal mask is implied); the
  states of the earlier bars would only feed forecasts that are not made.
Defaults are small (``d_model`` 8, 2 heads) so it trains on a CPU in about the time of
the other networks; the per-feature GRNs are batched as one einsum over the F features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class TFTParams:
    d_model: Annotated[int, Interval(ge=1)] = 8  # state width (the paper's d_model)
    heads: Annotated[int, Interval(ge=1)] = 2  # interpretable attention heads (shared value map)
    lstm_layers: Annotated[int, Interval(ge=1)] = 1
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1

    def validate(self) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"neural.tft.d_model: got {self.d_model} with heads {self.heads}; "
                              "expected d_model divisible by heads")


class GLU(nn.Module):
    """Gated linear unit (eq. 5): sigmoid(W4 a) * (W5 a)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, 2 * d_out)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.glu(self.lin(a), dim=-1)


class GateAddNorm(nn.Module):
    """LayerNorm(skip + GLU(dropout(x))): the paper's gated skip connection."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.drop, self.glu, self.norm = nn.Dropout(dropout), GLU(d_in, d_out), nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(skip + self.glu(self.drop(x)))


class GRN(nn.Module):
    """Gated residual network (eq. 2-4) without context: LayerNorm(skip(a) + GLU(W1 ELU(W2 a))),
    ``skip`` a linear map when the widths differ."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.fc2, self.fc1 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_hidden)
        self.gate = GateAddNorm(d_hidden, d_out, dropout)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc1(F.elu(self.fc2(a))), self.skip(a))


class FeatureGRNs(nn.Module):
    """One GRN per feature (eq. 7) on (..., F, d) embeddings, weights (F, d, d) batched in einsums;
    LayerNorm with per-feature gain and bias."""

    def __init__(self, n_features: int, d: int, dropout: float) -> None:
        super().__init__()
        def w(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) / shape[-2] ** 0.5)
        self.w2, self.b2 = w(n_features, d, d), nn.Parameter(torch.zeros(n_features, d))
        self.w1, self.b1 = w(n_features, d, d), nn.Parameter(torch.zeros(n_features, d))
        self.wg, self.bg = w(n_features, d, 2 * d), nn.Parameter(torch.zeros(n_features, 2 * d))
        self.gain, self.bias = nn.Parameter(torch.ones(n_features, d)), nn.Parameter(torch.zeros(n_features, d))
        self.drop, self.d = nn.Dropout(dropout), d

    def forward(self, e: torch.Tensor) -> torch.Tensor:  # e: (..., F, d)
        h = F.elu(torch.einsum("...fi,fio->...fo", e, self.w2) + self.b2)
        h = torch.einsum("...fi,fio->...fo", h, self.w1) + self.b1
        g = F.glu(torch.einsum("...fi,fio->...fo", self.drop(h), self.wg) + self.bg, dim=-1)
        return F.layer_norm(e + g, (self.d,)) * self.gain + self.bias


class InterpretableAttention(nn.Module):
    """Multi-head attention whose heads share the value map and are averaged (eq. 14-15), for one
    query (the last bar) over the window."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)  # heads × d_head, one map per head
        self.v = nn.Linear(d, self.d_head)  # shared by every head
        self.out = nn.Linear(self.d_head, d)
        self.drop = nn.Dropout(dropout)

    def weights(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (B, d), keys (B, L, d) → per-head attention (B, heads, L)."""
        B, L, _ = keys.shape
        q = self.q(query).view(B, self.heads, 1, self.d_head)
        k = self.k(keys).view(B, L, self.heads, self.d_head).transpose(1, 2)  # (B, h, L, d_head)
        return torch.softmax((q @ k.transpose(-1, -2)).squeeze(2) / self.d_head ** 0.5, dim=-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, L): heads averaged; a sum and a division, as export._average says why (torch.mean's
        # node would be named "mean", the name of the exported graph's feature-mean initializer)
        a = self.drop(self.weights(query, keys)).sum(1) / self.heads
        return self.out((a.unsqueeze(1) @ self.v(keys)).squeeze(1)), a  # (B, d), (B, L)


class TFTNet(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, p: TFTParams) -> None:
        super().__init__()
        d = p.d_model
        # each feature's scalar → d (the paper's linear transformation of continuous inputs)
        self.embed_w = nn.Parameter(torch.randn(n_features, d))
        self.embed_b = nn.Parameter(torch.zeros(n_features, d))
        # selection weights (eq. 6): the flattened embeddings (F * d) are first mapped to d; the
        # paper's GRN on them directly has an (F * d, F) skip matrix, which with 237 features is
        # 900k weights and nine tenths of the network's compute
        self.select = nn.Sequential(nn.Linear(n_features * d, d), GRN(d, d, n_features, p.dropout))
        self.feature_grns = FeatureGRNs(n_features, d, p.dropout)
        self.lstm = nn.LSTM(d, d, p.lstm_layers, batch_first=True,
                            dropout=p.dropout if p.lstm_layers > 1 else 0.0)
        self.lstm_gate = GateAddNorm(d, d, p.dropout)
        self.attn = InterpretableAttention(d, p.heads, p.dropout)
        self.attn_gate = GateAddNorm(d, d, p.dropout)
        self.ff = GRN(d, d, d, p.dropout)
        self.out_gate = GateAddNorm(d, d, p.dropout)
        self.head = nn.Linear(d, n_outputs)

    def variable_weights(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, F) → softmax weights of the F features at each bar (B, L, F)."""
        return self._select(x)[1]

    def _select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = x.unsqueeze(-1) * self.embed_w + self.embed_b  # (B, L, F, d)
        v = torch.softmax(self.select(e.flatten(-2)), dim=-1)  # (B, L, F)
        return (v.unsqueeze(-1) * self.feature_grns(e)).sum(-2), v  # (B, L, d)

    def _temporal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xi, _ = self._select(x)
        h, _ = self.lstm(xi)  # (B, L, d): causal, state at bar t from bars <= t
        phi = self.lstm_gate(h, xi)  # temporal features
        z, a = self.attn(phi[:, -1], phi)  # the last bar's query over the window
        delta = self.attn_gate(z, phi[:, -1])
        return self.out_gate(self.ff(delta), phi[:, -1]), a  # (B, d), (B, L)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, F) → the heads' mean attention of the forecast over the window's bars (B, L)."""
        return self._temporal(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        return self.head(self._temporal(x)[0])  # (B, H), or (B, 3H) logits


@register("tft", family="neural", input_kind="sequence", tasks=("regression", "classification"))
class TFTModel(NeuralModel):
    Params = TFTParams

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        return TFTNet(n_features, n_outputs, self.params)
