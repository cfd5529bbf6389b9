"""``promptmlr complete`` end to end on a run of a tiny model: the files, read back by the loaders;
known labels kept; every method; the refusals, each before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import promptmlr
from promptmlr.data.custom import build_csv, build_jsonl
from promptmlr.data.protocol import masked_training_split
from promptmlr.errors import PromptMLRError
from promptmlr.models.factory import METHODS
from tests.conftest import write_colour_csv

TINY = "openclip:promptmlr-tiny-vit"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 240), ("test", 12)))


def _tune(root: Path, out: Path, method: str = "promptmlr", epochs: int = 2, val_fraction: float = 0.4):
    return promptmlr.tune(dataset="csv", data_root=root, known=0.5, method=method, backbone=TINY, out=out,
                          epochs=epochs, select_on="val" if val_fraction else "test", log=lambda *_: None,
                          overrides={"data": {"val_fraction": val_fraction},
                                     "train": {"batch_size": 8, "num_workers": 0, "cache": {"enabled": "off"}}})


@pytest.fixture(scope="module")
def run(colour_data, tmp_path_factory) -> promptmlr.TuneResult:
    return _tune(colour_data, tmp_path_factory.mktemp("runs") / "run")


def _complete(run_dir: Path, out: Path, **options) -> promptmlr.CompletionResult:
    return promptmlr.complete(run_dir, out, num_workers=0, **{"precision": 0.6, **options})


def test_completion_keeps_known_labels_and_reads_back_as_jsonl(run, tmp_path):
    result = _complete(run.run_dir, tmp_path / "out" / "train.jsonl", review=4)
    assert set(result.files) == {"labels", "report_json", "report_md", "classes", "review"}
    masked = masked_training_split(run.config.data).dataset
    read = build_jsonl(tmp_path / "out", "train", classes=str(result.files["classes"]))
    known = masked.labels != 0
    assert np.array_equal(read.labels[known], masked.labels[known])
    assert [p.resolve() for p in read.image_paths] == [p.resolve() for p in masked.image_paths]
    record = json.loads(result.files["report_json"].read_text())
    assert record["format"] == "promptmlr-completion" and record["unknown_before"] == int((~known).sum())
    filled = int(((read.labels != 0) & ~known).sum())
    assert filled == record["filled_positive"] + record["filled_negative"] > 0
    assert record["mask_sha256"] == run.metrics["mask_sha256"] and len(record["classes"]) == 3
    review = result.files["review"].read_text().splitlines()
    assert review[0].startswith("image\tclass") and len(review) == 5
    assert "target precision 0.6" in result.files["report_md"].read_text() and "filled" in result.summary


def test_completion_as_csv_and_of_another_split(run, colour_data, tmp_path):
    result = _complete(run.run_dir, tmp_path / "train.csv", format="same")
    read = build_csv(tmp_path, "train")
    filled_lines = result.files["filled"].read_text().splitlines()
    assert len(filled_lines) - 1 == int((read.labels != masked_training_split(run.config.data).dataset.labels).sum())
    test = _complete(run.run_dir, tmp_path / "test.jsonl", split="test")
    assert test.report["split"] == "test" and test.report["unknown_before"] == 0  # the test file is fully labelled


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_completes(method, colour_data, tmp_path):
    trained = _tune(colour_data, tmp_path / "run", method=method, epochs=1)
    result = _complete(trained.run_dir, tmp_path / "out.csv", precision=0.9)
    masked = masked_training_split(trained.config.data).dataset
    read = build_csv(tmp_path, "out")
    assert np.array_equal(read.labels[masked.labels != 0], masked.labels[masked.labels != 0])
    assert result.report["method"] == method


def test_force_replaces_and_removes_what_an_earlier_completion_left(run, tmp_path):
    out = tmp_path / "c.jsonl"
    first = _complete(run.run_dir, out, review=3)
    with pytest.raises(PromptMLRError, match="already exist"):
        _complete(run.run_dir, out)
    _complete(run.run_dir, out, force=True)
    assert not first.files["review"].exists() and out.is_file()
    _complete(run.run_dir, tmp_path / "c.csv", force=True)  # another format of the same stem: the same companions
    assert not (tmp_path / "c.classes.txt").exists() and (tmp_path / "c.filled.tsv").is_file()


@pytest.mark.parametrize("options, message", [
    ({"precision": 1.0}, "--precision must be > 0 and < 1, got 1.0"),
    ({"precision": 0}, "--precision must be > 0"),
    ({"review": -1}, "--review must be >= 0"),
    ({"review": 2.5}, "--review must be a whole number"),
    ({"review": True}, "--review must be a whole number"),
    ({"format": "xml"}, "--format must be one of jsonl, csv, same"),
    ({"split": "holdout"}, "--split holdout: no .*holdout.csv; splits in"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, options, message):
    with pytest.raises(PromptMLRError, match=message) as error:
        _complete(run.run_dir, tmp_path / "out" / "c.jsonl", **options)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_datasets_own_files_are_never_overwritten_even_with_force(run, colour_data):
    before = (colour_data / "train.csv").read_bytes()
    with pytest.raises(PromptMLRError, match="a file of the dataset itself"):
        _complete(run.run_dir, colour_data / "train.csv", force=True)
    assert (colour_data / "train.csv").read_bytes() == before


def test_a_run_without_validation_and_a_folder_that_is_no_run_are_refused(colour_data, tmp_path):
    trained = _tune(colour_data, tmp_path / "run", method="linear", epochs=1, val_fraction=0)
    with pytest.raises(PromptMLRError, match="without a validation split"):
        _complete(trained.run_dir, tmp_path / "c.jsonl")
    with pytest.raises(PromptMLRError, match="is not a run folder"):
        _complete(tmp_path, tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()


def test_the_command_prints_one_summary_line_or_one_error_line(run, tmp_path, capsys):
    from promptmlr.cli import main

    assert main(["complete", str(run.run_dir), "--out", str(tmp_path / "c.jsonl"), "--precision", "0.6"]) == 0
    assert "unknown labels filled" in capsys.readouterr().out
    assert main(["complete", str(run.run_dir), "--out", str(tmp_path / "c.jsonl"), "--precision", "2"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--precision must be" in error


def test_cross_fitting_calibrates_the_classes_validation_cannot(colour_data, tmp_path):
    trained = _tune(colour_data, tmp_path / "run", epochs=3, val_fraction=0.1)  # 24 validation images
    plain = _complete(trained.run_dir, tmp_path / "plain.jsonl", precision=0.8)
    assert all("--cross-fit K" in entry["note"] for entry in plain.report["classes"])
    lines = []
    fitted = _complete(trained.run_dir, tmp_path / "fitted.jsonl", precision=0.8, cross_fit=2, log=lines.append)
    assert sum("cross-fitting fold" in line for line in lines) == 2
    masked = masked_training_split(trained.config.data).dataset
    for column, entry in enumerate(fitted.report["classes"]):
        assert entry["evidence"] == "cross-fitted (2 folds)"
        assert entry["calibration_positives"] == int((masked.labels[:, column] == 1).sum())  # every known label
    filled = fitted.report["filled_positive"] + fitted.report["filled_negative"]
    assert filled > plain.report["filled_positive"] + plain.report["filled_negative"]
    read = build_jsonl(tmp_path, "fitted")
    assert np.array_equal(read.labels[masked.labels != 0], masked.labels[masked.labels != 0])
    lines.clear()  # again: the K trainings are read back from the run folder, and give the same labels
    again = _complete(trained.run_dir, tmp_path / "again.jsonl", precision=0.8, cross_fit=2, log=lines.append)
    assert not any("cross-fitting fold" in line for line in lines) and any("read back" in line for line in lines)
    assert again.report["classes"] == fitted.report["classes"]
    stored = trained.run_dir / "out_of_fold-k2-best.safetensors"
    stored.write_bytes(b"damaged")  # a cache: recomputed, not trusted
    _complete(trained.run_dir, tmp_path / "third.jsonl", precision=0.8, cross_fit=2, log=lines.append)
    assert sum("cross-fitting fold" in line for line in lines) == 2


def test_calibration_cross_fit_calibrates_and_fills_every_class_out_of_fold(run, tmp_path):
    plain = _complete(run.run_dir, tmp_path / "plain.jsonl")
    assert any(entry["evidence"] == "validation" for entry in plain.report["classes"])
    every = _complete(run.run_dir, tmp_path / "every.jsonl", cross_fit=2, calibration="cross-fit")
    assert every.report["calibration"] == "cross-fit" and plain.report["calibration"] == "validation"
    assert all(entry["evidence"] == "cross-fitted (2 folds)" for entry in every.report["classes"])
    masked = masked_training_split(run.config.data).dataset
    known = (masked.labels != 0).sum(axis=0)
    assert [entry["calibration_positives"] + entry["calibration_negatives"]
            for entry in every.report["classes"]] == known.tolist()  # every known label of the split
    assert "--calibration cross-fit" not in every.files["report_md"].read_text()
    assert "--calibration cross-fit" in plain.files["report_md"].read_text()


@pytest.mark.parametrize("options, message", [
    ({"cross_fit": 1}, "--cross-fit must be 0 \\(off\\) or a number of folds of at least 2"),
    ({"calibration": "cross-fit"}, "--calibration cross-fit calibrates on out-of-fold scores: give the folds"),
    ({"calibration": "test", "cross_fit": 2}, "--calibration must be one of validation, cross-fit, got 'test'"),
    ({"cross_fit": 2, "split": "test"}, "--cross-fit scores the run's training split out of fold"),
    ({"cross_fit": 10**6}, "--cross-fit 1000000: the training split has 144 training images, fewer than the folds"),
])
def test_cross_fitting_refusals(run, tmp_path, options, message):
    with pytest.raises(PromptMLRError, match=message):
        _complete(run.run_dir, tmp_path / "c.jsonl", **options)


def test_format_same_follows_the_files_the_dataset_reads(tmp_path):
    from promptmlr.api import _own_format
    from promptmlr.data.protocol import DataConfig

    (tmp_path / "train.jsonl").write_text("")
    assert _own_format(DataConfig(dataset="custom", root=str(tmp_path)), "train") == "jsonl"
    assert _own_format(DataConfig(dataset="custom", root=str(tmp_path)), "test") == "csv"
    assert _own_format(DataConfig(dataset="custom", root=str(tmp_path), options={"labels": "x.csv"}), "train") == "csv"
    assert _own_format(DataConfig(dataset="synthetic"), "train") == "csv"
    assert _own_format(DataConfig(dataset="voc2007", root=str(tmp_path)), "trainval") is None
