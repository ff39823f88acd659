#!/usr/bin/env python3
"""Training throughput and FLOP utilisation of the paper's U-Net (§3.2-3.3), with a PyTorch peer.

Measures, all in the same run and interleaved round by round so that a varying machine load hits
every measurement alike:

  - training throughput (patches/s) of the default model (32 base filters, depth 4) for each
    --sizes entry (PATCHxBATCH), for each --measurements entry ENGINE:VARIANT:
      tf:fit        what tools/train runs: `training.create_model` (MirroredStrategy, Adam 1e-3,
                    MAE loss, MAE/PSNR/SSIM metrics), Keras `Model.fit` on fixed batches;
      tf:fit_jit    the same with jit_compile=True (XLA);
      tf:bare       `build_unet` compiled with Adam + MAE only (no strategy, no metrics);
      tf:fit_live   tf:fit fed by the live input pipeline (on-the-fly simulation sharing the CPU
                    with training, as in tools/train);
      torch-N:train the identical U-Net in PyTorch (pixel_unshuffle, conv pairs with
                    LeakyReLU(0.2), max-pool, transposed conv, concat, 1x1 conv to 12,
                    pixel_shuffle), L1 loss, Adam 1e-3, on the same batches, N threads;
    where ENGINE `tf` is TensorFlow with its default threads and `tf-I-J` sets
    tf.config.threading intra-op I and inter-op J threads. Every engine is its own worker
    process (thread settings and OpenMP policies are per process); only one works at a time.
  - model FLOP utilisation: training FLOPs per step, counted from the Keras model's convolution
    layers (forward 2*H*W*Cin*Cout*k*k per conv, over the input positions for the transposed
    conv; training = 3x forward), times steps/s, divided by the machine's float32 matmul rate
    (tf.linalg.matmul 2048x2048 at each TF thread setting, timed before each size's
    measurements in every round; the machine's rate is the best of them all, so a moment of
    heavy load can only lower the utilisation; numpy's matmul as a cross-check).
  - input pipeline throughput alone: `pipeline.train_dataset` on generated 512x512 images with
    on-the-fly simulation (preset --preset, default eliei_rgb_joint), and its ratio to the
    training throughput (target >= 5x).

The torch peer is skipped cleanly when torch is not importable (pip install torch==2.13.0).
Before timing, the peer gets the Keras model's initial weights and must reproduce its output.

  python benchmarks/training.py --seconds=2 --rounds=2        # quick: 4-6 min (load-bound)
  python benchmarks/training.py --seconds=10 --rounds=3       # steadier figures (~12 min)
  python benchmarks/training.py --measurements=tf:fit,tf:bare,tf-2-1:fit,torch-2:train
  python benchmarks/training.py --sizes=64x16,64x32 \\
      --measurements=tf:fit,tf-2-1:fit,tf-1-1:fit,torch-1:train   # batch size, threads

Most of a quick run is start-up and warm-up (tracing; XLA compiles for fit_jit), not timing;
on a loaded machine a warm-up can take a minute.

Figures are medians over the rounds. On a shared machine the absolute numbers move with the
load of other processes; the ratios measured in the same run are what to compare.
"""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("seconds", 5.0, "Timed seconds per measurement and round, after warm-up.",
                   lower_bound=0.5)
flags.DEFINE_integer("rounds", 2, "Rounds; every measurement runs once per round and the "
                     "median is reported.", lower_bound=1)
flags.DEFINE_list("sizes", ["64x16", "128x8"], "Training shapes as PATCHxBATCH: patch side in "
                  "pixels (a multiple of 2**(depth+1)) and patches per step.")
flags.DEFINE_list("measurements", ["tf:fit", "tf:fit_jit", "tf:fit_live", "tf-1-1:fit",
                                   "torch-1:train",
                                   "torch-2:train"],
                  "ENGINE:VARIANT entries to time at every size. ENGINE is tf (default "
                  "threads), tf-I-J (intra-op I, inter-op J threads) or torch-N (N threads); "
                  "VARIANT is fit, fit_jit, bare or fit_live for tf, train for torch.")
