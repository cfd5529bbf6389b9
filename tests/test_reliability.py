"""Faults a demanding user meets: files from elsewhere that could run code, stale caches, two runs in
one folder, bad numbers, a full disk, clashing output names. Each must end in one clear line (or be
handled) and lose nothing."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import promptmlr
from promptmlr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from promptmlr.errors import PromptMLRError, UsageError
from tests.conftest import write_colour_csv

TINY = "openclip:promptmlr-tiny-vit"


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 24), ("test", 8)))


def _tune(root: Path, out: Path, **arguments):
    options = dict(dataset="csv", data_root=root, known=0.5, method="linear", backbone=TINY, out=out, epochs=1,
                   overrides={"train": {"batch_size": 8, "num_workers": 0,
                                        "cache": {"directory": str(out.parent / "cache")}}},
                   log=lambda *_: None)
    return promptmlr.tune(**{**options, **arguments})


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------------ checkpoints
def test_a_checkpoint_holds_data_only_and_roundtrips_exactly(tmp_path):
    import numpy as np
    import torch

    state = {"epoch": 3, "best_score": float("-inf"), "method": {"w": torch.randn(2, 3)},
             "optimizer": {"state": {0: {"step": torch.tensor(4.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
             "ema": None, "history": [{"epoch": 1, "recovery": None}], "mask": np.arange(3, dtype=np.uint32)}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "checkpoint.safetensors", state))
    assert loaded["optimizer"]["state"][0]["step"].item() == 4.0
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(loaded["method"]["w"], state["method"]["w"]) and loaded["best_score"] == float("-inf")
    assert loaded["mask"].dtype == np.uint32 and loaded["history"] == state["history"]
    assert loaded["rng"]["numpy"][1].dtype == np.uint32 and isinstance(loaded["rng"]["python"], tuple)
    odd = {"a/b": torch.ones(2), "a": {"b": torch.zeros(2)}, "scalar": np.float32(0.5), "empty": np.zeros((0, 3))}
    back = load_checkpoint(save_checkpoint(tmp_path / "odd.safetensors", odd))
    assert torch.equal(back["a/b"], torch.ones(2)) and torch.equal(back["a"]["b"], torch.zeros(2))
    assert back["scalar"].dtype == np.float32 and back["empty"].shape == (0, 3)


def test_a_checkpoint_changed_in_place_is_refused(tmp_path):
    import torch

    path = save_checkpoint(tmp_path / "checkpoint.safetensors", {"epoch": 2, "w": torch.ones(64)})
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one bit of a tensor value
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_checkpoint(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoint.safetensors", "checkpoint.pt"])
def test_a_planted_pickle_never_runs_on_resume(colour_data, tmp_path, name):
    run = _tune(colour_data, tmp_path / "run").run_dir
    (run / "checkpoint.safetensors").unlink()
    marker = tmp_path / "code-ran"
    (run / name).write_bytes(pickle.dumps({"epoch": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="pickle") as error:
        promptmlr.tune(out=run, resume=True, log=lambda *_: None)
    assert not marker.exists() and "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 40, b"not a checkpoint at all"])
def test_a_truncated_or_foreign_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"epoch": 1})
    path.write_bytes(path.read_bytes()[:len(content) or 20] if not content.strip(b"\x00") else content)
    with pytest.raises(CheckpointError, match=r"is not a promptmlr checkpoint") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------- stale caches
def test_an_image_replaced_at_the_same_path_gets_new_features(tmp_path):
    from PIL import Image

    from promptmlr.backbones import create_backbone
    from promptmlr.cache import cache_key
    from promptmlr.data import ImageLoadError, build_dataset

    root = write_colour_csv(tmp_path / "data", counts=(("train", 3),))
    dataset = build_dataset("csv", root, "train")
    backbone = create_backbone(TINY)

    def key():
        return cache_key(backbone, dataset, [backbone.transform()], seed=0, dtype="float16")

    before = key()
    assert key() == before
    Image.new("RGB", (32, 32), (0, 0, 255)).save(dataset.image_paths[1])  # same path, new content
    assert key() != before
    changed = key()
    status = os.stat(dataset.image_paths[0])  # same size and bytes, only touched: a new mtime
    os.utime(dataset.image_paths[0], ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    assert key() != changed
    dataset.image_paths[2].unlink()
    with pytest.raises(ImageLoadError, match=r"cannot load image .*train2.png — No such file"):
        key()


# ------------------------------------------------------------------------------------- run folders
@pytest.mark.slow
def test_a_second_run_into_a_locked_folder_refuses_and_a_dead_holders_lock_is_taken_over(colour_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, socket, sys, time\n"
        f"handle = open({str(out / '.lock')!r}, 'a+')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "handle.write(f'process {os.getpid()} on {socket.gethostname()}'); handle.flush()\n"
        "print('locked', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"is in use by process {holder.pid} on .* \(lock .*\.lock\)"):
            _tune(colour_data, out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused run
    finally:
        holder.kill()  # kill -9: the kernel releases its lock, its text stays behind
        holder.wait()
    messages = []
    result = _tune(colour_data, out, log=messages.append)
    assert any(f"taking over the lock {out / '.lock'} of process {holder.pid}" in m for m in messages), messages
    assert result.metrics["best"] and (out / ".lock").read_text() == ""  # released, and no holder named


# --------------------------------------------------------------------------------- bad numbers
@pytest.mark.parametrize("flags, message", [
    (["--set", "train.lr=-1"], r"train.lr must be > 0, got -1"),
    (["--set", "train.batch_size=0"], r"train.batch_size must be >= 1, got 0"),
    (["--epochs", "0"], r"train.epochs must be >= 1, got 0"),
    (["--epochs", "-3"], r"train.epochs must be >= 1, got -3"),
    (["--image-size", "8"], r"model.image_size \(--image-size\) must be >= 16 and <= 4096, got 8"),
    (["--set", "train.cache.views=0"], r"train.cache.views must be >= 1, got 0"),
    (["--set", "train.ema_decay=1.5"], r"train.ema_decay must be >= 0 and < 1, got 1.5"),
    (["--set", "train.recovery.positive_threshold=2"], r"positive_threshold must be >= 0 and <= 1"),
    (["--set", "model.options.logit_scale=0"], r"logit_scale must be > 0, got 0"),
    (["--known", "0"], r"known proportion must be in \(0, 1\]"),
    (["--set", "train.lr=[0.1"], r"--set train.lr=\[0.1: the value is not valid YAML"),
    (["--set", "train"], r"--set expects section.key=value"),
])
def test_bad_numbers_are_one_line_before_anything_is_written(colour_data, tmp_path, capsys, flags, message):
    from promptmlr.cli import main

    out = tmp_path / "run"
    code = main(["tune", "--dataset", "csv", "--data-root", str(colour_data), "--backbone", TINY,
                 "--out", str(out), *flags])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in error and not out.exists(), error
    assert __import__("re").search(message, error), error


@pytest.mark.parametrize("flags, message", [(["--topk", "0"], "--topk must be >= 1, got 0"),
                                            (["--threshold", "1.5"], "--threshold must be >= 0 and <= 1")])
def test_predict_checks_its_numbers(tmp_path, capsys, flags, message):
    from promptmlr.cli import main

    assert main(["predict", str(tmp_path), "--prompts", str(tmp_path), *flags]) == 1
    assert message in capsys.readouterr().err


def test_out_naming_a_file_is_refused(colour_data, tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        _tune(colour_data, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


# ------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("raised", [OSError(errno.ENOSPC, "No space left on device"),
                                    RuntimeError("File write failed: No space left on device (os error 28)")])
def test_a_full_disk_keeps_the_last_good_file_and_says_where(tmp_path, raised):
    from promptmlr.files import DiskFullError, atomic_write, write_text_atomic

    target = write_text_atomic(tmp_path / "checkpoint.safetensors", "the last good one")

    def fill_the_disk(temp: Path) -> None:
        temp.write_text("half")
        raise raised

    with pytest.raises(DiskFullError, match=f"no space left on {tmp_path} while writing checkpoint.safetensors"):
        atomic_write(target, fill_the_disk)
    assert target.read_text() == "the last good one" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    with pytest.raises(ValueError, match="something else"):  # other failures keep their own error
        atomic_write(target, lambda temp: (_ for _ in ()).throw(ValueError("something else")))


# ------------------------------------------------------------------------------ actionable hints
@pytest.mark.slow
def test_hints_name_what_exists_and_missing_images_are_found_before_any_encoding(colour_data, tmp_path):
    import shutil

    run = _tune(colour_data, tmp_path / "run").run_dir
    (run / "best.safetensors").unlink()
    with pytest.raises(UsageError, match="has no best.safetensors but has last.safetensors: pass --which last"):
        promptmlr.evaluate(run)
    assert promptmlr.evaluate(run, which="last").metrics["mAP"] >= 0

    data = tmp_path / "data"
    shutil.copytree(colour_data, data)
    (data / "images" / "test3.png").unlink()
    caches = sorted((tmp_path / "cache").iterdir())
    with pytest.raises(PromptMLRError, match=r"1 image file\(s\) of csv are missing, e\.g\. .*test3\.png"):
        _tune(data, tmp_path / "second")
    assert sorted((tmp_path / "cache").iterdir()) == caches  # nothing was encoded for the new data


def test_a_weight_change_behind_the_same_spec_is_named_as_such(tmp_path):
    import torch

    from promptmlr.backbones import create_backbone
    from promptmlr.models import build_method
    from promptmlr.prompt_files import PromptsFileError, load_prompts, save_prompts

    backbone = create_backbone(TINY)
    path = save_prompts(build_method("linear", backbone, ["red", "green"]), tmp_path / "p.safetensors")
    changed = create_backbone(TINY)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    changed.fingerprint = "0" * 64  # as a new checkpoint file behind the same spec would give
    with pytest.raises(PromptsFileError, match=r"now loads weights 000000000000…: the checkpoint behind that name"):
        load_prompts(path, backbone=changed)


# ------------------------------------------------------------------------------- debris after kill
def test_temporaries_of_killed_processes_are_cleaned_and_live_ones_kept(tmp_path):
    from promptmlr import files

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    stale_file = tmp_path / f".checkpoint.safetensors.{files._SPACE}-{dead}.k2j4x9qz.tmp"
    stale_folder = tmp_path / f".{'a' * 32}.{files._SPACE}-{dead}.abcd1234"
    live_file = tmp_path / f".metrics.json.{files._OWNER}.zzzz0000.tmp"
    other_host = tmp_path / f".metrics.json.00000000-{dead}.yyyy0000.tmp"
    stale_file.write_text("half a checkpoint")
    (stale_folder / "dense.npy").parent.mkdir()
    (stale_folder / "dense.npy").write_bytes(b"half a cache")
    live_file.write_text("being written")
    other_host.write_text("another machine's")
    files.write_text_atomic(tmp_path / "summary.md", "done")
    files.write_text_atomic(tmp_path / "again.md", "the folder is swept once per process")
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {"summary.md", "again.md", live_file.name, other_host.name}


# -------------------------------------------------------------------------------- huge images
def test_a_huge_jpeg_is_decoded_at_reduced_size_and_said_once(tmp_path, capsys):
    import warnings

    from PIL import Image

    from promptmlr.data import images as image_module
    from promptmlr.data import load_image

    path = tmp_path / "huge.jpg"
    Image.new("RGB", (9600, 9600), (20, 120, 200)).save(path, quality=70)  # 92 megapixels: Pillow would warn
    image_module._SAID.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes
        small = load_image(path, draft_size=224)
        again = load_image(path, draft_size=224)
    assert small.size == again.size == (1200, 1200)  # 1/8 scale: still at least twice the 224 px asked
    ordinary = tmp_path / "ordinary.jpg"
    Image.new("RGB", (640, 480), (200, 20, 20)).save(ordinary)
    assert load_image(ordinary, draft_size=224).size == (640, 480)  # under 4x: decoded in full
    assert capsys.readouterr().err.count("decoding large JPEGs at reduced size") == 1
    assert load_image(tmp_path / "huge.jpg").size == (9600, 9600)  # no size asked for: decoded in full


# -------------------------------------------------------------------------------- damaged JPEGs
def test_a_jpeg_with_damaged_scan_data_is_caught_by_verify_and_warned_in_training(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from promptmlr.data import ImageLoadError, load_image
    from promptmlr.data.verify import check_image

    pixels = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    good = tmp_path / "good.jpg"
    Image.fromarray(pixels).save(good, quality=90)
    data = good.read_bytes()
    scan = data.index(b"\xff\xda")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:scan + 200] + data[-2:])  # scan data lost, end marker kept: Pillow decodes it grey
    assert check_image(good) is None
    problem = check_image(cut)
    assert problem.kind == "corrupt" and "damaged JPEG scan data" in problem.reason
    with pytest.raises(ImageLoadError, match=r"cut.jpg — damaged JPEG scan data \(Corrupt JPEG data"):
        load_image(cut, damaged="error")
    capsys.readouterr()
    load_image(cut, damaged="warn")  # as the cache build and predict read
    load_image(cut, damaged="warn")
    load_image(cut)  # a loader without the cache: no check, no cost
    assert capsys.readouterr().err.count(f"warning: {cut}: damaged JPEG scan data") == 1
    padded = tmp_path / "padded.jpg"  # a few stray bytes before a marker: common, harmless, not flagged
    padded.write_bytes(data[:scan] + b"\x00\x00\x00" + data[scan:])
    assert check_image(padded) is None
    assert np.array_equal(np.asarray(load_image(padded)), np.asarray(load_image(good)))
