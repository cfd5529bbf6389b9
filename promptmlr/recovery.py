"""Label recovery: turn confident predictions on unknown entries into weighted pseudo-labels.

After ``known_only_epochs`` epochs on known labels only, each epoch re-scores the training images
and, for every *unknown* entry, decides positive, negative or still unknown (CLSL, Xing et al. 2024,
and SST's pseudo-labels, Chen et al. AAAI 2022). The score used may be refined by two pieces of evidence from SST:

* cross-image transfer: the similarity of the image's category-specific feature to the class
  prototype (mean feature of known positives), mapped to [0, 1] per class by a logistic curve
  centred between the mean similarity of known positives and of known negatives;
* intra-image transfer: label co-occurrence estimated from known labels only,
  ``P(c | k) = #(k and c positive) / #(k positive, c known)``; an unknown (i, c) takes the largest
  ``P(c | k)`` over the image's known positives k.

Refined score = (1 - w_p - w_c) * probability + w_p * prototype + w_c * co-occurrence.
Thresholds are fixed, or per class from the score distribution (``prior``): of the unknown
entries of class c, the top ``prior_fraction * prior_c * U_c`` become positive and the bottom
``prior_fraction * (1 - prior_c) * U_c`` negative, where prior_c is the class's positive rate among
its known labels, or per class from the validation split (``calibrated``, ours): the lowest
probability above which the validation split's known labels of class c are at least
``target_precision`` positive (and the highest below which they are that negative). The partial
labels are missing at random, so the validation split's precision estimates the recovered labels'
precision; a class whose validation labels cannot reach it recovers nothing.
Re-estimated from scratch every epoch; the loss weighs them below true labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from promptmlr.errors import ConfigError
from promptmlr.metrics import sigmoid
from promptmlr.models.base import MultiLabelMethod
from promptmlr.options import check_fields, option
from promptmlr.scoring import Autocast, FeatureBatch, Gather, collect, method_outputs

THRESHOLD_RULES = ("fixed", "prior", "calibrated")
MIN_CALIBRATION_SUPPORT = 5  # a calibrated threshold must keep at least this many validation labels


@dataclass
class RecoveryConfig:
    """The ``train.recovery`` section: when and how unknown labels are recovered (see above)."""

    enabled: bool = option(False, "recover pseudo-labels for unknown labels from the model's predictions each epoch")
    known_only_epochs: int = option(2, "epochs on known labels only before recovered labels join (0 acts as 1)",
                                    minimum=0)
    thresholds: str = option("fixed", "how scores become labels: fixed thresholds, per class from the label "
                                      "prior, or calibrated on the validation split", choices=THRESHOLD_RULES)
    positive_threshold: float = option(0.9, "with thresholds fixed: score at or above which an unknown label "
                                            "becomes positive", minimum=0, maximum=1)
    negative_threshold: float = option(0.05, "with thresholds fixed: score at or below which an unknown label "
                                             "becomes negative", minimum=0, maximum=1)
    prior_fraction: float = option(0.5, "with thresholds prior: share of the expected positives (and negatives) "
                                        "recovered", minimum=0, maximum=1)
    target_precision: float = option(0.95, "with thresholds calibrated: validation precision each threshold keeps",
                                     minimum=0, maximum=1)
    prototype_weight: float = option(0.0, "weight of SST's cross-image evidence (similarity to the class "
                                          "prototype) in the score; 0: off", minimum=0, maximum=1)
    cooccurrence_weight: float = option(0.0, "weight of SST's intra-image evidence (label co-occurrence) in "
                                             "the score; 0: off", minimum=0, maximum=1)
    pseudo_weight: float = option(0.5, "loss weight of a recovered label (true labels weigh 1)", minimum=0)

    def __post_init__(self) -> None:
        check_fields(self, "recovery.")


def check_recovery_weights(config: RecoveryConfig) -> None:
    """The evidence weights share one budget (see :func:`refine_scores`). A cross-field rule, so it
    is checked on the final config, not on each layer that sets one of them."""
    if config.prototype_weight + config.cooccurrence_weight > 1:
        raise ConfigError("recovery.prototype_weight + recovery.cooccurrence_weight must not exceed 1")


@dataclass
class RecoveryStats:
    unknown: int
    recovered_positive: int
    recovered_negative: int
    precision_positive: float | None = None  # against the full labels, when they are held
    precision_negative: float | None = None
    recall_positive: float | None = None  # share of the unknown true positives recovered as positive

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def prototype_similarity(method: MultiLabelMethod, batches: Callable[[], Iterable[FeatureBatch]],
                         labels: torch.Tensor, autocast: Autocast, reduce: Callable[[torch.Tensor], torch.Tensor],
                         gather: Gather | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training-set probabilities and each entry's cosine similarity to its class prototype (SST's
    cross-image transfer), in two passes over ``batches()``: the prototypes first (the mean unit
    category feature of each class's known positives, summed over every process by ``reduce``),
    then every image's similarity to them. ``labels [N, C]`` are the known labels, on the device."""
    sums, counts = None, None
    for output, rows in method_outputs(method, batches(), autocast):
        category = _category_features(method, output.category_features)
        positive = (labels[rows.to(labels.device)] == 1).float()
        batch_sums = torch.einsum("bc,bcd->cd", positive, category.float())
        sums = batch_sums if sums is None else sums + batch_sums
        counts = positive.sum(0) if counts is None else counts + positive.sum(0)
    sums, counts = reduce(sums), reduce(counts)
    prototypes = torch.nn.functional.normalize(sums / counts.clamp_min(1)[:, None], dim=-1)

    def logit_and_similarity(output) -> torch.Tensor:
        similarity = (output.category_features.float() * prototypes).sum(-1)
        return torch.stack([output.logits.float(), similarity], dim=1)

    values, _ = collect(method_outputs(method, batches(), autocast), logit_and_similarity, gather, len(labels))
    return sigmoid(values[:, 0]), values[:, 1]


