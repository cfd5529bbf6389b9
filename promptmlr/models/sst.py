"""SST: Structured Semantic Transfer (Chen, Pu et al., AAAI 2022), on frozen CLIP.

Trained as the authors' code trains it (HCP-MLR-PL, ``SST.py``, ``model/SST.py``, ``loss/SST.py``),
on CLIP's dense map instead of a fine-tuned ResNet-101 (:mod:`.category`: their decoupling and
element-wise classifier, no GGNN). Per batch:

    L = L_cls(y) + r * w_con * L_contrastive(f, y) + r * w_cooc * L_asl(P, y_pairs)
        + [after known_only_epochs] w_intra * L_cls(y + y_intra) + w_inter * L_cls(y + y_inter)

with ``L_cls`` the run's partial-label loss (their ``BCELoss``, a BCE averaged over the known entries,
is ASL at ``gamma_neg = gamma_pos = clip = 0``: the recipes in ``configs/methods/<dataset>/sst.yaml``
set it), ``r`` the first-epoch ramp (``ramp_epochs``), ``P`` the pair head's co-occurrence map,
``y_intra`` and ``y_inter`` the pseudo-positives of :mod:`.transfer`, their thresholds falling from
0.95 by 0.025 per epoch to 0.75. Defaults are the authors' (``scripts/SST.sh``: weights 10, 0.05, 1
and 1, ``generateLabelEpoch`` 5, ``interExampleNumber`` 100), and so is the training the recipes set
(Adam at 1e-5, StepLR, batches of 8); ``tools/bench/parity_sst.py`` runs their code beside this one,
``tests/test_authors_sst.py`` writes their formulas out. Each rule that differs is an option:

* ``cooccurrence_head``: ``authors``, their pair branch (:class:`~.transfer.PairClassifierHead`);
  ``ordered``, one MLP, ``cooccurrence_hidden`` wide, over ordered pairs of unit features
  (:class:`~.transfer.OrderedPairHead`): shared by all pairs rather than a classifier per pair
  (3,160 on COCO), so that a rare pair learns from the others.
* ``cooccurrence_targets``: ``authors``, every pair a target, an unknown label counting as absent,
  under their ASL (:func:`~.transfer.authors_cooccurrence_loss`); ``known``, only the pairs the known
  labels decide (:func:`~.transfer.cooccurrence_targets`) under the run's loss, so that an unknown
  label is not taught as absent.
* ``pseudo_targets``: ``authors``, each pseudo-label term scores the known labels with the
  pseudo-positives added (their ``getIntraPseudoLabel`` and ``getInterPseudoLabel`` return
  ``target`` filled in), one mean over both; ``pseudo_only``, the pseudo-positives alone, so that
  the terms add nothing but the transfer.
* ``memory``: ``authors``, the batch's positives go on top of the memory before its pseudo-labels
  are drawn (``SST.py`` calls ``updateFeature`` first) and a feature is compared with all
  ``memory_size`` slots, an empty one counting 0 (:class:`~.transfer.PositiveMemory`); ``filled``, a
  ring the batch joins after, compared over its filled slots only, so that a class's first
  positives are evidence at once.
* ``contrastive_pairs``, ``ramp_epochs``, ``head``: :mod:`.category`.

Differences kept without an option, by necessity: the frozen encoder (their layer4 and its 1x1
channel reduction train; their augmentation, random crops of a 512-pixel resize, does not reach
cached features); the classes' CLIP text features in place of GloVe vectors; no GGNN (it needs the
training labels' graph, :mod:`.category`); the biases of their decoupling's last two layers, which
no output depends on; and no NaN where a batch holds no known pair (:func:`.category.hcp_contrastive_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import LossFn, MethodOutput
from promptmlr.models.category import CategoryConfig, CategoryMethod
from promptmlr.models.factory import register_method
from promptmlr.models.transfer import (
    MEMORY_RULES,
    OrderedPairHead,
    PairClassifierHead,
    PositiveMemory,
    authors_cooccurrence_loss,
    cooccurrence_targets,
    cross_image_pseudo_labels,
    intra_image_pseudo_labels,
    transfer_threshold,
)
from promptmlr.options import option, with_default

COOCCURRENCE_HEADS = ("authors", "ordered")
COOCCURRENCE_TARGETS = ("authors", "known")
PSEUDO_TARGETS = ("authors", "pseudo_only")


@dataclass
class SSTConfig(CategoryConfig):
    head: str = with_default(CategoryConfig, "head", "authors")
    contrastive_pairs: str = with_default(CategoryConfig, "contrastive_pairs", "authors")
    ramp_epochs: float = with_default(CategoryConfig, "ramp_epochs", 1.0)
    known_only_epochs: int = with_default(CategoryConfig, "known_only_epochs", 5,
                                          "epochs on known labels only before the pseudo-label terms join (SST's "
                                          "generateLabelEpoch)")
    cooccurrence_head: str = option("authors", "authors: SST's pair branch, a classifier per pair of classes; ordered: "
                                               "one MLP over ordered pairs", choices=COOCCURRENCE_HEADS)
    cooccurrence_hidden: int = option(128, "ordered co-occurrence head: width of its MLP", minimum=1)
    cooccurrence_weight: float = option(10.0, "weight of SST's co-occurrence loss", minimum=0)
    cooccurrence_targets: str = option("authors", "authors: every pair, 1 where both labels are known positives, "
                                                  "else 0, under SST's ASL; known: only the pairs the known labels "
                                                  "decide, under the run's loss", choices=COOCCURRENCE_TARGETS)
    intra_weight: float = option(1.0, "loss weight of intra-image pseudo-labels; 0: off", minimum=0)
    inter_weight: float = option(1.0, "loss weight of cross-image pseudo-labels; 0: off", minimum=0)
    pseudo_targets: str = option("authors", "what a pseudo-label term scores: authors: the known labels with the "
                                            "pseudo-positives added; pseudo_only: the pseudo-positives alone",
                                 choices=PSEUDO_TARGETS)
    memory_size: int = option(100, "known positives kept per class for the cross-image module", minimum=1)
    memory: str = option("authors", "authors: a batch's positives go on top of the memory before its pseudo-labels "
                                    "are drawn, and all memory_size slots are averaged, an empty one as 0; filled: a "
                                    "ring, joined after, its filled slots averaged", choices=MEMORY_RULES)
    threshold_start: float = option(0.95, "threshold of both pseudo-labels (co-occurrence probability, cross-image "
                                          "similarity) when the known-only epochs end", minimum=-1, maximum=1)
    threshold_step: float = option(0.025, "how much the threshold falls each epoch after that", minimum=0)
    threshold_floor: float = option(0.75, "the threshold never falls below this", minimum=-1, maximum=1)

    def inert_options(self) -> set[str]:
        """The other head's options; the authors' pair branch is as wide as the authors' head."""
        inert = super().inert_options()
        if self.cooccurrence_head == "authors":
            return (inert - {"decoupling_dim", "classifier_dim"}) | {"cooccurrence_hidden"}
        return inert


