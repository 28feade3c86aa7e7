"""DeepAR (Salinas, Flunkert, Gasthaus & Januschowski 2020, "DeepAR: Probabilistic forecasting
with autoregressive recurrent networks", International Journal of Forecasting 36(3)).

DeepAR is an autoregressive RNN that outputs the parameters of a predictive distribution at each
step, conditioned on the previous step's value and the covariates, and is trained by maximising
the likelihood. Here:

1. the encoder, an LSTM (``hidden``, ``layers``), runs over the window of bars (B, L, F); the
   features hold the past returns (the target's own lagged values) and the other covariates;
2. the decoder, an LSTM cell started from the encoder's last state, steps once per horizon in
   the order given (1, 5, 20 bars). Its input at step k is the previous step's forecast mean
   (0 at the first step) and a one-hot of horizon k; one linear projection, shared by the
   steps, maps its state to the head's (mu, scale) at horizon k;
3. the head is ``gaussian`` or ``student_t`` (``df`` degrees of freedom), see
   :mod:`alphafactory.models.dist`; the loss is its negative log-likelihood, averaged over the
   labelled horizons.

So ``predict`` is the mean and ``predict_dist`` the (mean, std) of the network's own
distribution: its ``yhat_std`` and ``prob_up`` are its own, not the volatility scale.

Differences from the paper, and why:
- the autoregressive steps are the label horizons, not every future bar: the pipeline forecasts
  h-bar returns at a few horizons, and one step per bar up to 20 would need 20 one-bar labels;
- the decoder is fed its own previous mean in training too, not the true previous value
  (teacher forcing): the shared trainer feeds the network windows only, and a forecast made the
  same way in training and in use has no train/test mismatch (exposure bias);
- forecasts are the distribution's mean and std in closed form, not Monte-Carlo sample paths:
  deterministic (same seed, same forecasts) and exportable to ONNX;
- no per-series scaling by the series' mean: targets are returns, already scaled per horizon by
  their train std (the shared trainer), and the features are z-scored;
- the Student-t ``df`` is a fixed hyperparameter, not learned: the std stays finite and the
  serving graph has two outputs (mean, std) whatever the head.
Regression only: the head is a distribution of the return, not class logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from alphafactory.config import Interval
from alphafactory.models import register
from alphafactory.models.trainer import NeuralModel


@dataclass(frozen=True)
class DeepARParams:
    hidden: Annotated[int, Interval(ge=1)] = 32
    layers: Annotated[int, Interval(ge=1)] = 1  # encoder LSTM layers
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    head: Literal["gaussian", "student_t"] = "gaussian"
    df: Annotated[float, Interval(gt=2)] = 5.0  # student_t degrees of freedom (> 2: finite std)


class DeepARNet(nn.Module):
    def __init__(self, n_features: int, n_horizons: int, p: DeepARParams) -> None:
        super().__init__()
        self.encoder = nn.LSTM(n_features, p.hidden, p.layers, batch_first=True,
                               dropout=p.dropout if p.layers > 1 else 0.0)
        self.decoder = nn.LSTMCell(1 + n_horizons, p.hidden)
        self.drop = nn.Dropout(p.dropout)
        self.proj = nn.Linear(p.hidden, 2)  # (mu, raw scale), shared by the horizon steps
        self.register_buffer("steps", torch.eye(n_horizons), persistent=False)  # one-hot per horizon

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        _, (h, c) = self.encoder(x)
        h, c = h[-1], c[-1]  # (B, hidden): the top layer's last state
        prev = torch.zeros_like(h[:, :1])  # (B, 1): the previous step's mean
        mus, raws = [], []
        for k in range(self.steps.shape[0]):
            step = self.steps[k].expand(h.shape[0], -1).to(h.dtype)  # (B, H)
            h, c = self.decoder(torch.cat([prev, step], dim=1), (h, c))
            out = self.proj(self.drop(h))  # (B, 2)
            mus.append(out[:, :1])
            raws.append(out[:, 1:])
            prev = out[:, :1]
        return torch.cat(mus + raws, dim=1)  # (B, 2H): H means, then H raw scales (models.dist)


@register("deepar", family="neural", input_kind="sequence", tasks=("regression",))
class DeepARModel(NeuralModel):
    Params = DeepARParams

    @property
    def distribution(self) -> str:
        return self.params.head

    @property
    def dist_df(self) -> float | None:
        return self.params.df if self.params.head == "student_t" else None

    def build(self, n_features: int, n_outputs: int) -> nn.Module:
        assert n_outputs == 2 * len(self.horizons), (n_outputs, self.horizons)
        return DeepARNet(n_features, len(self.horizons), self.params)
