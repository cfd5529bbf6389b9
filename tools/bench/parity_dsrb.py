"""DSRB's own code beside promptmlr's ``dsrb``: same weights, same dense map, component by component,
and over a few training steps.

The authors' code runs from a checkout the user points at; nothing of it is copied here::

    git clone https://github.com/HCPLab-SYSU/HCP-MLR-PL ../HCP-MLR-PL
    python -m tools.bench.parity_dsrb --anchor-dir ../HCP-MLR-PL --out bench/parity-dsrb

Both sides read one random dense map of our backbone's width (``--grid`` x ``--grid`` locations): theirs
as the output of its ResNet, ours as CLIP's dense features. Their modules (``model/DSRB.py``,
``model/SemanticDecoupling.py``, ``model/Element_Wise_Layer.py``, ``loss/DSRB.py``) run as they are;
their seeded weights are copied into ours (:mod:`promptmlr.models.category`'s ``authors`` head). What
it compares:

1. **Forward**: the decoupling's attention and category features, the logits.
2. **Prototypes** after one pass over ``--pass-batches`` batches (their ``computePrototype_featuremap``,
   our ``training_pass``), summed over the locations as their blends sum them.
3. **Blends** of one batch: the instance and prototype blends' features, targets and logits.
4. **Loss terms**: classification (their ``BCELoss`` against ours, ASL at ``gamma_neg = gamma_pos =
   clip = 0``), contrastive (their ``ContrastiveLoss``), instance and prototype blending.
5. **Training**: ``--steps`` Adam steps of both (their ``DSRB.py``: one group, weight decay 5e-4),
   every learned tensor after the last (alpha and beta included), the logits.
6. **Contrast**: the blending terms of ours with promptmlr's earlier targets (label 1 under the run's
   loss, on the blended entries alone), to show what the rows above would read with them.

Their DSRB does not run as released; stubbed here, the minimum:

* ``DSRB.__init__`` reads names it never defines (``poolingType``, ``wordFeaturesPath``,
  ``adjacencyMatrixPath``) and passes ``SemanticDecoupling`` a keyword it does not take: the model is
  made without it, from their modules as ``__init__`` makes them (``SemanticDecoupling``, ``fc``,
  ``Element_Wise_Layer``, the ``alpha`` and ``beta`` parameters at 0.5), the class vectors being our
  text features in place of GloVe.
* ``forward`` reads ``onlyFeature`` and ``self.useGatedGNN``, both undefined, and
  ``computePrototype_featuremap`` calls it with ``onlyFeature=True``, which it does not take: a
  subclass's ``forward`` takes the flag and sets the module global its ``forward`` reads;
  ``useGatedGNN`` is False.
* The GGNN is the identity (their main branch skips it with ``useGatedGNN`` False; the blends call it
  regardless). Deliberate: ours has none (:mod:`promptmlr.models.category`).
* The ResNet-101 is the identity, fed the dense map. Deliberate: CLIP is frozen.
* ``Tensor.cuda`` is the identity, so that it runs on the CPU.
* ``DSRB.py``'s ``Train`` reads ``args.proposedMethodEpoch``, ``args.instanceLossWeight`` and
  ``args.prototypeLossWeight``, which ``config.py`` never defines: taken as ``mixupEpoch``, 1 and 1
  (SARB's code adds both terms unweighted). Their loop needs their loaders, CUDA and tensorboard, so
  its loss (the sum of the four terms) is written out here, their modules computing each term.
* Their prototype blend draws its regions (``torch.randint``) and classes (``torch.rand``) inside
  ``mixupPrototype_featuremap``; during their call these return the draws ours made in the same step
  (recorded), so that both blend the same entries. Every image of the batch has an unknown label and
  every class a known positive in the pass: their code blends a known label of an image without an
  unknown one and fails on a class without a positive (ours leaves both out).

Deliberate differences, which the rows show rather than hide: on an odd ``--grid`` their 2 x 2 regions
split at ``H // 2`` and ours in proportion (the prototypes and prototype blends then differ). Each step
seeds both sides alike before it, so that their contrastive term's random pairs are ours.

Results: ``parity.json`` and ``parity.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import types
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import torch
from torch import nn

from promptmlr.backbones import ImageFeatures, create_backbone
from promptmlr.engine import TrainConfig, build_optimizer
from promptmlr.losses import LossConfig, build_loss
from promptmlr.models import blending, build_method
from tools.bench.common import bench_command, class_names, cuda_as_identity, device_info, import_checkout, write_report
from tools.bench.common import largest_difference as largest

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 5e-4  # scripts/DSRB.sh
DECOUPLING_DIM, CLASSIFIER_DIM = 512, 1024  # DSRB.__init__'s intermediaDim and outputDim
TheirOutput = tuple[torch.Tensor, ...]
EARLIER_TERMS = {"blend_targets": "hard", "blend_entries": "blended"}  # promptmlr's earlier blending terms


def import_anchor(anchor_dir: Path) -> types.SimpleNamespace:
    """DSRB's model, its parts and losses from an HCP-MLR-PL checkout."""
    return import_checkout("parity_dsrb.py", anchor_dir, "HCP-MLR-PL", "https://github.com/HCPLab-SYSU/HCP-MLR-PL",
                           {"DSRB": "model.DSRB", "SemanticDecoupling": "model.SemanticDecoupling",
                            "Element_Wise_Layer": "model.Element_Wise_Layer", "BCELoss": "loss.DSRB",
                            "ContrastiveLoss": "loss.DSRB"})


