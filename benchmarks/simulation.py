#!/usr/bin/env python3
"""Throughput of the paper §3.1 simulation: 64x64x3 patches per second per CPU core.

Compares, in one run and on one core (TensorFlow intra/inter-op threads = 1):
  - the batched TF composite GC(PN(CD(BL(B)))) with our fast Poisson sampler (what training uses),
  - the same composite with tf.random.stateless_poisson (exact reference sampler),
  - a naive per-pixel NumPy implementation with np.vectorize, as in the authors' code,
and the cost of the camera tone curve (preset eliei_rgb_tone) against the same composite without,
and the ISP-aware model (lowlight_tf.simulation_isp: i.i.d. noise; blurred i.i.d. noise with a
bright tone curve, what the ELIEI calibrations chose; Bayer mosaic + bilinear demosaic + blurred
noise, its costliest path) against the composite.
Run:  python benchmarks/simulation.py [--batch_size=16] [--seconds=3]
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lowlight_tf import poisson, simulation, simulation_isp  # noqa: E402

PATCH = 64


def composite_exact(bright, params, seed, noise_peak):
    """The composite with the exact TF Poisson sampler (same transforms as simulate)."""
    dark = simulation.black_level(bright, params[:, 0])
    dark = simulation.colour_distortion(dark, params[:, 1:4])
    peak = noise_peak
    dark = poisson.sample_poisson_exact(dark / 255.0 * peak, seed) / peak * 255.0
    dark = simulation.gamma_correction(dark, params[:, 4])
    return tf.clip_by_value(dark, 0.0, 255.0)


def naive_patch(patch, params, noise_peak, rng):
    """Per-pixel NumPy simulation of one patch with np.vectorize (the authors' style)."""
    level, weights, exponent = params[0], params[1:4], params[4]

    def pixel(value, weight):
        x = max(value - level, 0.0) * weight
        x = rng.poisson(x / 255.0 * noise_peak) / noise_peak * 255.0
        return min(x ** exponent, 255.0)

    vectorised = np.vectorize(pixel)
    return np.stack([vectorised(patch[..., c], weights[c]) for c in range(3)], axis=-1)


def time_tf(function, bright, params, noise_peak, seconds):
    """Patches per CPU-second of a traced TF function over repeated batches (new seed each call).

    CPU time of this process (one thread) rather than wall time, so that other processes on a
    shared machine do not lower the per-core figure.
    """
    function(bright, params, tf.constant([0, 0]), noise_peak)  # trace
    count, start, cpu_start, step = 0, time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        function(bright, params, tf.constant([step, 1]), noise_peak).numpy()
        count += int(bright.shape[0])
        step += 1
    return count / (time.process_time() - cpu_start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16, help="Patches per batch.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Timing window per case.")
    parser.add_argument("--naive_patches", type=int, default=8,
                        help="Patches timed for the naive per-pixel baseline.")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    bright = tf.constant(rng.integers(0, 256, (args.batch_size, PATCH, PATCH, 3)), tf.float32)
    presets = [("paper preset, peak 10", simulation.load_preset("paper")),
               (f"paper preset, peak {simulation.DEFAULT_NOISE_PEAK:g} (calibrated default)",
                simulation.load_preset("paper"))]
    presets[1][1].noise_peak = simulation.DEFAULT_NOISE_PEAK
    fast = tf.function(lambda b, p, s, n: simulation.simulate(b, p, seed=s, noise_peak=n))
    exact = tf.function(composite_exact)
    load = os.getloadavg()[0]
    print(f"batch {args.batch_size} x {PATCH}x{PATCH}x3, 1 thread, rates per CPU-second of this "
          f"process; load average {load:.1f} on {os.cpu_count()} cores")
    for label, preset in presets:
        params = preset.sample(args.batch_size, seed=[1, 2])
        peak = tf.constant(preset.noise_peak, tf.float32)
        fast_rate = time_tf(fast, bright, params, peak, args.seconds)
        exact_rate = time_tf(exact, bright, params, peak, args.seconds)
        start = time.process_time()
        for index in range(args.naive_patches):
            naive_patch(bright[index % args.batch_size].numpy(), params[0].numpy(),
                        preset.noise_peak, rng)
        naive_rate = args.naive_patches / (time.process_time() - start)
        print(f"{label}:")
        print(f"  composite, fast sampler : {fast_rate:8.0f} patches/s/core "
              f"({fast_rate / naive_rate:.0f}x naive)")
        print(f"  composite, tf exact     : {exact_rate:8.0f} patches/s/core "
              f"({exact_rate / naive_rate:.0f}x naive)")
        print(f"  naive np.vectorize      : {naive_rate:8.1f} patches/s/core")
    toned = simulation.load_preset("eliei_rgb_tone")
    params = toned.sample(args.batch_size, seed=[1, 2])
    peak = tf.constant(toned.noise_peak, tf.float32)
    curve = tf.constant(toned.tone_curve, tf.float32)
    with_curve = tf.function(lambda b, p, s, n: simulation.simulate(b, p, seed=s, noise_peak=n,
                                                                    tone_curve=curve))
    plain_rate = time_tf(fast, bright, params, peak, args.seconds)
    curve_rate = time_tf(with_curve, bright, params, peak, args.seconds)
    print(f"eliei_rgb_tone preset (peak {toned.noise_peak:.0f}):")
    print(f"  composite               : {plain_rate:8.0f} patches/s/core")
    print(f"  tone curve + composite  : {curve_rate:8.0f} patches/s/core "
          f"({curve_rate / plain_rate:.2f}x)")
    isp_rows(bright, plain_rate, args.seconds)
    print("target: >= 2000 patches/s/core for the composite")


def isp_function(isp, tone_curve=None):
    """A traced simulate_isp for `isp`, with time_tf's signature (the noise peak unused)."""
    return tf.function(lambda b, p, s, n: simulation_isp.simulate_isp(b, p, isp, seed=s,
                                                                      tone_curve=tone_curve))


def isp_rows(bright, composite_rate, seconds):
    """Print the ISP model's throughput against the composite's (both on pre-drawn parameters)."""
    print("ISP model (sRGB inversion, exposure, shot + read noise, re-rendering, 8-bit):")
    # A bright tone curve of the shape calibration fits (linear light x 255 per 8-bit value).
    curve = np.tile(255.0 * (np.arange(256.0) / 255.0) ** 2.2, (3, 1))
    for label, bayer, blur, tone in (("i.i.d. noise", False, 0.0, None),
                                     ("i.i.d. + blur 0.5 + tone curve", False, 0.5, curve),
                                     ("Bayer + demosaic + blur 0.8", True, 0.8, None)):
        isp = simulation_isp.IspParams(np.log([0.015, 0.013, 0.017]), np.eye(3) * 0.1,
                                       np.array([3e-5, 1e-5, 4e-5]), np.array([2e-4] * 3),
                                       log_shot_gain_std=0.3, bayer=bayer, noise_blur=blur)
        params = simulation_isp.sample_isp_params(int(bright.shape[0]), isp, seed=[1, 2])
        rate = time_tf(isp_function(isp, tone), bright, params, tf.constant(0.0), seconds)
        print(f"  {label:<30}: {rate:8.0f} patches/s/core "
              f"({rate / composite_rate:.2f}x the composite)")


if __name__ == "__main__":
    main()
