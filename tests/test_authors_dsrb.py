"""DSRB's mechanisms against the formulas of its authors' code (HCP-MLR-PL, commit d9fd300: DSRB.py,
model/DSRB.py, loss/DSRB.py), written out here on small tensors, since that code cannot run in CI
(``tools/bench/parity_dsrb.py`` runs it)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from promptmlr import migrations
from promptmlr.backbones import ImageFeatures
from promptmlr.losses import asymmetric_loss
from promptmlr.models import build_method
from promptmlr.models.blending import (
    BlendInputs,
    RegionPrototypes,
    RegionSamples,
    blend_targets,
    instance_blend,
    other_regions,
    peak_regions,
    prototype_blend,
    soft_target_bce,
    unknown_picks,
)
from promptmlr.models.category import hcp_contrastive_loss
from tests.conftest import TINY_SPECS, seeded

CLASSES = ["cat", "dog", "sofa", "car"]
# the values that load a dsrb file written before the authors' rules were its defaults
EARLIER = migrations.OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING["dsrb"]


def _sigmoid_bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


# -------------------------------------------------------------------------------- instance blend
def test_instance_blend_mixes_an_unknown_label_with_the_reversed_batchs_known_positive():
    """mixupInstance_featuremap: flipped batch; alpha where T == 0 and flip(T) == 1; target alpha * T +
    (1 - alpha) * flip(T), i.e. 1 - alpha there and T elsewhere."""
    category = seeded(3, 2, 4)
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, -1.0]])  # image 0 <-> 2, image 1 with itself
    blended, entries = instance_blend(category, targets, 0.3)
    assert entries.tolist() == [[True, False], [False, False], [False, False]]
    torch.testing.assert_close(blended[0, 0], 0.3 * category[0, 0] + 0.7 * category[2, 0])
    torch.testing.assert_close(blended[~entries], category[~entries])
    labels = blend_targets(targets, entries, 0.3, soft=True, with_known=True)
    torch.testing.assert_close(labels, torch.tensor([[0.7, 1.0], [1.0, 0.0], [1.0, -1.0]]))


def test_their_bce_takes_soft_positive_targets_and_averages_over_every_target_not_zero():
    """loss/DSRB.py BCELoss: t > 0: BCEWithLogits(x, t); t < 0: BCEWithLogits(-x, -t); mean over t != 0."""
    logits = torch.tensor([[0.4, -1.2, 2.0], [0.1, 0.0, -0.5]])
    targets = torch.tensor([[0.7, -1.0, 0.0], [1.0, 0.0, -1.0]])
    expected = (_sigmoid_bce(0.4, 0.7) + _sigmoid_bce(1.2, 1.0) + _sigmoid_bce(0.1, 1.0) + _sigmoid_bce(0.5, 1.0)) / 4
    assert soft_target_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert soft_target_bce(logits, torch.zeros_like(targets)).item() == 0.0


# ------------------------------------------------------------------------------- prototype blend
def test_a_class_region_is_the_quadrant_of_its_attention_times_feature_peak():
    """mixupPrototype_featuremap: C = sum over channels of the attention-weighted map; index =
    2 * (row of the peak >= H // 2) + (column >= W // 2)."""
    height = width = 4
    scores = seeded(3, 5, height * width)
    regions = peak_regions(scores, (height, width), 2)
    for b, c in itertools.product(range(3), range(5)):
        row, column = divmod(int(scores[b, c].argmax()), width)
        assert regions[b, c] == 2 * (row >= height // 2) + (column >= width // 2)


def test_dsrb_places_regions_by_attention_times_the_summed_map(vit):
    """The authors' head pools the map itself: a location's score is attention x sum_d x[l, d]."""
    method = build_method("dsrb", vit, CLASSES)
    dense = seeded(2, 9, vit.embed_dim)
    output = method(ImageFeatures(torch.zeros(2, vit.embed_dim), dense, (3, 3)))
    inputs = method.blend_inputs(output)
    torch.testing.assert_close(inputs.scores, output.attention * dense.sum(-1)[:, None, :])
    torch.testing.assert_close(inputs.category, torch.bmm(output.attention, dense))  # before normalisation


def test_the_prototype_comes_from_one_of_the_other_three_regions_uniformly():
    """(index - randint(1, 4)) % 4."""
    torch.manual_seed(0)
    own = torch.tensor([2] * 3000)
    drawn = other_regions(own, 4)
    counts = torch.bincount(drawn, minlength=4)
    assert counts[2] == 0
    assert all(abs(int(count) - 1000) < 120 for count in counts[[0, 1, 3]])


def test_one_unknown_class_per_image_is_picked():
    """topK 1 of uniform scores times (T == 0): one unknown class per image, never a known one."""
    torch.manual_seed(0)
    targets = torch.tensor([[0.0, 1.0, 0.0, -1.0], [1.0, 1.0, 0.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
    seen = set()
    for _ in range(50):
        images, classes = unknown_picks(targets)
        assert images.tolist() == [0, 1]  # image 2 has no unknown label: left out
        assert all(targets[i, c] == 0 for i, c in zip(images.tolist(), classes.tolist()))
        seen.add(int(classes[0]))
    assert seen == {0, 2}


def test_prototype_blend_mixes_the_picked_entry_with_its_regions_prototype():
    """beta * F + (1 - beta) * prototype at the picked entry; target 1 - beta there, T elsewhere."""
    bank = RegionPrototypes(num_classes=2, regions=2, embed_dim=3, momentum=0.9)
    bank.assign(seeded(2, 4, 3, seed=1), torch.ones(2, 4, dtype=torch.bool))
    category, targets = seeded(2, 2, 3), torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    images, classes, cells = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([3, 1])
    blended, entries = prototype_blend(category, images, classes, cells, bank, 0.4)
    torch.testing.assert_close(blended[0, 0], 0.4 * category[0, 0] + 0.6 * bank.prototypes[0, 3])
    torch.testing.assert_close(blended[1, 1], 0.4 * category[1, 1] + 0.6 * bank.prototypes[1, 1])
    labels = blend_targets(targets, entries, 0.4, soft=True, with_known=True)
    torch.testing.assert_close(labels, torch.tensor([[0.6, 1.0], [-1.0, 0.6]]))


def test_a_pass_keeps_the_first_positives_per_class_and_region_and_averages_as_theirs():
    """computePrototype_featuremap: per class and region the first (here 2; theirs 100) known
    positives in batch order; the region's mean keeps the zero row their collection starts from
    (sum / (n + 1)); a region without any takes the class's mean over all kept; a class never positive
    has none (theirs fails)."""
    samples = RegionSamples(num_classes=3, cells=4, embed_dim=2, cap=2, device=torch.device("cpu"))
    features = [seeded(3, 3, 2, seed=seed) for seed in range(2)]
    targets = [torch.tensor([[1.0, 0.0, -1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
               torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])]
    regions = [torch.tensor([[3, 0, 0], [3, 2, 0], [3, 0, 0]]), torch.tensor([[3, 2, 0], [0, 0, 0], [0, 0, 0]])]
    for batch in range(2):
        samples.add(features[batch], regions[batch], targets[batch])
    prototypes, filled = samples.prototypes()
    # class 0, region 3: four positives, the first two kept (batch 0, images 0 and 1)
    torch.testing.assert_close(prototypes[0, 3], (features[0][0, 0] + features[0][1, 0]) / 3)
    torch.testing.assert_close(prototypes[0, 0], (features[0][0, 0] + features[0][1, 0]) / 2)  # class mean
    # class 1, region 2: batch 0 image 1 and batch 1 image 0
    torch.testing.assert_close(prototypes[1, 2], (features[0][1, 1] + features[1][0, 1]) / 3)
    assert filled.tolist() == [[True] * 4, [True] * 4, [False] * 4]


def test_prototypes_are_recomputed_when_blending_starts_and_every_interval(vit):
    """DSRB.py: at mixupEpoch and every recomputePrototypeInterval epochs after it."""
    method = build_method("dsrb", vit, CLASSES, known_only_epochs=2, prototype_interval=3)
    due = []
    for epoch in range(10):
        method.set_epoch(epoch)
        due.append(method.wants_training_pass())
    assert [epoch for epoch, wanted in enumerate(due) if wanted] == [2, 5, 8]
    assert not build_method("dsrb", vit, CLASSES, **EARLIER).wants_training_pass()


# ------------------------------------------------------------------------------------ the step
def test_alpha_and_beta_are_learned_clamped_to_zero_one_before_each_use(vit):
    """DSRB.__init__: nn.Parameter(0.5), learnable; forward clamps .data to [0, 1] before blending."""
    method = build_method("dsrb", vit, CLASSES, known_only_epochs=0)
    names = dict(method.named_parameters())
    assert {"blender.alpha", "blender.beta"} <= set(names)
    with torch.no_grad():
        method.blender.alpha.fill_(1.3)
        method.blender.beta.fill_(-0.2)
    method.blender.prototypes.assign(seeded(4, 4, vit.embed_dim), torch.ones(4, 4, dtype=torch.bool))
    features = vit.encode_image(seeded(3, 3, vit.image_size, vit.image_size))
    targets = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, -1.0]])
    method.auxiliary_losses(method(features), targets, asymmetric_loss)
    assert (method.blender.alpha.item(), method.blender.beta.item()) == (1.0, 0.0)


def test_a_step_adds_their_four_terms(vit):
    """DSRB.py Train after mixupEpoch: BCE(out, T) + w_con * contrastive + BCE(g(instance blend), T_i) +
    BCE(g(prototype blend), T_p), their BCE averaging over each term's known and blended entries."""
    torch.manual_seed(0)
    method = build_method("dsrb", vit, CLASSES, known_only_epochs=0)
    method.set_epoch(1)  # past the contrastive term's first-epoch ramp
    method.blender.prototypes.assign(seeded(4, 4, vit.embed_dim), torch.ones(4, 4, dtype=torch.bool))
    features = vit.encode_image(seeded(4, 3, vit.image_size, vit.image_size))
    targets = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0], [1.0, 0.0, 0.0, -1.0],
                            [0.0, 1.0, 1.0, 0.0]])
    output = method(features)
    inputs = method.blend_inputs(output)
    torch.manual_seed(1)
    losses = method.auxiliary_losses(output, targets, asymmetric_loss)
    assert set(losses) == {"contrastive", "instance_blend", "prototype_blend"}

    def classify(category: torch.Tensor) -> torch.Tensor:
        return method.scored(category, output.attention, output.grid).logits

    alpha, beta = method.blender.alpha, method.blender.beta
    blended, entries = instance_blend(inputs.category, targets, alpha)
    torch.testing.assert_close(losses["instance_blend"],
                               soft_target_bce(classify(blended), torch.where(entries, 1 - alpha, targets)))
    torch.manual_seed(1)
    contrastive = hcp_contrastive_loss(output.category_features, targets)  # its draws come first
    torch.testing.assert_close(losses["contrastive"], 0.05 * contrastive)
    images, classes = unknown_picks(targets)
    cells = other_regions(peak_regions(inputs.scores, output.grid, 2)[images, classes], 4)
    blended, entries = prototype_blend(inputs.category, images, classes, cells, method.blender.prototypes, beta)
    assert entries.sum() == 4  # every image has an unknown label and every prototype is filled
    torch.testing.assert_close(losses["prototype_blend"],
                               soft_target_bce(classify(blended), torch.where(entries, 1 - beta, targets)))
    (losses["instance_blend"] + losses["prototype_blend"]).backward()
    assert method.blender.alpha.grad != 0 and method.blender.beta.grad != 0


