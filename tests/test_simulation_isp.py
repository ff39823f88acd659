"""Tests of lowlight_tf.simulation_isp (the ISP-aware simulation) and its preset dispatch."""
import json

import numpy as np
import pytest
import tensorflow as tf

from lowlight_tf import curves, pipeline, simulation, simulation_isp

# A camera-like colour matrix (rows sum to 1) and white balance, so inversion is not trivial.
CCM = np.array([[1.6, -0.5, -0.1], [-0.2, 1.5, -0.3], [0.05, -0.45, 1.4]])
WB = np.array([2.0, 1.0, 1.6])


def make_isp(**changes):
    """IspParams with small noise; keyword arguments replace fields."""
    fields = dict(log_exposure_mean=np.log([0.05, 0.06, 0.04]),
                  log_exposure_cov=np.diag([0.04, 0.03, 0.05]),
                  shot_gain=np.array([4e-4, 3e-4, 5e-4]), read_noise=np.array([6e-4, 5e-4, 7e-4]),
                  log_shot_gain_std=0.2)
    fields.update(changes)
    return simulation_isp.IspParams(**fields)


def flat_noise(isp, level=0.02, size=96, seed=(3, 4)):
    """The noise of a flat linear field at `level`: float64 [2, size, size, 3] (linear units)."""
    raw = np.full((2, size, size, 3), level, np.float32)
    noisy = simulation_isp.add_sensor_noise(raw, np.tile(isp.shot_gain, (2, 1)), isp.read_noise,
                                            isp, seed=list(seed))
    return noisy.numpy().astype(np.float64) - level


def neighbour_correlation(field):
    """Correlation of a zero-mean field [B, H, W, C] with its right and lower neighbour."""
    products = np.sum(field[:, :, :-1] * field[:, :, 1:]) + np.sum(field[:, :-1] * field[:, 1:])
    return products / (np.sum(field[:, :, :-1] ** 2) + np.sum(field[:, :-1] ** 2))


def test_noise_free_unprocess_then_render_is_the_identity():
    bright = np.random.default_rng(0).uniform(0, 255, (2, 8, 9, 3)).astype(np.float32)
    isp = make_isp(ccm=CCM, wb_gains=WB)
    camera = simulation_isp.unprocess(bright, isp)
    back = simulation_isp.render(camera, isp).numpy()
    np.testing.assert_allclose(back, bright, atol=0.02)
    # Camera RGB really differs from linear sRGB with this matrix and white balance.
    assert np.abs(camera.numpy() - curves.srgb_to_linear(bright / 255.0)).max() > 0.05


@pytest.mark.parametrize("ccm, exposure", [
    (np.eye(3), [[0.1, 0.2, 0.05], [0.5, 0.25, 0.3]]),
    (CCM, [[0.1, 0.1, 0.1], [0.3, 0.3, 0.3]])])  # a common exposure commutes with the matrix
def test_exposure_ratio_scales_linear_light_per_channel(ccm, exposure):
    bright = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    params = np.concatenate([exposure, np.ones((2, 1))], axis=1).astype(np.float32)
    dark = simulation_isp.simulate_isp(bright, params, make_isp(ccm=ccm, wb_gains=WB),
                                       seed=[0, 0], quantize=False, noise=False).numpy()
    expected = curves.linear_to_srgb(curves.srgb_to_linear(bright / 255.0)
                                     * params[:, None, None, :3]) * 255.0
    np.testing.assert_allclose(dark, expected, atol=0.02)


def test_shot_and_read_noise_variance_per_channel():
    isp = make_isp()
    for level in (0.005, 0.05):
        variance = flat_noise(isp, level=level).var(axis=(0, 1, 2))
        np.testing.assert_allclose(variance, isp.shot_gain * level + isp.read_noise ** 2,
                                   rtol=0.05)


def test_bilinear_demosaic_is_exact_on_linear_ramps_and_keeps_sensed_sites():
    rows, cols = np.mgrid[0:10, 0:12].astype(np.float32)
    image = np.stack([rows + 2 * cols, 3 * rows + cols, 0.5 * rows], axis=-1)[None]
    mask = simulation_isp.bayer_mask(10, 12).numpy()
    assert np.all(mask.sum(-1) == 1) and mask[0, 0, 0] == mask[0, 1, 1] == mask[1, 1, 2] == 1
    out = simulation_isp.demosaic_bilinear(image * mask).numpy()
    np.testing.assert_allclose(out[0, 1:-1, 1:-1], image[0, 1:-1, 1:-1], atol=1e-4)
    np.testing.assert_allclose(out[mask[None] == 1], image[mask[None] == 1], atol=1e-5)


def test_bayer_noise_is_spatially_correlated_and_iid_noise_is_not():
    iid = neighbour_correlation(flat_noise(make_isp(bayer=False)))
    bayer = neighbour_correlation(flat_noise(make_isp(bayer=True)))
    blurred = neighbour_correlation(flat_noise(make_isp(bayer=True, noise_blur=1.0)))
    assert abs(iid) < 0.03
    assert bayer > 0.3 and blurred > bayer + 0.1
    # The Bayer path's noise is chroma-structured: red and blue are interpolated from sparser
    # sites than green, so they are more correlated.
    field = flat_noise(make_isp(bayer=True))
    per_channel = [neighbour_correlation(field[..., c:c + 1]) for c in range(3)]
    assert per_channel[0] > per_channel[1] + 0.1 and per_channel[2] > per_channel[1] + 0.1


