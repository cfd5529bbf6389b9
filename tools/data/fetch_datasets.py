#!/usr/bin/env python3
"""Download and lay out the benchmark datasets the way promptmlr's loaders read them.

    python tools/data/fetch_datasets.py voc2007  --out /data/voc       # -> /data/voc/VOCdevkit/VOC2007
    python tools/data/fetch_datasets.py coco2014 --out /data/coco      # -> annotations/, train2014/, val2014/
    python tools/data/fetch_datasets.py nuswide  --out /data/nuswide --archives ~/nuswide-zips
    python tools/data/fetch_datasets.py vg200    --out /data/vg --label-index vg_category_500_labels_index.json

Every step is printed before it runs. Archives are kept in ``<out>/downloads`` and skipped when
already there with the right checksum. MD5 sums are checked where a well-known one exists (VOC:
the values torchvision's ``datasets/voc.py`` checks; COCO: the values several public
downloaders check, e.g. PaddleNLP, LAVIS); otherwise the SHA-256 of each archive is printed for
your records. NUS-WIDE images are only given out by NUS on request (an agreement form), so that
command unpacks archives you obtained. Afterwards run ``promptmlr data verify`` as printed.
See docs/datasets.md for the layouts and what each loader does with them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from promptmlr.files import atomic_write

VOC_ARCHIVES = [  # (url, md5)
    ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
    ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f"),
]
VOC_MIRROR = ("http://host.robots.ox.ac.uk/", "https://thor.robots.ox.ac.uk/")  # the mirror torchvision uses
COCO_ARCHIVES = [
    ("http://images.cocodataset.org/annotations/annotations_trainval2014.zip", "0a379cfc70b0e71301e0f377548639bd"),
    ("http://images.cocodataset.org/zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88"),
    ("http://images.cocodataset.org/zips/val2014.zip", "a3d79f5ed8d289b7a7554ce06a5782b3"),
]
VG_IMAGE_ARCHIVES = [  # Visual Genome 1.2 images (visualgenome.org/api/v0/api_home.html); no published checksum
    ("https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip", None),
    ("https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip", None),
]
VG_LISTS = "https://raw.githubusercontent.com/HCPLab-SYSU/SSGRL/master/data/VG/{}"
NUSWIDE_EXPECTED = ("ImageList/TrainImagelist.txt", "ImageList/TestImagelist.txt", "Flickr")


def say(message: str) -> None:
    print(f"[fetch] {message}", flush=True)


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, md5: str | None, downloads: Path, mirror: tuple[str, str] | None = None) -> Path:
    """Fetch ``url`` into ``downloads`` (kept if already there and valid) and check its MD5."""
    target = downloads / url.rsplit("/", 1)[1]
    if target.exists() and (md5 is None or file_digest(target, "md5") == md5):
        say(f"have {target}")
        return target
    for source in [url] + ([url.replace(*mirror)] if mirror else []):
        say(f"download {source} -> {target}")
        try:  # to a temp file renamed when complete: an interrupted download never passes for a whole one
            atomic_write(target, lambda temp: _copy_url(source, temp))
            break
        except OSError as error:
            say(f"failed: {error}")
    else:
        sys.exit(f"could not download {url}")
    if md5 is not None:
        actual = file_digest(target, "md5")
        if actual != md5:
            sys.exit(f"checksum mismatch for {target}: md5 {actual}, expected {md5}; delete it and retry")
        say(f"md5 ok {md5}")
    else:
        say(f"sha256 {file_digest(target, 'sha256')} (no published checksum; keep this for your records)")
    return target


def _copy_url(url: str, path: Path) -> None:
    with urllib.request.urlopen(url) as response, path.open("wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def extract(archive: Path, into: Path) -> None:
    say(f"extract {archive} -> {into}")
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(into)
    else:
        with tarfile.open(archive) as bundle:
            # the "data" filter refuses absolute paths and links out of the target (Python >= 3.11.4)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            bundle.extractall(into, **safe)


def fetch_voc2007(out: Path, downloads: Path) -> str:
    for url, md5 in VOC_ARCHIVES:
        extract(download(url, md5, downloads, VOC_MIRROR), out)
    return f"promptmlr data verify --dataset voc2007 --data-root {out}"


def fetch_coco2014(out: Path, downloads: Path) -> str:
    for url, md5 in COCO_ARCHIVES:
        extract(download(url, md5, downloads), out)
    return f"promptmlr data verify --dataset coco2014 --data-root {out}"


def fetch_nuswide(out: Path, archives: Path) -> str:
    """Unpack the NUS-WIDE archives the user obtained (metadata zips and the images)."""
    found = sorted(p for p in archives.iterdir() if zipfile.is_zipfile(p) or tarfile.is_tarfile(p))
    if not found:
        sys.exit(f"no .zip or .tar archives in {archives}")
    for archive in found:
        extract(archive, out)
    missing = [name for name in NUSWIDE_EXPECTED if not (out / name).exists()]
    if not any((out / p).exists() for p in ("ConceptsList/Concepts81.txt", "Concepts81.txt")):
        missing.append("ConceptsList/Concepts81.txt")
    if not any((out / p).is_dir() for p in ("Groundtruth/TrainTestLabels", "TrainTestLabels")):
        missing.append("Groundtruth/TrainTestLabels/")
    if missing:
        say(f"still missing under {out}: {', '.join(missing)} (see docs/datasets.md for the layout)")
    return f"promptmlr data verify --dataset nuswide --data-root {out}"


def fetch_vg200(out: Path, downloads: Path, label_index: Path | None, classes: Path | None) -> str:
    for url, md5 in VG_IMAGE_ARCHIVES:
        extract(download(url, md5, downloads), out)
    for name in ("train_list_500.txt", "test_list_500.txt"):
        download(VG_LISTS.format(name), None, out)
    if label_index is not None:
        derive_vg200_index(label_index, out / "vg_category_200_labels_index.json")
    else:
        say("no --label-index given: put vg_category_200_labels_index.json (or SSGRL's 500-class file, "
            "passed as --label-index) in the data root")
    if classes is not None:
        shutil.copy(classes, out / "classes.txt")
    else:
        say("VG-200 class names are not published: write the 200 names, in index order, to classes.txt")
    return f"promptmlr data verify --dataset vg200 --data-root {out}"


def derive_vg200_index(source: Path, target: Path) -> None:
    """Keep class indices < 200 of SSGRL's VG-500 index, as HCP-MLR-PL built its VG-200 file."""
    say(f"derive {target} from {source} (indices < 200)")
    index = json.loads(source.read_text(encoding="utf-8"))
    target.write_text(json.dumps({name: [c for c in classes if c < 200] for name, classes in index.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=("voc2007", "coco2014", "nuswide", "vg200"))
    parser.add_argument("--out", type=Path, required=True, help="data root to create")
    parser.add_argument("--archives", type=Path, help="nuswide: folder with the archives NUS sent you")
    parser.add_argument("--label-index", type=Path, help="vg200: SSGRL vg_category_500_labels_index.json")
    parser.add_argument("--classes", type=Path, help="vg200: the 200 class names, one per line")
    args = parser.parse_args()
    downloads = args.out / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if args.dataset == "voc2007":
        command = fetch_voc2007(args.out, downloads)
    elif args.dataset == "coco2014":
        command = fetch_coco2014(args.out, downloads)
    elif args.dataset == "nuswide":
        if args.archives is None:
            sys.exit("nuswide: NUS gives the images out on request (lms.comp.nus.edu.sg, NUS-WIDE page); "
                     "pass the folder of archives you received with --archives DIR")
        command = fetch_nuswide(args.out, args.archives)
    else:
        command = fetch_vg200(args.out, downloads, args.label_index, args.classes)
    say(f"done; check every file with:\n    {command}")


if __name__ == "__main__":
    main()
