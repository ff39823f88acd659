#!/usr/bin/env python3
"""A strong classical baseline for zero-shot: the camera's mean dark->bright curve from a few pairs.

For each channel, the mean bright value of every 8-bit dark value is pooled over the calibration
pairs (the same pairs the simulation is calibrated on), interpolated over dark values no pixel
had, and applied to the held-out dark images as a lookup table, optionally after a Gaussian blur
(a classical denoiser): lowlight_tf.curves.fit_dark_to_bright_curve and baselines.apply_curve,
which tools/reproduce reports as the `calibrated curve` row with the 1-pixel blur. It needs the
same 8 pairs as our zero-shot model and no training, so it is the bar a model pretrained on
simulated pairs has to clear on the same camera.

  python benchmarks/curve_baseline.py --pairs=../shared/data/eliei/rgb_dev \
      --fit_ids=4-5,29-30,38,294-295,317

Prints PSNR (paper §3.3 8-bit formula), SSIM and GT-mean PSNR averaged over the held-out pairs,
for the curve alone and after each blur, plus an oracle whose curve is pooled from the held-out
pairs themselves (an upper bound for any global curve).
"""
import os
import sys

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lowlight_tf import baselines, calibration, curves, metrics  # noqa: E402  pylint: disable=C0413

_PAIRS = flags.DEFINE_string("pairs", "../shared/data/eliei/rgb_dev",
                             "Folder with low/ and high/ real pairs.")
_FIT_IDS = flags.DEFINE_list("fit_ids", ["4-5", "29-30", "38", "294-295", "317"],
                             "Pairs the curve is pooled from; every other pair is evaluated.")
_BLURS = flags.DEFINE_list("blurs", ["0", "1.0", "1.5"],
                           "Gaussian blur sigmas (pixels) applied to the dark image first.")


def scores(curve, pairs, blur):
    rows = []
    for pair in pairs:
        prediction = np.round(baselines.apply_curve(pair.dark, curve, blur))
        reference = pair.bright.astype(np.float32)
        rows.append((float(metrics.psnr(prediction, reference)),
                     float(metrics.ssim(prediction, reference)),
                     float(metrics.psnr_gt_mean(prediction, reference))))
    return np.mean(rows, axis=0)


def main(argv):
    del argv
    if not os.path.isdir(_PAIRS.value):
        print(f"curve_baseline: {_PAIRS.value} is not a folder of low/ and high/ pairs; skipping.")
        return 0
    pairs = calibration.load_pairs(_PAIRS.value)
    fit_ids = calibration.parse_id_list(_FIT_IDS.value)
    fit, held_out = calibration.split_pairs(pairs, fit_ids=fit_ids)
    print(f"curve pooled from {len(fit)} pairs ({','.join(p.id for p in fit)}); "
          f"evaluated on {len(held_out)} held-out pairs")
    print(f"{'method':<46} {'PSNR':>6} {'SSIM':>6} {'GT-mean PSNR':>13}")
    for label, source in (("calibration-pair curve", fit), ("oracle: held-out pairs' own curve",
                                                            held_out)):
        curve = curves.fit_dark_to_bright_curve(source)
        for blur in (float(b) for b in _BLURS.value):
            psnr, ssim, gt_mean = scores(curve, held_out, blur)
            name = label + (f" + blur {blur:g}" if blur else "")
            print(f"{name:<46} {psnr:6.2f} {ssim:6.3f} {gt_mean:13.2f}")
    return 0


if __name__ == "__main__":
    app.run(main)
