"""The joint fit of the paper §3.1 composite to one dark/bright pair: a search over (e, peak).

Brightness alone fixes only w^e (e and the colour weights trade off), the noise curve alone
confuses exponents when there is little noise, and fits that alternate between (bl, w | peak)
and (peak | bl, w) settle on wrong fixed points. So each candidate (gamma exponent e, Poisson
peak p) is scored by one number, -2 log-likelihood of two Gaussian approximations:

- brightness: the dark means per bright value and channel against the exact mean E[y(K)] of the
  noisy, 8-bit composite (`moments`), with the black level and colour weights fitted by least
  squares at that (e, p) (`fit_exposure`); chi^2 with the bins' measured standard errors. The
  curvature of the means over the bright range, the noise's bias of the means and the rounding
  of low counts all depend on e and p.
- noise: the high-pass residual x - G_1 * x (`noise.high_pass`) of dark minus model mean on the
  central crop against the model variance it should have (`noise_score`).

`search` scans the candidate exponents, and for each a log grid of peaks refined by a bounded
1-D search (Brent), then refines the exponent between the best candidate's neighbours (the
score is a staircase in e, as the rounding thresholds move in steps: no derivative). Images are
float [H, W, 3] in [0, 255].
"""
import collections

import numpy as np
from scipy import ndimage, optimize

from lowlight_tf.calibration import moments, noise
from lowlight_tf.calibration.pairs import CalibrationError

PEAK_GRID = np.geomspace(noise.NOISE_PEAK_RANGE[0], noise.NOISE_PEAK_RANGE[1], 13)
VARIANCE_FLOOR = 0.01  # 8-bit units^2: the least variance a bin mean or a pixel is given
POOL_WIDTHS = (7, 21, 63, 255)  # bright-value windows over which dark variances are pooled
POOL_DOF = 20  # degrees of freedom a pooled variance needs (else the next wider window)
PEAK_TOLERANCE = 0.03  # Brent's tolerance in log(peak)
EXPONENT_TOLERANCE = 0.005  # Brent's tolerance in the gamma exponent
EXPONENT_STEP = 0.06  # relative step of the fine grid of exponents that precedes Brent
# A refined exponent replaces the best candidate only if it lowers the score by more than this.
# The score is rough (rounding thresholds move in steps with e and the peak; the least squares
# and Brent find nearby local minima): on 128 x 160 pairs whose exponent is a candidate, the
# refinement "gained" up to 65 without being closer, while exponents between candidates
# (1.4, 0.7, 1.1) gained 110-740.
SIGNIFICANT = 100.0
LOWER = np.asarray([0.0, 1e-4, 1e-4, 1e-4])  # black level, w_r, w_g, w_b
UPPER = np.asarray([254.0, 20.0, 20.0, 20.0])

Bins = collections.namedtuple("Bins", "channel level count mean weight")
Crop = collections.namedtuple("Crop", "dark index channel level mask")
Point = collections.namedtuple("Point", "score params noise_peak chi2 noise rms")


def _pooled_variance(squares, dof):
    """Per-bin variance of dark values pooled over the narrowest window of `POOL_WIDTHS` bright
    values holding `POOL_DOF` degrees of freedom (the widest otherwise): float64 [3 * 255].

    `squares` and `dof` are float64 [3 * 255]: sums of squared deviations and counts - 1.
    """
    squares, dof = squares.reshape(3, 255), dof.reshape(3, 255)
    variance = np.full((3, 255), np.nan)
    for width in POOL_WIDTHS:
        kernel = np.ones(width)
        pooled_squares = np.stack([np.convolve(row, kernel, "same") for row in squares])
        pooled_dof = np.stack([np.convolve(row, kernel, "same") for row in dof])
        fill = np.isnan(variance) & ((pooled_dof >= POOL_DOF) | (width == POOL_WIDTHS[-1]))
        variance[fill] = (pooled_squares / np.maximum(pooled_dof, 1.0))[fill]
    return variance.ravel()


