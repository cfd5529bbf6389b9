"""Faults at the edges: YAML that would expand or nest without end, files far too big, a heatmap
that cannot be written, an absurd input size, a feature cache shared between users, Ctrl-C, a
closed output pipe, progress bars in a log file, and odd values, files and images from an audit.
Each ends in one clear line (or is handled) and loses nothing."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptmlr.errors import ConfigError, PromptMLRError
from promptmlr.settings import read_yaml
from tests.conftest import write_colour_csv

TINY = "openclip:promptmlr-tiny-vit"
REPO = Path(__file__).resolve().parents[1]
BOMB = "model:\n  options:\n    templates: [&a [a,a,a,a,a,a,a,a,a], " + ", ".join(
    f"&{level} [{','.join([f'*{previous}'] * 9)}]" for previous, level in zip("abcdefgh", "bcdefghi")) + "]\n"


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``promptmlr argv`` run in this process."""
    from promptmlr.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def _one_line(error: str) -> str:
    assert "\n" not in error and "Traceback" not in error, error
    return error


# ------------------------------------------------------------------------------------------- YAML
def test_an_alias_bomb_in_config_is_refused_at_once_naming_the_file(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 600  # expanded, 387 million strings: the merge ran out of memory
    started = time.perf_counter()
    with pytest.raises(ConfigError):
        read_yaml(bomb)
    assert time.perf_counter() - started < 1
    code, error = _cli(capsys, "config", "--config", str(bomb))
    assert code == 1
    assert re.search(rf"{re.escape(str(bomb))}: its aliases expand it by [\d,]+ nodes, over the 100,000 allowed",
                     _one_line(error)), error


def test_an_alias_bomb_as_a_received_run_config_is_refused_by_eval(tmp_path, capsys):
    run = tmp_path / "received"
    run.mkdir()
    (run / "config.yaml").write_text(BOMB)
    (run / "best.safetensors").write_bytes(b"")
    code, error = _cli(capsys, "eval", str(run))
    assert code == 1 and f"{run / 'config.yaml'}: its aliases expand it" in _one_line(error), error


@pytest.mark.parametrize("text, message", [
    ("[" * 65 + "]" * 65, "nested more than 64 levels deep"),  # a few hundred levels: RecursionError
    ("a: &a [1, *a]\n", "an alias refers to a node that contains it"),
    ("a0: &a0 {x: 1}\n" + "".join(f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}\n" for i in range(1, 8)),
     "its aliases expand it by"),  # merge keys copy the merged mapping's pairs
    ("train:\n  lr: 0.1\ntrain:\n  epochs: 2\n", "key 'train' appears twice in one mapping (lines 1 and 3)"),
    ("{a: 1, a: 2}", "key 'a' appears twice"),
    ("epochs: " + "9" * 5000, "a value cannot be read: Exceeds the limit"),  # Python's int conversion cap
    pytest.param("[" + "1," * 200_001 + "1]", "more than 200,000 values", marks=pytest.mark.slow),  # never built
])
def test_yaml_beyond_the_bounds_is_refused(text, message):
    from promptmlr.settings import RefusedYAMLError, load_yaml

    with pytest.raises(RefusedYAMLError, match=re.escape(message)):
        load_yaml(text)


def test_yaml_within_the_bounds_reads_as_before():
    from promptmlr.settings import load_yaml

    assert load_yaml("base: &b {x: 1, y: [1, 2]}\nother: {<<: *b, y: 3}\nlist: [*b, *b]\n") == {
        "base": {"x": 1, "y": [1, 2]}, "other": {"x": 1, "y": 3}, "list": [{"x": 1, "y": [1, 2]}] * 2}
    assert load_yaml("[" * 64 + "]" * 64) is not None
    assert load_yaml("a: off\nb: true") == {"a": "off", "b": True}  # YAML 1.2 booleans
    assert load_yaml("a: off\nb: {k: 1, k: 2}", strict=False) == {"a": False, "b": {"k": 2}}  # as PyYAML reads it


def test_every_yaml_read_in_the_package_goes_through_the_bounded_loader():
    unbounded = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "promptmlr").rglob("*.py"))
                 if path.name != "settings.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"yaml\.(safe_load|load|full_load|unsafe_load)\(", line)]
    assert unbounded == []


def test_received_yolo_and_report_yaml_are_bounded(tmp_path):
    from promptmlr.data.textfiles import DatasetError
    from promptmlr.data.yolo import read_data_yaml
    from promptmlr.errors import ReportError
    from promptmlr.report.loading import _read_yaml

    (tmp_path / "data.yaml").write_text(BOMB.replace("model:", "names:"))
    with pytest.raises(DatasetError, match="its aliases expand it"):
        read_data_yaml(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [no, yes]\ntrain: images\n")
    assert read_data_yaml(tmp_path)[1]["names"] == [False, True]  # YOLO's files keep PyYAML's YAML 1.1
    (tmp_path / "config.yaml").write_text(BOMB)
    with pytest.raises(ReportError, match="its aliases expand it"):
        _read_yaml(tmp_path / "config.yaml")


def test_a_config_too_big_to_be_one_is_refused_before_it_is_parsed(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (3 * 2**20))
    started = time.perf_counter()
    with pytest.raises(ConfigError):
        read_yaml(big)
    assert time.perf_counter() - started < 1
    code, error = _cli(capsys, "config", "--config", str(big))
    assert code == 1
    assert f"{big}: 3.0 MiB, over the 2 MiB a config may take" in _one_line(error)


# ---------------------------------------------------------------------------------- descriptions
def test_a_ten_megabyte_descriptions_line_is_one_line_at_once(tmp_path):
    from promptmlr.descriptions import DescriptionsError, load_descriptions

    huge = tmp_path / "huge.txt"
    huge.write_text("red: " + "x" * 10_000_000 + "\n")
    started = time.perf_counter()
    with pytest.raises(DescriptionsError, match=r"huge.txt is 9.5 MiB, over the 2 MiB a descriptions file may take"):
        load_descriptions(huge)
    long = tmp_path / "long.yaml"
    long.write_text("classes:\n  red: [" + "y" * 5000 + "]\n")  # a tokenizer takes seconds per such word
    with pytest.raises(DescriptionsError, match=r"class 'red' has a description of 5,000 characters; CLIP reads"):
        load_descriptions(long)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("name, content, expected", [
    ("bom.txt", "\ufeffred: a red thing\ngreen: grass\n", {"red": ["a red thing"], "green": ["grass"]}),
    ("twice.txt", "red: a red thing\nred: crimson\n", {"red": ["a red thing", "crimson"]}),  # lines add up
    ("on.yaml", "classes:\n  on: [a switch that is on]\n", {"on": ["a switch that is on"]}),  # not True
    ("alias.yaml", "classes:\n  red: &p [a colour]\n  blue: *p\n", {"red": ["a colour"], "blue": ["a colour"]}),
])
def test_descriptions_files_read_as_written(tmp_path, name, content, expected):
    from promptmlr.descriptions import load_descriptions

    (tmp_path / name).write_text(content, encoding="utf-8")
    assert load_descriptions(tmp_path / name) == expected


@pytest.mark.parametrize("name, content, message", [
    ("twice.yaml", "classes:\n  red: [a]\n  red: [b]\n", "key 'red' appears twice in one mapping (lines 2 and 3)"),
    ("bomb.yaml", BOMB.replace("model:", "classes:"), "its aliases expand it by"),
    ("folder", None, "is a folder; name a YAML or text file"),
])
def test_bad_descriptions_files_are_one_line(tmp_path, name, content, message):
    from promptmlr.descriptions import DescriptionsError, load_descriptions

    path = tmp_path / name
    path.mkdir() if content is None else path.write_text(content)
    with pytest.raises(DescriptionsError, match=re.escape(message)) as error:
        load_descriptions(path)
    _one_line(str(error.value))


def test_descriptions_that_miss_or_add_classes_name_them():
    from promptmlr.descriptions import DescriptionsError, check_classes

    with pytest.raises(DescriptionsError, match=r"missing classes \['green'\]; unknown classes \['cat'\]"):
        check_classes({"red": ["r"], "cat": ["c"]}, ["red", "green"], "mine.txt")
    with pytest.raises(DescriptionsError, match=r"missing classes \['red'\]"):
        check_classes({}, ["red"], "empty.txt")


# ------------------------------------------------------------------------------------- heatmaps
@pytest.fixture(scope="module")
def tiny_method():
    from promptmlr.backbones import create_backbone
    from promptmlr.models import build_method

    return build_method("dualcoop", create_backbone(TINY), ["red", "green", "blue"], None)


@pytest.mark.slow
def test_a_heatmap_that_cannot_be_written_is_reported_and_the_others_go_on(tiny_method, tmp_path, make_image,
                                                                         capsys):
    from promptmlr.inference import heatmap_name, predict_images

    images = [make_image(tmp_path / "in" / "first.png"), make_image(tmp_path / "in" / ("n" * 250 + ".png")),
              make_image(tmp_path / "in" / "blocked.png"), make_image(tmp_path / "in" / "last.png")]
    heatmaps = tmp_path / "heatmaps"
    (heatmaps / heatmap_name(images[2])).mkdir(parents=True)  # the file cannot be put where a folder is
    predictions = predict_images(tiny_method, images, threshold=0.0, heatmap_dir=heatmaps)
    assert all(p.error is None and len(p.labels) == 3 for p in predictions)  # every image keeps its labels
    assert [p.heatmap is not None for p in predictions] == [True, True, False, True]
    long_name = predictions[1].heatmap.name
    assert len(long_name.encode()) == 255 and long_name.startswith("n" * 200) and long_name.endswith(".png")
    blocked = predictions[2]
    assert blocked.heatmap_error.startswith(f"heatmap not written to {heatmaps / heatmap_name(images[2])}")
    assert blocked.as_dict()["heatmap_error"] == blocked.heatmap_error
    assert "heatmap_error" not in predictions[0].as_dict()  # the JSON of a normal image is as before
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"warning: {images[2]}: heatmap not written" in err
    assert not [p for p in heatmaps.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_heatmaps_naming_a_file_is_refused_before_any_work(tiny_method, tmp_path, make_image):
    from promptmlr.errors import UsageError
    from promptmlr.inference import predict_images

    (tmp_path / "taken").write_text("mine")
    with pytest.raises(UsageError, match="--heatmaps .*taken is a file; name a folder"):
        predict_images(tiny_method, [make_image(tmp_path / "a.png")], heatmap_dir=tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_file_name_at_the_filesystem_limit_can_be_written_atomically(tmp_path):
    from promptmlr.files import write_text_atomic

    name = "é" * 127 + "x"  # 255 bytes; its temporary's name is cut to fit beside it
    assert write_text_atomic(tmp_path / name, "fits").read_text() == "fits"
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ----------------------------------------------------------------------------------- image size
@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 4), ("test", 2)))


@pytest.mark.parametrize("command", ["tune", "zeroshot"])
def test_an_absurd_image_size_is_refused_saying_why(colour_data, tmp_path, capsys, command):
    out = tmp_path / "run"
    extra = ["--out", str(out)] if command == "tune" else []
    code, error = _cli(capsys, command, "--dataset", "csv", "--data-root", str(colour_data), "--backbone", TINY,
                       "--image-size", "100000", *extra)
    assert code == 1 and not out.exists()
    assert re.search(r"model.image_size \(--image-size\) must be <= 4096, got 100000: CLIP is trained at 224-448 px"
                     r".*111.8 GiB", _one_line(error)), error


def test_the_image_size_bound_holds_for_every_backbone_built():
    from promptmlr.api import describe_config
    from promptmlr.backbones import create_backbone

    with pytest.raises(ConfigError, match="the backbone's image_size must be <= 4096, got 100000"):
        create_backbone(TINY, image_size=100000)  # as a received prompts file's header could ask
    with pytest.raises(ConfigError, match="must be a whole number of pixels, got '64'"):
        create_backbone(TINY, image_size="64")
    assert {row.key: row.allowed for row in describe_config()}["model.image_size"] == "[16, 4096]"


# ---------------------------------------------------------------------------------- feature cache
def test_cache_folders_take_the_umask_not_mkdtemps_0700(tmp_path):
    from promptmlr.files import atomic_directory

    previous = os.umask(0o002)
    try:
        folder = atomic_directory(tmp_path / "shared", lambda temp: (temp / "meta.json").write_text("{}"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775
    assert stat.S_IMODE((folder / "meta.json").stat().st_mode) == 0o664


@pytest.fixture(scope="module")
def small_cache_inputs(tmp_path_factory):
    from promptmlr.backbones import create_backbone
    from promptmlr.data import build_dataset

    root = write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 4),))
    backbone = create_backbone(TINY)
    return backbone, build_dataset("csv", root, "train")


