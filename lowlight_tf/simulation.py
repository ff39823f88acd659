"""Low-light simulation of paper §3.1: dark images from bright ones, as vectorised TensorFlow ops.

The paper simulates a dark image D from a bright image B with the composite function

    f(B | bl, w_r, w_g, w_b, e) = GC(PN(CD(BL(B))))                       (§3.1, eq. for f)

on 8-bit values in [0, 255]:

    BL(B) = max(B - bl, 0)                     black level, bl in 8-bit units     (§3.1.1)
    CD(B) = [w_r, w_g, w_b] * B                per-channel colour weights          (§3.1.2)
    PN(B) = poisson(B / 255 * peak) / peak * 255                                   (§3.1.3)
    GC(B) = clip(B ** e, 0, 255)               e is the paper's 1/gamma            (§3.1.4)

The paper prints PN with peak = 1; the authors' code used peak = 10. Both are far noisier than
real camera dark images after the camera's processing, so `DEFAULT_NOISE_PEAK` is calibrated from
real pairs (see `lowlight_tf.calibration` and the constant's comment).

Parameters are always the 5-vector (black_level, w_r, w_g, w_b, gamma_exponent), RGB order, 8-bit
units. They are drawn per image from a multivariate normal (the paper insists on correlated
parameters), redrawing non-positive samples as the authors did (a black level of exactly 0 is
kept) (`sample_params`). The transforms
are deterministic; randomness lives only in the named samplers (`sample_params`,
`sample_poisson`), seeded statelessly so the same seed and inputs give bit-identical outputs.

Beyond the paper, a preset may carry a calibrated camera *tone curve* T (float [3, 256], one
monotone curve per channel, `apply_tone_curve`), applied to B before the composite:
f(T(B)). Real cameras do not write a dark exposure as a power law of the bright one: the
references of ELIEI rgb_dev are highlight-compressed (dark 10 -> bright ~140, dark 40 -> ~220),
which the composite's single exponent cannot represent. `lowlight_tf.calibration.fit_tone_curve`
measures T from the calibration pairs; the per-image parameters then model only what varies
between images (exposure, colour, gamma, noise; the black level is fixed at 0, the curve
holding the camera's floor).

Presets (`SimulationPreset`, `load_preset`) hold a distribution, its noise peak, whether simulated
dark images are quantised to 8 bits, the optional tone curve, and where the numbers came from.
`paper` is the authors' distribution shipped in `lowlight_tf/presets/paper.json`; calibration
writes the same JSON format. A preset's `model` chooses the simulation: `paper_composite` (this
module, the default; files without the key) or `isp` (`lowlight_tf.simulation_isp`, its
parameters under the key `isp`); `SimulationPreset.simulate` dispatches.
"""
import dataclasses
import importlib.resources
import json
import os

import numpy as np
import tensorflow as tf

from lowlight_tf import files
from lowlight_tf import simulation_isp
from lowlight_tf.poisson import sample_poisson
from lowlight_tf.simulation_tone import apply_tone_curve, check_tone_curve

PARAMETER_NAMES = ("black_level", "w_r", "w_g", "w_b", "gamma_exponent")
STEPS = ("bl", "cd", "pn", "gc")
# The paper's sub-tasks (§3.3, Figure 5) as step lists.
SUB_TASKS = {
    "bl": ("bl",),
    "bl+cd": ("bl", "cd"),
    "bl+cd+pn": ("bl", "cd", "pn"),
    "bl+cd+pn+gc": ("bl", "cd", "pn", "gc"),
}
PAPER_NOISE_PEAK = 10.0  # the authors' code: poisson(x / 255 * 10) / 10 * 255
# Calibrated with `tools/calibrate_simulation --method=joint --fit_first=8` on ELIEI rgb_dev (fit on
# the 8 pairs with the lowest indices, 4..99): with the shared gamma exponent 1.25 chosen there, the
# peaks at which simulated 8-bit dark images carry the real ones' high-pass noise energy had a
# geometric mean of 7814. Real processed dark images are far cleaner than the paper's peak 1 or the
# authors' 10. The peak's meaning depends on the exponent; presets carry their own.
DEFAULT_NOISE_PEAK = 7800.0
PRESET_DIR = "presets"