def test_blur_keeps_unit_variance():
    noise = tf.random.stateless_normal([2, 64, 64, 1], [1, 2])
    for sigma in (0.8, 2.0):
        assert simulation_isp.blur_noise(noise, sigma).numpy().var() == pytest.approx(1.0,
                                                                                      rel=0.1)


def test_sample_isp_params_log_normal_statistics():
    isp = make_isp()
    rows = simulation_isp.sample_isp_params(20000, isp, seed=[5, 6]).numpy()
    assert rows.shape == (20000, 4) and rows.dtype == np.float32 and rows.min() > 0
    logs = np.log(rows.astype(np.float64))
    np.testing.assert_allclose(logs[:, :3].mean(0), isp.log_exposure_mean, atol=0.01)
    np.testing.assert_allclose(np.cov(logs[:, :3], rowvar=False), isp.log_exposure_cov,
                               atol=0.004)
    assert logs[:, 3].std() == pytest.approx(0.2, rel=0.05)


def test_determinism_same_seed_same_bits_eager_graph_and_tf_data():
    preset = simulation.SimulationPreset("isp", None, None, quantize=True,
                                         model=simulation_isp.ISP_MODEL,
                                         isp=make_isp(bayer=True, noise_blur=0.8))
    bright = np.random.default_rng(2).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    first, params = preset.simulate(bright, seed=[7, 8])
    second, _ = preset.simulate(bright, seed=[7, 8])
    graph, _ = tf.function(lambda b, s: preset.simulate(b, seed=s))(bright, tf.constant([7, 8]))
    dataset = tf.data.Dataset.from_tensors(bright).map(
        lambda b: preset.simulate(b, seed=tf.constant([7, 8]))[0])
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_array_equal(first.numpy(), graph.numpy())
    np.testing.assert_array_equal(first.numpy(), next(iter(dataset)).numpy())
    other, _ = preset.simulate(bright, seed=[7, 9])
    assert np.any(other.numpy() != first.numpy())
    assert params.shape == (3, 4) and np.all(first.numpy() == np.round(first.numpy()))


def test_isp_preset_round_trip_and_old_files_unchanged(tmp_path):
    preset = simulation.SimulationPreset(
        "mine", None, None, quantize=True, model=simulation_isp.ISP_MODEL,
        isp=make_isp(bayer=True, noise_blur=0.8, ccm=CCM, wb_gains=WB),
        exposure_curve=np.tile(np.arange(256.0), (3, 1)), provenance={"method": "isp"})
    path = tmp_path / "isp.json"
    simulation.save_preset(preset, path)
    data = json.loads(path.read_text())
    assert data["model"] == "isp" and "mean" not in data
    loaded = simulation.load_preset(str(path))
    assert loaded.model == "isp" and loaded.quantize and loaded.provenance == {"method": "isp"}
    assert loaded.isp.to_json() == preset.isp.to_json()
    np.testing.assert_array_equal(loaded.exposure_curve, preset.exposure_curve)
    bright = np.full((1, 8, 8, 3), 128.0, np.float32)
    np.testing.assert_array_equal(loaded.simulate(bright, seed=[1, 2])[0].numpy(),
                                  preset.simulate(bright, seed=[1, 2])[0].numpy())
    # A file written before the field existed loads as the composite, as before.
    paper = simulation.load_preset("paper")
    assert paper.model == simulation_isp.PAPER_MODEL and paper.isp is None
    simulation.save_preset(paper, tmp_path / "paper.json")
    assert simulation.load_preset(str(tmp_path / "paper.json")).model == "paper_composite"


def test_isp_preset_errors(tmp_path):
    good = simulation.SimulationPreset("x", None, None, model="isp", isp=make_isp()).to_json()
    cases = [(dict(good, model="raw"), "unknown `model`"),
             ({k: v for k, v in good.items() if k != "isp"}, "`isp` must be a dict"),
             (dict(good, isp={k: v for k, v in good["isp"].items() if k != "shot_gain"}),
              "lacks `shot_gain`"),
             (dict(good, isp=dict(good["isp"], read_noise=[-1, 0, 0])), "must be >= 0"),
             (dict(good, isp=dict(good["isp"], log_exposure_cov=[[1, 2, 0], [0, 1, 0], [0, 0, 1]])),
              "positive semi-definite")]
    for data, message in cases:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(simulation.PresetError, match=message):
            simulation.load_preset(str(path))
    preset = simulation.preset_from_json(good)
    with pytest.raises(ValueError, match="no sub-tasks"):
        preset.simulate(np.zeros((1, 4, 4, 3), np.float32), seed=[1, 2], steps="bl+cd")


def test_training_pipeline_simulates_with_an_isp_preset_unchanged():
    preset = simulation.SimulationPreset("isp", None, None, quantize=True,
                                         model=simulation_isp.ISP_MODEL, isp=make_isp(bayer=True))
    brights = np.random.default_rng(4).integers(0, 256, (4, 40, 48, 3)).astype(np.float32)
    source = tf.data.Dataset.from_tensor_slices(
        {"bright": brights, "id": [f"photo_{i}.png" for i in range(4)]})

    def make():
        return pipeline.train_dataset(source, patch_size=16, batch_size=4, seed=2,
                                      simulation=preset)

    (dark, bright), = [(d.numpy(), b.numpy()) for d, b in make().take(1)]
    (again, _), = [(d.numpy(), b.numpy()) for d, b in make().take(1)]
    assert dark.shape == bright.shape == (4, 16, 16, 3) and dark.dtype == np.float32
    assert 0.0 <= dark.min() and dark.max() <= 1.0 and dark.mean() < 0.5 * bright.mean()
    np.testing.assert_array_equal(dark, again)