def their_model(anchor, text: torch.Tensor, classes: int, dim: int) -> nn.Module:
    """Their ``DSRB`` made without its ``__init__`` (see the module docstring), with a ``forward`` that
    takes ``onlyFeature``."""
    module = inspect.getmodule(anchor.DSRB)

    class Stubbed(anchor.DSRB):
        def __init__(self):
            nn.Module.__init__(self)
            self.backbone, self.GraphNeuralNetwork = nn.Identity(), nn.Identity()
            self.useGatedGNN, self.classNum, self.topK = False, classes, 1
            self.imageFeatureDim, self.outputDim = dim, CLASSIFIER_DIM
            self.wordFeatures = nn.Parameter(text.clone(), requires_grad=False)
            self.SemanticDecoupling = anchor.SemanticDecoupling(classes, dim, text.shape[1],
                                                                intermediaDim=DECOUPLING_DIM)
            self.fc = nn.Linear(2 * dim, CLASSIFIER_DIM)
            self.classifiers = anchor.Element_Wise_Layer(classes, CLASSIFIER_DIM)
            self.alpha = nn.Parameter(torch.tensor(0.5))
            self.beta = nn.Parameter(torch.tensor(0.5))

        def forward(self, input, target=None, onlyFeature=False):  # their forward's names
            module.onlyFeature = onlyFeature
            return super().forward(input, target)

    torch.manual_seed(0)
    return Stubbed()


def copy_into_ours(theirs: nn.Module, ours: nn.Module) -> None:
    """Their weights into our ``authors`` head and classifier: their decoupling's ``fc1``-``fc4`` (the
    biases of ``fc3`` and ``fc4`` move no score), ``fc``, the element-wise layer, alpha and beta."""
    decoupling = theirs.SemanticDecoupling
    with torch.no_grad():
        for ours_layer, their_layer in ((ours.head.image, decoupling.fc1), (ours.head.text, decoupling.fc2),
                                        (ours.head.hidden, decoupling.fc3), (ours.head.score, decoupling.fc4)):
            ours_layer.weight.copy_(their_layer.weight)
        ours.head.class_vectors.copy_(theirs.wordFeatures)
        ours.classifier.project.weight.copy_(theirs.fc.weight)
        ours.classifier.project.bias.copy_(theirs.fc.bias)
        ours.classifier.weight.copy_(theirs.classifiers.weight)
        ours.classifier.bias.copy_(theirs.classifiers.bias)
        ours.blender.alpha.copy_(theirs.alpha)
        ours.blender.beta.copy_(theirs.beta)


def their_parameters(theirs: nn.Module) -> dict[str, torch.Tensor]:
    """Their learned tensors under our names."""
    decoupling = theirs.SemanticDecoupling
    return {"head.image.weight": decoupling.fc1.weight, "head.text.weight": decoupling.fc2.weight,
            "head.hidden.weight": decoupling.fc3.weight, "head.score.weight": decoupling.fc4.weight,
            "classifier.project.weight": theirs.fc.weight,
            "classifier.project.bias": theirs.fc.bias, "classifier.weight": theirs.classifiers.weight,
            "classifier.bias": theirs.classifiers.bias, "blender.alpha": theirs.alpha, "blender.beta": theirs.beta}


