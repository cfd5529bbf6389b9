"""The synthetic world and the sandbox CLIP pretrained on it: determinism, labels that
agree with pixels and captions, the written dataset layout, the shipped checkpoint's zero-shot mAP,
and a pretraining loop that lowers the loss."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from promptmlr.data.synthetic import write_synthetic_dataset
from promptmlr.data.textfiles import DatasetError
from promptmlr.data.world import (
    COLOUR_WORDS,
    COLOURS,
    MIN_VISIBLE,
    NUM_CLASSES,
    SHAPE_WORDS,
    SHAPES,
    SYNTHETIC_CLASS_NAMES,
    TEST_INDEX_OFFSET,
    THEMES,
    SyntheticWorld,
    visible_fractions,
)

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "promptmlr" / "backbones" / "weights"
# The fixed set on which tools/pretrain_sandbox_clip.py --finalize measured each shipped checkpoint's
# zero-shot mAP (recorded in <name>.json, evaluation.test_set).
ZEROSHOT_SET = dict(seed=0, image_size=64, count=256)
# alias -> (architecture, input size): the shipped sandbox CLIPs
SHIPPED = {"sandbox": ("promptmlr-sandbox-rn", 128), "sandbox-vit": ("promptmlr-sandbox-vit", 64)}


# -------------------------------------------------------------------------------------------- world
def test_class_names_are_colour_major_and_fixed():
    assert NUM_CLASSES == len(COLOURS) * len(SHAPES) == 40
    assert SYNTHETIC_CLASS_NAMES[:3] == ["red circle", "red square", "red triangle"]
    assert SYNTHETIC_CLASS_NAMES[8] == "green circle" and SYNTHETIC_CLASS_NAMES[-1] == "purple diamond"
    assert all(name in SYNTHETIC_CLASS_NAMES for theme in THEMES for name in theme.classes)


def test_same_seed_gives_identical_images_and_labels():
    a, b = SyntheticWorld(seed=7, image_size=96), SyntheticWorld(seed=7, image_size=96)
    for index in (0, 5, TEST_INDEX_OFFSET + 3):
        scene_a, scene_b = a.scene(index), b.scene(index)
        assert scene_a == scene_b
        np.testing.assert_array_equal(a.render_array(scene_a), b.render_array(scene_b))
        np.testing.assert_array_equal(a.labels(scene_a), b.labels(scene_b))
    # order does not matter (lazy generation in any worker), and another seed gives another world
    assert a.scene(5) == SyntheticWorld(seed=7).scene(5)
    assert SyntheticWorld(seed=8).scene(5) != a.scene(5)
    assert a.render(a.scene(0)).size == (96, 96)


def test_scenes_have_one_to_five_sufficiently_visible_objects():
    world = SyntheticWorld(seed=0)
    counts = []
    for index in range(150):
        scene = world.scene(index)
        counts.append(len(scene.objects))
        labels = world.labels(scene)
        assert labels.dtype.kind == "i" and set(np.unique(labels)) <= {0, 1}
        assert labels.sum() == len({o.class_name for o in scene.objects}) >= 1
        assert min(visible_fractions(scene.objects)) >= MIN_VISIBLE
    assert min(counts) == 1 and max(counts) == 5


@pytest.mark.slow
def test_themes_make_classes_co_occur():
    world = SyntheticWorld(seed=0)
    labels = np.stack([world.labels(world.scene(i)) for i in range(1500)]).astype(float)
    together = labels.T @ labels
    expected = np.outer(labels.sum(0), labels.sum(0)) / len(labels)
    theme = [SYNTHETIC_CLASS_NAMES.index(name) for name in THEMES[0].classes[:2]]
    assert together[theme[0], theme[1]] > 2 * expected[theme[0], theme[1]]


def caption_class_names(caption: str) -> set[str]:
    """The classes a caption names (the caption vocabulary read backwards)."""
    words = caption.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()
    text = " " + " ".join(words) + " "
    return {f"{colour} {shape}" for colour in COLOURS for shape in SHAPES for colour_word in COLOUR_WORDS[colour]
            for singular, plural in SHAPE_WORDS[shape] for noun in (singular, plural)
            if f" {colour_word} {noun} " in text}


def test_captions_name_exactly_the_labelled_classes():
    world = SyntheticWorld(seed=3)
    rng = np.random.default_rng(0)
    captions = set()
    for index in range(120):
        scene = world.scene(index)
        truth = {SYNTHETIC_CLASS_NAMES[c] for c in np.flatnonzero(world.labels(scene))}
        for variant in (scene, scene.mirror()):
            caption = world.caption(variant, rng)
            captions.add(caption)
            assert caption_class_names(caption) == truth, caption
    assert len(captions) > 200  # varied wording


def test_mirrored_scene_renders_flipped_and_swaps_left_and_right():
    world = SyntheticWorld(seed=0, image_size=64)
    scene = world.scene(11)
    np.testing.assert_array_equal(world.render_array(scene.mirror()), world.render_array(scene)[:, ::-1])
    twice = scene.mirror().mirror()
    assert not twice.mirrored and [o.class_name for o in twice.objects] == [o.class_name for o in scene.objects]
    assert [o.x for o in twice.objects] == pytest.approx([o.x for o in scene.objects])
    assert [o.x for o in scene.mirror().objects] == pytest.approx([1 - o.x for o in scene.objects])


def test_write_synthetic_dataset_layout(tmp_path):
    out = write_synthetic_dataset(tmp_path / "synth", n_train=4, n_test=2, seed=5, image_size=32)
    assert (out / "classes.txt").read_text().splitlines() == SYNTHETIC_CLASS_NAMES
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seed"], meta["n_train"], meta["n_test"], meta["image_size"]) == (5, 4, 2, 32)
    world = SyntheticWorld(seed=5, image_size=32)
    for split, count, offset in (("train", 4, 0), ("test", 2, TEST_INDEX_OFFSET)):
        with open(out / f"{split}.csv") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["image", *SYNTHETIC_CLASS_NAMES] and len(rows) == count + 1
        for i, row in enumerate(rows[1:]):
            assert row[0] == f"{split}/{i:06d}.png" and (out / row[0]).is_file()
            expected = world.labels(world.scene(offset + i))
            assert [int(v) for v in row[1:]] == [1 if v else -1 for v in expected]
        from PIL import Image
        with Image.open(out / rows[1][0]) as image:
            np.testing.assert_array_equal(np.asarray(image), world.render_array(world.scene(offset)))
    from promptmlr.data import build_dataset

    dataset = build_dataset("synthetic", out, "train")
    assert dataset.name == "synthetic" and dataset.class_names == SYNTHETIC_CLASS_NAMES
    assert len(dataset) == 4 and set(np.unique(dataset.labels)) <= {1, -1}


# -------------------------------------------------------------------------------- sandbox backbone
def _zeroshot_on_fixed_set(backbone) -> tuple[float, float]:
    from promptmlr.models import build_method
    from promptmlr.scoring import image_batches, score
    from tools import pretrain_sandbox_clip as tool

    world = SyntheticWorld(ZEROSHOT_SET["seed"], ZEROSHOT_SET["image_size"])
    scenes = [world.scene(TEST_INDEX_OFFSET + i) for i in range(ZEROSHOT_SET["count"])]
    labels = np.stack([world.labels(s) for s in scenes])
    method = build_method("zeroshot", backbone, SYNTHETIC_CLASS_NAMES, templates=["a photo of a {}."])
    scores = score(method, image_batches(backbone, [world.render(s) for s in scenes]), logits=True, progress=False)
    chance = 100.0 * float(labels.mean(0)[labels.sum(0) > 0].mean())
    return tool.mean_ap(scores, labels), chance


@pytest.mark.slow
@pytest.mark.parametrize("alias", SHIPPED)
def test_shipped_sandbox_checkpoint_loads_and_beats_chance(alias):
    from promptmlr.backbones import create_backbone, list_backbones

    arch, image_size = SHIPPED[alias]
    name = arch.removeprefix("promptmlr-")
    weights = WEIGHTS_DIR / f"{name}.safetensors"
    recorded = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["evaluation"]["test_set"]
    assert list_backbones()[alias] == f"openclip:{arch}:{weights}"  # a user-style checkpoint-file spec
    backbone = create_backbone(alias)
    assert backbone.preprocess.image_size == image_size and backbone.context_length >= 40
    assert weights.stat().st_size <= 25e6
    zeroshot, chance = _zeroshot_on_fixed_set(backbone)
    assert chance == pytest.approx(recorded["chance_map"], abs=0.01)
    assert zeroshot == pytest.approx(recorded["zeroshot_map"], abs=1.5)
    assert zeroshot > 2 * chance


@pytest.mark.slow
def test_a_few_pretraining_steps_lower_the_loss():
    from tools import pretrain_sandbox_clip as tool

    torch.manual_seed(0)
    args = tool.parse_args(["--batch-size", "32", "--lr", "1e-3", "--warmup", "1", "--steps", "8", "--data-seed", "2"])
    images, scenes = tool.render_pool(args.data_seed, args.image_size, 32, args.max_objects, workers=1)
    trainer = tool.Trainer(args, tool.ARCH, images, scenes)
    batch = next(trainer.batches(workers=0))  # step 0's
    losses = [trainer.train_step(*batch) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.3, losses


@pytest.mark.slow
def test_write_synthetic_dataset_is_the_same_with_several_workers(tmp_path, monkeypatch):
    """Scenes rendered by 2 processes, in tasks smaller than a split, give byte-identical files."""
    import promptmlr.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "SCENES_PER_TASK", 3)  # several tasks per split, the last one partial
    one = write_synthetic_dataset(tmp_path / "one", n_train=7, n_test=4, seed=2, image_size=32)
    two = write_synthetic_dataset(tmp_path / "two", n_train=7, n_test=4, seed=2, image_size=32, workers=2)
    files = sorted(path.relative_to(one) for path in one.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(two) for path in two.rglob("*") if path.is_file())
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_write_synthetic_dataset_refuses_no_workers(tmp_path):
    with pytest.raises(DatasetError, match="--workers 0"):
        write_synthetic_dataset(tmp_path / "none", n_train=1, n_test=1, image_size=32, workers=0)
    assert not (tmp_path / "none").exists()
