#!/usr/bin/env python3
"""Fuzzes every decoder entry point with mutated PNG, JPEG, TIFF, BMP and DNG files.

A seeded mutation fuzzer (no dependency beyond the project's): small valid seed files are made
here (Pillow, tifffile, pidng, data_prep's PNG encoder), then each input is one seed with 1-4
stacked mutations (bit flips, interesting byte values, inserted, deleted or duplicated bytes,
truncation, header field changes with a valid checksum, PNG chunk-length corruption, PNG CRCs
recomputed so decoders get past the checksum). Input i depends only on (--seed, i), so any
failure is replayed with --replay_index.

Every input is fed to every entry point, each in a worker process:
  decode_any    lowlight_tf.media.decode.decode_any (tools/make_tfrecords); expected skip:
                DecodeError
  decode_input  lowlight_tf.inference.decode_input (tools/enhance: an rgb model's reader, and
                for DNGs also a bayer model's packing); UnreadableImageError
  load_pairs    lowlight_tf.calibration.load_pairs on a low/ + high/ folder whose low/ image is
                the mutated file (tools/calibrate_simulation); CalibrationError
Pass: a decoded array or the named skip exception. Failure: any other exception (an escape),
no answer within --timeout seconds (a hang: the worker is killed), a worker that dies (a crash),
or a result of the wrong shape. Memory is bounded by RLIMIT_AS in the worker (--memory_mb), so a
runaway allocation shows as a MemoryError escape instead of exhausting the machine; the peak
resident memory of the workers is reported.

  nice -n 10 .venv/bin/python benchmarks/fuzz_decoders.py              # 10,000 per entry point
  .venv/bin/python benchmarks/fuzz_decoders.py --inputs=500 --entries=decode_any
  .venv/bin/python benchmarks/fuzz_decoders.py --replay_index=1234 --entries=decode_input

Prints the inputs tried, outcomes and failures per entry point and the time; with
--crasher_dir, failing inputs (first few per distinct failure, at most --max_crasher_bytes) are
saved there as ENTRY-KIND-HASH.EXT (tests/fuzz_corpus holds the ones found so far).
"""
import collections
import hashlib
import io
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib

import numpy as np
from absl import app
from absl import flags

ENTRIES = ("decode_any", "decode_input", "load_pairs")

_INPUTS = flags.DEFINE_integer("inputs", 10000, "Mutated inputs per entry point.",
                               lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the mutation stream.")
_ENTRIES = flags.DEFINE_list("entries", list(ENTRIES), f"Entry points to fuzz: {ENTRIES}.")
_TIMEOUT = flags.DEFINE_float("timeout", 10.0, "Seconds one decode may take before it counts "
                              "as a hang (the worker is killed).", lower_bound=0.1)
_MEMORY_MB = flags.DEFINE_integer(
    "memory_mb", 6144, "Address-space limit (RLIMIT_AS) of each worker in MiB. TensorFlow alone "
    "maps about 1.6 GiB; the rest bounds what one decode may allocate.", lower_bound=512)
_WORKERS = flags.DEFINE_integer("workers", 1, "Worker processes.", lower_bound=1)
_CRASHER_DIR = flags.DEFINE_string("crasher_dir", None,
                                   "Save failing inputs here (created if missing).")
_MAX_CRASHER_BYTES = flags.DEFINE_integer("max_crasher_bytes", 16384,
                                          "Larger failing inputs are not saved.")
_REPLAY_INDEX = flags.DEFINE_integer("replay_index", None,
                                     "Run only input number N in this process, print its outcome.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the figures here as JSON.")

# Values that break size arithmetic: zero, one, sign and width boundaries, huge.
INTERESTING_32 = (0, 1, 2, 7, 255, 256, 20000, 65535, 65536, 0x7FFFFFFF, 0x80000000,
                  0xFFFFFFFF, 0x10000000)
INTERESTING_16 = (0, 1, 2, 255, 256, 20000, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_8 = (0, 1, 2, 3, 4, 7, 8, 15, 16, 0x7F, 0x80, 0xFF)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Seed files (small, valid).

def _gradient(height, width, peak, dtype):
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * peak // max(width - 1, 1), y * peak // max(height - 1, 1),
              (x + y) * peak // max(height + width - 2, 1)]
    return np.stack(planes, axis=-1).astype(dtype)


def _pillow_bytes(array, fmt, **kwargs):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _dng_bytes(folder):
    """A 32x32 16-bit RGGB DNG written by pidng (the fixture tests/test_inference.py uses)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (CalibrationIlluminant, CFAPattern, DNGVersion, Orientation,
                            PhotometricInterpretation, PreviewColorSpace)
    mosaic = _gradient(32, 32, 900, np.uint16)[..., 0] + 64
    tags = DNGTags()
    for tag, value in ((Tag.ImageWidth, 32), (Tag.ImageLength, 32), (Tag.TileWidth, 32),
                       (Tag.TileLength, 32), (Tag.Orientation, Orientation.Horizontal),
                       (Tag.PhotometricInterpretation,
                        PhotometricInterpretation.Color_Filter_Array),
                       (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16),
                       (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
                       (Tag.BlackLevel, 64), (Tag.WhiteLevel, 1023),
                       (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1],
                                           [0, 1], [0, 1], [1, 1]]),
                       (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.Make, "fuzz"),
                       (Tag.Model, "seed"), (Tag.DNGVersion, DNGVersion.V1_4),
                       (Tag.DNGBackwardVersion, DNGVersion.V1_2),
                       (Tag.PreviewColorSpace, PreviewColorSpace.sRGB)):
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    writer.convert(mosaic.astype(np.uint16), filename=os.path.join(folder, "seed"))
    with open(os.path.join(folder, "seed.dng"), "rb") as f:
        return f.read()


def make_seeds(folder):
    """[(name, extension, bytes)] of small valid files of every format the decoders read."""
    import tifffile
    from lowlight_tf.media import png
    rgb8 = _gradient(16, 24, 255, np.uint8)
    rgb16 = _gradient(16, 24, 65535, np.uint16)
    seeds = [
        ("png8", ".png", _pillow_bytes(rgb8, "PNG")),
        ("png8_gray", ".png", _pillow_bytes(rgb8[..., 0], "PNG")),
        ("png8_palette", ".png", _pillow_palette(rgb8)),
        ("png16", ".png", png.encode_png(rgb16)),
        ("jpeg", ".jpg", _pillow_bytes(rgb8, "JPEG", quality=90)),
        ("jpeg_progressive", ".jpg", _pillow_bytes(rgb8, "JPEG", quality=90, progressive=True)),
        ("bmp", ".bmp", _pillow_bytes(rgb8, "BMP")),
    ]
    for name, array, kwargs in (("tiff8", rgb8, {}), ("tiff16", rgb16, {}),
                                ("tiff16_zlib", rgb16, {"compression": "zlib"})):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, photometric="rgb", **kwargs)
        seeds.append((name, ".tif", buffer.getvalue()))
    seeds.append(("dng", ".dng", _dng_bytes(folder)))
    # The header facts tools/enhance carries over (header.header_facts): a phone-style JPEG and
    # a 16-bit PNG with EXIF (orientation, date, GPS) and an RGB ICC profile.
    exif, profile = _exif_and_profile()
    seeds.append(("jpeg_exif_icc", ".jpg", _pillow_bytes(rgb8, "JPEG", quality=90, exif=exif,
                                                         icc_profile=profile)))
    seeds.append(("png16_exif_icc", ".png", png.encode_png(rgb16, icc_profile=profile,
                                                           exif=exif)))
    return seeds


def _exif_and_profile():
    """(EXIF bytes with Orientation 6, a date and a GPS tag; littlecms' sRGB profile bytes)."""
    from PIL import Image, ImageCms
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2026:01:02 03:04:05"
    exif.get_ifd(0x8825)[1] = "N"
    return exif.tobytes(), ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _pillow_palette(rgb8):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(rgb8).quantize(16).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Mutations. Each takes (bytearray, rng) and returns a bytearray.

def _png_chunks(data):
    """[(offset, length, kind)] of the PNG chunks whose 12-byte frame lies inside `data`."""
    chunks, offset = [], 8
    while offset + 12 <= len(data):
        length = struct.unpack(">I", bytes(data[offset:offset + 4]))[0]
        chunks.append((offset, length, bytes(data[offset + 4:offset + 8])))
        if offset + 12 + length > len(data):
            break
        offset += 12 + length
    return chunks


def _fix_png_crcs(data):
    for offset, length, _ in _png_chunks(data):
        end = offset + 8 + length
        if end + 4 <= len(data):
            data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[offset + 4:end])))
    return data


