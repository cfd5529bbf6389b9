"""Completion: a partially labelled split given back with its unknown labels filled in where the
model is precise enough, and left unknown elsewhere (``promptmlr complete``).

Every unknown entry (i, c) is scored by a run's selected model. Per class and per sign, a threshold
is chosen on the validation split's known labels, which the model never trained on. The partial
labels are missing at random (the community's protocol, and what cheap annotation approximates), so
what a threshold does to validation labels estimates what it does to the unknown entries. The
positive threshold is the lowest score such that the validation labels at or above it

1. are positive with a precision whose one-sided 95 % Wilson lower bound reaches the target (a
   point estimate would let 5 of 5 correct labels pass a 0.99 target), counting one more label,
   wrong, than were claimed: the finite-sample correction of conformal risk control (Angelopoulos
   et al. 2022), which treats the next entry filled as one more that may miss. Without it, a class
   whose threshold rests on its 31 calibration labels, all right, promised 0.91 and filled 0.84 on
   the sandbox: across 40 classes, one class's lucky draw is the rule, not the exception;
2. include at most ``1 - target`` of the class's validation negatives: precision alone is met by
   the base rate (marking every entry of a class with 3 % positives negative is 97 % precise, and
   loses every positive), so each side may also claim only a small share of the other sign;
3. number at least :data:`MIN_SUPPORT`, and the other sign has at least as many in validation
   (else rule 2 cannot be measured);

and it never splits equal scores. Thresholds are tested in a fixed sequence, strictest first, and
the search stops at the first that fails (Learn then Test, Angelopoulos et al. 2021): picking the
loosest of all thresholds that pass would select the one whose bound passed by luck, and the
realised precision of a class would fall below its bound more often than the 5 % the bound allows.
The sequence starts at the first threshold with enough labels that all of them right could pass, a
point that depends on the label counts only, never on the scores. The negative threshold mirrors
it. A side that no threshold satisfies fills nothing, and the report says why. An entry past both
thresholds (they cross only for a model that separates a class poorly) stays unknown. Known labels
are never changed.

A class with a side that validation cannot calibrate (a rare class at a low known proportion) can
be cross-fitted instead (``--cross-fit K``): K models of the run's configuration, each trained
without one fold of the training images, score the fold they did not see; with the selected
model's scores of the validation images, every known label of the split then has a score from a
model that did not train on its image, and that class's thresholds are chosen on all of them and
its unknown entries filled from the same scores (:func:`with_cross_fitted`).

The training images were seen in training (their known labels, never the unknown ones), so the
selected model scores them more confidently than the validation images its thresholds come from,
and a validation threshold fills training entries less precisely than it promises. Calibrating
every class on the out-of-fold scores (``--calibration cross-fit``) removes that difference: the
scores filled from and the scores calibrated on then come from models that never saw the image.

The review list (``--review N``) is the still-unknown entries an annotator's label would help most:
ranked by ``rarity(c) / (1 + |logit|)``, the entries the model is least sure of (uncertainty
sampling at its decision boundary, Lewis and Gale 1994), rare classes first, where ``rarity(c)`` is
the self-information ``-log p(c)`` of a positive, with ``p(c)`` the class's positive rate among its
known labels (Laplace-smoothed): their thresholds and the model's positives rest on the fewest
labels. Entries near a threshold are nearly filled and mostly of the sign the model expects: on
the sandbox at 50 % known, 22 % of those nearest the middle of the unknown band were positive
against 25 % of random still-unknown entries, and 26 % of those nearest the decision boundary.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy

from promptmlr import migrations
from promptmlr.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from promptmlr.errors import UsageError, check_choice
from promptmlr.files import atomic_write

COMPLETION_FORMATS = ("jsonl", "csv", "same")
CALIBRATIONS = ("validation", "cross-fit")  # what every class's thresholds are chosen on (module docstring)
OWN_FORMATS = ("jsonl", "csv")  # the dataset formats that hold unknown labels (``--format same``)
MIN_SUPPORT = 5  # validation labels a threshold claims, and of the other sign, at the least
WILSON_Z = 1.645  # one-sided 95 %


@dataclass
class ClassCompletion:
    """One class of a completion: its thresholds (probabilities; None where a side fills nothing),
    what they do to the labels they were chosen on, and what they filled."""

    name: str
    evidence: str  # "validation", or "cross-fitted (K folds)": every known label of the split, out of fold
    positive_threshold: float | None
    negative_threshold: float | None
    positive_precision: float | None  # of the calibration labels the side fills: point estimate ...
    positive_lower_bound: float | None  # ... and the bound it promises (:func:`precision_bound`)
    negative_precision: float | None
    negative_lower_bound: float | None
    negatives_claimed: float | None  # share of the calibration negatives past the positive threshold
    positives_claimed: float | None  # share of the calibration positives past the negative threshold
    calibration_positives: int
    calibration_negatives: int
    filled_positive: int
    filled_negative: int
    still_unknown: int
    note: str = ""  # why a side fills nothing

    def as_dict(self) -> dict:
        """The class as the JSON report lists it."""
        return asdict(self)


@dataclass
class Completion:
    """A completed label matrix and what it rests on."""

    labels: np.ndarray  # int8 [N, C]: known labels as they were, filled entries, 0 where still unknown
    filled: np.ndarray  # bool [N, C]: the entries filled in
    scores: np.ndarray  # float64 [N, C]: the probabilities the fills were decided on
    classes: list[ClassCompletion]
    target_precision: float

    @property
    def confidence(self) -> np.ndarray:
        """float32 ``[N, C]``: the model's probability of each filled label's sign (NaN elsewhere).
        A score, not a calibrated precision: the class's estimated precision is in its report."""
        signed = np.where(self.labels == POSITIVE, self.scores, 1.0 - self.scores)
        return np.where(self.filled, signed, np.nan).astype(np.float32)

    def estimated_precision(self) -> float | None:
        """The calibration precision of each side, weighted by how many entries that side filled."""
        weighted = [(side_precision, count) for entry in self.classes
                    for side_precision, count in ((entry.positive_precision, entry.filled_positive),
                                                  (entry.negative_precision, entry.filled_negative))
                    if side_precision is not None and count]
        total = sum(count for _, count in weighted)
        return sum(value * count for value, count in weighted) / total if total else None


