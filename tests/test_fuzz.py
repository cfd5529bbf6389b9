"""Fuzz and fault suite: damaged bytes in every file the tool reads, damaged images, property-based
tests of the label parsers and the partial-label mask, and ``kill -9`` during ``tune`` followed by
``--resume``. Every damaged input must end in a one-line :class:`PromptMLRError` (or, for caches,
a rebuild), never a traceback and never a silently wrong result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import promptmlr
from promptmlr.errors import PromptMLRError
from tests.conftest import write_colour_csv

TINY = "openclip:promptmlr-tiny-vit"
SEEDS = range(6)


def _damaged(content: bytes, seed: int) -> bytes:
    """One of six damages, chosen by ``seed``: empty, truncated, random bytes, bit flips in the
    header, a zeroed block, or the same length of noise."""
    rng = np.random.default_rng(seed)
    kind = seed % 6
    if kind == 0:
        return b""
    if kind == 1:
        return content[:max(1, len(content) // int(rng.integers(2, 8)))]
    if kind == 2:
        return rng.bytes(int(rng.integers(1, 4096)))
    data = bytearray(content)
    if kind == 3:
        for position in rng.integers(0, min(len(data), 256), size=8):
            data[position] ^= 1 << int(rng.integers(0, 8))
    elif kind == 4:
        start = int(rng.integers(0, max(1, len(data) - 64)))
        data[start:start + 64] = bytes(min(64, len(data) - start))
    else:
        data = bytearray(rng.bytes(len(data)))
    return bytes(data)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_colour_csv(tmp_path_factory.mktemp("colours"), counts=(("train", 24), ("test", 8)))


@pytest.fixture(scope="module")
def finished_run(colour_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-run") / "run"
    promptmlr.tune(dataset="csv", data_root=colour_data, known=0.5, method="promptmlr", backbone=TINY, out=out,
                   epochs=1, overrides={"train": {"batch_size": 8, "num_workers": 0,
                                                  "cache": {"directory": str(out.parent / "cache")}}},
                   log=lambda *_: None)
    return out


def _one_line_error(action) -> PromptMLRError:
    with pytest.raises(PromptMLRError) as caught:
        action()
    assert "\n" not in str(caught.value), str(caught.value)
    return caught.value


# --------------------------------------------------------------------------- files the tool reads
@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_run_files_are_one_line_errors(finished_run, tmp_path, seed):
    from promptmlr.checkpoint import load_checkpoint
    from promptmlr.config import load_run_config
    from promptmlr.prompt_files import load_prompts
    from promptmlr.report import load_predictions, load_run

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    readers = {"best.safetensors": lambda: load_prompts(run / "best.safetensors"),
               "checkpoint.safetensors": lambda: load_checkpoint(run / "checkpoint.safetensors"),
               "config.yaml": lambda: load_run_config(run / "config.yaml"),
               "metrics.json": lambda: load_run(run),
               "predictions_test.npz": lambda: load_predictions(run)}
    for name, read in readers.items():
        original = (run / name).read_bytes()
        (run / name).write_bytes(_damaged(original, seed))
        try:
            read()  # a damage can leave a readable file (a flipped digit in YAML): then it must load
        except PromptMLRError as error:
            assert "\n" not in str(error), (name, str(error))
        (run / name).write_bytes(original)


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_label_and_config_files_are_one_line_errors(colour_data, tmp_path, seed):
    from promptmlr.config import resolve_config
    from promptmlr.data import build_dataset, read_label_matrix
    from promptmlr.descriptions import load_descriptions

    data = tmp_path / "data"
    shutil.copytree(colour_data, data)
    (data / "train.csv").write_bytes(_damaged((data / "train.csv").read_bytes(), seed))
    (data / "labels.txt").write_bytes(_damaged(b"1,-1,0\n0,1,1\n", seed))
    (data / "config.yaml").write_bytes(_damaged(b"train:\n  lr: 0.01\n  epochs: 3\n", seed))
    (data / "classes.yaml").write_bytes(_damaged(b"classes:\n  red: [a red thing]\n", seed))
    for read in (lambda: build_dataset("csv", data, "train"), lambda: read_label_matrix(data / "labels.txt"),
                 lambda: resolve_config("csv", data / "config.yaml"),
                 lambda: load_descriptions(data / "classes.yaml")):
        try:
            read()
        except PromptMLRError as error:
            assert "\n" not in str(error), str(error)


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_images_name_the_file(tmp_path, seed, make_image):
    from promptmlr.data import ImageLoadError, load_image

    for suffix, options in ((".png", {}), (".jpg", {"quality": 90})):
        path = make_image(tmp_path / f"image{suffix}", size=(48, 40), **options)
        damaged = _damaged(path.read_bytes(), seed)
        path.write_bytes(damaged)
        try:
            image = load_image(path)
        except ImageLoadError as error:
            assert str(path) in str(error) and "\n" not in str(error)
        else:  # a damage that left a decodable image (noise in pixel data): it decodes whole
            assert image.size == (48, 40) and seed % 6 not in (0, 2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_a_damaged_cache_is_rebuilt_not_trusted(colour_data, tmp_path, seed, capsys):
    from promptmlr.backbones import create_backbone
    from promptmlr.cache import build_or_open_cache
    from promptmlr.data import build_dataset

    dataset = build_dataset("csv", colour_data, "test")
    backbone = create_backbone(TINY)

    def cache():
        return build_or_open_cache(backbone, dataset, [backbone.transform()], tmp_path, 0, 8, 0)

    built = cache()
    expected = np.array(built.global_features)
    name = ("meta.json", "global.npy", "dense.npy")[seed % 3]
    target = built.directory / name
    damaged = _damaged(target.read_bytes(), seed)
    if seed % 6 == 5 and name != "meta.json":  # same-length noise in an .npy: the header breaks with it
        damaged = b"\x00" * 16 + damaged[16:]
    target.write_bytes(damaged)
    reopened = cache()
    np.testing.assert_array_equal(np.array(reopened.global_features), expected)
    assert "building it again" in capsys.readouterr().out


# ----------------------------------------------------------------------------- property-based
label_matrices = arrays(np.int8, st.tuples(st.integers(1, 30), st.integers(1, 12)),
                        elements=st.sampled_from([1, -1, 0]))


@settings(max_examples=60, deadline=None)
@given(labels=label_matrices)
def test_label_files_roundtrip(tmp_path_factory, labels):
    from promptmlr.data import read_label_matrix, write_label_matrix

    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    write_label_matrix(path, labels)
    np.testing.assert_array_equal(read_label_matrix(path), labels)


@settings(max_examples=80, deadline=None)
@given(labels=label_matrices, known=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1),
       scheme=st.sampled_from(["hcp", "dualcoop"]))
def test_the_mask_only_hides_and_is_reproducible(labels, known, seed, scheme):
    from promptmlr.data import make_partial_labels

    partial = make_partial_labels(labels, known, seed, scheme)
    assert partial.shape == labels.shape and partial.dtype == np.int8
    kept = partial != 0
    np.testing.assert_array_equal(partial[kept], labels[kept])  # nothing is flipped, only hidden
    assert not (kept & (labels == 0)).any()
    np.testing.assert_array_equal(make_partial_labels(labels, known, seed, scheme), partial)
    if known == 1.0:
        np.testing.assert_array_equal(partial, labels)


@settings(max_examples=60, deadline=None)
@given(labels=label_matrices, fraction=st.floats(0.05, 0.5), seed=st.integers(0, 1000))
def test_the_validation_split_partitions_the_rows(labels, fraction, seed):
    from promptmlr.data import split_validation

    try:
        train, val = split_validation(labels, fraction, seed)
    except PromptMLRError:  # too few images to hold out any: refused in words
        return
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(len(labels)))
    assert list(train) == sorted(train) and list(val) == sorted(val)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=200))
def test_the_label_parser_takes_any_text_without_a_traceback(tmp_path_factory, text):
    from promptmlr.data import read_label_matrix

    path = tmp_path_factory.mktemp("text") / "labels.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else None
    if not path.exists():
        return
    try:
        labels = read_label_matrix(path)
    except PromptMLRError as error:
        assert "\n" not in str(error)
    else:
        assert set(np.unique(labels)) <= {-1, 0, 1}


# ------------------------------------------------------------------------------------ kill -9
def _tune_command(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "promptmlr", "tune", "--dataset", "csv", "--data-root", str(data), "--known",
            "0.5", "--backbone", TINY, "--method", "promptmlr", "--epochs", "8", "--out", str(out),
            "--set", "train.batch_size=8", "--set", "train.num_workers=0",
            "--set", f"train.cache.directory={cache}", *extra]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_result(colour_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_tune_command(colour_data, reference, tmp_path / "cache"), check=True, env=env,
                   capture_output=True)
    expected = json.loads((reference / "metrics.json").read_text())
    rng = np.random.default_rng(0)
    killed = 0
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        process = subprocess.Popen(_tune_command(colour_data, out, tmp_path / f"cache{attempt}"), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (out / "checkpoint.safetensors").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.25)))  # somewhere in the epochs after the first checkpoint
        finished_first = (out / "metrics.json").exists()
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed += process.returncode == -signal.SIGKILL and not finished_first
        subprocess.run(_tune_command(colour_data, out, tmp_path / f"cache{attempt}")[:4] +
                       ["--out", str(out), "--resume"], check=True, env=env, capture_output=True)
        resumed = json.loads((out / "metrics.json").read_text())
        for key in ("best_epoch", "best", "last"):
            assert _without_times(resumed[key]) == _without_times(expected[key]), (attempt, key)
        assert [_without_times(r) for r in resumed["history"]] == [_without_times(r) for r in expected["history"]]
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert killed >= 2, "the kills landed after the runs had finished: nothing was tested"


def _without_times(record):
    return {key: value for key, value in record.items() if key != "seconds"} if isinstance(record, dict) else record
