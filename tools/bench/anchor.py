"""DualCoOp's own training step beside promptmlr's ``dualcoop``: same weights, same input, one process.

The speed claim (docs/results.md, Speed) is a ratio against the anchor's code, so the anchor's code runs
here, from a checkout the user points at; nothing of it is copied into this repository::

    git clone https://github.com/sunxm2357/DualCoOp ../DualCoOp
    python -m tools.bench.anchor --anchor-dir ../DualCoOp --out bench/anchor            # 448 px, batch 32
    python -m tools.bench.anchor --anchor-dir ../DualCoOp --out bench/anchor-224 --image-size 224

What it does:

1. **Weights.** Random RN101 weights (open_clip ``RN101-quickgelu``, seeded; OpenAI's RN101 uses
   QuickGELU), rounded to float16 as OpenAI's checkpoints are stored, go into DualCoOp's CLIP (its
   ``build_model_conv_proj`` at the chosen size) and into promptmlr's backbone alike.
2. **Models.** DualCoOp's ``DualCoop`` with its default class-agnostic contexts (``--csc``:
   class-specific) and promptmlr's ``dualcoop`` with the same options, the anchor's contexts
   copied in, so both compute the same function.
3. **Parity.** Both models' logits (positive minus negative, what the two-way softmax ranks by) on
   the same images, with the mean token (promptmlr's default) and without it; then the contexts and
   logits after ``--parity-steps`` training steps of copies of both, on partial labels, DualCoOp's
   as its VOC command trains (SGD, its summed ASL times ``--loss_w`` 0.03) and ours through the
   engine's optimiser with the ``dualcoop`` recipe's loss (``loss.reduction: sum``,
   ``detach_focusing``, ``weight``).
4. **Throughput**, images/s, each timed step run in turn within every round (interleaved, so that
   a neighbour's load on shared cores hits all of them alike), warm-up rounds left out:
   (a) the anchor's training step (its forward, ``AsymmetricLoss``, backward, SGD);
   (b) ours without the cache (encoder under ``no_grad``, then the step);
   (c) ours with the cache (the step on cached float16 features);
   (d) the encoder alone (building the cache);
   (e) the anchor's evaluation forward, (f) ours on cached features (its test scoring each epoch).
5. **The VOC 2007 recipe extrapolated** for both: 5,011 training and 4,952 test images, 50
   epochs, batch 32, the test set scored after every epoch, as the anchor trains. Compute only:
   JPEG decoding, which the anchor pays every epoch and the cache once, is left out of both.

Results: ``anchor.json`` and ``anchor.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import math
import statistics
import types
from pathlib import Path
from typing import Any

import torch

from promptmlr.backbones import ImageFeatures
from promptmlr.backbones.openclip import OpenCLIPBackbone, load_openclip_model
from promptmlr.cache import CacheConfig
from promptmlr.engine import TrainConfig, build_optimizer
from promptmlr.losses import LossConfig, build_loss
from tools.bench.common import (
    RECIPE_BATCH,
    RECIPE_EPOCHS,
    VOC_TEST_IMAGES,
    VOC_TRAIN_IMAGES,
    MethodSteps,
    anchor_targets,
    autocast,
    bench_command,
    class_names,
    device_info,
    import_checkout,
    interleaved_seconds,
    partial_targets,
    pick_device,
    write_report,
)

ARCH = "RN101-quickgelu"
TARGET_SPEEDUP = 50
ANCHOR_EVAL_BATCH = 100  # DualCoOp's DATALOADER.TEST.BATCH_SIZE
STEPS = {"anchor_train": "(a) DualCoOp's training step", "ours_uncached": "(b) ours, no cache",
         "ours_cached": "(c) ours, cached", "encoder": "(d) our encoder alone, at the cache builder's batch",
         "anchor_image": "(e) DualCoOp's image encoder alone", "anchor_text": "(e') DualCoOp's prompts, forward",
         "ours_test_pass": "(f) ours, the whole test set scored on the cache"}


# ------------------------------------------------------------------------------------------ anchor
def import_anchor(anchor_dir: Path) -> types.SimpleNamespace:
    """DualCoOp's model, CLIP builder and loss from its checkout."""
    return import_checkout("anchor.py", anchor_dir, "DualCoOp", "https://github.com/sunxm2357/DualCoOp",
                           {"build_model_conv_proj": "clip.model", "DualCoop": "models.dualcoop",
                            "AsymmetricLoss": "utils.asymmetric_loss"})


