"""Handlers of the top-level commands (``tune``, ``eval``, ``predict``, ``export``, ``zeroshot``,
``report``): parsed arguments in, one call of the Python API (:mod:`promptmlr.api`), results printed."""

from __future__ import annotations

import argparse
import json
import sys

from promptmlr import api
from promptmlr.cli.arguments import dataset_options


def tune_command(args: argparse.Namespace) -> int:
    result = api.tune(args.dataset, data_root=args.data_root, known=args.known, method=args.method,
                      backbone=args.backbone, image_size=args.image_size, descriptions=args.descriptions,
                      config=args.config, out=args.out, epochs=args.epochs, seed=args.seed,
                      select_on=args.select_on, report_to=args.report_to,
                      dataset_options=dataset_options(args) or None, overrides=args.set or None, resume=args.resume)
    print(f"\n{result.table}\n\nrun folder: {result.run_dir}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    result = api.evaluate(args.prompts, args.dataset, data_root=args.data_root, split=args.split, which=args.which,
                          dataset_options=dataset_options(args))
    print(result.table)
    return 0


def predict_command(args: argparse.Namespace) -> int:
    predictions = api.predict(args.images, args.prompts, which=args.which, threshold=args.threshold,
                              topk=args.topk, heatmaps=args.heatmaps)
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction.as_dict()))
        elif prediction.error:
            print(f"{prediction.image}: ERROR {prediction.error}", file=sys.stderr)
        else:
            labels = ", ".join(f"{name} {probability:.2f}" for name, probability in prediction.labels) or "(none)"
            print(f"{prediction.image}: {labels}")
    failed = sum(prediction.error is not None for prediction in predictions)
    if failed:
        print(f"{failed} of {len(predictions)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def export_command(args: argparse.Namespace) -> int:
    path = api.export(args.run_dir, args.out, format=args.format, which=args.which)
    print(f"wrote {path} ({args.format}, {args.which} epoch of {args.run_dir})")
    return 0


def zeroshot_command(args: argparse.Namespace) -> int:
    result = api.zeroshot(args.dataset, data_root=args.data_root, backbone=args.backbone, image_size=args.image_size,
                          split=args.split, descriptions=args.descriptions, standardize=args.standardize,
                          dataset_options=dataset_options(args))
    print("\n".join([*result.notes, result.table]))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from promptmlr.report import known_table, write_report

    classes = [name.strip() for name in args.pr_classes.split(",") if name.strip()] if args.pr_classes else None
    result = write_report(args.run_dirs, args.out, pr_classes=classes)
    print(f"\n{known_table(result.groups)}\n\n{len(result.files)} files written; the report: {result.markdown}")
    return 0
