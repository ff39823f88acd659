"""Scene-disjoint splits: index runs and explicit split assignments (data_prep.splitting).

The scene keys themselves are tested in test_media.py (lowlight_tf.media.ids)."""
import collections

import pytest

from data_prep import splitting
from lowlight_tf.media import ids as media_ids


def test_index_run_split_never_separates_a_scene():
    ids = [f"{n}.png" for n in list(range(1, 40)) + list(range(50, 90)) + list(range(100, 160))]
    splits = splitting.parse_splits("train:0.5,test:0.5")
    chosen = splitting.choose_splits([(i, i) for i in ids], splits, split_by="index_run")
    by_run = collections.defaultdict(set)
    for example_id, split in zip(ids, chosen):
        by_run[media_ids.index_run_keys(ids)[example_id]].add(split)
    assert len(by_run) == 3
    assert all(len(s) == 1 for s in by_run.values())
    # Hashing ids one by one would have scattered each run over both splits.
    per_id = splitting.choose_splits([(i, i) for i in ids], splits, split_by="id")
    assert len(set(per_id[:39])) == 2


def test_explicit_split_ids_take_precedence():
    rules = splitting.parse_split_ids(["calib:4-5,29,sky"])
    ids = ["low/4.png", "low/5.png", "low/6.png", "low/29.png", "low/sky.png"]
    splits = splitting.parse_splits("val:1.0")
    chosen = splitting.choose_splits([(i, i) for i in ids], splits, split_ids=rules)
    assert chosen == ["calib", "calib", "val", "calib", "calib"]


@pytest.mark.parametrize("bad", ["calib", "Calib:1", "calib:", "calib:9-3"])
def test_bad_split_ids_are_rejected_with_the_value(bad):
    with pytest.raises(ValueError, match="split_ids|range"):
        splitting.parse_split_ids([bad])


def test_unmatched_split_ids_name_each_item_that_matches_nothing():
    ids = ["low/4.png", "low/5.png", "low/12.png", "high/x.png"]
    assert splitting.unmatched_split_ids(["calib:4-5,x,1-3,9999,nosuch", "val:12"], ids) == [
        "calib:1-3", "calib:9999", "calib:nosuch"]
    assert splitting.unmatched_split_ids(["calib:3-4", "val:low/12.png"], ids) == []
    assert splitting.unmatched_split_ids([], ids) == []
