"""PositiveCoOp's own code beside promptmlr's ``positivecoop``: same weights, same input, component by
component, and over a few training steps.

The authors' code runs from a checkout the user points at; nothing of it is copied here::

    git clone https://github.com/SamyakR99/PositiveCoOp ../PositiveCoOp
    python -m tools.bench.parity_positivecoop --anchor-dir ../PositiveCoOp --out bench/parity-positivecoop

What it compares, on random RN101 weights rounded to float16 (as ``tools/bench/anchor.py``), the
authors' ``PositiveCoop`` with its seeded vectors copied into ours, so that both hold the same
parameters:

1. **Text features**: the positive prompts' unit features (their prompt learner, text encoder and
   ``txt_prompt_learn`` offset) and the negative vectors (``txt_prompt_neg``).
2. **Logits**: their positive minus negative score (what the two-way softmax ranks by) against ours.
3. **Loss**: their ``AsymmetricLoss`` (summed, focusing weights without gradient) against ours with
   ``loss.reduction: sum`` and ``loss.detach_focusing: true``, on partial targets (unknown = their -1,
   our 0); and ours at its default (the mean over known entries), times the known entries.
4. **Training**: ``--steps`` SGD steps of both, their two parameter groups (contexts at 0.01 x the
   learning rate, vectors at 1 x; momentum 0.9, no weight decay) against ours through the engine's
   optimiser and ``parameter_groups``; the largest difference of every learned tensor after the
   last step.

Deliberate differences, reported and not compared: their training loop's schedule (dassl's cosine
with a constant first epoch at 5e-3 for every group) against ours (a linear warm-up, then cosine,
each group at its own scale); the image encoder, which both freeze.

Results: ``parity.json`` and ``parity.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from promptmlr.backbones.openclip import OpenCLIPBackbone
from promptmlr.engine import TrainConfig, build_optimizer
from promptmlr.losses import LossConfig, build_loss
from promptmlr.models import build_method
from tools.bench.anchor import ARCH, anchor_config, fp16_rounded_rn101
from tools.bench.common import (
    anchor_targets,
    bench_command,
    class_names,
    device_info,
    import_checkout,
    partial_targets,
    write_report,
)

LEARNING_RATE = 0.01


def import_anchor(anchor_dir: Path) -> types.SimpleNamespace:
    """PositiveCoOp's model, CLIP builder and loss from its checkout."""
    return import_checkout("parity_positivecoop.py", anchor_dir, "PositiveCoOp",
                           "https://github.com/SamyakR99/PositiveCoOp",
                           {"build_model_conv_proj": "clip.model", "PositiveCoop": "models.positivecoop",
                            "AsymmetricLoss": "utils.asymmetric_loss"})


