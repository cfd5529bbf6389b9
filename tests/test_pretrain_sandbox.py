"""The sandbox pretraining tool's attention-pool levers (``tools/pretrain_sandbox_clip.py``): the
pool's attention weights as open_clip computes them, their spread, and a pool temperature that
ships folded into open_clip's plain weights."""

from __future__ import annotations

import json
import math

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from promptmlr.checkpoint import load_checkpoint, save_checkpoint
from promptmlr.data.world import (
    SHAPE_WORDS,
    SIZES,
    SYNTHETIC_CLASS_NAMES,
    Scene,
    SceneObject,
    SyntheticWorld,
    object_mask,
    visible_parts,
)
from tools import pretrain_sandbox_clip as tool

TINY_RN = "promptmlr-tiny-rn"
# A pretraining run small enough for a test: 24 scenes at 64 px, batches of 8, a checkpoint every 2 steps.
TINY_RUN = ["--arch", TINY_RN, "--image-size", "64", "--pool-size", "24", "--batch-size", "8", "--save-every", "2",
            "--eval-size", "8", "--workers", "1", "--threads", "1", "--no-channels-last"]


@pytest.fixture
def pool_and_map():
    model = tool.build_model(TINY_RN, seed=0).eval()
    pool = model.visual.attnpool
    grid = int(round(math.sqrt(pool.positional_embedding.shape[0] - 1)))
    torch.manual_seed(1)
    return model, torch.randn(3, pool.k_proj.in_features, grid, grid)


def test_pool_attention_rebuilds_the_pools_output(pool_and_map):
    """The weights, applied to the pool's values, give exactly what open_clip's pool returns."""
    model, x = pool_and_map
    pool = model.visual.attnpool
    weights = tool.pool_attention(pool, x)  # [B, heads, 1 + HW]
    assert weights.shape == (3, pool.num_heads, x.shape[2] * x.shape[3] + 1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, pool.num_heads))
    tokens = x.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.positional_embedding
    values = pool.v_proj(tokens).view(3, tokens.shape[1], pool.num_heads, -1).transpose(1, 2)
    mixed = (weights.unsqueeze(-1) * values).sum(2).reshape(3, -1)
    with torch.no_grad():
        torch.testing.assert_close(pool.c_proj(mixed), pool(x), rtol=1e-5, atol=1e-5)


