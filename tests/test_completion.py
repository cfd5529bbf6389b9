"""Completion's parts without a model: thresholds for a target precision, what is filled and what
never changes, the review list, the label files it writes (read back by the loaders) and writing
them all or none."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from promptmlr import completion, files
from promptmlr.completion import complete_labels, precision_thresholds, review_candidates, wilson_lower_bound
from promptmlr.data.custom import build_csv, build_jsonl
from promptmlr.data.textfiles import DatasetError
from promptmlr.errors import UsageError

CLASSES = ["cat", "dog", "kite"]


def _scored(rows: int, seed: int, separation: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Hidden truth ``[rows, 3]`` (class 2 rare) and probabilities from logits that separate it."""
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random((rows, 3)) < np.array([0.4, 0.3, 0.05]), 1, -1).astype(np.int8)
    logits = truth * separation / 2 + rng.normal(0, 1.2, truth.shape)
    return truth, 1 / (1 + np.exp(-logits))


def _masked(truth: np.ndarray, known: float, seed: int) -> np.ndarray:
    keep = np.random.default_rng(seed).random(truth.shape) < known
    return np.where(keep, truth, 0).astype(np.int8)


def test_each_filled_sign_reaches_the_target_and_known_labels_never_change():
    truth, probabilities = _scored(4000, seed=0)
    val_truth, val_probabilities = _scored(3000, seed=1)
    labels, val_labels = _masked(truth, 0.3, 2), _masked(val_truth, 0.3, 3)
    for target in (0.9, 0.95, 0.99):
        result = complete_labels(probabilities, labels, val_probabilities, val_labels, target, CLASSES)
        known = labels != 0
        assert np.array_equal(result.labels[known], labels[known])
        assert not (result.filled & known).any() and result.filled.any()
        assert set(np.unique(result.labels[result.filled])) <= {1, -1}
        for sign in (1, -1):  # per sign and per class: the base rate alone cannot pass
            for column in range(3):
                chosen = result.filled[:, column] & (result.labels[:, column] == sign)
                if chosen.sum() >= 50:
                    realised = (truth[chosen, column] == sign).mean()
                    assert realised >= target - 0.02, (target, sign, column, realised)
            # the other sign's share claimed stays at most 1 - target (with a little sampling slack)
            hidden = ~known & (truth == -sign)
            lost = (result.filled & hidden & (result.labels == sign)).sum() / hidden.sum()
            assert lost <= 1 - target + 0.02, (target, sign, lost)
        rows, columns = np.nonzero(result.filled & (result.labels == 1))
        assert np.allclose(result.confidence[rows, columns], probabilities[rows, columns])
        report = completion.report(result, {})
        assert report["filled_positive"] + report["filled_negative"] + report["still_unknown"] == (~known).sum()


def test_a_class_whose_negatives_are_its_base_rate_does_not_fill_its_positives_negative():
    """At 3 % positives, marking everything negative is 97 % precise; the rule must not allow it."""
    rng = np.random.default_rng(12)
    truth = np.where(rng.random((20000, 1)) < 0.03, 1, -1).astype(np.int8)
    probabilities = 1 / (1 + np.exp(-(truth * 1.0 + rng.normal(0, 1.5, truth.shape) - 2)))  # poorly separated
    upper, lower = precision_thresholds(probabilities[:5000], truth[:5000], 0.95)
    below = probabilities[5000:, 0] <= lower[0]
    lost = (below & (truth[5000:, 0] == 1)).sum() / (truth[5000:, 0] == 1).sum()
    assert lost <= 0.08, lost


def test_a_threshold_rests_on_enough_labels_to_bound_its_precision():
    assert wilson_lower_bound(5, 5) == pytest.approx(0.649, abs=1e-3)  # 5 of 5 right: not yet 0.95
    scores = np.array([0.99] * 5 + [0.1] * 40)
    hits = np.array([True] * 5 + [False] * 40)
    upper, _ = precision_thresholds(scores[:, None], np.where(hits, 1, -1)[:, None], 0.95)
    assert upper[0] == np.inf
    assert completion.precision_bound(85, 85) < 0.95 <= completion.precision_bound(86, 86)  # one more, wrong
    for count, passes in ((85, False), (86, True)):  # 86 all right are needed for 0.95
        scores = np.concatenate([np.full(count, 0.99), np.full(count, 0.1)])
        upper, lower = precision_thresholds(scores[:, None], np.where(scores > 0.5, 1, -1)[:, None], 0.95)
        assert (upper[0] == 0.99 and lower[0] == 0.1) == passes


