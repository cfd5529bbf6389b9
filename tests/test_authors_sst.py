"""SST's mechanisms against the formulas of its authors' code (HCP-MLR-PL, commit d9fd300: SST.py,
model/SST.py, model/SemanticDecoupling.py, model/Element_Wise_Layer.py, loss/SST.py), written out here
on small tensors, since that code cannot run in CI (``tools/bench/parity_sst.py`` runs it)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from promptmlr.losses import asymmetric_loss
from promptmlr.models import build_method
from promptmlr.models.category import HCPClassifier, HCPDecouplingHead, hcp_contrastive_loss
from promptmlr.models.transfer import (
    PairClassifierHead,
    PositiveMemory,
    authors_cooccurrence_loss,
    intra_image_pseudo_labels,
    transfer_threshold,
)
from tests.conftest import seeded

CLASSES = ["cat", "dog", "sofa", "car"]


# ------------------------------------------------------------------------------------ the head
def test_decoupling_is_their_gated_attention_over_locations():
    """SemanticDecoupling.forward: a = fc4(fc3(tanh(fc1(x_l) * fc2(t_c)))), softmax over l, sum_l a x_l."""
    torch.manual_seed(0)
    head = HCPDecouplingHead(embed_dim=5, class_vectors=seeded(3, 4), hidden=6)
    dense = seeded(2, 7, 5, seed=1)  # 2 images, 7 locations
    category, attention = head(dense)
    for b, c in itertools.product(range(2), range(3)):
        word = head.text(head.class_vectors[c])
        scores = torch.stack([head.score(head.hidden(torch.tanh(head.image(location) * word)))[0]
                              for location in dense[b]])
        weights = torch.softmax(scores, dim=0)
        torch.testing.assert_close(attention[b, c], weights)
        torch.testing.assert_close(category[b, c], (weights[:, None] * dense[b]).sum(0))


def test_classifier_is_their_element_wise_layer_on_tanh_of_fc_of_the_feature_twice():
    """model/SST.py without the GGNN: Element_Wise_Layer(tanh(fc([f; f]))), drawn within 1/sqrt(width)."""
    torch.manual_seed(0)
    classifier = HCPClassifier(num_classes=3, embed_dim=4, hidden=9)
    assert classifier.project.in_features == 8
    assert classifier.weight.abs().max() <= 1 / 3 and classifier.bias.abs().max() <= 1 / 3
    category = seeded(2, 3, 4)
    logits = classifier(category)
    for b, c in itertools.product(range(2), range(3)):
        twice = torch.cat((category[b, c], category[b, c]))
        hidden = torch.tanh(classifier.project.weight @ twice + classifier.project.bias)
        expected = classifier.weight[c] @ hidden + classifier.bias[c]
        assert logits[b, c].item() == pytest.approx(expected.item(), abs=1e-5)


def test_pair_head_scores_each_unordered_pair_with_its_own_weights_in_their_order():
    """model/SST.py: intra_fc_1, the pairs i < j row by row (getConcatIndex), [g_i; g_j] -> relu(intra_fc_2)
    -> intra_fc_3 -> intra_classifiers, one weight vector per pair."""
    torch.manual_seed(0)
    head = PairClassifierHead(num_classes=4, embed_dim=5, reduced=3, hidden=6)
    category = seeded(2, 4, 5)
    logits = head(category)
    for b in range(2):
        for k, (i, j) in enumerate(itertools.combinations(range(4), 2)):
            reduced = head.reduce(category[b])
            hidden = head.hidden(F.relu(head.pair(torch.cat((reduced[i], reduced[j])))))
            expected = head.weight[k] @ hidden + head.bias[k]
            assert logits[b, i, j].item() == pytest.approx(expected.item(), abs=1e-5)
            assert logits[b, j, i] == logits[b, i, j]
    assert torch.all(logits.diagonal(dim1=1, dim2=2) == 0)


# ---------------------------------------------------------------------------------- the losses
def test_cooccurrence_loss_is_their_asymmetric_loss_on_every_pair():
    """intraAsymmetricLoss(gamma_neg=2, gamma_pos=1, clip=0.05): target 1 where both labels are known
    positives, else 0, unknown included; the mean over images and pairs i < j."""
    targets = torch.tensor([[1.0, 1.0, 0.0, -1.0], [0.0, 1.0, 1.0, 1.0]])
    logits = seeded(2, 4, 4)
    logits = (logits + logits.transpose(1, 2)) / 2  # a pair head's map is symmetric
    terms = []
    for b in range(2):
        for i, j in itertools.combinations(range(4), 2):
            p = torch.sigmoid(logits[b, i, j])
            if targets[b, i] == 1 and targets[b, j] == 1:
                terms.append(-(1 - p) * torch.log(p))
            else:
                shifted = (p - 0.05).clamp(min=0)
                terms.append(-shifted ** 2 * torch.log(1 - shifted))
    expected = torch.stack(terms).mean()
    assert authors_cooccurrence_loss(logits, targets).item() == pytest.approx(expected.item(), abs=1e-6)


def test_their_bce_is_asl_without_focusing_or_clip():
    """loss/SST.py BCELoss: BCE averaged over the batch's known entries (the recipes' train.loss)."""
    targets = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
    logits = seeded(2, 3)
    known = targets != 0
    expected = F.binary_cross_entropy_with_logits(logits[known], (targets[known] > 0).float())
    got = asymmetric_loss(logits, targets, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def _their_contrastive_terms(category: torch.Tensor, targets: torch.Tensor, seed: int) -> torch.Tensor:
    """loss/SST.py ContrastiveLoss, spelled out: pairs i < j, then classes; 1 - cos for two positives, 1 + cos
    for a positive and a negative and for two negatives; with P positive pairs, each negative kind cut to
    2P drawn (negative-negative first) plus its P largest."""
    pull, mixed, negative = [], [], []
    for i, j in itertools.combinations(range(category.shape[0]), 2):
        for c in range(category.shape[1]):
            cos = F.cosine_similarity(category[i, c], category[j, c], dim=0)
            pair = {targets[i, c].item(), targets[j, c].item()}
            if pair == {1.0}:
                pull.append(1 - cos)
            elif pair == {1.0, -1.0}:
                mixed.append(1 + cos)
            elif pair == {-1.0}:
                negative.append(1 + cos)
    pull, mixed, negative = (torch.stack(terms) if terms else torch.zeros(0) for terms in (pull, mixed, negative))
    torch.manual_seed(seed)
    if len(pull):
        kept = []
        for terms in (negative, mixed):
            if len(terms):
                drawn = torch.randperm(len(terms))[:2 * len(pull)]
                kept.append(torch.cat((terms[drawn], terms.sort(descending=True).values[:len(pull)])))
            else:
                kept.append(terms)
        negative, mixed = kept
    return torch.cat((pull, mixed, negative))


@pytest.mark.parametrize("targets", [
    [[1.0, -1.0], [1.0, 1.0], [-1.0, 0.0], [-1.0, -1.0], [0.0, -1.0]],  # positive pairs: the negatives are cut
    [[1.0, -1.0], [-1.0, -1.0], [-1.0, 0.0], [-1.0, -1.0], [0.0, -1.0]],  # none: every negative pair counts
], ids=["subsampled", "all"])
def test_contrastive_loss_is_theirs_draw_for_draw(targets):
    targets = torch.tensor(targets)
    category = seeded(5, 2, 3)
    expected = _their_contrastive_terms(category, targets, seed=7).mean()
    torch.manual_seed(7)
    assert hcp_contrastive_loss(category, targets).item() == pytest.approx(expected.item(), abs=1e-6)


def test_contrastive_loss_without_known_pairs_is_zero():
    assert hcp_contrastive_loss(seeded(3, 2, 4), torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]])) == 0


# ----------------------------------------------------------------------------------- the transfer
def test_intra_pseudo_labels_are_their_mean_co_occurrence_with_the_known_positives():
    """getIntraPseudoLabel: P with 1 on its diagonal; for each class, the mean of P[i, j] over the known
    positives i, thresholded at the margin; known labels kept, the pseudo-positives added to them."""
    pairs = torch.sigmoid(seeded(3, 4, 4))
    pairs = (pairs + pairs.transpose(1, 2)) / 2
    targets = torch.tensor([[1.0, 0.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    margin = 0.5
    expected = targets.clone()
    for b in range(3):
        full = pairs[b].clone().fill_diagonal_(1)
        positives = [i for i in range(4) if targets[b, i] == 1]
        for j in range(4):
            evidence = sum(full[i, j] for i in positives) / max(len(positives), 1)
            if targets[b, j] == 0 and evidence >= margin:
                expected[b, j] = 1
    assert (targets + intra_image_pseudo_labels(pairs, targets, margin)).tolist() == expected.tolist()


def test_memory_averages_every_slot_an_empty_one_as_zero():
    """updateFeature and getInterPseudoLabel: posFeature starts as zeros; the mean cosine over all of its
    interExampleNumber slots."""
    memory = PositiveMemory(num_classes=1, size=4, embed_dim=2, rule="authors")
    stored = F.normalize(torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]]), dim=-1)
    memory.push(stored, torch.ones(2, 1))
    query = F.normalize(torch.tensor([[[1.0, 0.0]]]), dim=-1)
    assert memory.mean_similarity(query).item() == pytest.approx((1 + math.sqrt(0.5) + 0 + 0) / 4)


def test_memory_stacks_a_batch_on_top_and_keeps_the_top():
    """updateFeature: cat(the batch's positives in batch order, posFeature)[:interExampleNumber]."""
    memory = PositiveMemory(num_classes=1, size=2, embed_dim=1, rule="authors")
    memory.push(torch.tensor([[[1.0]], [[2.0]], [[3.0]]]), torch.ones(3, 1))
    assert memory.features[0, :, 0].tolist() == [1.0, 2.0]  # more than it holds: the batch's first
    memory.push(torch.tensor([[[4.0]]]), torch.ones(1, 1))
    assert memory.features[0, :, 0].tolist() == [4.0, 1.0]


def test_thresholds_follow_their_margins():
    """SST.py main: both margins 0.95 until generateLabelEpoch ends, then 0.025 lower after each epoch,
    never below 0.75."""
    margins, margin = [], 0.95
    for epoch in range(20):
        margins.append(margin)
        if epoch >= 5:
            margin = max(0.75, margin - 0.025)
    assert [transfer_threshold(epoch, 5, 0.95, 0.025, 0.75) for epoch in range(20)] == pytest.approx(margins)


# ------------------------------------------------------------------------------------- one step
def test_a_step_adds_their_five_terms(vit):
    """SST.py Train: BCE(y) + w_intra BCE(y + y_intra) + r w_cooc L_cooc + w_inter BCE(y + y_inter)
    + r w_dist L_contrastive, r = batchIndex / len(train_loader) in the first epoch; the memory takes the
    batch's positives before the cross-image pseudo-labels are drawn."""
    torch.manual_seed(0)
    method = build_method("sst", vit, CLASSES, decoupling_dim=8, classifier_dim=16, memory_size=3,
                          known_only_epochs=0, threshold_start=0.5, threshold_floor=0.5).train()
    size = vit.image_size
    features = vit.encode_image(seeded(1, 3, size, size) + 0.2 * seeded(4, 3, size, size, seed=1))  # alike
    targets = torch.tensor([[1.0, 0.0, -1.0, 1.0], [0.0, 1.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0]])

    def bce(logits, labels):
        return asymmetric_loss(logits, labels, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)

    method.set_epoch(0)
    method.set_epoch_fraction(0.25)
    output = method(features)
    torch.manual_seed(3)
    losses = method.auxiliary_losses(output, targets, bce)

    unit = output.category_features.detach()
    memory = torch.zeros(4, 3, unit.shape[-1])
    for c in range(4):
        positives = unit[targets[:, c] == 1, c]
        memory[c, :len(positives)] = positives
    similarity = torch.einsum("bcd,cmd->bcm", unit, memory).mean(-1)
    inter = targets + ((similarity >= 0.5) & (targets == 0)).float()
    intra = targets + intra_image_pseudo_labels(torch.sigmoid(output.extras["pair_logits"]), targets, 0.5)
    torch.manual_seed(3)
    expected = {"contrastive": 0.25 * 0.05 * hcp_contrastive_loss(output.category_features, targets),
                "cooccurrence": 0.25 * 10 * authors_cooccurrence_loss(output.extras["pair_logits"], targets),
                "intra": bce(output.logits, intra), "inter": bce(output.logits, inter)}
    for pseudo in (intra, inter):  # some unknown labels become positives, some stay unknown
        assert 0 < ((pseudo == 1) & (targets == 0)).sum() < (targets == 0).sum()
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value.item(), abs=1e-6), name
    method.set_epoch(1)
    assert method.ramp() == 1.0
