"""The seed papers' mechanisms on hand-made cases: SST's transfer, DSRB's blending, CLSL's recovery,
HCP's contrastive term, and the known-only epochs before they switch on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptmlr.backbones import create_backbone
from promptmlr.losses import asymmetric_loss
from promptmlr.models import build_method
from promptmlr.models.blending import RegionPrototypes, instance_blend, peak_regions, prototype_blend, unknown_picks
from promptmlr.models.category import category_contrastive_loss
from promptmlr.models.clsl import recovered_targets
from promptmlr.models.enhancement import SemanticEnhancement
from promptmlr.models.transfer import (
    PositiveMemory,
    cooccurrence_targets,
    cross_image_pseudo_labels,
    intra_image_pseudo_labels,
    transfer_threshold,
)
from tests.conftest import TINY_SPECS

CLASSES = ["cat", "dog", "sofa"]


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# ------------------------------------------------------------------------------------------- SST
def test_cooccurrence_targets_are_known_only_where_both_labels_decide_the_pair():
    pairs = cooccurrence_targets(torch.tensor([[1.0, 1.0, 0.0, -1.0]]))[0]
    assert pairs[0, 1] == pairs[1, 0] == 1  # both known positives
    assert pairs[0, 2] == 0  # positive and unknown: undecided
    assert pairs[0, 3] == pairs[2, 3] == -1  # a known negative rules the pair out
    assert torch.all(pairs.diagonal() == 0)


def test_cooccurrence_transfer_labels_the_class_that_goes_with_the_known_positive():
    # cat is known present; the image says dog goes with cat (0.97) and sofa does not (0.2)
    probability = torch.tensor([[[0.0, 0.97, 0.2],
                                 [0.97, 0.0, 0.1],
                                 [0.2, 0.1, 0.0]]])
    pseudo = intra_image_pseudo_labels(probability, torch.tensor([[1.0, 0.0, 0.0]]), threshold=0.95)
    assert pseudo.tolist() == [[0.0, 1.0, 0.0]]
    # a known label is never overwritten, whatever the evidence
    pseudo = intra_image_pseudo_labels(probability, torch.tensor([[1.0, -1.0, 0.0]]), threshold=0.95)
    assert pseudo.tolist() == [[0.0, 0.0, 0.0]]
    # with two known positives the evidence is their mean: 0.97 and 0.1 average below 0.95
    assert intra_image_pseudo_labels(probability, torch.tensor([[1.0, 0.0, 1.0]]), 0.95).sum() == 0


def test_threshold_schedule_falls_after_the_warm_up_to_its_floor():
    assert [transfer_threshold(e, 2, 0.95, 0.025, 0.75) for e in (0, 2, 3, 6)] == \
           pytest.approx([0.95, 0.95, 0.925, 0.85])
    assert transfer_threshold(40, 2, 0.95, 0.025, 0.75) == 0.75


def test_memory_is_first_in_first_out_and_transfers_to_similar_unknowns():
    memory = PositiveMemory(num_classes=2, size=2, embed_dim=2, rule="filled")
    assert torch.all(memory.mean_similarity(_unit([1, 0], [1, 0])[None]) == -1)  # nothing stored: no evidence
    batch = torch.stack([_unit([1, 0], [0, 1]), _unit([0, 1], [0, 1]), _unit([1, 1], [1, 0])])
    memory.push(batch, torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    assert memory.count.tolist() == [3, 0]
    stored = {tuple(row.tolist()) for row in memory.features[0]}  # the oldest of the three was dropped
    assert stored == {tuple(_unit([0, 1])[0].tolist()), tuple(_unit([1, 1])[0].tolist())}
    query = torch.stack([_unit([0.1, 1], [1, 0]), _unit([1, -1], [1, 0])])
    similarity = memory.mean_similarity(query)
    assert similarity[0, 0] > 0.8 > similarity[1, 0]
    targets = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert cross_image_pseudo_labels(similarity, targets, 0.8).tolist() == [[1.0, 0.0], [0.0, 0.0]]


# -------------------------------------------------------------------------------------- blending
def test_instance_blend_moves_the_unknown_label_toward_the_donor():
    category = torch.stack([_unit([1, 0], [1, 0]), _unit([0, 1], [0, 1])])  # 2 images x 2 classes
    targets = torch.tensor([[0.0, 1.0], [1.0, -1.0]])  # class 0 unknown in image 0, known in image 1
    blended, entries = instance_blend(category, targets, alpha=0.5)
    assert entries.tolist() == [[True, False], [False, False]]
    donor = category[1, 0]
    assert (blended[0, 0] @ donor) > (category[0, 0] @ donor)
    torch.testing.assert_close(F.normalize(blended[0, 0], dim=-1), _unit([1, 1])[0])
    assert torch.equal(blended[~entries], category[~entries])


def test_peak_regions_split_the_grid_into_cells():
    attention = torch.zeros(1, 4, 16)
    for c, location in enumerate([0, 3, 12, 15]):  # the corners of a 4 x 4 grid
        attention[0, c, location] = 1
    assert peak_regions(attention, (4, 4), regions=2).tolist() == [[0, 1, 2, 3]]


def test_prototypes_average_known_positives_and_blend_into_an_unknown_class():
    bank = RegionPrototypes(num_classes=2, regions=1, embed_dim=2, momentum=0.5)
    region = torch.zeros(2, 2, dtype=torch.long)
    bank.update(torch.stack([_unit([1, 0], [1, 0]), _unit([0, 1], [1, 0])]), region,
                torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
    assert bank.filled.tolist() == [[True], [False]]  # class 1 has no known positive yet
    torch.testing.assert_close(bank.prototypes[0, 0], _unit([1, 1])[0])
    bank.update(_unit([1, 0], [1, 0])[None], region[:1], torch.tensor([[1.0, 0.0]]))  # the average moves
    assert bank.prototypes[0, 0, 0] > bank.prototypes[0, 0, 1]

    category = torch.stack([_unit([0, 1], [1, 0]), _unit([0, 1], [0, 1])])
    images, classes = unknown_picks(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    assert classes.tolist() == [0, 0]  # the only unknown class of each image
    cells = region[images, classes]
    blended, entries = prototype_blend(category, images, classes, cells, bank, beta=0.5)
    assert entries.tolist() == [[True, False], [True, False]]
    prototype = bank.prototypes[0, 0]
    assert torch.all(blended[:, 0] @ prototype > category[:, 0] @ prototype)
    images, classes = unknown_picks(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    _, entries = prototype_blend(category, images, classes, region[images, classes], bank, beta=0.5)
    assert entries.sum() == 0  # class 1's prototype is not filled: nothing to blend


# ---------------------------------------------------------------------------- contrastive, CLSL
def test_contrastive_loss_rewards_same_class_agreement_and_penalises_it_across_labels():
    targets = torch.tensor([[1.0], [1.0], [-1.0]])
    aligned = torch.stack([_unit([1, 0]), _unit([1, 0]), _unit([-1, 0])])
    confused = torch.stack([_unit([1, 0]), _unit([0, 1]), _unit([1, 0])])
    assert category_contrastive_loss(aligned, targets) == pytest.approx(0.0, abs=1e-6)
    assert category_contrastive_loss(confused, targets) > 0.9
    assert category_contrastive_loss(confused, torch.zeros(3, 1)) == 0  # nothing known: no term


def test_recovered_labels_never_overwrite_known_ones():
    targets = torch.tensor([[1.0, -1.0, 0.0]])
    soft = recovered_targets(targets, torch.tensor([[0.1, 0.9, 0.7]]))
    assert soft[0].tolist() == pytest.approx([1.0, 0.0, 0.7])


def test_enhanced_locations_read_the_class_they_match_and_start_at_clips_map():
    enhancement = SemanticEnhancement(dim=3, num_classes=3, hidden=4, attention_scale=50.0)
    torch.nn.init.zeros_(enhancement.semantic[2].weight)
    torch.nn.init.zeros_(enhancement.semantic[2].bias)  # v_c = t_c: the text alone guides
    text = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    dense = 3 * torch.tensor([[[0.9, 0.1, 0.0], [0.0, 0.2, 0.9]]])
    locations = enhancement.locations(dense)
    torch.testing.assert_close(locations, F.normalize(dense, dim=-1))  # V starts at the identity
    semantic = enhancement.semantic_features(text, _unit([1, 1, 1]), batch=1)
    torch.testing.assert_close(semantic[0], text)
    enhanced = enhancement.attend(locations, semantic)[0]
    assert enhanced[0].argmax() == 0 and enhanced[1].argmax() == 2


def test_enhancement_pooling_follows_the_confident_location():
    location_logits = torch.tensor([[[-4.0, 1.0], [-4.0, 1.0], [6.0, 1.0]]])  # [B=1, P=3, C=2]
    logits, weights = SemanticEnhancement.pool(location_logits)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2))
    assert location_logits[0, :, 0].mean() < logits[0, 0] <= 6.0 and logits[0, 0] > 5.9  # not averaged away
    assert logits[0, 1] == pytest.approx(1.0) and weights[0, 0].argmax() == 2


# ----------------------------------------------------------------------------------- known-only epochs
@pytest.fixture(scope="module")
def backbone():
    return create_backbone(TINY_SPECS[0])


BLENDING_PROMPTMLR = {"instance_blend": True, "prototype_blend": True, "contrastive_weight": 0.05,
                      "known_only_epochs": 1}


@pytest.mark.parametrize("name, options, late_terms", [
    ("sst", {"known_only_epochs": 1}, {"intra", "inter"}),
    ("dsrb", {"known_only_epochs": 1}, {"instance_blend", "prototype_blend"}),
    ("promptmlr", BLENDING_PROMPTMLR, {"instance_blend", "prototype_blend"})])
def test_transfer_terms_join_after_the_warm_up(backbone, name, options, late_terms):
    method = build_method(name, backbone, CLASSES, **options).train()
    images = torch.randn(4, 3, backbone.image_size, backbone.image_size)
    features = backbone.encode_image(images)
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    method.set_epoch(0)
    early = method.auxiliary_losses(method(features), targets, asymmetric_loss)
    method.set_epoch(1)
    late = method.auxiliary_losses(method(features), targets, asymmetric_loss)
    assert not late_terms & set(early) and late_terms <= set(late)
    assert all(torch.isfinite(value) for value in late.values())


# ----------------------------------------------------------------------------------- PositiveCoOp
def test_positivecoop_scores_as_its_authors_formula(backbone):
    """models/positivecoop.py of SamyakR99/PositiveCoOp: the learned offset is added to the positive
    text feature before it is normalised; the negative is a learned vector; DualCoOp's 20 * cos maps,
    softmax over the positive map's locations, 5 * (positive - negative)."""
    torch.manual_seed(0)
    method = build_method("positivecoop", backbone, CLASSES, mean_token=False).eval()
    features = backbone.encode_image(torch.randn(2, 3, backbone.image_size, backbone.image_size))
    with torch.no_grad():
        positive = F.normalize(method.positive._encode() + method.positive.text_offset, dim=-1)
        negative = F.normalize(method.negative.embedding, dim=-1)
        dense = F.normalize(features.dense_features, dim=-1)
        positive_map = 20 * torch.einsum("bld,cd->bcl", dense, positive)
        negative_map = 20 * torch.einsum("bld,cd->bcl", dense, negative)
        weights = positive_map.softmax(dim=-1)
        expected = 5 * ((weights * positive_map).sum(-1) - (weights * negative_map).sum(-1))
        torch.testing.assert_close(method(features).logits, expected, rtol=1e-5, atol=1e-5)


