"""CLSL's own code beside promptmlr's ``clsl``: same weights, same input, component by component,
loss term by loss term, and over a few training steps.

The authors' code runs from a checkout the user points at; nothing of it is copied here::

    git clone https://github.com/Qingdandian/CLSL ../CLSL
    python -m tools.bench.parity_clsl --anchor-dir ../CLSL --out bench/parity-clsl

Both sides read the same dense map: the authors' CLIP model (``models/sarlp_clip.py``, class
``SARLP``) is built on a stand-in for its CLIP whose ``visual`` hands a random 512-wide map through
(with a leading token, which their model drops), and ours on the same locations; both take the
same fixed class text features, seeded unit vectors standing in for a text encoder's. Their
weights are copied into ours (a Conv1d of kernel 1 into a Linear). What it compares:

1. **Components**, in evaluation mode: the sine position embedding, the encoded locations, the
   class features (``ttd``), the bilinear attention scores, the per-location logits (``fc2``), the
   recovery head's per-location scores (``fc0``) and the predicted probabilities (their output is
   the sigmoid of the logits).
2. **Loss terms**, in training mode, on partial labels (unknown = their -1 with mask 0, our 0): their
   masked ASL on the prediction (``loss_fc``) against ours with ``configs/methods/clsl.yaml``'s
   ``train.loss``; their recovery term ``0.1 * loss_sam`` against ours; their total ``ce_loss``.
   Contrasts, not parity: the recovery term with the earlier rules (``recovered_label: sigmoid``,
   ``recovery_loss: bce``) and the prediction's loss at our default ``train.loss``.
3. **Training**: ``--steps`` steps of both, theirs with their ``get_optimizer`` (AdamW) and
   ``get_lr_scheduler`` (OneCycleLR) and ``ModelEma``, ours with the engine's ``build_optimizer``,
   ``build_scheduler`` and ``ParameterEMA`` under the recipe's settings: the learning rate and total
   loss of every step, the first step's gradients and each component's change over the steps (as
   ``|theirs - ours| / |theirs|`` over the component's tensors), every learned entry, their moving
   averages. Adam moves an entry whose exact gradient is 0 (the attention's key bias, the bias
   before BatchNorm, biases under a softmax over the classes) by about the learning rate on float
   noise, so its changes agree to ~1e-2; the same steps with SGD (a contrast row) agree to float
   precision.

Stubbed, the minimum for their code to run here: their CLIP (the stand-in above) and
``torch.Tensor.cuda`` while their model is built (it moves the text embeddings it loads to CUDA).
Dropout is off on both sides in training mode (each side draws its own masks). Deliberate
differences, reported and not compared: the frozen CLIP (theirs trains it), the text features
(theirs: BERT's embedding of the class name), BatchNorm's running statistics, which their
``ModelEma`` averages and ours keeps live (a contrast row).

Results: ``parity.json`` and ``parity.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import tempfile
import types
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.engine import ParameterEMA, TrainConfig, build_optimizer, build_scheduler
from promptmlr.losses import LossConfig, build_loss
from promptmlr.models import build_method
from promptmlr.models.clsl import sine_position_embedding
from promptmlr.settings import read_yaml
from tools.bench.common import (
    anchor_targets,
    bench_command,
    class_names,
    cuda_as_identity,
    device_info,
    import_checkout,
    partial_targets,
    write_report,
)
from tools.bench.common import largest_difference as largest

WIDTH = 512  # their CLIP model's widths are written as 512
LEARNING_RATE = 1e-3
SGD_LEARNING_RATE = 1e-7  # the summed loss times 1000 has gradients of ~1e3: steps of ~1e-4
EMA_DECAY = 0.9983
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "methods" / "clsl.yaml"
# their key's pattern -> ours, the first that matches; a Conv1d of kernel 1 loses its last axis on the way
RENAMED = ((r"^encoder\.layers\.(\d+)\.self_attn\.", r"enhancement.encoder.\1.attention."),
           (r"^encoder\.layers\.(\d+)\.linear1\.", r"enhancement.encoder.\1.feedforward.0."),
           (r"^encoder\.layers\.(\d+)\.linear2\.", r"enhancement.encoder.\1.feedforward.3."),
           (r"^encoder\.layers\.", "enhancement.encoder."),
           (r"^attention2\.linear1\.", "enhancement.attention.locations."),
           (r"^attention2\.linear2\.", "enhancement.attention.classes."),
           (r"^attention2\.hidden_linear\.", "enhancement.attention.hidden."),
           (r"^attention2\.target_linear\.", "enhancement.attention.score."),
           (r"^ttd\.0\.", "enhancement.context.expand."), (r"^ttd\.1\.", "enhancement.context.norm."),
           (r"^ttd\.3\.", "enhancement.context.project."), (r"^fc2\.", "enhancement.classifier."),
           (r"^fc0\.", "recovery_head."))
COMPONENTS = {"encoder": "enhancement.encoder.", "class features (ttd)": "enhancement.context.",
              "bilinear attention (attention2)": "enhancement.attention.",
              "classifier (fc2)": "enhancement.classifier.", "recovery head (fc0)": "recovery_head."}


class SeededText:
    """Stands in for a CLIP's text encoder: a fixed unit vector per prompt, seeded by the prompt."""

    embed_dim = WIDTH

    def encode_text(self, prompts: list[str], normalize: bool = True) -> torch.Tensor:
        vectors = [torch.randn(WIDTH, generator=torch.Generator().manual_seed(zlib.crc32(prompt.encode())))
                   for prompt in prompts]
        return F.normalize(torch.stack(vectors), dim=-1)