def test_a_blend_term_is_scored_on_the_blend_of_the_decoupled_features(vit):
    """The blends mix the decoupled features (their featuremapWithCoef, summed) before the classifier."""
    torch.manual_seed(0)
    method = build_method("dsrb", vit, CLASSES, known_only_epochs=0, prototype_blend=False)
    features = vit.encode_image(seeded(2, 3, vit.image_size, vit.image_size))
    targets = torch.tensor([[0.0, -1.0, -1.0, 1.0], [1.0, 0.0, 0.0, -1.0]])  # only (0, 0) is blended
    output = method(features)
    decoupled = output.extras["decoupled_features"].detach()
    blended = decoupled.clone()
    blended[0, 0] = 0.5 * decoupled[0, 0] + 0.5 * decoupled[1, 0]
    logits = method.classifier(blended).detach()
    expected = (_sigmoid_bce(logits[0, 0].item(), 0.5) + sum(
        _sigmoid_bce(float(logits[b, c]) * (1 if targets[b, c] > 0 else -1), 1.0)
        for b, c in [(0, 1), (0, 2), (0, 3), (1, 0), (1, 3)])) / 6
    assert method.auxiliary_losses(output, targets, asymmetric_loss)["instance_blend"].item() == pytest.approx(
        expected, rel=1e-5)


