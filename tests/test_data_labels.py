"""Partial-label masks: the published HCP files reproduced bit for bit, the DualCoOp variant, hashes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from promptmlr.cli import main
from promptmlr.data import DatasetError, make_partial_labels, mask_sha256, read_label_matrix, write_label_matrix
from promptmlr.data.labels import format_label_matrix

PROPORTIONS = [f"0.{i}" for i in range(1, 10)]


@pytest.fixture(scope="module")
def hcp_files(shared_data):
    return shared_data / "voc2007-hcp-partial-labels"


@pytest.fixture(scope="module")
def original_train(hcp_files):
    return read_label_matrix(hcp_files / "original-labels" / "train.txt")


def test_original_labels_are_the_voc_trainval_matrix(original_train):
    assert original_train.shape == (5011, 20)
    assert original_train.dtype == np.int8
    assert set(np.unique(original_train)) == {-1, 1}


@pytest.mark.parametrize("proportion", PROPORTIONS)
def test_hcp_protocol_reproduces_published_file_bit_for_bit(hcp_files, original_train, proportion):
    published = hcp_files / "partial-labels" / f"train_proportion_{proportion}.txt"
    partial = make_partial_labels(original_train, float(proportion), seed=0)
    np.testing.assert_array_equal(partial, read_label_matrix(published))
    assert format_label_matrix(partial).encode() == published.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("proportion", ["0.1", "0.5", "0.9"])
def test_data_mask_command_writes_the_published_bytes(hcp_files, tmp_path, capsys, proportion):
    out = tmp_path / "partial.txt"
    status = main(["data", "mask", "--labels", str(hcp_files / "original-labels" / "train.txt"),
                   "--known", proportion, "--out", str(out)])
    assert status == 0
    published = hcp_files / "partial-labels" / f"train_proportion_{proportion}.txt"
    assert out.read_bytes() == published.read_bytes()
    assert f"mask sha256 {mask_sha256(read_label_matrix(published))}" in capsys.readouterr().out


def test_hcp_scheme_equals_the_legacy_global_generator_without_touching_it():
    labels = np.where(np.random.RandomState(3).rand(40, 7) < 0.3, 1, -1)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    partial = make_partial_labels(labels, 0.4, seed=5)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global generator untouched
    np.random.seed(5)
    expected = np.where(np.random.random(labels.shape) < 0.4, labels, 0)
    np.testing.assert_array_equal(partial, expected)


def test_dualcoop_scheme_equals_torch_rand_after_manual_seed():
    labels = np.where(np.random.RandomState(0).rand(30, 11) < 0.2, 1, -1)
    partial = make_partial_labels(labels, 0.5, seed=7, scheme="dualcoop")
    torch.manual_seed(7)
    keep = (torch.rand(30, 11) < 0.5).numpy()
    np.testing.assert_array_equal(partial, np.where(keep, labels, 0))
    assert not np.array_equal(partial, make_partial_labels(labels, 0.5, seed=7, scheme="hcp"))


def test_masking_hides_positives_and_negatives_alike_and_keeps_unknowns():
    labels = np.tile(np.array([1, -1, 0], dtype=np.int8), (2000, 1))
    partial = make_partial_labels(labels, 0.25)
    assert (partial[:, 2] == 0).all()
    for column, value in ((0, 1), (1, -1)):
        kept = (partial[:, column] == value).mean()
        assert 0.2 < kept < 0.3
        assert set(np.unique(partial[:, column])) == {0, value}
    np.testing.assert_array_equal(labels[:, 0], 1)  # input untouched


def test_known_one_keeps_everything():
    labels = np.array([[1, -1], [-1, 1]])
    np.testing.assert_array_equal(make_partial_labels(labels, 1.0), labels)


@pytest.mark.parametrize("known", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf, True, "0.5"])
def test_known_outside_zero_one_is_an_error(known):
    with pytest.raises(DatasetError, match="known proportion"):
        make_partial_labels(np.ones((2, 2)), known)


def test_unknown_scheme_lists_the_schemes():
    with pytest.raises(DatasetError, match="hcp, dualcoop"):
        make_partial_labels(np.ones((2, 2)), 0.5, scheme="random")


def test_data_mask_rejects_known_outside_range(hcp_files, tmp_path, capsys):
    status = main(["data", "mask", "--labels", str(hcp_files / "original-labels" / "val.txt"),
                   "--known", "1.5", "--out", str(tmp_path / "out.txt")])
    assert status == 1
    assert "(0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()


def test_mask_hash_is_stable_and_identifies_values_and_shape():
    labels = np.array([[1, -1, 0], [0, 1, -1]])
    assert mask_sha256(labels) == "69e5d64d466817ba5ac9958107be814dec8fa5bc9afd5b3e2db512d5fad768c6"
    assert mask_sha256(labels.astype(np.float64)) == mask_sha256(labels)
    assert mask_sha256(np.asfortranarray(labels)) == mask_sha256(labels)
    assert mask_sha256(labels.reshape(3, 2)) != mask_sha256(labels)
    changed = labels.copy()
    changed[0, 2] = 1
    assert mask_sha256(changed) != mask_sha256(labels)


def test_label_matrix_round_trip(tmp_path):
    labels = np.array([[1, -1, 0], [0, 0, 1]], dtype=np.int8)
    path = tmp_path / "labels.txt"
    write_label_matrix(path, labels)
    assert path.read_bytes() == b"1,-1,0\n0,0,1\n"
    np.testing.assert_array_equal(read_label_matrix(path), labels)


@pytest.mark.parametrize("text, message", [
    ("1,-1,0\n1,-1\n", r"line 2: 2 values, but line 1 has 3"),
    ("1,-1\n1,2\n", r"line 2: values must be 1, -1 or 0"),
    ("1,-1\n1,x\n", r"line 2: '1,x' is not comma-separated integers"),
    ("\n\n", r"no label rows"),
])
def test_malformed_label_matrix_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        read_label_matrix(path)
    assert str(path) in str(error.value)


def test_label_matrix_rejects_values_outside_one_zero_minus_one():
    with pytest.raises(DatasetError, match="value 2 at row 1, column 0"):
        mask_sha256(np.array([[1, 0], [2, 0]]))