class PresetError(ValueError):
    """A preset name or file that cannot be used; the message says which and what to do."""


# ---------------------------------------------------------------------------------------------
# Deterministic transforms.
# ---------------------------------------------------------------------------------------------
def _per_image(values, rank):
    """Reshape a [B] or [B, C] tensor so it broadcasts against a rank-`rank` image batch."""
    values = tf.convert_to_tensor(values, tf.float32)
    if values.shape.rank == 0:
        return values
    if values.shape.rank == 1:
        return tf.reshape(values, [-1] + [1] * (rank - 1))
    return tf.reshape(values, [-1] + [1] * (rank - 2) + [values.shape[-1]])


def black_level(image, level):
    """Paper §3.1.1: BL(B) = max(B - bl, 0).

    Args:
      image: float32 [B, H, W, 3] in 8-bit units (usually [0, 255]).
      level: float32 [B] (or scalar) black level bl in 8-bit units, in [0, 255].
    Returns:
      float32 [B, H, W, 3], >= 0.
    """
    return tf.maximum(image - _per_image(level, 4), 0.0)


def colour_distortion(image, weights):
    """Paper §3.1.2: CD(B) = [w_r, w_g, w_b] * B, one multiplier per channel.

    Args:
      image: float32 [B, H, W, 3] in 8-bit units, >= 0.
      weights: float32 [B, 3] (RGB order), > 0; typically in (0, 1] for darkening.
    Returns:
      float32 [B, H, W, 3], >= 0 (may exceed 255 when a weight exceeds 1).
    """
    return image * _per_image(weights, 4)


def gamma_correction(image, exponent):
    """Paper §3.1.4: GC(B) = clip(B ** e, 0, 255), with e the paper's 1/gamma on 8-bit values.

    Args:
      image: float32 [B, H, W, 3] in 8-bit units, >= 0.
      exponent: float32 [B] (or scalar), > 0 (the authors' values are around 0.67).
    Returns:
      float32 [B, H, W, 3] in [0, 255].
    """
    # exp(e * log x) is about 5x faster than tf.pow on CPU; log(0) = -inf gives exp(-inf) = 0.
    powered = tf.exp(_per_image(exponent, 4) * tf.math.log(tf.maximum(image, 0.0)))
    return tf.clip_by_value(powered, 0.0, 255.0)


def quantize_8bit(image):
    """Round to the nearest integer 8-bit value (ties to even) and clip to [0, 255]; float32."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# Named samplers (the only randomness).
# ---------------------------------------------------------------------------------------------
def poisson_noise(image, noise_peak, *, seed):
    """Paper §3.1.3: PN(B) = poisson(B / 255 * peak) / peak * 255.

    The variance of the output is B * 255 / peak (8-bit units squared); the mean is B.

    Args:
      image: float32 [B, H, W, 3] in 8-bit units, >= 0.
      noise_peak: float, or float32 [B], > 0: the Poisson count of a full-scale (255) value.
        The paper's printed formula is peak 1, the authors' code 10.
      seed: int [2] stateless seed.
    Returns:
      float32 [B, H, W, 3], >= 0, multiples of 255 / peak.
    """
    peak = _per_image(noise_peak, 4)
    counts = sample_poisson(image / 255.0 * peak, seed)
    return counts / peak * 255.0


# ---------------------------------------------------------------------------------------------
# The composite.
# ---------------------------------------------------------------------------------------------
def _check_steps(steps):
    """Validate a step list: a subsequence of STEPS in the paper's order; return it as a tuple."""
    if isinstance(steps, str):
        steps = SUB_TASKS.get(steps, tuple(steps.split("+")))
    steps = tuple(steps)
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"Unknown simulation step(s) {unknown}; use some of {STEPS} in that order "
                         f"or a sub-task name {sorted(SUB_TASKS)}.")
    if list(steps) != sorted(steps, key=STEPS.index) or len(set(steps)) != len(steps):
        raise ValueError(f"Simulation steps {steps} must appear once each in the paper's order "
                         f"{STEPS}.")
    return steps


