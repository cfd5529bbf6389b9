"""DSRB: Dual-perspective Semantic-aware Representation Blending (Pu et al., arXiv:2205.13092), on frozen CLIP.

Trained as the authors' code trains it (HCP-MLR-PL, ``DSRB.py``, ``model/DSRB.py``, ``loss/DSRB.py``),
on CLIP's dense map instead of a fine-tuned ResNet-101 (:mod:`.category`: their decoupling and
element-wise classifier, no GGNN). Its two blending perspectives (:mod:`.blending`) make training
entries for unknown labels. Per batch, as ``DSRB.py``'s ``Train`` adds the terms:

    L = L_cls(y) + r * w_con * L_contrastive(f, y)
        + [from known_only_epochs on] w_blend * (BCE(g(f_instance), y_instance) + BCE(g(f_prototype), y_prototype))

with ``L_cls`` the run's loss (their ``BCELoss`` is ASL without focusing or clip: the recipes in
``configs/methods/<dataset>/dsrb.yaml`` set it), ``r`` the first-epoch ramp, ``g`` the method's
scoring of a blend of the decoupled features, ``BCE`` their ``BCELoss`` (:func:`.blending.soft_target_bce`)
and the blend targets the known labels with ``1 - alpha`` or ``1 - beta`` on the blended entries.
Defaults are the authors' (``scripts/DSRB.sh``: ``mixupEpoch`` 5, ``contrastiveLossWeight`` 0.05,
``topK`` 1, ``recomputePrototypeInterval`` 5, alpha and beta learnable). ``blend_weight`` is 1: their
``instanceLossWeight`` and ``prototypeLossWeight`` are read but never defined in ``config.py``, and
SARB's code, which DSRB extends, adds both terms unweighted. Each rule where promptmlr's own
blending (promptmlr, SARL) differs is an option: ``blend_shares``, ``blend_targets``, ``blend_entries``,
``prototype_region``, ``prototype_update`` (:mod:`.blending`), ``head``, ``contrastive_pairs``,
``ramp_epochs`` (:mod:`.category`), and two of DSRB's own:

* ``blend_features``: ``decoupled``, the blends are made of the decoupling head's features before the
  method normalises them, as the authors blend the decoupled features (``featuremapWithCoef``, summed
  over the locations) before the rest of their network; ``unit``, of the unit features.
* ``region_peak``: ``feature``, a class's region is where its attention times the location's features
  summed over channels peaks, as ``mixupPrototype_featuremap`` and ``computePrototype_featuremap`` take
  the maximum of ``featuremapWithCoef`` summed over channels; ``attention``, where its attention does.

Differences kept without an option: the frozen encoder and no GGNN (:mod:`.category`); an image
without an unknown label gets no prototype blend (theirs would blend a known one) and a class never
seen positive no prototype (their pass fails); on an odd grid the 2 x 2 regions split in proportion
(theirs at ``H // 2``; the same on the even grids of the recipes and the sandbox). Their code does not
run as released (``tools/bench/parity_dsrb.py`` says what it stubs to compare with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import LossFn, MethodOutput
from promptmlr.models.blending import Blender, BlendInputs, blend_inert_options, blend_option, check_blend_settings
from promptmlr.models.category import CategoryConfig, CategoryMethod
from promptmlr.models.factory import register_method
from promptmlr.options import option, with_default

BLEND_FEATURES = ("decoupled", "unit")
REGION_PEAKS = ("feature", "attention")


@dataclass
class DSRBConfig(CategoryConfig):
    head: str = with_default(CategoryConfig, "head", "authors")
    contrastive_pairs: str = with_default(CategoryConfig, "contrastive_pairs", "authors")
    ramp_epochs: float = with_default(CategoryConfig, "ramp_epochs", 1.0)
    known_only_epochs: int = with_default(CategoryConfig, "known_only_epochs", 5,
                                          "epochs on known labels only before the blending terms join (the authors' "
                                          "mixupEpoch)")
    instance_blend: bool = blend_option("instance_blend")
    prototype_blend: bool = blend_option("prototype_blend")
    instance_alpha: float = blend_option("instance_alpha")
    prototype_beta: float = blend_option("prototype_beta")
    blend_shares: str = blend_option("blend_shares")
    blend_targets: str = blend_option("blend_targets")
    blend_entries: str = blend_option("blend_entries")
    blend_features: str = option("decoupled", "the features blended: the decoupling head's before normalisation "
                                              "(HCP-MLR-PL's), or the unit ones", choices=BLEND_FEATURES)
    regions: int = blend_option("regions")
    region_peak: str = option("feature", "a class's region: where its attention times the location's summed "
                                         "features peaks (HCP-MLR-PL's), or its attention", choices=REGION_PEAKS)
    prototype_region: str = blend_option("prototype_region")
    prototype_update: str = blend_option("prototype_update")
    prototype_interval: int = blend_option("prototype_interval")
    prototype_samples: int = blend_option("prototype_samples")
    prototype_momentum: float = blend_option("prototype_momentum")
    blend_weight: float = option(1.0, "weight of both blending terms", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_blend_settings(self)

    def inert_options(self) -> set[str]:
        """Options this configuration ignores (the accuracy benchmark's run comparison skips them)."""
        inert = blend_inert_options(self)
        if not (self.instance_blend or self.prototype_blend):
            inert |= {"blend_features", "blend_weight"}
        return inert | (set() if self.prototype_blend else {"region_peak"})


@register_method
class DSRB(CategoryMethod):
    name = "dsrb"
    Config = DSRBConfig

    def __init__(self, backbone, class_names, config: DSRBConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        self.blender = Blender(self.num_classes, backbone.embed_dim, config)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        """:class:`CategoryMethod`'s output, with what the blends are made of as the options need it
        (``extras``): the head's features before normalisation and each location's summed features."""
        decoupled, attention = self.head(features.dense_features)
        output = self.scored(decoupled, attention, features.grid)
        if self.config.blend_features == "decoupled":
            output.extras["decoupled_features"] = decoupled
        if self.config.prototype_blend and self.config.region_peak == "feature":
            output.extras["location_sums"] = self._location_sums(features.dense_features)
        return output

    @torch.no_grad()
    def _location_sums(self, dense: torch.Tensor) -> torch.Tensor:
        """What each location contributes to the category features, summed over channels ``[B, H*W]``:
        the authors' head pools the map itself, the clip head its value map (summed here without
        forming it)."""
        if self.config.head == "authors":
            return dense.sum(-1)
        value = self.head.value
        return dense @ value.weight.sum(0) + value.bias.sum()

    @staticmethod
    def blend_inputs(output: MethodOutput) -> BlendInputs:
        """The features to blend and the location scores that place a class's region."""
        category = output.extras.get("decoupled_features", output.category_features)
        sums = output.extras.get("location_sums")
        scores = output.attention if sums is None else output.attention * sums[:, None, :]
        return BlendInputs(category, scores, output.grid)

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        losses = super().auxiliary_losses(output, targets, loss_fn)

        def classify(blended: torch.Tensor) -> torch.Tensor:
            return self.scored(blended, output.attention, output.grid).logits

        blending = self.blender.losses(self.blend_inputs(output), targets, classify, loss_fn, self.warmed_up)
        return {**losses, **{name: self.config.blend_weight * value for name, value in blending.items()}}

    def wants_training_pass(self) -> bool:
        return self.blender.pass_due(self.epoch - self.config.known_only_epochs)

    def training_pass(self, batches: Iterable[tuple[ImageFeatures, torch.Tensor]]) -> None:
        """The prototypes, from every training batch's features and known labels."""
        self.blender.read_training_set((self.blend_inputs(self(features)), targets) for features, targets in batches)
