"""Predictive distributions of the PyTorch families that forecast one (``deepar``): the output
layout, the transform to (mean, std) and the masked negative log-likelihoods they train on.

A distributional network outputs (B, 2H): the H means, then H raw scales (any real). The scale
is ``softplus(raw) + MIN_SCALE`` in target units divided by the train std (the trainer's scaled
targets). Heads:

* ``gaussian``: N(mu, scale²); its std is the scale.
* ``student_t``: mu + scale * T_df with ``df`` fixed (> 2) by the family's params; its std is
  ``scale * sqrt(df / (df - 2))``.
* ``quantile`` (``neural.trainer.quantiles``, any network): the network outputs Q quantiles per
  horizon, (B, H * Q) laid out (B, H, Q), trained by the pinball loss. Its mean is the median
  (0.5 must be a level) and its std the Gaussian one with the same outermost quantiles:
  ``|q_hi - q_lo| / (z(tau_hi) - z(tau_lo))``, z the standard normal quantile function.

The same :func:`mean_std` (:func:`quantile_mean_std`) runs in the trainer's forecasts and in the ONNX graph
(:class:`~alphafactory.models.export.PortableNet`), so the export carries the std as a second
output. A forecaster's ``predict_dist`` returns (mean, std); P(return > 0) follows from the
head (:func:`alphafactory.uncertainty.distribution_prob_up`).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch.nn import functional as F

HEADS = ("gaussian", "student_t", "quantile")
MIN_SCALE = 1e-3  # lower bound of the scale, in train-std units of the target: keeps the NLL finite


def split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2H) network output → (mu (B, H), scale (B, H) > 0), both in scaled target units."""
    mu, raw = out.chunk(2, dim=-1)
    return mu, F.softplus(raw) + MIN_SCALE


def std_factor(df: float | None) -> float:
    """std / scale of the head: 1 for a Gaussian, sqrt(df / (df - 2)) for Student-t."""
    return 1.0 if df is None else math.sqrt(df / (df - 2.0))


def mean_std(out: torch.Tensor, df: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2H) network output → (mean, std), each (B, H), in scaled target units."""
    mu, scale = split(out)
    return mu, scale * std_factor(df)


def _masked_mean(loss: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mask = ~torch.isnan(y)
    return torch.where(mask, loss, torch.zeros_like(loss)).sum() / mask.sum().clamp(min=1)


def gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood over the labelled entries of y (B, H); out (B, 2H)."""
    mu, scale = split(out)
    z = (torch.nan_to_num(y) - mu) / scale
    return _masked_mean(0.5 * z * z + torch.log(scale) + 0.5 * math.log(2 * math.pi), y)


def student_t_nll(df: float):
    """The masked Student-t negative log-likelihood with ``df`` degrees of freedom, as a loss
    function of (out (B, 2H), y (B, H))."""
    const = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, scale = split(out)
        z = (torch.nan_to_num(y) - mu) / scale
        return _masked_mean(torch.log(scale) + 0.5 * (df + 1) * torch.log1p(z * z / df) - const, y)

    return nll


def nll_loss(head: str, df: float | None):
    """The training loss of a head (see the module docstring)."""
    if head == "gaussian":
        return gaussian_nll
    assert head == "student_t" and df is not None and df > 2, (head, df)
    return student_t_nll(df)


def quantile_mean_std(out: torch.Tensor, quantiles: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H * Q) quantile outputs (levels ``quantiles``, sorted, 0.5 among them) → (median, std),
    each (B, H), in scaled target units (see the module docstring)."""
    q = out.reshape(out.shape[0], -1, len(quantiles))  # (B, H, Q)
    z = NormalDist().inv_cdf(quantiles[-1]) - NormalDist().inv_cdf(quantiles[0])
    return q[..., quantiles.index(0.5)], (q[..., -1] - q[..., 0]).abs() / z


def pinball_loss(quantiles: tuple[float, ...]):
    """The masked pinball (quantile) loss at the levels ``quantiles``, as a loss function of
    (out (B, H * Q), y (B, H)): per labelled entry, the sum over levels tau of
    ``max(tau * e, (tau - 1) * e)`` with ``e = y - q_tau``, averaged over the labelled entries."""
    taus = torch.tensor(quantiles)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = out.reshape(out.shape[0], -1, len(quantiles))  # (B, H, Q)
        e = torch.nan_to_num(y)[..., None] - q
        t = taus.to(out.device, out.dtype)
        return _masked_mean(torch.maximum(t * e, (t - 1) * e).sum(-1), y)

    return loss