def simulate(bright, params, *, seed, steps=STEPS, noise_peak=DEFAULT_NOISE_PEAK, quantize=False,
             tone_curve=None):
    """Simulate dark images: f(B) = GC(PN(CD(BL(B)))) of paper §3.1, or a sub-task of it.

    Args:
      bright: float32 [B, H, W, 3] in [0, 255] (RGB, 8-bit units).
      params: float32 [B, 5], one row (black_level, w_r, w_g, w_b, gamma_exponent) per image,
        all > 0 except black_level, in [0, 255].
      seed: int [2] stateless seed; only the Poisson step uses it.
      steps: a subsequence of ("bl", "cd", "pn", "gc") in that order, or a sub-task name of
        `SUB_TASKS` ("bl", "bl+cd", "bl+cd+pn", "bl+cd+pn+gc").
      noise_peak: float or float32 [B], > 0; see `poisson_noise`.
      quantize: if True, round the result to integer 8-bit values (real dark sRGB images are 8-bit).
      tone_curve: None, or float [3, 256]: the camera tone curve applied to `bright` before the
        steps (`apply_tone_curve`), whatever the steps are.
    Returns:
      float32 [B, H, W, 3] in [0, 255]. Same seed and inputs give bit-identical outputs.
    """
    steps = _check_steps(steps)
    bright = tf.convert_to_tensor(bright, tf.float32)
    params = tf.convert_to_tensor(params, tf.float32)
    dark = bright
    if tone_curve is not None:
        dark = apply_tone_curve(dark, tone_curve)  # the camera's dark-exposure tone space
    if "bl" in steps:
        dark = black_level(dark, params[:, 0])  # subtract the black level, floor at 0
    if "cd" in steps:
        dark = colour_distortion(dark, params[:, 1:4])  # per-channel attenuation
    if "pn" in steps:
        dark = poisson_noise(dark, noise_peak, seed=seed)  # shot noise at the given peak
    if "gc" in steps:
        dark = gamma_correction(dark, params[:, 4])  # darken shadows non-uniformly
    dark = tf.clip_by_value(dark, 0.0, 255.0)  # PN and CD may leave [0, 255]
    if quantize:
        dark = quantize_8bit(dark)  # an 8-bit dark image, as a camera writes it
    return dark


def sample_params(n, mean, cov, *, seed, max_rounds=1000):
    """Draw n parameter rows from N(mean, cov), redrawing rows with any value <= 0.

    Each row is redrawn independently until all five values are positive, as the authors did,
    except that a black level of exactly 0 is valid (the tone-curve presets fix it at 0); a row
    therefore follows the normal distribution truncated to the positive orthant. The
    covariance may be singular (fewer pairs than parameters): the square root comes from an
    eigendecomposition, not a Cholesky factor.

    Args:
      n: int (or scalar int tensor), number of rows.
      mean: float [5] in the order of PARAMETER_NAMES.
      cov: float [5, 5] symmetric positive semi-definite.
      seed: int [2] stateless seed.
      max_rounds: give up (InvalidArgumentError) if a row is still non-positive after this many
        draws; only happens for distributions with almost no positive mass.
    Returns:
      float32 [n, 5], black_level >= 0 and every other entry > 0.
    """
    mean = tf.convert_to_tensor(np.asarray(mean, np.float64).reshape(-1), tf.float64)
    cov = np.asarray(cov, np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh((cov + cov.T) / 2)
    root = tf.constant(eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None)), tf.float64)
    dim = int(mean.shape[0])
    seed = tf.convert_to_tensor(seed)
    n = tf.convert_to_tensor(n, tf.int32)

    def draw(round_index):
        round_seed = tf.random.experimental.stateless_fold_in(seed, round_index)
        normal = tf.random.stateless_normal([n, dim], round_seed, dtype=tf.float64)
        return mean + tf.matmul(normal, root, transpose_b=True)

    def body(round_index, rows, done):
        candidate = draw(round_index)
        valid = tf.logical_and(candidate[:, 0] >= 0.0,  # a zero black level is valid
                               tf.reduce_all(candidate[:, 1:] > 0.0, axis=1))
        take = tf.logical_and(valid, tf.logical_not(done))
        rows = tf.where(take[:, None], candidate, rows)
        return round_index + 1, rows, tf.logical_or(done, valid)

    def not_finished(round_index, rows, done):
        return tf.logical_and(round_index < max_rounds, tf.logical_not(tf.reduce_all(done)))

    # Loose invariants: a batch size known statically (e.g. 1) must not pin the loop's shapes.
    _, rows, done = tf.while_loop(
        not_finished, body,
        (tf.constant(0, tf.int32), tf.zeros([n, dim], tf.float64), tf.zeros([n], tf.bool)),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, dim]),
                          tf.TensorShape([None])))
    tf.debugging.assert_equal(
        tf.reduce_all(done), True,
        message=f"sample_params: no positive sample after {max_rounds} draws; the mean/cov put "
                "almost no mass on positive parameters. Check the preset.")
    return tf.cast(rows, tf.float32)


