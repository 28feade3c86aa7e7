"""Synthetic OHLCV panel with a planted, causal signal and its exact oracle forecast.

Model (symbol i, bar t = 0..T-1, all symbols on the same calendar)
-------------------------------------------------------------------
Let ``p = t mod B`` be the bar's position in its session (B = 1 for daily, 7 for hourly) and
``d_p`` a deterministic intraday variance profile with mean 1 over a session (d = 1 daily).

* Shocks: ``z_{i,t} = rho_i m_t + sqrt(1 - rho_i^2) u_{i,t}``, with the market shock ``m_t`` and
  idiosyncratic shocks ``u_{i,t}`` i.i.d. Student-t (``T_DOF`` degrees of freedom) scaled to unit
  variance; so ``z`` has unit variance and pairwise correlation ``rho_i rho_j``.
* Volatility, GARCH(1,1) on the de-seasonalised residual:
  ``sigma^2_{i,t+1} = omega_i + alpha sigma^2_{i,t} z^2_{i,t} + gamma sigma^2_{i,t}``,
  ``sigma_{i,1} = sigmabar_i`` and ``omega_i = sigmabar_i^2 (1 - alpha - gamma)``, so that
  ``E[sigma^2_{i,t}] = sigmabar_i^2`` at every t (the recursion starts at its fixed point).
* Signal, known at the close of bar t (``z_{i,0} := 0``, see "bar 0" below)::

      a_{i,t} = -(z_{i,t} + ... + z_{i,t-4}) / sqrt(5)         short-term reversal, unit variance
      s_{i,t} = w_r a_{i,t} + w_v v_{i,t}                         w_r^2 + w_v^2 = 1, s_{i,0} = 0

  where ``v_{i,t}`` (i.i.d. N(0, 1)) is the bar's abnormal-volume shock (below). ``Var(s) = 1``
  and ``s_{i,t}`` is uncorrelated with every later shock.
* 1-bar log return ``r_{i,t} = log(close_t / close_{t-1}) = mu_{i,t} + sqrt(d_p) sigma_{i,t} z_{i,t}``
  with the planted expected return ``mu_{i,t+1} = k sigmabar_i sqrt(d_{p(t+1)}) s_{i,t}`` and
  ``k = S / sqrt(1 - S^2)``, ``S = signal_strength``. Then, pooled over symbols and bars,
  ``Corr(mu_{t+1}, r_{t+1}) = k / sqrt(1 + k^2) = S`` exactly in population (the signal is scaled
  by the *unconditional* volatility so the GARCH variance does not enter the ratio). S = 0 gives
  pure noise returns and an oracle of exactly 0. Cross-sectional (per-timestamp) ICs are somewhat
  higher than S because demeaning across symbols removes part of the market shock.
* Bars: ``open = close_{t-1} exp(g)`` with a gap ``g = q_p r + sqrt(q_p (1 - q_p)) sqrt(d_p) sigma
  zeta`` (q = 0.25 daily; 0.5 on the first hourly bar of a session, which holds the overnight
  move, 0.02 on the others); ``high = max(open, close) exp(0.5 sqrt(d_p) sigma |xi_1|)`` and
  ``low = min(open, close) exp(-0.5 sqrt(d_p) sigma |xi_2|)``; log volume
  ``= log V_i + l_p + 1.0 log(sigma_t / sigmabar_i) + 0.4 |z_t| + 0.35 v_t`` (U-shaped intraday
  profile ``l_p``; volume is log-normal and rises with volatility and with |return|).
* Bar 0 has no previous close in the data, so its shock cannot be recovered from bars: it is left
  out of the signal and of the GARCH recursion (``z_{i,0} := 0`` there), ``s_{i,0} = 0`` and
  ``mu_{i,1} = 0``.

Every quantity in ``s_{i,t}`` is a function of bars 0..t only, given the model's constants
(which depend on the seed and the number of symbols, not on the data): ``z`` from the returns,
``sigma`` from the GARCH recursion on past ``z``, ``v`` from the log volume. :func:`oracle_from_bars`
recomputes the oracle from the bars alone, which is how the tests check causality.

Oracle
------
For horizon h, ``yhat_{i,t}(h) = E[log(close_{t+h} / close_t) | bars up to t]
= k sigmabar_i sum_{j=1..h} sqrt(d_{p(t+j)}) E_t[s_{i,t+j-1}]`` exactly, with ``E_t[s_{t}] = s_t``,
``E_t[s_{t+m}] = -w_r (z_t + ... + z_{t-4+m}) / sqrt(5)`` for 1 <= m <= 4 (the reversal window
still holds m..4 known shocks; future shocks and volume shocks have mean 0) and 0 for m >= 5.
The oracle is given for every bar, including the last h bars whose forward return is not observed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from alphafactory.config import Interval, check
from alphafactory.errors import ConfigError

FREQ_BARS_PER_SESSION: dict[str, int] = {"1D": 1, "1h": 7}
# Hourly bars are labelled by their close time (the moment the bar is known): the first bar
# covers 09:30-10:00, the others a full hour, the last one closes at 16:00.
HOURLY_BAR_CLOSES: tuple[str, ...] = ("10:00", "11:00", "12:00", "13:00", "14:00", "15:00", "16:00")

T_DOF = 6.0  # Student-t degrees of freedom: fat tails with finite fourth moment
GARCH_ALPHA = 0.06
GARCH_GAMMA = 0.92  # persistence alpha + gamma = 0.98; (a+g)^2 + (kurt(z)-1) a^2 < 1 (finite kurtosis)
REVERSAL_WINDOW = 5
W_REVERSAL = math.sqrt(0.75)  # share of signal variance from short-term reversal
W_VOLUME = math.sqrt(0.25)  # share from the abnormal-volume shock
LOGVOL_ON_SIGMA = 1.0
LOGVOL_ON_ABSZ = 0.4
LOGVOL_SHOCK_SD = 0.35
RANGE_SCALE = 0.5
DAILY_VOL_RANGE = (0.01, 0.03)  # unconditional daily volatility of a symbol
RHO_RANGE = (0.3, 0.7)  # loading of a symbol's shock on the market shock

# Per position in the session: variance profile (normalised to mean 1 below), log-volume
# profile, share of the bar's return that happens in the opening gap.
_VAR_PROFILE = {"1D": (1.0,), "1h": (3.0, 1.2, 0.9, 0.8, 0.8, 0.9, 1.4)}
_LOGVOL_PROFILE = {"1D": (0.0,), "1h": (0.6, 0.1, -0.15, -0.25, -0.2, 0.0, 0.4)}
_GAP_SHARE = {"1D": (0.25,), "1h": (0.5, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02)}


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic panel: ``symbols`` names SYN000.., ``bars`` bars each, frequency ``freq``
    ("1D": business days; "1h": 7 hourly bars per weekday session), planted signal with
    population 1-bar IC ``signal_strength`` (0 = pure noise), first session ``start``."""

    symbols: Annotated[int, Interval(ge=1, le=100_000)] = 20
    bars: Annotated[int, Interval(ge=2)] = 2000
    freq: Literal[tuple(FREQ_BARS_PER_SESSION)] = "1D"
    seed: int = 7
    signal_strength: Annotated[float, Interval(ge=0, lt=1)] = 0.05  # a correlation
    start: str = "2015-01-02"

    def validate(self) -> None:
        try:
            pd.Timestamp(self.start)
        except ValueError as e:
            raise ConfigError(
                f"data.synthetic.start: cannot parse {self.start!r} as a date ({e})"
            ) from e