def _build(inputs, root: Path):
    from promptmlr.cache import build_or_open_cache

    backbone, dataset = inputs
    return build_or_open_cache(backbone, dataset, [backbone.transform()], root, seed=0, batch_size=2, num_workers=0)


@pytest.mark.slow
def test_a_shared_cache_is_readable_by_others_and_read_without_writing(small_cache_inputs, tmp_path, monkeypatch):
    import numpy as np

    from promptmlr import cache as cache_module

    previous = os.umask(0o022)
    try:
        built = _build(small_cache_inputs, tmp_path / "cache")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [built.directory, *built.directory.iterdir()]}
    assert modes == {built.directory.name: 0o755, "meta.json": 0o644, "global.npy": 0o644, "dense.npy": 0o644}
    shared = [*built.directory.iterdir(), built.directory, tmp_path / "cache"]
    for path in shared:  # another user's, read-only to this one
        path.chmod(0o555 if path.is_dir() else 0o444)

    def no_writing(*args, **kwargs):
        raise AssertionError("a ready cache was written to")

    monkeypatch.setattr(cache_module, "atomic_directory", no_writing)
    monkeypatch.setattr(cache_module, "_check_free_space", no_writing)
    try:
        again = _build(small_cache_inputs, tmp_path / "cache")
        assert np.array_equal(again.global_features, built.global_features)
    finally:
        for path in shared:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.slow