# ---------------------------------------------------------------------------------------------
# Presets.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SimulationPreset:
    """A parameter distribution plus the noise and quantisation settings of the simulation.

    Attributes:
      name: preset name or file path it came from.
      mean: float64 [5], order PARAMETER_NAMES, 8-bit units (None for model "isp").
      cov: float64 [5, 5] covariance (None for model "isp").
      noise_peak: Poisson peak of `poisson_noise`, > 0.
      quantize: whether simulated dark images are rounded to 8-bit values.
      tone_curve: None or float64 [3, 256], the calibrated camera tone curve (`apply_tone_curve`;
        for model "isp" the bright image's linear light x 255 per 8-bit value).
      exposure_curve: None or float64 [3, 256] in [0, 255]: the camera's mean bright value per
        8-bit dark value, pooled over the calibration pairs. The simulation does not use it;
        `lowlight_tf.brightness.anchor_exposure` sets an output's brightness with it.
      provenance: free-form dict (source, method, pairs used, date, ...).
      extra: any other keys of the JSON file (per-pair fits, fidelity table, notes), kept as read.
      model: "paper_composite" (the §3.1 composite) or "isp" (`simulation_isp`).
      isp: `simulation_isp.IspParams` for model "isp", else None.
    """
    name: str
    mean: np.ndarray
    cov: np.ndarray
    noise_peak: float = DEFAULT_NOISE_PEAK
    quantize: bool = False
    tone_curve: np.ndarray = None
    exposure_curve: np.ndarray = None
    provenance: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    model: str = simulation_isp.PAPER_MODEL
    isp: simulation_isp.IspParams = None

    def sample(self, n, *, seed):
        """Draw per-image parameters: float32 [n, 5] (`sample_params`) or [n, 4] for "isp"."""
        if self.model == simulation_isp.ISP_MODEL:
            return simulation_isp.sample_isp_params(n, self.isp, seed=seed)
        return sample_params(n, self.mean, self.cov, seed=seed)

    def simulate(self, bright, *, seed, steps=STEPS):
        """Sample one parameter row per image and simulate; returns (dark, params).

        Args:
          bright: float32 [B, H, W, 3] in [0, 255].
          seed: int [2] stateless seed (split into a parameter seed and a noise seed).
          steps: see `simulate`; the "isp" model has no sub-tasks (only the full STEPS).
        Returns:
          dark float32 [B, H, W, 3] in [0, 255], params float32 [B, 5] ([B, 4] for "isp").
        """
        bright = tf.convert_to_tensor(bright, tf.float32)
        param_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        params = self.sample(tf.shape(bright)[0], seed=param_seed)
        if self.model == simulation_isp.ISP_MODEL:
            if _check_steps(steps) != STEPS:
                raise ValueError(f"Preset {self.name} uses the ISP model, which has no sub-tasks;"
                                 f" got steps {steps}. Use the full simulation or a composite "
                                 "preset.")
            return simulation_isp.simulate_isp(bright, params, self.isp, seed=noise_seed,
                                               quantize=self.quantize,
                                               tone_curve=self.tone_curve), params
        dark = simulate(bright, params, seed=noise_seed, steps=steps, noise_peak=self.noise_peak,
                        quantize=self.quantize, tone_curve=self.tone_curve)
        return dark, params

    def to_json(self):
        """Return a JSON-ready dict with the keys of the authors' file plus ours."""
        data = dict(self.extra, model=self.model)
        if self.model == simulation_isp.ISP_MODEL:
            data.update(parameters=list(simulation_isp.ISP_PARAMETER_NAMES), channel_order="RGB",
                        isp=self.isp.to_json(), quantize=bool(self.quantize),
                        provenance=self.provenance)
            return _with_curves(data, self)
        data.update({
            "parameters": list(PARAMETER_NAMES),
            "channel_order": "RGB",
            "mean": [float(v) for v in self.mean],
            "covariance": [[float(v) for v in row] for row in self.cov],
            "noise_peak": float(self.noise_peak),
            "quantize": bool(self.quantize),
            "provenance": self.provenance,
        })
        return _with_curves(data, self)