def complete_labels(probabilities: np.ndarray, labels: np.ndarray, calibration_probabilities: np.ndarray,
                    calibration_labels: np.ndarray, precision: float, class_names: Sequence[str],
                    evidence: str = "validation") -> Completion:
    """Fill the unknown entries of ``labels`` whose probability passes its class's threshold for
    ``precision``, chosen on ``calibration_labels`` (see the module docstring)."""
    upper, lower = precision_thresholds(calibration_probabilities, calibration_labels, precision)
    unknown = labels == UNKNOWN
    positive = unknown & (probabilities >= upper)
    negative = unknown & (probabilities <= lower)
    both = positive & negative  # crossed thresholds: neither sign is sure
    positive, negative = positive & ~both, negative & ~both
    completed = labels.copy()
    completed[positive], completed[negative] = POSITIVE, NEGATIVE
    classes = [_class_completion(name, column, upper[column], lower[column], calibration_probabilities,
                                 calibration_labels, positive, negative, completed, evidence)
               for column, name in enumerate(class_names)]
    return Completion(completed, positive | negative, probabilities, classes, precision)


def precision_thresholds(probabilities: np.ndarray, labels: np.ndarray, target: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``[C]``: the positive and the negative threshold of the module docstring's rules,
    chosen on the known ``labels`` (1/-1/0); +inf / -inf where a side has none."""
    classes = labels.shape[1]
    upper, lower = np.full(classes, np.inf), np.full(classes, -np.inf)
    for column in range(classes):
        known = labels[:, column] != UNKNOWN
        score, positive = probabilities[known, column], labels[known, column] == POSITIVE
        upper[column] = _loosest_threshold(score, positive, target)
        lower[column] = -_loosest_threshold(-score, ~positive, target)
    return upper, lower


def _loosest_threshold(scores: np.ndarray, hits: np.ndarray, target: float) -> float:
    """The lowest score s such that the labels scoring >= s satisfy the module docstring's rules for
    the sign ``hits`` marks; +inf if none does."""
    misses_total = int((~hits).sum())
    if hits.sum() < MIN_SUPPORT or misses_total < MIN_SUPPORT:
        return np.inf
    order = np.argsort(-scores, kind="stable")
    ordered, claimed = scores[order], np.arange(1, len(scores) + 1)
    correct = np.cumsum(hits[order])
    misses = claimed - correct
    group_end = np.append(ordered[:-1] > ordered[1:], True)  # a threshold never splits equal scores
    # the fixed sequence: thresholds enough labels could pass, strictest first (counts only, no scores)
    sequence = np.flatnonzero(group_end & (claimed >= MIN_SUPPORT) & (precision_bound(claimed, claimed) >= target))
    passes = ((precision_bound(correct, claimed) >= target) & (misses <= (1 - target) * misses_total))[sequence]
    passed = sequence.size if passes.all() else int(np.argmin(passes))  # the search stops at the first failure
    return float(ordered[sequence[passed - 1]]) if passed else np.inf


def precision_bound(correct: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    """The precision a side may promise from ``correct`` of ``claimed`` calibration labels: the
    Wilson lower bound with one more claimed label counted wrong (rule 1 of the module docstring)."""
    return wilson_lower_bound(correct, np.asarray(claimed) + 1)


def wilson_lower_bound(successes: np.ndarray, trials: np.ndarray, z: float = WILSON_Z) -> np.ndarray:
    """The Wilson score interval's lower end for a proportion (Wilson 1927): unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0 or all successes and few trials."""
    successes, trials = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    share = successes / trials
    centre = share + z * z / (2 * trials)
    spread = z * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / (1 + z * z / trials)


def _class_completion(name: str, column: int, upper: float, lower: float, calibration_probabilities: np.ndarray,
                      calibration_labels: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                      completed: np.ndarray, evidence: str) -> ClassCompletion:
    """What the class's thresholds fill, and what they do to the labels they were chosen on (the
    region each side fills: past its threshold and not past the other's)."""
    known = calibration_labels[:, column] != UNKNOWN
    scores, truth = calibration_probabilities[known, column], calibration_labels[known, column]
    is_positive, is_negative = truth == POSITIVE, truth == NEGATIVE
    above, below = scores >= upper, scores <= lower
    sides = {}
    for side, region, right, other in (("positive", above & ~below, is_positive, is_negative),
                                       ("negative", below & ~above, is_negative, is_positive)):
        count = int(region.sum())
        sides[side] = (float(right[region].mean()) if count else None,
                       float(precision_bound(right[region].sum(), count)) if count else None,
                       float((region & other).sum() / other.sum()) if count and other.any() else None)
    positives, negatives = int(is_positive.sum()), int(is_negative.sum())
    notes = [f"{side}s fill nothing: {_why_not(side, mine, theirs, evidence)}"
             for side, threshold, mine, theirs in (("positive", upper, positives, negatives),
                                                   ("negative", lower, negatives, positives))
             if not np.isfinite(threshold)]
    return ClassCompletion(
        name, evidence, float(upper) if np.isfinite(upper) else None, float(lower) if np.isfinite(lower) else None,
        sides["positive"][0], sides["positive"][1], sides["negative"][0], sides["negative"][1], sides["positive"][2],
        sides["negative"][2], positives, negatives, int(positive[:, column].sum()), int(negative[:, column].sum()),
        int((completed[:, column] == UNKNOWN).sum()), "; ".join(notes))


def _why_not(side: str, mine: int, theirs: int, evidence: str) -> str:
    """Why a side of a class has no threshold, and what would give it one."""
    other = "negative" if side == "positive" else "positive"
    if mine < MIN_SUPPORT:
        reason = f"{mine} known {side} label(s) to calibrate on, {MIN_SUPPORT} needed"
    elif theirs < MIN_SUPPORT:
        reason = f"{theirs} known {other} label(s), too few to bound how many would be filled wrongly"
    else:
        reason = "no threshold reaches the target with 95 % confidence (more labels, or a better model, would)"
    return reason + ("; --cross-fit K calibrates on every known label" if evidence == "validation" else "")


def needs_cross_fit(completion: Completion) -> list[int]:
    """The classes with a side that their validation labels could not calibrate."""
    return [column for column, entry in enumerate(completion.classes)
            if entry.positive_threshold is None or entry.negative_threshold is None]


def with_cross_fitted(main: Completion, cross_fitted: Completion, columns: Sequence[int]) -> Completion:
    """``main`` with the classes ``columns`` taken from ``cross_fitted``: the completion of the same
    labels from out-of-fold scores, calibrated on every known label of the split."""
    merged = dataclasses.replace(main, labels=main.labels.copy(), filled=main.filled.copy(),
                                 scores=main.scores.copy(), classes=list(main.classes))
    for column in columns:
        for name in ("labels", "filled", "scores"):
            getattr(merged, name)[:, column] = getattr(cross_fitted, name)[:, column]
        merged.classes[column] = cross_fitted.classes[column]
    return merged


@dataclass
class ReviewEntry:
    """An unknown entry suggested for annotation."""

    row: int
    column: int
    probability: float
    priority: float


def review_candidates(completion: Completion, known_labels: np.ndarray, count: int) -> list[ReviewEntry]:
    """The ``count`` still-unknown entries of highest priority (see the module docstring), scored
    as they were for filling; ``known_labels`` give each class's positive rate."""
    rows, columns = np.nonzero(completion.labels == UNKNOWN)
    if count == 0 or rows.size == 0:
        return []
    positives = (known_labels == POSITIVE).sum(axis=0)
    known = (known_labels != UNKNOWN).sum(axis=0)
    rarity = -np.log((positives + 1.0) / (known + 2.0))
    scores = completion.scores[rows, columns]
    priority = rarity[columns] / (1.0 + np.abs(_logit(scores)))
    top = np.argpartition(-priority, count - 1)[:count] if count < priority.size else np.arange(priority.size)
    top = top[np.lexsort((rows[top], -priority[top]))]  # highest first; ties by row
    return [ReviewEntry(int(rows[i]), int(columns[i]), float(scores[i]), float(priority[i])) for i in top]


def _logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return np.log(clipped) - np.log1p(-clipped)


# ---------------------------------------------------------------------------------- out-of-fold scores
OUT_OF_FOLD_KEY = "promptmlr-out-of-fold"  # the safetensors metadata key of the JSON header


def out_of_fold_path(run_dir: Path, folds: int, which: str) -> Path:
    """Where a run keeps the out-of-fold scores of ``--cross-fit folds`` for its ``which`` model: K
    trainings are paid once, and completing again at another precision reads them back."""
    return run_dir / f"out_of_fold-k{folds}-{which}.safetensors"


def save_out_of_fold(path: Path, probabilities: np.ndarray, identity: dict) -> Path:
    """Write out-of-fold probabilities ``[N, C]`` atomically, with the ``identity`` they belong to."""
    header = json.dumps({**migrations.header("out-of-fold"), **identity})
    tensors = {"probabilities": np.ascontiguousarray(probabilities, dtype=np.float64)}
    return atomic_write(path, lambda temp: save_numpy(tensors, str(temp), metadata={OUT_OF_FOLD_KEY: header}))


def load_out_of_fold(path: Path, identity: dict) -> np.ndarray | None:
    """The out-of-fold probabilities at ``path`` if they were computed for ``identity`` (the same
    folds, model, mask and rows); None if absent, of another identity, or unreadable: they are a
    cache, computed again in those cases."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = json.loads((handle.metadata() or {})[OUT_OF_FOLD_KEY])
            probabilities = handle.get_tensor("probabilities")
        header = migrations.upgrade("out-of-fold", header, path, UsageError)
    except Exception:  # any damage: recompute rather than trust
        return None
    return probabilities if migrations.without_header(header) == identity else None


# ------------------------------------------------------------------------------------------ the files
def output_format(format: str | None, out: Path, own_format: str | None) -> str:
    """``jsonl`` or ``csv``: the one asked for, the dataset's own (``own_format``, None where its
    files cannot hold unknown labels) for ``same``, else the one ``out``'s suffix names. The file's
    suffix must be the format's, in lower case, as the loaders find and read files by it."""
    if format is None:
        format = out.suffix.lstrip(".")
        if format not in OWN_FORMATS:
            raise UsageError(f"--out {out}: name a .jsonl or .csv file, or choose one with --format")
    check_choice("--format", format, COMPLETION_FORMATS, UsageError)
    if format == "same":
        if own_format is None:
            raise UsageError("--format same: the dataset's own files cannot hold unknown labels; write --format "
                             "jsonl or --format csv (read back with --dataset jsonl or csv)")
        format = own_format
    if out.suffix != f".{format}":
        raise UsageError(f"--out {out}: a {format} file must end in .{format} (the loaders read it by suffix)")
    return format


