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

Signal kinds (``signal``)
-------------------------
``linear`` is the signal above. The others replace ``s_{i,t}``; each has mean 0 and pooled
variance 1 (weighted by ``sigmabar_i^2``, as ``mu`` is), so the 1-bar oracle's pooled IC is still
``S`` (drift, mixed: see :func:`planted_ic`), and each is a function of bars 0..t::

    cross_sectional  (s_i - mean_j s_j) / c_lin            the linear signal relative to the
                                                           cross-section's mean (market part gone)
    interaction      a_i * v_i 1{|v_i| > 1} / c_gate       reversal only on unusual volume, its
                                                           sign set by the volume surprise's
    regime           g_t (w z_{i,t} + w v_{i,t}), w = sqrt(1/2), g_t = -1 when the market is
                     turbulent (mean_j log(sigma_{j,t} / sigmabar_j) > 0: GARCH volatility, a
                     function of shocks up to t-1), +1 when calm: this bar's move continues in a
                     calm market and reverses in a turbulent one
    drift            lambda_t s_{i,t}, lambda_t = (1 + 0.9 sin(2 pi t / 750)) / sqrt(1 + 0.9^2 / 2),
                     a strength that drifts between 0.1x and 1.9x its mean over a 750-bar cycle
    mixed            lambda_t (sqrt(.4) (a_i - mean_j a_j) / c_rev + sqrt(.35) interaction
                     + sqrt(.25) g_t v_{i,t}): three mutually uncorrelated parts

``c_*`` are the exact standard deviations (from the market loadings ``rho`` and ``sigmabar``,
or ``E[v^2 1{|v| > 1}]`` for the gate), so the planted strength holds in population.

Oracle
------
For horizon h, ``yhat_{i,t}(h) = E[log(close_{t+h} / close_t) | bars up to t]
= k sigmabar_i sum_{j=1..h} sqrt(d_{p(t+j)}) E_t[s_{i,t+j-1}]`` exactly, with ``E_t[s_{t}] = s_t``,
``E_t[s_{t+m}] = -w_r (z_t + ... + z_{t-4+m}) / sqrt(5)`` for 1 <= m <= 4 (the reversal window
still holds m..4 known shocks; future shocks and volume shocks have mean 0) and 0 for m >= 5.
For the other kinds only the reversal window carries known shocks forward (demeaned for
cross_sectional and mixed, times ``lambda_{t+m}`` for drift and mixed); the interaction and
regime parts multiply a shock of the bar itself by something known before it, so their
expectation one bar ahead is 0 (:func:`_expected_signals`).
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
# signal kinds (data.synthetic.signal), see "Signal kinds" in the module docstring
SIGNALS: tuple[str, ...] = ("linear", "cross_sectional", "interaction", "regime", "drift", "mixed")
VOLUME_GATE = 1.0  # interaction: |volume shock| above which the reversal switches on
DRIFT_PERIOD = 750  # drift: bars per cycle of the signal's strength (~3 years of daily bars)
DRIFT_AMPLITUDE = 0.9  # drift: strength swings between 0.1x and 1.9x its mean (before scaling)
REGIME_THRESHOLD = 0.0  # regime: mean log(sigma / sigmabar) over symbols above which "turbulent"
W_REGIME_RETURN = math.sqrt(0.5)  # regime kind: weights of this bar's shock and volume shock
W_REGIME_VOLUME = math.sqrt(0.5)
MIXED_WEIGHTS = (math.sqrt(0.4), math.sqrt(0.35), math.sqrt(0.25))  # mixed: cs, interaction, regime
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
    signal: Literal[SIGNALS] = "linear"  # kind of planted signal (module docstring)

    def validate(self) -> None:
        if self.signal in ("cross_sectional", "mixed") and self.symbols < 2:
            raise ConfigError(f"data.synthetic.signal: {self.signal!r} is relative to the cross-section, "
                              f"so it needs data.synthetic.symbols >= 2, got {self.symbols}")
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


def _gate(v: np.ndarray) -> np.ndarray:
    """The volume shock where it is unusual (|v| > VOLUME_GATE), else 0: odd, so mean 0."""
    return np.where(np.abs(v) > VOLUME_GATE, v, 0.0)


