"""ISP-aware low-light simulation (beyond the paper's §3.1 composite), as vectorised TF ops.

After Brooks et al., "Unprocessing Images for Learned Raw Denoising" (CVPR 2019, §3: invert the
camera's tone, colour matrix and white balance to reach linear camera RGB; §3.2 noise on the
raw signal; §4 re-render), with the noise formation of ELD (Wei et al., CVPR 2020, §3.1: shot
noise whose variance grows with the signal, plus signal-independent read noise). A camera's
dark frame is not the bright image with i.i.d. noise: its noise went through demosaicing and
the colour/tone rendering, so it is spatially correlated, chroma-structured and differs per
channel. From a bright sRGB image B (float32 [B, H, W, 3] in [0, 255]):

    L   = srgb_to_linear(B / 255)                   linear sRGB in [0, 1]      (IEC 61966-2-1),
                                                    or T(B) / 255 with a calibrated tone curve T
    C   = (L M^-T) / wb                             camera RGB (M: camera -> sRGB colour matrix,
                                                    rows summing to 1; wb: white-balance gains)
    D   = k * C                                     per-channel exposure_ratio k [3] in (0, 1]
    D'  = D + sqrt(s * g * max(D, 0) + r^2) * n     shot_gain g [3] (variance per unit linear
                                                    signal), read_noise r [3] (std, linear
                                                    units), per-image shot scale s; n ~ N(0, 1),
                                                    i.i.d. or blurred by a unit-energy Gaussian
                                                    of `noise_blur` px; with `bayer` drawn on an
                                                    RGGB mosaic of D and bilinearly demosaiced
    out = 255 * linear_to_srgb(clip((D' * wb) M^T, 0, 1)), rounded to 8 bits if quantised

The per-channel exposure ratio is the common exposure times the change of white balance between
the dark and the bright rendering, so it also carries the dark image's colour cast.
The optional tone curve T (float [3, 256], `simulation_tone.apply_tone_curve`) is the camera's
bright rendering inverted: linear light x 255 per 8-bit bright value, fitted from pairs
(`calibration.isp`) where the sRGB curve does not describe how the camera renders (highlight
compression); the dark image is still rendered with the sRGB curve. Per image,
ln k ~ N(log_exposure_mean, log_exposure_cov) and ln s ~ N(0, log_shot_gain_std^2) (named
sampler `sample_isp_params`); the transforms are deterministic, the noise drawn from a
stateless seed, so the same seed and inputs give bit-identical outputs. Calibrated from real
pairs by `lowlight_tf.calibration.isp`; held by a `simulation.SimulationPreset` with
model="isp".
"""
import dataclasses

import numpy as np
import tensorflow as tf

from lowlight_tf.simulation_tone import apply_tone_curve

PAPER_MODEL = "paper_composite"
ISP_MODEL = "isp"
MODELS = (PAPER_MODEL, ISP_MODEL)
# One row per image of `sample_isp_params`: the per-channel exposure ratios and the shot scale.
ISP_PARAMETER_NAMES = ("exposure_r", "exposure_g", "exposure_b", "shot_scale")
# RGGB: (row parity, column parity) of the red, the two green and the blue sites.
BAYER_SITES = {0: ((0, 0),), 1: ((0, 1), (1, 0)), 2: ((1, 1),)}


@dataclasses.dataclass
class IspParams:
    """Camera and noise parameters of the ISP model (a preset's `isp` dict).

    Attributes (RGB order, linear units where the signal is in [0, 1]):
      log_exposure_mean: float64 [3], mean of ln(exposure_ratio) per channel.
      log_exposure_cov: float64 [3, 3], covariance of ln(exposure_ratio) across images.
      shot_gain: float64 [3], >= 0: shot-noise variance per unit of linear raw signal.
      read_noise: float64 [3], >= 0: read-noise std in linear raw units.
      log_shot_gain_std: float >= 0, spread of the per-image shot scale (ln s ~ N(0, std^2)).
      bayer: noise drawn on an RGGB mosaic and bilinearly demosaiced (spatially correlated).
      noise_blur: float >= 0, Gaussian sigma (px) correlating the noise field; 0 = none.
      ccm: float64 [3, 3], camera RGB -> linear sRGB, rows sum to 1 (identity: none).
      wb_gains: float64 [3], > 0, white-balance gains applied to camera RGB.
    """
    log_exposure_mean: np.ndarray
    log_exposure_cov: np.ndarray
    shot_gain: np.ndarray
    read_noise: np.ndarray
    log_shot_gain_std: float = 0.0
    bayer: bool = False
    noise_blur: float = 0.0
    ccm: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    wb_gains: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3))

    def to_json(self):
        """A JSON-ready dict (the `isp` key of a preset file)."""
        def plain(value):
            return np.asarray(value, np.float64).tolist()
        return {"log_exposure_mean": plain(self.log_exposure_mean),
                "log_exposure_cov": plain(self.log_exposure_cov),
                "shot_gain": plain(self.shot_gain), "read_noise": plain(self.read_noise),
                "log_shot_gain_std": float(self.log_shot_gain_std), "bayer": bool(self.bayer),
                "noise_blur": float(self.noise_blur), "ccm": plain(self.ccm),
                "wb_gains": plain(self.wb_gains)}


