#!/usr/bin/env python3
"""Does the data path scale past one machine's RAM? Memory and speed at three dataset sizes.

Generates 1-megapixel bright photos (1000 x 1000 JPEGs, quality 90: scikit-image's bundled
colour photos resized to 1000 x 1000, each with its own random roll, flip and per-channel gain,
so no two are identical and they compress like photos), at --sizes counts (default 200, 600,
2000), and for each count:

  - builds the `images` TFRecords with tools/make_tfrecords' library call, on the local process
    pool and on Apache Beam's DirectRunner (multi-processing mode), both with --num_workers
    processes, each in a fresh process, and reports images/s and that main process's peak RSS
    (Beam skipped cleanly when apache-beam is not installed: pip install -e '.[beam]');
  - runs the training input pipeline (`pipeline.train_dataset`, 128 x 128 patches, batch 8,
    on-the-fly simulation with the eliei_rgb_tone preset, --dim_fraction 0.25, the cache chosen by
    --cache=auto with --cache_budget_mb) in a fresh process, reads batches for --seconds after a
    warm-up of one pass over the data, and reports patches/s and that process's peak RSS.

Peak RSS is VmHWM of /proc/self/status in the measured process. (Until session 7 this script
read getrusage's ru_maxrss, which on Linux a child inherits from the parent it was forked
from: the figures then included the benchmark's own size, 5.9 GiB at 600 photos after a Beam
build in the same process.)

It also measures, in the same run, the training consumption of the shipped model's size (16
filters, depth 4, 128 x 128, batch 8: `training.create_model`, Keras fit on fixed batches) and
prints each pipeline's throughput as a multiple of it (target >= 5x), and the RSS of each size
beside the smallest uncached one (target: flat as the data grows 10x). Decoded, the largest set
is 2000 x 6 MB = 11.4 GiB of uint16 codes, more than the cache budget and half this machine's
RAM. Disk use: about 2.5 GB at 2000; everything is deleted at the end (--keep to keep it).

  python benchmarks/scale.py                               # about 20 minutes on 2 cores
  python benchmarks/scale.py --sizes=100,300 --seconds=20  # quick check
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_SIZES = flags.DEFINE_list("sizes", ["200", "600", "2000"], "Numbers of generated photos.")
_SECONDS = flags.DEFINE_float("seconds", 60.0, "Timing window of each pipeline, seconds.")
_BUDGET = flags.DEFINE_integer("cache_budget_mb", 2048, "--cache_budget_mb of the pipelines.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch folder (default: a new temp folder).")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the generated photos and TFRecords.")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "Decoding processes of both make_tfrecords "
                                "runs (local pool, DirectRunner).")

SIDE = 1000

# The peak RSS of the process that runs a snippet: VmHWM of /proc/self/status. Not
# getrusage's ru_maxrss: on Linux a child keeps the high-water mark of the parent it was forked
# from across exec, so a child of a large benchmark process reports the parent's size.
PEAK_RSS = """
def peak_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
"""

# Run in a fresh process per size so that each peak RSS is that pipeline's alone.
PIPELINE = PEAK_RSS + """
import json, sys, time
from lowlight_tf import data, pipeline, pipeline_cache
spec, budget, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
parsed = data.parse_dataset_spec(spec)
source = data.load(parsed.output_dir, parsed.name, parsed.split)
count = data.num_examples(parsed.output_dir, parsed.name, parsed.split)
cache, megabytes = pipeline_cache.cache_mode("auto", source, count=count, budget_mb=budget,
                                       patch_size=128)
if cache == "none":  # as tools/train streams (lowlight_tf.train_data)
    source = data.load(parsed.output_dir, parsed.name, parsed.split,
                       readers=pipeline.STREAM_READERS)
dataset = pipeline.train_dataset(source, patch_size=128, batch_size=8, seed=0,
                                 simulation="eliei_rgb_tone", dim_fraction=0.25, cache=cache)
iterator = iter(dataset)
for _ in range(count // 8 + 2):  # one pass: the cache, if any, is full
    next(iterator)
warm_rss = peak_rss_mib()
batches, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    next(iterator)
    batches += 1
rate = batches * 8 / (time.perf_counter() - start)
rss = peak_rss_mib()
print(json.dumps({"cache": cache, "decoded_mb": megabytes, "patches_per_s": rate,
                  "peak_rss_mib": rss, "warm_rss_mib": warm_rss,
                  "shards": data.num_shards(parsed.output_dir, parsed.name, parsed.split)}))
"""

# Training consumption of the shipped model's size, patches/s (fixed batches, no input cost).
TRAINING = """
import json, time
import numpy as np
from lowlight_tf import training
from lowlight_tf.train_config import TrainConfig
config = training.resolve_config(TrainConfig(model_dir="unused", base_filters=16, depth=4,
                                             patch_size=128, batch_size=8, ssim_weight=0.5))
strategy = training.make_strategy("mirrored")
model, _, _ = training.create_model(config, strategy)
rng = np.random.default_rng(0)
dark = rng.random((8 * 16, 128, 128, 3), dtype=np.float32) * 0.05
bright = rng.random((8 * 16, 128, 128, 3), dtype=np.float32)
model.fit(dark, bright, batch_size=8, epochs=1, verbose=0)  # trace and warm up
start = time.perf_counter()
model.fit(dark, bright, batch_size=8, epochs=2, verbose=0)
print(json.dumps({"patches_per_s": 2 * len(dark) / (time.perf_counter() - start)}))
"""


def _run_json(code, *args):
    return _run_command([sys.executable, "-c", code, *args])


def _run_json_file(script, *args):
    """Like _run_json for a script file (spawned worker processes re-import its module)."""
    return _run_command([sys.executable, script, *args])


def _run_command(command):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"exit status {done.returncode}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sources():
    """scikit-image's colour photos resized to SIDE x SIDE, uint8 [SIDE, SIDE, 3]."""
    import skimage.data
    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "cat"):
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        image = np.asarray(loader())[..., :3]
        images.append(np.asarray(Image.fromarray(image).resize((SIDE, SIDE), Image.BILINEAR)))
    return images