def test_the_threshold_search_stops_at_the_first_threshold_that_fails():
    """Strictest first: a looser threshold that passes again after a failing one is never chosen
    (picking the loosest that passes would select a bound that passed by luck)."""
    scores = np.linspace(1.0, 0.0, 400)
    labels = np.full(400, -1)
    labels[:100] = 1  # the top 100 all right ...
    labels[100:110] = -1  # ... then a run of misses: the bound fails here ...
    labels[110:200] = 1  # ... and passes again further down, by luck of the order
    upper, _ = precision_thresholds(scores[:, None], labels[:, None], 0.9)
    assert scores[109] < upper[0] <= scores[99]  # stopped inside the run of misses
    passes_again = completion.wilson_lower_bound(190, 200) >= 0.9
    assert passes_again  # the old rule, the loosest that passes, would have gone past the misses


def test_a_threshold_never_splits_equal_scores():
    scores = np.array([0.9] * 60 + [0.5] * 20 + [0.1] * 60)  # the 0.5 tie is half right
    labels = np.array([1] * 60 + [1, -1] * 10 + [-1] * 60)
    upper, lower = precision_thresholds(scores[:, None], labels[:, None], 0.9)
    assert upper[0] == 0.9 and lower[0] == 0.1


def test_a_higher_target_fills_no_more_and_a_class_without_evidence_fills_nothing_and_says_why():
    truth, probabilities = _scored(2000, seed=4)
    val_truth, val_probabilities = _scored(400, seed=5)
    labels, val_labels = _masked(truth, 0.2, 6), _masked(val_truth, 0.2, 7)
    val_labels[:, 2][val_labels[:, 2] == 1] = 0  # no known positive of the rare class in validation
    loose = complete_labels(probabilities, labels, val_probabilities, val_labels, 0.9, CLASSES)
    strict = complete_labels(probabilities, labels, val_probabilities, val_labels, 0.99, CLASSES)
    assert strict.filled.sum() <= loose.filled.sum()
    kite = loose.classes[2]
    assert kite.positive_threshold is None and kite.negative_threshold is None and kite.calibration_positives == 0
    assert "positives fill nothing: 0 known positive label(s) to calibrate on" in kite.note
    assert "negatives fill nothing: 0 known positive label(s), too few to bound" in kite.note
    assert "--cross-fit K" in kite.note and 2 in completion.needs_cross_fit(loose)


def test_review_lists_only_unknown_entries_rare_classes_and_the_least_sure_first():
    truth, probabilities = _scored(600, seed=8)
    labels = _masked(truth, 0.5, 9)
    result = complete_labels(probabilities, labels, probabilities, labels, 0.95, CLASSES)
    entries = review_candidates(result, labels, 50)
    assert len(entries) == 50
    assert all(result.labels[entry.row, entry.column] == 0 for entry in entries)
    assert [entry.priority for entry in entries] == sorted((entry.priority for entry in entries), reverse=True)
    assert entries[0].column == 2  # the rare class
    assert review_candidates(result, labels, 0) == []
    everything = review_candidates(result, labels, 10**6)
    assert len(everything) == (result.labels == 0).sum()
    assert [(e.row, e.column) for e in everything[:50]] == [(e.row, e.column) for e in entries]
    probabilities = np.array([e.probability for e in entries])
    logits = np.log(probabilities / (1 - probabilities))
    same_class = [abs(logit) for entry, logit in zip(entries, logits) if entry.column == 2]
    assert same_class == sorted(same_class)  # within a class, the least sure first


def _completion_for(images: list[Path]) -> completion.Completion:
    labels = np.array([[1, 0, -1], [0, -1, 0]], dtype=np.int8)
    calibration = np.tile(np.linspace(0.001, 0.999, 400)[:, None], 3)
    result = complete_labels(np.array([[0.9, 0.99, 0.1], [0.5, 0.2, 0.001]]), labels, calibration,
                             np.where(calibration > 0.5, 1, -1).astype(np.int8), 0.9, CLASSES)
    assert result.filled.sum() == 2
    return result


@pytest.mark.parametrize("format", ["jsonl", "csv"])
def test_the_label_file_reads_back_as_written(format, tmp_path, make_image):
    images = [make_image(tmp_path / "images" / "a.png"), make_image(tmp_path / "elsewhere" / "b.png")]
    result = _completion_for(images)
    out_folder = tmp_path / "images"
    out = out_folder / f"completed.{format}"
    text = completion.labels_text(format, images, CLASSES, result, out_folder)
    out.write_text(text)
    if format == "jsonl":
        (out_folder / "completed.classes.txt").write_text("\n".join(CLASSES) + "\n")  # the file's own class list
        read = build_jsonl(out_folder, "completed")
        assert json.loads(text.splitlines()[0])["filled"] == {"dog": 0.99}
        assert build_jsonl(tmp_path / "elsewhere", "any", labels=str(out)).class_names == CLASSES
    else:
        read = build_csv(out_folder, "completed")
    assert np.array_equal(read.labels, result.labels)
    assert [path.resolve() for path in read.image_paths] == [path.resolve() for path in images]
    assert text.count(str(images[1].resolve())) == 1 and "a.png" in text  # outside: absolute; inside: relative