def _array(data, key, shape, name, default=None):
    """data[key] as float64 of `shape`, finite; ValueError naming the preset and key."""
    if key not in data and default is None:
        raise ValueError(f"Preset {name}: the `isp` dict lacks `{key}` (shape {list(shape)}); "
                         "regenerate it with tools/calibrate_simulation --model=isp.")
    value = np.asarray(data.get(key, default), np.float64)
    if value.shape != shape or not np.all(np.isfinite(value)):
        raise ValueError(f"Preset {name}: `isp.{key}` must be finite with shape {list(shape)}, "
                         f"got shape {list(value.shape)}.")
    return value


def isp_from_json(data, name="<dict>"):
    """Validate the `isp` dict of a preset file and return IspParams; ValueError if unusable."""
    if not isinstance(data, dict):
        raise ValueError(f"Preset {name}: `isp` must be a dict of ISP parameters, got "
                         f"{type(data).__name__}.")
    params = IspParams(
        log_exposure_mean=_array(data, "log_exposure_mean", (3,), name),
        log_exposure_cov=_array(data, "log_exposure_cov", (3, 3), name),
        shot_gain=_array(data, "shot_gain", (3,), name),
        read_noise=_array(data, "read_noise", (3,), name),
        log_shot_gain_std=float(data.get("log_shot_gain_std", 0.0)),
        bayer=bool(data.get("bayer", False)), noise_blur=float(data.get("noise_blur", 0.0)),
        ccm=_array(data, "ccm", (3, 3), name, np.eye(3)),
        wb_gains=_array(data, "wb_gains", (3,), name, np.ones(3)))
    cov = params.log_exposure_cov
    problems = []
    if not np.allclose(cov, cov.T, atol=1e-9) or np.linalg.eigvalsh(cov).min() < -1e-9:
        problems.append("`log_exposure_cov` must be symmetric positive semi-definite")
    if params.shot_gain.min() < 0 or params.read_noise.min() < 0:
        problems.append("`shot_gain` and `read_noise` must be >= 0")
    if not (params.log_shot_gain_std >= 0 and params.noise_blur >= 0):
        problems.append("`log_shot_gain_std` and `noise_blur` must be >= 0")
    if params.wb_gains.min() <= 0 or abs(np.linalg.det(params.ccm)) < 1e-6:
        problems.append("`wb_gains` must be > 0 and `ccm` invertible")
    if problems:
        raise ValueError(f"Preset {name}: " + "; ".join(problems) + ". Regenerate it with "
                         "tools/calibrate_simulation --model=isp.")
    return params


# ---------------------------------------------------------------------------------------------
# Deterministic transforms (images float32, linear values in [0, 1] unless stated).
# ---------------------------------------------------------------------------------------------
def srgb_to_linear(srgb):
    """Invert the sRGB transfer curve (IEC 61966-2-1): float [..] in [0, 1] -> linear [0, 1]."""
    srgb = tf.clip_by_value(tf.convert_to_tensor(srgb, tf.float32), 0.0, 1.0)
    return tf.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear):
    """The sRGB transfer curve: float [..] linear, clipped to [0, 1] -> sRGB in [0, 1]."""
    linear = tf.clip_by_value(tf.convert_to_tensor(linear, tf.float32), 0.0, 1.0)
    # The maximum keeps pow's argument positive in the branch tf.where discards.
    powered = 1.055 * tf.maximum(linear, 0.0031308) ** (1.0 / 2.4) - 0.055
    return tf.where(linear <= 0.0031308, linear * 12.92, powered)