def test_a_cache_root_this_user_cannot_write_is_one_line_naming_it_and_the_fix(small_cache_inputs, tmp_path,
                                                                             monkeypatch):
    import tempfile

    from promptmlr.cache import CacheAccessError

    def denied(*args, dir=None, **kwargs):  # as mkdtemp fails for a user without write permission there
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(CacheAccessError, match=rf"cannot write the feature cache in {tmp_path / 'cache'} \("
                                               r"Permission denied: .*\); point train.cache.directory at a folder"):
        _build(small_cache_inputs, tmp_path / "cache")


@pytest.mark.slow
def test_a_cache_this_user_cannot_read_is_one_line_not_a_rebuild(small_cache_inputs, tmp_path, monkeypatch):
    from promptmlr.cache import CacheAccessError

    built = _build(small_cache_inputs, tmp_path / "cache")
    read_text = Path.read_text

    def unreadable(self, *args, **kwargs):  # root reads anything: another user's 0700 cache, simulated
        if self.name == "meta.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(CacheAccessError, match=rf"cannot read the feature cache {built.directory} \(Permission "
                                               rf"denied\).*chmod -R a\+rX.*train.cache.directory"):
        _build(small_cache_inputs, tmp_path / "cache")
    assert (built.directory / "meta.json").is_file()  # nothing removed


