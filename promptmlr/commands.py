"""Handlers of the top-level commands (``tune``, ``eval``, ``predict``, ``export``, ``zeroshot``):
turn parsed arguments into calls of the Python API and print what came back."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from promptmlr.backbones import BackboneLoadError
from promptmlr.cli import CommandError
from promptmlr.config import DataConfig, ModelConfig, RunConfig, load_run_config, parse_assignment, resolve_config
from promptmlr.data import DatasetError, ImageLoadError, MultiLabelDataset, build_dataset
from promptmlr.data.commands import dataset_options
from promptmlr.descriptions import DescriptionsError
from promptmlr.engine import TrainingDivergedError
from promptmlr.errors import ConfigError, ReportError
from promptmlr.export import PromptsFileError, export_text_embeddings, load_prompts, read_header
from promptmlr.files import atomic_write, write_json_atomic
from promptmlr.models import build_method
from promptmlr.pipeline import build_backbone, dataset_root, evaluate_method, resolve_descriptions, tune
from promptmlr.predict import expand_images, predict_images
from promptmlr.runs import BEST_PROMPTS, CHECKPOINT_FILE, CONFIG_FILE, LAST_PROMPTS, summary_table

USER_ERRORS = (ConfigError, DatasetError, ImageLoadError, DescriptionsError, BackboneLoadError, PromptsFileError,
               TrainingDivergedError, ReportError)


# ---------------------------------------------------------------------------------------------- tune
def tune_command(args: argparse.Namespace) -> int:
    if args.resume:
        if args.out is None or not (args.out / CONFIG_FILE).is_file():
            raise CommandError("--resume needs --out RUN_DIR naming an existing run folder")
        config = load_run_config(args.out / CONFIG_FILE)
        run_dir = args.out
    else:
        config = resolve_config(args.dataset, args.config, _overrides(args))
        run_dir = args.out or _default_run_dir(config)
        if (run_dir / CHECKPOINT_FILE).exists():
            raise CommandError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    result = tune(config, run_dir, resume=args.resume)
    print(f"\n{result.table}\n\nrun folder: {result.run_dir}")
    return 0


def _overrides(args: argparse.Namespace) -> list[dict]:
    """Command-line flags as config overrides (flags left out change nothing)."""
    flags = {
        ("data", "root"): str(args.data_root) if args.data_root else None,
        ("data", "known"): args.known,
        ("model", "method"): args.method,
        ("model", "backbone"): args.backbone,
        ("model", "image_size"): args.image_size,
        ("model", "descriptions"): args.descriptions,
        ("train", "epochs"): args.epochs,
        ("train", "seed"): args.seed,
        ("train", "select_on"): args.select_on,
    }
    overrides = [{section: {key: value}} for (section, key), value in flags.items() if value is not None]
    options = dataset_options(args)
    if options:
        overrides.append({"data": {"options": options}})
    return overrides + [parse_assignment(text) for text in args.set]


def _default_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / (f"{config.data.dataset}-{config.model.method}-known{config.data.known:g}-"
                           f"seed{config.train.seed}-{stamp}")


# ---------------------------------------------------------------------------------------------- eval
def _prompts_file(path: Path, which: str = "best") -> Path:
    """A prompts file, or the best/last one inside a run folder."""
    if path.is_dir():
        candidate = path / (BEST_PROMPTS if which == "best" else LAST_PROMPTS)
        if not candidate.is_file():
            raise CommandError(f"{path} has no {candidate.name}; is it a finished run folder?")
        return candidate
    return path


def _dataset_for(args: argparse.Namespace, split: str, run_dir: Path | None = None) -> MultiLabelDataset:
    """The dataset named on the command line, or else the one ``run_dir`` was trained on."""
    if args.dataset is None:
        if run_dir is None:
            raise CommandError("--dataset is required (only a run folder remembers its dataset)")
        data = load_run_config(run_dir / CONFIG_FILE).data
        return build_dataset(data.dataset, dataset_root(data), split, **data.options)
    data = DataConfig(dataset=args.dataset, root=str(args.data_root) if args.data_root else None)
    return build_dataset(args.dataset, dataset_root(data), split, **dataset_options(args))


def eval_command(args: argparse.Namespace) -> int:
    path = _prompts_file(args.prompts, args.which)
    dataset = _dataset_for(args, args.split, args.prompts if args.prompts.is_dir() else None)
    method, header = load_prompts(path, class_names=dataset.class_names)
    threshold = (header.get("thresholds") or [0.5])[0]
    metrics, _ = evaluate_method(method, dataset, threshold=threshold)
    print(summary_table({f"{path.name} on {dataset.name}/{args.split}": metrics}))
    if args.prompts.is_dir():
        write_json_atomic(args.prompts / f"eval_{dataset.name}_{args.split}.json", metrics)
    return 0


# ------------------------------------------------------------------------------------------- predict
def predict_command(args: argparse.Namespace) -> int:
    path = _prompts_file(args.prompts)
    method, header = load_prompts(path)
    threshold = args.threshold if args.threshold is not None else header.get("thresholds")
    images = expand_images(args.images)
    if not images:
        raise CommandError(f"no images found in {', '.join(map(str, args.images))}")
    predictions = predict_images(method, images, threshold=threshold, top_k=args.topk, heatmap_dir=args.heatmaps)
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


# -------------------------------------------------------------------------------------------- export
def export_command(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise CommandError(f"{args.run_dir} is not a run folder")
    source = _prompts_file(args.run_dir, args.which)
    if args.format == "promptmlr":
        read_header(source)  # refuse to copy something that is not a prompts file
        atomic_write(args.out, lambda temp: shutil.copyfile(source, temp))
    else:
        method, _ = load_prompts(source)
        export_text_embeddings(method, args.out)
    print(f"wrote {args.out} ({args.format}, {args.which} epoch of {args.run_dir})")
    return 0


# ------------------------------------------------------------------------------------------ zeroshot
def zeroshot_command(args: argparse.Namespace) -> int:
    dataset = _dataset_for(args, args.split)
    model = ModelConfig(backbone=args.backbone, image_size=args.image_size,
                        descriptions=args.descriptions or "auto")
    backbone = build_backbone(model)
    descriptions, source = resolve_descriptions(model, dataset.name, dataset.class_names)
    method = build_method("zeroshot", backbone, dataset.class_names, descriptions, standardize=args.standardize)
    metrics, _ = evaluate_method(method, dataset)
    print(f"zero-shot {backbone.spec} on {dataset.name}/{args.split}; descriptions: {source}")
    print(summary_table({"zeroshot": metrics}))
    return 0


# -------------------------------------------------------------------------------------------- report
def report_command(args: argparse.Namespace) -> int:
    from promptmlr.report import known_table, write_report

    classes = [name.strip() for name in args.pr_classes.split(",") if name.strip()] if args.pr_classes else None
    result = write_report(args.run_dirs, args.out, pr_classes=classes)
    print(f"\n{known_table(result.groups)}\n\n{len(result.files)} files written; the report: {result.markdown}")
    return 0
