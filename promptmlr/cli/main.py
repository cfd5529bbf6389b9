"""The parser of every ``promptmlr`` command, and ``main``: run the handler, print a user-facing
error (any :class:`~promptmlr.errors.PromptMLRError`) as one line with exit status 1; a bug keeps its
traceback. Ctrl-C is one line too (with, for ``tune``, how to continue the run), exit status 130 as
a shell gives a command it interrupts; output piped into a reader that stops early (``| head``)
ends quietly. Handlers are imported when run, so ``promptmlr --help`` stays fast."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from promptmlr import __version__
from promptmlr.cli.arguments import add_dataset_arguments
from promptmlr.cli.data import add_data_commands
from promptmlr.errors import PromptMLRError, RunInterrupted

INTERRUPTED = 130  # the exit status of a command ended by SIGINT (128 + 2)
PIPE_CLOSED = 141  # ... and by SIGPIPE (128 + 13), as `promptmlr config | head` ends it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptmlr",
        description="Multi-label recognition with partial labels on a frozen CLIP.")
    parser.add_argument("--version", action="version", version=f"promptmlr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tune = commands.add_parser("tune", help="learn prompts and head on a partially labelled dataset",
                               description="Learn prompts (and a head) on a partially labelled dataset; writes a "
                                           "run folder with the config, metrics, learned prompts and predictions.")
    add_dataset_arguments(tune, required=False)
    tune.add_argument("--known", type=float, help="proportion of training labels kept, in (0, 1] (default 1)")
    tune.add_argument("--method", help="a registered method (default promptmlr; promptmlr config --list shows "
                                       "them all)")
    tune.add_argument("--backbone", metavar="SPEC", help="e.g. sandbox, openclip:RN101:openai, hf:DIR")
    tune.add_argument("--image-size", type=int, metavar="PX", help="input resolution (default: the backbone's)")
    tune.add_argument("--descriptions", metavar="FILE", help="class descriptions (YAML or 'class: a; b' text); "
                                                             "'none' to use none (default: shipped ones)")
    tune.add_argument("--config", type=Path, metavar="FILE", help="a YAML config (see configs/)")
    tune.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default runs/<dataset>-<method>-...)")
    tune.add_argument("--epochs", type=int)
    tune.add_argument("--seed", type=int)
    tune.add_argument("--select-on", choices=("val", "test"),
                      help="model selection split (default val; test reproduces the anchors' habit)")
    tune.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, "
                                                            "with its own configuration (--data-root: its data, moved)")
    tune.add_argument("--report-to", metavar="TRACKER", help="log each epoch to tensorboard, wandb or mlflow "
                                                              "(comma-separated; default none)")
    tune.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override any config value, e.g. --set train.lr=0.01 (repeatable; promptmlr config "
                           "lists every key)")
    tune.set_defaults(handler=_lazy("tune_command"))

    evaluate = commands.add_parser("eval", help="evaluate a run or a prompts file on a dataset split")
    evaluate.add_argument("prompts", type=Path, metavar="RUN_DIR|PROMPTS_FILE")
    add_dataset_arguments(evaluate, required=False)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--which", choices=("best", "last"), default="best", help="with a run folder")
    evaluate.set_defaults(handler=_lazy("eval_command"))

    predict = commands.add_parser("predict", help="label images with learned prompts or an exported ONNX tagger")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE|DIR")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, metavar="FILE|RUN_DIR", help="a prompts file or run folder")
    source.add_argument("--model", type=Path, metavar="FILE.onnx",
                        help="a tagger from `export --format onnx`, run with onnxruntime alone")
    choice = predict.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=float, help="probability threshold (default: the file's, else 0.5)")
    choice.add_argument("--topk", type=int, help="report the K most probable labels instead")
    predict.add_argument("--which", choices=("best", "last"), help="with --prompts RUN_DIR (default best)")
    predict.add_argument("--json", action="store_true", help="print JSON lines instead of text (strict JSON: "
                                                             "a non-finite number is null)")
    predict.add_argument("--heatmaps", type=Path, metavar="DIR", help="write attention overlays of predicted labels")
    predict.set_defaults(handler=_lazy("predict_command"))

    complete = commands.add_parser(
        "complete", help="fill in a dataset's unknown labels at a chosen precision",
        description="Score every unknown label of a run's split with its selected model and fill it in (positive "
                    "or negative) where the class's threshold reaches --precision on the validation split; the rest "
                    "stay unknown and known labels never change. Writes the label file, a report beside it "
                    "(<stem>.completion.md/.json) and, with --review N, the N entries most worth labelling.")
    complete.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    complete.add_argument("--out", required=True, type=Path, metavar="FILE",
                          help="the completed label file (.jsonl or .csv)")
    complete.add_argument("--split", help="split to complete (default: the run's training split, under its mask)")
    complete.add_argument("--precision", type=float, default=0.95,
                          help="target precision of the filled labels, in (0, 1) (default 0.95)")
    complete.add_argument("--format", choices=("jsonl", "csv", "same"),  # completion.COMPLETION_FORMATS
                          help="jsonl, csv, or same (the dataset's own); default: --out's suffix")
    complete.add_argument("--review", type=int, default=0, metavar="N",
                          help="also write <stem>.review.tsv: the N unknown entries most worth labelling")
    complete.add_argument("--cross-fit", type=int, default=0, metavar="K",
                          help="calibrate classes with too few validation labels by K-fold cross-fitting (K more "
                               "trainings; default 0: such classes fill nothing)")
    complete.add_argument("--calibration", choices=("validation", "cross-fit"),  # completion.CALIBRATIONS
                          default="validation",
                          help="what thresholds are chosen on: validation labels (default), or, with --cross-fit K, "
                               "every class on out-of-fold scores (the estimates then hold for training images too)")
    complete.add_argument("--which", choices=("best", "last"), default="best")
    complete.add_argument("--data-root", type=Path, metavar="DIR", help="where the run's data is, if it moved")
    complete.add_argument("--force", action="store_true", help="replace the files of an earlier completion")
    complete.set_defaults(handler=_lazy("complete_command"))

    export = commands.add_parser("export", help="write a run's learned model to a file")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--out", required=True, type=Path, metavar="FILE")
    export.add_argument("--format", choices=("promptmlr", "text-embeddings", "onnx"),  # api.EXPORT_FORMATS
                        default="promptmlr",
                        help="promptmlr: everything, reloadable; text-embeddings: a [C, D] classifier "
                             "(.safetensors or .npy), for zeroshot and linear runs only; onnx: one graph from "
                             "images to label logits, for onnxruntime (pip install 'promptmlr[onnx]')")
    export.add_argument("--which", choices=("best", "last"), default="best")
    export.add_argument("--image-size", type=int, metavar="N", help="onnx: input size (default: the run's)")
    export.add_argument("--opset", type=int, metavar="N",
                        help="onnx: ONNX opset, 14 to 20 (default 17)")  # tagger.OPSET_RANGE, DEFAULT_OPSET
    export.add_argument("--backbone", metavar="SPEC",
                        help="onnx, text-embeddings: the run's weights where they are now, if they moved "
                             "(checked to be the same weights)")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.set_defaults(handler=_lazy("export_command"))

    zeroshot = commands.add_parser("zeroshot", help="zero-shot multi-label scores for a dataset")
    add_dataset_arguments(zeroshot, required=False)
    zeroshot.add_argument("--backbone", metavar="SPEC", default="sandbox")
    zeroshot.add_argument("--image-size", type=int, metavar="PX")
    zeroshot.add_argument("--split", default="test")
    zeroshot.add_argument("--descriptions", metavar="FILE", help="description ensemble ('none': templates only)")
    zeroshot.add_argument("--standardize", action="store_true", help="per-image z-scores (SPARC)")
    zeroshot.set_defaults(handler=_lazy("zeroshot_command"))

    report = commands.add_parser("report", help="plots and a Markdown summary of finished runs",
                                 description="Per-class AP bars and precision-recall curves for each run, mAP "
                                             "against the known proportion across runs (mean ± std over seeds) "
                                             "and report.md with every run's numbers.")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    report.add_argument("--out", required=True, type=Path, metavar="DIR", help="where the PNGs and report.md go")
    report.add_argument("--pr-classes", metavar="NAME[,NAME...]",
                        help="classes to draw PR curves for (default: all up to 20 classes, else the 6 best "
                             "and the 6 worst by AP)")
    report.set_defaults(handler=_lazy("report_command"))

    config = commands.add_parser("config", help="show every config key: value, default, allowed values, help",
                                 description="Print the configuration tune would run with (the defaults, the "
                                             "dataset's shipped config, the method's recipes, --config, --set): "
                                             "each key's value, its default, what it accepts and one line of help.")
    config.add_argument("method", nargs="?", metavar="METHOD", help="the method whose options to show (default: "
                                                                     "the config's, promptmlr)")
    config.add_argument("--dataset", metavar="NAME", help="resolve with this dataset's shipped config and recipes "
                                                          "(default synthetic)")
    config.add_argument("--config", type=Path, metavar="FILE", help="a YAML config merged as tune merges it")
    config.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an override, as tune takes it (repeatable)")
    config.add_argument("--list", action="store_true", help="list the registered methods, datasets and backbones")
    config.add_argument("--json", action="store_true", help="print JSON instead of a table")
    config.set_defaults(handler=_lazy("config_command"))

    add_data_commands(commands.add_parser("data", help="prepare, mask and verify datasets"))
    return parser


def _lazy(name: str):
    """A handler that imports :mod:`promptmlr.cli.commands` only when run, so ``--help`` stays fast."""
    def run(args: argparse.Namespace) -> int:
        from promptmlr.cli import commands

        return getattr(commands, name)(args)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PromptMLRError as error:  # bad input becomes one line; anything else is a bug: traceback
        print(f"promptmlr {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # asked for: a traceback would only hide what to do next
        print(f"\npromptmlr {args.command}: interrupted{_how_to_continue(interrupt)}", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader of our output left (`| head`): stop quietly, as cat and grep do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush has nowhere to fail
        return PIPE_CLOSED


def _how_to_continue(interrupt: KeyboardInterrupt) -> str:
    """For an interrupted run whose folder holds its config: the command that resumes it."""
    if not isinstance(interrupt, RunInterrupted):
        return ""
    from promptmlr.runs import CHECKPOINT_FILE, CONFIG_FILE

    run_dir = Path(interrupt.run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return f" before {run_dir} held a run; start it again"
    since = "its last checkpoint" if (run_dir / CHECKPOINT_FILE).is_file() else "the start (no epoch had finished)"
    return f"; continue {run_dir} from {since} with: promptmlr tune --out {shlex.quote(str(run_dir))} --resume"
