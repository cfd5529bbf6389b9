"""Handlers of the top-level commands (``tune``, ``eval``, ``predict``, ``complete``, ``export``, ``zeroshot``,
``report``, ``config``): parsed arguments in, one call of the Python API (:mod:`promptmlr.api`),
results printed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from promptmlr import api
from promptmlr.cli.arguments import dataset_options
from promptmlr.files import finite_or_null
from promptmlr.options import as_text

CELL_WIDTH = 26  # the widest value, default or allowed column; a longer cell pushes the rest of its row on


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
    for note in result.notes:  # e.g. a run folder that could not take the eval file: said, not fatal
        print(f"note: {note}", file=sys.stderr)
    return 0


def predict_command(args: argparse.Namespace) -> int:
    predictions = api.predict(args.images, args.prompts, model=args.model, which=args.which,
                              threshold=args.threshold, topk=args.topk, heatmaps=args.heatmaps)
    for prediction in predictions:
        if args.json:
            print(strict_json(prediction.as_dict()))
        elif prediction.error:
            print(f"{prediction.image}: ERROR {prediction.error}", file=sys.stderr)
        else:
            labels = ", ".join(f"{name} {probability:.2f}" for name, probability in prediction.labels) or "(none)"
            print(f"{prediction.image}: {labels}")
    failed = sum(prediction.error is not None for prediction in predictions)
    if failed:
        print(f"{failed} of {len(predictions)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def strict_json(value: Any, **options: Any) -> str:
    """``value`` as JSON that every parser reads: a NaN or infinite number, which ``json.dumps`` would
    print as a bare ``NaN`` (not JSON), is written as ``null``, and said once on stderr. Loading a
    prompts file refuses NaN and inf weights, so a probability should never be one."""
    replaced: list[str] = []
    text = json.dumps(finite_or_null(value, replaced), allow_nan=False, **options)
    if replaced:
        print(f"warning: {len(replaced)} value(s) that are not finite numbers ({replaced[0]}) written as null",
              file=sys.stderr)
    return text


def complete_command(args: argparse.Namespace) -> int:
    result = api.complete(args.run_dir, args.out, split=args.split, precision=args.precision, format=args.format,
                          review=args.review, cross_fit=args.cross_fit,
                          calibration=args.calibration, which=args.which, data_root=args.data_root,
                          force=args.force)
    print(result.summary)
    return 0


def export_command(args: argparse.Namespace) -> int:
    path = api.export(args.run_dir, args.out, format=args.format, which=args.which, image_size=args.image_size,
                      opset=args.opset, backbone=args.backbone, force=args.force)
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


def config_command(args: argparse.Namespace) -> int:
    if args.list:
        registered = api.list_registered()
        if args.json:
            print(strict_json(registered, indent=2))
            return 0
        sources = ", ".join(registered["backbone_sources"].values())
        print("\n".join([f"methods:   {', '.join(registered['methods'])}",
                         *_listing("datasets:  ", registered["datasets"]),
                         *_listing("backbones: ", registered["backbones"]),
                         f"           or a spec: {sources}"]))
        return 0
    rows = api.describe_config(args.method, args.dataset, config=args.config, overrides=args.set or None)
    if args.json:
        print(strict_json([row.as_dict() for row in rows], indent=2, default=str))
        return 0
    table = [("KEY", "VALUE", "DEFAULT", "ALLOWED", "HELP")]
    table += [(row.key, as_text(row.value), as_text(row.default), row.allowed, row.help) for row in rows]
    widths = [max(len(line[0]) for line in table)] + [
        max(len(line[column]) for line in table if len(line[column]) <= CELL_WIDTH) for column in (1, 2, 3)]
    help_column = sum(widths) + 2 * len(widths)
    for line in table:
        cells = "".join(f"{cell:<{width}}  " for cell, width in zip(line, widths))
        if len(cells) > help_column:  # a long cell: its help goes on the next line, in the help column
            cells = f"{cells.rstrip()}\n{'':<{help_column}}"
        print(f"{cells}{line[4]}".rstrip())
    return 0


def _listing(title: str, entries: dict[str, str]) -> list[str]:
    """``title`` then one ``name  description`` line per entry, aligned under it."""
    width = max(map(len, entries), default=0)
    return [f"{title if i == 0 else ' ' * len(title)}{name:<{width}}  {text}".rstrip()
            for i, (name, text) in enumerate(entries.items())]
