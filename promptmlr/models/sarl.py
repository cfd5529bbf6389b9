"""SARL (Ruan, Xu et al., arXiv:2412.10843, 2024): semantic decoupling plus category-specific prompts.

promptmlr's core (:mod:`promptmlr.models.promptmlr`) with the paper's settings: scored on the
category features alone, without the global branch, the enhancement, the contrastive term or
blending.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptmlr.models.factory import register_method
from promptmlr.models.promptmlr import PromptMLR, PromptMLRConfig
from promptmlr.options import with_default


@dataclass
class SARLConfig(PromptMLRConfig):
    """promptmlr's core at SARL's logit scale, with every part SARL does not have switched off."""

    logit_scale: float = with_default(PromptMLRConfig, "logit_scale", 20.0,
                                      "s: logits are s times the cosine margin (SARL's 20)")
    global_weight: float = with_default(PromptMLRConfig, "global_weight", 0.0)
    contrastive_weight: float = with_default(PromptMLRConfig, "contrastive_weight", 0.0)
    instance_blend: bool = with_default(PromptMLRConfig, "instance_blend", False)
    prototype_blend: bool = with_default(PromptMLRConfig, "prototype_blend", False)
    enhance: bool = with_default(PromptMLRConfig, "enhance", False)


@register_method
class SARL(PromptMLR):
    """SARL (Ruan, Xu et al., arXiv:2412.10843, 2024): semantic decoupling on CLIP's dense map plus
    category-specific prompt optimisation, scored on the category features alone: promptmlr's core
    without its global branch (``global_weight`` 0), kept under the paper's name so it can be run and
    compared. The parts not taken from the paper (the negative branch, the alignment term's form)
    are promptmlr's."""

    name = "sarl"
    Config = SARLConfig
