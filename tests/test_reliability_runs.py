"""Run folders under faults: data that moved or changed under a run, a hand-edited config under
``--resume``, selection on a split that does not exist, refused runs that must leave no trace,
``--out`` paths the filesystem refuses, and files of a run folder replaced, damaged or unwritable.
Each ends in one line naming the folder or file and the fix (or is handled), and loses nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import promptmlr
from promptmlr.errors import ConfigError, PromptMLRError, UsageError
from tests.conftest import write_colour_csv

TINY = "openclip:promptmlr-tiny-vit"
QUIET = {"log": lambda *_: None}


def _overrides(cache: Path) -> dict:
    return {"data": {"val_fraction": 0.25},
            "train": {"batch_size": 8, "num_workers": 0, "cache": {"directory": str(cache)}}}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> Path:
    """Two working folders, each with its own ``w5`` dataset (other images and labels)."""
    base = tmp_path_factory.mktemp("places")
    write_colour_csv(base / "here" / "w5", counts=(("train", 24), ("test", 8)), seed=0)
    write_colour_csv(base / "there" / "w5", counts=(("train", 24), ("test", 8)), seed=1)
    return base


@pytest.fixture(scope="module")
def run(places) -> Path:
    """A finished dualcoop run, started from ``here`` with the relative data root ``w5``."""
    previous = Path.cwd()
    os.chdir(places / "here")
    try:
        promptmlr.tune(dataset="csv", data_root="w5", known=0.5, method="dualcoop", backbone=TINY,
                       out=places / "run", epochs=1, overrides=_overrides(places / "cache"), **QUIET)
    finally:
        os.chdir(previous)
    return places / "run"


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def _edit_config(run: Path, edit) -> None:
    values = yaml.safe_load((run / "config.yaml").read_text())
    edit(values)
    (run / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from promptmlr.cli import main

    code = main(list(argv))
    error = capsys.readouterr().err.strip()
    return code, error


# --------------------------------------------------------------------------- the data of a run
@pytest.mark.slow
def test_a_relative_data_root_is_recorded_absolute_and_other_data_is_refused(run, places, tmp_path, monkeypatch):
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["root"] == str((places / "here" / "w5").resolve())
    identity = config["data_identity"]
    assert identity["root"] == config["data"]["root"] and identity["test_split"] == "test"
    assert identity["mask_sha256"] == yaml.safe_load((run / "metrics.json").read_text())["mask_sha256"]
    expected = yaml.safe_load((run / "metrics.json").read_text())["best"]["test_mAP"]

    # evaluated from a folder holding another w5: the run's own data is scored
    monkeypatch.chdir(places / "there")
    assert promptmlr.evaluate(run).metrics["mAP"] == expected

    # a run folder pointing at other data: refused before scoring, nothing written
    moved = _copy(run, tmp_path / "moved")
    _edit_config(moved, lambda values: values["data"].update(root=str(places / "there" / "w5")))
    before = _files(moved)
    with pytest.raises(UsageError) as refused:
        promptmlr.evaluate(moved)
    message = str(refused.value)
    assert "\n" not in message and str(moved) in message and "the test images or labels" in message
    assert "pass --data-root pointing at the run's data" in message and str(places / "here" / "w5") in message
    assert _files(moved) == before
    # another split than the one tested on is identified by the training data
    with pytest.raises(UsageError, match="the partial-label mask .* the training images or labels"):
        promptmlr.evaluate(moved, split="train")

    # --data-root names where the run's own data is now, and is checked like it...
    assert promptmlr.evaluate(moved, data_root=places / "here" / "w5").metrics["mAP"] == expected
    with pytest.raises(UsageError, match="to score other data, name its dataset too: --dataset NAME --data-root"):
        promptmlr.evaluate(moved, data_root=places / "there" / "w5")
    # ...while other data is scored deliberately, by naming its dataset, and the eval file says which
    other = promptmlr.evaluate(moved, "csv", data_root=places / "there" / "w5")
    evaluated = yaml.safe_load((moved / "eval_csv_test.json").read_text())["evaluated"]
    assert other.metrics["mAP"] != expected and evaluated["root"] == str(places / "there" / "w5")


@pytest.mark.slow
def test_resume_checks_the_data_and_follows_it_when_moved(run, places, tmp_path):
    moved = _copy(run, tmp_path / "moved")
    _edit_config(moved, lambda values: values["data"].update(root=str(places / "there" / "w5")))
    before = _files(moved)
    with pytest.raises(UsageError, match=r"was run on other data .* continue it with --resume --data-root"):
        promptmlr.tune(out=moved, resume=True, **QUIET)
    assert _files(moved) == before  # the predictions are not rewritten from other data

    data = shutil.copytree(places / "here" / "w5", tmp_path / "new-place" / "w5")
    result = promptmlr.tune(out=moved, resume=True, data_root=data, **QUIET)
    assert result.metrics["best"] == yaml.safe_load((run / "metrics.json").read_text())["best"]
    assert yaml.safe_load((moved / "config.yaml").read_text())["data"]["root"] == str(data.resolve())

    gone = _copy(run, tmp_path / "gone")
    _edit_config(gone, lambda values: values["data"].update(root=str(tmp_path / "nowhere")))
    with pytest.raises(UsageError, match=r"its data root .*nowhere is not a folder here; continue it with --resume "
                                         r"--data-root"):
        promptmlr.tune(out=gone, resume=True, **QUIET)
    with pytest.raises(UsageError, match="pass --data-root pointing at the run's data"):
        promptmlr.evaluate(gone)


@pytest.mark.slow
def test_a_run_folder_without_a_data_record_is_evaluated_as_before(run, places, tmp_path):
    old = _copy(run, tmp_path / "old")
    _edit_config(old, lambda values: values.pop("data_identity"))
    messages = []
    evaluated = promptmlr.evaluate(old)
    assert evaluated.metrics["mAP"] >= 0 and "records no data identity" in evaluated.notes[0]
    promptmlr.tune(out=old, resume=True, log=messages.append)
    assert any("records no data identity" in message for message in messages), messages


# -------------------------------------------------------------------- a hand-edited config.yaml
@pytest.mark.slow
@pytest.mark.parametrize("edit, changed", [
    (lambda values: values["data"].update(known=0.9), "data.known: 0.5 -> 0.9"),
    (lambda values: values["model"].update(image_size=160), "model.image_size: null -> 160"),
    (lambda values: values["model"]["options"].update(n_ctx=8), "model.options.n_ctx: 16 -> 8"),
    (lambda values: values["model"].update(method="linear", options={}), "model.method: \"dualcoop\" -> \"linear\""),
])
def test_resume_refuses_a_config_edited_since_the_run_started(run, tmp_path, edit, changed):
    edited = _copy(run, tmp_path / "edited")
    _edit_config(edited, edit)
    before = _files(edited)
    with pytest.raises(UsageError) as refused:
        promptmlr.tune(out=edited, resume=True, **QUIET)
    message = str(refused.value)
    assert "\n" not in message and changed in message and "differs from the configuration the run started" in message
    assert f"--config {edited / 'config.yaml'} --out NEW_DIR" in message
    assert _files(edited) == before
    # the fix it names works: the edited config (and its record of the data, which is no setting) as --config
    from promptmlr.config import resolve_config

    key = changed.split(":")[0]
    resolved, written = resolve_config(config_file=edited / "config.yaml").to_dict(), yaml.safe_load(
        (edited / "config.yaml").read_text())
    for part in key.split("."):
        resolved, written = resolved[part], written[part]
    assert resolved == written


@pytest.mark.slow
def test_a_checkpoint_from_before_it_recorded_its_config_is_checked_by_its_tensors(run, tmp_path):
    from promptmlr.checkpoint import load_checkpoint, save_checkpoint

    old = _copy(run, tmp_path / "old")
    state = load_checkpoint(old / "checkpoint.safetensors")
    state.pop("run_config")
    state.pop("rng")
    save_checkpoint(old / "checkpoint.safetensors", state)
    _edit_config(old, lambda values: values["model"]["options"].update(n_ctx=8))
    with pytest.raises(UsageError, match=r"checkpoint.safetensors does not fit dualcoop as configured \(checkpoint "
                                         r"vs config: .*\(3, 16, 32\) vs \(3, 8, 32\)"):
        promptmlr.tune(out=old, resume=True, **QUIET)


def test_config_differences_are_dotted_paths():
    from promptmlr.runs import config_differences

    started = {"data": {"known": 0.5, "root": "a"}, "model": {"options": {"n_ctx": 16}}}
    now = {"data": {"known": 0.9, "root": "a"}, "model": {"options": {"n_ctx": 16, "extra": True}}}
    assert config_differences(started, now) == ["data.known: 0.5 -> 0.9", "model.options.extra: \"(absent)\" -> true"]


# ------------------------------------------------------------------ selection without validation
def test_selecting_on_a_validation_split_that_does_not_exist_is_refused_up_front():
    from promptmlr.config import resolve_config

    with pytest.raises(ConfigError, match=r"train.select_on val .* data.val_fraction is 0 \(no validation split\); "
                                          r"set data.val_fraction above 0 .*or --select-on test"):
        resolve_config("csv", overrides=[{"data": {"val_fraction": 0}}])
    assert resolve_config("csv", overrides=[{"data": {"val_fraction": 0}, "train": {"select_on": "test"}}])
    # zero-shot trains and selects nothing: it may use every training image
    assert resolve_config("csv", overrides=[{"data": {"val_fraction": 0}, "model": {"method": "zeroshot"}}])
    # branch weights fitted on a validation split that does not exist would stay the mean, unsaid
    stacked = {"method": "promptmlr", "options": {"decoupled": True, "branch_losses": True, "fusion": "validated"}}
    with pytest.raises(ConfigError, match=r"model.options.fusion validated .* set data.val_fraction above 0 or "
                                          r"model.options.fusion mean"):
        resolve_config("csv", overrides=[{"data": {"val_fraction": 0}, "train": {"select_on": "test"},
                                          "model": stacked}])


@pytest.mark.slow
def test_a_zero_shot_run_says_nothing_was_selected(places, tmp_path):
    result = promptmlr.tune(dataset="csv", data_root=places / "here" / "w5", method="zeroshot", backbone=TINY,
                            out=tmp_path / "run", overrides={"data": {"val_fraction": 0},
                                                             "train": {"batch_size": 8, "num_workers": 0,
                                                                       "cache": {"enabled": "off"}}}, **QUIET)
    assert "| untrained (nothing to learn) |" in result.table and "selected on" not in result.table


# ---------------------------------------------------------------------------- refused runs, --out
def test_a_refused_run_leaves_no_folder_and_no_lock(places, tmp_path, capsys):
    missing = tmp_path / "no-data"
    common = ["tune", "--dataset", "csv", "--data-root", str(missing), "--backbone", TINY]
    code, error = _cli(capsys, *common, "--out", str(tmp_path / "new" / "deeper" / "run"))
    assert code == 1 and "\n" not in error and "no-data" in error
    assert not (tmp_path / "new").exists()  # every folder it created is gone

    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert _cli(capsys, *common, "--out", str(existing))[0] == 1
    assert _files(existing) == {"notes.txt": b"mine"}  # no .lock; what was there stays

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / ".lock").write_text("")  # left by an earlier run: it was there before, so it stays
    assert _cli(capsys, *common, "--out", str(stale))[0] == 1
    assert _files(stale) == {".lock": b""}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths and links")
def test_an_out_the_filesystem_refuses_is_one_line(places, tmp_path, capsys, monkeypatch):
    common = ["tune", "--dataset", "csv", "--data-root", str(places / "here" / "w5"), "--backbone", TINY]
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, reason in ((tmp_path / ("x" * 300), "file name too long"),
                        (tmp_path / "a-file" / "run", "cannot create the folder (not a directory)"),
                        (tmp_path / "a-file", "is a file, not a folder"),
                        (tmp_path / "dangling", "is a link to")):
        code, error = _cli(capsys, *common, "--out", str(out))
        assert code == 1 and "\n" not in error and str(tmp_path) in error and reason in error, error
        assert "choose another --out" in error or "create that folder" in error, error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "dangling"]
    assert (tmp_path / "a-file").read_text() == "mine"

    # a read-only parent (simulated: the tests may run as root, whom permissions do not stop)
    def read_only(path, *_, **__):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    code, error = _cli(capsys, *common, "--out", str(tmp_path / "ro" / "run"))
    assert code == 1 and "\n" not in error and "cannot create the folder (read-only file system)" in error, error


def test_out_equal_to_the_data_root_is_refused(places, tmp_path):
    data = shutil.copytree(places / "here" / "w5", tmp_path / "w5")
    before = sorted(path.name for path in data.iterdir())
    with pytest.raises(UsageError, match="is the data root: the run's files would mix with the dataset's"):
        promptmlr.tune(dataset="csv", data_root=data, backbone=TINY, out=data, **QUIET)
    assert sorted(path.name for path in data.iterdir()) == before


@pytest.mark.slow
def test_out_through_a_symbolic_link_to_a_folder_is_used(places, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    promptmlr.tune(dataset="csv", data_root=places / "here" / "w5", method="linear", backbone=TINY,
                   out=tmp_path / "link", epochs=1, overrides=_overrides(tmp_path / "cache"), **QUIET)
    assert (tmp_path / "real" / "best.safetensors").is_file()


@pytest.mark.slow
def test_a_run_folder_missing_its_config_or_checkpoint_file_is_named(run, places, tmp_path):
    broken = _copy(run, tmp_path / "broken")
    (broken / "config.yaml").unlink()
    with pytest.raises(UsageError, match=r"holds checkpoint.safetensors, metrics.json, best.safetensors, "
                                         r"last.safetensors but no config.yaml"):
        promptmlr.tune(out=broken, resume=True, **QUIET)
    with pytest.raises(UsageError, match="holds no run"):
        promptmlr.tune(out=tmp_path / "empty", resume=True, **QUIET)

    results = _copy(run, tmp_path / "results")  # results of a run whose config and checkpoint were deleted
    (results / "config.yaml").unlink()
    (results / "checkpoint.safetensors").unlink()
    before = _files(results)
    with pytest.raises(UsageError, match=r"already holds a run; pass --resume .*\(it holds metrics.json"):
        promptmlr.tune(dataset="csv", data_root=places / "here" / "w5", backbone=TINY, out=results, **QUIET)
    assert _files(results) == before  # not overwritten by a new run

    folder = _copy(run, tmp_path / "folder")  # a folder where the checkpoint should be
    (folder / "checkpoint.safetensors").unlink()
    (folder / "checkpoint.safetensors").mkdir()
    with pytest.raises(UsageError, match="checkpoint.safetensors is not a file"):
        promptmlr.tune(out=folder, resume=True, **QUIET)


# ------------------------------------------------------------------ the files of a run folder
@pytest.mark.slow
def test_another_runs_prompts_in_a_run_folder_are_refused(run, places, tmp_path):
    linear = tmp_path / "linear"
    promptmlr.tune(dataset="csv", data_root=places / "here" / "w5", known=0.5, method="linear", backbone=TINY,
                   out=linear, epochs=1, overrides=_overrides(places / "cache"), **QUIET)
    swapped = _copy(run, tmp_path / "swapped")
    shutil.copy(linear / "best.safetensors", swapped / "best.safetensors")
    with pytest.raises(UsageError, match=r"holds linear prompts, but the run in .* is dualcoop: it is another run's"):
        promptmlr.evaluate(swapped)

    other_mask = tmp_path / "other-mask"
    promptmlr.tune(dataset="csv", data_root=places / "here" / "w5", known=0.3, method="dualcoop", backbone=TINY,
                   out=other_mask, epochs=1, overrides=_overrides(places / "cache"), **QUIET)
    shutil.copy(other_mask / "best.safetensors", swapped / "best.safetensors")
    with pytest.raises(UsageError, match="learned with another partial-label mask"):
        promptmlr.evaluate(swapped)
    assert promptmlr.evaluate(swapped / "best.safetensors", "csv", data_root=places / "here" / "w5").metrics


@pytest.mark.slow  # its fixture trains a run
@pytest.mark.parametrize("content", [b"", b"- a\n- list\n", bytes(range(256)), b"{}\n"])
def test_a_run_config_that_is_not_one_is_one_line(run, tmp_path, content):
    broken = _copy(run, tmp_path / "broken")
    (broken / "config.yaml").write_bytes(content)
    before = _files(broken)
    for action in (lambda: promptmlr.evaluate(broken), lambda: promptmlr.tune(out=broken, resume=True, **QUIET)):
        with pytest.raises(PromptMLRError) as caught:
            action()
        assert "\n" not in str(caught.value) and "config.yaml" in str(caught.value)
    assert _files(broken) == before


@pytest.mark.slow  # its fixture trains a run
def test_damaged_or_misplaced_prompts_are_one_line(run, places, tmp_path, capsys):
    broken = _copy(run, tmp_path / "broken")
    (broken / "best.safetensors").write_bytes((broken / "best.safetensors").read_bytes()[:100])
    with pytest.raises(PromptMLRError, match="best.safetensors"):
        promptmlr.evaluate(broken)
    image = places / "here" / "w5" / "images" / "test0.png"
    code, error = _cli(capsys, "predict", str(image), "--prompts", str(run / "checkpoint.safetensors"))
    assert code == 1 and "is a training checkpoint (what --resume continues from), not learned prompts" in error


@pytest.mark.slow
def test_eval_without_metrics_and_eval_into_a_folder_that_cannot_take_it(run, tmp_path, capsys, monkeypatch):
    bare = _copy(run, tmp_path / "bare")
    (bare / "metrics.json").unlink()  # eval needs the prompts and the config, not the training metrics
    (bare / "eval_csv_test.json").unlink(missing_ok=True)
    expected = yaml.safe_load((run / "metrics.json").read_text())["best"]["test_mAP"]
    assert promptmlr.evaluate(bare).metrics["mAP"] == expected

    # a read-only filesystem (simulated: the tests may run as root, whom permissions do not stop)
    (bare / "eval_csv_test.json").unlink()

    def read_only(*_, **__):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("promptmlr.files.tempfile.mkstemp", read_only)
    from promptmlr.cli import main

    code = main(["eval", str(bare)])
    captured = capsys.readouterr()
    assert code == 0 and f"| {expected:.2f} |" in captured.out  # the scores are shown...
    assert "note: could not write" in captured.err and "these scores are not saved" in captured.err  # ...not saved
    assert not (bare / "eval_csv_test.json").exists()


@pytest.mark.slow  # its fixture trains a run
def test_paths_the_filesystem_cannot_look_up_are_one_line(run, places, tmp_path, capsys):
    too_long = str(tmp_path / ("x" * 300))
    image = str(places / "here" / "w5" / "images" / "test0.png")
    for argv in (["eval", too_long], ["export", too_long, "--out", str(tmp_path / "x.safetensors")],
                 ["predict", image, "--prompts", too_long]):
        code, error = _cli(capsys, *argv)
        assert code == 1 and "\n" not in error and "file name too long" in error, (argv, error)


@pytest.mark.slow
def test_export_names_a_file_it_can_write(run, tmp_path):
    nested = promptmlr.export(run, tmp_path / "new" / "folder" / "prompts.safetensors")
    assert nested.read_bytes() == (run / "best.safetensors").read_bytes()  # missing folders are made
    existing = tmp_path / "existing.safetensors"
    existing.write_text("an earlier export")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        promptmlr.export(run, existing)
    assert existing.read_text() == "an earlier export"
    promptmlr.export(run, existing, force=True)  # replaced whole, as any write
    assert existing.read_bytes() == (run / "best.safetensors").read_bytes()
    (tmp_path / "a-file").write_text("mine")
    for out, message in ((tmp_path, "is a folder; name the file to write"),
                         (tmp_path / "a-file" / "x.safetensors", "a-file is not a writable folder"),
                         (tmp_path / ("x" * 300 + ".safetensors"), "cannot write it")):
        with pytest.raises(UsageError, match=message) as refused:
            promptmlr.export(run, out)
        assert "\n" not in str(refused.value)
    assert (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.slow
def test_two_evaluations_at_once_both_finish_and_leave_one_whole_file(run, tmp_path):
    shared = _copy(run, tmp_path / "shared")
    (shared / "eval_csv_test.json").unlink(missing_ok=True)
    code = ("import promptmlr, sys; result = promptmlr.evaluate(sys.argv[1], which='last', num_workers=0); "
            "print(result.metrics['mAP'])")
    other = subprocess.Popen([sys.executable, "-c", code, str(shared)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        mine = promptmlr.evaluate(shared, num_workers=0)
        for _ in range(8):  # evaluate again while the other one runs (it spends seconds importing)
            if other.poll() is not None:
                break
            promptmlr.evaluate(shared, num_workers=0)
    finally:
        theirs, _ = other.communicate(timeout=120)
    assert other.returncode == 0 and float(theirs.strip().splitlines()[-1]) >= 0 and mine.metrics["mAP"] >= 0
    written = json.loads((shared / "eval_csv_test.json").read_text())  # whole: one of the two, never a mix
    assert written["evaluated"]["prompts"] in ("best.safetensors", "last.safetensors")
    assert not [path for path in shared.iterdir() if path.name.startswith(".eval")]


def test_scoring_a_split_without_a_positive_label_is_one_line_before_any_encoding(make_image, tmp_path):
    from promptmlr.api import evaluate_method
    from promptmlr.data import DatasetError, MultiLabelDataset

    paths = [make_image(tmp_path / f"{i}.png") for i in range(2)]
    unlabelled = MultiLabelDataset("toy", "test", ["a", "b"], paths, np.array([[-1, -1], [0, -1]]))

    class Untouchable:  # evaluate_method must refuse before it moves or runs the method
        def __getattr__(self, name):
            raise AssertionError(f"the method was used ({name}) before the labels were checked")

    with pytest.raises(DatasetError, match=r"^toy/test holds no positive label, so its mAP cannot be computed; "):
        evaluate_method(Untouchable(), unlabelled)


@pytest.mark.slow
def test_a_finished_run_without_a_validation_split_is_still_read_and_resumes_past_logistics(run, tmp_path):
    """The rules on what a new run selects on do not apply to a finished run's record, and what only
    says where or how fast a run goes (a cache folder of this machine's) may change before --resume."""
    from promptmlr.config import load_run_config

    copy = _copy(run, tmp_path / "copy")
    values = yaml.safe_load((copy / "config.yaml").read_text())
    values["data"]["val_fraction"] = 0
    (copy / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    assert load_run_config(copy / "config.yaml").data.val_fraction == 0

    moved = _copy(run, tmp_path / "moved")
    values = yaml.safe_load((moved / "config.yaml").read_text())
    values["train"]["cache"]["directory"] = str(tmp_path / "another-cache")
    values["train"]["num_workers"] = 1
    (moved / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    resumed = promptmlr.tune(out=moved, resume=True, **QUIET)  # finished already: nothing left to train
    assert resumed.test_metrics["mAP"] == pytest.approx(json.loads((run / "metrics.json").read_text())
                                                        ["best"]["test_mAP"])


def test_the_data_digest_is_the_same_for_the_same_images_under_another_root(tmp_path):
    from promptmlr.runs import data_sha256

    labels = np.array([[1, -1]], dtype=np.int8)
    here, there = tmp_path / "here", tmp_path / "there"
    digest = data_sha256(here, ["a", "b"], [([here / "photos" / "1.jpg"], labels)])
    assert digest == data_sha256(there, ["a", "b"], [([there / "photos" / "1.jpg"], labels)])
    assert digest != data_sha256(here, ["a", "b"], [([here / "photos" / "2.jpg"], labels)])
    assert digest != data_sha256(here, ["a", "b"], [([here / "photos" / "1.jpg"], -labels)])

