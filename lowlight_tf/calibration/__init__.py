"""Calibration of the paper §3.1 simulation from real dark/bright pairs, and its fidelity report.

Two per-pair estimators of the 5-vector (black_level, w_r, w_g, w_b, gamma_exponent)
(`estimators`): `estimate_paper`, the §3.1 estimators in the authors' order, and `fit_joint`,
our improvement (the gamma exponent and the noise peak searched together, each candidate scored
on the dark means against the exact mean of the noisy 8-bit composite, `moments`, and on the
dark image's high-pass noise; `joint`).

The per-pair parameters give the distribution (mean, covariance across pairs, as §3.1). For
`joint`, the exponent is shared by all pairs (the candidate with the lowest total score; the
peak that matches a given noise level depends steeply on the exponent, so peaks fitted with
different exponents cannot be averaged), and the per-pair peaks give one `noise_peak`
(geometric mean).

Optionally (`calibrate(tone_curve=True)`, beyond the paper) a camera tone curve shared by all
pairs is fitted first (`fit_tone_curve`, `lowlight_tf.curves`) and the per-pair parameters are
then fitted on (dark, T(bright)); the preset carries T.

`fidelity` measures how close simulated dark images are to real ones on held-out pairs, for
either simulation model.

Beyond the paper, `calibrate_isp` (module `isp`) fits the ISP-aware model of
`lowlight_tf.simulation_isp`: per-pair exposure ratios, per-channel noise level functions and
the noise's spatial correlation.

Modules: `pairs` (reading and splitting pairs), `estimators`, `joint` and `moments` (the joint
fit), `noise`, `report` (fidelity), `fit` (`calibrate`, the distribution), `isp`. This package
exposes their public API, so callers write `calibration.calibrate`, `calibration.load_pairs`,
`calibration.CalibrationError`, ...
Images are NumPy float32 [H, W, 3] in [0, 255].
"""
from lowlight_tf.calibration.estimators import (JOINT_EXPONENTS, METHODS, PIXEL_RANGE,
                                                composite_noise_free, estimate_pair,
                                                estimate_paper, fit_composite, fit_joint)
from lowlight_tf.calibration.report import (channel_noise, fidelity, fidelity_report,
                                            format_fidelity_table, image_statistics,
                                            neighbour_correlation, simulate_pair,
                                            summarise_fidelity)
from lowlight_tf.calibration.fit import (calibrate, fit_distribution, fit_tone_curve,
                                         scale_exposure_spread)
from lowlight_tf.calibration.noise import (NOISE_CROP, NOISE_LEVEL_EDGES, NOISE_PEAK_RANGE,
                                           NOISE_SIGMA, central_crop, estimate_noise_peak,
                                           noise_curve, noise_energy, noise_mask)
from lowlight_tf.calibration.pairs import (CalibrationError, Pair,
                                           id_sort_key, load_pair_folder, load_pairs,
                                           parse_id_list, read_image, split_pairs)
from lowlight_tf.calibration.isp import calibrate_isp, exposure_ratio