def flip_bits(data, rng):
    for _ in range(int(rng.integers(1, 9))):
        if data:
            position = int(rng.integers(len(data)))
            data[position] ^= 1 << int(rng.integers(8))
    return data


def interesting_bytes(data, rng):
    if not data:
        return data
    position = int(rng.integers(len(data)))
    width = int(rng.choice([1, 2, 4]))
    pool = {1: INTERESTING_8, 2: INTERESTING_16, 4: INTERESTING_32}[width]
    value = int(rng.choice(pool))
    order = ">" if rng.random() < 0.5 else "<"
    packed = struct.pack(order + {1: "B", 2: "H", 4: "I"}[width], value)
    data[position:position + width] = packed
    return data


def insert_bytes(data, rng):
    position = int(rng.integers(len(data) + 1))
    data[position:position] = rng.integers(0, 256, int(rng.integers(1, 65))).astype(
        np.uint8).tobytes()
    return data


def delete_bytes(data, rng):
    if len(data) > 1:
        position = int(rng.integers(len(data)))
        del data[position:position + int(rng.integers(1, 65))]
    return data


def duplicate_bytes(data, rng):
    if len(data) > 2:
        begin = int(rng.integers(len(data)))
        piece = data[begin:begin + int(rng.integers(1, 257))]
        position = int(rng.integers(len(data) + 1))
        data[position:position] = piece
    return data


def truncate(data, rng):
    return data[:int(rng.integers(len(data)))] if data else data


def header_field(data, rng):
    """Changes a size/format field of the header to an interesting value, keeping checksums."""
    if data[:8] == PNG_SIGNATURE and len(data) >= 33:
        field = int(rng.integers(4))
        if field < 2:  # width or height
            data[16 + 4 * field:20 + 4 * field] = struct.pack(">I", int(rng.choice(INTERESTING_32)))
        elif field == 2:  # bit depth
            data[24] = int(rng.choice((0, 1, 2, 3, 4, 8, 16, 32)))
        else:  # colour type
            data[25] = int(rng.choice((0, 1, 2, 3, 4, 5, 6, 7)))
        return _fix_png_crcs(data)
    if data[:2] == b"\xff\xd8":  # JPEG: the frame header (SOF0-SOF3) height/width/components
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2", b"\xff\xc3"):
            at = data.find(marker)
            if at >= 0 and at + 10 <= len(data):
                field = int(rng.integers(4))
                if field < 2:
                    data[at + 5 + 2 * field:at + 7 + 2 * field] = struct.pack(
                        ">H", int(rng.choice(INTERESTING_16)))
                elif field == 2:
                    data[at + 4] = int(rng.choice(INTERESTING_8))  # sample precision
                else:
                    data[at + 9] = int(rng.choice(INTERESTING_8))  # component count
                return data
        return flip_bits(data, rng)
    if data[:2] in (b"II", b"MM") and len(data) >= 8:  # TIFF / DNG: one entry of the first IFD
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", bytes(data[4:8]))[0]
        if ifd + 2 <= len(data):
            count = struct.unpack(order + "H", bytes(data[ifd:ifd + 2]))[0]
            entries = [ifd + 2 + 12 * k for k in range(count) if ifd + 14 + 12 * k <= len(data)]
            if entries:
                entry = int(rng.choice(entries))
                part = int(rng.integers(3))
                if part == 0:  # the value (or value offset)
                    data[entry + 8:entry + 12] = struct.pack(order + "I",
                                                             int(rng.choice(INTERESTING_32)))
                elif part == 1:  # the count
                    data[entry + 4:entry + 8] = struct.pack(order + "I",
                                                            int(rng.choice(INTERESTING_32)))
                else:  # the field type
                    data[entry + 2:entry + 4] = struct.pack(order + "H", int(rng.integers(0, 20)))
                return data
    return interesting_bytes(data, rng)


