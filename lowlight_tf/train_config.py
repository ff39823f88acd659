"""The training configuration (paper §3.3-3.4), defined once: `tools/train`'s flags derive from it.

`TrainConfig` holds every option of a training run with its one default and help text
(`lowlight_tf.config.option`); `tools/train` generates its flags from it, `training.train`
takes it, each run writes it to `model_dir/flags.txt` (`to_flag_lines`), and `ReproduceConfig`
holds one for the options shared by all its training stages.
"""
import dataclasses

from lowlight_tf.config import option

STAGES = ("pretrain", "transfer", "finetune_all", "scratch")
STRATEGIES = ("mirrored", "multi_worker", "default")
LR_SCHEDULES = ("constant", "cosine")
SAMPLE = "sample"  # --train_data value selecting the embedded sample photos
NO_VALIDATION = "none"
SHIPPED = "shipped"  # --init_from value selecting the shipped pretrained model
EXPOSURE_GAINS = ("patch", "image")
UPSAMPLING = ("transpose", "resize")  # model.UPSAMPLING (config stays free of TensorFlow)


class ConfigError(ValueError):
    """A configuration the user must fix; the message says which value and what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Every option of one training run (the flags of tools/train, same names).

    `base_filters`/`depth`/`exposure_normalization`/`upsampling` None mean "the --init_from
    model's, else 32/4/0/transpose"; `trainable_blocks` "" means the stage's default;
    `val_data` "" means the train data's `val` split and "none" disables validation;
    `train_data` "sample" uses the embedded sample photos built under `sample_root`
    ("" = `<model_dir>/../sample_data`).
    """
    model_dir: str = option(
        "", "Output folder for checkpoints, TensorBoard logs, flags.txt and final.keras. Running "
        "the same command again resumes an interrupted run.")
    stage: str = option(
        "pretrain", "Training stage. pretrain: every block, usually on bright-only data with "
        "simulated dark patches (paper §3.3). transfer: start from --init_from and train only "
        "--trainable_blocks, by default the last decoder block and the head (paper §3.4). "
        "finetune_all: start from --init_from and train every block. scratch: random weights, "
        "every block.", choices=STAGES)
    train_data: str = option(
        SAMPLE, "Training dataset OUTPUT_DIR/NAME[:split] written by tools/make_tfrecords (split "
        "defaults to train). The value 'sample' uses the embedded sample photos, built on first "
        "use under --sample_root.")
    val_data: str = option(
        "", "Validation dataset OUTPUT_DIR/NAME[:split]. Empty means the val split of "
        "--train_data; 'none' disables validation.")
    sample_root: str = option(
        "", "Folder for the embedded sample datasets used by --train_data=sample. Empty means "
        "sample_data/ next to --model_dir.")
    init_from: str = option(
        "", "Initial weights: a .keras model, an epoch_NNN.weights.h5 checkpoint, the "
        "model_dir of an earlier run (its final.keras, else its latest checkpoint) or "
        f"'{SHIPPED}' (the package's pretrained model, lowlight_tf.pretrained). Required for "
        "transfer and finetune_all.")
    trainable_blocks: str = option(
        "", "Comma-separated blocks to train (down1..downN, bottleneck, up1..upN, head, or all). "
        "Empty means upN,head for --stage=transfer and all otherwise.")
    adapters: bool = option(
        False, "Transfer with device adapters (beyond the paper, after LED): a zero-initialised "
        "1x1 convolution beside every 3x3 convolution trains with --trainable_blocks while the "
        "pretrained 3x3 kernels stay frozen; final.keras has them merged into the 3x3 kernels "
        "(the plain U-Net). Needs --init_from.")
    simulation_params: str = option(
        "paper", "Simulation preset for bright-only data: a shipped preset's name ('paper', the "
        "authors' distribution; 'eliei_rgb_tone', ...) or the path of a preset JSON written by "
        "tools/calibrate_simulation.")
    simulation_steps: str = option(
        "bl,cd,pn,gc", "Comma-separated simulation steps in the paper's order: bl (black level), "
        "cd (colour distortion), pn (Poisson noise), gc (gamma correction); a prefix gives the "
        "paper's sub-tasks.")
    patch_size: int = option(
        64, "Side of the square training patches in pixels (paper: 64); a multiple of "
        "2**(depth+1).", lower=8)
    batch_size: int = option(
        16, "Global batch size, split over all replicas and workers.", lower=1)
    epochs: int = option(
        100, "Number of epochs (paper: 100 for pretraining, 250 for transfer).", lower=1)
    steps_per_epoch: int = option(
        100, "Training batches per epoch; a checkpoint is written after each.", lower=1)
    validation_steps: int = option(
        0, "Validation batches per epoch; 0 means one patch of every validation example.",
        lower=0)
    learning_rate: float = option(
        1e-3, "Peak Adam learning rate (paper: 1e-3, best of [1e-4, 1e-2]); positive.",
        lower=0.0)
    lr_schedule: str = option(
        "constant", "Learning-rate schedule after the warm-up: constant (the paper) or cosine "
        "decay to zero at the last step.", choices=LR_SCHEDULES)
    warmup_steps: int = option(
        0, "Steps of linear learning-rate warm-up from zero; 0 disables it.", lower=0)
    clipnorm: float = option(
        0.0, "Clip each gradient to this L2 norm; 0 disables clipping.", lower=0.0)
    ssim_weight: float = option(
        0.0, "Loss = MAE + this weight * (1 - SSIM); 0 is the paper's MAE alone.", lower=0.0)
    base_filters: int | None = option(
        None, "Channels of the first U-Net block (paper: 32). Default: the --init_from model's, "
        "else 32.", lower=1)
    depth: int | None = option(
        None, "Number of encoder and decoder blocks (paper: 4). Default: the --init_from "
        "model's, else 4.", lower=1)
    exposure_normalization: float | None = option(
        None, "0: the paper's model. A mean level in (0, 1), e.g. 0.0392 (10/255): the model "
        "scales each input so its mean is this level before the U-Net, so its output does not "
        "depend on how dark the input is (beyond the paper). Default: the --init_from model's, "
        "else 0.", lower=0.0, upper=0.99)
    upsampling: str | None = option(
        None, "Decoder upsampling. transpose: the paper's 2x2 stride-2 transposed convolution. "
        "resize: a bilinear resize then a 3x3 convolution, and a 3x3 convolution after the "
        "head's depth-to-space (beyond the paper; measured level with transpose, RESULTS.md "
        "session 17). Default: the --init_from model's, else transpose.", choices=UPSAMPLING)
    exposure_gain: str = option(
        "image", "How an exposure-normalising model's training patches are normalised. image: "
        "the input pipeline multiplies each patch by its whole image's gain, as inference does "
        "with a whole photo, so shadows stay darker than highlights. patch: each patch scaled "
        "to the target mean by the model's own layer (sessions 5-8; measured worse, RESULTS.md "
        "session 9). No effect on the paper's model.", choices=EXPOSURE_GAINS)
    train_fraction: float = option(
        1.0, "Fraction of the training examples to use, a deterministic subset by id hash "
        "(paper: 0.1 for transfer); in (0, 1].", lower=0.0, upper=1.0)
    dim_fraction: float = option(
        0.0, "Simulated (bright-only) training data: the fraction of dark patches replaced by "
        "clean dim ones, the bright patch darkened 0-3.5 stops in linear light, so an "
        "exposure-normalising model does not blow out dim photos (lowlight_tf.dim_exposure; "
        "beyond the paper).", lower=0.0, upper=1.0)
    simulated_data: str = option(
        "", "With paired --train_data (transfer on real pairs): a bright-only dataset "
        "OUTPUT_DIR/NAME[:split] whose simulated pairs (--simulation_params, e.g. a preset "
        "calibrated on the same device's pairs) fill --simulated_fraction of every batch "
        "(beyond the paper). Empty: real pairs only.")
    simulated_fraction: float = option(
        0.0, "With --simulated_data: the fraction of every training batch that is simulated; "
        "the count round(fraction * batch_size) must leave at least one real pair and one "
        "simulated pair per batch.", lower=0.0, upper=1.0)
    cache: str = option(
        "auto", "Where the training pipeline keeps decoded images between epochs: memory, none "
        "(decode every epoch: bounded memory for datasets larger than RAM), disk:PATH "
        "(TensorFlow's file cache; PATH's folder must exist) or auto (memory when the decoded "
        "set fits --cache_budget_mb, else none).")
    cache_budget_mb: int = option(
        4096, "The largest decoded training set (MiB) that --cache=auto keeps in memory.",
        lower=0)
    data_service: str = option(
        "", "Address (grpc://HOST:PORT) of a tf.data service dispatcher: the training input "
        "pipeline (decoding, patches, on-the-fly simulation) runs on the service's workers "
        "instead of this machine's CPUs, with the same batches. Empty: the local pipeline. One "
        "trainer only (not with --strategy=multi_worker).")
    seed: int = option(0, "Seed for weights, patches and simulation.", lower=0)
    strategy: str = option(
        "mirrored", "Distribution: mirrored (all GPUs of this machine, the CPU when there is "
        "none), multi_worker (several machines described by the TF_CONFIG environment variable) "
        "or default (no tf.distribute).", choices=STRATEGIES)
    jit_compile: bool = option(
        False, "Compile the training step with XLA. On CPU this was 3-6x slower in "
        "benchmarks/training.py; it is meant for GPUs.")
    intra_op_threads: int = option(
        0, "Threads inside one TensorFlow op; 0 lets TensorFlow choose. On a CPU shared with "
        "other work, 1 (with --inter_op_threads=1) was up to 1.9x faster in "
        "benchmarks/training.py; on an idle machine it is slower.", lower=0)
    inter_op_threads: int = option(
        0, "Independent TensorFlow ops run at once; 0 lets TensorFlow choose.", lower=0)
    deterministic: bool = option(
        False, "Make every TensorFlow op deterministic so that the same --seed gives "
        "bit-identical weights, at some speed cost. Needs --strategy=default and the "
        "environment variable TF_ENABLE_ONEDNN_OPTS=0.")
    num_images: int = option(
        4, "Validation patches shown as dark | prediction | bright in TensorBoard every epoch.",
        lower=0)
    verbose: int = option(
        2, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.", lower=0,
        upper=2)