def build_pair(anchor, image_size: int, classes: list[str], n_ctx: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The authors' model (its image encoder frozen, as its builder freezes it) and ours, on the same
    weights, with the authors' seeded contexts and vectors copied into ours."""
    model = fp16_rounded_rn101()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    config = anchor_config(image_size, True, n_ctx)
    with contextlib.redirect_stdout(io.StringIO()):
        clip_model = anchor.build_model_conv_proj(state, config).float()
        torch.manual_seed(0)
        theirs = anchor.PositiveCoop(config, classes, clip_model)
        for parameter in theirs.backbone_params() + theirs.attn_params():
            parameter.requires_grad_(False)
    backbone = OpenCLIPBackbone(f"openclip:{ARCH}", model, image_size=image_size)
    ours = build_method("positivecoop", backbone, classes, n_ctx=n_ctx)
    with torch.no_grad():
        ours.positive.context.copy_(theirs.prompt_learner.ctx_pos)
        ours.positive.text_offset.copy_(theirs.txt_prompt_learn)
        ours.negative.embedding.copy_(theirs.txt_prompt_neg)
    return theirs, ours


def their_parameters(theirs: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Their learned tensors under our names."""
    return {"positive.context": theirs.prompt_learner.ctx_pos, "positive.text_offset": theirs.txt_prompt_learn,
            "negative.embedding": theirs.txt_prompt_neg}


def their_margin(theirs: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    output = theirs(images)  # [B, 2, C]: negative, positive
    return output[:, 1] - output[:, 0]


def compare(anchor, image_size: int, batch: int, classes: int, n_ctx: int, steps: int) -> dict[str, Any]:
    names = class_names(classes)
    theirs, ours = build_pair(anchor, image_size, names, n_ctx)
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    targets = partial_targets(batch, classes)
    rows: dict[str, float] = {}
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        features = ours.backbone.encode_image(images)
        their_positive = theirs.text_encoder(*theirs.prompt_learner()) + theirs.txt_prompt_learn
        rows["positive text features"] = float((F.normalize(their_positive, dim=-1) - ours.positive()).abs().max())
        rows["negative vectors"] = float((F.normalize(theirs.txt_prompt_neg, dim=-1) - ours.negative()).abs().max())
        reference = their_margin(theirs, images)
        rows["logits"] = float((ours(features).logits - reference).abs().max())
        logit_range = float(reference.abs().max())
    their_loss_fn = anchor.AsymmetricLoss(gamma_neg=2, gamma_pos=1)
    summed = build_loss(LossConfig(reduction="sum", detach_focusing=True))
    with torch.no_grad():
        their_loss = their_loss_fn(theirs(images), anchor_targets(targets))
        our_logits = ours(features).logits
        rows["loss (sum, focusing detached)"] = float((summed(our_logits, targets) - their_loss).abs())
        known = int((targets != 0).sum())
        rows["loss (our default: mean over known) x known"] = float(
            (build_loss(LossConfig())(our_logits, targets) * known - their_loss).abs())

    their_optimizer = torch.optim.SGD([{"params": theirs.prompt_params(), "lr": LEARNING_RATE * 0.01},
                                       {"params": theirs.txt_new_prompt(), "lr": LEARNING_RATE}],
                                      lr=LEARNING_RATE, momentum=0.9, weight_decay=0)
    our_optimizer = build_optimizer(TrainConfig(optimizer="sgd", lr=LEARNING_RATE, momentum=0.9, weight_decay=0),
                                    ours.parameter_groups())
    # ours with the focusing weights in the gradient (loss.detach_focusing false), for contrast
    undetached = copy.deepcopy(ours)
    undetached_optimizer = build_optimizer(TrainConfig(optimizer="sgd", lr=LEARNING_RATE, momentum=0.9,
                                                       weight_decay=0), undetached.parameter_groups())
    undetached_loss = build_loss(LossConfig(reduction="sum"))
    for _ in range(steps):
        their_optimizer.zero_grad()
        their_loss_fn(theirs(images), anchor_targets(targets)).backward()
        their_optimizer.step()
        for model, optimizer, loss_fn in ((ours, our_optimizer, summed),
                                          (undetached, undetached_optimizer, undetached_loss)):
            optimizer.zero_grad()
            loss_fn(model(features).logits, targets).backward()
            optimizer.step()
    learned, contrast = dict(ours.named_parameters()), dict(undetached.named_parameters())
    for name, tensor in their_parameters(theirs).items():
        rows[f"{name} after {steps} steps"] = float((learned[name] - tensor).abs().max())
    rows[f"(contrast) negative.embedding after {steps} steps, focusing weights in the gradient"] = float(
        (contrast["negative.embedding"] - their_parameters(theirs)["negative.embedding"]).abs().max())
    with torch.no_grad():
        rows[f"logits after {steps} steps"] = float((ours.eval()(features).logits
                                                    - their_margin(theirs.eval(), images)).abs().max())
    return {"rows": rows, "logit_range": logit_range, "known_entries": known}


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = ["# PositiveCoOp's own code beside promptmlr's `positivecoop`", "",
             f"`{report['command']}`", "",
             f"Random RN101 weights rounded to float16, {settings['image_size']} px, a batch of {settings['batch']} "
             f"images, {settings['classes']} classes, {settings['n_ctx']} class-specific context tokens; "
             f"{report['known_entries']} known labels; float32 on the CPU. Logits within "
             f"±{report['logit_range']:.1f}.", "",
             "| component | largest difference |", "|---|---:|"]
    lines += [f"| {name} | {value:.2e} |" for name, value in report["rows"].items()]
    lines += ["", "Deliberate, not compared: the schedule (theirs: dassl's cosine with a constant first epoch "
              "at 5e-3 for every group; ours: a linear warm-up, then cosine, each group at its own scale); the "
              "frozen image encoder. Our default loss is the mean over known entries (a learning rate that does "
              "not depend on the known proportion); `loss.reduction: sum` gives theirs."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor-dir", type=Path, required=True, help="a PositiveCoOp checkout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    for name in ("image_size", "batch", "classes", "n_ctx", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32 (RN101's stride), got {args.image_size}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    anchor = import_anchor(args.anchor_dir)
    warnings.filterwarnings("ignore", message="non-inplace resize is deprecated")  # their logits' reshape
    result = compare(anchor, args.image_size, args.batch, args.classes, args.n_ctx, args.steps)
    report = {"device": device_info(torch.device("cpu")), **result,
              "settings": {"image_size": args.image_size, "batch": args.batch, "classes": args.classes,
                           "n_ctx": args.n_ctx, "steps": args.steps, "lr": LEARNING_RATE},
              "command": bench_command("parity_positivecoop", argv)}
    write_report(args.out, "parity", report, markdown)
    return report


if __name__ == "__main__":
    main()