def bright_bins(dark, bright):
    """Dark means per (channel, rounded bright value), pixels with bright >= 254.5 left out.

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
    Returns:
      Bins of float64 [N] arrays (N <= 3 * 255, non-empty bins): channel index, mean bright
      value, pixel count, mean dark value and least-squares weight count / variance (the
      variance pooled over neighbouring bright values, `_pooled_variance`, plus
      `VARIANCE_FLOOR`): 1 / weight is the squared standard error of the bin's mean.
    """
    dark = np.asarray(dark, np.float64).reshape(-1, 3)
    bright = np.asarray(bright, np.float64).reshape(-1, 3)
    keep = bright < 254.5
    index = (np.arange(3)[None] * 255 + np.rint(np.clip(bright, 0, 254)).astype(int))[keep]
    count = np.bincount(index, minlength=765).astype(np.float64)
    if count.sum() == 0:
        raise CalibrationError("No unsaturated pixels to fit.")
    safe = np.maximum(count, 1.0)
    level = np.bincount(index, bright[keep], 765) / safe
    mean = np.bincount(index, dark[keep], 765) / safe
    squares = np.maximum(np.bincount(index, dark[keep] ** 2, 765) - count * mean ** 2, 0.0)
    variance = _pooled_variance(squares, np.maximum(count - 1.0, 0.0))
    used = count > 0
    channel = np.repeat(np.arange(3.0), 255)
    return Bins(channel[used], level[used], count[used], mean[used],
                count[used] / (variance[used] + VARIANCE_FLOOR))


def _rates(params, noise_peak, channel, level):
    """Poisson rates p / 255 * w_c * max(b - bl, 0) for bins or pixels (float64 arrays)."""
    weights = np.asarray(params[1:4])[np.asarray(channel, int)]
    return noise_peak / 255.0 * weights * np.maximum(level - params[0], 0.0)


def _table_for(exponent, noise_peak, rounded, linear):
    """A moment table reaching 1.5x past the linear value `linear` (x = w (b - bl)), or past
    saturation if that comes first. For a float (unrounded) dark image the top of
    `noise.NOISE_PEAK_RANGE` stands for no noise at all: variance 0."""
    top = min(1.5 * linear + 1.0, 1.5 * 255.0 ** (1.0 / exponent)) * noise_peak / 255.0
    table = moments.moment_table(exponent, noise_peak, top + 30.0, rounded)
    if not rounded and noise_peak >= noise.NOISE_PEAK_RANGE[1]:
        table = table._replace(variance=np.zeros_like(table.variance))
    return table


def _start(bins, exponent):
    """A cold start (0, w_r, w_g, w_b): w from the noise-free inverse, dark^(1/e) / bright."""
    linear = np.power(np.maximum(bins.mean, 0.0), 1.0 / exponent) * bins.count
    weights = [linear[bins.channel == c].sum()
               / max((bins.level * bins.count)[bins.channel == c].sum(), 1e-6) for c in range(3)]
    return np.clip(np.concatenate([[0.0], weights]), LOWER + 1e-6, UPPER - 1e-6)


def _exposure_problem(bins, table, noise_peak, template, free):
    """(residuals, jacobian) of `fit_exposure` in the free entries of `template` [4]."""
    root = np.sqrt(bins.weight)
    channel = bins.channel.astype(int)
    onehot = np.eye(3)[channel]

    def full(values):
        params = template.copy()
        params[free] = values
        return params

    def residuals(values):
        rates = _rates(full(values), noise_peak, bins.channel, bins.level)
        return root * (moments.lookup(table, rates) - bins.mean)

    def jacobian(values):
        params = full(values)
        rates = _rates(params, noise_peak, bins.channel, bins.level)
        slope = root * moments.lookup(table, rates, "slope") * noise_peak / 255.0
        d_level = -slope * params[1:4][channel] * (bins.level > params[0])
        d_weights = (slope * np.maximum(bins.level - params[0], 0.0))[:, None] * onehot
        return np.column_stack([d_level, d_weights])[:, free]

    return residuals, jacobian


def _fit_from(bins, exponent, noise_peak, rounded, start, free):
    """One least-squares run of `fit_exposure` from `start` [4]: (params [4], chi^2, table).

    The moment table is widened (twice at most) when the fitted rates leave it.
    """
    table = _table_for(exponent, noise_peak, rounded, (bins.mean.max() + 3.0) ** (1 / exponent))
    for _ in range(3):
        residuals, jacobian = _exposure_problem(bins, table, noise_peak, start, free)
        result = optimize.least_squares(residuals, start[free], jac=jacobian, method="trf",
                                        bounds=(LOWER[free], UPPER[free]),
                                        x_scale=np.asarray([10.0, 0.1, 0.1, 0.1])[free],
                                        ftol=1e-6, xtol=1e-6)
        params = start.copy()
        params[free] = result.x
        top = np.max(_rates(params, noise_peak, bins.channel, bins.level))
        if top <= table.rate[-1]:
            break
        table = _table_for(exponent, noise_peak, rounded, 2.0 * top * 255.0 / noise_peak)
    return params, float(np.sum(result.fun ** 2)), table


