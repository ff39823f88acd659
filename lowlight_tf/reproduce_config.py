"""The configuration of `tools/reproduce` (the paper's Table 1 run), defined once.

A `ReproduceConfig` holds a `TrainConfig` (`train`) for the options every training stage shares
(patch size, model size, schedule, loss, simulation steps, seed, ...), with their one set of
defaults, plus the run's own options and the per-stage overrides (epochs, steps and learning
rate of pretraining, transfer and the scratch rows). `tools/reproduce` generates its flags from
both (`define_flags`), so a flag of the shared options means the same as in `tools/train`.
"""
import dataclasses

from absl import flags

from lowlight_tf import config as config_lib
from lowlight_tf.config import option
from lowlight_tf.train_config import TrainConfig

STAGES = ("prepare", "calibrate", "curve_baseline", "simulated_test", "eval_shipped", "pretrain",
          "eval_pretrain", "transfer_target", "scratch_target", "calibrate_device",
          "pretrain_device", "transfer_device", "finetune_all_device", "scratch_device",
          "full_device", "device_subsets", "device_adaptation", "report")
CALIBRATION_METHODS = ("joint", "paper", "isp", "none")
# The TrainConfig options that tools/reproduce exposes, shared by all its training stages (the
# others - model_dir, stage, data, init_from, epochs, ... - are set per stage by the run).
TRAIN_OPTIONS = ("simulation_params", "simulation_steps", "patch_size", "batch_size",
                 "validation_steps", "lr_schedule", "warmup_steps", "clipnorm", "ssim_weight",
                 "base_filters", "depth", "exposure_normalization", "upsampling",
                 "exposure_gain", "dim_fraction", "cache", "cache_budget_mb", "seed",
                 "jit_compile")