def test_an_image_outside_the_output_folder_is_written_absolute_even_through_a_link(tmp_path, make_image):
    image = make_image(tmp_path / "data" / "a.png")
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    listed = completion.image_text(image, tmp_path / "link")
    assert os.path.isabs(listed) and (tmp_path / "link" / listed).resolve() == image.resolve()
    assert completion.image_text(image, tmp_path / "data") == "a.png"


@pytest.mark.parametrize("filled, message", [
    ('["dog"]', "must be an object"),
    ('{"cat": 0.9}', "in neither"),
    ('{"dog": true}', "must be a number in"),
    ('{"dog": 1.5}', "must be a number in"),
    ('{"dog": "high"}', "must be a number in"),
])
def test_a_wrong_filled_field_is_one_line_naming_the_line(filled, message, tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "train.jsonl").write_text('{"image": "a.png", "positive": ["dog"], "filled": %s}\n' % filled)
    with pytest.raises(DatasetError, match=message) as error:
        build_jsonl(tmp_path, "train")
    assert "train.jsonl, line 1" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("format, out, own, expected", [
    (None, "x.jsonl", None, "jsonl"), (None, "x.csv", None, "csv"), ("same", "x.csv", "csv", "csv"),
    ("same", "x.jsonl", "jsonl", "jsonl"), ("csv", "x.csv", "jsonl", "csv"),
])
def test_the_output_format(format, out, own, expected):
    assert completion.output_format(format, Path(out), own) == expected


@pytest.mark.parametrize("format, out, own, message", [
    (None, "x.txt", "csv", "name a .jsonl or .csv file"),
    (None, "x.CSV", "csv", "name a .jsonl or .csv file"),  # the loaders find files by a lower-case suffix
    ("same", "x.csv", None, "cannot hold unknown labels"),
    ("csv", "x.jsonl", "csv", "must end in .csv"),
    ("yaml", "x.yaml", "csv", "--format must be one of jsonl, csv, same"),
])
def test_a_wrong_output_format_is_refused(format, out, own, message):
    with pytest.raises(UsageError, match=message):
        completion.output_format(format, Path(out), own)


def test_the_cli_offers_the_formats_and_calibrations_completion_knows():
    from promptmlr.cli.main import build_parser

    parser = build_parser()
    complete = parser._subparsers._group_actions[0].choices["complete"]
    choices = {action.dest: action.choices for action in complete._actions}
    assert tuple(choices["format"]) == completion.COMPLETION_FORMATS
    assert tuple(choices["calibration"]) == completion.CALIBRATIONS


def test_companions_never_look_like_a_split_and_the_labels_go_last(tmp_path):
    written = completion.companion_files(tmp_path / "c.jsonl", "jsonl", review=True)
    assert list(written)[-1] == "labels"
    assert all(path.suffix not in (".jsonl", ".csv") for role, path in written.items() if role != "labels")
    assert set(completion.possible_files(tmp_path / "c.csv")) >= set(completion.companion_files(
        tmp_path / "c.csv", "csv", True).values())


def test_files_written_together_are_all_written_or_none(tmp_path, monkeypatch):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old")
    real_write = Path.write_text

    def fail_on_second(path, text, **options):
        if path.name.startswith(".b.txt."):
            raise OSError(28, "No space left on device")
        return real_write(path, text, **options)

    monkeypatch.setattr(Path, "write_text", fail_on_second)
    with pytest.raises(files.DiskFullError):
        files.write_texts_together({first: "new", second: "new"})
    monkeypatch.undo()
    assert first.read_text() == "old" and not second.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt"]  # no temporaries left
    files.write_texts_together({first: "new", second: "new"})
    assert first.read_text() == second.read_text() == "new"


def test_a_class_validation_cannot_calibrate_is_taken_from_the_cross_fitted_completion():
    truth, probabilities = _scored(3000, seed=10)
    labels = _masked(truth, 0.5, 11)
    main = complete_labels(probabilities, labels, probabilities[:40], labels[:40], 0.9, CLASSES)
    assert completion.needs_cross_fit(main) == [0, 1, 2]  # 40 validation images: too few for every class
    refit = complete_labels(probabilities, labels, probabilities, labels, 0.9, CLASSES,
                            evidence="cross-fitted (3 folds)")
    merged = completion.with_cross_fitted(main, refit, [2])
    assert np.array_equal(merged.labels[:, :2], main.labels[:, :2])
    assert np.array_equal(merged.labels[:, 2], refit.labels[:, 2]) and merged.filled[:, 2].any()
    assert merged.classes[2].evidence == "cross-fitted (3 folds)" and merged.classes[0] == main.classes[0]
    assert not np.shares_memory(merged.labels, main.labels)
