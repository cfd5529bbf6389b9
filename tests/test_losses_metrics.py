"""Partial-label losses against hand-computed values; metrics against scikit-learn; label recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as sklearn_precision_recall_curve

from promptmlr.errors import ConfigError
from promptmlr.losses import LossConfig, asymmetric_loss, build_loss, naive_bce, partial_bce
from promptmlr.metrics import (
    average_precision,
    evaluate,
    mean_average_precision,
    per_class_average_precision,
    precision_recall_curve,
    threshold_metrics,
)
from promptmlr.recovery import RecoveryConfig, calibrated_thresholds, cooccurrence_evidence, recover_labels


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------- losses
def test_asl_matches_a_hand_computed_case():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, -1.0, 0.0]])
    p_pos, p_neg = _sigmoid(2.0), _sigmoid(-1.0)
    positive = -((1 - p_pos) ** 1) * math.log(p_pos)
    shifted = p_neg - 0.05
    negative = -(shifted ** 2) * math.log(1 - shifted)
    expected = (positive + negative) / 2  # two known entries; the unknown one adds nothing
    loss = asymmetric_loss(logits, targets, gamma_neg=2, gamma_pos=1, clip=0.05)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_asl_clip_zeroes_easy_negatives():
    loss = asymmetric_loss(torch.tensor([[-6.0]]), torch.tensor([[-1.0]]), clip=0.05)
    assert loss.item() == 0.0


def test_asl_summed_is_the_mean_times_the_known_entries_and_detaching_changes_only_the_gradient():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.5, -2.0]], requires_grad=True)
    targets = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0]])
    mean = asymmetric_loss(logits, targets)
    summed = asymmetric_loss(logits, targets, reduction="sum")
    torch.testing.assert_close(summed, mean * 5)  # five known entries
    detached = asymmetric_loss(logits, targets, reduction="sum", detach_focusing=True)
    torch.testing.assert_close(detached, summed)
    (full,) = torch.autograd.grad(summed, logits)
    (partial,) = torch.autograd.grad(detached, logits)
    # a positive's gradient without its factor's: -(1 - p) * (1 - p) instead of d/dx[-(1-p) log p]
    p = torch.sigmoid(logits.detach())
    torch.testing.assert_close(partial[0, 0], -(1 - p[0, 0]) ** 2)
    assert not torch.allclose(full, partial) and full[0, 2] == partial[0, 2] == 0  # the unknown entry: none


def test_sum_and_detached_focusing_are_asl_options_and_the_weight_scales_any_loss():
    logits, targets = torch.tensor([[0.2, -0.4]]), torch.tensor([[1.0, -1.0]])
    assert build_loss(LossConfig(reduction="sum"))(logits, targets) > 0
    for name in ("asl", "partial-bce", "bce"):
        plain = build_loss(LossConfig(name=name))(logits, targets)
        torch.testing.assert_close(build_loss(LossConfig(name=name, weight=0.03))(logits, targets), 0.03 * plain)
    with pytest.raises(ConfigError, match="weight"):
        LossConfig(weight=0)
    with pytest.raises(ConfigError, match="loss.reduction and loss.detach_focusing apply to loss.name asl"):
        LossConfig(name="bce", reduction="sum")
    with pytest.raises(ConfigError, match="reduction"):
        LossConfig(reduction="max")


def test_dualcoop_softmax_form_equals_the_margin_sigmoid_form():
    """DualCoOp's ASL on softmax([s-, s+]) is the sigmoid form on s+ - s-."""
    scores = torch.randn(4, 2, 5)  # (negative, positive) scores
    margin = scores[:, 1] - scores[:, 0]
    targets = torch.randint(-1, 2, (4, 5)).float()
    probabilities = torch.softmax(scores, dim=1)[:, 1]
    torch.testing.assert_close(torch.sigmoid(margin), probabilities)
    # gamma 0, clip 0 ASL is BCE over known entries: compare with the softmax probabilities directly
    known = targets != 0
    bce = -torch.where(targets > 0, probabilities.log(), (1 - probabilities).log())[known].mean()
    margin_loss = asymmetric_loss(margin, targets, gamma_neg=0, gamma_pos=0, clip=0)
    torch.testing.assert_close(margin_loss, bce)