def fit_exposure(bins, exponent, noise_peak, *, rounded=True, start=None, black_level=None):
    """Least squares of the black level and colour weights at a fixed (e, peak) (§3.1.1-2).

    Minimises chi^2 = sum weight * (mean dark - E[y(K)])^2 over the bins (`bright_bins`),
    E[y(K)] from `moments.moment_table`, with an analytic Jacobian (the table's slope), from
    `start` and from a cold start (`_start`; the problem has local minima), keeping the better.

    Args:
      bins: Bins of the pair.
      exponent, noise_peak: the fixed gamma exponent and Poisson peak.
      rounded: whether the dark image is 8-bit.
      start: float [4] (black level, w_r, w_g, w_b) extra start, or None.
      black_level: fix the black level at this value, or None to fit it.
    Returns:
      (params float64 [5] (black_level, w_r, w_g, w_b, e), chi^2, MomentTable).
    """
    starts = [_start(bins, exponent)] + ([] if start is None else [np.clip(start, LOWER, UPPER)])
    free = np.asarray([black_level is None, True, True, True])
    best = None
    for values in starts:
        if black_level is not None:
            values = np.concatenate([[black_level], values[1:]])
        fit = _fit_from(bins, exponent, noise_peak, rounded, values, free)
        if best is None or fit[1] < best[1]:
            best = fit
    params, chi2, table = best
    return np.append(params, exponent), chi2, table


def _squared_kernel():
    """scipy's 1-D Gaussian weights of `noise.NOISE_SIGMA` (truncate 4), squared: float64 [9]."""
    radius = int(4.0 * noise.NOISE_SIGMA + 0.5)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / noise.NOISE_SIGMA) ** 2)
    return (weights / weights.sum()) ** 2


def noise_crop(dark, bright):
    """The central crops (`noise.central_crop`) the noise score uses, as a Crop.

    Returns:
      Crop: dark float64 [h, w, 3]; index int [h, w, 3] into 3 * 256 bins (channel, rounded
      bright value); channel and level float64 [768], each bin's channel and mean bright value;
      mask bool [h, w, 3] (`noise.noise_mask`).
    """
    dark = noise.central_crop(np.asarray(dark, np.float64))
    bright = noise.central_crop(np.asarray(bright, np.float64))
    index = np.arange(3) * 256 + np.rint(np.clip(bright, 0, 255)).astype(int)
    count = np.maximum(np.bincount(index.ravel(), minlength=768), 1)
    level = np.bincount(index.ravel(), bright.ravel(), 768) / count
    return Crop(dark, index, np.repeat(np.arange(3.0), 256), level, noise.noise_mask(dark))