@pytest.mark.slow
def test_a_damaged_cache_that_cannot_be_removed_is_refused_not_trusted(small_cache_inputs, tmp_path, monkeypatch):
    import shutil

    from promptmlr import cache as cache_module

    built = _build(small_cache_inputs, tmp_path / "cache")
    (built.directory / "global.npy").write_bytes(b"damaged")
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # another user's: not ours to remove
    with pytest.raises(cache_module.CacheAccessError, match=r"is damaged and this user cannot remove it"):
        _build(small_cache_inputs, tmp_path / "cache")


def test_a_cache_directory_that_is_a_file_is_refused_before_the_run_folder_is_written(colour_data, tmp_path,
                                                                                     capsys):
    (tmp_path / "cachefile").write_text("mine")
    out = tmp_path / "run"
    code, error = _cli(capsys, "tune", "--dataset", "csv", "--data-root", str(colour_data), "--backbone", TINY,
                       "--out",
                       str(out), "--set", f"train.cache.directory={tmp_path / 'cachefile' / 'features'}")
    assert code == 1 and (tmp_path / "cachefile").read_text() == "mine"
    assert f"{tmp_path / 'cachefile'} is a file; point train.cache.directory" in _one_line(error)
    assert not (out / "config.yaml").exists()


def test_without_a_home_directory_caches_go_to_the_temp_folder(monkeypatch):
    from promptmlr import files

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))  # HOME unset and no passwd entry (containers)
    import tempfile

    assert files.user_cache_dir("features") == Path(tempfile.gettempdir()) / f"promptmlr-{os.getuid()}" / "features"