class DenseMapThrough(nn.Module):
    """Stands in for their CLIP's ``visual``: the "image" it is given is the dense map
    ``[B, D, 1 + P]``, returned as their ``build_model_conv_proj`` model returns one."""

    def forward(self, dense: torch.Tensor) -> tuple[torch.Tensor, None]:
        return dense, None


@dataclasses.dataclass
class Batch:
    """One batch as each side takes it: their dense map ``[B, D, 1 + P]``, labels ``[B, 1, C]`` (1, 0,
    -1 unknown) and mask; our features and labels (1, -1, 0 unknown)."""

    dense: torch.Tensor
    their_targets: torch.Tensor
    mask: torch.Tensor
    features: ImageFeatures
    targets: torch.Tensor


@dataclasses.dataclass
class Trained:
    """What ``train_both`` leaves: per step, the learning rates' and the total losses' differences; the
    first step's gradients and each side's moving average."""

    rates: list[float]
    losses: list[float]
    gradients: dict[str, dict[str, torch.Tensor]]
    their_ema: nn.Module
    our_ema: ParameterEMA


def import_anchor(anchor_dir: Path) -> types.SimpleNamespace:
    """CLSL's CLIP model and training helpers from its checkout."""
    return import_checkout("parity_clsl.py", anchor_dir, "CLSL", "https://github.com/Qingdandian/CLSL",
                           {"SARLP": "models.sarlp_clip", "get_optimizer": "lib.util",
                            "get_lr_scheduler": "lib.util", "ModelEma": "lib.util"})


def anchor_config(classes: int, grid: int, embed_path: Path) -> argparse.Namespace:
    """Their ``lib/util.py`` arguments as the README's commands give them (``--pos``, one encoder
    layer of 8 heads, ASL), at an image size whose final grid is ``grid``."""
    return argparse.Namespace(arch="resnet101", img_size=32 * grid, num_heads=8, num_layers=1, normalize_before=False,
                              pos=True, rm_cls=False, embed_type="bert", embed_path=str(embed_path),
                              num_classes=classes, loss="asl", gamma_neg=2.0, gamma_pos=0.0, clip=0.0, partial=0.5,
                              optimizer="AdamW", lr=LEARNING_RATE, weight_decay=1e-4, lr_scheduler="OneCycleLR",
                              max_epochs=1, pct_start=0.2)


def as_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their state dict under our names and shapes (their position embedding left out)."""
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("position_embedding."):
            continue
        for pattern, replacement in RENAMED:
            key, found = re.subn(pattern, replacement, key)
            if found:
                break
        renamed[key] = tensor.squeeze(-1) if tensor.dim() == 3 else tensor
    return renamed


def build_pair(anchor, names: list[str], grid: int, workdir: Path
               ) -> tuple[nn.Module, nn.Module, argparse.Namespace]:
    """Their model and ours, holding the same weights and the same class text."""
    torch.manual_seed(0)
    ours = build_method("clsl", SeededText(), names)
    np.save(workdir / "embeddings.npy", ours.text.numpy())
    config = anchor_config(len(names), grid, workdir / "embeddings.npy")
    with cuda_as_identity():
        theirs = anchor.SARLP(types.SimpleNamespace(visual=DenseMapThrough(), dtype=torch.float32), WIDTH, config)
    state = as_ours(theirs.state_dict())
    unmatched = sorted(set(state) ^ set(ours.state_dict()))
    if unmatched:
        raise SystemExit(f"parity_clsl.py: their weights do not map onto ours: {unmatched}")
    ours.load_state_dict(state)
    return theirs, ours, config


def without_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0


def capture(modules: dict[str, nn.Module]) -> tuple[dict[str, torch.Tensor], list]:
    """The output of each module (the first, where it returns several) as it runs."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        return lambda module, inputs, output: seen.__setitem__(name, output[0] if isinstance(output, tuple) else output)
    return seen, [module.register_forward_hook(hook(name)) for name, module in modules.items()]