# sd of a * _gate(v) for independent unit-variance a and v ~ N(0, 1):
# E[v^2 1{|v| > c}] = 2 (c phi(c) + Q(c)), phi the normal density, Q its upper tail.
GATE_SD = math.sqrt(2.0 * (VOLUME_GATE * math.exp(-0.5 * VOLUME_GATE**2) / math.sqrt(2.0 * math.pi)
                           + 0.5 * math.erfc(VOLUME_GATE / math.sqrt(2.0))))


def drift_factor(t: np.ndarray) -> np.ndarray:
    """Strength multiplier of bar index ``t`` (drift and mixed kinds): a sinusoid with mean
    square 1 over whole cycles, a deterministic function of the bar's position, so known at t."""
    return ((1.0 + DRIFT_AMPLITUDE * np.sin(2.0 * math.pi * np.asarray(t, np.float64) / DRIFT_PERIOD))
            / math.sqrt(1.0 + 0.5 * DRIFT_AMPLITUDE**2))


def _demean(x: np.ndarray) -> np.ndarray:
    """(R, N) minus its cross-sectional (row) mean."""
    return x - x.mean(axis=1, keepdims=True)


def _cs_norm(rho: np.ndarray, sbar: np.ndarray, offdiag_weight: float) -> float:
    """sd that makes a demeaned signal unit-variance, pooled with the weights sbar^2 of mu.

    The signal x has Var(x_i) = 1 and Cov(x_i, x_j) = offdiag_weight rho_i rho_j (i != j); then
    Var(x_i - mean x) = C_ii - 2 mean_j C_ij + mean C. With N = 1 there is no cross-section."""
    c = offdiag_weight * np.outer(rho, rho)
    np.fill_diagonal(c, 1.0)
    var = np.diag(c) - 2.0 * c.mean(axis=1) + c.mean()
    return float(math.sqrt(max(float(np.sum(sbar**2 * var) / np.sum(sbar**2)), 1e-300)))


@dataclass(frozen=True)
class _SignalConsts:
    """Constants of the signal of one config: kind and the two cross-sectional normalisers."""

    kind: str
    cs_lin: float  # sd of the demeaned linear signal
    cs_rev: float  # sd of the demeaned reversal a


def _signal_consts(kind: str, par: _Params) -> _SignalConsts:
    return _SignalConsts(kind, _cs_norm(par.rho, par.sbar, W_REVERSAL**2), _cs_norm(par.rho, par.sbar, 1.0))


def _signal(c: _SignalConsts, a: np.ndarray, v: np.ndarray, z: np.ndarray, regime: np.ndarray,
            lam: np.ndarray) -> np.ndarray:
    """The signal s of rows of bars, each (R, N) except regime and lam (R, 1).

    a: 5-bar reversal -(z_t + .. + z_{t-4}) / sqrt(5); v: volume shock; z: this bar's shock;
    regime: mean over symbols of log(sigma_t / sigmabar) (a function of shocks up to t-1);
    lam: drift_factor(t). Every kind has pooled (sbar^2-weighted) variance lam^2 and mean 0."""
    if c.kind == "linear":
        return W_REVERSAL * a + W_VOLUME * v
    if c.kind == "cross_sectional":
        return _demean(W_REVERSAL * a + W_VOLUME * v) / c.cs_lin
    if c.kind == "interaction":
        return a * _gate(v) / GATE_SD
    sign = np.where(regime > REGIME_THRESHOLD, -1.0, 1.0)  # turbulent: reversal; calm: momentum
    if c.kind == "regime":
        return sign * (W_REGIME_RETURN * z + W_REGIME_VOLUME * v)
    if c.kind == "drift":
        return lam * (W_REVERSAL * a + W_VOLUME * v)
    w_cs, w_int, w_reg = MIXED_WEIGHTS  # three mutually uncorrelated unit-variance parts
    return lam * (w_cs * _demean(a) / c.cs_rev + w_int * a * _gate(v) / GATE_SD + w_reg * sign * v)


