"""promptmlr's own method: category-specific prompts scored on semantically decoupled features.

1. Positive prompts per class (:class:`PromptLearner`), optionally initialised from LLM-written
   descriptions; a pluggable negative branch (``text`` as DualCoOp, ``embedding`` as PositiveCoOp,
   or ``none``: a learned per-class threshold on the positive similarity).
2. A semantic decoupling head (:mod:`promptmlr.models.head`, the SARL idea) pools one feature per
   category from the dense map, attending with the class's query.
3. Logits ``s * (cos(f_c, t+_c) - cos(f_c, t-_c))`` compare each category feature with its own
   class's prompts only; an optional global branch adds the same margin computed on CLIP's global
   image embedding (``global_weight``; off by default, see below).
4. Category-specific prompt alignment: a cross-entropy over classes that makes the feature pooled
   for class c (where c is a known positive) closer to c's prompt than to any other class's, against
   semantic confusion between co-occurring classes (in the spirit of SARL's category-specific
   prompt optimisation and SCPNet's structured prompts).
5. promptmlr's semantic-guided enhancement, after CLSL's (``enhance``, :mod:`.enhancement`, whose
   docstring says how its layers differ from CLSL's): a non-linear classifier per location, guided
   by fixed class text as CLSL's is (``enhance_text="class"``) or by the learned positive prompts,
   detached (``"prompts"``), whose pooled logits are added to the prompt margins, an ensemble
   trained end to end. Each part trains at its own validated rate: the enhancement at
   ``enhance_lr_scale`` (4) times the prompts' rate, as these layers alone (the ``clsl`` method with
   ``enhancement: promptmlr``) validated at lr 0.02 and SARL's prompts at 0.005 on the sandbox.
6. Optional terms from the seed papers, composed rather than copied: HCP's category contrastive loss
   (``contrastive_weight``, :mod:`.category`) and DSRB's instance and prototype blending
   (``instance_blend``, ``prototype_blend``, :mod:`.blending`) on the category features, scored by
   the category margin.
7. Optional branches from the seed methods' heads: CLSL's own enhancement layers in place of
   promptmlr's (``enhance_layers: clsl``, :class:`.clsl.AuthorsEnhancement`, at CLSL's widths), and
   HCP-MLR-PL's semantic decoupling and element-wise classifier (``decoupled``, as DSRB and SST use
   them, :mod:`.category`), guided by the class text, at ``decoupled_lr_scale`` times the rate.
8. ``probe``: a linear probe on CLIP's global image embedding as a branch (the linear method's
   layer, started from the zero-shot classifier, at ``probe_lr_scale`` times the rate). Every other
   branch scores the dense map; where an encoder's patch tokens hold far less than its global
   embedding (a ViT's), the probe carries what they miss (PositiveCoOp, Rawlekar et al. 2024, found
   a linear probe on par with prompt learning on MLR-PL).
9. ``branch_losses``: each branch (the prompt margins, the enhancement, the decoupled classifier, the
   probe) is trained on the run's loss by itself and the prediction is a weighted mean of their
   logits, an ensemble; otherwise the logits are summed and one loss fits the sum. Heads that fit the
   sum jointly compete for the same residual; heads trained to predict alone make different errors,
   which the ensemble averages out (the best published CLIP results fuse separately trained heads,
   e.g. DualCoOp with TaI-DPT, Guo et al. 2023). ``fusion``: equal weights, or the convex weights with the
   highest validation mAP, chosen before each evaluation (``validated``, :mod:`.fusion`), which lets
   a branch that is weak on this encoder count for little.

Which parts are on by default was decided by the ablation on the sandbox's validation split at
10 % known (``docs/ablation.md``): 1-5 on, the global branch and 6 off. The sandbox recipe
(``configs/methods/synthetic/promptmlr.yaml``) adds 7's decoupled branch, 256 wide, 8's probe and 9
with weights chosen on validation: the four branches as an ensemble validated 93.06 against 86.54
for the defaults (steps 5 and 6 of the ablation; optimistic, as the weights are chosen on it, while
the test mAP rose as well), and on the ViT sandbox the probe takes 0.3-0.8 of the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import BYTES_PER_FLOAT, LossFn, MethodOutput, MultiLabelMethod
from promptmlr.models.blending import Blender, BlendInputs, blend_inert_options, blend_option, check_blend_settings
from promptmlr.models.category import HCPClassifier, HCPDecouplingHead, category_contrastive_loss
from promptmlr.models.clsl import AuthorsEnhancement, CLSLConfig
from promptmlr.models.enhancement import SemanticEnhancement
from promptmlr.models.factory import register_method
from promptmlr.models.fusion import validated_weights
from promptmlr.models.head import SemanticDecouplingHead
from promptmlr.models.linear import LinearConfig, zero_shot_linear
from promptmlr.models.prompts import NEGATIVE_BRANCHES, PromptConfig, negative_branch, positive_prompts
from promptmlr.models.text import class_text_features
from promptmlr.options import option

QUERIES = ("learnable", "prompt")
ENHANCE_TEXTS = ("prompts", "class")
ENHANCE_LAYERS = ("promptmlr", "clsl")
FUSIONS = ("mean", "validated")


@dataclass
class PromptMLRConfig(PromptConfig):
    negative: str = option("embedding", "the negative branch: a text prompt (DualCoOp's), a learned joint-space "
                                        "embedding (PositiveCoOp's) or none (a learned threshold per class)",
                           choices=NEGATIVE_BRANCHES)
    query: str = option("learnable", "the decoupling head's queries: learnable ones initialised from the prompts, "
                                     "or the prompts themselves", choices=QUERIES)
    attention_temperature: float = option(10.0, "initial temperature of the head's spatial softmax (learned)",
                                          above=0)
    logit_scale: float = option(5.0, "s: logits are s times the cosine margin (chosen on the sandbox's validation "
                                     "split, docs/ablation.md)", above=0)
    align_weight: float = option(0.1, "weight of the category-specific prompt-alignment term; 0: off", minimum=0)
    global_weight: float = option(0.0, "weight of the global-feature margin added to the category-specific one; "
                                       "0: off", minimum=0)
    contrastive_weight: float = option(0.0, "weight of HCP's category contrastive loss; 0: off", minimum=0)
    instance_blend: bool = blend_option("instance_blend", False)
    prototype_blend: bool = blend_option("prototype_blend", False)
    instance_alpha: float = blend_option("instance_alpha")
    prototype_beta: float = blend_option("prototype_beta")
    blend_shares: str = blend_option("blend_shares", "fixed")
    blend_targets: str = blend_option("blend_targets", "hard")
    blend_entries: str = blend_option("blend_entries", "blended")
    regions: int = blend_option("regions")
    prototype_region: str = blend_option("prototype_region", "own")
    prototype_update: str = blend_option("prototype_update", "moving_average")
    prototype_interval: int = blend_option("prototype_interval")
    prototype_samples: int = blend_option("prototype_samples")
    prototype_momentum: float = blend_option("prototype_momentum")
    known_only_epochs: int = option(2, "epochs on known labels only before the blending terms join", minimum=0)
    enhance: bool = option(True, "promptmlr's semantic-guided enhancement (after CLSL's), its logits added to the "
                                 "prompt margins")
    enhance_hidden: int = option(256, "width of the enhancement's MLPs", minimum=1)
    enhance_text: str = option("class", "what guides the enhancement: fixed class text (as CLSL's), or the learned "
                                        "positive prompts, detached", choices=ENHANCE_TEXTS)
    enhance_lr_scale: float = option(4.0, "the enhancement trains at this times train.lr (chosen on the sandbox's "
                                          "validation split, docs/ablation.md)", above=0)
    enhance_temperature: float | None = option(None, "the enhancement's attention scale; null: "
                                                     "attention_temperature", above=0)
    enhance_layers: str = option("promptmlr", "the enhancement's layers: promptmlr's, or CLSL's own (a transformer "
                                              "layer over the locations, bilinear attention, GELU MLPs)",
                                 choices=ENHANCE_LAYERS)
    decoupled: bool = option(False, "a branch of HCP-MLR-PL's semantic decoupling and element-wise classifier "
                                    "(DSRB's and SST's head), guided by the class text")
    decoupling_dim: int = option(512, "the decoupled branch's attention width (HCP-MLR-PL's intermediaDim)",
                                 minimum=1)
    classifier_dim: int = option(1024, "the decoupled branch's classifier width (HCP-MLR-PL's outputDim)", minimum=1)
    decoupled_lr_scale: float = option(0.4, "the decoupled branch trains at this times train.lr", above=0)
    probe: bool = option(False, "a branch that is a linear probe on CLIP's global image embedding, started from the "
                                "zero-shot classifier (the linear method's layer)")
    probe_lr_scale: float = option(10.0, "the probe branch trains at this times train.lr (the linear method "
                                         "validated lr 0.05 on the sandbox, 10x promptmlr's 0.005)", above=0)
    branch_losses: bool = option(False, "train each branch on its own loss and predict a weighted mean of their "
                                        "logits (an ensemble, see fusion); off: one loss on their sum")
    fusion: str = option("mean", "the branch_losses ensemble's weights: equal, or the convex weights with the "
                                 "highest validation mAP, chosen before each evaluation", choices=FUSIONS)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_blend_settings(self)

    def fits_on_validation(self) -> bool:
        """Whether a run chooses the branches' weights on the validation split (a run without one is
        refused when its configuration is checked)."""
        return self.fusion == "validated" and self.branch_losses and (self.enhance or self.decoupled or self.probe)

    def inert_options(self) -> set[str]:
        """Options this configuration ignores: the enhancement's when it is off, the blending settings
        not in use (:func:`.blending.blend_inert_options`), and the blending's start when no perspective
        is on. Two configs that differ only in them train the same model (the accuracy benchmark's run
        comparison skips them)."""
        inert = set() if self.enhance else {"enhance_hidden", "enhance_text", "enhance_lr_scale", "enhance_temperature",
                                            "enhance_layers"}
        if self.enhance and self.enhance_layers == "clsl":  # CLSL's layers have CLSL's widths and attention
            inert |= {"enhance_hidden", "enhance_temperature"}
        if not self.decoupled:
            inert |= {"decoupling_dim", "classifier_dim", "decoupled_lr_scale"}
        if not self.probe:
            inert.add("probe_lr_scale")
        if not (self.enhance or self.decoupled or self.probe):  # one branch: its own loss is the loss on the sum
            inert |= {"branch_losses", "fusion"}
        if not self.branch_losses:
            inert.add("fusion")
        inert |= blend_inert_options(self)
        return inert | (set() if self.instance_blend or self.prototype_blend else {"known_only_epochs"})


@register_method
class PromptMLR(MultiLabelMethod):
    name = "promptmlr"
    Config = PromptMLRConfig

    def __init__(self, backbone, class_names, config: PromptMLRConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        self.positive = positive_prompts(backbone, class_names, config, self.descriptions)
        self.negative = negative_branch(config.negative, backbone, class_names, config)
        self.threshold = nn.Parameter(torch.zeros(self.num_classes)) if config.negative == "none" else None
        initial_queries = None
        if config.query == "learnable":
            with torch.no_grad():
                initial_queries = self.positive()
        self.head = SemanticDecouplingHead(backbone.embed_dim, self.num_classes, initial_queries,
                                           config.attention_temperature)
        self.blender = None
        if config.instance_blend or config.prototype_blend:
            self.blender = Blender(self.num_classes, backbone.embed_dim, config)
        if (config.enhance and config.enhance_text == "class") or config.decoupled:
            self.register_buffer("class_text", class_text_features(backbone, class_names,
                                                                   descriptions=self.descriptions),
                                 persistent=False)
        self.enhancement = None
        if config.enhance and config.enhance_layers == "clsl":
            widths = CLSLConfig()
            self.enhancement = AuthorsEnhancement(backbone.embed_dim, backbone.embed_dim, self.num_classes,
                                                  widths.attention_dim, widths.encoder_layers, widths.encoder_heads)
        elif config.enhance:
            temperature = config.enhance_temperature or config.attention_temperature  # one scale for both, by default
            self.enhancement = SemanticEnhancement(backbone.embed_dim, self.num_classes, config.enhance_hidden,
                                                   temperature)
        self.decoupling = self.decoupled_classifier = None
        if config.decoupled:
            self.decoupling = HCPDecouplingHead(backbone.embed_dim, self.class_text, config.decoupling_dim)
            self.decoupled_classifier = HCPClassifier(self.num_classes, backbone.embed_dim, config.classifier_dim)
        self.probe = zero_shot_linear(backbone, class_names, LinearConfig().init_scale) if config.probe else None
        if config.fits_on_validation():  # the mean until the first fit; saved with the run
            branches = 1 + sum(module is not None for module in (self.enhancement, self.decoupling, self.probe))
            self.register_buffer("branch_weights", torch.full((branches,), 1.0 / branches))

    def forward(self, features: ImageFeatures) -> MethodOutput:
        positive = self.positive()
        category, attention = self.head(features.dense_features, positive)
        category = F.normalize(category, dim=-1)
        negative = None if self.negative is None else self.negative()
        margins = self._margin(category, positive, negative)
        image = F.normalize(features.global_features, dim=-1)
        if self.config.global_weight:
            margins = margins + self.config.global_weight * self._margin(image[:, None, :], positive, negative)
        branches = [margins]
        if self.enhancement is not None:
            branches.append(self._enhancement_logits(features, image, positive))
        if self.decoupling is not None:
            branches.append(self.decoupled_classifier(self.decoupling(features.dense_features)[0]))
        if self.probe is not None:
            branches.append(self.probe(image))
        extras = {"negative_features": negative} if negative is not None else {}
        if self.config.branch_losses and len(branches) > 1:
            stacked = torch.stack(branches)
            fitted = self.config.fits_on_validation()
            # an element-wise product, not einsum: autocast would run einsum's matmul in half precision
            logits = (self.branch_weights.to(stacked)[:, None, None] * stacked).sum(0) if fitted else stacked.mean(0)
            extras["branch_logits"] = stacked
        else:
            logits = sum(branches[1:], branches[0])
        return MethodOutput(logits, attention, features.grid, category, positive, extras)

    def _enhancement_logits(self, features: ImageFeatures, image: torch.Tensor, positive: torch.Tensor
                            ) -> torch.Tensor:
        """The enhancement's logits ``[B, C]``. The prompts guide it as fixed text, as CLSL's fixed class
        embeddings do, so that its loss does not pull them away from their own margins."""
        text = self.class_text if self.config.enhance_text == "class" else positive.detach()
        if self.config.enhance_layers == "clsl":
            return self.enhancement(self.enhancement.locations(features.dense_features, features.grid), text)[0]
        return self.enhancement(self.enhancement.locations(features.dense_features), image, text)[0]

    def fits_on_validation(self) -> bool:
        """``fusion: validated``: the branches' weights are chosen on the validation split before each
        evaluation (:func:`.fusion.validated_weights`), so the epoch is selected on the fused prediction."""
        return self.config.fits_on_validation()

    def validation_fit_inputs(self, output: MethodOutput) -> torch.Tensor:
        return output.extras["branch_logits"].permute(1, 0, 2).contiguous()  # [B, K, C]

    def fit_on_validation(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        self.branch_weights.copy_(torch.from_numpy(validated_weights(inputs, labels)))

    def supervised_logits(self, output: MethodOutput) -> list[torch.Tensor]:
        """Each branch on its own loss under ``branch_losses`` (item 9), else their sum."""
        branches = output.extras.get("branch_logits")
        return [output.logits] if branches is None else list(branches)

    def parameter_groups(self) -> list[dict]:
        """The prompts and their head at the rate; the enhancement at ``enhance_lr_scale`` times it
        (alone, these layers, clsl's enhancement: promptmlr, validated best at lr 0.02 and SARL's
        prompts at 0.005, docs/sandbox.md); the decoupled branch at ``decoupled_lr_scale`` times it
        (DSRB's head validated at lr 0.002 on the sandbox, docs/results.md); the probe at
        ``probe_lr_scale`` times it (the linear method validated at lr 0.05)."""
        scaled = [(module, scale) for module, scale in ((self.enhancement, self.config.enhance_lr_scale),
                                                        (self.decoupling, self.config.decoupled_lr_scale),
                                                        (self.decoupled_classifier, self.config.decoupled_lr_scale),
                                                        (self.probe, self.config.probe_lr_scale))
                  if module is not None]
        if not scaled:
            return super().parameter_groups()
        apart = {id(p) for module, _ in scaled for p in module.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in apart]
        return [{"params": rest, "lr_scale": 1.0}] + [
            {"params": [p for p in module.parameters() if p.requires_grad], "lr_scale": scale}
            for module, scale in scaled]

    def _margin(self, features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None) -> torch.Tensor:
        """``s * (cos(f, t+) - cos(f, t-))`` per class for unit features ``[B, C or 1, D]``."""
        positive_score = (features * positive).sum(-1)
        negative_score = self.threshold if negative is None else (features * negative).sum(-1)
        return self.config.logit_scale * (positive_score - negative_score)

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        config, losses = self.config, {}
        if config.align_weight:
            losses["align"] = config.align_weight * self._alignment(output, targets)
        if config.contrastive_weight:
            losses["contrastive"] = config.contrastive_weight * category_contrastive_loss(
                output.category_features, targets)
        if self.blender is not None:
            def classify(category: torch.Tensor) -> torch.Tensor:
                return self._margin(F.normalize(category, dim=-1), output.class_features,
                                    output.extras.get("negative_features"))

            losses.update(self.blender.losses(self.blend_inputs(output), targets, classify, loss_fn,
                                              self.epoch >= config.known_only_epochs))
        return losses

    def wants_training_pass(self) -> bool:
        return self.blender is not None and self.blender.pass_due(self.epoch - self.config.known_only_epochs)

    def training_pass(self, batches: Iterable[tuple[ImageFeatures, torch.Tensor]]) -> None:
        """The blending's prototypes, from every training batch's category features and known labels."""
        self.blender.read_training_set((self.blend_inputs(self(features)), targets) for features, targets in batches)

    @staticmethod
    def blend_inputs(output: MethodOutput) -> BlendInputs:
        """The unit category features, and the attention that places a class's region."""
        return BlendInputs(output.category_features, output.attention, output.grid)

    def _alignment(self, output: MethodOutput, targets: torch.Tensor) -> torch.Tensor:
        """Each known-positive category feature should pick its own class's prompt."""
        batch_index, class_index = torch.nonzero(targets > 0, as_tuple=True)
        if batch_index.numel() == 0:
            return output.logits.sum() * 0
        features = output.category_features[batch_index, class_index]
        logits = self.config.logit_scale * features @ output.class_features.T
        return F.cross_entropy(logits, class_index)

    def class_embeddings(self) -> torch.Tensor:
        with torch.no_grad():
            return self.positive()

    @classmethod
    def text_embeddings_refusal(cls, config: PromptMLRConfig) -> str:
        return (f"method {cls.name} scores a feature pooled for each class from the dense map (its decoupling "
                f"head) against the class's prompts" + (", plus its enhancement's MLPs" if config.enhance else "")
                + (", plus a decoupled classifier" if config.decoupled else ""))

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        total = self.head.estimate_activation_bytes(batch_size, locations, self.backbone.embed_dim)
        config, dim = self.config, self.backbone.embed_dim
        if self.enhancement is not None and config.enhance_layers == "clsl":
            widths = CLSLConfig()
            total += BYTES_PER_FLOAT * AuthorsEnhancement.activation_floats(
                batch_size, locations, dim, self.num_classes, widths.attention_dim, widths.encoder_layers,
                widths.encoder_heads)
        elif self.enhancement is not None:
            total += BYTES_PER_FLOAT * SemanticEnhancement.activation_floats(
                batch_size, locations, dim, config.enhance_hidden, self.num_classes)
        if self.decoupling is not None:
            total += self.decoupling.estimate_activation_bytes(batch_size, locations, dim)
        return total