def anchor_config(image_size: int, class_specific: bool, n_ctx: int) -> types.SimpleNamespace:
    """The part of DualCoOp's yacs config its model reads (defaults of its ``utils/build_cfg.py``)."""
    node = types.SimpleNamespace
    return node(MODEL=node(BACKBONE=node(NAME="RN101")), INPUT=node(SIZE=(image_size, image_size)),
                TRAINER=node(FINETUNE_BACKBONE=False, FINETUNE_ATTN=False, COOP_MLC=node(
                    N_CTX_POS=n_ctx, N_CTX_NEG=n_ctx, CSC=class_specific, POSITIVE_PROMPT_INIT="",
                    NEGATIVE_PROMPT_INIT="", LS=20, ASL_GAMMA_NEG=2, ASL_GAMMA_POS=1)))


def fp16_rounded_rn101() -> torch.nn.Module:
    """Seeded random RN101 weights, rounded to float16 values (as OpenAI ships CLIP; DualCoOp's
    loader casts to float16 on the way in, so only such weights load into both codes unchanged)."""
    model = load_openclip_model(ARCH, None)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def build_pair(anchor, image_size: int, classes: list[str], class_specific: bool, n_ctx: int,
               device: torch.device) -> tuple[torch.nn.Module, OpenCLIPBackbone]:
    """DualCoOp's model (its prompt learner seeded, backbone and attention pool frozen as its
    ``dualcoop()`` builder freezes them) and our backbone, on the same weights."""
    model = fp16_rounded_rn101()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    config = anchor_config(image_size, class_specific, n_ctx)
    with contextlib.redirect_stdout(io.StringIO()):  # its builders print every skipped key and context
        clip_model = anchor.build_model_conv_proj(state, config).float()
        torch.manual_seed(0)
        anchor_model = anchor.DualCoop(config, classes, clip_model)
        for parameter in anchor_model.backbone_params() + anchor_model.attn_params():
            parameter.requires_grad_(False)
    backbone = OpenCLIPBackbone(f"openclip:{ARCH}", model, image_size=image_size)
    return anchor_model.to(device), backbone.to(device)


def copy_contexts(anchor_model, steps: MethodSteps) -> None:
    """The anchor's learned contexts into ours, so that both prompt sets are the same."""
    learner = anchor_model.prompt_learner
    with torch.no_grad():
        steps.method.positive.context.copy_(learner.ctx_pos)
        steps.method.negative.context.copy_(learner.ctx_neg)


def anchor_margin(anchor_model, images: torch.Tensor) -> torch.Tensor:
    """The anchor's positive minus negative logit ``[B, C]`` (its logits are ``[B, 2, C]``, negative first)."""
    logits = anchor_model(images)
    return logits[:, 1] - logits[:, 0]


# DualCoOp's training, as its VOC 2007 command and config run it: SGD over the prompts at OPTIM.LR with
# dassl's momentum and weight decay, its AsymmetricLoss (summed, focusing weights without gradient)
# times --loss_w
ANCHOR_LR, ANCHOR_MOMENTUM, ANCHOR_WEIGHT_DECAY, ANCHOR_LOSS_WEIGHT = 0.002, 0.9, 5e-4, 0.03