def test_partial_bce_normalises_per_image_by_known_labels():
    logits = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 0.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    image_one = (-math.log(_sigmoid(1.0)) - math.log(1 - _sigmoid(-2.0))) / 2
    image_two = -math.log(1 - _sigmoid(0.0))
    assert partial_bce(logits, targets).item() == pytest.approx((image_one + image_two) / 2, rel=1e-6)


def test_naive_bce_treats_unknown_as_negative():
    logits = torch.tensor([[1.0, 2.0]])
    expected = (-math.log(_sigmoid(1.0)) - math.log(1 - _sigmoid(2.0))) / 2
    assert naive_bce(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["asl", "partial-bce"])
def test_unknown_entries_get_zero_gradient_and_scale_ignores_known_proportion(name):
    loss_fn = build_loss(LossConfig(name=name))
    logits = torch.randn(8, 6, requires_grad=True)
    targets = torch.randint(0, 2, (8, 6)).float() * 2 - 1
    full = loss_fn(logits, targets)
    partial_targets = targets.clone()
    partial_targets[:, 3:] = 0
    loss_fn(logits, partial_targets).backward()
    assert torch.all(logits.grad[:, 3:] == 0) and torch.all(logits.grad[:, :3] != 0)
    same_entries_twice = loss_fn(torch.cat([logits, logits]), torch.cat([targets, targets]))
    assert same_entries_twice.item() == pytest.approx(full.item(), rel=1e-6)  # a mean, not a sum


def test_pseudo_label_weights_lower_their_share():
    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[1.0, 1.0]])
    weights = torch.tensor([[1.0, 0.0]])
    loss = asymmetric_loss(logits, targets, weights, gamma_pos=0)
    assert loss.item() == pytest.approx(-math.log(0.5), rel=1e-6)


# ------------------------------------------------------------------------------------------ metrics
def test_average_precision_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.random(50)
        positives = rng.random(50) < 0.3
        positives[0] = True
        assert average_precision(scores, positives) == pytest.approx(average_precision_score(positives, scores))


def test_mean_average_precision_skips_unknowns_and_classes_without_positives():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 4))
    targets = np.where(rng.random((40, 4)) < 0.3, 1, -1)
    targets[:, 3] = -1  # no positive: left out of the mean
    targets[:5, 0] = 0  # unknown: left out of class 0's ranking
    expected = np.mean([average_precision_score(targets[5:, 0] == 1, scores[5:, 0]),
                        average_precision_score(targets[:, 1] == 1, scores[:, 1]),
                        average_precision_score(targets[:, 2] == 1, scores[:, 2])])
    assert mean_average_precision(scores, targets) == pytest.approx(100 * expected)
    assert np.isnan(per_class_average_precision(scores, targets)[3])


def test_voc2012_ap_is_the_area_under_the_precision_envelope():
    # ranking: P N P -> precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1; envelope 1 then 2/3
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), kind="voc2012")
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True])) == pytest.approx((1 + 2 / 3) / 2)


def test_precision_recall_curve_integrates_to_ap_and_skips_unknown_labels():
    rng = np.random.default_rng(3)
    scores = rng.random(40)
    targets = rng.choice([1, -1, 0], size=40)
    recall, precision = precision_recall_curve(scores, targets)
    known = targets != 0
    expected = average_precision(scores[known], targets[known] == 1)
    assert np.sum(np.diff(np.r_[0.0, recall]) * precision) == pytest.approx(expected)
    assert recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)
    moved = scores.copy()
    moved[~known] = rng.random((~known).sum())  # scores of unknown entries do not matter
    np.testing.assert_array_equal(precision_recall_curve(moved, targets)[1], precision)
    assert precision_recall_curve(scores, np.where(targets == 1, 0, targets))[0].size == 0  # no positive


