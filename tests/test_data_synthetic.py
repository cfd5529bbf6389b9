"""``--dataset synthetic``: written by ``promptmlr data synth`` or generated on first use."""

from __future__ import annotations

import numpy as np
import pytest

from promptmlr.cli import main
from promptmlr.data import DatasetError, build_dataset, synthetic
from promptmlr.data.world import SYNTHETIC_CLASS_NAMES, SyntheticWorld


def test_data_synth_writes_a_dataset_that_reads_back_with_full_labels(tmp_path):
    out = tmp_path / "world"
    assert main(["data", "synth", "--out", str(out), "--n-train", "12", "--n-test", "5", "--seed", "4",
                 "--image-size", "64", "--workers", "2"]) == 0
    train = build_dataset("synthetic", out, "train")
    assert (len(train), train.class_names, train.name) == (12, SYNTHETIC_CLASS_NAMES, "synthetic")
    assert set(np.unique(train.labels)) <= {-1, 1}  # complete labels
    world = SyntheticWorld(seed=4, image_size=64)
    np.testing.assert_array_equal(train.labels[3] == 1, world.labels(world.scene(3)).astype(bool))
    assert len(build_dataset("synthetic", out, "test")) == 5
    scenes = synthetic.synthetic_scenes(out, "train")  # what each row's image holds, in the split's order
    assert len(scenes) == 12 and scenes[3] == world.scene(3)
    np.testing.assert_array_equal(np.stack([world.labels(s) for s in scenes]) == 1, train.labels == 1)
    assert main(["data", "synth", "--out", str(out)]) == 1  # never overwrites


def test_a_folder_without_a_synthetic_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError, match="promptmlr data synth --out"):
        build_dataset("synthetic", tmp_path, "train")


def test_the_standard_benchmark_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "CACHE_ROOT", tmp_path)
    monkeypatch.setattr(synthetic, "STANDARD", {"seed": 0, "n_train": 6, "n_test": 4, "image_size": 48})
    root = synthetic.default_synthetic_root()
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert synthetic.default_synthetic_root() == root and (root / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind
