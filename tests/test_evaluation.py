"""Tests for lowlight_tf.baselines and lowlight_tf.evaluation (Table 1 reports, tools/evaluate)."""
import csv
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import run_tool  # pylint: disable=import-error
from lowlight_tf import baselines
from lowlight_tf import brightness as brightness_lib
from lowlight_tf import curves
from lowlight_tf import data
from lowlight_tf import evaluation
from lowlight_tf import evaluation_scoring as scoring
from lowlight_tf import evaluation_report
from lowlight_tf import training_facts
from lowlight_tf import inference
from lowlight_tf import metrics
from lowlight_tf import layers
from lowlight_tf import model as model_lib
from lowlight_tf import subsets
from lowlight_tf import simulation


# ----------------------------------------------------------------------------------------------
# Baselines against hand-computed values.

def test_gamma_hand_computed():
    dark = np.array([[[0.0, 64.0, 255.0]]], np.float32)
    # 255 * (64 / 255) ** 0.4 = 255 * exp(0.4 * ln 0.250980) = 255 * 0.575239 = 146.686
    np.testing.assert_allclose(baselines.gamma(dark), [[[0.0, 146.686, 255.0]]], atol=1e-2)


def test_auto_gain_hand_computed():
    dark = np.array([[[20.0, 40.0, 60.0], [100.0, 140.0, 6.0]]], np.float32)  # mean 61
    # gain = 0.45 * 255 / 61 = 1.881148; 140 * gain = 263.4 is clipped to 255.
    expected = [[[37.623, 75.246, 112.869], [188.115, 255.0, 11.287]]]
    np.testing.assert_allclose(baselines.auto_gain(dark), expected, atol=1e-3)
    np.testing.assert_array_equal(baselines.auto_gain(np.zeros((2, 2, 3))), 0.0)


def test_histogram_equalization_hand_computed():
    # Values 0, 0, 10, 20: 256 bins over [0, 20]; the CDF is 0.5 at the first bin centre,
    # 0.75 at bin 128 (centre 10.039), 1 at the last. 10 lies halfway between the centres of
    # bins 127 and 128 -> 0.625.
    flat = np.array([0.0, 0.0, 10.0, 20.0], np.float32).reshape(1, 4, 1).repeat(3, axis=-1)
    out = baselines.histogram_equalization(flat)
    np.testing.assert_allclose(out[0, :, 0], [127.5, 127.5, 159.375, 255.0], atol=1e-3)


def test_histogram_equalization_matches_skimage():
    from skimage import exposure
    dark = np.random.default_rng(0).gamma(2.0, 6.0, (40, 50, 3)).clip(0, 255).astype(np.float32)
    expected = exposure.equalize_hist(dark / 255.0, nbins=256) * 255.0
    np.testing.assert_allclose(baselines.histogram_equalization(dark), expected, atol=1e-3)


def test_calibrated_curve_hand_computed():
    class Pair:  # the two fields baselines read from lowlight_tf.calibration.Pair
        def __init__(self, dark, bright):
            self.dark, self.bright = np.asarray(dark, np.float32), np.asarray(bright, np.float32)

    pairs = [Pair([[[2, 2, 2], [4, 4, 4]]], [[[100, 110, 120], [200, 200, 200]]]),
             Pair([[[2, 2, 2], [8, 8, 8]]], [[[120, 130, 140], [240, 250, 255]]])]
    curve = baselines.fit_dark_to_bright_curve(pairs)
    np.testing.assert_allclose(curve[:, 2], [110, 120, 130])  # pooled mean over both pairs
    np.testing.assert_allclose(curve[:, 4], [200, 200, 200])
    np.testing.assert_allclose(curve[:, 6], [220, 225, 227.5])  # interpolated between 4 and 8
    np.testing.assert_allclose(curve[:, 0], [110, 120, 130])  # held flat below the lowest value
    enhanced = baselines.apply_curve([[[3.0, 4.0, 8.0]]], curve, blur=0)
    np.testing.assert_allclose(enhanced, [[[155.0, 200.0, 255.0]]])
    flat = np.full((9, 9, 3), 4.0)
    flat[4, 4] = 8.0  # the blur spreads this outlier before the lookup
    assert baselines.apply_curve(flat, curve)[4, 4, 0] < baselines.apply_curve(flat, curve,
                                                                               blur=0)[4, 4, 0]
    with pytest.raises(ValueError, match="at least one pair"):
        baselines.fit_dark_to_bright_curve([])


def test_apply_by_key_and_unknown_name():
    dark = np.full((2, 2, 3), 51.0, np.float32)
    np.testing.assert_allclose(baselines.apply("auto_gain", dark), 114.75)
    np.testing.assert_allclose(baselines.apply("input", dark), 51.0)
    with pytest.raises(ValueError, match="auto_gain"):
        baselines.apply("retinex", dark)