def png_chunk_length(data, rng):
    """Sets one PNG chunk's length to a wrong value (CRC recomputed half the time)."""
    chunks = _png_chunks(data)
    if data[:8] != PNG_SIGNATURE or not chunks:
        return truncate(data, rng)
    offset, length, _ = chunks[int(rng.integers(len(chunks)))]
    new = int(rng.choice(INTERESTING_32 + (length + 1, max(length - 1, 0), length * 2)))
    data[offset:offset + 4] = struct.pack(">I", new & 0xFFFFFFFF)
    return _fix_png_crcs(data) if rng.random() < 0.5 else data


MUTATORS = (flip_bits, interesting_bytes, insert_bytes, delete_bytes, duplicate_bytes, truncate,
            header_field, png_chunk_length)


def seeds_for(entry, seeds):
    """The seeds an entry point reads: calibration's pair loader takes no camera raw files."""
    return [s for s in seeds if s[1] != ".dng"] if entry == "load_pairs" else seeds


def mutate(seeds, seed, index):
    """Input number `index`: (seed name, extension, bytes, mutator names); deterministic."""
    rng = np.random.default_rng([seed, index])
    name, ext, original = seeds[int(rng.integers(len(seeds)))]
    data = bytearray(original)
    names = []
    for _ in range(int(rng.integers(1, 5))):
        mutator = MUTATORS[int(rng.integers(len(MUTATORS)))]
        data = mutator(data, rng)
        names.append(mutator.__name__)
    if data[:8] == PNG_SIGNATURE and rng.random() < 0.5:
        data = _fix_png_crcs(data)  # let most PNG inputs past the checksum, into the decoders
        names.append("fix_png_crcs")
    return name, ext, bytes(data), names


# ----------------------------------------------------------------------------------------------
# Running one input (in a worker, or in-process for --replay_index).

def run_entry(entry, data, ext, original, workdir):
    """Feeds `data` to one entry point; returns (status, detail).

    status: "ok" (decoded), "skip" (the entry's named exception), "escape" (anything else),
    "bad" (a result of the wrong shape). detail: the shape, the reason or the traceback's tail.
    """
    from lowlight_tf import calibration, inference
    from lowlight_tf.media import decode
    expected = {"decode_any": decode.DecodeError,
                "decode_input": inference.UnreadableImageError,
                "load_pairs": calibration.CalibrationError}[entry]
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    try:
        if entry == "load_pairs":
            for sub, content in (("low", data), ("high", original)):
                os.makedirs(os.path.join(workdir, sub))
                with open(os.path.join(workdir, sub, "1" + ext), "wb") as f:
                    f.write(content)
            pairs = calibration.load_pairs(workdir)
            arrays = [a for pair in pairs for a in (pair.dark, pair.bright)]
        else:
            path = os.path.join(workdir, "input" + ext)
            with open(path, "wb") as f:
                f.write(data)
            if entry == "decode_any":
                arrays = [decode.decode_any(path)[0]]
            else:  # an rgb model's reader; raw files also through a bayer model's packing
                arrays = [inference.decode_input(path).model_input]
                if ext == ".dng":
                    arrays.append(inference.decode_input(path, input_channels=4).model_input)
    except expected as e:
        return "skip", str(e)[:200]
    except Exception as e:  # pylint: disable=broad-except
        frames = traceback.extract_tb(e.__traceback__)
        where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"
        return "escape", f"{type(e).__name__} at {where}: {str(e)[:160]}"
    for array in arrays:
        if not (isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[-1] in (3, 4)
                and array.shape[0] > 0 and array.shape[1] > 0):
            return "bad", f"result {type(array).__name__} {getattr(array, 'shape', None)}"
    return "ok", "x".join(str(d) for d in arrays[0].shape)