def noise_score(crop, params, noise_peak, table):
    """-2 log L (Gaussian) of the high-pass residual of dark minus model mean on a crop.

    The residual r = hp(d - E[y]) (hp = 1 - G_1, `noise.high_pass`) of independent pixels with
    variances V has variance (1 - 2 g_0) V + (G_1^2 * V), g_0 the kernel's centre weight.

    Args:
      crop: Crop of the pair (`noise_crop`).
      params: float [5]; noise_peak: float; table: MomentTable at (params[4], noise_peak).
    Returns:
      float, sum over the mask of r^2 / var + log var (var floored at `VARIANCE_FLOOR`).
    """
    rates = _rates(params, noise_peak, crop.channel, crop.level)
    mean = moments.lookup(table, rates)[crop.index]
    variance = moments.lookup(table, rates, "variance")[crop.index]
    residual = noise.high_pass(crop.dark - mean)
    squared = _squared_kernel()
    centre = squared[len(squared) // 2]
    spread = ndimage.correlate1d(ndimage.correlate1d(variance, squared, axis=0), squared, axis=1)
    spread = (1.0 - 2.0 * centre) * variance + spread + VARIANCE_FLOOR
    return float(np.sum(residual[crop.mask] ** 2 / spread[crop.mask]
                        + np.log(spread[crop.mask])))


def score_point(bins, crop, exponent, noise_peak, *, rounded, start, black_level):
    """Fit and score one (e, peak): a Point (score = chi^2 + noise score, rms in 8-bit units)."""
    params, chi2, table = fit_exposure(bins, exponent, noise_peak, rounded=rounded, start=start,
                                       black_level=black_level)
    rates = _rates(params, noise_peak, bins.channel, bins.level)
    misfit = moments.lookup(table, rates) - bins.mean
    rms = float(np.sqrt(np.sum(bins.count * misfit ** 2) / bins.count.sum()))
    noise_part = noise_score(crop, params, noise_peak, table)
    return Point(chi2 + noise_part, params, float(noise_peak), chi2, noise_part, rms)


def profile_peak(context, exponent, *, peaks=PEAK_GRID, start=None, refine=True):
    """The best peak at a fixed exponent: the log grid `peaks`, then (if `refine`) Brent in
    log(peak) between the best grid point's neighbours, to `PEAK_TOLERANCE`.

    Args:
      context: (bins, crop, options) of the pair (`search`); options are `score_point`'s
        keywords rounded and black_level.
      exponent: the gamma exponent e.
      peaks: float [P] increasing grid of Poisson peaks.
      start: float [4] least-squares start at the first peak (later ones start from the last).
    Returns:
      the best Point.
    """
    bins, crop, options = context
    points = []
    for peak in peaks:
        warm = start if not points else points[-1].params[:4]
        points.append(score_point(bins, crop, exponent, peak, start=warm, **options))
    best = min(range(len(points)), key=lambda i: points[i].score)
    if not refine or len(peaks) < 2:
        return points[best]
    logs = np.log(peaks)
    seen = [points[best]]

    def objective(log_peak):
        seen.append(score_point(bins, crop, exponent, np.exp(log_peak),
                                start=points[best].params[:4], **options))
        return seen[-1].score

    optimize.minimize_scalar(objective, method="bounded", options={"xatol": PEAK_TOLERANCE},
                             bounds=(logs[max(best - 1, 0)], logs[min(best + 1, len(logs) - 1)]))
    return min(seen, key=lambda point: point.score)


def _fine_exponents(low, middle, high):
    """Exponents from `low` to `high` through `middle`, log-spaced at most `EXPONENT_STEP` apart."""
    parts = []
    for a, b in ((low, middle), (middle, high)):
        count = int(np.ceil(np.log(b / a) / np.log1p(EXPONENT_STEP))) + 1 if b > a else 1
        parts.append(np.geomspace(a, b, count))
    return np.unique(np.concatenate(parts))


def _refine_exponent(context, exponents, candidates):
    """The best Point between the best candidate's neighbouring exponents: a fine grid of
    exponents (`_fine_exponents`; the score has several minima in e, a sharp one without noise
    and broad ones where noise explains a misfit), then Brent between the best one's neighbours.
    """
    index = int(np.argmin([point.score for point in candidates]))
    low, high = max(index - 1, 0), min(index + 1, len(exponents) - 1)
    neighbours = sorted([candidates[low].noise_peak, candidates[high].noise_peak])
    # Peaks around the neighbours' ones, and both ends of the range (the noise-free limit).
    peaks = np.unique(np.concatenate([
        np.clip(np.geomspace(neighbours[0] / 2.0, neighbours[1] * 2.0, 3),
                *noise.NOISE_PEAK_RANGE), noise.NOISE_PEAK_RANGE]))
    fine = _fine_exponents(exponents[low], exponents[index], exponents[high])
    start = candidates[index].params[:4]
    grid = [profile_peak(context, e, peaks=peaks, start=start) for e in fine]
    best = int(np.argmin([point.score for point in grid]))
    seen = [profile_peak(context, fine[best], peaks=peaks, start=grid[best].params[:4])]

    def objective(exponent):
        seen.append(profile_peak(context, exponent, peaks=peaks, start=seen[0].params[:4]))
        return seen[-1].score

    if len(fine) > 2:
        optimize.minimize_scalar(objective, method="bounded",
                                 bounds=(fine[max(best - 1, 0)],
                                         fine[min(best + 1, len(fine) - 1)]),
                                 options={"xatol": EXPONENT_TOLERANCE})
    return min(seen, key=lambda point: point.score)


def search(dark, bright, exponents, *, black_level=None, rounded=True, refine=True,
           brightness_pixels=None):
    """Best (e, peak) of a pair: per candidate exponent the peak profile, then e refined.

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
      exponents: candidate gamma exponents (increasing).
      black_level: fix the black level, or None to fit it.
      rounded: model 8-bit rounding of the dark image.
      refine: search e between the best candidate's neighbours too; the refined exponent is
        kept only if it lowers the score by more than `SIGNIFICANT` (the score's roughness).
      brightness_pixels: (dark, bright) pixels [N, 1, 3] for the brightness bins instead of
        the whole images (a subsample); the noise score always uses the central crop.
    Returns:
      (best Point, candidate Points, one per exponent).
    """
    context = (bright_bins(*(brightness_pixels or (dark, bright))), noise_crop(dark, bright),
               {"rounded": rounded, "black_level": black_level})
    candidates = [profile_peak(context, e) for e in exponents]
    best = min(candidates, key=lambda point: point.score)
    if refine and len(candidates) > 1:
        refined = _refine_exponent(context, list(exponents), candidates)
        if refined.score < best.score - SIGNIFICANT:
            best = refined
    return best, candidates