def compare_components(theirs: nn.Module, ours: nn.Module, batch: Batch) -> dict[str, float]:
    their_seen, their_hooks = capture({"encoder": theirs.encoder, "ttd": theirs.ttd, "attention2": theirs.attention2,
                                       "fc2": theirs.fc2, "fc0": theirs.fc0})
    our_seen, our_hooks = capture({"encoder": ours.enhancement.encoder[-1], "ttd": ours.enhancement.context,
                                   "attention2": ours.enhancement.attention, "fc2": ours.enhancement.classifier,
                                   "fc0": ours.recovery_head})
    with torch.no_grad():
        probabilities = theirs.eval()(batch.dense)["logits"]
        output = ours.eval()(batch.features)
    for handle in their_hooks + our_hooks:
        handle.remove()
    their_position = theirs.position_embedding.pe[0].flatten(1).T
    return {"position embedding": largest(their_position, sine_position_embedding(batch.features.grid, WIDTH)),
            "encoded locations": largest(their_seen["encoder"], our_seen["encoder"]),
            "class features (ttd)": largest(their_seen["ttd"].transpose(1, 2), our_seen["ttd"]),
            "bilinear attention scores": largest(their_seen["attention2"].transpose(1, 2), our_seen["attention2"]),
            "per-location logits (fc2)": largest(their_seen["fc2"], our_seen["fc2"]),
            "recovery scores per location (fc0)": largest(their_seen["fc0"].transpose(1, 2), our_seen["fc0"]),
            "probabilities": largest(probabilities, output.probabilities)}


def recipe_loss() -> LossConfig:
    """``train.loss`` as ``configs/methods/clsl.yaml`` sets it."""
    return LossConfig(**read_yaml(RECIPE)["train"]["loss"])


def our_terms(ours: nn.Module, features: ImageFeatures, targets: torch.Tensor, loss_fn) -> dict[str, torch.Tensor]:
    output = ours(features)
    return {"main": loss_fn(output.logits, targets), **ours.auxiliary_losses(output, targets, loss_fn),
            "output": output}


def recovery_under(ours: nn.Module, output, targets: torch.Tensor, loss_fn, **rules: str) -> torch.Tensor:
    """Our recovery term under other recovery rules (``recovered_label``, ``recovery_loss``)."""
    variant = copy.copy(ours)
    variant.config = dataclasses.replace(ours.config, **rules)
    return variant.auxiliary_losses(output, targets, loss_fn)["recovery"]


def compare_losses(theirs: nn.Module, ours: nn.Module, batch: Batch) -> dict[str, float]:
    theirs.train()
    ours.train()
    loss_fn = build_loss(recipe_loss())
    with torch.no_grad():
        ret = theirs(batch.dense, y=batch.their_targets, mask_label=batch.mask)
        targets = batch.targets
        terms = our_terms(ours, batch.features, targets, loss_fn)
        output, their_recovery = terms["output"], ours.config.recovery_weight * ret["loss_sam"]
        return {
            "prediction's loss (masked ASL, sum x 1000)": largest(ret["loss_fc"], terms["main"]),
            "recovery term (0.1 x soft ASL, mean x 1000)": largest(their_recovery, terms["recovery"]),
            "total loss": largest(ret["ce_loss"], terms["main"] + terms["recovery"]),
            "(contrast) recovery term, recovered_label sigmoid": largest(
                their_recovery, recovery_under(ours, output, targets, loss_fn, recovered_label="sigmoid")),
            "(contrast) recovery term, recovery_loss bce": largest(
                their_recovery, recovery_under(ours, output, targets, loss_fn, recovery_loss="bce")),
            "(contrast) prediction's loss, our default train.loss": largest(
                ret["loss_fc"], build_loss(LossConfig())(output.logits, targets))}


