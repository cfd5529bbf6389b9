"""tools/data/fetch_datasets.py: the offline parts (checksums, extraction, the VG-200 index)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "data" / "fetch_datasets.py"


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location("fetch_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_existing_archive_with_the_right_md5_is_not_downloaded_again(fetch, tmp_path, capsys):
    archive = tmp_path / "VOCtest_06-Nov-2007.tar"
    archive.write_bytes(b"pretend archive")
    md5 = hashlib.md5(b"pretend archive").hexdigest()
    assert fetch.download(f"http://127.0.0.1:9/{archive.name}", md5, tmp_path) == archive
    assert f"have {archive}" in capsys.readouterr().out


def test_an_interrupted_download_leaves_no_file_to_pass_for_a_whole_one(fetch, tmp_path, monkeypatch):
    """Without a checksum (VG) a file left by a cut download would be taken as done next time."""
    def cut_short(url, path):
        path.write_bytes(b"half an archive")
        raise OSError("connection reset")

    monkeypatch.setattr(fetch, "_copy_url", cut_short)
    with pytest.raises(SystemExit, match="could not download"):
        fetch.download("http://127.0.0.1:9/images.zip", None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_extract_handles_zip_and_tar(fetch, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as bundle:
        bundle.write(tmp_path / "a.txt", "VG_100K/1.jpg")
    with tarfile.open(tmp_path / "y.tar", "w") as bundle:
        bundle.add(tmp_path / "a.txt", "VOCdevkit/VOC2007/ImageSets/Main/train.txt")
    fetch.extract(tmp_path / "x.zip", tmp_path / "out")
    fetch.extract(tmp_path / "y.tar", tmp_path / "out")
    assert (tmp_path / "out" / "VG_100K" / "1.jpg").read_text() == "a"
    assert (tmp_path / "out" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "train.txt").exists()


def test_vg200_index_keeps_the_first_200_classes(fetch, tmp_path):
    (tmp_path / "vg500.json").write_text(json.dumps({"1.jpg": [0, 199, 200, 499], "2.jpg": [350]}))
    fetch.derive_vg200_index(tmp_path / "vg500.json", tmp_path / "vg200.json")
    assert json.loads((tmp_path / "vg200.json").read_text()) == {"1.jpg": [0, 199], "2.jpg": []}


def test_known_checksums_are_md5_hex(fetch):
    for _, md5 in fetch.VOC_ARCHIVES + fetch.COCO_ARCHIVES:
        assert len(md5) == 32 and int(md5, 16) >= 0