def training_parity(anchor, anchor_model, method, images: torch.Tensor, features: ImageFeatures,
                    targets: torch.Tensor, steps: int) -> dict[str, float]:
    """The largest differences after ``steps`` training steps of copies of both models from the
    same contexts, on partial ``targets``: theirs as DualCoOp's ``train.py``, ours through the
    engine's optimiser with ``loss.reduction: sum``, ``detach_focusing`` and ``weight`` set to its
    ``--loss_w``."""
    theirs, ours = copy.deepcopy(anchor_model), copy.deepcopy(method)
    their_loss = anchor.AsymmetricLoss(gamma_neg=2, gamma_pos=1)
    their_optimizer = torch.optim.SGD(theirs.prompt_params(), lr=ANCHOR_LR, momentum=ANCHOR_MOMENTUM,
                                      weight_decay=ANCHOR_WEIGHT_DECAY)
    our_loss = build_loss(LossConfig(reduction="sum", detach_focusing=True, weight=ANCHOR_LOSS_WEIGHT))
    our_optimizer = build_optimizer(TrainConfig(optimizer="sgd", lr=ANCHOR_LR, momentum=ANCHOR_MOMENTUM,
                                                weight_decay=ANCHOR_WEIGHT_DECAY), ours.parameter_groups())
    for _ in range(steps):
        theirs.eval()
        theirs.prompt_learner.train()
        their_optimizer.zero_grad()
        (ANCHOR_LOSS_WEIGHT * their_loss(theirs(images).float(), anchor_targets(targets))).backward()
        their_optimizer.step()
        ours.train()
        our_optimizer.zero_grad()
        our_loss(ours(features).logits, targets).backward()
        our_optimizer.step()
    learner = theirs.prompt_learner
    with torch.no_grad():
        return {"positive contexts": float((ours.positive.context - learner.ctx_pos).abs().max()),
                "negative contexts": float((ours.negative.context - learner.ctx_neg).abs().max()),
                "logits": float((ours.eval()(features).logits - anchor_margin(theirs.eval(), images)).abs().max())}


# -------------------------------------------------------------------------------------------- timing
def recipe_seconds(per_step: dict[str, float], batch_size: int, epochs: int = RECIPE_EPOCHS) -> dict[str, float]:
    """Compute-only seconds of the VOC 2007 recipe for the anchor and for us, from seconds per call
    measured at ``batch_size``.

    Training steps are counted at the recipe's batch 32: a step measured at another batch gets the
    encoder's per-image cost for the images it lacks (the prompts' text pass costs the same at any
    batch; our cached step is taken as it is). The anchor scores the test set in batches of 100,
    each with one pass of its prompts; ours is timed scoring the whole cached test set.
    """
    steps_per_epoch = math.ceil(VOC_TRAIN_IMAGES / RECIPE_BATCH)
    extra = RECIPE_BATCH / batch_size - 1
    anchor_step = per_step["anchor_train"] + extra * per_step["anchor_image"]
    anchor_eval = (VOC_TEST_IMAGES * per_step["anchor_image"] / batch_size
                   + math.ceil(VOC_TEST_IMAGES / ANCHOR_EVAL_BATCH) * per_step["anchor_text"])
    encode = per_step["encoder"] / batch_size
    return {"anchor": epochs * (steps_per_epoch * anchor_step + anchor_eval),
            "ours_cached": ((VOC_TRAIN_IMAGES + VOC_TEST_IMAGES) * encode
                            + epochs * (steps_per_epoch * per_step["ours_cached"] + per_step["ours_test_pass"])),
            "ours_uncached": epochs * (steps_per_epoch * (per_step["ours_uncached"] + extra * per_step["encoder"])
                                       + VOC_TEST_IMAGES * encode + per_step["ours_test_pass"])}


