#!/usr/bin/env python3
"""How a model's output brightness compares with the reference, on real and simulated darks.

RESULTS.md, Diagnosis 3: for each real pair, the ratio mean(output) / mean(reference) of the
model on the real dark image, on dark images simulated from the pair's bright image with
parameters drawn from a preset, and (when the preset carries one) of the calibrated exposure
curve (`brightness.expected_brightness`). A ratio that falls as the reference gets brighter is
regression of brightness towards the training photos' typical level.

  python benchmarks/exposure_bias.py --model=runs/reproduce_eliei/models/pretrain/final.keras \\
      --pairs=runs/reproduce_eliei/tfrecords/target:calib \\
      --simulation_params=runs/reproduce_eliei/simulation_params.json
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

_MODEL = flags.DEFINE_string("model", None, "The model (.keras file or tools/train model_dir).")
_PAIRS = flags.DEFINE_multi_string("pairs", None, "Real pairs: a low/ + high/ folder or a "
                                   "pairs dataset OUTPUT_DIR/NAME:split; repeat for several.")
_PARAMS = flags.DEFINE_string("simulation_params", None, "The preset the model was trained "
                              "with (name or JSON); its draws simulate the comparison darks.")
_DRAWS = flags.DEFINE_integer("draws", 4, "Simulated dark images per pair.", lower_bound=1)
flags.mark_flags_as_required(["model", "pairs", "simulation_params"])


def _geomean(values):
    return float(np.exp(np.mean(np.log(np.maximum(values, 1e-6)))))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset it opens at INFO
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from lowlight_tf import brightness as brightness_lib
    from lowlight_tf import calibration, inference, simulation
    from lowlight_tf import model as model_lib
    try:
        model = model_lib.load_model(_MODEL.value)
        preset = simulation.load_preset(_PARAMS.value)
        sets = [(spec, calibration.load_pairs(spec)) for spec in _PAIRS.value]
    except (model_lib.ModelLoadError, simulation.PresetError, calibration.CalibrationError) as e:
        print(f"exposure_bias: error: {e}", file=sys.stderr)
        return 2
    curve = preset.exposure_curve
    for spec, pairs in sets:
        print(f"\n{spec}: output mean / reference mean")
        print(f"{'pair':>10} {'ref mean':>9} {'real':>7} {'simulated':>10}"
              + (f" {'exp. curve':>10}" if curve is not None else ""))
        real, simulated, curved = [], [], []
        for index, pair in enumerate(pairs):
            reference = pair.bright.mean()
            real.append(inference.predict_image(model, pair.dark).mean() / reference)
            draws = []
            for draw in range(_DRAWS.value):
                dark, _ = preset.simulate(tf.constant(pair.bright[None]),
                                          seed=tf.constant([index, draw]))
                draws.append(inference.predict_image(model, dark[0].numpy()).mean() / reference)
            simulated.append(_geomean(draws))
            line = f"{pair.id:>10} {reference / 255:>9.3f} {real[-1]:>7.3f} {simulated[-1]:>10.3f}"
            if curve is not None:
                curved.append(255.0 * brightness_lib.expected_brightness(pair.dark / 255.0, curve)
                              / reference)
                line += f" {curved[-1]:>10.3f}"
            print(line, flush=True)
        summary = f"{'geo. mean':>10} {'':>9} {_geomean(real):>7.3f} {_geomean(simulated):>10.3f}"
        if curved:
            summary += f" {_geomean(curved):>10.3f}"
        print(summary)
        brightness = np.log([p.bright.mean() for p in pairs])
        if len(pairs) > 2:
            slope = np.polyfit(brightness, np.log(real), 1)[0]
            print(f"slope of log(real ratio) on log(reference mean): {slope:+.2f} "
                  "(0: no regression to the mean; -1: every output equally bright)")
    return 0


if __name__ == "__main__":
    app.run(main)
