"""make_tfrecords on Apache Beam (DirectRunner) gives the local pool's examples, ids, splits and
skipped inputs, for every dataset kind (issue 15)."""
import os

import numpy as np
import pytest

from data_prep import prepare
from test_data_prep import (  # pylint: disable=import-error
    build, stored_examples, write_dng, write_png8)

pytest.importorskip("apache_beam")

MULTI_PROCESSING = "--direct_num_workers=2 --direct_running_mode=multi_processing"
SPLITS = "train:0.6,val:0.2,test:0.2"


def _assert_same_datasets(out, local, beam):
    """Both summaries name the same splits, counts and skipped inputs; decoded examples equal."""
    assert {s: v["examples"] for s, v in local["splits"].items()} == \
        {s: v["examples"] for s, v in beam["splits"].items()}
    assert local["skipped"] == beam["skipped"] and local["notes"] == beam["notes"]
    assert local["fingerprint"] != "" and local["dtype"] == beam["dtype"]
    for split in local["splits"]:
        a = stored_examples(out, local["name"], split)
        b = stored_examples(out, beam["name"], split)
        assert sorted(a) == sorted(b)
        for example_id, example in a.items():
            assert set(example) == set(b[example_id])
            for key, value in example.items():
                np.testing.assert_array_equal(value, b[example_id][key],
                                              err_msg=f"{example_id} {key}")


def _image_folder(root):
    for i in range(9):
        write_png8(str(root / f"{i}.png"), seed=i, shape=(18 + i, 24))
    write_dng(str(root / "raw" / "r.dng"), seed=20)
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not a picture")
    return root


@pytest.mark.slow
def test_images_and_simulated_on_beam_equal_the_local_pool(tmp_path):
    source, out = _image_folder(tmp_path / "in"), str(tmp_path / "out")
    local = build("images", out, "local", input_dir=str(source), splits=SPLITS)
    beam = build("images", out, "beam", input_dir=str(source), splits=SPLITS,
                 beam_runner="DirectRunner", beam_options=MULTI_PROCESSING)
    assert [s["path"] for s in beam["skipped"]] == ["empty.png", "text.jpg"]
    assert beam["options"]["beam_runner"] == "DirectRunner"
    _assert_same_datasets(out, local, beam)
    assert beam["examples"] == 10 and beam["dtype"] == "uint16"

    sim_local = build("simulated", out, "sim_local", source_data=f"{out}/local",
                      splits="test:1", seed=3)
    sim_beam = build("simulated", out, "sim_beam", source_data=f"{out}/local", splits="test:1",
                     seed=3, beam_runner="DirectRunner")
    _assert_same_datasets(out, sim_local, sim_beam)
    assert sim_beam["examples"] == 10


@pytest.mark.slow
def test_pairs_on_beam_equal_the_local_pool_and_drop_a_split_of_bad_inputs(tmp_path):
    source, out = tmp_path / "in", str(tmp_path / "out")
    for i in range(6):
        write_png8(str(source / "low" / f"{i}.png"), seed=i)
        write_png8(str(source / "high" / f"{i}.png"), seed=10 + i)
    write_png8(str(source / "low" / "7.png"), seed=7, shape=(20, 28))
    write_png8(str(source / "high" / "7.png"), seed=17, shape=(21, 28))  # size mismatch
    (source / "low" / "8.png").write_bytes(b"")
    write_png8(str(source / "high" / "8.png"), seed=18)
    overrides = {"7.png": "bad", "8.png": "bad"}  # every input of split `bad` fails
    kwargs = dict(input_dir=str(source), splits="train:0.7,test:0.3", split_overrides=overrides)
    local = build("pairs", out, "pairs_local", **kwargs)
    beam = build("pairs", out, "pairs_beam", beam_runner="DirectRunner", **kwargs)
    assert "bad" not in beam["splits"] and any("dropped" in n for n in beam["notes"])
    assert {s["path"] for s in beam["skipped"]} == {"7.png", "8.png"}
    _assert_same_datasets(out, local, beam)
    assert not [e for e in os.listdir(out) if "incomplete" in e]


def test_beam_options_without_a_runner_is_an_input_error(tmp_path):
    write_png8(str(tmp_path / "in" / "a.png"))
    with pytest.raises(prepare.InputError, match="without --beam_runner"):
        build("images", tmp_path / "out", "x", input_dir=str(tmp_path / "in"),
              beam_options="--direct_num_workers=2")
    with pytest.raises(prepare.InputError, match="cannot be parsed"):
        build("images", tmp_path / "out", "x", input_dir=str(tmp_path / "in"),
              beam_runner="DirectRunner", beam_options="--a='unclosed")


CRASHY_MODULE = """
import os


def decode(task):
    if task == "crash":
        os._exit(3)  # what a segfaulting C decoder does to its process
    return ("ok", {"id": task})
"""


@pytest.mark.slow
def test_a_crashing_decoder_on_beam_skips_only_its_file(tmp_path, monkeypatch):
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.testing import util  # pylint: disable=import-outside-toplevel
    from data_prep import beam as beam_lib  # pylint: disable=import-outside-toplevel
    from data_prep import core  # pylint: disable=import-outside-toplevel
    (tmp_path / "crashy_decoder_beam.py").write_text(CRASHY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned decoding processes inherit sys.path
    import crashy_decoder_beam  # pylint: disable=import-outside-toplevel,import-error
    tasks = ["a", "crash", "b", "c"]
    plan = core.Plan(kind="images", dtype=np.uint8, worker_fn=crashy_decoder_beam.decode,
                     items=[core.Item(f"{task}.png", "train", task) for task in tasks],
                     beam_skips_dir=str(tmp_path / "skips"))
    os.makedirs(plan.beam_skips_dir)
    with beam.Pipeline("DirectRunner") as pipeline:
        ids = (pipeline | beam_lib.DecodeSplit(plan, "train", plan.beam_skips_dir)
               | beam.Map(lambda key_example: key_example[0]))
        util.assert_that(ids, util.equal_to(["a.png", "b.png", "c.png"]))
    beam_lib.read_skips(plan.beam_skips_dir, plan)
    assert plan.skips.skipped == [{"path": "crash.png", "reason": core.CRASH_REASON,
                                   "category": "decoder_crash"}]


def test_a_beam_runner_without_apache_beam_names_the_extra(tmp_path, monkeypatch):
    import importlib.util  # pylint: disable=import-outside-toplevel
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "apache_beam" else real_find_spec(name, *a))
    write_png8(str(tmp_path / "in" / "a.png"))
    with pytest.raises(prepare.InputError, match=r"pip install -e '\.\[beam\]'"):
        build("images", tmp_path / "out", "x", input_dir=str(tmp_path / "in"),
              beam_runner="DirectRunner")
    assert not os.path.exists(tmp_path / "out" / "x")