def test_attention_spread_of_uniform_and_of_one_token():
    uniform = tool.attention_spread(torch.full((2, 4, 17), 1 / 17))
    assert uniform["normalized_entropy"] == pytest.approx(1.0) and uniform["effective_tokens"] == pytest.approx(17)
    peaked = tool.attention_spread(torch.nn.functional.one_hot(torch.tensor([[3, 0]]), 17).float())
    assert peaked["normalized_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert peaked["effective_tokens"] == pytest.approx(1.0) and peaked["tokens"] == 17


def test_a_pool_temperature_divides_the_logits_and_ships_as_plain_weights(pool_and_map):
    plain, x = pool_and_map
    tempered = tool.build_model(TINY_RN, seed=0).eval()
    tool.temper_pool(tempered, 4.0)
    logits = (tool.pool_attention(plain.visual.attnpool, x).log())
    softened = tool.pool_attention(tempered.visual.attnpool, x)
    torch.testing.assert_close(softened, torch.softmax(logits / 4.0, -1), rtol=1e-5, atol=1e-6)
    assert (tool.attention_spread(softened)["normalized_entropy"]
            > tool.attention_spread(tool.pool_attention(plain.visual.attnpool, x))["normalized_entropy"])

    shipped = tool.shipped_model_state(tempered.state_dict(), 4.0)
    assert set(shipped) == set(plain.state_dict())  # open_clip's plain architecture loads it strictly
    loaded = open_clip.create_model(TINY_RN, pretrained=None).eval()
    loaded.load_state_dict(shipped)
    with torch.no_grad():
        torch.testing.assert_close(loaded.visual.attnpool(x), tempered.visual.attnpool(x))


@pytest.mark.parametrize("argv, message", [
    (["--pool-temperature", "0"], "--pool-temperature must be positive"),
    (["--device", "gpu"], "--device must be cpu, cuda or cuda:N"),
    (["--init-weights", "missing.safetensors"], "--init-weights missing.safetensors: no such file"),
    (["--crop-fraction", "1.5"], "--crop-fraction must be in [0, 1]"),
    (["--crop-side", "0.8", "0.4"], "--crop-side must satisfy 0.1 <= MIN <= MAX < 1"),
    (["--crop-side", "0.01", "0.4"], "--crop-side must satisfy 0.1 <= MIN <= MAX < 1"),
    (["--diagnose", "sandbox", "--close-up-probes", "1", "0"], "--close-up-probes: each SIDE must be in [0.1, 1]"),
    (["--close-up-probes", "0.5"], "--close-up-probes needs --diagnose SPEC"),
    (["--batch-workers", "-1"], "--batch-workers must be 0 or more"),
])
def test_bad_pretraining_options_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("augmentation", [[], ["--crop-fraction", "0.5"]], ids=["flips", "flips-and-close-ups"])
def test_an_interrupted_pretraining_resumes_bit_for_bit(tmp_path, monkeypatch, augmentation):
    """Stopped after its step-2 checkpoint and resumed, a run ends with the weights of one never stopped."""
    def run(out, *extra):
        tool.main([*TINY_RUN, "--steps", "4", "--warmup", "2", "--log-every", "1", "--out-dir", str(out),
                   *augmentation, *extra])

    run(tmp_path / "straight")
    original_step = tool.Trainer.train_step

    def stop_after_the_checkpoint(self, *arguments, **options):
        if self.step == 2:
            raise KeyboardInterrupt
        return original_step(self, *arguments, **options)
    monkeypatch.setattr(tool.Trainer, "train_step", stop_after_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped")
    monkeypatch.setattr(tool.Trainer, "train_step", original_step)
    run(tmp_path / "stopped", "--resume")
    straight = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.safetensors")
    assert resumed["step"] == straight["step"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_batch_workers_change_the_speed_never_the_run(tmp_path):
    """Batches made ahead in two worker processes train the weights one process makes, bit for bit
    (4 steps of 8 over a pool of 24: into a second epoch)."""
    def run(out, workers):
        tool.main([*TINY_RUN, "--steps", "4", "--warmup", "1", "--crop-fraction", "0.5", "--out-dir", str(out),
                   "--batch-workers", str(workers)])
        return load_checkpoint(out / "last.safetensors")["model"]

    alone, ahead = run(tmp_path / "alone", 0), run(tmp_path / "ahead", 2)
    for key, value in alone.items():
        assert torch.equal(value, ahead[key]), key


def test_a_checkpoint_from_before_per_step_batches_resumes_and_says_its_batches_differ(tmp_path, capsys):
    common = [*TINY_RUN, "--steps", "2", "--warmup", "1", "--out-dir", str(tmp_path)]
    tool.main(common)
    capsys.readouterr()
    tool.main([*common, "--steps", "3", "--resume"])
    assert "resumed from step 2\n" in capsys.readouterr().out  # today's checkpoint: its own batches, no warning
    checkpoint = tmp_path / "last.safetensors"
    state = load_checkpoint(checkpoint)
    del state["batch_stream"]  # as a checkpoint written before it
    save_checkpoint(checkpoint, state)
    tool.main([*common, "--steps", "4", "--resume"])
    assert "resumed from step 3, with batches other than the ones it would have seen" in capsys.readouterr().out
    assert load_checkpoint(checkpoint)["step"] == 4


def test_each_epoch_sees_the_pool_once_and_a_step_batch_needs_only_its_step():
    pool, batch = 10, 4
    steps = [tool.batch_positions(step, batch, pool, seed=3) for step in range(5)]  # 20 scenes: two epochs
    order = np.concatenate(steps)
    assert sorted(order[:pool]) == sorted(order[pool:]) == list(range(pool))
    assert not np.array_equal(order[:pool], order[pool:])  # a fresh permutation each epoch
    assert len(steps[2]) == batch  # step 2 runs over the first epoch's end
    assert not np.array_equal(tool.batch_positions(0, batch, pool, seed=4), steps[0])
    assert sorted(tool.batch_positions(0, 25, pool, seed=3)[:20]) == sorted([*range(pool)] * 2)  # over 3 epochs


def test_a_run_resumed_under_another_crop_fraction_is_refused_and_its_checkpoint_kept(tmp_path):
    """--resume would otherwise train a different run under the stored one's name and recipe."""
    common = [*TINY_RUN, "--steps", "2", "--warmup", "1", "--out-dir", str(tmp_path)]
    tool.main([*common, "--crop-fraction", "0.5"])
    checkpoint = tmp_path / "last.safetensors"
    before = checkpoint.read_bytes()
    with pytest.raises(SystemExit) as refused:
        tool.main([*common, "--steps", "4", "--resume", "--crop-fraction", "0.3"])
    assert "--crop-fraction 0.3 differs from --crop-fraction 0.5" in str(refused.value)
    assert str(checkpoint) in str(refused.value) and checkpoint.read_bytes() == before
    tool.main([*common, "--steps", "4", "--resume", "--crop-fraction", "0.5"])  # the stored options, a longer run
    assert load_checkpoint(checkpoint)["step"] == 4


@pytest.mark.parametrize("argv, stored, message", [
    (["--lr", "0.01"], {"lr": 0.001}, "--lr 0.01 differs from --lr 0.001"),
    (["--bf16"], {"bf16": False}, "--bf16 differs from no --bf16"),
    (["--crop-side", "0.3", "0.8"], {"crop_side": [0.4, 0.8]}, "--crop-side 0.3 0.8 differs from --crop-side 0.4 0.8"),
    (["--crop-fraction", "0.5"], {}, "--crop-fraction 0.5 differs from --crop-fraction 0.0"),  # a checkpoint before it
], ids=["float", "flag", "pair", "older-checkpoint"])
def test_resume_options_are_compared_as_typed_and_older_checkpoints_against_the_defaults(argv, stored, message):
    with pytest.raises(SystemExit, match=message):
        tool.check_resume_options(tool.parse_args(argv), stored, "last.safetensors")
    same = {**vars(tool.parse_args(argv)), "init_weights": "elsewhere.safetensors", "steps": 9, "threads": 1}
    tool.check_resume_options(tool.parse_args(argv), same, "last.safetensors")  # its own options pass


def test_the_linear_probe_reads_labels_a_feature_holds_and_scores_an_absent_class_zero():
    """What --finalize measures on the global and on the mean dense feature: a feature that carries
    the labels ranks them perfectly; one that does not ranks them near chance."""
    rng = np.random.default_rng(0)
    train_y = (rng.random((200, 3)) < 0.4).astype(int)
    train_y[:, 2] = 0  # absent from the probe's training scenes
    test_y = (rng.random((100, 3)) < 0.4).astype(int)
    def features(labels):
        return np.concatenate([labels * 2.0 + rng.normal(0, 0.3, labels.shape), rng.normal(size=(len(labels), 5))], 1)

    scores = tool.linear_probe_scores(features(train_y), train_y, features(test_y))
    assert scores.shape == (100, 3) and not scores[:, 2].any()
    assert tool.mean_ap(scores[:, :2], test_y[:, :2]) > 99
    noise = tool.linear_probe_scores(rng.normal(size=(200, 8)), train_y, rng.normal(size=(100, 8)))
    assert tool.mean_ap(noise[:, :2], test_y[:, :2]) < 70


def test_finalize_ships_a_candidate_under_its_own_name_with_both_probes(tmp_path):
    """``--name`` writes the weights and recipe beside, not over, the shipped sandbox; the recipe
    holds the global and the mean-dense linear probe (property c's preview) and the pool's spread."""
    common = ["--out-dir", str(tmp_path / "run"), "--threads", "1"]
    tool.main(["--arch", TINY_RN, "--image-size", "64", "--pool-size", "16", "--batch-size", "8", "--steps", "2",
               "--warmup", "1", "--eval-size", "8", "--workers", "1", "--no-channels-last", "--pool-temperature",
               "2", *common])
    tool.main(["--finalize", "--weights-dir", str(tmp_path / "ship"), "--name", "candidate", "--eval-size", "16",
               "--eval-image-size", "64", "--probe-train", "24", *common])
    assert sorted(path.name for path in (tmp_path / "ship").iterdir()) == ["candidate.json", "candidate.safetensors"]
    recipe = json.loads((tmp_path / "ship" / "candidate.json").read_text())
    evaluation = recipe["evaluation"]
    assert recipe["name"] == "candidate" and recipe["pretraining"]["pool_temperature"] == 2
    assert recipe["pretraining"]["init_weights"] is None
    assert 0 <= evaluation["linear_probe_dense_map"] <= 100 and 0 <= evaluation["linear_probe_map"] <= 100
    assert 0 < evaluation["pool_attention"]["normalized_entropy"] <= 1


def test_continued_pretraining_starts_from_the_weights_given(tmp_path):
    """``--init-weights``: the trainer's model is the shipped checkpoint (fp16 on disk, fp32 here);
    a checkpoint of another architecture fails instead of loading in part."""
    shipped = tool.build_model(TINY_RN, seed=5)
    as_shipped = {key: value.half() if value.is_floating_point() else value
                  for key, value in shipped.state_dict().items()}
    save_file({key: value.contiguous() for key, value in as_shipped.items()}, str(tmp_path / "tiny.safetensors"))
    args = tool.parse_args(["--image-size", "64", "--threads", "1", "--no-channels-last",
                            "--init-weights", str(tmp_path / "tiny.safetensors")])
    images, scenes = tool.render_pool(args.data_seed, 64, 4, args.max_objects, workers=1)
    trainer = tool.Trainer(args, TINY_RN, images, scenes)
    for key, value in as_shipped.items():
        expected = value.float() if value.is_floating_point() else value
        torch.testing.assert_close(trainer.model.state_dict()[key], expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="state_dict"):
        tool.Trainer(args, tool.ARCH, images, scenes)



def test_lone_object_check_reads_the_object_location_and_the_best_one_apart():
    """Only scenes with one object count; the location under its centre and the best-scoring
    location are scored apart, so a background location that outscores the object is a miss of the
    best location only."""
    from dataclasses import replace

    from promptmlr.backbones import create_backbone
    from promptmlr.data.world import SyntheticWorld
    from promptmlr.models.text import class_text_features

    backbone = create_backbone("openclip:promptmlr-tiny-rn")
    rows, cols = backbone.dense_shape[1]
    text = class_text_features(backbone, tool.SYNTHETIC_CLASS_NAMES, templates=[tool.EVAL_TEMPLATE])
    world = SyntheticWorld(0)
    crowded = next(scene for scene in map(world.scene, range(50)) if len(scene.objects) > 1)
    lone = [replace(crowded.objects[0], colour=colour, shape=shape, x=0.9, y=0.1)  # row 0, last column
            for colour, shape in (("red", "circle"), ("blue", "star"))]
    scenes = [replace(crowded, objects=(obj,)) for obj in lone] + [crowded]
    first, second = (obj.class_index for obj in lone)
    dense = torch.zeros(3, rows * cols, text.shape[1])
    dense[0, cols - 1] = text[first]
    dense[1, cols - 1] = text[second] + 0.3 * text[(second + 2) % len(text)]  # names it, less sharply
    dense[1, 0] = text[(second + 1) % len(text)]  # a background location that outscores it
    global_features = torch.stack([text[first], text[first], text[0]])  # wrong for the second scene
    result = tool.lone_object_top1(backbone, scenes, global_features, dense)
    assert result == {"scenes": 2, "global": 50.0, "object_location": 100.0, "best_location": 50.0}
    assert tool.lone_object_top1(backbone, [crowded], global_features[2:], dense[2:]) == {"scenes": 0}


def _one_object_scene(x: float, y: float, radius: float) -> Scene:
    red = SceneObject(colour="red", shape="circle", x=x, y=y, radius=radius, rotation=0.0, texture="solid",
                      size="small", rgb=(215, 35, 35), texture_angle=0.0, texture_period=0.3)
    return Scene(index=0, theme="clinic", background="gradient", dark=False, objects=(red,), render_seed=3)


def test_a_close_up_names_the_objects_it_holds_where_its_pixels_show_them():
    """A crop keeps an object in its caption only when the object is in it, at the crop's own
    coordinates and size word, and its pixels show the object there; a crop of bare background shows
    none of it and gets a caption that names no class."""
    world = SyntheticWorld(0, 128)
    scene = _one_object_scene(0.3, 0.3, 0.1)
    image = world.render_array(scene)
    rng = np.random.default_rng(0)
    views = [tool.crop_scene(scene, rng, (0.4, 0.6)) for _ in range(60)]
    with_object = [view for view in views if view is not None and view[0].objects]
    without = [view for view in views if view is not None and not view[0].objects]
    assert with_object and without

    def red(pixels):
        return (pixels[..., 0].astype(int) > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)

    for view, (left, top, side) in with_object:
        (circle,) = view.objects
        assert circle.x * side + left == pytest.approx(0.3) and circle.y * side + top == pytest.approx(0.3)
        assert circle.radius == pytest.approx(0.1 / side) and circle.size == tool.size_word(0.1 / side) != "small"
        pixels = tool.crop_pixels(image, (left, top, side))
        assert red(pixels[int(circle.y * 128), int(circle.x * 128)])  # the circle's fill at its mapped centre
        assert "red" in tool.describe(world, view, rng)
    object_words = {word for name in SYNTHETIC_CLASS_NAMES for word in name.split()}
    object_words |= {word for forms in SHAPE_WORDS.values() for pair in forms for word in pair}
    for view, box in without:
        assert not red(tool.crop_pixels(image, box)).any()
        caption = tool.describe(world, view, rng)
        assert "background" in caption and not object_words & set(caption.rstrip(".").split())


def test_a_close_up_holds_each_visible_object_whole_or_not_at_all():
    """Every object of the scene has, of its visible area, either at least CROP_INSIDE inside the crop
    (and is named) or none (and is not): no caption leaves out an object the crop shows."""
    world = SyntheticWorld(1, 128, 5)
    rng = np.random.default_rng(1)
    views = 0
    for index in range(40):
        scene = world.scene(index)
        view = tool.crop_scene(scene, rng, (0.4, 0.8))
        if view is None:
            continue
        views += 1
        cropped, (left, top, side) = view
        fine = 256  # measured on a finer raster than the crop's own, so the rule is checked, not re-run
        inside = np.zeros((fine, fine), bool)
        inside[round(top * fine):round((top + side) * fine), round(left * fine):round((left + side) * fine)] = True
        parts = visible_parts([object_mask(obj, fine) for obj in scene.objects])
        shares = [(part & inside).sum() / part.sum() for part in parts]
        assert all(share < 0.01 or share > tool.CROP_INSIDE - 0.03 for share in shares)
        named = sorted(obj.class_index for obj, share in zip(scene.objects, shares) if share > 0.5)
        assert sorted(obj.class_index for obj in cropped.objects) == named
    assert views >= 30  # most scenes have a crop that holds their objects whole or not at all


def test_close_up_probes_see_each_scene_whole_or_closer_and_score_both_probes(capsys):
    """--diagnose --close-up-probes: side 1 is the held-out scenes themselves; a closer side keeps only
    views that hold whole objects, labelled with those, and both probes are scored on each."""
    world = SyntheticWorld(0, 64)
    scenes = [world.scene(i) for i in range(40)]
    images, labels = tool.close_up_views(world, scenes, 1.0, seed=0)
    assert len(images) == 40 and (labels == np.stack([world.labels(s) for s in scenes])).all()
    _, closer = tool.close_up_views(world, scenes, 0.5, seed=0)
    assert 0 < len(closer) < 40 and closer.sum(1).mean() < labels.sum(1).mean()  # a half-side view holds fewer
    tool.main(["--diagnose", f"openclip:{TINY_RN}", "--close-up-probes", "1", "0.5", "--eval-size", "24",
               "--probe-train", "40", "--eval-image-size", "64", "--threads", "1"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    whole, half = report["close_up_probes"]
    assert (whole["side"], whole["test_views"], whole["train_views"]) == (1.0, 24, 40)
    assert half["side"] == 0.5 and 0 < half["classes_per_test_view"] < whole["classes_per_test_view"]
    assert all(0 < entry[probe] <= 100 for entry in (whole, half) for probe in ("probe_global", "probe_dense"))


def test_size_words_follow_the_worlds_size_ranges():
    for word, (low, high) in SIZES.items():
        assert tool.size_word(low) == tool.size_word(high) == word