# ----------------------------------------------------------------------------------------------
# End to end on a tiny generated pairs dataset.

def _numpy_psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 20.0 * np.log10(255.0 / np.sqrt(mse))


@pytest.fixture(scope="module")
def pairs_dataset(tmp_path_factory):
    """A pairs dataset `toy` with 2 train and 3 test pairs of 40x56 images; returns its root."""
    from data_prep import prepare
    root = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    for folder in ("low", "high"):
        (root / "input" / folder).mkdir(parents=True)
    for i in range(5):
        bright = rng.integers(40, 255, (40, 56, 3)).astype(np.uint8)
        dark = (bright * 0.1 + rng.integers(0, 3, bright.shape)).astype(np.uint8)
        Image.fromarray(dark).save(root / "input" / "low" / f"{i}.png")
        Image.fromarray(bright).save(root / "input" / "high" / f"{i}.png")
    prepare.make_tfrecords(
        "pairs", output_dir=str(root / "tfr"), name="toy", input_dir=str(root / "input"),
        splits="train:0.5,test:0.5",
        split_overrides={f"{i}.png": "train" if i < 2 else "test" for i in range(5)})
    # An images dataset (bright only) for the error test.
    (root / "photos").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)).save(
            root / "photos" / f"{i}.png")
    prepare.make_tfrecords("images", output_dir=str(root / "tfr"), name="photos",
                           input_dir=str(root / "photos"), splits="test:1.0")
    return root


@pytest.fixture(scope="module")
def model_dirs(pairs_dataset):
    """A pretrain model_dir and a transfer model_dir (init_from the first) with flags.txt."""
    keras.utils.set_random_seed(0)
    pretrain = pairs_dataset / "runs" / "pre"
    transfer = pairs_dataset / "runs" / "transfer"
    for run in (pretrain, transfer):
        run.mkdir(parents=True)
        model_lib.build_unet("rgb", base_filters=4, depth=1).save(str(run / "final.keras"))
    (pretrain / "flags.txt").write_text(
        "# Effective flags\n--stage=pretrain\n--train_data=sample\n--epochs=7\n")
    (transfer / "flags.txt").write_text(
        f"--stage=transfer\n--init_from={pretrain}\n--train_data={pairs_dataset}/tfr/toy:train\n"
        "--train_fraction=1.0\n--epochs=3\n--seed=0\n")
    return pretrain, transfer


def test_evaluate_end_to_end(pairs_dataset, model_dirs, tmp_path):
    _, transfer = model_dirs
    lines = []
    rows = evaluation.evaluate(str(transfer), [f"{pairs_dataset}/tfr/toy"], str(tmp_path),
                               save_images=2, progress=lines.append)
    methods = [row["method"] for row in rows]
    assert methods == ["transfer", "input", "gamma 0.4", "histogram equalisation",
                       "auto-gain (mean 0.45)"]
    assert all(row["dataset"] == "toy:test" and row["images"] == 3 for row in rows)
    model_row = rows[0]
    # Table 1 facts from flags.txt: 2 training images of toy, 7 initial / 3 transfer epochs.
    assert model_row["training_images"] == 2 and model_row["epochs"] == "7 / 3"
    assert model_row["kind"] == "model" and rows[1]["kind"] == "baseline"

    # The input row is the plain PSNR of the stored dark vs bright PNGs, computed with NumPy.
    expected = np.mean([
        _numpy_psnr(np.asarray(Image.open(pairs_dataset / "input" / "low" / f"{i}.png")),
                    np.asarray(Image.open(pairs_dataset / "input" / "high" / f"{i}.png")))
        for i in (2, 3, 4)])
    assert rows[1]["psnr"] == pytest.approx(expected, abs=1e-3)
    # 8-bit PSNR of these images is a few dB to a few tens of dB, never the 48 dB too high that
    # a [0, 1] vs [0, 255] mix-up gives.
    assert 3.0 < rows[1]["psnr"] < 30.0

    with open(tmp_path / "per_image.csv", encoding="utf-8") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 3 * 5
    transfer_psnr = [float(r["psnr"]) for r in per_image if r["method"] == "transfer"]
    assert np.mean(transfer_psnr) == pytest.approx(model_row["psnr"], abs=1e-3)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == methods
    for key in ("method", "dataset", "psnr", "psnr_gt_mean", "ssim", "images"):
        assert key in summary["rows"][0]
    table = (tmp_path / "table.md").read_text()
    assert "| Model | Dataset | No. training images from dataset | No. epochs initial / transfer" \
        in table
    assert "GT-mean PSNR" in table and "| transfer | toy:test | 2 | 7 / 3 |" in table

    panels = sorted(os.listdir(tmp_path / "panels"))
    assert len(panels) == 2
    panel = np.asarray(Image.open(tmp_path / "panels" / panels[0]))
    assert panel.shape == (40, 3 * 56, 3)
    assert any("mean PSNR" in line for line in lines)


