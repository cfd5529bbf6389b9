"""What a cached training step costs: the prompts' pass through the frozen text encoder.

With the feature cache, a step of a prompt method is one forward and backward of its prompt set
(C sequences; DualCoOp has two sets) through the frozen text encoder, whatever the batch. This
profiles that pass, forward and backward to the contexts, for C = 20, 80 and 200 (VOC, COCO,
VG-200) on RN101's text tower (random weights), in three ways::

    python -m tools.bench.text_encoder --out bench/text-encoder
    python -m tools.bench.text_encoder --out bench/text-encoder-gpu --device cuda --precisions fp32 bf16 fp16

``77 positions``   every prompt padded to CLIP's full context
``trimmed``        padded only to the longest prompt (``FrozenCLIP.text_length``)
``shared prefix``  class-agnostic contexts only: the start token and context, the same for every
                   class, through the causal encoder once (``encode_text_with_shared_prefix``)

Each variant is timed in turn within every round (interleaved), at every precision asked for;
medians go to ``text_encoder.json`` / ``text_encoder.md`` in ``--out``. Attention already runs
through ``scaled_dot_product_attention`` in every variant (``nn.MultiheadAttention`` without
weights), so fused attention is not a variant of its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from promptmlr.backbones import create_backbone
from promptmlr.backbones.base import FrozenCLIP
from promptmlr.files import write_json_atomic, write_text_atomic
from promptmlr.models.prompts import PromptLearner
from tools.bench.common import autocast, class_names, device_info, interleaved_seconds, pick_device

CLASS_COUNTS = (20, 80, 200)
VARIANTS = ("77 positions", "trimmed", "shared prefix")


def prompt_passes(backbone: FrozenCLIP, classes: list[str], n_ctx: int, class_specific: bool
                  ) -> tuple[PromptLearner, dict[str, Callable[[], torch.Tensor]]]:
    """A prompt set and the ways to encode it (each returns the ``[C, D]`` features)."""
    torch.manual_seed(0)
    learner = PromptLearner(backbone, classes, n_ctx, class_specific, init="random")
    token_ids = backbone.tokenize([" ".join(["X"] * n_ctx + [name]) + "." for name in classes])
    with torch.no_grad():
        full_suffix = backbone.token_embedding(token_ids.to(learner.prefix.device))[:, 1 + n_ctx:]
    count = len(classes)

    def context() -> torch.Tensor:
        return learner.context if class_specific else learner.context.expand(count, -1, -1)

    def padded() -> torch.Tensor:
        return backbone.encode_text_embeddings(torch.cat([learner.prefix, context(), full_suffix], 1), learner.eot)

    def trimmed() -> torch.Tensor:
        return backbone.encode_text_embeddings(torch.cat([learner.prefix, context(), learner.suffix], 1), learner.eot)

    def shared() -> torch.Tensor:
        prefix = torch.cat([learner.prefix[0], learner.context])
        return backbone.encode_text_with_shared_prefix(prefix, learner.suffix, learner.eot)

    passes = {"77 positions": padded, "trimmed": trimmed}
    if not class_specific:
        passes["shared prefix"] = shared
    return learner, passes


def training_pass(learner: PromptLearner, encode: Callable[[], torch.Tensor], device: torch.device,
                  precision: str) -> Callable[[], None]:
    """One forward and backward to the contexts, as a training step runs it."""
    def step() -> None:
        with autocast(device, precision):
            features = encode()
        features.float().square().sum().backward()
        learner.context.grad = None
    return step


def agreement(passes: dict[str, Callable[[], torch.Tensor]]) -> float:
    """Largest difference of any variant's fp32 features from the full-length pass's."""
    with torch.no_grad():
        reference = passes["77 positions"]()
        return max(float((encode() - reference).abs().max()) for encode in passes.values())


def profile(backbone: FrozenCLIP, counts: list[int], n_ctx: int, precisions: list[str], device: torch.device,
            warmup: int, rounds: int, log=print) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        classes = class_names(count)
        for class_specific in (False, True):
            learner, passes = prompt_passes(backbone, classes, n_ctx, class_specific)
            steps = {(variant, precision): training_pass(learner, encode, device, precision)
                     for variant, encode in passes.items() for precision in precisions}
            seconds = interleaved_seconds(steps, warmup, rounds, device)
            difference = agreement(passes)
            for (variant, precision), times in seconds.items():
                row = {"classes": count, "contexts": "class-specific" if class_specific else "class-agnostic",
                       "variant": variant, "precision": precision, "seconds": statistics.median(times),
                       "positions": _positions(learner, variant, backbone), "max_difference_fp32": difference}
                rows.append(row)
                log(f"C={count} {row['contexts']} {variant} {precision}: {row['seconds']:.3f} s "
                    f"({row['positions']} positions)")
    return rows


def _positions(learner: PromptLearner, variant: str, backbone: FrozenCLIP) -> int:
    """Token positions the encoder computes for one prompt set in ``variant``."""
    count, trimmed = learner.suffix.shape[0], learner.prefix.shape[1] + learner.n_ctx + learner.suffix.shape[1]
    if variant == "77 positions":
        return count * backbone.context_length
    if variant == "trimmed":
        return count * trimmed
    return 1 + learner.n_ctx + count * learner.suffix.shape[1]


def markdown(report: dict[str, Any]) -> str:
    device, settings = report["device"], report["settings"]
    lines = [f"# The prompts' pass through the text encoder: {device['name']} ({device['type']})", "",
             f"RN101 text tower (random weights), {settings['n_ctx']} context tokens, forward and backward to the "
             f"contexts, one prompt set of C prompts (DualCoOp has two per step); torch {device['torch']}"
             + (f", {device['threads']} threads" if device["type"] == "cpu" else "")
             + f"; {settings['warmup']} warm-up and {settings['rounds']} timed rounds, interleaved; medians.", "",
             "| C | contexts | precision | " + " | ".join(f"{v} s" for v in VARIANTS)
             + " | now vs 77 | now vs trimmed | max fp32 difference |",
             "| --- | --- | --- |" + " --- |" * (len(VARIANTS) + 3)]
    groups: dict[tuple, dict[str, dict]] = {}
    for row in report["rows"]:
        groups.setdefault((row["classes"], row["contexts"], row["precision"]), {})[row["variant"]] = row
    for (count, contexts, precision), variants in groups.items():
        cells = [f"{variants[v]['seconds']:.3f} ({variants[v]['positions']:,})" if v in variants else "–"
                 for v in VARIANTS]
        now = variants.get("shared prefix", variants["trimmed"])["seconds"]
        difference = next(iter(variants.values()))["max_difference_fp32"]
        lines.append(f"| {count} | {contexts} | {precision} | " + " | ".join(cells) +
                     f" | {variants['77 positions']['seconds'] / now:.1f}× | "
                     f"{variants['trimmed']['seconds'] / now:.1f}× | {difference:.1e} |")
    lines += ["", "Cells: seconds (token positions computed). \"now\" is what a training step runs today: the shared "
              "prefix for class-agnostic contexts, the trimmed pass for class-specific ones.", "",
              f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", default="openclip:RN101-quickgelu")
    parser.add_argument("--classes", type=int, nargs="+", default=list(CLASS_COUNTS))
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    for name, values in (("classes", args.classes), ("n-ctx", [args.n_ctx]), ("rounds", [args.rounds]),
                         ("threads", [args.threads or 1])):
        if min(values) < 1:
            parser.error(f"--{name} must be at least 1, got {min(values)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = create_backbone(args.backbone).to(device)
    rows = profile(backbone, args.classes, args.n_ctx, args.precisions, device, args.warmup, args.rounds)
    report = {"device": device_info(device), "settings": {**vars(args), "out": str(args.out)}, "rows": rows,
              "command": "python -m tools.bench.text_encoder " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "text_encoder.json", report)
    text = markdown(report)
    write_text_atomic(args.out / "text_encoder.md", text)
    print(text)
    return report


if __name__ == "__main__":
    main()
