"""Forecast uncertainty for any model: a residual scale and P(up), both calibrated on val.

Every model gets the same treatment, so uncertainty never depends on a family's internals:

* ``yhat_std = a_h * vol_t * sqrt(h)``: the trailing 1-bar volatility known at t (the label
  stage's ``vol``) times a per-horizon factor ``a_h`` fit on validation residuals, so interval
  widths follow the volatility regime. ``a_h = sqrt(mean(((y - yhat) / (vol * sqrt(h)))^2))``.
* ``prob_up = sigmoid(alpha_h * z + beta_h)`` with ``z = yhat / yhat_std``: Platt scaling of the
  Gaussian score, fit by logistic regression of ``1[y > 0]`` on ``z`` over the same val rows.

Val rows are out of sample for every base model (they only early-stopped on them); the stacking
ensemble is calibrated on its out-of-fold val forecasts (see ``blend``).

A model that forecasts its own distribution (a ``Forecaster`` with a ``distribution``, e.g.
``deepar``, or any network under ``neural.trainer.quantiles``) reports that instead: ``yhat_std`` is its predictive std and ``prob_up`` its
P(return > 0) under its head (:func:`distribution_prob_up`), nothing calibrated on val. The
calibration above is still fit and saved for it, so the two can be compared.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIN_ROWS = 30


@dataclass(frozen=True)
class Calibration:
    horizons: tuple[int, ...]
    scale: tuple[float, ...]  # a_h per horizon
    alpha: tuple[float, ...]  # Platt slope per horizon
    beta: tuple[float, ...]  # Platt intercept per horizon

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**{k: tuple(d[k]) for k in ("horizons", "scale", "alpha", "beta")})


def _platt(z: np.ndarray, up: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood logistic fit of up ~ sigmoid(a z + b) (tiny L2 for stability)."""
    from scipy.optimize import minimize  # fitting only: loading a bundle does not import scipy

    def nll(p: np.ndarray) -> tuple[float, np.ndarray]:
        s = p[0] * z + p[1]
        # log(1 + e^s) - up * s, stably
        loss = np.logaddexp(0.0, s) - up * s
        g = 1.0 / (1.0 + np.exp(-s)) - up
        reg = 1e-4 * (p ** 2).sum()
        return float(loss.mean() + reg), np.array([(g * z).mean(), g.mean()]) + 2e-4 * p

    res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def fit_calibration(yhat: np.ndarray, y: np.ndarray, vol: np.ndarray,
                    horizons: tuple[int, ...]) -> Calibration:
    """yhat, y: (n, H) val forecasts and targets (NaN where unlabelled); vol: (n,) trailing
    1-bar volatility at each row's time."""
    scale, alpha, beta = [], [], []
    for j, h in enumerate(horizons):
        base = vol * np.sqrt(h)
        ok = ~np.isnan(y[:, j]) & ~np.isnan(yhat[:, j]) & np.isfinite(base) & (base > 0)
        if ok.sum() < MIN_ROWS:
            raise ValueError(f"calibration: {ok.sum()} usable val rows at horizon {h}; need >= {MIN_ROWS}")
        r = (y[ok, j] - yhat[ok, j]) / base[ok]
        a = float(np.sqrt(np.mean(r ** 2)))
        z = yhat[ok, j] / (a * base[ok])
        al, be = _platt(z, (y[ok, j] > 0).astype(np.float64))
        scale.append(a), alpha.append(al), beta.append(be)
    return Calibration(tuple(horizons), tuple(scale), tuple(alpha), tuple(beta))


def apply_calibration(cal: Calibration, yhat: np.ndarray, vol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(yhat_std, prob_up), each (n, H), for forecasts yhat (n, H) and volatility vol (n,).
    Rows whose volatility is unknown get NaN."""
    h = np.asarray(cal.horizons, np.float64)
    std = np.asarray(cal.scale)[None, :] * vol[:, None] * np.sqrt(h)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = yhat / std
    s = np.asarray(cal.alpha)[None, :] * z + np.asarray(cal.beta)[None, :]
    prob = 1.0 / (1.0 + np.exp(-s))
    return std, prob


def distribution_prob_up(mean: np.ndarray, std: np.ndarray, df: float | None = None) -> np.ndarray:
    """P(return > 0) under a predictive distribution of mean ``mean`` and std ``std`` (same
    shapes): Gaussian (``df`` None; a quantile network's: through its median and the std of its
    outermost quantiles), or Student-t with ``df`` > 2 degrees of freedom (its scale is
    ``std * sqrt((df - 2) / df)``). A zero std gives 1 above 0, 0 below, 0.5 at 0."""
    from scipy import special  # only for a distributional model: loading a bundle does not import scipy

    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if df is None:
            z = mean / std
            return np.where(std > 0, special.ndtr(z), np.where(mean > 0, 1.0, np.where(mean < 0, 0.0, 0.5)))
        t = mean / (std * np.sqrt((df - 2.0) / df))
        return np.where(std > 0, special.stdtr(df, t), np.where(mean > 0, 1.0, np.where(mean < 0, 0.0, 0.5)))