def _expected_signals(c: _SignalConsts, zs: np.ndarray, s: np.ndarray) -> list[np.ndarray]:
    """[E_t s_t, E_t s_{t+1}, .., E_t s_{t+4}], each (T, N); E_t s_{t+m} = 0 for m >= 5.

    Only the reversal window carries known shocks forward: the volume shocks, this bar's shock
    times a regime sign set by earlier shocks, and the gated interaction (mean 0 given the past)
    have expectation 0 one bar ahead and beyond."""
    n_t = zs.shape[0]
    if c.kind in ("interaction", "regime"):
        return [s] + [np.zeros_like(s)] * (REVERSAL_WINDOW - 1)
    known = [-_rolling_sum(zs, REVERSAL_WINDOW - m) / math.sqrt(REVERSAL_WINDOW)
             for m in range(1, REVERSAL_WINDOW)]  # E_t a_{t+m}
    if c.kind == "linear":  # the expression of the original generator, bit for bit
        return [s] + [-W_REVERSAL / math.sqrt(REVERSAL_WINDOW) * _rolling_sum(zs, REVERSAL_WINDOW - m)
                      for m in range(1, REVERSAL_WINDOW)]
    if c.kind == "cross_sectional":
        return [s] + [_demean(W_REVERSAL * e) / c.cs_lin for e in known]
    lam = [drift_factor(np.arange(n_t) + m)[:, None] for m in range(1, REVERSAL_WINDOW)]
    if c.kind == "drift":
        return [s] + [lm * W_REVERSAL * e for lm, e in zip(lam, known, strict=True)]
    return [s] + [lm * MIXED_WEIGHTS[0] * _demean(e) / c.cs_rev for lm, e in zip(lam, known, strict=True)]


def planted_ic(cfg: SyntheticConfig) -> float:
    """Population pooled correlation of the 1-bar oracle with the 1-bar return on this config.

    ``signal_strength`` for every kind but drift and mixed, whose strength multiplier has mean
    square L over the panel's bars (1 over whole cycles): then ``k sqrt(L) / sqrt(k^2 L + 1)``."""
    k = _signal_coef(cfg.signal_strength)
    if cfg.signal not in ("drift", "mixed"):
        return float(cfg.signal_strength)
    sqrt_d = _profiles(cfg.freq)[0]
    t = np.arange(cfg.bars - 1)  # mu_{t+1} carries drift_factor(t)
    d = sqrt_d[(t + 1) % len(sqrt_d)] ** 2
    mean_sq = float(np.sum(d * drift_factor(t) ** 2) / np.sum(d))
    return float(k * math.sqrt(mean_sq) / math.sqrt(k * k * mean_sq + 1.0))


def _oracle(es: list[np.ndarray], sbar: np.ndarray, k: float, sqrt_d: np.ndarray,
            horizons: tuple[int, ...]) -> np.ndarray:
    """Exact E_t[log close_{t+h} - log close_t] for each horizon.

    es: [E_t s_{t+m} for m = 0..REVERSAL_WINDOW-1], each (T, N) (see :func:`_expected_signals`);
    sbar: (N,); sqrt_d: (B,) per-position sqrt variance profile. Returns (T, N, H) float64.
    """
    n_t = es[0].shape[0]
    pos = np.arange(n_t)
    out = np.empty((n_t, es[0].shape[1], len(horizons)))
    acc = np.zeros_like(es[0])
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

    # GARCH(1,1): the only recursion; a loop over time on arrays of all symbols.
    omega = par.sbar**2 * (1.0 - GARCH_ALPHA - GARCH_GAMMA)
    sig = np.empty((n_t, n))
    s2 = par.sbar**2
    sig[0] = par.sbar
    for t in range(1, n_t):
        sig[t] = np.sqrt(s2)
        s2 = omega + (GARCH_ALPHA * zs[t] ** 2 + GARCH_GAMMA) * s2

    consts = _signal_consts(cfg.signal, par)
    regime = np.log(sig / par.sbar[None, :]).mean(axis=1, keepdims=True)  # (T, 1), known at t-1
    s = _signal(consts, -_rolling_sum(zs, REVERSAL_WINDOW) / math.sqrt(REVERSAL_WINDOW), v, zs,
                regime, drift_factor(np.arange(n_t))[:, None])
    s[0] = 0.0

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
    yhat = _oracle(_expected_signals(consts, zs, s), par.sbar, k, sqrt_d, horizons)
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

    consts = _signal_consts(cfg.signal, par)
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
        regime = np.log(sig / par.sbar)[None, :].mean(axis=1, keepdims=True)  # (1, 1)
        s[t] = _signal(consts, a[None, :], v[None, :], zs[t][None, :], regime,
                       drift_factor(np.array([t]))[:, None])[0]
        s2 = omega + (GARCH_ALPHA * zs[t] ** 2 + GARCH_GAMMA) * s2
    ts = bars["timestamp"].to_numpy("datetime64[ns]")[:n_t]
    yhat = _oracle(_expected_signals(consts, zs, s), par.sbar, k, sqrt_d, horizons)
    return _long_oracle(yhat, names, ts, horizons)
