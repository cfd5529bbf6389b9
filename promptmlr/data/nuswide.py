"""NUS-WIDE (Chua et al., CIVR 2009): 81 concepts, the official train/test image lists and labels.

Files, as the official archives unpack them (ConceptsList.zip, ImageList.zip, Groundtruth.zip)
with the images (obtained from NUS under their agreement) in ``Flickr/<folder>/<file>.jpg``::

    <root>/ConceptsList/Concepts81.txt          (or <root>/Concepts81.txt, as TaI-DPT lays it out)
    <root>/ImageList/TrainImagelist.txt         161,789 lines, e.g. ``actor\\0001_2124494179.jpg``
    <root>/ImageList/TestImagelist.txt          107,859 lines
    <root>/Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt   (or <root>/TrainTestLabels/)
    <root>/Flickr/actor/0001_2124494179.jpg

Each ``Labels_<concept>_<Split>.txt`` holds one 0/1 per line, aligned with that split's image
list; 1 becomes positive and 0 negative. Class order is the order of ``Concepts81.txt``. Image
list entries use Windows separators and sometimes a drive prefix (``C:\\ImageData\\Flickr\\...``);
the part after the last ``Flickr`` folder is kept. Splits: ``train`` and ``test``.

Many Flickr originals are gone, so copies of NUS-WIDE differ in which images they hold;
``promptmlr data verify --dataset nuswide`` lists the missing files of a copy by path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import NEGATIVE, POSITIVE
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError, first_existing, read_class_names, read_lines

NUSWIDE_SPLITS = ("train", "test")
_FILE_SPLIT = {"train": "Train", "test": "Test"}


@register_dataset("nuswide", splits=NUSWIDE_SPLITS)
def build_nuswide(root: Path, split: str) -> MultiLabelDataset:
    """NUS-WIDE, 81 concepts (official ImageList, TrainTestLabels and Concepts81.txt files)."""
    concepts = read_class_names(first_existing(root, ("ConceptsList/Concepts81.txt", "Concepts81.txt"),
                                               "NUS-WIDE concept list"))
    list_path = root / "ImageList" / f"{_FILE_SPLIT[split]}Imagelist.txt"
    if not list_path.is_file():
        raise SplitNotFoundError(f"nuswide: image list {list_path} not found (unzip ImageList.zip into the data root)")
    # the official lists are plain ASCII; latin-1 reads any byte so a stray one cannot stop loading
    entries = [flickr_relative_path(line) for _, line in read_lines(list_path, "NUS-WIDE image list", "latin-1")]
    label_dir = first_existing(root, ("Groundtruth/TrainTestLabels", "TrainTestLabels"),
                               "NUS-WIDE TrainTestLabels folder")
    labels = np.empty((len(entries), len(concepts)), dtype=np.int8)
    for column, concept in enumerate(concepts):
        labels[:, column] = read_concept_labels(label_dir / f"Labels_{concept}_{_FILE_SPLIT[split]}.txt", len(entries))
    paths = [root / "Flickr" / entry for entry in entries]
    return MultiLabelDataset("nuswide", split, concepts, paths, labels)


def flickr_relative_path(entry: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001.jpg`` or ``actor\\0001.jpg`` -> ``actor/0001.jpg``."""
    parts = [part for part in entry.replace("\\", "/").split("/") if part]
    if "Flickr" in parts:
        parts = parts[len(parts) - parts[::-1].index("Flickr"):]
    return "/".join(parts)


def read_concept_labels(path: Path, count: int) -> np.ndarray:
    """One concept's 0/1 column -> 1/-1; it must have one line per image of the list."""
    values = []
    for number, line in read_lines(path, "NUS-WIDE label file"):
        if line not in ("0", "1"):
            raise DatasetError(f"{path}, line {number}: expected 0 or 1, got {line!r}")
        values.append(POSITIVE if line == "1" else NEGATIVE)
    if len(values) != count:
        raise DatasetError(f"{path}: {len(values)} labels for {count} images in the image list; "
                           "the label file and image list must come from the same release")
    return np.asarray(values, dtype=np.int8)