def relative(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], prefix: str) -> float:
    """``|theirs - ours| / |theirs|`` over every tensor whose name starts with ``prefix`` (Frobenius
    norms): robust to the few entries Adam moves by +-lr on float noise, where the exact gradient is 0
    (the attention's key bias, a bias before BatchNorm or under a softmax over the classes)."""
    keys = [key for key in ours if key.startswith(prefix)]
    difference = sum(float((theirs[key] - ours[key]).square().sum()) for key in keys)
    size = sum(float(theirs[key].square().sum()) for key in keys)
    return (difference / max(size, 1e-30)) ** 0.5


def learned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().clone() for key, tensor in state.items() if tensor.is_floating_point()}


def train_both(anchor, theirs: nn.Module, ours: nn.Module, config: argparse.Namespace, batch: Batch, steps: int
               ) -> Trained:
    """``steps`` steps of both on the batch, theirs as their ``train.py`` (``get_optimizer``,
    ``get_lr_scheduler``, ``ModelEma``; ``config.optimizer``), ours through the engine's."""
    their_optimizer = anchor.get_optimizer(theirs.parameters(), config)
    their_scheduler = anchor.get_lr_scheduler(their_optimizer, config, steps_per_epoch=steps)
    their_ema = anchor.ModelEma(theirs, decay=EMA_DECAY)
    train = TrainConfig(optimizer=config.optimizer.lower(), lr=config.lr, weight_decay=config.weight_decay,
                        momentum=0.0, lr_schedule="onecycle", lr_pct_start=config.pct_start, epochs=1,
                        ema_decay=EMA_DECAY, loss=recipe_loss())
    our_optimizer = build_optimizer(train, ours.parameter_groups())
    our_scheduler = build_scheduler(train, our_optimizer, steps, 0)
    our_ema = ParameterEMA(ours, EMA_DECAY)
    loss_fn = build_loss(train.loss)
    trained = Trained([], [], {}, their_ema.module, our_ema)
    for step in range(steps):
        theirs.train()
        ours.train()
        trained.rates.append(abs(their_optimizer.param_groups[0]["lr"] - our_optimizer.param_groups[0]["lr"]))
        their_optimizer.zero_grad()
        their_loss = theirs(batch.dense, y=batch.their_targets, mask_label=batch.mask)["ce_loss"]
        their_loss.backward()
        our_optimizer.zero_grad()
        terms = our_terms(ours, batch.features, batch.targets, loss_fn)
        our_loss = terms["main"] + terms["recovery"]
        our_loss.backward()
        if step == 0:
            trained.gradients = {"theirs": learned(as_ours({key: p.grad for key, p in theirs.named_parameters()})),
                                 "ours": learned({key: p.grad for key, p in ours.named_parameters()})}
        for optimizer, scheduler in ((their_optimizer, their_scheduler), (our_optimizer, our_scheduler)):
            optimizer.step()
            scheduler.step()
        their_ema.update(theirs)
        our_ema.update()
        trained.losses.append(largest(their_loss, our_loss) / float(their_loss.detach().abs()))
    return trained