def test_evaluate_tiled_and_paper_stitching(pairs_dataset, model_dirs, tmp_path):
    pretrain, _ = model_dirs
    model = model_lib.load_model(str(pretrain))
    whole = evaluation.evaluate(model, [f"{pairs_dataset}/tfr/toy:test"], str(tmp_path / "w"),
                                save_images=0, baselines=[], progress=None)
    tiled = evaluation.evaluate(model, [f"{pairs_dataset}/tfr/toy:test"], str(tmp_path / "t"),
                                tile=32, overlap=16, save_images=0, baselines=[], progress=None)
    paper = evaluation.evaluate(model, [f"{pairs_dataset}/tfr/toy:test"], str(tmp_path / "p"),
                                stitch="paper", tile=16, save_images=0, baselines=[],
                                progress=None)
    assert len(whole) == len(tiled) == len(paper) == 1
    assert whole[0]["method"] == "model" and whole[0]["training_images"] == "n/a"
    assert tiled[0]["psnr"] == pytest.approx(whole[0]["psnr"], abs=0.5)
    assert np.isfinite(paper[0]["psnr"])


def test_simulated_test_set_counts_its_source_images(pairs_dataset, tmp_path):
    from data_prep import prepare
    tfr = pairs_dataset / "tfr"
    prepare.make_tfrecords("simulated", output_dir=str(tfr), name="photos_sim",
                           source_data=f"{tfr}/photos", splits="test:1.0")
    run = tmp_path / "pre_on_photos"
    run.mkdir()
    model_lib.build_unet("rgb", base_filters=4, depth=1).save(str(run / "final.keras"))
    (run / "flags.txt").write_text(f"--stage=pretrain\n--train_data={tfr}/photos:test\n"
                                   "--epochs=4\n")
    rows = evaluation.evaluate(str(run), [f"{tfr}/photos_sim:test", f"{tfr}/toy:test"],
                               str(tmp_path / "eval"), save_images=0, baselines=["input"],
                               progress=None)
    by_dataset = {(r["method"], r["dataset"]): r for r in rows}
    assert by_dataset[("pre_on_photos", "photos_sim:test")]["training_images"] == 2
    assert by_dataset[("pre_on_photos", "toy:test")]["training_images"] == 0
    assert by_dataset[("pre_on_photos", "toy:test")]["epochs"] == "4 / -"
    assert len(rows) == 4


def test_training_facts_for_pretrain_and_unknown(model_dirs, tmp_path):
    pretrain, _ = model_dirs
    facts = training_facts.training_facts(str(pretrain / "final.keras"))
    assert facts.known and facts.epochs == "7 / -"
    # A per-epoch checkpoint reports the epochs it has seen.
    checkpoint = pretrain / "checkpoints" / "epoch_002.weights.h5"
    assert training_facts.training_facts(str(checkpoint)).epochs == "2 / -"
    assert training_facts.training_facts(str(tmp_path / "x.keras")).epochs == "n/a"
    # A transfer from a lone .keras (no flags.txt beside it): its epochs are not on record.
    run = tmp_path / "from_lone_model"
    run.mkdir()
    (run / "flags.txt").write_text(f"--init_from={tmp_path / 'lone.keras'}\n--epochs=15\n")
    assert training_facts.training_facts(str(run)).epochs == "n/a / 15"


def test_training_images_count_each_image_once_along_an_init_chain(pairs_dataset, tmp_path):
    """Table 1's image count: a chain that trains twice on one draw (a transfer, then every
    block from it) counts the draw once; two draws count their union."""
    toy = f"{pairs_dataset}/tfr/toy"
    key = os.path.abspath(f"{pairs_dataset}/tfr/toy")

    def run(name, init_from="", fraction=0.5, seed=0):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "flags.txt").write_text(
            f"--train_data={toy}:train\n--train_fraction={fraction}\n--seed={seed}\n"
            f"--init_from={init_from}\n--epochs=3\n")
        return str(folder)

    def ids(seed):
        subset = subsets.select_fraction(data.load(f"{pairs_dataset}/tfr", "toy", "train"),
                                         0.5, seed=seed)
        return {bytes(i) for i in subset.map(lambda e: e["id"]).as_numpy_iterator()}

    first = run("first")
    assert training_facts.training_facts(first).training_images == {key: 1}
    again = run("again", init_from=first)
    assert training_facts.training_facts(again).training_images == {key: 1}
    for seed in range(1, 6):  # another draw: the union of the two subsets
        other = run(f"other{seed}", init_from=first, seed=seed)
        union = len(ids(0) | ids(seed))
        assert training_facts.training_facts(other).training_images == {key: union}
    everything = run("everything", init_from=again, fraction=1.0)
    assert training_facts.training_facts(everything).training_images == {key: 2}