def write_photos(folder, count, start, sources, rng):
    """Write photos start..count-1 (JPEG, quality 90) into folder; each one different."""
    os.makedirs(folder, exist_ok=True)
    for index in range(start, count):
        image = sources[index % len(sources)]
        image = np.roll(image, tuple(rng.integers(0, SIDE, 2)), axis=(0, 1))
        if rng.random() < 0.5:
            image = image[:, ::-1]
        gains = rng.uniform(0.8, 1.2, 3)
        image = np.clip(image * gains, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"photo_{index:05d}.jpg"), quality=90)


# make_tfrecords in a fresh process: images/s and the peak RSS of the job's main process
# (decoding worker processes not included).
BUILD = PEAK_RSS + """
import json, sys, time
from data_prep import prepare
def main():
    photos, out, count, workers, beam = sys.argv[1:6]
    options = (dict(beam_runner="DirectRunner",
                    beam_options=f"--direct_num_workers={workers} "
                                 "--direct_running_mode=multi_processing") if beam == "1"
               else dict(num_workers=int(workers)))
    started = time.perf_counter()
    prepare.make_tfrecords("images", output_dir=out, name="scale", input_dir=photos,
                           splits="train:1.0", report=lambda line: None, **options)
    print(json.dumps({"images_per_s": int(count) / (time.perf_counter() - started),
                      "peak_rss_mib": peak_rss_mib()}))
if __name__ == "__main__":  # decoding workers are spawned and import this module
    main()
"""


def _build(photos, out, count, *, beam):
    """{images_per_s, peak_rss_mib} of make_tfrecords on the photos (local pool, or Beam's
    DirectRunner), in a fresh process; NaNs when apache-beam is not installed. The Beam output
    is deleted."""
    if beam and importlib.util.find_spec("apache_beam") is None:
        return {"images_per_s": float("nan"), "peak_rss_mib": float("nan")}
    script = os.path.join(os.path.dirname(out), "build_snippet.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(BUILD)
    result = _run_json_file(script, photos, out, str(count), str(_WORKERS.value),
                            "1" if beam else "0")
    if beam:
        shutil.rmtree(out)
    return result


def main(argv):
    del argv
    sizes = sorted(int(s) for s in _SIZES.value)
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="lowlight_scale_")
    photos = os.path.join(workdir, "photos")
    rng, sources = np.random.default_rng(0), _sources()
    print(f"{os.cpu_count()} CPUs; photos {SIDE}x{SIDE} JPEG in {workdir}", flush=True)
    training = _run_json(TRAINING)["patches_per_s"]
    print(f"training consumption (16 filters, 128x128, batch 8): {training:.1f} patches/s",
          flush=True)
    rows, written = [], 0
    try:
        for count in sizes:
            write_photos(photos, count, written, sources, rng)
            written = count
            out = os.path.join(workdir, f"tfrecords_{count}")
            build = _build(photos, out, count, beam=False)
            beam = _build(photos, os.path.join(workdir, "beam"), count, beam=True)
            result = _run_json(PIPELINE, f"{out}/scale:train", str(_BUDGET.value),
                               str(_SECONDS.value))
            disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(workdir)
                       for f in fs) / 2**30
            rows.append((count, build, beam, result, disk))
            print(f"  {count} photos: make_tfrecords {build['images_per_s']:.1f} images/s "
                  f"(local pool; peak RSS {build['peak_rss_mib']:,.0f} MiB), "
                  f"{beam['images_per_s']:.1f} (Beam DirectRunner; {beam['peak_rss_mib']:,.0f} "
                  f"MiB); pipeline cache {result['cache']} ({result['decoded_mb']:,.0f} MiB "
                  f"decoded, {result['shards']} files), {result['patches_per_s']:.1f} patches/s "
                  f"({result['patches_per_s'] / training:.1f}x training), peak RSS "
                  f"{result['peak_rss_mib']:,.0f} MiB (after the warm-up pass "
                  f"{result['warm_rss_mib']:,.0f}); disk {disk:.1f} GiB", flush=True)
            if not _KEEP.value:
                shutil.rmtree(out)  # the next size rebuilds from all the photos
    finally:
        if not _KEEP.value:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nSummary (same run; training consumption {training:.1f} patches/s; cache budget "
          f"{_BUDGET.value} MiB)")
    print(f"| photos | decoded (MiB) | cache | pipeline (patches/s) | x training | pipeline "
          f"peak RSS (MiB) | make_tfrecords, local pool ({_WORKERS.value} workers): images/s, "
          "peak RSS (MiB) | make_tfrecords, Beam DirectRunner: images/s, peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for count, build, beam, r, _ in rows:
        print(f"| {count} | {r['decoded_mb']:,.0f} | {r['cache']} | {r['patches_per_s']:.1f} | "
              f"{r['patches_per_s'] / training:.1f} | {r['peak_rss_mib']:,.0f} | "
              f"{build['images_per_s']:.1f}, {build['peak_rss_mib']:,.0f} | "
              f"{beam['images_per_s']:.1f}, {beam['peak_rss_mib']:,.0f} |")


if __name__ == "__main__":
    app.run(main)