def companion_files(out: Path, format: str, review: bool) -> dict[str, Path]:
    """Every file a completion writes, by role, beside ``out``. The companions end in .tsv, .txt,
    .md or .json, so that the folder's splits (its .jsonl and .csv files) are only label files."""
    stem = out.parent / out.stem
    files = {"report_json": Path(f"{stem}.completion.json"), "report_md": Path(f"{stem}.completion.md")}
    if format == "jsonl":
        files["classes"] = Path(f"{stem}.classes.txt")
    else:  # a CSV's columns are its classes: the confidences go to a table of their own
        files["filled"] = Path(f"{stem}.filled.tsv")
    if review:
        files["review"] = Path(f"{stem}.review.tsv")
    files["labels"] = out  # last: written once everything else is in place
    return files


def possible_files(out: Path) -> list[Path]:
    """Every file a completion into ``out`` may write, whatever its format and review: those an
    earlier completion left are replaced or removed with ``--force``, never left stale."""
    every = {**companion_files(out, "jsonl", True), **companion_files(out, "csv", True)}
    return list(every.values())


def image_text(image: Path, folder: Path) -> str:
    """An image's path as a label file in ``folder`` lists it: relative when the image is inside
    that folder (a relative path with ``..`` would resolve through links differently), else absolute."""
    absolute = os.path.abspath(image)
    relative = os.path.relpath(absolute, os.path.abspath(folder))
    return absolute if relative == ".." or relative.startswith(".." + os.sep) else relative