def test_precision_recall_curve_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(4)
    for _ in range(20):
        scores = np.round(rng.random(60), 1)  # ten distinct values: many ties
        targets = rng.choice([1, -1], size=60)
        targets[0] = 1
        recall, precision = precision_recall_curve(scores, targets)
        expected_precision, expected_recall, _ = sklearn_precision_recall_curve(targets == 1, scores)
        # scikit-learn lists the lowest threshold first and closes with a (recall 0, precision 1) point;
        # ours ends at the first threshold that reaches full recall
        expected_recall, expected_precision = expected_recall[:-1][::-1], expected_precision[:-1][::-1]
        stop = int(np.argmax(expected_recall >= 1.0)) + 1
        np.testing.assert_allclose(recall, expected_recall[:stop])
        np.testing.assert_allclose(precision, expected_precision[:stop])


def test_threshold_and_top_k_metrics_against_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(2)
    scores = rng.random((30, 5))
    targets = np.where(rng.random((30, 5)) < 0.4, 1, -1)
    targets[0] = 1
    predicted = scores >= 0.5
    truth = targets == 1
    metrics = threshold_metrics(scores, targets, threshold=0.5)
    assert metrics["OP"] == pytest.approx(100 * precision_score(truth, predicted, average="micro"))
    assert metrics["OR"] == pytest.approx(100 * recall_score(truth, predicted, average="micro"))
    assert metrics["OF1"] == pytest.approx(100 * f1_score(truth, predicted, average="micro"))
    assert metrics["CP"] == pytest.approx(100 * precision_score(truth, predicted, average="macro", zero_division=0))
    cp, cr = metrics["CP"], metrics["CR"]
    assert metrics["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))  # F1 of the averages, as ASL/DualCoOp report
    top = threshold_metrics(scores, targets, threshold=None, top_k=3)
    assert top["OP"] == pytest.approx(100 * truth[np.arange(30)[:, None], np.argsort(-scores, 1)[:, :3]].mean())


def test_evaluate_reports_every_metric():
    rng = np.random.default_rng(3)
    results = evaluate(rng.random((10, 3)), np.where(rng.random((10, 3)) < 0.5, 1, -1))
    assert {"mAP", "mAP_voc2012", "CF1", "OF1", "CF1_top3", "OF1_top3"} <= set(results)


# ----------------------------------------------------------------------------------------- recovery
def test_fixed_threshold_recovery_and_its_precision():
    labels = np.array([[1, 0, -1], [0, 0, 1], [-1, 0, 0]], dtype=np.int8)
    probabilities = np.array([[0.99, 0.97, 0.5], [0.02, 0.5, 0.9], [0.1, 0.01, 0.6]])
    full = np.array([[1, 1, -1], [-1, 1, 1], [-1, 1, -1]], dtype=np.int8)
    pseudo, stats = recover_labels(probabilities, labels, RecoveryConfig(positive_threshold=0.95,
                                                                         negative_threshold=0.05), full_labels=full)
    expected = np.array([[0, 1, 0], [-1, 0, 0], [0, -1, 0]], dtype=np.int8)
    np.testing.assert_array_equal(pseudo, expected)
    assert (stats.recovered_positive, stats.recovered_negative, stats.unknown) == (1, 2, 5)
    assert stats.precision_positive == 1.0 and stats.precision_negative == 0.5


def test_prior_thresholds_recover_the_expected_share():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((200, 2)) < 0.25, 1, -1).astype(np.int8)
    labels[100:] = 0
    config = RecoveryConfig(thresholds="prior", prior_fraction=0.5)
    pseudo, stats = recover_labels(rng.random((200, 2)), labels, config)
    prior = (labels[:100] == 1).mean(axis=0)
    assert np.all(pseudo[:100] == 0)
    np.testing.assert_array_equal((pseudo == 1).sum(0), (0.5 * prior * 100).astype(int))