def test_positivecoop_draws_its_vectors_at_one_and_trains_its_contexts_slower(backbone):
    torch.manual_seed(0)
    method = build_method("positivecoop", backbone, CLASSES)
    for vectors in (method.positive.text_offset, method.negative.embedding):  # torch.randn, as the authors'
        assert vectors.shape == (len(CLASSES), backbone.embed_dim) and 0.7 < float(vectors.std()) < 1.3
    contexts, others = method.parameter_groups()
    assert contexts == {"params": [method.positive.context], "lr_scale": 0.01}
    assert {id(p) for p in others["params"]} == {id(method.positive.text_offset), id(method.negative.embedding)}
    assert others["lr_scale"] == 1.0
    plain = build_method("positivecoop", backbone, CLASSES, positive_offset=False, context_lr_scale=1.0)
    assert plain.positive.text_offset is None and "positive.text_offset" not in plain.state_dict()
    # at a scale of 1 the one group of before: an optimiser state from then loads
    (group,) = plain.parameter_groups()
    assert group["lr_scale"] == 1.0 and group["params"] == [p for p in plain.parameters() if p.requires_grad]


def _their_asl(scores: torch.Tensor, labels: torch.Tensor, gamma_neg: float = 2, gamma_pos: float = 1,
               clip: float = 0.05, eps: float = 1e-6) -> torch.Tensor:
    """The ASL of DualCoOp's and PositiveCoOp's ``utils/asymmetric_loss.py``, written out: a softmax over
    ``scores [B, 2, C]`` (negative, positive), labels 1 / 0 / -1 (unknown, left out), the negatives'
    probability shifted by ``clip``, focusing weights computed without gradient, summed."""
    probabilities = scores.softmax(dim=1)
    known = labels != -1
    positive, negative, y = probabilities[:, 1][known], probabilities[:, 0][known], labels[known]
    negative = (negative + clip).clamp(max=1)
    loss = y * positive.clamp(min=eps).log() + (1 - y) * negative.clamp(min=eps).log()
    with torch.no_grad():
        truth = positive * y + negative * (1 - y)
        focus = (1 - truth) ** (gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * focus).sum()


def test_asl_summed_with_detached_focusing_is_the_anchors_loss_and_gradient():
    scores = torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.randint(-1, 2, (6, 5), generator=torch.Generator().manual_seed(1)).float()
    targets = torch.where(labels == 1, 1.0, torch.where(labels == 0, -1.0, 0.0))  # ours: 1 / -1 / 0 unknown
    theirs = _their_asl(scores, labels)
    ours = asymmetric_loss(scores[:, 1] - scores[:, 0], targets, reduction="sum", detach_focusing=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (their_gradient,) = torch.autograd.grad(theirs, scores)
    (our_gradient,) = torch.autograd.grad(ours, scores)
    torch.testing.assert_close(our_gradient, their_gradient, rtol=1e-5, atol=1e-6)