# -------------------------------------------------------------------------------------------- report
def markdown(report: dict[str, Any]) -> str:
    settings, device = report["settings"], report["device"]
    lines = [f"# DualCoOp's code vs promptmlr's `dualcoop`: {device['name']} ({device['type']})", "",
             f"RN101 (random weights, float16-rounded) at {settings['image_size']} px, batch "
             f"{settings['batch_size']}, {settings['precision']}, {settings['classes']} classes, "
             f"{'class-specific' if settings['class_specific'] else 'class-agnostic'} contexts of "
             f"{settings['n_ctx']} tokens; torch {device['torch']}"
             + (f", {device['threads']} threads" if device["type"] == "cpu" else "")
             + f"; {settings['warmup']} warm-up and {settings['rounds']} timed rounds, interleaved; medians. "
             f"(d) encodes in chunks of {settings['encode_batch']} images, as the cache builder does here.", "",
             "| step | s/step | images/s |", "| --- | --- | --- |"]
    for name, label in STEPS.items():
        seconds = report["seconds_per_step"][name]
        images = {"anchor_text": 0, "ours_test_pass": VOC_TEST_IMAGES}.get(name, settings["batch_size"])
        rate = f"{images / seconds:.2f}" if images else "–"
        lines.append(f"| {label} | {seconds:.3f} | {rate} |")
    rates = report["images_per_second"]
    lines += ["", f"Per training step: ours without the cache {rates['ours_uncached'] / rates['anchor_train']:.1f}× "
              f"the anchor's, with the cache {rates['ours_cached'] / rates['anchor_train']:.1f}×.", "",
              "## Parity (same weights, contexts and images)", "",
              "| promptmlr `dualcoop` | max abs difference of the logits (positive − negative) |", "| --- | --- |",
              f"| mean token in (the default) | {report['parity']['mean_token']:.2e} |",
              f"| mean token out (`mean_token: false`) | {report['parity']['no_mean_token']:.2e} |", "",
              f"(Logits span ±{report['parity']['logit_range']:.2f} here.)", "",
              f"After {settings['parity_steps']} training steps of both from the same contexts, on partial labels "
              f"(theirs: SGD at {ANCHOR_LR}, momentum {ANCHOR_MOMENTUM}, weight decay {ANCHOR_WEIGHT_DECAY}, its "
              f"summed ASL times {ANCHOR_LOSS_WEIGHT}; ours: the same through the engine's optimiser with "
              f"`loss.reduction: sum`, `loss.detach_focusing: true`, `loss.weight: {ANCHOR_LOSS_WEIGHT}`):", "",
              "| after the steps | max abs difference |", "| --- | --- |",
              *[f"| {name} | {value:.2e} |" for name, value in report["parity"]["after_steps"].items()], "",
              "## VOC 2007 recipe, extrapolated (compute only)", "",
              f"{VOC_TRAIN_IMAGES:,} + {VOC_TEST_IMAGES:,} images, {RECIPE_EPOCHS} epochs, batch {RECIPE_BATCH}, "
              f"the test set scored after every epoch; JPEG decoding left out of both.", "",
              "| code | hours | speed-up |", "| --- | --- | --- |"]
    recipe = report["recipe_seconds"]
    for name, label in (("anchor", "DualCoOp's own"), ("ours_uncached", "promptmlr `dualcoop`, no cache"),
                        ("ours_cached", "promptmlr `dualcoop`, cached (the default)")):
        lines.append(f"| {label} | {recipe[name] / 3600:.2f} | {recipe['anchor'] / recipe[name]:.1f}× |")
    speedup = recipe["anchor"] / recipe["ours_cached"]
    lines += ["", f"Target ≥ {TARGET_SPEEDUP}× for the cached recipe: {speedup:.1f}×, "
              f"**{'met' if speedup >= TARGET_SPEEDUP else 'missed'}**.", "", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor-dir", type=Path, required=True, help="a checkout of sunxm2357/DualCoOp")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=RECIPE_BATCH)
    parser.add_argument("--classes", type=int, default=20, help="VOC's 20 by default")
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--csc", action="store_true", help="class-specific contexts (DualCoOp's --csc)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parity-steps", type=int, default=3, help="training steps of both before the second parity")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="both codes' steps under this autocast (DualCoOp trains under fp16 autocast on a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--encode-batch", type=int, default=None,
                        help="(d)'s batch; default: the cache builder's for the device (train.cache.batch_size)")
    args = parser.parse_args(argv)
    if args.encode_batch is None:
        args.encode_batch = CacheConfig().encode_batch_size(TrainConfig().eval_batch_size, pick_device(args.device))
    for name in ("image_size", "batch_size", "classes", "n_ctx", "rounds", "encode_batch", "parity_steps") + \
            (("threads",) if args.threads else ()):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    if args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32 (RN101's stride), got {args.image_size}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    anchor = import_anchor(args.anchor_dir)
    classes = class_names(args.classes)
    anchor_model, backbone = build_pair(anchor, args.image_size, classes, args.csc, args.n_ctx, device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
    with torch.no_grad():
        encoded = backbone.encode_image(images)
    cached = ImageFeatures(encoded.global_features.half().float(), encoded.dense_features.half().float(), encoded.grid)
    options = {"class_specific": args.csc, "n_ctx": args.n_ctx}
    ours = MethodSteps("dualcoop", backbone, classes, images, cached, device, args.precision, options)
    copy_contexts(anchor_model, ours)

    anchor_model.eval()
    with torch.no_grad():
        reference = anchor_margin(anchor_model, images)
        ours.method.eval()
        with_token = ours.method(encoded).logits
        without = MethodSteps("dualcoop", backbone, classes, images, cached, device, "fp32",
                              {**options, "mean_token": False})
        copy_contexts(anchor_model, without)
        without_token = without.method.eval()(encoded).logits
    parity = {"mean_token": float((with_token - reference).abs().max()),
              "no_mean_token": float((without_token - reference).abs().max()),
              "logit_range": float(reference.abs().max())}
    del without
    print(f"parity: max |anchor - ours| {parity['mean_token']:.2e} with the mean token, "
          f"{parity['no_mean_token']:.2e} without (logits within ±{parity['logit_range']:.2f})")
    parity["after_steps"] = training_parity(anchor, anchor_model, ours.method, images, encoded,
                                            partial_targets(args.batch_size, args.classes), args.parity_steps)
    print(f"after {args.parity_steps} training steps: " + ", ".join(
        f"{name} {value:.2e}" for name, value in parity["after_steps"].items()))

    loss = anchor.AsymmetricLoss(gamma_neg=2, gamma_pos=1)
    optimizer = torch.optim.SGD(anchor_model.prompt_params(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    targets = (ours.targets > 0).float()

    def anchor_train() -> None:
        anchor_model.eval()
        anchor_model.prompt_learner.train()
        with autocast(device, args.precision):
            objective = 0.03 * loss(anchor_model(images).float(), targets)  # its VOC command's --loss_w
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()

    @torch.no_grad()
    def anchor_image() -> None:
        with autocast(device, args.precision):
            anchor_model.image_encoder(images)

    @torch.no_grad()
    def anchor_text() -> None:
        with autocast(device, args.precision):
            anchor_model.text_encoder(*anchor_model.prompt_learner())

    @torch.no_grad()
    def encoder() -> None:  # as the cache builder runs it: its batch for this device
        with autocast(device, args.precision):
            for chunk in images.split(args.encode_batch):
                backbone.encode_image(chunk)

    test_batches = math.ceil(VOC_TEST_IMAGES / args.batch_size)

    def ours_test_pass() -> None:  # as evaluation runs: the prompts encoded once, then every batch
        with ours.method.fixed_prompts(functools.partial(autocast, device, args.precision)):
            for _ in range(test_batches):
                ours.predict_cached()

    steps = {"anchor_train": anchor_train, "ours_uncached": ours.train_uncached, "ours_cached": ours.train_cached,
             "encoder": encoder, "anchor_image": anchor_image, "anchor_text": anchor_text,
             "ours_test_pass": ours_test_pass}
    seconds = interleaved_seconds(steps, args.warmup, args.rounds, device, log=print)
    per_step = {name: statistics.median(times) for name, times in seconds.items()}
    report = {"device": device_info(device), "settings": {key: (str(value) if isinstance(value, Path) else value)
                                                          for key, value in vars(args).items()},
              "parity": parity, "seconds": seconds, "seconds_per_step": per_step,
              "images_per_second": {name: args.batch_size / value for name, value in per_step.items()},
              "recipe_seconds": recipe_seconds(per_step, args.batch_size),
              "command": bench_command("anchor", argv)}
    report["settings"]["class_specific"] = report["settings"].pop("csc")
    write_report(args.out, "anchor", report, markdown)
    return report


if __name__ == "__main__":
    main()