def labels_text(format: str, images: Sequence[Path], class_names: Sequence[str], completion: Completion,
                folder: Path) -> str:
    """The completed labels as a ``jsonl`` file (a ``filled`` field: class -> score) or a ``csv`` file
    (1 / -1 / 0), each readable by its loader as it is; image paths as :func:`image_text` writes them."""
    labels = completion.labels
    if format == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", *class_names])
        writer.writerows([image_text(image, folder), *row] for image, row in zip(images, labels.tolist()))
        return text.getvalue()
    lines = []
    for image, row, certainty in zip(images, labels, completion.confidence):
        record = {"image": image_text(image, folder),
                  "positive": [class_names[c] for c in np.flatnonzero(row == POSITIVE)],
                  "negative": [class_names[c] for c in np.flatnonzero(row == NEGATIVE)]}
        filled = np.flatnonzero(np.isfinite(certainty))
        if filled.size:
            record["filled"] = {class_names[c]: round(float(certainty[c]), 6) for c in filled}
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def filled_table(images: Sequence[Path], class_names: Sequence[str], completion: Completion, folder: Path) -> str:
    """The filled entries, one per line: image, class, label (1 / -1), score (of the label's sign)."""
    lines = ["image\tclass\tlabel\tscore"]
    confidence = completion.confidence
    rows, columns = np.nonzero(completion.filled)
    lines += [f"{image_text(images[row], folder)}\t{class_names[column]}\t{completion.labels[row, column]}\t"
              f"{confidence[row, column]:.6f}" for row, column in zip(rows, columns)]
    return "\n".join(lines) + "\n"