def _category_features(method: MultiLabelMethod, features: torch.Tensor | None) -> torch.Tensor:
    if features is None:
        raise ConfigError(f"recovery.prototype_weight needs category-specific features, which method "
                          f"{method.name} does not have; set it to 0")
    return features


def cooccurrence_evidence(labels: np.ndarray) -> np.ndarray:
    """``[N, C]``: for each entry, max over the image's known positives k of P(c | k) (0 if none)."""
    positive = (labels == 1).astype(np.float64)
    known = (labels != 0).astype(np.float64)
    both_positive = positive.T @ positive  # [k, c]
    k_positive_c_known = positive.T @ known
    conditional = np.divide(both_positive, k_positive_c_known, out=np.zeros_like(both_positive),
                            where=k_positive_c_known > 0)
    np.fill_diagonal(conditional, 0.0)
    evidence = np.zeros(labels.shape)
    for row in np.flatnonzero(positive.any(axis=1)):
        evidence[row] = conditional[positive[row] > 0].max(axis=0)
    return evidence


def prototype_evidence(similarity: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Map prototype cosine similarities ``[N, C]`` to [0, 1] per class (see module docstring)."""
    evidence = np.full(similarity.shape, 0.5)
    for column in range(labels.shape[1]):
        positive = similarity[labels[:, column] == 1, column]
        negative = similarity[labels[:, column] == -1, column]
        if positive.size and negative.size and positive.mean() > negative.mean():
            centre = (positive.mean() + negative.mean()) / 2
            steepness = 4.0 / (positive.mean() - negative.mean())  # sigmoid(2) ~ 0.88 at the positive mean
            evidence[:, column] = sigmoid(steepness * (similarity[:, column] - centre))
    return evidence


def refine_scores(probabilities: np.ndarray, labels: np.ndarray, config: RecoveryConfig,
                  prototype_similarity: np.ndarray | None = None) -> np.ndarray:
    weight_probability = 1.0 - config.prototype_weight - config.cooccurrence_weight  # >= 0: check_recovery_weights
    refined = weight_probability * probabilities
    if config.prototype_weight > 0:
        if prototype_similarity is None:
            raise ConfigError("recovery.prototype_weight > 0 needs a method with category-specific features "
                             "(promptmlr); set it to 0 for this method")
        refined = refined + config.prototype_weight * prototype_evidence(prototype_similarity, labels)
    if config.cooccurrence_weight > 0:
        refined = refined + config.cooccurrence_weight * cooccurrence_evidence(labels)
    return refined


def recover_labels(probabilities: np.ndarray, labels: np.ndarray, config: RecoveryConfig,
                   prototype_similarity: np.ndarray | None = None, full_labels: np.ndarray | None = None,
                   validation: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, RecoveryStats]:
    """Pseudo-labels ``[N, C]`` in {1, -1, 0} for the unknown entries of ``labels`` (known entries 0).

    ``validation`` (probabilities, labels) of the validation split is needed by ``calibrated``."""
    scores = refine_scores(probabilities, labels, config, prototype_similarity)
    unknown = labels == 0
    if config.thresholds == "fixed":
        positive = unknown & (scores >= config.positive_threshold)
        negative = unknown & (scores <= config.negative_threshold)
    elif config.thresholds == "calibrated":
        if validation is None:
            raise ConfigError("recovery.thresholds calibrated needs a validation split (data.val_fraction > 0)")
        upper, lower = calibrated_thresholds(*validation, config.target_precision)
        positive = unknown & (scores >= upper)
        negative = unknown & (scores <= lower)
    else:  # prior (RecoveryConfig admits no other rule)
        positive, negative = _prior_thresholds(scores, labels, config.prior_fraction)
    pseudo = np.zeros_like(labels)
    pseudo[positive] = 1
    pseudo[negative] = -1
    return pseudo, _stats(pseudo, unknown, full_labels)


def calibrated_thresholds(probabilities: np.ndarray, labels: np.ndarray, target_precision: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``[C]``: the lowest score at or above which the known ``labels`` (1/-1/0) are at
    least ``target_precision`` positive, and the highest at or below which they are that negative,
    each over at least :data:`MIN_CALIBRATION_SUPPORT` labels; +inf / -inf where none is."""
    classes = labels.shape[1]
    upper, lower = np.full(classes, np.inf), np.full(classes, -np.inf)
    for column in range(classes):
        known = labels[:, column] != 0
        score, positive = probabilities[known, column], labels[known, column] == 1
        order = np.argsort(-score, kind="stable")
        upper[column] = _first_reaching(score[order], positive[order], target_precision)
        lower[column] = -_first_reaching(-score[order[::-1]], ~positive[order[::-1]], target_precision)
    return upper, lower


def _first_reaching(sorted_scores: np.ndarray, hits: np.ndarray, target: float) -> float:
    """Walking down ``sorted_scores`` (descending), the lowest score whose prefix precision of
    ``hits`` is still >= ``target`` with at least MIN_CALIBRATION_SUPPORT entries; +inf if none."""
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    good = np.flatnonzero((precision >= target) & (np.arange(1, len(hits) + 1) >= MIN_CALIBRATION_SUPPORT))
    return float(sorted_scores[good[-1]]) if good.size else np.inf


def _prior_thresholds(scores: np.ndarray, labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    positive = np.zeros(labels.shape, dtype=bool)
    negative = np.zeros(labels.shape, dtype=bool)
    for column in range(labels.shape[1]):
        known = labels[:, column] != 0
        rows = np.flatnonzero(~known)
        if not known.any() or rows.size == 0:
            continue
        prior = (labels[known, column] == 1).mean()
        order = rows[np.argsort(-scores[rows, column], kind="stable")]
        top = int(fraction * prior * rows.size)
        bottom = int(fraction * (1 - prior) * rows.size)
        positive[order[:top], column] = True
        negative[order[rows.size - bottom:], column] = True
    return positive, negative


def _stats(pseudo: np.ndarray, unknown: np.ndarray, full_labels: np.ndarray | None) -> RecoveryStats:
    stats = RecoveryStats(int(unknown.sum()), int((pseudo == 1).sum()), int((pseudo == -1).sum()))
    if full_labels is not None:
        for value, field in ((1, "precision_positive"), (-1, "precision_negative")):
            chosen = pseudo == value
            if chosen.any():
                setattr(stats, field, float((full_labels[chosen] == value).mean()))
        hidden_positive = unknown & (full_labels == 1)
        if hidden_positive.any():
            stats.recall_positive = float((pseudo[hidden_positive] == 1).mean())
    return stats