def test_tmpdir_pointing_nowhere_does_not_matter_to_atomic_writes(tmp_path, monkeypatch):
    import tempfile

    from promptmlr.files import atomic_directory, write_text_atomic

    monkeypatch.setenv("TMPDIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert write_text_atomic(tmp_path / "a.txt", "a").read_text() == "a"  # temporaries go beside their target
    assert atomic_directory(tmp_path / "d", lambda temp: (temp / "meta.json").write_text("{}")).is_dir()


# --------------------------------------------------------------------------------- Ctrl-C, pipes
def test_ctrl_c_in_tune_is_one_line_with_the_resume_command_and_status_130(tmp_path, capsys, monkeypatch):
    from promptmlr import api
    from promptmlr.errors import RunInterrupted

    run = tmp_path / "my run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")

    def interrupted(*args, **kwargs):
        raise RunInterrupted(run)

    monkeypatch.setattr(api, "tune", interrupted)
    code, error = _cli(capsys, "tune", "--out", str(run))
    assert code == 130
    assert _one_line(error) == (f"promptmlr tune: interrupted; continue {run} from the start (no epoch had "
                                f"finished) with: promptmlr tune --out '{run}' --resume")
    (run / "checkpoint.safetensors").write_bytes(b"")
    assert "from its last checkpoint with" in _cli(capsys, "tune", "--out", str(run))[1]
    (run / "config.yaml").unlink()
    assert _cli(capsys, "tune")[1].endswith(f"interrupted before {run} held a run; start it again")

    monkeypatch.setattr(api, "predict", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert _cli(capsys, "predict", str(tmp_path), "--prompts", str(tmp_path)) == (130, "promptmlr predict: interrupted")


def test_the_api_names_the_run_an_interrupt_leaves(tmp_path, monkeypatch):
    from promptmlr import api
    from promptmlr.config import RunConfig
    from promptmlr.errors import RunInterrupted

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_run_locked", ctrl_c)
    with pytest.raises(RunInterrupted) as caught:
        api.run(RunConfig(), tmp_path / "run", log=lambda *_: None)
    assert caught.value.run_dir == tmp_path / "run" and isinstance(caught.value, KeyboardInterrupt)


def _tune_command(out: Path, data: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "promptmlr", "tune", "--dataset", "csv", "--data-root", str(data), "--backbone", TINY,
            "--method", "linear", "--epochs", str(epochs), "--out", str(out), "--set", "train.batch_size=4",
            "--set", "train.num_workers=0", "--set", f"train.cache.directory={out.parent / 'cache'}"]


@pytest.mark.slow
def test_a_real_sigint_during_tune_ends_in_one_line_naming_the_resume_command(tmp_path):
    data = write_colour_csv(tmp_path / "data", counts=(("train", 16), ("test", 4)))
    out = tmp_path / "run"
    process = subprocess.Popen(_tune_command(out, data, 100_000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        while not process.stdout.readline().startswith("epoch 2 |"):  # a checkpoint is on disk
            assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    last = err.strip().splitlines()[-1]
    assert process.returncode == 130 and "Traceback" not in err, err
    assert last == (f"promptmlr tune: interrupted; continue {out} from its last checkpoint with: "
                    f"promptmlr tune --out {out} --resume")
    assert (out / "checkpoint.safetensors").is_file() and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "promptmlr", "config"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=REPO)
    process.stdout.close()  # as `promptmlr config | head -1` leaves it
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == ""


# ---------------------------------------------------------------------------------- progress bars
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _steps(stream, pause: float = 0.0, **options) -> str:
    from promptmlr.progress import progress_bar

    bar = progress_bar(range(200), file=stream, **options)
    for step in bar:
        bar.set_postfix(loss=f"{step:.4f}")
        time.sleep(pause)
    bar.close()
    return stream.getvalue()


def test_progress_bars_in_a_log_file_stay_quiet_and_on_a_terminal_redraw(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.delenv("TQDM_DELAY", raising=False)
    assert _steps(io.StringIO(), leave=False) == ""  # a short bar in a log leaves no trace
    on_terminal = _steps(_Terminal(), leave=False)
    assert on_terminal.count("\r") > 20 and "loss=" in on_terminal  # as tqdm always drew it
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    monkeypatch.setenv("TQDM_DELAY", "0")  # the user's own tqdm settings win
    assert _steps(io.StringIO(), leave=False).count("loss=") > 20


def test_a_long_bar_in_a_log_file_shows_at_the_log_interval(monkeypatch):
    from promptmlr import progress

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.delenv("TQDM_DELAY", raising=False)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    log = _steps(io.StringIO(), pause=0.001, desc="epoch 1/1", leave=True)
    lines = [line for line in log.replace("\r", "\n").splitlines() if line.strip()]
    assert 2 <= len(lines) <= 40 and lines[-1].startswith("epoch 1/1: 100%"), lines


# ------------------------------------------------------------------------------- audit: --set, --config
@pytest.mark.parametrize("assignment, message", [
    ("train.lr=.nan", "train.lr: expected a finite float, got nan"),
    ("train.lr=inf", "train.lr: expected a finite float, got 'inf'"),
    ("train.epochs=1e3", "train.epochs: expected int, got '1e3'"),
    ("train.epochs=true", "train.epochs: expected int, got True"),
    ("data.known=0.5.", "data.known: expected a finite float, got '0.5.'"),
    ("train.=1", "train: unknown key ''"),
    ("tráin.lr=1", "unknown key 'tráin'"),
    ("train.seed=99999999999999999999999", "train.seed must be >= 0 and <= 4294967295"),
    ("data.options.x=&a [*a]", "an alias refers to a node that contains it"),
    ("data.options.x=" + "[" * 70 + "]" * 70, "nested more than 64 levels deep"),
])
def test_odd_set_values_are_one_line(capsys, assignment, message):
    code, error = _cli(capsys, "config", "--set", assignment)
    assert code == 1 and message in _one_line(error), error


@pytest.mark.parametrize("name, content, message", [
    ("folder", None, "is a folder; name a YAML file"),
    ("list.yaml", "- a\n- b\n", "list.yaml: expected a mapping of sections (data:, model:, train:), got list"),
    ("scalar.yaml", "42\n", "expected a mapping of sections (data:, model:, train:), got int 42"),
    ("binary.yaml", b"\xe7\x00\xff" * 50, "binary.yaml: not valid YAML: 'utf-8' codec can't decode"),
    ("tabs.yaml", "train:\n\tlr: 1\n", "tabs.yaml: not valid YAML: while scanning"),
    ("twice.yaml", "train:\n  lr: 0.1\ntrain:\n  epochs: 2\n", "key 'train' appears twice"),
    ("code.yaml", "train: !!python/object/apply:os.system [echo]\n", "could not determine a constructor"),
])
def test_odd_config_files_are_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, error = _cli(capsys, "config", "--config", str(path))
    assert code == 1 and message in _one_line(error), error


def test_an_empty_config_or_one_with_a_byte_order_mark_reads_as_meant(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbftrain:\n  lr: 0.5\n")
    assert read_yaml(tmp_path / "empty.yaml") == {} and read_yaml(tmp_path / "bom.yaml") == {"train": {"lr": 0.5}}


def test_a_pipe_or_device_as_config_is_refused_without_reading_it(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.yaml")  # a read would block forever
    code, error = _cli(capsys, "config", "--config", str(tmp_path / "fifo.yaml"))
    assert code == 1 and "is not a regular file (a pipe or device)" in _one_line(error)
    with pytest.raises(PromptMLRError, match="/dev/zero is not a regular file"):
        read_yaml("/dev/zero")


# ------------------------------------------------------------------------------- audit: images
@pytest.mark.slow
def test_odd_images_are_labelled_or_named_one_by_one(tiny_method, tmp_path):
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    from promptmlr.inference import expand_images, predict_images

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one-pixel.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(folder / "sixteen-bit.png")
    frames = [Image.new("RGB", (32, 32), colour) for colour in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 400 megapixels claimed in 60 bytes
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    (folder / "notes.txt").write_text("not an image: not picked up from a folder")
    (folder / "text.jpg").write_text("not an image, whatever its name")
    predictions = {p.image.name: p for p in predict_images(tiny_method, expand_images([folder]), threshold=0.0)}
    assert sorted(predictions) == ["animated.gif", "bomb.png", "cmyk.jpg", "one-pixel.png", "sixteen-bit.png",
                                   "text.jpg"]
    assert "DecompressionBombError" in predictions["bomb.png"].error
    assert "not an image file Pillow can read" in predictions["text.jpg"].error
    assert all(len(p.labels) == 3 and p.error is None for name, p in predictions.items()
               if name not in ("bomb.png", "text.jpg"))


def test_a_folder_without_images_is_one_line(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("x")
    code, error = _cli(capsys, "predict", str(tmp_path), "--prompts", str(tmp_path))
    assert code == 1 and f"no images found in {tmp_path}" in _one_line(error)