def review_table(entries: Sequence[ReviewEntry], images: Sequence[Path], class_names: Sequence[str],
                 folder: Path) -> str:
    """The review list, highest priority first, with an empty ``label`` column for the annotator."""
    lines = ["image\tclass\tprobability\tpriority\tlabel"]
    lines += [f"{image_text(images[entry.row], folder)}\t{class_names[entry.column]}\t{entry.probability:.6f}\t"
              f"{entry.priority:.6f}\t" for entry in entries]
    return "\n".join(lines) + "\n"


def report(completion: Completion, source: dict) -> dict:
    """The completion's JSON report: where the labels came from (``source``), the totals and every class."""
    filled_positive = sum(entry.filled_positive for entry in completion.classes)
    filled_negative = sum(entry.filled_negative for entry in completion.classes)
    still_unknown = int((completion.labels == UNKNOWN).sum())
    return {**migrations.header("completion"), **source, "target_precision": completion.target_precision,
            "unknown_before": still_unknown + filled_positive + filled_negative, "filled_positive": filled_positive,
            "filled_negative": filled_negative, "still_unknown": still_unknown,
            "estimated_precision": completion.estimated_precision(),
            "classes": [entry.as_dict() for entry in completion.classes]}


def totals_line(record: dict) -> str:
    """One sentence: how much of the unknown was filled, of which sign, at what estimated precision."""
    unknown, estimate = record["unknown_before"], record["estimated_precision"]
    filled = record["filled_positive"] + record["filled_negative"]
    share = f"{filled / unknown:.1%}" if unknown else "n/a"
    return (f"{filled:,} of {unknown:,} unknown labels filled ({share}): {record['filled_positive']:,} positive, "
            f"{record['filled_negative']:,} negative, at target precision {record['target_precision']:g} (estimated "
            f"{'n/a' if estimate is None else f'{estimate:.3f}'}); {record['still_unknown']:,} still unknown")