# ------------------------------------------------------------------------------ defaults, options
def test_dsrb_defaults_to_the_authors_rules(vit):
    config = build_method("dsrb", vit, CLASSES).config
    assert (config.known_only_epochs, config.head, config.contrastive_pairs, config.ramp_epochs,
            config.contrastive_weight, config.blend_weight) == (5, "authors", "authors", 1.0, 0.05, 1.0)
    assert (config.blend_shares, config.blend_targets, config.blend_entries, config.blend_features,
            config.region_peak, config.prototype_region, config.prototype_update, config.prototype_interval,
            config.prototype_samples, config.regions, config.instance_alpha, config.prototype_beta) == (
        "learned", "soft", "known_and_blended", "decoupled", "feature", "other", "pass", 5, 100, 2, 0.5, 0.5)


def test_the_earlier_rules_stay_as_options(vit):
    """With the earlier values: fixed shares, label 1 under the run's loss on the blended entries only,
    unit features, the attention's region and its own prototype, a moving average."""
    method = build_method("dsrb", vit, CLASSES, known_only_epochs=0, **EARLIER)
    assert isinstance(method.blender.alpha, float) and "blender.alpha" not in dict(method.named_parameters())
    features = vit.encode_image(seeded(2, 3, vit.image_size, vit.image_size))
    targets = torch.tensor([[0.0, 1.0, -1.0, 1.0], [1.0, 0.0, 0.0, -1.0]])
    output = method(features)
    assert output.extras == {}
    blended, entries = instance_blend(output.category_features, targets, 0.5)
    logits = method.classifier(torch.nn.functional.normalize(blended, dim=-1))
    torch.testing.assert_close(method.auxiliary_losses(output, targets, asymmetric_loss)["instance_blend"],
                               asymmetric_loss(logits, entries.float()))
    assert method.blender.prototypes.filled.any()  # the moving average learnt from the batch