def _with_curves(data, preset):
    """`data` plus the preset's tone and exposure curves (rounded), when it has them."""
    for key in ("tone_curve", "exposure_curve"):
        if getattr(preset, key) is not None:
            data[key] = [[round(float(v), 4) for v in row] for row in getattr(preset, key)]
    return data


def preset_from_json(data, name="<dict>"):
    """Build a SimulationPreset from a dict in the authors' format (plus optional keys).

    Required keys: `mean` [5], `covariance` [5, 5]. Optional: `parameters` (names; any
    permutation of PARAMETER_NAMES is reordered, e.g. the authors' BGR order), `noise_peak`
    (default DEFAULT_NOISE_PEAK), `quantize` (default False), `tone_curve` ([3, 256], default
    none), `exposure_curve` ([3, 256], default none), `provenance`, `model` (default
    "paper_composite"). With `model` "isp" the key `isp` (`simulation_isp.isp_from_json`)
    replaces `mean`, `covariance` and `noise_peak`, `quantize` defaults to True, and the tone
    curve is the bright image's linear light (x 255) per 8-bit value (`simulation_isp`).
    """
    model = data.get("model", simulation_isp.PAPER_MODEL)
    if model not in simulation_isp.MODELS:
        raise PresetError(f"Preset {name}: unknown `model` {model!r}; use one of "
                          f"{simulation_isp.MODELS}.")
    known = {"parameters", "channel_order", "mean", "covariance", "noise_peak", "quantize",
             "provenance", "tone_curve", "exposure_curve", "model", "isp"}
    tone_curve = data.get("tone_curve")
    if tone_curve is not None:
        try:
            tone_curve = check_tone_curve(tone_curve, f"Preset {name}: `tone_curve`")
        except ValueError as error:
            raise PresetError(f"{error} Regenerate the preset with tools/calibrate_simulation "
                              "--tone_curve.") from error
    common = dict(name=name, model=model, exposure_curve=_exposure_curve(data, name),
                  tone_curve=tone_curve, provenance=dict(data.get("provenance", {})),
                  extra={k: v for k, v in data.items() if k not in known})
    if model == simulation_isp.ISP_MODEL:
        try:
            isp = simulation_isp.isp_from_json(data.get("isp"), name)
        except ValueError as error:
            raise PresetError(str(error)) from error
        return SimulationPreset(mean=None, cov=None, isp=isp,
                                quantize=bool(data.get("quantize", True)), **common)
    mean, cov = _distribution(data, name)
    noise_peak = float(data.get("noise_peak", DEFAULT_NOISE_PEAK))
    if not noise_peak > 0:
        raise PresetError(f"Preset {name}: `noise_peak` must be > 0, got {noise_peak}.")
    return SimulationPreset(mean=mean, cov=cov, noise_peak=noise_peak,
                            quantize=bool(data.get("quantize", False)), **common)