class Draws:
    """The prototype blend's draws ours made (recorded from :mod:`promptmlr.models.blending`), replayed
    as the ``torch.randint`` and ``torch.rand`` of their ``mixupPrototype_featuremap``."""

    def __init__(self):
        self.images = self.classes = self.cells = self.offsets = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        picks, regions = blending.unknown_picks, blending.other_regions

        def record_picks(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.images, self.classes = picks(targets)
            return self.images, self.classes

        def record_regions(own: torch.Tensor, cells: int) -> torch.Tensor:
            self.cells = regions(own, cells)
            self.offsets = (own - self.cells) % cells
            return self.cells

        with mock.patch.object(blending, "unknown_picks", record_picks), \
                mock.patch.object(blending, "other_regions", record_regions):
            yield

    @contextlib.contextmanager
    def replayed(self, shape: torch.Size) -> Iterator[None]:
        offsets = torch.ones(shape, dtype=torch.long)
        offsets[self.images, self.classes] = self.offsets
        scores = torch.zeros(shape)
        scores[self.images, self.classes] = 1.0
        with mock.patch.object(torch, "randint", lambda *args, **kwargs: offsets.clone()), \
                mock.patch.object(torch, "rand", lambda *args, **kwargs: scores.clone()):
            yield


def random_batches(count: int, batch: int, classes: int, dim: int, grid: int, seed: int
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of a random dense map ``[B, D, H, W]`` and partial labels (half known, drawn
    again until every image has an unknown label and every class a known positive)."""
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(batch, dim, grid, grid, generator=generator) for _ in range(count)]
    while True:
        signs = torch.randint(0, 2, (count * batch, classes), generator=generator).float() * 2 - 1
        targets = signs * (torch.rand(count * batch, classes, generator=generator) < 0.5)
        if (targets == 0).any(1).all() and (targets > 0).any(0).all():
            return list(zip(maps, targets.split(batch)))


def our_features(dense_map: torch.Tensor) -> ImageFeatures:
    batch, dim, height, width = dense_map.shape
    return ImageFeatures(torch.zeros(batch, dim), dense_map.flatten(2).transpose(1, 2), (height, width))


def their_step_losses(theirs: nn.Module, dense_map: torch.Tensor, targets: torch.Tensor, draws: Draws,
                      contrastive_weight: float) -> tuple[dict[str, torch.Tensor], TheirOutput]:
    """Their four terms of ``DSRB.py``'s ``Train`` after ``mixupEpoch`` (blending on, contrastive unramped),
    with the ``criterion`` its ``main`` makes."""
    bce, contrastive = theirs.criterion["BCELoss"], theirs.criterion["ContrastiveLoss"]
    with cuda_as_identity(), draws.replayed(targets.shape):
        output = theirs(dense_map, target=targets)
    result, semantic, mixed_1, target_1, mixed_2, target_2 = output
    with cuda_as_identity():
        terms = {"classification": bce(result, targets),
                 "contrastive": contrastive_weight * contrastive(semantic, targets),
                 "instance_blend": bce(mixed_1, target_1), "prototype_blend": bce(mixed_2, target_2)}
    return terms, output


def our_step_losses(ours: nn.Module, dense_map: torch.Tensor, targets: torch.Tensor, draws: Draws,
                    loss_fn: Callable) -> dict[str, torch.Tensor]:
    output = ours(our_features(dense_map))
    with draws.recording():
        return {"classification": loss_fn(output.logits, targets),
                **ours.auxiliary_losses(output, targets, loss_fn)}


def both_step_losses(theirs: nn.Module, ours: nn.Module, dense_map: torch.Tensor, targets: torch.Tensor,
                     loss_fn: Callable, contrastive_weight: float, seed: int
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], TheirOutput, Draws]:
    """One step's terms on both sides, from one seed (so that both contrastive terms draw alike), their
    prototype blend on the entries ours drew: ours, theirs, their forward's output, the draws."""
    draws = Draws()
    torch.manual_seed(seed)
    ours_terms = our_step_losses(ours, dense_map, targets, draws, loss_fn)
    torch.manual_seed(seed)
    their_terms, output = their_step_losses(theirs, dense_map, targets, draws, contrastive_weight)
    return ours_terms, their_terms, output, draws


def compare_pass(theirs: nn.Module, ours: nn.Module, batches: list) -> float:
    """Prototypes from one pass over ``batches`` on both sides, summed over the locations."""
    loader = [(None, dense_map, targets, targets) for dense_map, targets in batches]
    with cuda_as_identity(), torch.no_grad():
        theirs.computePrototype_featuremap(theirs, loader, types.SimpleNamespace(classNum=theirs.classNum))
        ours.eval()
        ours.training_pass((our_features(dense_map), targets) for dense_map, targets in batches)
    theirs.train()
    ours.train()
    return largest(theirs.prototype_featuremap.sum((2, 3)), ours.blender.prototypes.prototypes)


def compare_batch(theirs: nn.Module, ours: nn.Module, dense_map: torch.Tensor, targets: torch.Tensor,
                  loss_fn: Callable, contrastive_weight: float) -> dict[str, float]:
    """Every component and loss term on one batch."""
    rows: dict[str, float] = {}
    features = our_features(dense_map)
    with torch.no_grad():
        decoupled, attention = ours.head(features.dense_features)
        semantic, featuremap, coefficient = theirs.SemanticDecoupling(dense_map, theirs.wordFeatures)
        rows["decoupling: attention"] = largest(coefficient.flatten(1, 2).transpose(1, 2), attention)
        rows["decoupling: category features"] = largest(semantic, decoupled)
        rows["logits"] = largest(theirs.eval()(dense_map), ours.eval()(features).logits)
    theirs.train()
    ours.train()
    ours_terms, their_terms, output, draws = both_step_losses(theirs, ours, dense_map, targets, loss_fn,
                                                              contrastive_weight, seed=1)
    _, _, mixed_1, target_1, mixed_2, target_2 = output
    alpha, beta = ours.blender.alpha, ours.blender.beta
    with torch.no_grad(), cuda_as_identity(), draws.replayed(targets.shape):
        their_instance, _ = theirs.mixupInstance_featuremap(featuremap, targets)
        their_prototype, _ = theirs.mixupPrototype_featuremap(featuremap, targets)
    with torch.no_grad():
        instance, instance_entries = blending.instance_blend(decoupled, targets, alpha)
        prototype, prototype_entries = blending.prototype_blend(decoupled, draws.images, draws.classes, draws.cells,
                                                                ours.blender.prototypes, beta)
        rows["instance blend: features"] = largest(their_instance, instance)
        rows["instance blend: targets"] = largest(target_1, blending.blend_targets(targets, instance_entries, alpha,
                                                                                     True, True))
        rows["instance blend: logits"] = largest(mixed_1, ours.scored(instance, attention, features.grid).logits)
        rows["prototype blend: features"] = largest(their_prototype, prototype)
        rows["prototype blend: targets"] = largest(target_2, blending.blend_targets(targets, prototype_entries, beta,
                                                                                      True, True))
        rows["prototype blend: logits"] = largest(mixed_2, ours.scored(prototype, attention, features.grid).logits)
    for name, value in their_terms.items():
        rows[f"loss: {name} (theirs {float(value):.4f})"] = largest(value, ours_terms[name])
    return rows


def train_both(theirs: nn.Module, ours: nn.Module, batches: list, steps: int, loss_fn: Callable,
               contrastive_weight: float) -> dict[str, float]:
    """``steps`` Adam steps of both on ``batches`` in turn; the largest difference of every learned
    tensor and of the logits after them."""
    their_optimizer = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=LEARNING_RATE,
                                       weight_decay=WEIGHT_DECAY)
    our_optimizer = build_optimizer(TrainConfig(optimizer="adam", lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY),
                                    ours.parameter_groups())
    for step in range(steps):
        our_optimizer.zero_grad()
        their_optimizer.zero_grad()
        ours_terms, their_terms, _, _ = both_step_losses(theirs, ours, *batches[step % len(batches)], loss_fn,
                                                         contrastive_weight, seed=step)
        sum(ours_terms.values()).backward()
        sum(their_terms.values()).backward()
        our_optimizer.step()
        their_optimizer.step()
    learned = dict(ours.named_parameters())
    rows = {f"{name} after {steps} steps": largest(tensor, learned[name])
            for name, tensor in their_parameters(theirs).items()}
    dense_map = batches[0][0]
    with torch.no_grad():
        rows[f"logits after {steps} steps"] = largest(theirs.eval()(dense_map),
                                                      ours.eval()(our_features(dense_map)).logits)
    return rows


def contrast(theirs: nn.Module, ours: nn.Module, dense_map: torch.Tensor, targets: torch.Tensor,
             loss_fn: Callable, contrastive_weight: float) -> dict[str, float]:
    """The blending terms of ``ours`` (built with other rules) against theirs on one batch."""
    ours_terms, their_terms, _, _ = both_step_losses(theirs, ours, dense_map, targets, loss_fn, contrastive_weight,
                                                     seed=1)
    return {f"(contrast) loss: {name}, {', '.join(f'{key} {value}' for key, value in EARLIER_TERMS.items())}":
            largest(their_terms[name], ours_terms[name]) for name in ("instance_blend", "prototype_blend")}


def build_pair(anchor, backbone, classes: list[str], batch: int, **options: Any) -> tuple[nn.Module, nn.Module]:
    ours = build_method("dsrb", backbone, classes, **options)
    ours.set_epoch(ours.config.known_only_epochs)  # blending on, the contrastive term past its ramp
    theirs = their_model(anchor, ours.head.class_vectors, len(classes), backbone.embed_dim)
    theirs.criterion = {"BCELoss": anchor.BCELoss(reduce=True, size_average=True),
                        "ContrastiveLoss": anchor.ContrastiveLoss(batch, reduce=True, size_average=True)}
    copy_into_ours(theirs, ours)
    return theirs, ours


def compare(anchor, backbone_spec: str, batch: int, classes: int, grid: int, pass_batches: int, steps: int
            ) -> dict[str, Any]:
    backbone = create_backbone(backbone_spec)
    names = class_names(classes)
    loss_fn = build_loss(LossConfig(gamma_neg=0, gamma_pos=0, clip=0))  # their BCELoss, the recipes' loss
    batches = random_batches(pass_batches, batch, classes, backbone.embed_dim, grid, seed=0)
    theirs, ours = build_pair(anchor, backbone, names, batch)
    weight = ours.config.contrastive_weight
    rows = {"prototypes after a pass": compare_pass(theirs, ours, batches)}
    rows.update(compare_batch(theirs, ours, *batches[0], loss_fn, weight))
    rows.update(train_both(theirs, ours, batches, steps, loss_fn, weight))
    theirs, earlier = build_pair(anchor, backbone, names, batch, **EARLIER_TERMS)
    compare_pass(theirs, earlier, batches)
    rows.update(contrast(theirs, earlier, *batches[0], loss_fn, weight))
    return {"rows": rows, "embed_dim": backbone.embed_dim}


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = ["# DSRB's own code beside promptmlr's `dsrb`", "", f"`{report['command']}`", "",
             f"A random {settings['grid']} x {settings['grid']} dense map of width {report['embed_dim']} "
             f"({settings['backbone']}'s), batches of {settings['batch']} images, {settings['classes']} classes, "
             f"prototypes from {settings['pass_batches']} batches; Adam at lr {settings['lr']}, weight decay "
             f"{WEIGHT_DECAY}; float32 on the CPU."]
    lines += ["", "| component | largest difference |", "|---|---:|"]
    lines += [f"| {name} | {value:.2e} |" for name, value in report["rows"].items()]
    lines += ["", "Stubbed and deliberate: see `tools/bench/parity_dsrb.py`'s docstring. The prototype pass "
              "keeps at most 100 positives per class and region (not reached here; tests/test_authors_dsrb.py "
              "checks the cap)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor-dir", type=Path, required=True, help="an HCP-MLR-PL checkout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", default="sandbox", help="whose text features and width (default: sandbox)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--grid", type=int, default=8, help="the dense map's side, in locations")
    parser.add_argument("--pass-batches", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    for name, least in (("batch", 2), ("classes", 2), ("grid", 2), ("pass_batches", 1), ("steps", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    if args.pass_batches * args.batch < args.classes:
        parser.error("--pass-batches x --batch must be at least --classes: every class needs a known positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    anchor = import_anchor(args.anchor_dir)
    result = compare(anchor, args.backbone, args.batch, args.classes, args.grid, args.pass_batches, args.steps)
    report = {"device": device_info(torch.device("cpu")), **result,
              "settings": {"backbone": args.backbone, "batch": args.batch, "classes": args.classes,
                           "grid": args.grid, "pass_batches": args.pass_batches, "steps": args.steps,
                           "lr": LEARNING_RATE},
              "command": bench_command("parity_dsrb", argv)}
    write_report(args.out, "parity", report, markdown)
    return report


if __name__ == "__main__":
    main()
