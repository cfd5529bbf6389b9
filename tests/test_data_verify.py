"""``promptmlr data verify``: counts, and every missing or corrupt file named, with a failing status."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from promptmlr.cli import main
from promptmlr.data import build_dataset, verify_dataset

IDS = ["000012", "000017", "000023", "000026", "000032", "000033"]


@pytest.fixture
def small_voc(shared_data, tmp_path) -> Path:
    """Six real VOC train images with their official class-file lines, in a fresh VOCdevkit."""
    source = shared_data / "voc2007-train" / "VOCdevkit" / "VOC2007"
    target = tmp_path / "VOCdevkit" / "VOC2007"
    (target / "ImageSets" / "Main").mkdir(parents=True)
    (target / "JPEGImages").mkdir()
    (target / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in IDS))
    for class_file in (source / "ImageSets" / "Main").glob("*_train.txt"):
        lines = [line for line in class_file.read_text().splitlines() if line.split()[0] in IDS]
        (target / "ImageSets" / "Main" / class_file.name).write_text("\n".join(lines) + "\n")
    for image_id in IDS:
        shutil.copy(source / "JPEGImages" / f"{image_id}.jpg", target / "JPEGImages")
    return tmp_path


def test_verify_clean_copy_prints_counts_and_succeeds(small_voc, capsys):
    status = main(["data", "verify", "--dataset", "voc2007", "--data-root", str(small_voc), "--split", "train"])
    out = capsys.readouterr().out
    assert status == 0
    assert "voc2007/train: 6 images, 20 classes, 0 bad image file(s)" in out
    assert "positives per class: aeroplane 2, bicycle 1," in out and "person 3," in out
    assert "no problems" in out


def test_verify_names_corrupt_and_missing_files_and_fails(small_voc, capsys):
    images = small_voc / "VOCdevkit" / "VOC2007" / "JPEGImages"
    corrupt, missing = images / "000023.jpg", images / "000032.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:2000])
    missing.unlink()
    status = main(["data", "verify", "--dataset", "voc2007", "--data-root", str(small_voc)])
    out = capsys.readouterr().out
    assert status == 1
    assert "voc2007/train: 6 images, 20 classes, 2 bad image file(s)" in out
    assert f"missing  {missing}: file not found" in out
    assert f"corrupt  {corrupt}: corrupt or unreadable" in out
    assert "voc2007/test: not present" in out  # splits absent from this copy are noted, not failures
    assert "2 problem(s)" in out


def test_verify_reports_malformed_labels_as_a_problem(small_voc, capsys):
    (small_voc / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "cat_train.txt").write_text("000012 maybe\n")
    assert main(["data", "verify", "--dataset", "voc2007", "--data-root", str(small_voc)]) == 1
    assert "cat_train.txt, line 1" in capsys.readouterr().out


def test_verify_passes_dataset_options_and_rejects_foreign_ones(small_voc, capsys):
    assert main(["data", "verify", "--dataset", "voc2007", "--data-root", str(small_voc),
                 "--split", "train", "--difficult", "ignore"]) == 0
    assert main(["data", "verify", "--dataset", "voc2007", "--data-root", str(small_voc),
                 "--split", "train", "--missing-as", "negative"]) == 1
    assert "does not take option(s) missing_as" in capsys.readouterr().err


def test_verify_unknown_dataset_and_split_are_one_line_errors(small_voc, capsys):
    assert main(["data", "verify", "--dataset", "voc", "--data-root", str(small_voc)]) == 1
    assert "available: coco2014" in capsys.readouterr().err
    assert main(["data", "verify", "--dataset", "voc2007", "--data-root", str(small_voc), "--split", "val"]) == 1
    assert "this copy has splits: train" in capsys.readouterr().err


def test_data_list_shows_splits_and_options(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "voc2007" in out and "difficult=negative" in out and "image_list=all" in out


@pytest.mark.slow
def test_every_real_voc_image_decodes(shared_data):
    report = verify_dataset(build_dataset("voc2007", shared_data / "voc2007-train", "train"), progress=False)
    assert report.problems == [] and report.labels.shape == (2500, 20)