@register_method
class SST(CategoryMethod):
    name = "sst"
    Config = SSTConfig

    def __init__(self, backbone, class_names, config: SSTConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        if config.cooccurrence_head == "authors":  # their intra_fc_1 is intermediaDim wide, the rest outputDim
            self.cooccurrence = PairClassifierHead(self.num_classes, backbone.embed_dim, config.decoupling_dim,
                                                   config.classifier_dim)
        else:
            self.cooccurrence = OrderedPairHead(backbone.embed_dim, config.cooccurrence_hidden)
        self.memory = PositiveMemory(self.num_classes, config.memory_size, backbone.embed_dim, config.memory)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        category, attention = self.head(features.dense_features)
        output = self.scored(category, attention, features.grid)
        if self.training:  # the pair map only serves the training terms
            unit = self.config.cooccurrence_head == "ordered"
            output.extras["pair_logits"] = self.cooccurrence(output.category_features if unit else category)
        return output

    def threshold(self) -> float:
        config = self.config
        return transfer_threshold(self.epoch, config.known_only_epochs, config.threshold_start,
                                  config.threshold_step, config.threshold_floor)

    def cooccurrence_loss(self, pair_logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        if self.config.cooccurrence_targets == "authors":
            return authors_cooccurrence_loss(pair_logits, targets)
        return loss_fn(pair_logits.flatten(1), cooccurrence_targets(targets).flatten(1))

    def pseudo_labelled(self, pseudo: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The targets a pseudo-label term scores (``pseudo_targets``); ``pseudo`` is 0 where a label is known."""
        return targets + pseudo if self.config.pseudo_targets == "authors" else pseudo

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        config = self.config
        losses = super().auxiliary_losses(output, targets, loss_fn)
        pair_logits = output.extras["pair_logits"]
        losses["cooccurrence"] = (config.cooccurrence_weight * self.ramp()
                                  * self.cooccurrence_loss(pair_logits, targets, loss_fn))
        category = output.category_features.detach()
        if config.memory == "authors":
            self.memory.push(category, targets)
        if self.warmed_up:
            threshold = self.threshold()
            if config.intra_weight:
                intra = intra_image_pseudo_labels(torch.sigmoid(pair_logits.detach().float()), targets, threshold)
                losses["intra"] = config.intra_weight * loss_fn(output.logits, self.pseudo_labelled(intra, targets))
            if config.inter_weight:
                inter = cross_image_pseudo_labels(self.memory.mean_similarity(category), targets, threshold)
                losses["inter"] = config.inter_weight * loss_fn(output.logits, self.pseudo_labelled(inter, targets))
        if config.memory == "filled":
            self.memory.push(category, targets)
        return losses

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        return (super().estimate_activation_bytes(batch_size, locations)
                + self.cooccurrence.estimate_activation_bytes(batch_size, self.num_classes))