def _distribution(data, name):
    """The composite's `mean` [5] and `covariance` [5, 5] of a preset dict, in PARAMETER_NAMES
    order (float64); PresetError if missing or malformed."""
    missing = [key for key in ("mean", "covariance") if key not in data]
    if missing:
        raise PresetError(f"Preset {name} lacks the key(s) {missing}; a preset JSON needs `mean` "
                          f"[5] and `covariance` [5x5] in the order {PARAMETER_NAMES}.")
    mean = np.asarray(data["mean"], np.float64)
    cov = np.asarray(data["covariance"], np.float64)
    if mean.shape != (5,) or cov.shape != (5, 5):
        raise PresetError(f"Preset {name}: `mean` must have 5 values and `covariance` 5x5, got "
                          f"shapes {mean.shape} and {cov.shape}.")
    names = tuple(data.get("parameters", PARAMETER_NAMES))
    if names != PARAMETER_NAMES:
        if sorted(names) != sorted(PARAMETER_NAMES):
            raise PresetError(f"Preset {name}: `parameters` {names} must be a permutation of "
                              f"{PARAMETER_NAMES}.")
        order = [names.index(p) for p in PARAMETER_NAMES]
        mean, cov = mean[order], cov[np.ix_(order, order)]
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-9):
        raise PresetError(f"Preset {name}: `covariance` is not symmetric.")
    if np.linalg.eigvalsh(cov).min() < -1e-8 * max(1.0, np.abs(cov).max()):
        raise PresetError(f"Preset {name}: `covariance` is not positive semi-definite.")
    return mean, cov


def _exposure_curve(data, name):
    """The optional `exposure_curve` of a preset dict: None or float64 [3, 256] in [0, 255]."""
    exposure_curve = data.get("exposure_curve")
    if exposure_curve is None:
        return None
    exposure_curve = np.asarray(exposure_curve, np.float64)
    if exposure_curve.shape != (3, 256) or not np.all(np.isfinite(exposure_curve)) \
            or exposure_curve.min() < 0 or exposure_curve.max() > 255:
        raise PresetError(f"Preset {name}: `exposure_curve` must be [3, 256] values in "
                          f"[0, 255], got shape {exposure_curve.shape}. Regenerate the preset "
                          "with tools/calibrate_simulation.")
    return exposure_curve


def available_presets():
    """Names of the presets shipped with the package (lowlight_tf/presets/*.json)."""
    folder = importlib.resources.files("lowlight_tf") / PRESET_DIR
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_preset(name_or_path):
    """Load a preset by name (`paper`, shipped in lowlight_tf/presets/) or from a JSON path.

    Calibration outputs (`tools/calibrate_simulation --output=...`) load the same way.

    Raises:
      PresetError: unknown name, missing or malformed file (the message says what to do).
    """
    if isinstance(name_or_path, SimulationPreset):
        return name_or_path
    text = str(name_or_path)
    if os.path.sep not in text and not text.endswith(".json"):
        resource = importlib.resources.files("lowlight_tf") / PRESET_DIR / f"{text}.json"
        if not resource.is_file():
            raise PresetError(f"Unknown simulation preset {text!r}; use one of "
                              f"{available_presets()} or the path of a JSON file written by "
                              "tools/calibrate_simulation.")
        return preset_from_json(json.loads(resource.read_text(encoding="utf-8")), name=text)
    if not os.path.isfile(text):
        raise PresetError(f"Simulation preset file {text} does not exist; pass a preset name "
                          f"({available_presets()}) or the JSON written by "
                          "tools/calibrate_simulation.")
    try:
        with open(text, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        raise PresetError(f"Cannot read simulation preset {text}: {error}. Regenerate it with "
                          "tools/calibrate_simulation.") from error
    return preset_from_json(data, name=text)


def load_exposure_curve(name_or_path):
    """The `exposure_curve` [3, 256] of a preset; PresetError if it has none (or is unreadable)."""
    curve = load_preset(name_or_path).exposure_curve
    if curve is None:
        raise PresetError(f"--exposure_preset={name_or_path} holds no exposure curve (presets "
                          "calibrated before it existed, and the paper's, have none); "
                          "recalibrate with tools/calibrate_simulation.")
    return curve


def save_preset(preset, path):
    """Write `preset` as JSON (the format `load_preset` reads), atomically."""
    with files.atomic_write(path) as stream:
        json.dump(preset.to_json(), stream, indent=1)
        stream.write("\n")
