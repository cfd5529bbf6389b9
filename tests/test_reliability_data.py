"""Faults of the data a user brings: a labels file that leaks into the test split, images listed twice,
a validation split without a known positive, damaged or hand-made dataset files, and the many ways a
CSV, JSONL, YOLO or VOC file differs from what was meant. Each ends in one line naming the file and
the fix, is warned about in one line, or is read as documented; nothing is overwritten."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import promptmlr
from promptmlr.cli import main
from promptmlr.data import DatasetError, ImageLoadError, build_dataset, load_image
from promptmlr.data.dataset import find_duplicates
from promptmlr.data.protocol import DataConfig, Splits, check_images_exist, load_split, load_splits
from promptmlr.data.synthetic import write_synthetic_dataset
from promptmlr.metrics import mean_average_precision
from tests.conftest import write_colour_csv

TINY = "openclip:promptmlr-tiny-vit"


def write_csv(path: Path, rows: list[str], header: str = "image,dog,cat,sofa") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in [header, *rows]))
    return path


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------ 1. --labels names the training split
@pytest.fixture
def two_splits(tmp_path) -> Path:
    """``train.csv`` (6 images), ``mine.csv`` (4 images) and ``test.csv`` (3 images) in one folder."""
    write_csv(tmp_path / "train.csv", [f"t{i}.png,1,-1,{1 if i % 2 else -1}" for i in range(6)])
    write_csv(tmp_path / "mine.csv", [f"m{i}.png,1,-1,{1 if i % 2 else -1}" for i in range(4)])
    write_csv(tmp_path / "test.csv", [f"s{i}.png,{1 if i else -1},1,-1" for i in range(3)])
    return tmp_path


@pytest.mark.parametrize("labels", ["mine.csv", "train.csv"])
def test_labels_replaces_the_training_split_only(two_splits, labels, capsys):
    config = DataConfig(dataset="csv", root=str(two_splits), options={"labels": str(two_splits / labels)},
                        val_fraction=0.25)
    splits, _ = load_splits(config)
    assert [path.name for path in splits.test.image_paths] == ["s0.png", "s1.png", "s2.png"]
    trained = sorted(path.name for path in [*splits.train.image_paths, *splits.val.image_paths])
    assert trained[0][0] == labels[0]  # the training rows come from the labels file
    assert "warning" not in capsys.readouterr().err  # train and test are disjoint


def test_a_run_folder_keeps_its_labels_file_for_training_only(two_splits):
    """``eval RUN_DIR`` reads the run's data config: its test split is test.csv, not the labels file."""
    run_config = DataConfig(dataset="csv", root=str(two_splits), options={"labels": str(two_splits / "mine.csv")})
    assert len(load_split(run_config, "test")) == 3
    assert len(load_split(run_config, "train")) == 4


def test_without_a_test_file_the_labels_option_is_not_the_fallback(two_splits):
    (two_splits / "test.csv").unlink()
    config = DataConfig(dataset="csv", root=str(two_splits), options={"labels": str(two_splits / "mine.csv")})
    with pytest.raises(DatasetError, match=r"no test split 'test' .*test\.csv.*--set data\.test_split=null") as error:
        load_splits(config)
    one_line(error.value)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_labels_option_naming_no_file_is_one_line(tmp_path, kind):
    target = tmp_path / "mine.csv"
    if kind == "directory":
        target.mkdir()
    suffix = r" \(it is a directory\)" if kind == "directory" else "$"
    with pytest.raises(DatasetError, match=r"labels file \(--labels\) not found: .*mine\.csv" + suffix):
        build_dataset("csv", tmp_path, "train", labels=str(target))