flags.DEFINE_string("preset", "eliei_rgb_joint", "Simulation preset of the input pipeline "
                    "(a name shipped in lowlight_tf/presets or a calibration JSON path).")
flags.DEFINE_integer("batches", 8, "Distinct pipeline batches per size that every engine "
                     "cycles through.", lower_bound=1)
flags.DEFINE_integer("base_filters", 32, "U-Net base filters (paper: 32).", lower_bound=1)
flags.DEFINE_integer("depth", 4, "U-Net depth (paper: 4).", lower_bound=1)
flags.DEFINE_string("output_json", None, "Also write every figure here as JSON.")
flags.DEFINE_string("worker", None, "Internal: run as the worker process of this engine.")
flags.DEFINE_string("data_dir", None, "Internal: the directory holding the shared batches.")

TF_VARIANTS = ("fit", "fit_jit", "bare", "fit_live")
TORCH_VARIANTS = ("train",)
MATMUL_SIZE = 2048
_MARK = "@@ "  # prefix of the worker's result lines on stdout
_LEARNING_RATE = 1e-3  # paper §3.3


# ---------------------------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------------------------
def _parse_size(text):
    """'64x16' -> (64, 16)."""
    try:
        patch, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise app.UsageError(f"--sizes entry {text!r} is not PATCHxBATCH, e.g. 64x16.")
    multiple = 2 ** (FLAGS.depth + 1)
    if patch < 1 or batch < 1 or patch % multiple:
        raise app.UsageError(f"--sizes entry {text!r}: the patch side must be a positive "
                             f"multiple of {multiple} for --depth={FLAGS.depth}, the batch "
                             "positive.")
    return patch, batch


def _parse_engine(engine):
    """'tf' -> ('tf', None); 'tf-1-1' -> ('tf', (1, 1)); 'torch-2' -> ('torch', 2)."""
    parts = engine.split("-")
    try:
        if parts[0] == "tf" and len(parts) == 1:
            return "tf", None
        if parts[0] == "tf" and len(parts) == 3:
            return "tf", (int(parts[1]), int(parts[2]))
        if parts[0] == "torch" and len(parts) == 2 and int(parts[1]) > 0:
            return "torch", int(parts[1])
    except ValueError:
        pass
    raise app.UsageError(f"Unknown engine {engine!r}: use tf, tf-INTRA-INTER (e.g. tf-1-1) or "
                         "torch-THREADS (e.g. torch-1).")


def _parse_measurement(text):
    engine, _, variant = text.partition(":")
    kind, _ = _parse_engine(engine)
    allowed = TF_VARIANTS if kind == "tf" else TORCH_VARIANTS
    if variant not in allowed:
        raise app.UsageError(f"--measurements entry {text!r}: the variant of a {kind} engine "
                             f"must be one of {', '.join(allowed)}.")
    return engine, variant