def _worker(conn, memory_mb, workdir):
    """Worker loop: imports once, bounds its address space, answers (entry, data, ext, original)
    tasks with (status, detail, peak RSS KiB) until it gets None."""
    warnings.simplefilter("ignore")
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # it logs every bad tag it meets
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from lowlight_tf import calibration, inference  # noqa: F401  (import cost paid first)
    from lowlight_tf.media import png
    import tensorflow as tf
    # Initialise TF's kernels and thread pools before the limit (16-bit PNGs decode with TF).
    tf.io.decode_png(png.encode_png(np.zeros((1, 1, 3), np.uint16)), dtype=tf.uint16)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send("ready")  # the per-input time limit starts only now
    while True:
        task = conn.recv()
        if task is None:
            return
        status, detail = run_entry(*task, workdir)
        conn.send((status, detail, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


class _Slot:
    """One worker process and its pipe; restarted after a hang or a crash."""

    def __init__(self, context, memory_mb, workdir):
        self.context, self.memory_mb, self.workdir = context, memory_mb, workdir
        self.process = self.conn = None
        self.task = None
        self.ready = False
        self.started = 0.0
        self.start()

    def start(self):
        self.ready = False
        parent, child = self.context.Pipe()
        self.process = self.context.Process(target=_worker,
                                            args=(child, self.memory_mb, self.workdir),
                                            daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def kill(self):
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self):
        try:
            self.conn.send(None)
            self.process.join(10)
        except OSError:
            pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _signature(entry, status, detail):
    """Groups failures: the exception type and location for escapes, the kind otherwise."""
    if status == "escape":
        return f"{entry}: {detail.split(':', 2)[0]}:{detail.split(':', 2)[1]}"
    return f"{entry}: {status}"


def fuzz(entries, inputs, seed, *, timeout, memory_mb, workers, crasher_dir=None,
         max_crasher_bytes=16384, log=print):
    """Runs the fuzzer; returns the figures as a dict (see the module docstring)."""
    root = tempfile.mkdtemp(prefix="fuzz_decoders_")
    seeds = make_seeds(root)
    context = multiprocessing.get_context("spawn")
    started = time.time()
    slots = [_Slot(context, memory_mb, os.path.join(root, f"w{k}")) for k in range(workers)]
    figures = {entry: collections.Counter() for entry in entries}
    failures = collections.defaultdict(list)  # signature -> [(index, seed name, mutators, detail)]
    peak_rss_kib = 0
    queue = collections.deque((entry, index) for index in range(inputs) for entry in entries)
    done, last_report = 0, time.time()
    seeds_by_name = {name: data for name, _, data in seeds}
    try:
        while queue or any(slot.task for slot in slots):
            for slot in slots:
                if slot.ready and slot.task is None and queue:
                    entry, index = queue.popleft()
                    name, ext, data, names = mutate(seeds_for(entry, seeds), seed, index)
                    slot.task = (entry, index, name, ext, data, names)
                    slot.started = time.time()
                    slot.conn.send((entry, data, ext, seeds_by_name[name]))
            starting = [slot for slot in slots if not slot.ready]
            busy = [slot for slot in slots if slot.task]
            ready = multiprocessing.connection.wait([s.conn for s in starting + busy],
                                                    timeout=0.5)
            for slot in starting:
                if slot.conn in ready:
                    try:
                        slot.ready = slot.conn.recv() == "ready"
                    except (EOFError, OSError):
                        raise RuntimeError("A fuzz worker died while starting (before any "
                                           "input); check that data_prep and lowlight_tf "
                                           "import.") from None
            now = time.time()
            for slot in busy:
                entry, index, name, ext, data, names = slot.task
                if slot.conn in ready:
                    try:
                        status, detail, rss = slot.conn.recv()
                        peak_rss_kib = max(peak_rss_kib, rss)
                    except (EOFError, OSError):
                        slot.process.join()
                        status, detail = "crash", f"worker died (exit {slot.process.exitcode})"
                        slot.kill()
                        slot.start()
                elif now - slot.started > timeout:
                    status, detail = "hang", f"no answer after {timeout:g} s"
                    slot.kill()
                    slot.start()
                else:
                    continue
                slot.task = None
                done += 1
                figures[entry][status] += 1
                if status not in ("ok", "skip"):
                    signature = _signature(entry, status, detail)
                    failures[signature].append((index, name, names, detail))
                    if crasher_dir and len(failures[signature]) <= 3 and \
                            len(data) <= max_crasher_bytes:
                        os.makedirs(crasher_dir, exist_ok=True)
                        digest = hashlib.sha1(data).hexdigest()[:10]
                        with open(os.path.join(crasher_dir, f"{entry}-{status}-{digest}{ext}"),
                                  "wb") as f:
                            f.write(data)
                    if len(failures[signature]) == 1:
                        log(f"NEW FAILURE {signature} (input {index}, seed {name}, "
                            f"{'+'.join(names)}): {detail}")
            if time.time() - last_report > 60:
                last_report = time.time()
                log(f"... {done}/{inputs * len(entries)} inputs, "
                    f"{sum(len(v) for v in failures.values())} failures, "
                    f"{time.time() - started:.0f} s")
    finally:
        for slot in slots:
            slot.stop()
        shutil.rmtree(root, ignore_errors=True)
    seconds = time.time() - started
    return {
        "inputs_per_entry": inputs, "seed": seed, "seconds": round(seconds, 1),
        "timeout_s": timeout, "memory_limit_mib": memory_mb, "workers": workers,
        "peak_worker_rss_mib": round(peak_rss_kib / 1024, 1),
        "seeds": [f"{name} ({len(data)} B)" for name, _, data in seeds],
        "entries": {entry: dict(figures[entry]) for entry in entries},
        "failures": {signature: {"count": len(items), "first_input": items[0][0],
                                 "seed_file": items[0][1], "mutations": items[0][2],
                                 "detail": items[0][3]}
                     for signature, items in sorted(failures.items())},
    }


def format_figures(figures):
    lines = [f"Fuzzed {figures['inputs_per_entry']} mutated inputs per entry point (seed "
             f"{figures['seed']}) in {figures['seconds']:.0f} s with {figures['workers']} "
             f"worker(s); limits {figures['timeout_s']:g} s and {figures['memory_limit_mib']} MiB "
             f"per decode; peak worker RSS {figures['peak_worker_rss_mib']:.0f} MiB.",
             "", "| entry point | inputs | decoded | named skip | escaped | hung | crashed | "
             "bad result |", "|---|---|---|---|---|---|---|---|"]
    for entry, counts in figures["entries"].items():
        total = sum(counts.values())
        lines.append(f"| {entry} | {total} | {counts.get('ok', 0)} | {counts.get('skip', 0)} | "
                     f"{counts.get('escape', 0)} | {counts.get('hang', 0)} | "
                     f"{counts.get('crash', 0)} | {counts.get('bad', 0)} |")
    failures = figures["failures"]
    lines.append("")
    lines.append(f"{len(failures)} distinct failure(s)" + (":" if failures else "."))
    for signature, info in failures.items():
        lines.append(f"  {signature}: {info['count']}x, first input {info['first_input']} "
                     f"({info['seed_file']}, {'+'.join(info['mutations'])}): {info['detail']}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_ENTRIES.value) - set(ENTRIES))
    if unknown:
        raise app.UsageError(f"Unknown entry point(s) {unknown}; choose from {ENTRIES}.")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if _REPLAY_INDEX.value is not None:
        warnings.simplefilter("ignore")
        with tempfile.TemporaryDirectory() as root:
            seeds = make_seeds(root)
            for entry in _ENTRIES.value:
                name, ext, data, names = mutate(seeds_for(entry, seeds), _SEED.value,
                                                _REPLAY_INDEX.value)
                original = {n: d for n, _, d in seeds}[name]
                print(f"{entry}: input {_REPLAY_INDEX.value} = seed {name}, {'+'.join(names)}, "
                      f"{len(data)} B:", *run_entry(entry, data, ext, original,
                                                    os.path.join(root, "w")))
                if _CRASHER_DIR.value:
                    os.makedirs(_CRASHER_DIR.value, exist_ok=True)
                    target = os.path.join(_CRASHER_DIR.value,
                                          f"{entry}-input{_REPLAY_INDEX.value}-{name}{ext}")
                    with open(target, "wb") as f:
                        f.write(data)
                    print("saved", target)
        return
    figures = fuzz(_ENTRIES.value, _INPUTS.value, _SEED.value, timeout=_TIMEOUT.value,
                   memory_mb=_MEMORY_MB.value, workers=_WORKERS.value,
                   crasher_dir=_CRASHER_DIR.value, max_crasher_bytes=_MAX_CRASHER_BYTES.value)
    print(format_figures(figures))
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    escaped = sum(counts.get(k, 0) for counts in figures["entries"].values()
                  for k in ("escape", "hang", "crash", "bad"))
    sys.exit(1 if escaped else 0)


if __name__ == "__main__":
    app.run(main)