def test_calibrated_exposure_row(pairs_dataset, model_dirs, tmp_path):
    _, transfer = model_dirs
    toy = f"{pairs_dataset}/tfr/toy"
    curve = np.tile(np.minimum(10.0 * np.arange(256.0), 255.0), (3, 1))  # these darks are 0.1 x
    rows = evaluation.evaluate(str(transfer), [toy], str(tmp_path / "a"), save_images=0,
                               baselines=(), exposure_curves={toy: curve}, progress=None)
    assert [r["method"] for r in rows] == ["transfer", "transfer + calibrated exposure",
                                           "transfer + calibrated colour"]
    assert all(r["kind"] == "model" and r["training_images"] == 2 for r in rows[1:])
    # An identity "model" keeps the dark input, so its anchored output is the dark image times
    # one gain that gives it the curve's expected brightness.
    inputs = keras.Input(shape=(None, None, 3))
    identity = keras.Model(inputs, layers.DepthToSpace(2, name="head_depth_to_space")(
        layers.SpaceToDepth(2, name="space_to_depth")(inputs)))
    rows = evaluation.evaluate(identity, [toy], str(tmp_path / "b"), save_images=0,
                               baselines=("input",), model_label="identity",
                               exposure_curves={toy: curve}, progress=None)
    assert [r["method"] for r in rows] == ["identity", "identity + calibrated exposure",
                                           "identity + calibrated colour", "input"]
    assert rows[0]["psnr"] == pytest.approx(rows[3]["psnr"], abs=1e-3)
    # The curve is the same for every channel, so the per-channel gains set each channel's mean
    # to 10x its dark mean: by hand, as the one-gain row below.
    colour_scores = []
    scores = []
    for i in (2, 3, 4):
        dark = np.asarray(Image.open(pairs_dataset / "input" / "low" / f"{i}.png"), np.float32)
        bright = np.asarray(Image.open(pairs_dataset / "input" / "high" / f"{i}.png"),
                            np.float32)
        gain = 255.0 * brightness_lib.expected_brightness(dark / 255.0, curve) / dark.mean()
        scores.append(scoring.image_metrics(scoring.quantize(dark * gain), bright)[0])
        gains = 255.0 * curves.expected_channel_means(dark / 255.0, curve) / dark.mean((0, 1))
        colour_scores.append(scoring.image_metrics(scoring.quantize(dark * gains), bright)[0])
    assert rows[1]["psnr"] == pytest.approx(np.mean(scores), abs=0.05)
    assert rows[2]["psnr"] == pytest.approx(np.mean(colour_scores), abs=0.05)
    assert rows[1]["psnr"] > rows[0]["psnr"] + 10  # the dark input, brightened
    with pytest.raises(evaluation.EvaluationError, match="not among the evaluated"):
        evaluation.evaluate(str(transfer), [toy], str(tmp_path / "x"),
                            exposure_curves={"elsewhere/toy": curve}, progress=None)