@dataclasses.dataclass
class ReproduceConfig:
    """Every tools/reproduce option; `train` holds the shared training options (TRAIN_OPTIONS)."""
    work_dir: str = option(
        "", "Folder for everything the run writes: tfrecords/, models/, evaluations/, stages/ "
        "(resume records), report.md, summary.json and curves.png.")
    bright_dir: str = option(
        "", "Folder of bright photos (images or raw files) to simulate dark images from; several "
        "comma-separated folders make one set. Empty uses the scikit-image sample photos "
        "bundled with the install.")
    bright_splits: str = option(
        "train:0.8,val:0.1,test:0.1", "Split fractions of the bright photos, e.g. "
        "train:0.8,val:0.1,test:0.1; the test split becomes the fixed simulated test set.")
    max_side: int = option(
        0, "Downscale bright photos so the longer side is at most this many pixels; 0 keeps "
        "them as they are.", lower=0)
    target_pairs: str = option(
        "", "Folder with low/ and high/ real pairs of the target (ordinary) camera: zero-shot "
        "evaluation and same-camera transfer. Empty skips those rows.")
    target_calib_ids: str = option(
        "", "File stems or ranges (e.g. 4-5,29-30,38) of the target pairs used to calibrate the "
        "simulation and for same-camera transfer; choose whole scenes. Every other target pair "
        "validates.")
    device_pairs: str = option(
        "", "Folder with low/ and high/ real pairs of another device (the paper's transfer "
        "protocol). Empty skips the device rows.")
    device_splits: str = option(
        "train:0.7,test:0.3", "Split fractions of the device pairs, assigned by scene (runs of "
        "consecutive file numbers), e.g. train:0.7,test:0.3.")
    device_calibration: bool = option(
        False, "Also calibrate the simulation on the device's transfer pairs (the same "
        "--device_fraction subset), pretrain a second model on it and start the device's "
        "transfer rows from that model (the paper's protocol: the simulation is fitted on the "
        "device it transfers to).")
    calibration: str = option(
        "joint", "How the simulation's parameters are obtained: joint or paper fits the paper's "
        "composite with that estimator on the target camera's calibration pairs (paper §3.1); "
        "isp fits the ISP-aware model (lowlight_tf.simulation_isp, beyond the paper) on the "
        "same pairs; none uses the preset --simulation_params as it is.",
        choices=CALIBRATION_METHODS)
    tone_curve: bool = option(
        False, "With --calibration=joint or paper: also fit the target camera's tone curve on "
        "the calibration pairs (beyond the paper; see calibration.fit_tone_curve).")
    exposure_spread: float = option(
        1.0, "With --calibration=joint or paper: scale the exposure (common gain) variation of "
        "the calibrated distribution; 1 keeps it as fitted, 0 keeps only the chroma variation "
        "(calibration.scale_exposure_spread).", lower=0.0)
    calibrated_exposure: bool = option(
        False, "Also score the zero-shot model on the target's validation pairs with each "
        "output's brightness set by the target camera's exposure curve from the calibration "
        "pairs (brightness.anchor_exposure; beyond the paper), as a separate row.")
    device_exposure: bool = option(
        False, "Also score every model on the device's test pairs with each output's brightness "
        "(and, as a third row, each channel's mean) set by the device's exposure curve, fitted "
        "on the --device_fraction pairs that row's draw trains on (draw 0's for full "
        "supervision and the zero-shot models; curves.fit_dark_to_bright_curve; beyond the "
        "paper); the paired comparisons and the draws' table then also compare those rows.")
    device_adaptation_epochs: int = option(
        0, "Beyond the paper (issue 16; RESULTS.md session 20, lever A): for each draw of the "
        "device subset, fit the ISP simulation (tone curve on) on that draw's pairs, continue "
        "the shipped model's pretraining on it for this many epochs of --pretrain_steps steps "
        "(every block, exposure normalisation off), then retrain its last two blocks on the "
        "same pairs with the transfer schedule (configs/device_adapt.flags and "
        "device_transfer.flags as one stage group). Reported as their own rows, paired with "
        "the same draw's transfer and scratch rows. 0 leaves them out.", lower=0)
    device_adaptation_learning_rate: float = option(
        5e-4, "Peak learning rate of the device adaptation (--device_adaptation_epochs).",
        lower=0.0)
    pairs_normalization: bool = option(
        True, "The rows trained on real pairs (transfer, all layers, scratch, full supervision, "
        "on the target and the device) keep the exposure normalisation (--exposure_normalization"
        ", or the one of the model they start from). --nopairs_normalization trains them without "
        "it (beyond the paper): a row trained on one camera's pairs then learns that camera's "
        "darkness and brightness instead of guessing them from content (RESULTS.md, session "
        "21); the zero-shot models keep theirs.")
    pretrain_epochs: int = option(20, "Epochs of pretraining on simulated pairs.", lower=1)
    pretrain_steps: int = option(100, "Steps per pretraining epoch.", lower=1)
    pretrain_learning_rate: float = option(1e-3, "Peak learning rate of pretraining.",
                                           lower=0.0)
    transfer_epochs: int = option(10, "Epochs of each transfer stage.", lower=1)
    transfer_steps: int = option(50, "Steps per transfer epoch.", lower=1)
    transfer_learning_rate: float = option(1e-4, "Peak learning rate of the transfer stages.",
                                           lower=0.0)
    transfer_blocks: str = option(
        "", "Comma-separated blocks retrained by transfer; empty means the last two (up4,head), "
        "the paper's blue blocks.")
    device_fraction: float = option(
        0.1, "Fraction of the device's training pairs used by transfer and by the scratch "
        "baseline (the paper's 10%); in (0, 1].", lower=0.0, upper=1.0)
    device_subsets: int = option(
        1, "Draws of the --device_fraction subset for the device's transfer (last two blocks) "
        "and scratch rows: draw k > 0 uses seed --seed + k; the report adds each draw, the "
        "paired margin and the mean and spread over draws. 1 = only the main rows. May change "
        "between runs of one work_dir.", lower=1)
    scratch_epochs: int = option(
        20, "Epochs of the from-scratch rows (10% and 100% of the device pairs).", lower=1)
    scratch_steps: int = option(100, "Steps per epoch of the from-scratch rows.", lower=1)
    scratch_learning_rate: float = option(1e-3, "Peak learning rate of the from-scratch rows.",
                                          lower=0.0)
    full_steps: int = option(
        0, "Steps per epoch of full supervision (100% of the device's training pairs); 0 uses "
        "--scratch_steps. Ten times the pairs need more steps to converge.", lower=0)
    eval_tile: int = option(
        0, "Evaluate with overlapping tiles of this size; 0 runs whole images.", lower=0)
    input_gains: str = option(
        "1", "Comma-separated input gains of every evaluation (an exposure sweep: each dark "
        "input scaled by the gain in 8 bits and scored against the same reference, one row per "
        "gain); 1 is the plain evaluation.")
    save_images: int = option(
        4, "Example panels (input | prediction | reference) per evaluated dataset.", lower=0)
    max_eval_images: int = option(
        0, "Evaluate only the first N images of each dataset; 0 evaluates all.", lower=0)
    stages: str = option(
        ",".join(STAGES), "Comma-separated stages to run, in their fixed order: "
        + ",".join(STAGES) + ". Finished stages are always reused.")
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @classmethod
    def create(cls, **settings):
        """A config from flat settings: names of TRAIN_OPTIONS go to `train`, the rest to the run.

        Raises:
          TypeError: a name that is neither.
        """
        shared = {k: settings.pop(k) for k in list(settings) if k in TRAIN_OPTIONS}
        return cls(train=TrainConfig(**shared), **settings)

    def flat(self):
        """{name: value} of every option, the shared training ones included (as flags name them)."""
        values = {f.name: getattr(self, f.name) for f in config_lib.fields(ReproduceConfig)}
        values.update({name: getattr(self.train, name) for name in TRAIN_OPTIONS})
        return values


def define_flags(flag_values=flags.FLAGS):
    """Define tools/reproduce's flags: the run's options and the shared training options."""
    config_lib.define_flags(ReproduceConfig, flag_values=flag_values, required=("work_dir",))
    config_lib.define_flags(TrainConfig, names=TRAIN_OPTIONS, flag_values=flag_values)


def from_flags(flag_values=flags.FLAGS):
    """The ReproduceConfig of the parsed flags."""
    return ReproduceConfig(
        train=TrainConfig(**config_lib.from_flags(TrainConfig, names=TRAIN_OPTIONS,
                                                  flag_values=flag_values)),
        **config_lib.from_flags(ReproduceConfig, flag_values=flag_values))
