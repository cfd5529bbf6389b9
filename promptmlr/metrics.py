"""Multi-label metrics: mean average precision, precision-recall curves and the CP/CR/CF1/OP/OR/OF1
family.

Targets use the label convention of the whole toolkit: 1 positive, -1 negative, 0 unknown. Only 1
counts as positive; 0 entries are skipped (left out of that class's ranking), so metrics can be
computed on partially labelled validation data too. Classes without a positive are left out of
the mean, as ASL, DualCoOp and HCP-MLR-PL do.
"""

from __future__ import annotations

import numpy as np

from promptmlr.errors import check_choice

AP_KINDS = ("non-interpolated", "voc2012")


def average_precision(scores: np.ndarray, positives: np.ndarray, kind: str = "non-interpolated") -> float:
    """AP of one class from its scores and boolean positives (unknown entries already removed).

    ``non-interpolated``: the mean of the precision at each positive's rank (ASL/DualCoOp's
    ``average_precision``, equal to scikit-learn's ``average_precision_score`` without ties).
    ``voc2012``: the area under the precision envelope (precision made monotone, VOC devkit 2010+),
    which HCP-MLR-PL reports as ``voc12_mAP``.
    """
    check_choice("AP kind", kind, AP_KINDS)
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    total = hits.sum()
    if total == 0:
        return float("nan")
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    if kind == "non-interpolated":
        return float((precision * hits).sum() / total)
    recall = true_positives / total
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float((envelope * recall_steps).sum())


def precision_recall_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision of one class at each distinct score threshold, highest score first, up to
    the threshold that reaches full recall (lower thresholds add false positives only); otherwise the
    points of scikit-learn's ``precision_recall_curve``. The area under it, ``sum((r[i] - r[i-1]) * p[i])``,
    is the class's non-interpolated AP (exactly, without tied scores).

    ``targets`` are 1/-1/0 as in :func:`per_class_average_precision`: 0 (unknown) entries are left
    out, only 1 counts as positive. Empty arrays when the class has no positive.
    """
    known = targets != 0
    scores, positives = np.asarray(scores, np.float64)[known], targets[known] == 1
    if not positives.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positives[order].astype(np.float64)
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / hits.sum()
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # one point per threshold
    recall, precision = recall[last_of_tie], precision[last_of_tie]
    stop = int(np.argmax(recall >= 1.0)) + 1
    return recall[:stop], precision[:stop]


def per_class_average_precision(scores: np.ndarray, targets: np.ndarray, kind: str = "non-interpolated") -> np.ndarray:
    """AP per class ``[C]`` (NaN for a class without a known positive)."""
    scores, targets = _check(scores, targets)
    values = []
    for column in range(scores.shape[1]):
        known = targets[:, column] != 0
        values.append(average_precision(scores[known, column], targets[known, column] == 1, kind))
    return np.array(values)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, kind: str = "non-interpolated") -> float:
    """mAP in percent over the classes that have at least one positive.

    ``scores``, ``targets``: arrays ``[N, C]``; targets in {1, 0, -1}, only 1 positive, 0 skipped.
    """
    per_class = per_class_average_precision(scores, targets, kind)
    if np.all(np.isnan(per_class)):
        raise ValueError("no class has a positive example: mAP is undefined")
    return float(100.0 * np.nanmean(per_class))


def threshold_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float | None = 0.5,
                      top_k: int | None = None) -> dict[str, float]:
    """CP, CR, CF1 (per-class averages) and OP, OR, OF1 (overall) in percent.

    Predictions are ``scores >= threshold`` or each image's ``top_k`` classes (the
    common top-3 protocol). Unknown (0) targets are left out of every count.
    """
    scores, targets = _check(scores, targets)
    if (threshold is None) == (top_k is None):
        raise ValueError("give exactly one of threshold and top_k")
    if top_k is not None:
        predicted = np.zeros_like(scores, dtype=bool)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        np.put_along_axis(predicted, top, True, axis=1)
    else:
        predicted = scores >= threshold
    known = targets != 0
    positive = targets == 1
    true_pos = (predicted & positive & known).sum(0).astype(np.float64)
    pred_pos = (predicted & known).sum(0).astype(np.float64)
    real_pos = positive.sum(0).astype(np.float64)
    class_precision = np.divide(true_pos, pred_pos, out=np.zeros_like(true_pos), where=pred_pos > 0)
    class_recall = np.divide(true_pos, real_pos, out=np.zeros_like(true_pos), where=real_pos > 0)
    has_positive = real_pos > 0
    cp, cr = class_precision[has_positive].mean(), class_recall[has_positive].mean()
    op = true_pos.sum() / max(pred_pos.sum(), 1.0)
    overall_recall = true_pos.sum() / max(real_pos.sum(), 1.0)
    return {"CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * _f1(cp, cr),
            "OP": 100 * op, "OR": 100 * overall_recall, "OF1": 100 * _f1(op, overall_recall)}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-logits))`` in float64: probabilities for files and people (ranking and
    thresholds use the logits themselves, see :func:`evaluate`)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def logit(probability: float | np.ndarray) -> float | np.ndarray:
    """The logit at which ``sigmoid`` reaches ``probability`` (per class when an array); 0 and 1 map
    to the most extreme finite logits, so a threshold of 1 still admits the saturated scores it
    admits on probabilities."""
    p = np.clip(np.asarray(probability, dtype=np.float64), np.finfo(np.float64).tiny, np.nextafter(1.0, 0.0))
    value = np.log(p) - np.log1p(-p)
    return float(value) if value.ndim == 0 else value


def evaluate(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5, from_logits: bool = False
             ) -> dict[str, float]:
    """Everything a run reports: both mAPs, and the F1 family at probability ``threshold`` and for top-3.

    With ``from_logits`` the scores are logits and the threshold moves to ``log(t / (1 - t))``. Ranking
    logits rather than probabilities matters: a float32 sigmoid rounds every logit above ~17 to
    exactly 1.0, and CLIP's zero-shot logits (100 x cosine) lie around 20-35, so ranking its
    probabilities ties most entries and lowers AP (on the sandbox, zero-shot test mAP 17.7 from
    logits, 13.8 from float32 probabilities)."""
    if from_logits:
        threshold = logit(threshold)
    results = {"mAP": mean_average_precision(scores, targets),
               "mAP_voc2012": mean_average_precision(scores, targets, kind="voc2012")}
    results.update(threshold_metrics(scores, targets, threshold=threshold))
    results.update({f"{key}_top3": value for key, value in threshold_metrics(scores, targets, threshold=None,
                                                                              top_k=3).items()})
    return results


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be [N, C]")
    if not np.isin(targets, (-1, 0, 1)).all():
        raise ValueError("targets must be 1 (positive), -1 (negative) or 0 (unknown)")
    return scores, targets