def _generated_images(count=16, size=512, seed=0):
    """Smooth random colour images with fine texture, float32 [size, size, 3] in [0, 255]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(count):
        channels = []
        for _ in range(3):
            field = np.zeros((size, size), np.float32)
            for _ in range(4):
                fy, fx = rng.uniform(0.5, 8.0, 2)
                phase = rng.uniform(0, 2 * np.pi)
                field += np.sin(2 * np.pi * (fy * y + fx * x) + phase)
            channels.append(field)
        image = np.stack(channels, -1)
        image += rng.normal(0.0, 0.3, image.shape).astype(np.float32)
        image = (image - image.min()) / (image.max() - image.min()) * 255.0
        images.append(image.astype(np.float32))
    return images


def _batch_path(data_dir, patch, batch):
    return os.path.join(data_dir, f"batches_{patch}x{batch}.npz")


# ---------------------------------------------------------------------------------------------
# TensorFlow worker.
# ---------------------------------------------------------------------------------------------
class _TFWorker:
    """Runs TensorFlow tasks in this process (one thread setting for its whole life)."""

    def __init__(self, threads, data_dir):
        import tensorflow as tf
        if threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(threads[0])
            tf.config.threading.set_inter_op_parallelism_threads(threads[1])
        self.tf = tf
        self.data_dir = data_dir
        self.models = {}
        self.pipelines = {}
        self.live = {}
        self.matmul = None

    def _source(self):
        images = _generated_images()
        tf = self.tf
        source = None
        for i, bright in enumerate(images):
            element = tf.data.Dataset.from_tensors({"bright": bright, "id": f"generated_{i}"})
            source = element if source is None else source.concatenate(element)
        return source

    def _pipeline(self, patch, batch, seed=0):
        from lowlight_tf import pipeline
        from lowlight_tf import simulation
        preset = simulation.load_preset(FLAGS.preset)
        return pipeline.train_dataset(self._source(), patch_size=patch, batch_size=batch,
                                      seed=seed, simulation=preset)

    def prepare(self, sizes, batches):
        """Writes the shared batches, the FLOP counts, and the weights for the peer check."""
        import keras
        from lowlight_tf import model as model_lib
        result = {"flops": {}}
        for patch, batch in sizes:
            dataset = self._pipeline(patch, batch).take(batches)
            dark, bright = zip(*[(d.numpy(), b.numpy()) for d, b in dataset])
            np.savez(_batch_path(self.data_dir, patch, batch), dark=np.stack(dark),
                     bright=np.stack(bright))
            result["flops"][f"{patch}x{batch}"] = self._training_flops(patch, batch)
        keras.utils.set_random_seed(0)
        model = model_lib.build_unet("rgb", FLAGS.base_filters, FLAGS.depth)
        patch, batch = sizes[0]
        dark = np.load(_batch_path(self.data_dir, patch, batch))["dark"][0, :2]
        weights = {f"{layer.name}/{i}": w for layer in model.layers
                   for i, w in enumerate(layer.get_weights())}
        np.savez(os.path.join(self.data_dir, "check.npz"), dark=dark,
                 output=model(dark).numpy(), **weights)
        result["params"] = int(model.count_params())
        return result

    def _training_flops(self, patch, batch):
        """Training FLOPs of one step: 3 x forward, forward counted per convolution layer."""
        import keras
        from lowlight_tf import model as model_lib
        model = model_lib.build_unet("rgb", FLAGS.base_filters, FLAGS.depth)
        convs = [layer for layer in model.layers
                 if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
        probe = keras.Model(model.inputs, [layer.output for layer in convs])
        outputs = probe(np.zeros((1, patch, patch, 3), np.float32))
        forward = 0
        for layer, output in zip(convs, outputs):
            kernel_h, kernel_w = layer.kernel_size
            height, width = output.shape[1:3]
            if isinstance(layer, keras.layers.Conv2DTranspose):
                # Every input position scatters a k x k x Cout block: count input positions.
                cin = layer.kernel.shape[3]
                height //= layer.strides[0]
                width //= layer.strides[1]
            else:
                cin = layer.kernel.shape[2]
            forward += 2 * height * width * cin * layer.filters * kernel_h * kernel_w
        return {"forward_per_patch": forward, "train_per_step": 3 * forward * batch}

    def _model(self, variant, patch, batch):
        """Compiled model of a variant, one per (variant, size) so nothing retraces."""
        key = (variant, patch, batch)
        if key not in self.models:
            import keras
            from lowlight_tf import model as model_lib
            from lowlight_tf import train_config, training
            keras.utils.set_random_seed(0)
            if variant == "bare":
                model = model_lib.build_unet("rgb", FLAGS.base_filters, FLAGS.depth)
                model.compile(optimizer=keras.optimizers.Adam(_LEARNING_RATE),
                              loss=keras.losses.MeanAbsoluteError())
            else:
                config = train_config.TrainConfig(
                    model_dir=tempfile.mkdtemp(dir=self.data_dir), base_filters=FLAGS.base_filters,
                    depth=FLAGS.depth, trainable_blocks="all", learning_rate=_LEARNING_RATE,
                    patch_size=patch, batch_size=batch, jit_compile=variant == "fit_jit")
                model, _, _ = training.create_model(config, training.make_strategy("mirrored"))
            self.models[key] = model
        return self.models[key]

    def train(self, variant, patch, batch, seconds):
        """Times Model.fit; returns patches/s (and the first call's warm-up seconds)."""
        import keras
        tf = self.tf
        first = (variant, patch, batch) not in self.models
        started = time.perf_counter()
        model = self._model(variant, patch, batch)
        if variant == "fit_live":
            if (patch, batch) not in self.live:
                self.live[(patch, batch)] = self._pipeline(patch, batch, seed=1)
            dataset = self.live[(patch, batch)]
        else:
            data = np.load(_batch_path(self.data_dir, patch, batch))
            dataset = tf.data.Dataset.from_tensor_slices((data["dark"], data["bright"]))
            dataset = dataset.repeat().prefetch(2)

        warmup = 2 if first else 1
        times = []

        class Timer(keras.callbacks.Callback):
            def on_train_batch_end(self, step, logs=None):
                times.append(time.perf_counter())
                if len(times) > warmup and times[-1] - times[warmup - 1] >= seconds:
                    self.model.stop_training = True

        model.fit(dataset, epochs=1, steps_per_epoch=10 ** 9, callbacks=[Timer()], verbose=0)
        steps = len(times) - warmup
        result = {"rate": steps * batch / (times[-1] - times[warmup - 1]), "steps": steps}
        if first:
            result["warmup_seconds"] = times[warmup - 1] - started
        return result

    def pipeline(self, patch, batch, seconds):
        """Times the input pipeline alone; returns patches/s."""
        key = (patch, batch)
        if key not in self.pipelines:
            self.pipelines[key] = self._pipeline(patch, batch)
        # A fresh iterator per call, deleted afterwards: a live one would keep filling its
        # prefetch buffers in the background during the next measurement.
        iterator = iter(self.pipelines[key])
        for _ in range(10):  # fills the cache and the prefetch buffers
            next(iterator)
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            next(iterator)
            count += 1
        rate = count * batch / (time.perf_counter() - start)
        del iterator
        return {"rate": rate}

    def tf_matmul(self, seconds):
        """float32 GFLOP/s of tf.linalg.matmul on 2048x2048 matrices."""
        tf = self.tf
        if self.matmul is None:
            a = tf.random.uniform((MATMUL_SIZE, MATMUL_SIZE), seed=1)
            b = tf.random.uniform((MATMUL_SIZE, MATMUL_SIZE), seed=2)
            product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
            product().numpy()
            self.matmul = product
        return _time_matmul(lambda: self.matmul().numpy(), seconds)

    def numpy_matmul(self, seconds):
        """float32 GFLOP/s of numpy's matmul on 2048x2048 matrices (cross-check)."""
        rng = np.random.default_rng(0)
        a = rng.random((MATMUL_SIZE, MATMUL_SIZE), np.float32)
        b = rng.random((MATMUL_SIZE, MATMUL_SIZE), np.float32)
        a @ b
        return _time_matmul(lambda: a @ b, seconds)


def _time_matmul(run, seconds):
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        count += 1
    return {"rate": 2 * MATMUL_SIZE ** 3 * count / (time.perf_counter() - start) / 1e9}


# ---------------------------------------------------------------------------------------------
# PyTorch worker (the peer).
# ---------------------------------------------------------------------------------------------
def _torch_unet(base_filters, depth):
    """The U-Net of lowlight_tf.model.build_unet in PyTorch, modules named like its layers."""
    import torch
    from torch import nn
    from torch.nn import functional

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict()
            channels = 12  # space-to-depth of the RGB input

            def conv_pair(block, cin, cout):
                self.layers[f"{block}_conv1"] = nn.Conv2d(cin, cout, 3, padding=1)
                self.layers[f"{block}_conv2"] = nn.Conv2d(cout, cout, 3, padding=1)

            for i in range(1, depth + 1):
                conv_pair(f"down{i}", channels, base_filters * 2 ** (i - 1))
                channels = base_filters * 2 ** (i - 1)
            conv_pair("bottleneck", channels, base_filters * 2 ** depth)
            channels = base_filters * 2 ** depth
            for i in range(1, depth + 1):
                filters = base_filters * 2 ** (depth - i)
                self.layers[f"up{i}_upconv"] = nn.ConvTranspose2d(channels, filters, 2, stride=2)
                conv_pair(f"up{i}", 2 * filters, filters)
                channels = filters
            self.layers["head_conv"] = nn.Conv2d(channels, 12, 1)

        def _pair(self, x, block):
            for i in (1, 2):
                x = functional.leaky_relu(self.layers[f"{block}_conv{i}"](x), 0.2)
            return x

        def forward(self, x):
            x = functional.pixel_unshuffle(x, 2)
            skips = []
            for i in range(1, depth + 1):
                x = self._pair(x, f"down{i}")
                skips.append(x)
                x = functional.max_pool2d(x, 2)
            x = self._pair(x, "bottleneck")
            for i in range(1, depth + 1):
                x = self.layers[f"up{i}_upconv"](x)
                x = self._pair(torch.cat([x, skips[depth - i]], 1), f"up{i}")
            return functional.pixel_shuffle(self.layers["head_conv"](x), 2)

    return UNet()


class _TorchWorker:
    """Trains the PyTorch peer with a fixed number of threads."""

    def __init__(self, threads, data_dir):
        import torch
        torch.set_num_threads(threads)
        self.torch = torch
        self.data_dir = data_dir
        self.state = {}

    def check(self):
        """Loads the Keras model's weights; returns the parameter count and the output gap."""
        torch = self.torch
        model = _torch_unet(FLAGS.base_filters, FLAGS.depth)
        check = np.load(os.path.join(self.data_dir, "check.npz"))
        # tf.nn.space_to_depth orders channels (block, colour), pixel_unshuffle (colour,
        # block); the same permutation maps depth_to_space onto pixel_shuffle.
        order = [block * 3 + colour for colour in range(3) for block in range(4)]
        with torch.no_grad():
            for name, module in model.layers.items():
                kernel = check[f"{name}/0"].transpose(3, 2, 0, 1)  # both layouts -> torch's
                bias = check[f"{name}/1"]
                if name == "down1_conv1":
                    kernel = kernel[:, order]
                if name == "head_conv":
                    kernel, bias = kernel[order], bias[order]
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
                module.bias.copy_(torch.from_numpy(bias))
            dark = torch.from_numpy(check["dark"]).permute(0, 3, 1, 2)
            output = model(dark).permute(0, 2, 3, 1).numpy()
        reference = check["output"]
        return {"params": int(sum(p.numel() for p in model.parameters())),
                "max_abs_diff": float(np.abs(output - reference).max()),
                "output_scale": float(np.abs(reference).max())}

    def train(self, variant, patch, batch, seconds):
        """Times training steps (L1 loss, Adam) over the shared batches; returns patches/s."""
        torch = self.torch
        from torch.nn import functional
        key = (patch, batch)
        first = key not in self.state
        started = time.perf_counter()
        if first:
            torch.manual_seed(0)
            model = _torch_unet(FLAGS.base_filters, FLAGS.depth)
            optimizer = torch.optim.Adam(model.parameters(), lr=_LEARNING_RATE)
            data = np.load(_batch_path(self.data_dir, patch, batch))
            batches = [(torch.from_numpy(d).permute(0, 3, 1, 2).contiguous(),
                        torch.from_numpy(b).permute(0, 3, 1, 2).contiguous())
                       for d, b in zip(data["dark"], data["bright"])]
            self.state[key] = (model, optimizer, batches, [0])
        model, optimizer, batches, counter = self.state[key]

        def step():
            dark, bright = batches[counter[0] % len(batches)]
            counter[0] += 1
            optimizer.zero_grad(set_to_none=True)
            loss = functional.l1_loss(model(dark), bright)
            loss.backward()
            optimizer.step()
            return loss.item()

        for _ in range(2 if first else 1):
            step()
        warmup_seconds = time.perf_counter() - started
        steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            steps += 1
        result = {"rate": steps * batch / (time.perf_counter() - start), "steps": steps}
        if first:
            result["warmup_seconds"] = warmup_seconds
        return result


def _worker_main(engine):
    """Answers JSON commands from stdin, one result line (prefixed _MARK) each on stdout."""
    kind, threads = _parse_engine(engine)
    try:
        worker = (_TFWorker if kind == "tf" else _TorchWorker)(threads, FLAGS.data_dir)
    except ImportError as error:
        print(_MARK + json.dumps({"error": f"cannot import: {error}"}), flush=True)
        return
    print(_MARK + json.dumps({"ready": engine}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        task = command.pop("task")
        try:
            result = getattr(worker, task)(**command)
        except Exception as error:  # reported by the parent, which goes on with the others
            result = {"error": f"{type(error).__name__}: {error}"}
        print(_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent: starts the workers, interleaves the measurements, prints the summary.
# ---------------------------------------------------------------------------------------------
class _Worker:
    """A worker process of one engine; `call` sends a task and waits for its result."""

    def __init__(self, engine, data_dir):
        self.engine = engine
        self.log_path = os.path.join(data_dir, f"worker_{engine}.log")
        env = dict(os.environ)
        kind, threads = _parse_engine(engine)
        if kind == "torch" and threads > 1:
            # Under load, OpenMP's default spin-waiting at barriers collapses multi-threaded
            # torch (measured 4 patches/s instead of 50); passive waiting is the peer's best.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), f"--worker={engine}",
                 f"--data_dir={data_dir}", f"--base_filters={FLAGS.base_filters}",
                 f"--depth={FLAGS.depth}", f"--preset={FLAGS.preset}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.ready = None

    def read(self):
        for line in self.process.stdout:
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        with open(self.log_path) as log:
            tail = log.read()[-1500:]
        return {"error": f"worker {self.engine} exited ({self.process.wait()}); log tail:\n"
                         f"{tail}"}

    def call(self, task, **arguments):
        if self.process.poll() is not None:
            return {"error": f"worker {self.engine} is not running"}
        self.process.stdin.write(json.dumps({"task": task, **arguments}) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _run(data_dir, sizes, measurements):
    """Runs everything; returns the result dict."""
    results = {"load_average_start": os.getloadavg(), "sizes": {}, "matmul": {},
               "errors": []}
    engines = []
    for engine, _ in measurements:
        if engine not in engines:
            engines.append(engine)
    tf_engines = [e for e in engines if e.startswith("tf")]
    if "tf" not in tf_engines:
        tf_engines.insert(0, "tf")
    torch_engines = [e for e in engines if e.startswith("torch")]
    if torch_engines and importlib.util.find_spec("torch") is None:
        print("PyTorch peer skipped: torch is not importable (pip install torch==2.13.0).")
        results["errors"].append("torch not importable")
        measurements = [m for m in measurements if not m[0].startswith("torch")]
        torch_engines = []

    workers = {}
    try:
        main = workers["tf"] = _Worker("tf", data_dir)
        main.ready = main.read()
        if "error" in main.ready:
            raise RuntimeError(main.ready["error"])
        started = time.perf_counter()
        prepared = main.call("prepare", sizes=sizes, batches=FLAGS.batches)
        if "error" in prepared:
            raise RuntimeError(f"preparing the batches failed: {prepared['error']}")
        print(f"Shared batches: {FLAGS.batches} per size from pipeline.train_dataset "
              f"(generated 512x512 images, simulation preset {FLAGS.preset}), "
              f"{time.perf_counter() - started:.0f} s. Model parameters: {prepared['params']:,}.")
        for key, flops in prepared["flops"].items():
            print(f"  {key}: forward {flops['forward_per_patch'] / 1e9:.3f} GFLOP/patch, "
                  f"training {flops['train_per_step'] / 1e9:.2f} GFLOP/step (3x forward)")
        results["params"] = prepared["params"]

        for engine in tf_engines[1:] + torch_engines:
            workers[engine] = _Worker(engine, data_dir)
        for engine in tf_engines[1:] + torch_engines:
            workers[engine].ready = workers[engine].read()
            if "error" in workers[engine].ready:
                message = workers[engine].ready["error"]
                print(f"Engine {engine} unavailable, its measurements are skipped: {message}")
                results["errors"].append(f"{engine}: {message}")
                measurements = [m for m in measurements if m[0] != engine]
        torch_engines = [e for e in torch_engines if any(m[0] == e for m in measurements)]
        if torch_engines:
            check = workers[torch_engines[0]].call("check")
            if "error" in check:
                raise RuntimeError(f"the torch peer check failed: {check['error']}")
            same = check["params"] == prepared["params"] and \
                check["max_abs_diff"] <= 1e-4 * max(1.0, check["output_scale"])
            print(f"Torch peer: {check['params']:,} parameters, output with the Keras weights "
                  f"differs by at most {check['max_abs_diff']:.2e} "
                  f"({'identical model' if same else 'NOT IDENTICAL'}).")
            results["peer_check"] = check
            if not same:
                raise RuntimeError("the torch peer is not the same network; fix _torch_unet.")

        seconds = FLAGS.seconds
        matmul_seconds = min(seconds, 2.0)
        rates = {}  # (size, name) -> patches/s per round, None where a measurement failed
        matmul = {}  # name -> GFLOP/s, one per (round, size) block
        for round_index in range(FLAGS.rounds):
            print(f"\nRound {round_index + 1}/{FLAGS.rounds} (load average "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
            result = main.call("numpy_matmul", seconds=matmul_seconds)
            matmul.setdefault("numpy", []).append(result.get("rate"))
            for patch, batch in sizes:
                size = f"{patch}x{batch}"
                block = {}
                for engine in tf_engines:
                    result = workers[engine].call("tf_matmul", seconds=matmul_seconds)
                    block[f"{engine} tf.linalg"] = result.get("rate")
                for name, rate in block.items():
                    matmul.setdefault(name, []).append(rate)
                print(f"  {size:>7} matmul GFLOP/s: " + ", ".join(
                    f"{name} {rate or float('nan'):.0f}" for name, rate in block.items())
                    + f", numpy {matmul['numpy'][-1] or float('nan'):.0f}", flush=True)
                result = main.call("pipeline", patch=patch, batch=batch, seconds=seconds)
                _record(rates, results, (size, "pipeline"), result)
                for engine, variant in measurements:
                    result = workers[engine].call("train", variant=variant, patch=patch,
                                                  batch=batch, seconds=seconds)
                    _record(rates, results, (size, f"{engine}:{variant}"), result)
        results["load_average_end"] = os.getloadavg()
    finally:
        for worker in workers.values():
            worker.close()

    for name, values in matmul.items():
        results["matmul"][name] = {"median": _median(values), "values": values}
    for (size, name), values in rates.items():
        entry = results["sizes"].setdefault(size, {"flops": prepared["flops"][size],
                                                   "rates": {}})
        entry["rates"][name] = {"median": _median(values), "values": values}
    return results


def _record(rates, results, key, result):
    size, name = key
    if "error" in result:
        message = f"{size} {name}: {result['error']}"
        print(f"  {message}", flush=True)
        results["errors"].append(message)
        rates.setdefault(key, []).append(None)
        return
    rates.setdefault(key, []).append(result["rate"])
    warm = f" (warm-up {result['warmup_seconds']:.1f} s)" if "warmup_seconds" in result else ""
    print(f"  {size:>7} {name:<18} {result['rate']:7.1f} patches/s{warm}", flush=True)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _spread(values):
    values = [v for v in values if v is not None]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def _paired(numerators, denominators):
    """Median over rounds of numerator / denominator, both measured in the same round."""
    return _median([n / d for n, d in zip(numerators, denominators) if n and d])


def _summary(results):
    """Prints the one-screen summary; ratios and utilisation pair figures of the same round."""
    print("\n" + "=" * 78)
    print(f"Summary: medians over {FLAGS.rounds} round(s) of {FLAGS.seconds:g} s; load average "
          f"{results['load_average_start'][0]:.1f} at start, "
          f"{results.get('load_average_end', [float('nan')])[0]:.1f} at end, "
          f"{os.cpu_count()} CPUs.")
    print("The machine is shared with other jobs: absolute figures move with their load; "
          "compare the ratios,\nwhich pair measurements of the same round.")
    print("\nfloat32 matmul 2048x2048, GFLOP/s (median): " + ", ".join(
        f"{name} {v['median'] or float('nan'):.0f}" for name, v in results["matmul"].items()))
    machine = max((r for name, v in results["matmul"].items() if "tf.linalg" in name
                   for r in v["values"] if r), default=float("nan"))
    results["machine_gflops"] = machine
    print(f"Machine rate = best TF matmul of the run = {machine:.0f} GFLOP/s; utilisation = "
          "training GFLOP/s / machine rate.")
    for size, entry in results["sizes"].items():
        flops = entry["flops"]["train_per_step"]
        patch, batch = _parse_size(size)
        print(f"\n{size}: {flops / 1e9:.2f} training GFLOP/step")
        print("| measurement | patches/s | range | GFLOP/s | utilisation |")
        print("|---|---|---|---|---|")
        rates = {name: v for name, v in entry["rates"].items() if v["median"] is not None}

        def utilisation(name):
            return rates[name]["median"] / batch * flops / 1e9 / machine

        for name, v in rates.items():
            if name == "pipeline":
                continue
            gflops = v["median"] / batch * flops / 1e9
            print(f"| {name} | {v['median']:.1f} | {_spread(v['values'])} | {gflops:.0f} | "
                  f"{utilisation(name):.0%} |")
        if "pipeline" in rates:
            print(f"| input pipeline alone | {rates['pipeline']['median']:.1f} | "
                  f"{_spread(rates['pipeline']['values'])} | | |")
        ours = "tf:fit" if "tf:fit" in rates else None
        tf_best = max((n for n in rates if n.startswith("tf")),
                      key=lambda n: rates[n]["median"], default=None)
        peer = max((n for n in rates if n.startswith("torch")),
                   key=lambda n: rates[n]["median"], default=None)

        def ratio(a, b):
            return _paired(rates[a]["values"], rates[b]["values"]) or float("nan")

        if peer and ours:
            print(f"our/peer, {ours} / {peer} (best peer): {ratio(ours, peer):.2f}   "
                  "(target >= 1.0)")
        if peer and tf_best and tf_best != ours:
            print(f"best TF / peer, {tf_best} / {peer}: {ratio(tf_best, peer):.2f}")
        for peer_name in (n for n in rates if n.startswith("torch")):
            threads = _parse_engine(peer_name.split(":")[0])[1]
            for name in rates:
                engine, _, variant = name.partition(":")
                if not engine.startswith("tf") or variant != "fit":
                    continue
                setting = _parse_engine(engine)[1]
                if (setting[0] if setting else os.cpu_count()) == threads:
                    print(f"same thread count, {name} / {peer_name}: "
                          f"{ratio(name, peer_name):.2f}")
        for name in [n for n in (ours, tf_best) if n][:1 if ours == tf_best else 2]:
            print(f"utilisation of {name}: {utilisation(name):.0%}   "
                  "(target >= 50%)")
        if "pipeline" in rates:
            for name in [n for n in (ours, tf_best) if n][:1 if ours == tf_best else 2]:
                print(f"input pipeline / {name} training: {ratio('pipeline', name):.1f}x   "
                      "(target >= 5x)")
    if results["errors"]:
        print("\nProblems: " + "; ".join(results["errors"]))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker:
        _worker_main(FLAGS.worker)
        return
    sizes = [_parse_size(s) for s in FLAGS.sizes]
    measurements = [_parse_measurement(m) for m in FLAGS.measurements]
    print(f"Training benchmark of the default U-Net (base_filters={FLAGS.base_filters}, "
          f"depth={FLAGS.depth}); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {FLAGS.rounds} round(s) of {FLAGS.seconds:g} s per "
          "measurement.", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="training_benchmark_") as data_dir:
        results = _run(data_dir, sizes, measurements)
    _summary(results)
    print(f"\nTotal time {time.perf_counter() - started:.0f} s.")
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=1)
        print(f"Wrote {FLAGS.output_json}.")


if __name__ == "__main__":
    app.run(main)