@dataclass(frozen=True)
class _Params:
    """Per-symbol constants, each (n_symbols,): per-bar unconditional sd of the de-seasonalised
    residual, market loading, log base volume, log initial price."""

    sbar: np.ndarray
    rho: np.ndarray
    log_base_volume: np.ndarray
    log_price0: np.ndarray


def symbol_names(n: int) -> list[str]:
    """['SYN000', 'SYN001', ...]; wider numbers beyond 1000 symbols."""
    width = max(3, len(str(n - 1)))
    return [f"SYN{i:0{width}d}" for i in range(n)]


def _signal_coef(strength: float) -> float:
    """k such that corr(mu, r) = k / sqrt(1 + k^2) = strength."""
    return strength / math.sqrt(1.0 - strength * strength)


def _rngs(seed: int) -> list[np.random.Generator]:
    # One independent stream per kind of draw, each drawn in a single (T, N) call: the first
    # T' rows do not depend on T, so a shorter panel is a prefix of a longer one.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]


def _params(cfg: SyntheticConfig, rng: np.random.Generator) -> _Params:
    n, bpd = cfg.symbols, FREQ_BARS_PER_SESSION[cfg.freq]
    daily_vol = rng.uniform(*DAILY_VOL_RANGE, n)
    rho = rng.uniform(*RHO_RANGE, n)
    log_base_volume = rng.normal(math.log(1e6 / bpd), 0.8, n)
    log_price0 = rng.normal(math.log(50.0), 0.6, n)
    return _Params(daily_vol / math.sqrt(bpd), rho, log_base_volume, log_price0)