def apply_colour(image, matrix):
    """Multiply every pixel of float32 [B, H, W, 3] by a 3x3 matrix: out_c = sum_d M[c, d] x_d."""
    return tf.einsum("bhwd,cd->bhwc", image, tf.constant(matrix, tf.float32))


def bayer_mask(height, width):
    """One-hot RGGB site map: float32 [H, W, 3], mask[y, x, c] = 1 where the site senses c."""
    rows = tf.range(height)[:, None] % 2
    cols = tf.range(width)[None, :] % 2
    planes = []
    for channel in range(3):
        site = tf.zeros([height, width], tf.bool)
        for row, col in BAYER_SITES[channel]:
            site = tf.logical_or(site, tf.logical_and(tf.equal(rows, row), tf.equal(cols, col)))
        planes.append(tf.cast(site, tf.float32))
    return tf.stack(planes, axis=-1)


def demosaic_bilinear(sparse):
    """Bilinear demosaic of an RGGB mosaic given as its one-hot planes.

    Args:
      sparse: float32 [B, H, W, 3], each pixel's value in its site's channel and 0 elsewhere
        (mosaic * `bayer_mask`).
    Returns:
      float32 [B, H, W, 3]: each channel's missing sites are the mean of their nearest sites of
      that channel (2 or 4 neighbours; kernels [1 2 1]^T [1 2 1] / 4 for red and blue, the cross
      / 4 for green), sensed sites are kept. Borders are mirrored, which keeps the RGGB parity.
    """
    box = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 4.0
    cross = np.array([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0
    kernel = tf.constant(np.stack([box, cross, box], axis=-1)[:, :, :, None], tf.float32)
    padded = tf.pad(sparse, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")


def blur_noise(noise, sigma):
    """Correlate a unit-variance noise field with a Gaussian of sigma px, keeping unit variance.

    Args:
      noise: float32 [B, H, W, C], i.i.d. N(0, 1).
      sigma: float >= 0 (Python); 0 returns `noise` unchanged.
    Returns:
      float32 [B, H, W, C], per-pixel variance 1 (the kernel has unit energy), mirrored borders.
    """
    if sigma <= 0:
        return noise
    radius = int(np.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= np.sqrt(np.sum(taps ** 2))  # the separable 2-D kernel outer(taps, taps) has unit energy
    channels = int(noise.shape[-1])
    column = tf.constant(np.tile(taps[:, None, None, None], (1, 1, channels, 1)), tf.float32)
    padded = tf.pad(noise, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, column, strides=[1, 1, 1, 1], padding="VALID")
    row = tf.transpose(column, [1, 0, 2, 3])
    return tf.nn.depthwise_conv2d(blurred, row, strides=[1, 1, 1, 1], padding="VALID")


def unprocess(bright, isp, tone_curve=None):
    """Bright sRGB float32 [B, H, W, 3] in [0, 255] -> linear camera RGB (Brooks et al. §3).

    The tone is inverted by the sRGB curve, or by `tone_curve` (float [3, 256], linear light
    x 255 per 8-bit value) when given.
    """
    if tone_curve is not None:
        linear = apply_tone_curve(bright, tone_curve) / 255.0
    else:
        linear = srgb_to_linear(tf.convert_to_tensor(bright, tf.float32) / 255.0)
    camera = apply_colour(linear, np.linalg.inv(isp.ccm))
    return camera / tf.constant(isp.wb_gains, tf.float32)


def render(camera, isp):
    """Linear camera RGB float32 [B, H, W, 3] -> sRGB float32 in [0, 255] (not quantised)."""
    linear = apply_colour(camera * tf.constant(isp.wb_gains, tf.float32), isp.ccm)
    return 255.0 * linear_to_srgb(linear)


def add_sensor_noise(raw, shot_gain, read_noise, isp, *, seed):
    """Add heteroscedastic shot and read noise (ELD §3.1, Gaussian approximation), on a mosaic.

    Args:
      raw: float32 [B, H, W, 3], linear camera RGB of the dark exposure, >= 0.
      shot_gain: float32 [B, 3], shot-noise variance per unit signal of each image and channel.
      read_noise: float32 [3], read-noise std (linear units).
      isp: IspParams (`bayer`, `noise_blur`).
      seed: int [2] stateless seed.
    Returns:
      float32 [B, H, W, 3], the noisy linear signal (may be negative). With `isp.bayer` only the
      RGGB site of each pixel is sensed and the result is bilinearly demosaiced.
    """
    raw = tf.convert_to_tensor(raw, tf.float32)
    shape = tf.shape(raw)
    gain = tf.reshape(tf.convert_to_tensor(shot_gain, tf.float32), [-1, 1, 1, 3])
    read_variance = tf.square(tf.constant(np.asarray(read_noise), tf.float32))
    variance = gain * tf.maximum(raw, 0.0) + read_variance
    if not isp.bayer:
        noise = blur_noise(tf.random.stateless_normal(shape, seed), isp.noise_blur)
        return raw + tf.sqrt(variance) * noise
    mask = bayer_mask(shape[1], shape[2])
    site_variance = tf.reduce_sum(variance * mask, axis=-1, keepdims=True)  # [B, H, W, 1]
    noise = blur_noise(tf.random.stateless_normal(tf.concat([shape[:3], [1]], 0), seed),
                       isp.noise_blur)
    mosaic = tf.reduce_sum(raw * mask, axis=-1, keepdims=True) + tf.sqrt(site_variance) * noise
    return demosaic_bilinear(mosaic * mask)


def simulate_isp(bright, params, isp, *, seed, quantize=True, noise=True, tone_curve=None):
    """Simulate dark sRGB images with the ISP model (module docstring for the equations).

    Args:
      bright: float32 [B, H, W, 3] in [0, 255], sRGB.
      params: float32 [B, 4], one row (exposure_r, exposure_g, exposure_b, shot_scale) per image
        (ISP_PARAMETER_NAMES; exposure ratios in (0, 1], shot scale > 0).
      isp: IspParams.
      seed: int [2] stateless seed of the noise.
      quantize: round to integer 8-bit values (a camera writes 8-bit dark images).
      noise: False gives the noise-free rendering (for fidelity reports).
      tone_curve: None (invert the sRGB curve) or float [3, 256], the bright image's linear
        light x 255 per 8-bit value (see the module docstring).
    Returns:
      float32 [B, H, W, 3] in [0, 255]. Same seed and inputs give bit-identical outputs.
    """
    params = tf.convert_to_tensor(params, tf.float32)
    camera = unprocess(bright, isp, tone_curve)  # sRGB -> linear sRGB -> camera RGB
    raw = camera * params[:, None, None, 0:3]  # the dark exposure, per channel
    if noise:
        shot_gain = params[:, 3:4] * tf.constant(isp.shot_gain[None], tf.float32)
        raw = add_sensor_noise(raw, shot_gain, isp.read_noise, isp, seed=seed)  # shot + read
    dark = render(raw, isp)  # white balance, colour matrix, sRGB tone
    if quantize:
        dark = tf.clip_by_value(tf.round(dark), 0.0, 255.0)  # the camera's 8-bit file
    return dark


def sample_isp_params(n, isp, *, seed):
    """Draw per-image parameters: ln k ~ N(mean, cov) per channel, ln s ~ N(0, std^2).

    Args:
      n: int (or scalar int tensor), number of rows.
      isp: IspParams.
      seed: int [2] stateless seed.
    Returns:
      float32 [n, 4], rows (exposure_r, exposure_g, exposure_b, shot_scale), all > 0.
    """
    cov = np.asarray(isp.log_exposure_cov, np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh((cov + cov.T) / 2)
    root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))  # singular cov allowed
    scale = np.zeros((4, 4))
    scale[:3, :3], scale[3, 3] = root, isp.log_shot_gain_std
    normal = tf.random.stateless_normal(tf.stack([tf.convert_to_tensor(n, tf.int32), 4]), seed,
                                        dtype=tf.float64)
    mean = np.append(isp.log_exposure_mean, 0.0)
    return tf.cast(tf.exp(mean + tf.matmul(normal, tf.constant(scale), transpose_b=True)),
                   tf.float32)


def median_params(isp):
    """The distribution's median row float32 [4]: exp(log_exposure_mean), shot scale 1."""
    return np.append(np.exp(isp.log_exposure_mean), 1.0).astype(np.float32)
