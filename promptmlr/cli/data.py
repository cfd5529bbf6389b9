"""``promptmlr data ...`` subcommands: list, mask, synth, verify. Heavy imports stay inside the
handlers to keep ``promptmlr --help`` fast."""

from __future__ import annotations

import argparse
from pathlib import Path

from promptmlr.cli.arguments import add_dataset_arguments, dataset_options


def add_data_commands(parser: argparse.ArgumentParser) -> None:
    """Register ``data list``, ``data mask`` and ``data verify`` on the ``data`` parser."""
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="the datasets promptmlr can read, their splits and options")
    listing.set_defaults(handler=run_list)

    mask = actions.add_parser(
        "mask", help="hide labels: keep a proportion of a 1/-1/0 label matrix (partial-label protocol)",
        description="Keep a proportion of the entries of a comma-separated 1/-1/0 label matrix and set "
                    "the rest to 0 (unknown), as the SST/SARB/HCP-MLR-PL protocol does.")
    mask.add_argument("--labels", required=True, type=Path, metavar="IN.txt", help="full label matrix")
    mask.add_argument("--known", required=True, type=float, metavar="P", help="proportion of labels kept, in (0, 1]")
    mask.add_argument("--seed", type=int, default=0, help="random seed (default 0, the published protocol)")
    mask.add_argument("--scheme", choices=("hcp", "dualcoop"), default="hcp",
                      help="hcp: numpy legacy generator (default, reproduces the published files); "
                           "dualcoop: torch.rand as DualCoOp")
    mask.add_argument("--out", required=True, type=Path, metavar="OUT.txt", help="where to write the partial labels")
    mask.set_defaults(handler=run_mask)

    synth = actions.add_parser(
        "synth", help="write a synthetic multi-label dataset (the world of coloured shapes the sandbox CLIP learned)",
        description="Write seeded synthetic scenes with complete labels in the custom CSV layout "
                    "(<out>/train.csv, test.csv, images, classes.txt, meta.json); read it back with "
                    "--dataset synthetic --data-root OUT.")
    synth.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="a new or empty folder (nothing in it is ever replaced); filled atomically")
    synth.add_argument("--n-train", type=int, default=6000)
    synth.add_argument("--n-test", type=int, default=4000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes rendering scenes (default: the cores available, up to 8); the files are "
                            "the same for any N")
    synth.set_defaults(handler=run_synth)

    verify = actions.add_parser(
        "verify", help="decode every image and read every label; list bad files",
        description="Decode every image and read every label of a dataset; print counts per split, "
                    "positives per class and labels per image, every missing or corrupt file, and every "
                    "image listed more than once. Exits with status 1 if anything is wrong.")
    add_dataset_arguments(verify)
    verify.add_argument("--split", metavar="SPLIT", help="split to check (default: every split present)")
    verify.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    verify.set_defaults(handler=run_verify)


def run_list(args: argparse.Namespace) -> int:
    from promptmlr.data.registry import get_dataset_spec, list_datasets

    for name in list_datasets():
        spec = get_dataset_spec(name)
        splits = "files in the data root" if callable(spec.splits) else ", ".join(spec.splits)
        options = ", ".join(f"{key}={value}" for key, value in spec.options().items()) or "none"
        print(f"{name:10s} {spec.description}\n{'':10s} splits: {splits}; options: {options}")
    return 0


def run_mask(args: argparse.Namespace) -> int:
    from promptmlr.data.labels import mask_label_file

    result = mask_label_file(args.labels, args.out, args.known, seed=args.seed, scheme=args.scheme)
    images, classes = result.partial.shape
    print(f"wrote {args.out}: {images} images x {classes} classes, {result.kept:.1%} of the known "
          f"entries kept (known={args.known}, seed={args.seed}, scheme={args.scheme})")
    print(f"mask sha256 {result.sha256}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from promptmlr.data.synthetic import default_workers, write_synthetic_dataset

    workers = default_workers() if args.workers is None else args.workers
    out = write_synthetic_dataset(args.out, args.n_train, args.n_test, args.seed, args.image_size, workers)
    print(f"wrote {args.n_train} train and {args.n_test} test scenes ({args.image_size}px, seed {args.seed}) to {out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from promptmlr.data.verify import verify_splits

    failures = []
    for check in verify_splits(args.dataset, args.data_root, args.split, dataset_options(args), args.workers):
        if check.absent:
            print(f"{args.dataset}/{check.split}: not present ({check.absent})")
        elif check.report:
            print(check.report.summary())
        failures += check.failures
    if failures:
        print(f"\n{len(failures)} problem(s):")
        print("\n".join(f"  {line}" for line in failures))
        return 1
    print("\nall images decoded and all labels read: no problems")
    return 0