def test_calibrated_thresholds_keep_the_validation_precision_and_never_touch_known_labels():
    # validation, one class: scores 0.9 ... 0.1 with labels + + + + + - + - - -
    val_scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.45], [0.4], [0.3], [0.2], [0.1]])
    val_labels = np.array([[1], [1], [1], [1], [1], [-1], [1], [-1], [-1], [-1]], dtype=np.int8)
    upper, lower = calibrated_thresholds(val_scores, val_labels, 0.95)
    assert upper[0] == 0.5 and lower[0] == -np.inf  # 5/5 positive from 0.5 up; no 5 lowest are 95 % negative
    upper, lower = calibrated_thresholds(val_scores, val_labels, 0.8)
    assert upper[0] == 0.4 and lower[0] == 0.45  # 6/7 positive at or above 0.4; 4/5 negative at or below 0.45
    labels = np.array([[1], [0], [0], [-1]], dtype=np.int8)
    full = np.array([[1], [1], [1], [-1]], dtype=np.int8)
    config = RecoveryConfig(thresholds="calibrated", target_precision=0.95)
    pseudo, stats = recover_labels(np.array([[0.1], [0.6], [0.3], [0.99]]), labels, config, full_labels=full,
                                   validation=(val_scores, val_labels))
    assert pseudo[:, 0].tolist() == [0, 1, 0, 0]
    assert stats.precision_positive == 1.0 and stats.recall_positive == 0.5
    with pytest.raises(ConfigError, match="needs a validation split"):
        recover_labels(np.zeros((4, 1)), labels, config)


def test_cooccurrence_uses_known_labels_only():
    labels = np.array([[1, 1, 0], [1, 1, -1], [1, -1, 0], [1, 0, 0]], dtype=np.int8)
    evidence = cooccurrence_evidence(labels)
    # P(class1 | class0) = 2 positives out of 3 images where class 1 is known
    assert evidence[3, 1] == pytest.approx(2 / 3)
    assert evidence[3, 0] == 0.0  # no known positive other than class 0 itself to borrow from


def test_metrics_rank_logits_that_a_float32_sigmoid_would_tie():
    """CLIP-sized logits (20-35) are all exactly 1.0 as float32 probabilities; ranked as logits
    they keep their order, and the threshold moves to logit space with the same decisions."""
    rng = np.random.default_rng(0)
    targets = np.where(rng.random((64, 5)) < 0.3, 1, -1)
    logits = (25 + 5 * targets + rng.normal(0, 3, targets.shape)).astype(np.float32)
    float32_probabilities = torch.sigmoid(torch.from_numpy(logits)).numpy()
    assert (float32_probabilities == 1.0).mean() >= 0.85
    from_logits = evaluate(logits, targets, threshold=0.5, from_logits=True)
    assert from_logits["mAP"] > evaluate(float32_probabilities, targets)["mAP"] + 20
    assert from_logits["mAP"] == pytest.approx(mean_average_precision(logits.astype(np.float64), targets))
    exact = 1 / (1 + np.exp(-(logits.astype(np.float64) - 27)))
    shifted = evaluate(logits - 27, targets, threshold=0.7, from_logits=True)
    assert {key: shifted[key] for key in ("CF1", "OF1")} == pytest.approx(
        {key: evaluate(exact, targets, threshold=0.7)[key] for key in ("CF1", "OF1")})


def test_logit_thresholds_at_the_edges_and_per_class():
    from promptmlr.inference import choose_labels
    from promptmlr.metrics import logit

    assert np.isfinite([logit(0.0), logit(1.0)]).all() and logit(0.5) == 0.0
    np.testing.assert_allclose(logit(np.array([0.25, 0.75])), [-math.log(3), math.log(3)])
    logits = np.array([30.0, 35.0, 20.0, -3.0])  # float32 probabilities: 1.0, 1.0, 1.0, 0.047
    assert [name for name, _ in choose_labels(logits, list("abcd"), None, top_k=2)] == ["b", "a"]
    chosen = choose_labels(logits, list("abcd"), [0.5, 0.5, 0.5, 0.01], top_k=None)
    assert [name for name, _ in chosen] == ["b", "a", "c", "d"] and chosen[0][1] < 1.0
