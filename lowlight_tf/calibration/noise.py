"""Noise statistics of dark images, for the joint fit and the fidelity report (paper §3.1.3).

The paper adds Poisson noise before the gamma step (§3.1.3) and fixes its peak; here the peak
and the shape of the noise are measured from the real dark image instead. The noise of an image
is its high-pass energy E[(x - G_1 * x)^2] (G_1 a Gaussian blur of sigma `NOISE_SIGMA` px), over
pixels away from the border and from saturation (`noise_mask`), in total (`noise_energy`) or
per local intensity level (`noise_curve`). `estimate_noise_peak` finds the Poisson peak at which
simulated dark images carry the real one's energy. Images are NumPy float [H, W, 3] in [0, 255].
"""
import math

import numpy as np
from scipy import ndimage

from lowlight_tf import simulation

NOISE_PEAK_RANGE = (0.25, 1e5)  # search range of estimate_noise_peak
NOISE_CROP = 256  # noise statistics use a central crop of this size (speed)
NOISE_LEVEL_EDGES = (0, 2, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128, 250)
NOISE_SIGMA = 1.0  # Gaussian blur (pixels) that separates noise from image content


def simulate_one(bright, params, *, seed, steps=simulation.STEPS, noise_peak=1.0,
                 quantize=False, tone_curve=None):
    """Run lowlight_tf.simulation.simulate on one image; float32 [H, W, 3] in [0, 255].

    `bright` is float [H, W, 3] in [0, 255], `params` float [5] (black_level, w_r, w_g, w_b,
    gamma_exponent), `seed` an int (the stateless seed is [seed, 0]).
    """
    dark = simulation.simulate(np.asarray(bright, np.float32)[None],
                               np.asarray(params, np.float32)[None], seed=[seed, 0], steps=steps,
                               noise_peak=noise_peak, quantize=quantize, tone_curve=tone_curve)
    return dark.numpy()[0]


def high_pass(image):
    """The residual x - G_1 * x of float [H, W, 3] in [0, 255]: float64 [H, W, 3], about 0."""
    image = np.asarray(image, np.float64)
    return image - ndimage.gaussian_filter(image, sigma=(NOISE_SIGMA, NOISE_SIGMA, 0))


def noise_energy(image, mask=None):
    """Mean squared high-pass residual E[(x - G_1 * x)^2] of float [H, W, 3] in [0, 255].

    `mask` (bool [H, W, 3]) selects the pixels averaged; default every pixel away from the border.
    """
    image = np.asarray(image, np.float64)
    residual = high_pass(image)
    if mask is None:
        mask = noise_mask(image)
    return float(np.mean(residual[mask] ** 2))


def noise_mask(dark):
    """Pixels for noise statistics: 3 px from the border, locally unsaturated (blur < 250)."""
    mask = noise_level(dark) < 250.0
    mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = False, False, False, False
    return mask


def central_crop(image, size=NOISE_CROP):
    """The central size x size part of [H, W, C] (the whole image when smaller)."""
    top = max(0, (image.shape[0] - size) // 2)
    left = max(0, (image.shape[1] - size) // 2)
    return image[top:top + size, left:left + size]


def noise_level(dark):
    """Local intensity (Gaussian blur, sigma 2 px) that indexes the noise curve."""
    return ndimage.gaussian_filter(np.asarray(dark, np.float64), sigma=(2, 2, 0))


def noise_curve(image, level, mask, edges=NOISE_LEVEL_EDGES, min_pixels=500):
    """High-pass noise energy per intensity level: float64 [len(edges) - 1], NaN for sparse bins.

    Args:
      image: float [H, W, 3] in [0, 255].
      level: float [H, W, 3], the intensity each pixel is binned by (the real dark's
        `noise_level`).
      mask: bool [H, W, 3] pixels to use.
    """
    residual = high_pass(image)
    index = np.digitize(level, edges) - 1
    curve = np.full(len(edges) - 1, np.nan)
    for k in range(len(edges) - 1):
        chosen = mask & (index == k)
        if chosen.sum() >= min_pixels:
            curve[k] = np.mean(residual[chosen] ** 2)
    return curve


def estimate_noise_peak(dark, bright, params, *, quantize=True, seed=0,
                        peak_range=NOISE_PEAK_RANGE, steps=10, scan=12):
    """Poisson peak at which simulated dark images carry the real dark image's noise energy.

    Bisection in log(peak): the bright image is simulated with `params` (full composite, 8-bit
    quantised if `quantize`, one fixed noise seed) and its `noise_energy` is compared with the
    real dark image's on the same pixels. Above a few counts per full scale the energy falls as
    the peak grows; the result is clamped to `peak_range` (the high end means the real image is
    no noisier than image content and quantisation alone). Below that the energy falls again
    (almost every pixel draws 0 counts), so when even the lowest peak is too clean the
    bisection starts from the noisiest of `scan` log-spaced peaks instead, and when no peak is
    noisy enough that noisiest peak is returned.

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
      params: float [5] fitted parameters of the pair.
    Returns:
      float, the peak (> 0).
    """
    mask = noise_mask(dark)
    target = noise_energy(dark, mask)

    def energy(peak):
        return noise_energy(simulate_one(bright, params, seed=seed, noise_peak=peak,
                                         quantize=quantize), mask)

    low, high = math.log(peak_range[0]), math.log(peak_range[1])
    if energy(math.exp(high)) >= target:
        return float(peak_range[1])
    if energy(math.exp(low)) <= target:
        grid = np.linspace(low, high, scan + 2)[1:-1]
        energies = [energy(math.exp(value)) for value in grid]
        noisiest = int(np.argmax(energies))
        if energies[noisiest] <= target:
            return float(math.exp(grid[noisiest]))
        low = float(grid[noisiest])
    for _ in range(steps):
        middle = 0.5 * (low + high)
        if energy(math.exp(middle)) > target:
            low = middle
        else:
            high = middle
    return float(math.exp(0.5 * (low + high)))