@pytest.mark.slow
def test_tune_with_labels_tests_on_the_test_file_and_eval_of_the_run_too(tmp_path, capsys):
    root = write_colour_csv(tmp_path / "data", counts=(("train", 20), ("test", 6)))
    (root / "mine.csv").write_text((root / "train.csv").read_text())
    run_dir = tmp_path / "run"
    assert main(["tune", "--dataset", "csv", "--data-root", str(root), "--labels", str(root / "mine.csv"),
                 "--backbone", TINY, "--method", "linear", "--epochs", "1", "--out", str(run_dir),
                 "--set", "train.batch_size=8", "--set", "train.num_workers=0",
                 "--set", f"train.cache.directory={tmp_path / 'cache'}"]) == 0
    assert re.search(r"18 train / 2 val / 6 test images", capsys.readouterr().out)
    assert len(json.loads((run_dir / "metrics.json").read_text())["history"]) == 1
    assert len(promptmlr.evaluate(run_dir, num_workers=0).dataset) == 6  # the run's test split: test.csv
    given = promptmlr.evaluate(run_dir, "csv", data_root=root, dataset_options={"labels": str(root / "mine.csv")},
                               num_workers=0)
    assert len(given.dataset) == 20  # a labels file given to eval is the split evaluated


def test_test_images_that_are_training_images_are_warned_about(two_splits, capsys):
    config = DataConfig(dataset="csv", root=str(two_splits), options={"labels": str(two_splits / "train.csv")},
                        test_split="train", val_fraction=0.25)
    load_splits(config)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"warning: 6 of the 6 test images of csv are also training images", lines[0])


# ----------------------------------------------------------------------- 2. an image listed twice
@pytest.mark.parametrize("rows, conflicts, same", [
    (["a.png,1,-1,0", "b.png,1,1,1", "a.png,-1,-1,1"], ["dog"], False),
    (["a.png,1,-1,0", "./a.png,1,-1,0"], [], True),
    (["a.png,1,-1,0", "a.png,1,0,0"], [], False),  # known in one row, unknown in another: no conflict
])
def test_duplicates_are_found_with_their_conflicting_classes(tmp_path, rows, conflicts, same):
    write_csv(tmp_path / "train.csv", rows)
    [duplicate] = find_duplicates(build_dataset("csv", tmp_path, "train"))
    assert (duplicate.path.name, duplicate.conflicts, duplicate.same_labels) == ("a.png", conflicts, same)