def summary_markdown(record: dict) -> str:
    """``<stem>.completion.md``: the report as a table, with the limits of its estimates."""
    lines = [f"# Completion of {record['dataset']}/{record['split']}", "",
             f"Run `{record['run_dir']}` ({record['method']}, {record['prompts']}): {totals_line(record)}.", "",
             "Each class's thresholds are chosen on known labels the model did not train on (its validation split's, "
             "or, cross-fitted, every known label scored by a model that did not train on its image): a side fills "
             "where the 95 % lower bound of its precision on them, counting one more label wrong, reaches the "
             "target and it claims at most "
             "1 − target of the other sign's labels." + ("" if record.get("calibration") == "cross-fit" else
             " Training images were seen in training (their known labels only), so the model scores them more "
             "confidently than the validation images; `--calibration cross-fit` calibrates every class on "
             "out-of-fold scores instead."), "",
             *([] if record.get("data_checked", True) else [
                 "The run records no identity of its data (an older run), so the data completed was not checked to "
                 "be the data it was trained on.", ""]),
             "| class | evidence | positive ≥ | precision (bound) | filled + | negative ≤ | precision (bound) | "
             "filled − | still unknown | labels +/− | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in record["classes"]:
        lines.append(f"| {entry['name']} | {entry['evidence']} | {_number(entry['positive_threshold'])} | "
                     f"{_precision(entry['positive_precision'], entry['positive_lower_bound'])} | "
                     f"{entry['filled_positive']} | {_number(entry['negative_threshold'])} | "
                     f"{_precision(entry['negative_precision'], entry['negative_lower_bound'])} | "
                     f"{entry['filled_negative']} | {entry['still_unknown']} | {entry['calibration_positives']}/"
                     f"{entry['calibration_negatives']} | {entry['note']} |")
    return "\n".join(lines) + "\n"


def _precision(point: float | None, bound: float | None) -> str:
    return "—" if point is None else f"{point:.3f} ({bound:.3f})"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