def test_another_region_needs_more_than_one(vit):
    from promptmlr.errors import ConfigError

    with pytest.raises(ConfigError, match="prototype_region other needs regions >= 2"):
        build_method("dsrb", vit, CLASSES, regions=1)
    build_method("dsrb", vit, CLASSES, regions=1, prototype_region="own")


def test_blend_inputs_are_named(vit):
    method = build_method("dsrb", vit, CLASSES, blend_features="unit", region_peak="attention")
    features = vit.encode_image(seeded(2, 3, vit.image_size, vit.image_size))
    output = method(features)
    assert method.blend_inputs(output) == BlendInputs(output.category_features, output.attention, output.grid)


# -------------------------------------------------------------------------------------- the engine
def test_the_engine_passes_over_the_training_set_before_the_epochs_that_want_it(tmp_path, monkeypatch):
    """DSRB.py calls computePrototype_featuremap over train_loader before epochs mixupEpoch, +interval, ...:
    the trainer hands the method every training batch, in evaluation mode, with its known labels."""
    from promptmlr.api import run
    from promptmlr.config import resolve_config
    from promptmlr.models.dsrb import DSRB
    from tests.conftest import write_colour_csv

    root = write_colour_csv(tmp_path / "data", counts=(("train", 24), ("test", 8)))
    passes: list[tuple[int, bool, int, int]] = []
    read = DSRB.training_pass

    def recorded(method, batches):
        batches = list(batches)
        passes.append((method.epoch, method.training, sum(len(targets) for _, targets in batches),
                       int(sum((targets == 0).sum() for _, targets in batches))))
        read(method, batches)

    monkeypatch.setattr(DSRB, "training_pass", recorded)
    config = resolve_config("csv", overrides=[{
        "data": {"root": str(root), "known": 0.5, "val_fraction": 0.25},
        "model": {"backbone": TINY_SPECS[0], "method": "dsrb",
                  "options": {"known_only_epochs": 1, "prototype_interval": 2}},
        "train": {"epochs": 4, "batch_size": 8, "num_workers": 0, "cache": {"directory": str(tmp_path / "cache")}}}])
    run(config, tmp_path / "run", log=lambda *args, **kwargs: None)
    assert [(epoch, training) for epoch, training, _, _ in passes] == [(1, False), (3, False)]
    assert all(images == 18 and unknown > 0 for _, _, images, unknown in passes)  # 24 less a quarter for val


def test_the_parity_bench_refuses_a_folder_that_is_not_an_hcp_mlr_pl_checkout(tmp_path):
    from tools.bench import parity_dsrb

    with pytest.raises(SystemExit, match="is not a HCP-MLR-PL checkout .*github.com/HCPLab-SYSU/HCP-MLR-PL"):
        parity_dsrb.main(["--anchor-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