def test_data_verify_lists_duplicates_and_fails(tmp_path, make_image, capsys):
    for name in ("a.png", "b.png"):
        make_image(tmp_path / name)
    write_csv(tmp_path / "train.csv", ["a.png,1,-1,1", "b.png,1,1,1", "a.png,-1,1,1", "b.png,1,1,1"])
    assert main(["data", "verify", "--dataset", "csv", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "images listed more than once: 2, 1 with conflicting labels" in out
    assert f"repeated {tmp_path / 'a.png'}: 2 rows, dog, cat positive in one, negative in another" in out
    assert f"repeated {tmp_path / 'b.png'}: 2 rows, same labels" in out


@pytest.mark.parametrize("split", ["train", "test"])
def test_loading_a_split_with_duplicates_for_training_warns_in_one_line(two_splits, split, capsys):
    path = two_splits / f"{split}.csv"
    image, *values = path.read_text().splitlines()[1].split(",")
    flipped = ",".join(str(-int(value)) for value in values)  # the first image again, every label flipped
    path.write_text(path.read_text() + f"{image},{flipped}\n")
    load_splits(DataConfig(dataset="csv", root=str(two_splits), val_fraction=0.25))
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: csv/{split}: 1 image(s) listed more than once, 1 with conflicting labels "
                           "(e.g. "), line
    assert "dog, cat, sofa positive in one, negative in another" in line and "promptmlr data verify" in line
    assert ("training and validation" in line) == (split == "train")


def test_data_verify_with_a_labels_file_checks_that_file_once(two_splits, make_image, capsys):
    for index in range(4):
        make_image(two_splits / f"m{index}.png")
    assert main(["data", "verify", "--dataset", "csv", "--data-root", str(two_splits),
                 "--labels", str(two_splits / "mine.csv")]) == 0
    out = capsys.readouterr().out
    assert "csv/mine: 4 images" in out and "csv/train" not in out and "csv/test" not in out


# -------------------------------------------------------- 3. splits whose mAP would be undefined
def write_many(root: Path, count: int = 400) -> Path:
    """``count`` images, each class positive in about a fifth of them."""
    rng = np.random.default_rng(0)
    return write_csv(root / "train.csv", [f"{i}.png,{','.join(np.where(rng.random(3) < 0.2, '1', '-1'))}"
                                          for i in range(count)])


def test_a_validation_split_without_a_known_positive_is_refused_before_training(tmp_path):
    write_many(tmp_path)
    with pytest.raises(DatasetError, match=r"the validation split \(40 of 400 training images, data\.val_fraction="
                                           r"0\.1\) holds no known positive label at --known 0\.005") as error:
        load_splits(DataConfig(dataset="csv", root=str(tmp_path), known=0.005, test_split=None))
    assert "raise --known, or hold out more images: --set data.val_fraction" in one_line(error.value)


def test_classes_without_a_known_positive_in_validation_are_left_out_of_its_map(tmp_path):
    write_many(tmp_path)
    splits, _ = load_splits(DataConfig(dataset="csv", root=str(tmp_path), known=0.05, test_split=None))
    val = splits.val.labels
    assert (val == 1).any() and not (val == 1).any(axis=0).all()  # some classes have no known positive
    assert np.isfinite(mean_average_precision(np.random.default_rng(0).random(val.shape), val))


@pytest.mark.parametrize("train_rows, test_rows, message", [
    (["a.png,1,-1,1", "b.png,-1,1,1"], ["c.png,-1,-1,-1", "d.png,0,-1,0"],
     r"csv/test: the test split holds no positive label.*--set data\.test_split=null"),
    (["a.png,0,-1,0", "b.png,-1,0,-1"], ["c.png,1,-1,-1"],
     r"csv/train: no known positive label to learn from at --known 1\.0 \(0 positive\(s\) before the mask\)"),
])
def test_splits_that_cannot_be_scored_or_learned_from_are_one_line(tmp_path, train_rows, test_rows, message):
    write_csv(tmp_path / "train.csv", train_rows)
    write_csv(tmp_path / "test.csv", test_rows)
    with pytest.raises(DatasetError, match=message) as error:
        load_splits(DataConfig(dataset="csv", root=str(tmp_path), val_fraction=0))
    one_line(error.value)


def test_tune_with_a_tiny_known_proportion_refuses_and_leaves_no_run_folder(tmp_path, capsys):
    write_many(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["tune", "--dataset", "csv", "--data-root", str(tmp_path / "data"), "--known", "0.005",
                 "--set", "data.test_split=null", "--backbone", TINY, "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--known" in error and "data.val_fraction" in error and not out.exists(), error


# ------------------------------------------------------------- 4. damaged or hand-made dataset files
@pytest.mark.parametrize("content", [b"{\"generator\": ", b"\xff\xfe\x00garbage", b"[1, 2]", b"{}"])
def test_a_damaged_synthetic_meta_json_is_one_line_naming_it(tmp_path, content):
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(DatasetError) as error:
        build_dataset("synthetic", tmp_path, "train")
    assert str(tmp_path / "meta.json") in one_line(error.value)


def coco_file(tmp_path: Path, change) -> Path:
    content = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "area": 1,
                                "iscrowd": 0}],
               "categories": [{"id": 5, "name": "dog"}]}
    change(content)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(content))
    return tmp_path


@pytest.mark.parametrize("change, message", [
    (lambda c: c["images"][1].pop("file_name"), r"the 'images' entry with id 2 has no 'file_name' \(got None\)"),
    (lambda c: c["images"][0].update(file_name=7), r"the 'images' entry with id 1 has no 'file_name' \(got 7\)"),
    (lambda c: c["categories"][0].pop("name"), r"the 'categories' entry with id 5 has no 'name'"),
    (lambda c: c.update(categories=[], annotations=[]), r"no 'categories'"),
])
def test_a_coco_file_with_entries_missing_fields_is_one_line_naming_it(tmp_path, change, message):
    root = coco_file(tmp_path, change)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("coco2014", root, "train")
    assert str(root / "annotations" / "instances_train2014.json") in one_line(error.value)