def test_bad_inputs_raise_clear_errors(pairs_dataset, model_dirs, tmp_path):
    _, transfer = model_dirs
    toy = f"{pairs_dataset}/tfr/toy"
    with pytest.raises(evaluation.EvaluationError, match="does not exist"):
        evaluation.evaluate(str(tmp_path / "missing.keras"), [toy], str(tmp_path / "o"))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(evaluation.EvaluationError, match="corrupt.keras"):
        evaluation.evaluate(str(corrupt), [toy], str(tmp_path / "o"))
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    with pytest.raises(evaluation.EvaluationError, match="bayer"):
        evaluation.evaluate(bayer, [toy], str(tmp_path / "o"))
    with pytest.raises(evaluation.EvaluationError, match="images"):
        evaluation.evaluate(str(transfer), [f"{pairs_dataset}/tfr/photos"], str(tmp_path / "o"))
    with pytest.raises(evaluation.EvaluationError, match="no examples"):
        evaluation.evaluate(str(transfer), [f"{toy}:test[:0]"], str(tmp_path / "o"))
    with pytest.raises(evaluation.EvaluationError, match="nothere"):
        evaluation.evaluate(str(transfer), [f"{pairs_dataset}/tfr/nothere"], str(tmp_path / "o"))
    with pytest.raises(evaluation.EvaluationError, match="at least one"):
        evaluation.evaluate(str(transfer), [], str(tmp_path / "o"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(evaluation.EvaluationError, match="file"):
        evaluation.evaluate(str(transfer), [toy], str(blocker / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_evaluate_cli_exit_codes(pairs_dataset, model_dirs, tmp_path):
    _, transfer = model_dirs
    toy = f"--data={pairs_dataset}/tfr/toy"
    ok = run_tool("evaluate", f"--model={transfer}", toy, f"--output_dir={tmp_path / 'ok'}",
                  "--baselines=gamma", "--save_images=1", cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "| transfer | toy:test |" in ok.stdout and "gamma 0.4" in ok.stdout
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["transfer", "gamma 0.4"]

    preset = simulation.load_preset("paper")
    no_curve = run_tool("evaluate", f"--model={transfer}", toy, f"--output_dir={tmp_path / 'nc'}",
                        "--exposure_preset=paper", cwd=str(tmp_path))
    assert no_curve.returncode == 2 and "holds no exposure curve" in no_curve.stderr
    preset.exposure_curve = np.tile(np.minimum(10.0 * np.arange(256.0), 255.0), (3, 1))
    simulation.save_preset(preset, str(tmp_path / "camera.json"))
    anchored = run_tool("evaluate", f"--model={transfer}", toy, f"--output_dir={tmp_path / 'ex'}",
                        "--baselines=none", f"--exposure_preset={tmp_path / 'camera.json'}",
                        cwd=str(tmp_path))
    assert anchored.returncode == 0, anchored.stderr
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == [
        "transfer", "transfer + calibrated exposure", "transfer + calibrated colour"]

    bad_model = run_tool("evaluate", f"--model={tmp_path / 'missing.keras'}", toy,
                         f"--output_dir={tmp_path / 'bad'}", cwd=str(tmp_path))
    assert bad_model.returncode == 2 and "missing.keras" in bad_model.stderr


# ----------------------------------------------------------------------------------------------
# Damaged datasets, the report folder, the exposure sweep and the unpaired check.

@pytest.fixture(scope="module")
def tiny_model():
    """A real, untrained U-Net (4 filters, depth 2), as tools/train builds them."""
    keras.utils.set_random_seed(0)
    return model_lib.build_unet("rgb", base_filters=4, depth=2)


def _damaged_copy(pairs_dataset, tmp_path):
    """A copy of the toy dataset whose test shard is cut to half its bytes."""
    import shutil
    copy = tmp_path / "damaged" / "toy"
    shutil.copytree(pairs_dataset / "tfr" / "toy", copy)
    shards = [os.path.join(root, name) for root, _, names in os.walk(copy) for name in names
              if "test.tfrecord" in name]
    assert shards
    for shard in shards:
        size = os.path.getsize(shard)
        with open(shard, "r+b") as f:
            f.truncate(size // 2)
    return str(tmp_path / "damaged" / "toy")


def _tree(folder):
    """{relative path: bytes} of every file under folder."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_truncated_shard_is_a_clear_error_and_the_old_report_stays(pairs_dataset, tiny_model,
                                                                   tmp_path, capsys):
    out = tmp_path / "report"
    evaluation.evaluate(tiny_model, [f"{pairs_dataset}/tfr/toy"], str(out), save_images=1,
                        baselines=("input",))
    # Per-image progress through lowlight_tf.progress (plain lines when not on a terminal).
    assert "Evaluating on toy:test: done 3/3 images" in capsys.readouterr().err
    before = _tree(out)
    assert {"per_image.csv", "summary.json", "table.md",
            evaluation_report.REPORT_MARKER} <= set(before)
    damaged = _damaged_copy(pairs_dataset, tmp_path)
    with pytest.raises(evaluation.EvaluationError,
                       match=r"could not be read.*damaged or truncated.*make_tfrecords"):
        evaluation.evaluate(tiny_model, [damaged], str(out), save_images=3,
                            baselines=("input",), progress=None)
    assert _tree(out) == before  # no new panel next to the old summary: nothing changed
    assert not [n for n in os.listdir(tmp_path) if ".staging" in n or ".old" in n]


def test_report_folder_is_replaced_whole_and_foreign_folders_need_overwrite(
        pairs_dataset, tiny_model, tmp_path):
    toy = f"{pairs_dataset}/tfr/toy"
    out = tmp_path / "report"
    evaluation.evaluate(tiny_model, [toy], str(out), save_images=2, baselines=(),
                        progress=None)
    assert len(os.listdir(out / "panels")) == 2
    # A second run without panels replaces the report as a whole: no stale panel stays.
    evaluation.evaluate(tiny_model, [toy], str(out), save_images=0, baselines=(),
                        progress=None)
    assert not (out / "panels").exists()
    marker = json.loads((out / evaluation_report.REPORT_MARKER).read_text())
    assert sorted(marker["files"]) == ["per_image.csv", "summary.json", "table.md"]
    # A report of an older version (no marker) is recognised and replaced too.
    (out / evaluation_report.REPORT_MARKER).unlink()
    evaluation.evaluate(tiny_model, [toy], str(out), save_images=0, baselines=(),
                        progress=None)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    (foreign / "table.md").write_text("my table")
    with pytest.raises(evaluation.EvaluationError, match=r"did not write.*--overwrite"):
        evaluation.evaluate(tiny_model, [toy], str(foreign), progress=None)
    assert _tree(foreign) == {"notes.txt": b"my notes", "table.md": b"my table"}
    evaluation.evaluate(tiny_model, [toy], str(foreign), save_images=1, baselines=(),
                        overwrite=True, progress=None)
    assert (foreign / "notes.txt").read_text() == "my notes"
    assert "| Model |" in (foreign / "table.md").read_text()
    assert len(os.listdir(foreign / "panels")) == 1
    # A later run with --overwrite removes only what the earlier report wrote.
    evaluation.evaluate(tiny_model, [toy], str(foreign), save_images=0, baselines=(),
                        overwrite=True, progress=None)
    assert not os.listdir(foreign / "panels") and (foreign / "notes.txt").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_exposure_sweep_rows_and_brightness_ratio(pairs_dataset, tiny_model, tmp_path):
    toy = f"{pairs_dataset}/tfr/toy"
    gains = (0.5, 1.0, 2.0, 4.0)
    rows = evaluation.evaluate(tiny_model, [toy], str(tmp_path), save_images=1,
                               input_gains=gains, model_label="tiny", progress=None)
    methods = ["tiny", "input", "gamma 0.4", "histogram equalisation", "auto-gain (mean 0.45)"]
    assert [(r["gain"], r["method"]) for r in rows] == [(g, m) for g in gains for m in methods]
    by_key = {(r["method"], r["gain"]): r for r in rows}

    # The input row at each gain, by hand: clip(round(dark * gain), 0, 255) against the bright.
    darks = [np.asarray(Image.open(pairs_dataset / "input" / "low" / f"{i}.png"), np.float64)
             for i in (2, 3, 4)]
    brights = [np.asarray(Image.open(pairs_dataset / "input" / "high" / f"{i}.png"), np.float64)
               for i in (2, 3, 4)]
    for gain in gains:
        scaled = [np.clip(np.round(d * gain), 0, 255) for d in darks]
        psnr = np.mean([_numpy_psnr(s, b) for s, b in zip(scaled, brights)])
        ratios = [s.mean() / b.mean() for s, b in zip(scaled, brights)]
        row = by_key[("input", gain)]
        assert row["psnr"] == pytest.approx(psnr, abs=1e-3)
        assert row["brightness_ratio"] == pytest.approx(np.exp(np.mean(np.log(ratios))),
                                                        rel=1e-6)
    # These darks are about 0.1x their references: the input brightens with the gain, the
    # auto-gain baseline stays put.
    assert by_key[("input", 4.0)]["brightness_ratio"] > 3.5 * by_key[("input", 1.0)][
        "brightness_ratio"]
    assert by_key[("auto-gain (mean 0.45)", 4.0)]["brightness_ratio"] == pytest.approx(
        by_key[("auto-gain (mean 0.45)", 1.0)]["brightness_ratio"], rel=0.05)
    assert np.isfinite(by_key[("tiny", 2.0)]["brightness_ratio"])

    with open(tmp_path / "per_image.csv", encoding="utf-8") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 3 * len(methods) * len(gains)
    assert sorted({r["gain"] for r in per_image}) == ["0.5", "1", "2", "4"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["input_gains"] == list(gains)
    assert [r["gain"] for r in summary["rows"]] == [r["gain"] for r in rows]
    assert "geometric mean" in summary["metrics"]["brightness_ratio"]
    table = (tmp_path / "table.md").read_text()
    assert "| Input gain | Output / reference brightness |" in table
    assert table.count("| tiny | toy:test |") == 4
    assert len(os.listdir(tmp_path / "panels")) == len(gains)  # one panel per gain
    with pytest.raises(evaluation.EvaluationError, match="positive"):
        evaluation.evaluate(tiny_model, [toy], str(tmp_path / "x"), input_gains=(1.0, -2.0))


def test_unpaired_no_reference_check(tiny_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    dim = rng.integers(20, 60, (32, 40, 3)).astype(np.uint8)
    bright = rng.integers(150, 256, (24, 24, 3)).astype(np.uint8)
    Image.fromarray(dim).save(photos / "dim.png")
    Image.fromarray(bright).save(photos / "bright.jpg", quality=95)
    (photos / "broken.png").write_bytes(b"not an image at all")
    rows = evaluation.evaluate(tiny_model, [], str(tmp_path / "out"), unpaired=str(photos),
                               input_gains=(1.0, 2.0), baselines=("input", "auto_gain"),
                               model_label="tiny", progress=None)
    assert rows == []
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    unpaired = summary["unpaired_rows"]
    methods = ["tiny", "input", "auto-gain (mean 0.45)"]
    assert [(r["method"], r["gain"]) for r in unpaired] == [
        (m, g) for g in (1.0, 2.0) for m in methods]
    assert all(r["images"] == 2 and r["dataset"] == "unpaired:photos" for r in unpaired)
    assert [s["path"].endswith("broken.png") for s in summary["unpaired_skipped"]] == [True]
    # The auto-gain row by hand, from the decoded photos.
    decoded = [np.asarray(Image.open(photos / name).convert("RGB"), np.float32)
               for name in ("bright.jpg", "dim.png")]
    for gain in (1.0, 2.0):
        stats = [metrics.no_reference_stats(scoring.quantize(baselines.auto_gain(
            scoring.scale_input(d, gain)))) for d in decoded]
        row = unpaired[2 if gain == 1.0 else 5]
        assert row["mean_brightness"] == pytest.approx(np.mean([s[0] for s in stats]),
                                                       abs=1e-4)
        assert row["clipped_fraction"] == pytest.approx(np.mean([s[1] for s in stats]),
                                                        abs=1e-6)
        # The periodic texture: only the dim photo is long enough (40 pixels) to measure.
        texture = metrics.periodic_texture(scoring.quantize(baselines.auto_gain(
            scoring.scale_input(decoded[1], gain))))
        assert row["periodic_texture"] == pytest.approx(texture, rel=1e-5)
    # The bright photo's input, doubled, clips (on half the photos at most: the dim one not).
    assert unpaired[1]["clipped_fraction"] < unpaired[4]["clipped_fraction"] <= 0.5
    with open(tmp_path / "out" / "unpaired.csv", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 * 2 * 3 and {"mean_brightness", "clipped_fraction",
                                        "periodic_texture"} <= set(lines[0])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "No-reference check" in table and "Clipped-highlight pixels (%)" in table
    assert "| Periodic texture |" in table
    assert not (tmp_path / "out" / "per_image.csv").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(evaluation.EvaluationError, match="no image"):
        evaluation.evaluate(tiny_model, [], str(tmp_path / "o2"), unpaired=str(tmp_path / "empty"))
    with pytest.raises(evaluation.EvaluationError, match="not a folder"):
        evaluation.evaluate(tiny_model, [], str(tmp_path / "o2"), unpaired=str(photos / "dim.png"))
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_shift_ensemble_rows(tiny_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    dim = np.random.default_rng(2).integers(20, 60, (48, 64, 3)).astype(np.uint8)
    Image.fromarray(dim).save(photos / "dim.png")
    evaluation.evaluate(tiny_model, [], str(tmp_path / "out"), unpaired=str(photos),
                        baselines=(), model_label="tiny", shift_ensemble=True, progress=None)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["shift_ensemble"] is True
    [row] = summary["unpaired_rows"]
    assert row["method"] == "tiny + shift ensemble"
    # The row's statistics are those of the ensemble prediction, not of the plain one.
    ensemble = scoring.quantize(inference.predict_image(tiny_model, dim.astype(np.float32),
                                                        shift_ensemble=True))
    assert row["mean_brightness"] == pytest.approx(float(np.mean(ensemble)), abs=1e-3)


@pytest.mark.slow
def test_brightness_row_is_what_enhance_writes(pairs_dataset, tiny_model, tmp_path):
    """--brightness adds a row of the output with tools/enhance's brightness step, then its
    chroma filter; on paired data and unpaired photos, and at every gain."""
    photos = tmp_path / "photos"
    photos.mkdir()
    # Bright enough (mean >= brightness.WELL_EXPOSED_MEAN) that "auto" limits the output.
    well = np.random.default_rng(3).integers(60, 200, (40, 56, 3)).astype(np.uint8)
    Image.fromarray(well).save(photos / "well.png")
    rows = evaluation.evaluate(tiny_model, [f"{pairs_dataset}/tfr/toy"], str(tmp_path / "out"),
                               unpaired=str(photos), input_gains=(1.0, 2.0), baselines=(),
                               model_label="tiny", chroma_filter=True, brightness="0.6",
                               progress=None)
    label = "tiny + brightness 0.6 + chroma filter"
    assert [r["method"] for r in rows] == ["tiny", "tiny + chroma filter", label] * 2
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["brightness"] == "0.6"
    # A mean level: every output of the row has that mean (8-bit rounding aside).
    with open(tmp_path / "out" / "per_image.csv", encoding="utf-8") as f:
        lines = [line for line in csv.DictReader(f) if line["method"] == label]
    assert lines and all(float(line["brightness_ratio"]) > 0 for line in lines)
    [unpaired] = [r for r in summary["unpaired_rows"] if r["method"] == label and r["gain"] == 1]
    assert unpaired["mean_brightness"] == pytest.approx(0.6 * 255.0, abs=0.6)

    # "auto" on a well-exposed photo: the output's mean is held at 1.15 x the input's, by hand.
    evaluation.evaluate(tiny_model, [], str(tmp_path / "auto"), unpaired=str(photos),
                        baselines=(), model_label="tiny", brightness="auto", progress=None)
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    [plain, auto] = summary["unpaired_rows"]
    assert auto["method"] == "tiny + brightness auto"
    prediction = inference.predict_image(tiny_model, well.astype(np.float32)) / 255.0
    expected = scoring.quantize(255.0 * brightness_lib.apply_brightness(
        prediction, well / 255.0, "auto"))
    assert auto["mean_brightness"] == pytest.approx(float(expected.mean()), abs=1e-3)
    assert auto["mean_brightness"] <= brightness_lib.AUTO_MAX_GAIN * well.mean() + 0.5
    assert plain["method"] == "tiny"

    with pytest.raises(evaluation.EvaluationError, match="Invalid brightness"):
        evaluation.evaluate(tiny_model, [], str(tmp_path / "bad"), unpaired=str(photos),
                            brightness="bright", progress=None)
    assert not (tmp_path / "bad").exists()

    # The flag of tools/evaluate reaches the library.
    model_path = tmp_path / "tiny.keras"
    tiny_model.save(str(model_path))
    run = run_tool("evaluate", f"--model={model_path}", f"--unpaired={photos}",
                   "--baselines=none", "--brightness=auto", f"--output_dir={tmp_path / 'cli'}",
                   cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "| tiny + brightness auto | unpaired:photos | 1 | 1 |" in run.stdout


def test_evaluate_cli_sweep_unpaired_and_damaged_data(pairs_dataset, tmp_path):
    import shutil
    model_path = tmp_path / "tiny.keras"
    keras.utils.set_random_seed(0)
    model_lib.build_unet("rgb", base_filters=4, depth=2).save(str(model_path))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((16, 16, 3), 40, np.uint8)).save(photos / "a.png")
    ok = run_tool("evaluate", f"--model={model_path}", f"--data={pairs_dataset}/tfr/toy",
                  f"--unpaired={photos}", "--input_gains=1,2", "--baselines=auto_gain",
                  f"--output_dir={tmp_path / 'sweep'}", cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "| tiny | toy:test |" in ok.stdout and "No-reference check of tiny" in ok.stdout
    assert "| auto-gain (mean 0.45) (baseline) | unpaired:photos | 2 | 1 |" in ok.stdout
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [r["gain"] for r in summary["rows"]] == [1.0, 1.0, 2.0, 2.0]

    shutil.copytree(tmp_path / "sweep", tmp_path / "before")
    damaged = _damaged_copy(pairs_dataset, tmp_path)
    bad = run_tool("evaluate", f"--model={model_path}", f"--data={damaged}",
                   f"--output_dir={tmp_path / 'sweep'}", cwd=str(tmp_path))
    assert bad.returncode == 2, bad.stderr
    assert "could not be read" in bad.stderr and damaged in bad.stderr
    assert "Traceback" not in bad.stderr
    assert _tree(tmp_path / "sweep") == _tree(tmp_path / "before")
    for flag in ("--input_gains=0", "--input_gains=1,x"):
        result = run_tool("evaluate", f"--model={model_path}", f"--data={pairs_dataset}/tfr/toy",
                          flag, f"--output_dir={tmp_path / 'g'}", cwd=str(tmp_path))
        assert result.returncode == 2 and "--input_gains" in result.stderr
    no_data = run_tool("evaluate", f"--model={model_path}", f"--output_dir={tmp_path / 'n'}",
                       cwd=str(tmp_path))
    assert no_data.returncode == 2 and "--unpaired" in no_data.stderr


def test_model_dir_with_truncated_final_model_uses_its_last_checkpoint(pairs_dataset, tmp_path,
                                                                       capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    keras.utils.set_random_seed(3)
    model = model_lib.build_unet("rgb", base_filters=4, depth=2)
    model.save_weights(str(run / "checkpoints" / "epoch_002.weights.h5"))
    (run / "model.json").write_text(json.dumps(model_lib.architecture(model)))
    model.save(str(run / "final.keras"))
    data = (run / "final.keras").read_bytes()
    (run / "final.keras").write_bytes(data[:len(data) // 2])  # killed during model.save
    rows = evaluation.evaluate(str(run), [f"{pairs_dataset}/tfr/toy"], str(tmp_path / "out"),
                               save_images=0, baselines=(), progress=None)
    assert rows[0]["method"] == "run" and np.isfinite(rows[0]["psnr"])
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "epoch_002.weights.h5" in err
    assert "not found" not in err.lower()
