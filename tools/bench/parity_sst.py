"""SST's own code beside promptmlr's ``sst``: same weights, same dense features, component by component,
loss term by loss term, and over a few steps of the authors' own training loop.

The authors' code runs from a checkout the user points at; nothing of it is copied here::

    git clone https://github.com/HCPLab-SYSU/HCP-MLR-PL ../HCP-MLR-PL
    python -m tools.bench.parity_sst --anchor-dir ../HCP-MLR-PL --out bench/parity-sst

Both sides read the same dense maps: random features as wide as our RN101 backbone's, one map plus
noise per image (:data:`NOISE`), so that images are alike enough for the cross-image pseudo-labels
to find some and unlike enough that no similarity sits on a threshold (a random CLIP's maps are
nearly the same for every image). Their ``SST`` (``model/SST.py``) is built on that width, with
random class vectors for their GloVe vectors (our class text features are replaced by the same),
their ResNet-101 replaced by a pass-through (the map goes in as their "image") and ``timeStep`` 0
(their GGNN then returns its input: ours has none); its weights are copied into ours
(:func:`copy_weights`). Everything runs in float64: Adam divides each step by the gradient's size,
and the co-occurrence gradients that reach the head cancel so far that float32 leaves the two codes'
gradients 1e-4 apart (float64: 1e-15), which Adam would turn into steps of a different size. Then:

1. **Components**: the semantic features and attention of their ``SemanticDecoupling``, the logits
   and the co-occurrence logits, on one batch.
2. **Loss terms**, on that batch at a label epoch (threshold ``--threshold-start``), each of theirs as
   ``SST.py``'s ``Train`` computes it (the criteria as its ``main`` builds them, ``updateFeature``
   before the pseudo-labels) against ours from ``auxiliary_losses``: their BCE against
   ``train.loss`` ASL at 0 / 0 / 0 (the recipes'), both pseudo-label sets, their four weighted terms,
   the contrastive term under one seed, and the memory. Rows marked *(old)* show what the options'
   earlier values (:data:`OLD_OPTIONS`) change on the same batch.
3. **Training**: their ``Train`` itself, ``--epochs`` epochs of ``--batches`` batches, label
   generation from epoch ``--label-epoch``, Adam as their ``main`` builds it (``--lr``; their weight
   decay 5e-4), the margins lowered between epochs by their ``main``'s rule (from
   ``--threshold-start`` by 0.025, never below ``--threshold-floor``; theirs 0.95 and 0.75, lower here
   so that random weights give pseudo-labels); ours as the engine steps it (``set_epoch``,
   ``set_epoch_fraction``, the loss plus ``auxiliary_losses``, ``build_optimizer`` with ``adam``),
   both from one seed. Every learned tensor, the memory and the logits after the last step, and how
   far the weights moved.

Stubs, while their code runs (it does not run here as released): ``torch.Tensor.cuda`` and
``nn.Module.cuda`` return their object (CPU only); ``numpy.float`` is ``float`` (NumPy 1.24 removed
it; ``intraAsymmetricLoss`` uses it); for float64, torch's default dtype is float64 (the tensors
their losses create) and ``torch.Tensor.float`` returns float64 (their ``Train`` casts the labels);
``tensorboardX`` (imported by ``SST.py``, for logging) is a module whose ``SummaryWriter`` does
nothing; their log is held back. Their ``main`` is not run (it loads the datasets): the script
builds the criteria and the optimiser and lowers the margins as it does.

Deliberate differences, reported and not compared: the frozen encoder (their layer4 and its 1x1
channel reduction train), text features for GloVe vectors, no GGNN; their learning-rate schedule
(StepLR every 10 epochs, the engine's ``lr_schedule: step`` in the recipes); their augmentation.

Results: ``parity.json`` and ``parity.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from promptmlr import migrations
from promptmlr.backbones import ImageFeatures
from promptmlr.backbones.openclip import OpenCLIPBackbone, load_openclip_model
from promptmlr.engine import TrainConfig, build_optimizer
from promptmlr.losses import asymmetric_loss
from promptmlr.models import build_method
from promptmlr.models.transfer import cross_image_pseudo_labels, intra_image_pseudo_labels
from tools.bench.anchor import ARCH
from tools.bench.common import (
    bench_command,
    class_names,
    cuda_as_identity,
    device_info,
    import_checkout,
    partial_targets,
    write_report,
)
from tools.bench.common import largest_difference as largest

WEIGHT_DECAY = 5e-4  # scripts/SST.sh --weightDecay
NOISE = 0.5  # an image's map: one shared map plus this much noise (its category features' cosines about 0.8)
SEED = 11
# the options that keep the architecture, at the values that load a file written before the authors' terms
TERM_OF_OPTION = {"contrastive_pairs": "contrastive", "cooccurrence_targets": "cooccurrence", "pseudo_targets": "intra",
                  "memory": "inter"}
OLD_OPTIONS = {option: migrations.OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING["sst"][option]
               for option in TERM_OF_OPTION}


@dataclasses.dataclass
class Setting:
    batch: int
    classes: int
    grid: int
    decoupling_dim: int
    classifier_dim: int
    memory_size: int
    threshold_start: float
    threshold_floor: float
    label_epoch: int
    epochs: int
    batches: int
    lr: float


class _Silent:
    """tensorboardX's SummaryWriter, doing nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _PassThrough(nn.Module):
    """Their backbone's place: the dense map goes through; ``layer4`` for their ``Train``'s ``.train()``."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Identity()

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map


@contextlib.contextmanager
def their_stubs() -> Iterator[None]:
    """The stubs their code runs under (see the module's docstring)."""
    saved = torch.Tensor.float, torch.get_default_dtype(), getattr(np, "float", None)
    torch.Tensor.float = torch.Tensor.double
    torch.set_default_dtype(torch.float64)
    np.float = float
    logging.disable(logging.INFO)
    try:
        with cuda_as_identity():
            yield
    finally:
        logging.disable(logging.NOTSET)
        torch.Tensor.float = saved[0]
        torch.set_default_dtype(saved[1])
        if saved[2] is None:
            del np.float
        else:
            np.float = saved[2]


def import_anchor(anchor_dir: Path) -> types.SimpleNamespace:
    """SST's model, losses and training loop from the checkout (``tensorboardX`` stubbed if absent)."""
    stub = types.ModuleType("tensorboardX")
    stub.SummaryWriter = _Silent
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        sys.modules["tensorboardX"] = stub
    level = logging.getLogger().level  # their config.py sets the root logger to INFO
    try:
        return import_checkout("parity_sst.py", anchor_dir, "HCP-MLR-PL", "https://github.com/HCPLab-SYSU/HCP-MLR-PL",
                               {"SST": "model.SST", "BCELoss": "loss.SST", "intraAsymmetricLoss": "loss.SST",
                                "ContrastiveLoss": "loss.SST", "getIntraPseudoLabel": "loss.SST",
                                "getInterPseudoLabel": "loss.SST", "Train": "SST"})
    finally:
        logging.getLogger().setLevel(level)
        if sys.modules.get("tensorboardX") is stub:
            del sys.modules["tensorboardX"]


# ------------------------------------------------------------------------------------ the two models
def their_model(anchor, embed_dim: int, setting: Setting) -> nn.Module:
    """Their SST on an ``embed_dim``-wide map, random class vectors of that width for their word
    vectors, its GGNN at 0 steps."""
    torch.manual_seed(0)
    vectors = torch.randn(setting.classes, embed_dim).numpy()
    with their_stubs():
        model = anchor.SST(np.eye(setting.classes), vectors, imageFeatureDim=embed_dim,
                           intermediaDim=setting.decoupling_dim, outputDim=setting.classifier_dim,
                           classNum=setting.classes, wordFeatureDim=embed_dim, timeStep=0)
    model.backbone = _PassThrough()
    return model.double()


def our_method(backbone, setting: Setting, **options: Any) -> nn.Module:
    return build_method("sst", backbone, class_names(setting.classes), decoupling_dim=setting.decoupling_dim,
                        classifier_dim=setting.classifier_dim, memory_size=setting.memory_size,
                        known_only_epochs=setting.label_epoch, threshold_start=setting.threshold_start,
                        threshold_floor=setting.threshold_floor, **options).double()


def pairs_of_tensors(theirs: nn.Module) -> dict[str, torch.Tensor]:
    """Our learned tensors' names -> theirs."""
    decoupling = theirs.SemanticDecoupling
    pairs = {"head.image.weight": decoupling.fc1.weight, "head.text.weight": decoupling.fc2.weight,
             "head.hidden.weight": decoupling.fc3.weight, "head.score.weight": decoupling.fc4.weight,
             "classifier.weight": theirs.classifiers.weight, "classifier.bias": theirs.classifiers.bias,
             "cooccurrence.weight": theirs.intra_classifiers.weight, "cooccurrence.bias": theirs.intra_classifiers.bias}
    for ours, layer in (("classifier.project", theirs.fc), ("cooccurrence.reduce", theirs.intra_fc_1),
                        ("cooccurrence.pair", theirs.intra_fc_2), ("cooccurrence.hidden", theirs.intra_fc_3)):
        pairs.update({f"{ours}.weight": layer.weight, f"{ours}.bias": layer.bias})
    return pairs


def copy_weights(theirs: nn.Module, ours: nn.Module) -> None:
    """Their weights into ours (their decoupling's fc3 and fc4 biases have no counterpart: no output
    depends on them), and their word vectors as our class vectors."""
    state = dict(ours.named_parameters())
    with torch.no_grad():
        for name, tensor in pairs_of_tensors(theirs).items():
            state[name].copy_(tensor)
        ours.head.class_vectors.copy_(theirs.wordFeatures)


def random_batches(setting: Setting, embed_dim: int) -> list[tuple[ImageFeatures, torch.Tensor]]:
    """``setting.batches`` batches of dense maps ``[B, grid * grid, embed_dim]``, one map plus noise,
    each batch with partial labels of its own."""
    generator = torch.Generator().manual_seed(0)
    locations = setting.grid ** 2
    base = torch.randn(1, locations, embed_dim, generator=generator, dtype=torch.float64)
    labels = partial_targets(setting.batch * setting.batches, setting.classes, known=0.6).double()
    batches = []
    for index in range(setting.batches):
        dense = base + NOISE * torch.randn(setting.batch, locations, embed_dim, generator=generator,
                                           dtype=torch.float64)
        targets = labels[index * setting.batch:(index + 1) * setting.batch]
        batches.append((ImageFeatures(dense.mean(1), dense, (setting.grid, setting.grid)), targets))
    return batches


def feature_map(features: ImageFeatures) -> torch.Tensor:
    """Our dense features ``[B, H*W, D]`` as their ``[B, D, H, W]`` map."""
    height, width = features.grid
    return features.dense_features.transpose(1, 2).reshape(features.dense_features.shape[0], -1, height, width)


# ------------------------------------------------------------------------------------ their training
def their_criteria(anchor, setting: Setting, margin: float) -> dict[str, nn.Module]:
    """The criteria as their ``main`` builds them (both margins alike, as scripts/SST.sh sets them)."""
    return {"BCELoss": anchor.BCELoss(reduce=True, size_average=True),
            "IntraBCELoss": anchor.BCELoss(margin=margin, reduce=True, size_average=True),
            "InterBCELoss": anchor.BCELoss(margin=margin, reduce=True, size_average=True),
            "IntraCooccurrenceLoss": anchor.intraAsymmetricLoss(setting.classes, gamma_neg=2, gamma_pos=1, reduce=True,
                                                                size_average=True),
            "InterDistanceLoss": anchor.ContrastiveLoss(setting.batch, reduce=True, size_average=True)}


def their_args(setting: Setting, margin: float) -> types.SimpleNamespace:
    """The arguments their ``Train`` reads, at scripts/SST.sh's weights."""
    return types.SimpleNamespace(generateLabelEpoch=setting.label_epoch, intraBCEMargin=margin, interBCEMargin=margin,
                                 intraBCEWeight=1.0, intraCooccurrenceWeight=10.0, interBCEWeight=1.0,
                                 interDistanceWeight=0.05, interExampleNumber=setting.memory_size, printFreq=10 ** 9)


def their_batch(anchor, theirs: nn.Module, features: ImageFeatures, targets: torch.Tensor, setting: Setting
                ) -> dict[str, Any]:
    """One batch through their model and losses as their ``Train`` computes them at a label epoch."""
    margin = setting.threshold_start
    criteria, args = their_criteria(anchor, setting, margin), their_args(setting, margin)
    with their_stubs():
        semantic, _, attention = theirs.SemanticDecoupling(feature_map(features), theirs.wordFeatures)
        output, cooccurrence, semantic = theirs(feature_map(features))
        theirs.updateFeature(semantic, targets, args.interExampleNumber)
        intra = anchor.getIntraPseudoLabel(cooccurrence, targets, margin=margin)
        inter = anchor.getInterPseudoLabel(semantic, targets, theirs.posFeature, margin=margin)
        torch.manual_seed(SEED)
        pairs = criteria["IntraCooccurrenceLoss"](cooccurrence, targets)
        terms = {"bce": criteria["BCELoss"](output, targets),
                 "intra": args.intraBCEWeight * criteria["IntraBCELoss"](output, intra),
                 "cooccurrence": args.intraCooccurrenceWeight * pairs,
                 "inter": args.interBCEWeight * criteria["InterBCELoss"](output, inter),
                 "contrastive": args.interDistanceWeight * criteria["InterDistanceLoss"](semantic, targets)}
    return {"semantic": semantic, "attention": attention.flatten(1, 2).transpose(1, 2), "output": output,
            "cooccurrence_logits": cooccurrence, "intra": intra, "inter": inter, "terms": terms}


def train_theirs(anchor, theirs: nn.Module, batches: list[tuple[ImageFeatures, torch.Tensor]], setting: Setting
                 ) -> None:
    """Their ``Train`` for every epoch, the optimiser and margins as their ``main`` keeps them."""
    loader = [(torch.arange(setting.batch), feature_map(features), targets, targets) for features, targets in batches]
    optimizer = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=setting.lr,
                                 weight_decay=WEIGHT_DECAY)
    margin = setting.threshold_start
    with their_stubs(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(SEED)
        for epoch in range(setting.epochs):
            anchor.Train(loader, theirs, their_criteria(anchor, setting, margin), optimizer, _Silent(), epoch,
                         their_args(setting, margin))
            if epoch >= setting.label_epoch:
                margin = max(setting.threshold_floor, margin - 0.025)


# -------------------------------------------------------------------------------------- our training
def bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``train.loss`` as the recipes set it: ASL without focusing or clip, their BCELoss."""
    return asymmetric_loss(logits, targets, weights, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)


def our_batch(ours: nn.Module, features: ImageFeatures, targets: torch.Tensor, setting: Setting) -> dict[str, Any]:
    """One batch through our method at a label epoch, as the engine's training step computes it."""
    ours.train().set_epoch(setting.label_epoch)
    output = ours(features)
    torch.manual_seed(SEED)
    return {"output": output, "terms": {"bce": bce(output.logits, targets),
                                        **ours.auxiliary_losses(output, targets, bce)}}


def train_ours(ours: nn.Module, batches: list[tuple[ImageFeatures, torch.Tensor]], setting: Setting) -> None:
    """The engine's steps: the epoch and its share done set before each batch, the loss plus the
    method's terms, the engine's Adam."""
    optimizer = build_optimizer(TrainConfig(optimizer="adam", lr=setting.lr, weight_decay=WEIGHT_DECAY),
                                ours.parameter_groups())
    ours.train()
    torch.manual_seed(SEED)
    for epoch in range(setting.epochs):
        ours.set_epoch(epoch)
        for step, (features, targets) in enumerate(batches):
            ours.set_epoch_fraction(step / len(batches))
            loss = ours.training_loss(ours(features), targets, bce)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


# ---------------------------------------------------------------------------------------- comparison
def memory_sums(ours: nn.Module, theirs: nn.Module) -> float:
    """Per class, the sum of the stored unit features, ours against theirs (their order differs)."""
    return largest(ours.memory.features.sum(1), nn.functional.normalize(theirs.posFeature, dim=-1).sum(1))


def compare_batch(anchor, theirs: nn.Module, ours: nn.Module, features: ImageFeatures, targets: torch.Tensor,
                  setting: Setting) -> tuple[dict[str, float], dict[str, int]]:
    """Components and loss terms on one batch at a label epoch, and how many pseudo-positives theirs made."""
    fresh = copy.deepcopy(ours)  # before the memory moves, for the old options' rows
    theirs.train()
    their = their_batch(anchor, theirs, features, targets, setting)
    semantic, attention = ours.head(features.dense_features)
    mine = our_batch(ours, features, targets, setting)
    output, threshold = mine["output"], setting.threshold_start
    first, second = torch.triu_indices(setting.classes, setting.classes, 1)
    intra = intra_image_pseudo_labels(torch.sigmoid(output.extras["pair_logits"].detach()), targets, threshold)
    inter = cross_image_pseudo_labels(ours.memory.mean_similarity(output.category_features.detach()), targets,
                                      threshold)  # the memory as auxiliary_losses left it: this batch pushed first
    rows = {"semantic features (SemanticDecoupling)": largest(semantic, their["semantic"]),
            "attention (its coefficients)": largest(attention, their["attention"]),
            "logits": largest(output.logits, their["output"]),
            "co-occurrence logits (intra branch)": largest(output.extras["pair_logits"][:, first, second],
                                                           their["cooccurrence_logits"]),
            "intra-image targets (entries that differ)": float((targets + intra != their["intra"]).sum()),
            "cross-image targets (entries that differ)": float((targets + inter != their["inter"]).sum())}
    rows.update({f"loss term: {name}": largest(mine["terms"][name], value) for name, value in their["terms"].items()})
    rows["memory (per class, the sum of its unit features)"] = memory_sums(ours, theirs)
    for option, value in OLD_OPTIONS.items():
        method = copy.deepcopy(fresh)
        method.config = dataclasses.replace(method.config, **{option: value})
        method.memory.rule = method.config.memory
        term = TERM_OF_OPTION[option]
        rows[f"(old) {option}: {value}, loss term {term}"] = largest(
            our_batch(method, features, targets, setting)["terms"][term], their["terms"][term])
    counts = {"intra pseudo-positives": int(((their["intra"] == 1) & (targets == 0)).sum()),
              "inter pseudo-positives": int(((their["inter"] == 1) & (targets == 0)).sum()),
              "unknown labels": int((targets == 0).sum())}
    return rows, counts


def compare_training(anchor, theirs: nn.Module, ours: nn.Module, batches: list[tuple[ImageFeatures, torch.Tensor]],
                     setting: Setting) -> dict[str, float]:
    """Their ``Train`` against the engine's steps, from the same weights and seed."""
    before = {name: tensor.detach().clone() for name, tensor in ours.named_parameters()}
    train_theirs(anchor, theirs, batches, setting)
    train_ours(ours, batches, setting)
    rows, learned = {}, dict(ours.named_parameters())
    steps = setting.epochs * setting.batches
    for name, tensor in pairs_of_tensors(theirs).items():
        moved = largest(learned[name], before[name])
        rows[f"{name} after {steps} steps (moved {moved:.1e})"] = largest(learned[name], tensor)
    rows["memory after training"] = memory_sums(ours, theirs)
    features = batches[0][0]
    with torch.no_grad(), their_stubs():
        reference = theirs.eval()(feature_map(features))[0]
    with torch.no_grad():
        rows["logits after training"] = largest(ours.eval()(features).logits, reference)
    return rows


def compare(anchor, setting: Setting) -> dict[str, Any]:
    backbone = OpenCLIPBackbone(f"openclip:{ARCH}", load_openclip_model(ARCH, None), image_size=32 * setting.grid)
    batches = random_batches(setting, backbone.embed_dim)
    ours, theirs = our_method(backbone, setting), their_model(anchor, backbone.embed_dim, setting)
    copy_weights(theirs, ours)
    trained_theirs, trained_ours = copy.deepcopy(theirs), copy.deepcopy(ours)
    features, targets = batches[0]
    rows, counts = compare_batch(anchor, theirs, ours, features, targets, setting)
    rows.update(compare_training(anchor, trained_theirs, trained_ours, batches, setting))
    return {"rows": rows, "counts": counts, "embed_dim": backbone.embed_dim,
            "logit_range": float(ours.eval()(features).logits.abs().max())}


def markdown(report: dict[str, Any]) -> str:
    settings, counts = report["settings"], report["counts"]
    lines = ["# SST's own code beside promptmlr's `sst`", "", f"`{report['command']}`", "",
             f"Random dense maps of {settings['grid']} x {settings['grid']} locations and {report['embed_dim']} "
             f"channels (RN101's), batches of {settings['batch']} images, {settings['classes']} classes, decoupling "
             f"{settings['decoupling_dim']} and classifier {settings['classifier_dim']} wide, memory of "
             f"{settings['memory_size']}; on the first batch {counts['unknown labels']} unknown labels, of which their "
             f"code makes {counts['intra pseudo-positives']} intra-image and {counts['inter pseudo-positives']} "
             f"cross-image pseudo-positives at threshold {settings['threshold_start']}; float64 on the CPU. Logits "
             f"within ±{report['logit_range']:.2f}. Training: {settings['epochs']} epochs of {settings['batches']} "
             f"batches, labels generated from epoch {settings['label_epoch']}, Adam at {settings['lr']} (weight decay "
             f"{WEIGHT_DECAY}), margins from {settings['threshold_start']} (floor {settings['threshold_floor']}).", "",
             "| component | largest difference |", "|---|---:|"]
    lines += [f"| {name} | {value:.2e} |" for name, value in report["rows"].items()]
    lines += ["", "Target rows count the entries that differ; the others are absolute differences. *(old)* rows: "
              "our option at its earlier value against their term on the same batch. Deliberate, not compared: the "
              "frozen encoder (their layer4 and 1x1 channel reduction train), CLIP text features for GloVe vectors, no "
              "GGNN (their model here runs it at 0 steps), their StepLR (the recipes' `lr_schedule: step`), their "
              "augmentation."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor-dir", type=Path, required=True, help="an HCP-MLR-PL checkout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=int, default=14, help="locations per side (RN101 at 448 px: 14)")
    parser.add_argument("--batch", type=int, default=8, help="their --batchSize")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--decoupling-dim", type=int, default=512, help="their intermediaDim")
    parser.add_argument("--classifier-dim", type=int, default=1024, help="their outputDim")
    parser.add_argument("--memory-size", type=int, default=4, help="their --interExampleNumber")
    parser.add_argument("--threshold-start", type=float, default=0.5,
                        help="both margins at the first label epoch, and on the single batch (theirs: 0.95)")
    parser.add_argument("--threshold-floor", type=float, default=0.45, help="the margins' floor (theirs: 0.75)")
    parser.add_argument("--label-epoch", type=int, default=1, help="their --generateLabelEpoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    for name in ("grid", "decoupling_dim", "classifier_dim", "memory_size", "label_epoch", "epochs", "batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.classes < 2 or args.batch < 2:
        parser.error("--classes and --batch must be at least 2 (pairs of classes, pairs of images)")
    if not args.lr > 0:
        parser.error(f"--lr must be above 0, got {args.lr}")
    if not -1 <= args.threshold_floor <= args.threshold_start <= 1:
        parser.error(f"the margins need -1 <= --threshold-floor <= --threshold-start <= 1, got "
                     f"{args.threshold_floor} and {args.threshold_start}")
    if args.label_epoch >= args.epochs:
        parser.error(f"--label-epoch {args.label_epoch} must be below --epochs {args.epochs}: no epoch would make "
                     f"pseudo-labels to compare")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    anchor = import_anchor(args.anchor_dir)
    setting = Setting(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Setting)})
    warnings.filterwarnings("ignore", message=".*(size_average|reduce) args will be deprecated.*")
    report = {"device": device_info(torch.device("cpu")), **compare(anchor, setting),
              "settings": dataclasses.asdict(setting),
              "command": bench_command("parity_sst", argv)}
    write_report(args.out, "parity", report, markdown)
    return report


if __name__ == "__main__":
    main()