def _profiles(freq: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sqrt variance profile, log-volume profile, gap share), each (bars_per_session,)."""
    var = np.asarray(_VAR_PROFILE[freq])
    return (np.sqrt(var / var.mean()), np.asarray(_LOGVOL_PROFILE[freq]),
            np.asarray(_GAP_SHARE[freq]))


def _std_t(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    return rng.standard_t(T_DOF, size) * math.sqrt((T_DOF - 2.0) / T_DOF)


def _rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """(T, N) -> (T, N): sum of rows t-window+1..t, rows before 0 counted as 0."""
    padded = np.concatenate([np.zeros((window - 1, x.shape[1])), x], axis=0)
    return sliding_window_view(padded, window, axis=0).sum(axis=-1)


def _timestamps(cfg: SyntheticConfig) -> np.ndarray:
    """(T,) datetime64[ns]: business days, or 7 hourly bar closes per business day."""
    bpd = FREQ_BARS_PER_SESSION[cfg.freq]
    days = pd.bdate_range(cfg.start, periods=-(-cfg.bars // bpd))
    if bpd == 1:
        return days.to_numpy(dtype="datetime64[ns]")
    offsets = pd.to_timedelta([f"{t}:00" for t in HOURLY_BAR_CLOSES]).to_numpy()
    ts = days.to_numpy(dtype="datetime64[ns]")[:, None] + offsets[None, :]
    return ts.ravel()[: cfg.bars]


def _oracle(zs: np.ndarray, s: np.ndarray, sbar: np.ndarray, k: float, sqrt_d: np.ndarray,
            horizons: tuple[int, ...]) -> np.ndarray:
    """Exact E_t[log close_{t+h} - log close_t] for each horizon.

    zs: (T, N) recovered shocks (row 0 zero); s: (T, N) signal; sbar: (N,); sqrt_d: (B,)
    per-position sqrt variance profile. Returns (T, N, H) float64.
    """
    n_t = zs.shape[0]
    # es[m] = E_t[s_{t+m}], (T, N): the reversal window ending at t+m still holds the known
    # shocks z_t..z_{t+m-4}; unknown shocks and volume shocks have mean 0.
    es = [s] + [-W_REVERSAL / math.sqrt(REVERSAL_WINDOW) * _rolling_sum(zs, REVERSAL_WINDOW - m)
                for m in range(1, REVERSAL_WINDOW)]
    pos = np.arange(n_t)
    out = np.empty((n_t, zs.shape[1], len(horizons)))
    acc = np.zeros_like(zs)
    done = 0
    for hi, h in enumerate(horizons):  # horizons sorted: accumulate the sum over j
        for j in range(done + 1, min(h, REVERSAL_WINDOW) + 1):
            acc += sqrt_d[(pos + j) % len(sqrt_d)][:, None] * es[j - 1]
        done = max(done, min(h, REVERSAL_WINDOW))
        out[:, :, hi] = k * sbar[None, :] * acc
    return out + 0.0  # + 0.0 turns -0.0 into 0.0 (k = 0 gives an all-zero oracle)


def _check_horizons(horizons: tuple[int, ...]) -> tuple[int, ...]:
    hs = tuple(horizons)
    if not hs or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1
                     for h in hs) or len(set(hs)) != len(hs):
        raise ValueError(f"horizons: got {hs!r}, expected distinct positive integers")
    return tuple(sorted(int(h) for h in hs))


def _long_oracle(yhat: np.ndarray, names: list[str], ts: np.ndarray,
                 horizons: tuple[int, ...]) -> pd.DataFrame:
    """(T, N, H) -> long frame sorted by (symbol, timestamp, horizon)."""
    n_t, n, n_h = yhat.shape
    return pd.DataFrame({
        "symbol": np.repeat(np.asarray(names, dtype=object), n_t * n_h),
        "timestamp": np.tile(np.repeat(ts, n_h), n),
        "horizon": np.tile(np.asarray(horizons, dtype=np.int64), n * n_t),
        "yhat": yhat.transpose(1, 0, 2).ravel(),
    }).astype({"symbol": str})


def make_synthetic(cfg: SyntheticConfig,
                   horizons: tuple[int, ...] = (1,)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the panel described in the module docstring.

    Returns (bars, oracle):
      bars: (symbols * bars, 7) panel ``symbol, timestamp, open, high, low, close, volume``,
        sorted by (symbol, timestamp). Volume is float (log-normal, not rounded).
      oracle: (symbols * bars * len(horizons), 4) ``symbol, timestamp, horizon, yhat`` sorted by
        (symbol, timestamp, horizon); ``yhat`` is the exact conditional expectation of the
        forward log return ``log(close_{t+h} / close_t)`` given bars up to t.
    Bitwise deterministic for a given config; a shorter ``bars`` gives a prefix of a longer run.
    """
    check(cfg, "data.synthetic")
    horizons = _check_horizons(horizons)
    n_t, n = cfg.bars, cfg.symbols
    rng_p, rng_m, rng_u, rng_v, rng_g, rng_hi, rng_lo = _rngs(cfg.seed)
    par = _params(cfg, rng_p)
    sqrt_d, logvol_prof, gap_share = _profiles(cfg.freq)
    bpd = len(sqrt_d)
    pos = np.arange(n_t) % bpd
    k = _signal_coef(cfg.signal_strength)

    market = _std_t(rng_m, (n_t,))
    idio = _std_t(rng_u, (n_t, n))
    z = par.rho[None, :] * market[:, None] + np.sqrt(1.0 - par.rho**2)[None, :] * idio  # (T, N)
    v = rng_v.standard_normal((n_t, n))
    zs = z.copy()
    zs[0] = 0.0  # bar 0: not observable from bars (no previous close), kept out of the signal

    s = W_REVERSAL * (-_rolling_sum(zs, REVERSAL_WINDOW) / math.sqrt(REVERSAL_WINDOW)) + W_VOLUME * v
    s[0] = 0.0

    # GARCH(1,1): the only recursion; a loop over time on arrays of all symbols.
    omega = par.sbar**2 * (1.0 - GARCH_ALPHA - GARCH_GAMMA)
    sig = np.empty((n_t, n))
    s2 = par.sbar**2
    sig[0] = par.sbar
    for t in range(1, n_t):
        sig[t] = np.sqrt(s2)
        s2 = omega + (GARCH_ALPHA * zs[t] ** 2 + GARCH_GAMMA) * s2

    scale = sqrt_d[pos][:, None] * sig  # (T, N) conditional sd of the 1-bar return
    mu = np.zeros((n_t, n))
    mu[1:] = k * par.sbar[None, :] * sqrt_d[pos[1:]][:, None] * s[:-1]
    r = mu + scale * z
    log_close = par.log_price0[None, :] + np.cumsum(r, axis=0)
    prev = np.concatenate([par.log_price0[None, :], log_close[:-1]], axis=0)
    q = gap_share[pos][:, None]
    log_open = prev + q * r + np.sqrt(q * (1.0 - q)) * scale * rng_g.standard_normal((n_t, n))
    wick = RANGE_SCALE * scale  # (T, N) typical distance of high/low beyond the body
    log_high = np.maximum(log_open, log_close) + wick * np.abs(rng_hi.standard_normal((n_t, n)))
    log_low = np.minimum(log_open, log_close) - wick * np.abs(rng_lo.standard_normal((n_t, n)))
    log_volume = (par.log_base_volume[None, :] + logvol_prof[pos][:, None]
                  + LOGVOL_ON_SIGMA * np.log(sig / par.sbar[None, :])
                  + LOGVOL_ON_ABSZ * np.abs(z) + LOGVOL_SHOCK_SD * v)

    names = symbol_names(n)
    ts = _timestamps(cfg)

    def col(x: np.ndarray) -> np.ndarray:  # (T, N) -> (N * T,) symbol-major
        return np.exp(x).T.ravel()

    bars = pd.DataFrame({
        "symbol": np.repeat(np.asarray(names, dtype=object), n_t),
        "timestamp": np.tile(ts, n),
        "open": col(log_open), "high": col(log_high), "low": col(log_low),
        "close": col(log_close), "volume": col(log_volume),
    }).astype({"symbol": str})
    yhat = _oracle(zs, s, par.sbar, k, sqrt_d, horizons)
    return bars, _long_oracle(yhat, names, ts, horizons)


