"""Exact mean and variance of one dark pixel under the paper §3.1 composite, per Poisson rate.

After the black level and colour weights (§3.1.1-2) a pixel holds x = w (b - bl), in 8-bit
units. Poisson noise at peak p (§3.1.3) draws a count K ~ Poisson(lam), lam = x p / 255, and the
dark value is y(K) = clip((s K)^e, 0, 255) with s = 255 / p (§3.1.4), rounded to an integer
when the camera writes 8 bits. Least squares of the noise-free composite clip(x^e) against such
pixels is biased (E[y(K)] != y(lam) when e != 1, and a low count rounds to few values), so the
joint fit compares dark means with E[y(K)] and noise with Var[y(K)] instead.

`moment_table` tabulates both against the rate lam (float64 arrays [G]), which `lookup`
interpolates: exact sums over the counts below rate `EXACT_RATE`; above it a normal count with
Edgeworth skewness term and continuity correction, through the thresholds at which the rounded
value steps up (rounded), or Gauss-Hermite quadrature (not rounded).
"""
import collections

import numpy as np
from scipy import special

EXACT_RATE = 64.0  # below: exact Poisson sums; above: normal approximation of the count
_EXACT_STEP = 0.05  # table step in sqrt(rate) below EXACT_RATE (0.1 counts' sd at rate 64)
_NORMAL_STEP = 0.2  # table step in sqrt(rate) above it: 0.4 count standard deviations
_HERMITE = np.polynomial.hermite_e.hermegauss(24)

MomentTable = collections.namedtuple("MomentTable", "rate mean variance slope")


def dark_values(counts, exponent, noise_peak, rounded):
    """y(k) = clip((255 / peak * k)^e, 0, 255), rounded if `rounded`: float64, shape of counts."""
    linear = np.maximum(np.asarray(counts, np.float64), 0.0) * (255.0 / noise_peak)
    values = np.clip(np.power(linear, exponent), 0.0, 255.0)
    return np.round(values) if rounded else values


def _exact_moments(rates, exponent, noise_peak, rounded):
    """E[y(K)], E[y(K)^2] for K ~ Poisson(rate), rates float64 [G] <= EXACT_RATE: two [G]."""
    top = int(EXACT_RATE + 12.0 * np.sqrt(EXACT_RATE) + 20.0)
    counts = np.arange(top + 1, dtype=np.float64)
    log_rate = np.log(np.maximum(rates, 1e-300))[:, None]
    pmf = np.exp(counts * log_rate - rates[:, None] - special.gammaln(counts + 1.0))
    pmf[rates == 0.0] = (counts == 0.0)
    values = dark_values(counts, exponent, noise_peak, rounded)
    return pmf @ values, pmf @ values ** 2


def _normal_moments_rounded(rates, exponent, noise_peak):
    """E[Y], E[Y^2] of the rounded value for a normal count (rates > EXACT_RATE): two [G].

    Y = sum_j [Y >= j] over j = 1..255, and Y >= j exactly when K >= (j - 0.5)^(1/e) / s, so
    E[Y] = sum_j P(K >= m_j) and E[Y^2] = sum_j (2j - 1) P(K >= m_j), m_j the integer threshold.
    """
    steps = np.arange(1, 256, dtype=np.float64)
    thresholds = np.ceil(np.power(steps - 0.5, 1.0 / exponent) * (noise_peak / 255.0))
    # Thresholds 12 sd below the lowest rate are always passed, 12 sd above the highest never.
    low, high = rates[0] - 12.0 * np.sqrt(rates[0]), rates[-1] + 12.0 * np.sqrt(rates[-1])
    passed = steps[thresholds < low]
    steps, thresholds = steps[(thresholds >= low) & (thresholds <= high)], \
        thresholds[(thresholds >= low) & (thresholds <= high)]
    sd = np.sqrt(rates)[:, None]
    z = (thresholds[None] - 0.5 - rates[:, None]) / sd
    # P(K <= m - 1) with the Edgeworth term of the Poisson skewness 1 / sqrt(rate).
    below = special.ndtr(z) - np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) * (z * z - 1) / (6 * sd)
    above = np.clip(1.0 - below, 0.0, 1.0)
    return (len(passed) + above.sum(axis=1),
            np.sum(2.0 * passed - 1.0) + above @ (2.0 * steps - 1.0))


def _normal_moments_smooth(rates, exponent, noise_peak):
    """E[y], E[y^2] of the unrounded value for a normal count (Gauss-Hermite): two [G]."""
    nodes, weights = _HERMITE
    weights = weights / weights.sum()
    counts = rates[:, None] + np.sqrt(rates)[:, None] * nodes[None]
    values = dark_values(counts, exponent, noise_peak, rounded=False)
    return values @ weights, values ** 2 @ weights


def moment_table(exponent, noise_peak, top_rate, rounded=True):
    """Mean, variance and slope d mean / d rate of the dark value y(K) against the rate.

    Args:
      exponent: gamma exponent e > 0 (§3.1.4).
      noise_peak: Poisson peak p > 0 (§3.1.3), the count of a full-scale value.
      top_rate: the largest rate lam = x p / 255 needed; `lookup` holds the last row beyond it.
      rounded: whether the dark image is 8-bit (integer values).
    Returns:
      MomentTable of float64 [G] arrays: rate (increasing from 0), mean and variance of y(K) in
      8-bit units (squared), slope.
    """
    top = np.sqrt(max(float(top_rate), 1.0))
    low_top = min(top, np.sqrt(EXACT_RATE))
    roots = np.arange(0.0, low_top + _EXACT_STEP, _EXACT_STEP)
    rates = roots[roots <= np.sqrt(EXACT_RATE)] ** 2
    mean, square = _exact_moments(rates, exponent, noise_peak, rounded)
    if top > np.sqrt(EXACT_RATE):
        high = np.arange(np.sqrt(EXACT_RATE) + _NORMAL_STEP, top + _NORMAL_STEP, _NORMAL_STEP) ** 2
        normal = _normal_moments_rounded if rounded else _normal_moments_smooth
        high_mean, high_square = normal(high, exponent, noise_peak)
        rates = np.concatenate([rates, high])
        mean, square = np.concatenate([mean, high_mean]), np.concatenate([square, high_square])
    variance = np.maximum(square - mean ** 2, 0.0)
    return MomentTable(rates, mean, variance, np.gradient(mean, rates))


def lookup(table, rates, field="mean"):
    """Linear interpolation of a MomentTable field at `rates` (float array, any shape, >= 0)."""
    return np.interp(rates, table.rate, getattr(table, field))