def changes(theirs: nn.Module, ours: nn.Module, start: dict[str, torch.Tensor]
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each side's learned tensors minus where both started, under our names."""
    their_state, our_state = learned(as_ours(theirs.state_dict())), learned(ours.state_dict())
    return ({key: tensor - start[key] for key, tensor in their_state.items()},
            {key: tensor - start[key] for key, tensor in our_state.items()})


def compare_training(anchor, theirs: nn.Module, ours: nn.Module, config: argparse.Namespace, batch: Batch,
                     steps: int) -> dict[str, float]:
    """AdamW under OneCycleLR on both; then SGD on copies of the same start, for contrast: Adam moves an
    entry whose exact gradient is 0 (the key bias, a bias before BatchNorm or under a softmax over the
    classes) by about the learning rate on float noise, SGD by the noise alone."""
    start = learned(ours.state_dict())
    with_sgd = (copy.deepcopy(theirs), copy.deepcopy(ours))
    trained = train_both(anchor, theirs, ours, config, batch, steps)
    rows = {f"learning rate, each of {steps} steps": max(trained.rates),
            f"total loss, each of {steps} steps (relative)": max(trained.losses)}
    for component, prefix in COMPONENTS.items():
        rows[f"{component}: gradient of the first step (relative)"] = relative(
            trained.gradients["theirs"], trained.gradients["ours"], prefix)
    their_moves, our_moves = changes(theirs, ours, start)
    for component, prefix in COMPONENTS.items():
        rows[f"{component}: change over {steps} steps (relative)"] = relative(their_moves, our_moves, prefix)
    rows[f"any learned entry after {steps} steps"] = max(float(move.abs().max()) for move in (
        their_moves[key] - our_moves[key] for key in our_moves))
    their_averages = as_ours(trained.their_ema.state_dict())
    rows[f"moving average of the parameters after {steps} steps"] = max(
        largest(their_averages[name], shadow) for name, shadow in trained.our_ema.shadow.items())
    running_mean = "enhancement.context.norm.running_mean"
    rows[f"(contrast) BatchNorm running mean after {steps} steps: their average, our live one"] = largest(
        their_averages[running_mean], ours.state_dict()[running_mean])
    with torch.no_grad():
        rows[f"probabilities after {steps} steps"] = largest(theirs.eval()(batch.dense)["logits"],
                                                             ours.eval()(batch.features).probabilities)
    sgd = argparse.Namespace(**{**vars(config), "optimizer": "SGD", "lr": SGD_LEARNING_RATE})
    train_both(anchor, *with_sgd, sgd, batch, steps)
    rows[f"(contrast) SGD in place of AdamW: change over {steps} steps (relative)"] = relative(
        *changes(*with_sgd, start), "")
    return rows


def compare(anchor, batch_size: int, classes: int, grid: int, steps: int) -> dict[str, Any]:
    names = class_names(classes)
    with tempfile.TemporaryDirectory() as workdir:
        theirs, ours, config = build_pair(anchor, names, grid, Path(workdir))
    locations = torch.randn(batch_size, grid * grid, WIDTH, generator=torch.Generator().manual_seed(0))
    targets = partial_targets(batch_size, classes)
    batch = Batch(dense=torch.cat([locations.mean(1, keepdim=True), locations], dim=1).transpose(1, 2),
                  their_targets=anchor_targets(targets)[:, None],  # [B, 1, C], as their data loader stacks them
                  mask=(targets != 0).long()[:, None],
                  features=ImageFeatures(locations.mean(1), locations, (grid, grid)), targets=targets)
    rows = compare_components(theirs, ours, batch)
    without_dropout(theirs)
    without_dropout(ours)
    rows |= compare_losses(theirs, ours, batch)
    rows |= compare_training(anchor, theirs, ours, config, batch, steps)
    return {"rows": rows, "known_entries": int((targets != 0).sum())}


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = ["# CLSL's own code beside promptmlr's `clsl`", "", f"`{report['command']}`", "",
             f"Their CLIP model (`models/sarlp_clip.py`) and ours on the same random {WIDTH}-wide dense map of "
             f"{settings['grid']}x{settings['grid']} locations and the same fixed class text, a batch of "
             f"{settings['batch']}, {settings['classes']} classes, {report['known_entries']} known labels; float32 on "
             f"the CPU. Training: AdamW at {settings['lr']} under OneCycleLR, moving average {EMA_DECAY}; dropout "
             "off on both sides.", "", "| component | largest difference |", "|---|---:|"]
    lines += [f"| {name} | {value:.2e} |" for name, value in report["rows"].items()]
    lines += ["", "Relative rows: |theirs - ours| / |theirs| over a component's tensors. Adam moves an entry "
              "whose exact gradient is 0 (the attention's key bias, the bias before BatchNorm, biases under a "
              "softmax over the classes) by about the learning rate on float noise; the SGD row takes the same "
              "steps without that normalisation.",
              "", "Deliberate, not compared: CLIP's image encoder, which they train and we freeze; the class text "
              "(theirs: BERT's embedding of the name; ours: CLIP's text feature of it); BatchNorm's running "
              "statistics, which their ModelEma averages and our moving average leaves live. Contrast rows show "
              "the earlier rules (recovered label sigmoid(l), BCE) and our default loss, not parity."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor-dir", type=Path, required=True, help="a CLSL checkout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--grid", type=int, default=14, help="locations per side (their 448 px: 14)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    for name in ("batch", "classes", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.batch < 2:
        parser.error("--batch must be at least 2: their class features go through BatchNorm in training")
    if args.grid < 8:
        parser.error(f"--grid must be at least 8, got {args.grid}: below 256 px their model reads another CLIP's "
                     "layout")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    anchor = import_anchor(args.anchor_dir)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    result = compare(anchor, args.batch, args.classes, args.grid, args.steps)
    report = {"device": device_info(torch.device("cpu")), **result,
              "settings": {"batch": args.batch, "classes": args.classes, "grid": args.grid, "steps": args.steps,
                           "lr": LEARNING_RATE, "ema_decay": EMA_DECAY},
              "command": bench_command("parity_clsl", argv)}
    write_report(args.out, "parity", report, markdown)
    return report


if __name__ == "__main__":
    main()