def oracle_from_bars(bars: pd.DataFrame, cfg: SyntheticConfig,
                     horizons: tuple[int, ...] = (1,)) -> pd.DataFrame:
    """Recompute the oracle of :func:`make_synthetic` from the bars alone.

    bars: the full, unfiltered panel of ``make_synthetic(cfg)`` (or a modified copy with the same
    symbols and bar count), sorted by (symbol, timestamp). Only close and volume are read; the
    model constants are regenerated from ``cfg``. Row t of the result depends on bars 0..t only
    (the loop below walks forward in time), which is the causality guarantee of the oracle.
    Returns the oracle frame in the format of ``make_synthetic`` (equal to it up to float
    rounding, ~1e-12 relative).
    """
    check(cfg, "data.synthetic")
    horizons = _check_horizons(horizons)
    n_t, n = cfg.bars, cfg.symbols
    names = symbol_names(n)
    if len(bars) != n * n_t or list(pd.unique(bars["symbol"])) != names:
        raise ValueError(
            f"oracle_from_bars: expected {n} symbols {names[0]}..{names[-1]} with {n_t} bars each "
            f"(the unfiltered panel of this config), got {len(bars)} rows and symbols "
            f"{list(pd.unique(bars['symbol']))[:5]}..."
        )
    par = _params(cfg, _rngs(cfg.seed)[0])
    sqrt_d, logvol_prof, _ = _profiles(cfg.freq)
    pos = np.arange(n_t) % len(sqrt_d)
    k = _signal_coef(cfg.signal_strength)
    log_close = np.log(bars["close"].to_numpy(np.float64)).reshape(n, n_t).T  # (T, N)
    log_volume = np.log(bars["volume"].to_numpy(np.float64)).reshape(n, n_t).T

    omega = par.sbar**2 * (1.0 - GARCH_ALPHA - GARCH_GAMMA)
    zs = np.zeros((n_t, n))
    s = np.zeros((n_t, n))
    s2 = par.sbar**2
    for t in range(1, n_t):
        sig = np.sqrt(s2)
        mu = k * par.sbar * sqrt_d[pos[t]] * s[t - 1]
        zs[t] = (log_close[t] - log_close[t - 1] - mu) / (sqrt_d[pos[t]] * sig)
        v = (log_volume[t] - par.log_base_volume - logvol_prof[pos[t]]
             - LOGVOL_ON_SIGMA * np.log(sig / par.sbar)
             - LOGVOL_ON_ABSZ * np.abs(zs[t])) / LOGVOL_SHOCK_SD
        a = -zs[max(1, t - REVERSAL_WINDOW + 1): t + 1].sum(axis=0) / math.sqrt(REVERSAL_WINDOW)
        s[t] = W_REVERSAL * a + W_VOLUME * v
        s2 = omega + (GARCH_ALPHA * zs[t] ** 2 + GARCH_GAMMA) * s2
    ts = bars["timestamp"].to_numpy("datetime64[ns]")[:n_t]
    yhat = _oracle(zs, s, par.sbar, k, sqrt_d, horizons)
    return _long_oracle(yhat, names, ts, horizons)