# --------------------------------------------------------------- 5. data synth never overwrites
@pytest.mark.parametrize("existing", ["train.csv", "notes.txt", "file"])
def test_data_synth_refuses_a_folder_that_holds_anything_and_keeps_it(tmp_path, existing, capsys):
    out = tmp_path / "mine"
    if existing != "file":
        out.mkdir()
    kept = out / existing if existing != "file" else out
    kept.write_text("image,dog\nmy.jpg,1\n")
    assert main(["data", "synth", "--out", str(out), "--n-train", "2", "--n-test", "1", "--image-size", "32"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"--out {out}" in error and "a new or empty folder" in error, error
    assert kept.read_text() == "image,dog\nmy.jpg,1\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]  # no temporary left


def test_data_synth_fills_an_empty_folder_and_an_interruption_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert write_synthetic_dataset(tmp_path / "empty", 2, 1, image_size=32) == tmp_path / "empty"
    assert len(build_dataset("synthetic", tmp_path / "empty", "train")) == 2
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "empty").stat().st_mode & 0o777 == 0o777 & ~umask  # not the temporary's private 0700

    from promptmlr.data import world

    def interrupted(self, scene):
        raise KeyboardInterrupt

    monkeypatch.setattr(world.SyntheticWorld, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "new", 2, 1, image_size=32)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # no half dataset, no temporary


# ------------------------------------------------------- 6. the audit: inputs as users write them
@pytest.mark.parametrize("name, text, expected", [
    ("byte-order mark", "\ufeffimage,dog,cat\na.png,1,-1\n", [[1, -1]]),
    ("CRLF line ends", "image,dog,cat\r\na.png,1,-1\r\nb.png,0,1\r\n", [[1, -1], [0, 1]]),
    ("numbers as spreadsheets write them", "image,dog,cat\na.png,1.0,-1.0\nb.png,+1, 0.0\nc.png, 1 ,-0\n",
     [[1, -1], [1, 0], [1, 0]]),
])
def test_csv_accepts_what_spreadsheets_write(tmp_path, name, text, expected):
    (tmp_path / "train.csv").write_bytes(text.encode())
    assert build_dataset("csv", tmp_path, "train").labels.tolist() == expected


def test_csv_class_names_with_commas_and_unicode_are_kept(tmp_path):
    (tmp_path / "train.csv").write_text('image,"dog, big",café,🐕\na.png,1,-1,0\n', encoding="utf-8")
    assert build_dataset("csv", tmp_path, "train").class_names == ["dog, big", "café", "🐕"]


@pytest.mark.parametrize("text, message", [
    ("image,dog,cat\na.png,yes,-1\n", r"line 2: value 'yes' in column 'dog'; class columns take 1 \(positive\)"),
    ("image,dog,cat\na.png,1,\n", r"line 2: an empty cell in column 'cat'"),
    ("image,dog,cat\na.png,nan,1\n", r"line 2: value 'nan' in column 'dog'"),
    ("image,dog,cat\na.png,2,1\n", r"line 2: value '2' in column 'dog'"),
    ("image,dog,cat\n,1,1\n", r"line 2: empty image path"),
    ("image;dog;cat\na.png;1;-1\n", r"line 1: the header must be .* separated by semicolons: save the file comma-"),
    ("image\tdog\tcat\na.png\t1\t-1\n", r"line 1: the header must be .* separated by tabs"),
    ("image,dog,cat\n", r"no images listed"),
    ("\n\n", r"empty; the first line must be the header"),
])
def test_csv_that_means_something_else_is_one_line_naming_file_line_and_column(tmp_path, text, message):
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("csv", tmp_path, "train")
    assert str(tmp_path / "train.csv") in one_line(error.value)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_label_files_in_other_encodings_are_refused_with_the_fix(tmp_path, encoding):
    (tmp_path / "train.csv").write_text("image,café\na.png,1\n", encoding=encoding)
    with pytest.raises(DatasetError, match=r"train\.csv: not a UTF-8 text file .*save it as UTF-8") as error:
        build_dataset("csv", tmp_path, "train")
    one_line(error.value)


@pytest.fixture
def jsonl_root(tmp_path) -> Path:
    (tmp_path / "classes.txt").write_bytes("\ufeffdog\r\ncat\r\n\r\nsofa\r\n".encode())
    return tmp_path


@pytest.mark.parametrize("line, expected", [
    ('\ufeff{"image": "a.png", "positive": ["dog"]}', [1, 0, 0]),
    ('{"image": "a.png", "positive": [" dog "], "negative": ["sofa\\t"]}', [1, 0, -1]),
    ('{"image": "a.png", "positive": ["dog", "dog"]}', [1, 0, 0]),
])
def test_jsonl_and_class_files_read_as_meant(jsonl_root, line, expected):
    (jsonl_root / "train.jsonl").write_bytes(f"{line}\r\n".encode())
    dataset = build_dataset("jsonl", jsonl_root, "train")
    assert dataset.class_names == ["dog", "cat", "sofa"] and dataset.labels.tolist() == [expected]


@pytest.mark.parametrize("line, message", [
    ('["a.png", "dog"]', r"line 1: expected an object with an \"image\" path"),
    ('{"image": "a.png", "positive": "dog"}', r"line 1: \"positive\" must be a list of class names"),
    ('{"image": "a.png", "positive": ["dog"], "negative": [" dog"]}', r"line 1: dog listed as both positive"),
    ('{"image": " "}', r"line 1: empty image path"),
    ('{"image": "a.png", "positive": ["Dog"]}', r"line 1: class 'Dog' in \"positive\" is not in the class list"),
])
def test_jsonl_that_means_something_else_is_one_line(jsonl_root, line, message):
    (jsonl_root / "train.jsonl").write_text(line + "\n")
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("jsonl", jsonl_root, "train")
    one_line(error.value)


def test_paths_outside_the_root_and_absolute_paths_are_read_as_written(tmp_path, make_image):
    """Images may live anywhere (a shared photo folder): ``..`` and absolute paths are allowed, as the
    labels file is the user's own; promptmlr only reads the images."""
    outside = make_image(tmp_path / "photos" / "x.png")
    write_csv(tmp_path / "data" / "train.csv", ["../photos/x.png,1,-1,0", f"{outside},1,-1,0"])
    dataset = build_dataset("csv", tmp_path / "data", "train")
    assert [path.resolve() for path in dataset.image_paths] == [outside.resolve()] * 2
    assert load_image(dataset.image_paths[0]).size == (32, 24)


@pytest.mark.parametrize("kind, reason", [
    ("directory", "it is a directory"), ("fifo", "it is not a regular file"), ("loop", "it is not a regular file"),
    ("missing", "it does not exist"),
])
def test_an_image_path_that_is_no_image_file_is_named_before_training(tmp_path, kind, reason):
    path = tmp_path / "x.png"
    {"directory": path.mkdir, "fifo": lambda: os.mkfifo(path), "loop": lambda: os.symlink(path, path),
     "missing": lambda: None}[kind]()
    write_csv(tmp_path / "train.csv", ["x.png,1,-1,0"])
    dataset = build_dataset("csv", tmp_path, "train")
    with pytest.raises(DatasetError, match=rf"1 image file\(s\) of csv are missing, e\.g\. .*x\.png \({reason}\)"):
        check_images_exist(Splits(train=dataset, val=None, test=None))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_as_an_image_is_refused_without_hanging(tmp_path, kind):
    path = tmp_path / "x.png"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    else:
        path = Path("/dev/zero")  # reading it would never end
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(path, damaged="error")


@pytest.fixture
def yolo_root(tmp_path, make_image) -> Path:
    make_image(tmp_path / "images" / "train" / "a.jpg")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("names: [dog, cat]\ntrain: images/train\n")
    return tmp_path


@pytest.mark.parametrize("text, expected", [
    ("1.0 0.5 0.5 0.1 0.1\n", [[-1, 1]]),  # ultralytics reads ids as numbers; some converters write floats
    ("\ufeff0 0.5 0.5 0.1 0.1\r\n", [[1, -1]]),
])
def test_yolo_label_files_read_as_ultralytics_reads_them(yolo_root, text, expected):
    (yolo_root / "labels" / "train" / "a.txt").write_bytes(text.encode())
    assert build_dataset("yolo", yolo_root, "train").labels.tolist() == expected


def label_file(root: Path) -> Path:
    return root / "labels" / "train" / "a.txt"


@pytest.mark.parametrize("setup, message", [
    (lambda root: label_file(root).write_text("² 0.5 0.5 1 1\n"), r"a\.txt, line 1: class '²' is not an id"),
    (lambda root: label_file(root).write_text("2 0.5 0.5 1 1\n"), r"class '2' is not an id in 0\.\.1"),
    (lambda root: label_file(root).mkdir(), r"a\.txt: not a regular file \(a folder\?\)"),
    (lambda root: (root / "data.yaml").write_text("names: []\ntrain: images/train\n"), r"'names' is empty"),
    (lambda root: (root / "data.yaml").write_text("names: [a]\ntrain: [images/train, x]\n"), "a list of folders"),
])
def test_yolo_files_that_mean_something_else_are_one_line(yolo_root, setup, message):
    setup(yolo_root)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("yolo", yolo_root, "train")
    one_line(error.value)


def test_a_dangling_link_in_a_yolo_image_folder_is_reported_missing_not_dropped(yolo_root):
    os.symlink(yolo_root / "gone.jpg", yolo_root / "images" / "train" / "b.jpg")
    dataset = build_dataset("yolo", yolo_root, "train")
    assert [path.name for path in dataset.image_paths] == ["a.jpg", "b.jpg"]
    with pytest.raises(DatasetError, match=r"b\.jpg \(it is not a regular file\)"):
        check_images_exist(Splits(train=dataset, val=None, test=None))


@pytest.mark.parametrize("xml, message", [
    ("<annotation><object><difficult>0</difficult></object></annotation>", "every <object> needs a <name>"),
    ("<annotation><object><name>dog</name><difficult>yes</difficult></object></annotation>",
     "<difficult> 0 or 1"),
    ("<annotation><object><name>dog</name>", "not valid XML"),
    (None, r"VOC annotation file not found: .*000001\.xml \(it is a directory\)"),
])
def test_voc_annotations_missing_fields_are_one_line_naming_the_file(tmp_path, xml, message):
    year = tmp_path / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "Annotations").mkdir()
    (year / "ImageSets" / "Main" / "train.txt").write_text("000001\n")
    if xml is None:
        (year / "Annotations" / "000001.xml").mkdir()
    else:
        (year / "Annotations" / "000001.xml").write_text(xml)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("voc2007", tmp_path, "train")
    assert "000001.xml" in one_line(error.value)


@pytest.mark.parametrize("entry", [3, None, [True], "01"])
def test_vg200_index_entries_that_are_not_lists_of_ids_are_one_line(tmp_path, entry):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "train_list_500.txt").write_text("1.jpg\n")
    (tmp_path / "vg_category_200_labels_index.json").write_text(json.dumps({"1.jpg": entry}))
    with pytest.raises(DatasetError, match=r"image 1\.jpg has class indices .*a list of integers in \[0, 2\)") as error:
        build_dataset("vg200", tmp_path, "train")
    one_line(error.value)


def test_only_the_first_process_of_a_distributed_run_warns_about_repeats(two_splits, capsys, monkeypatch):
    path = two_splits / "train.csv"
    path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")  # the first image twice
    for rank, warned in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)  # as accelerate launch and torchrun set it in every process
        load_splits(DataConfig(dataset="csv", root=str(two_splits), val_fraction=0.25))
        assert ("listed more than once" in capsys.readouterr().err) == warned
