"""PositiveCoOp (Rawlekar et al., 2024): DualCoOp with the negative text prompt replaced by a learned
joint-space embedding per class.

Built on DualCoOp's code, as the authors' is: the same class-specific region aggregation
(:class:`~promptmlr.models.dualcoop.RegionPromptMethod`), the attention pool's mean token included.
As the authors' ``models/positivecoop.py`` and ``train.py`` (SamyakR99/PositiveCoOp, commit 58c9c51):

* the positive text feature gets a learned per-class vector added before it is normalised
  (their ``txt_prompt_learn``), and the negative is a learned vector per class (``txt_prompt_neg``),
  both drawn from a standard normal (``torch.randn``): ``positive_offset``, ``embedding_init_std``;
* the prompt contexts train at 0.01 times the learning rate of those vectors (their ``prompt_group``
  at ``OPTIM.LR * 0.01``, ``text_group`` at ``OPTIM.LR``): ``context_lr_scale``.

Their loss is ASL summed over the known labels, with its focusing weights held constant in the
gradient, times ``--loss_w``, trained with SGD: ``configs/methods/positivecoop.yaml`` sets that
(``loss.reduction: sum``, ``loss.detach_focusing``, ``loss.weight``); the contexts start at random,
as theirs. ``tools/bench/parity_positivecoop.py`` compares the two codes part by part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from promptmlr.models.dualcoop import CoOpConfig, RegionPromptMethod
from promptmlr.models.factory import register_method
from promptmlr.models.prompts import negative_branch, positive_prompts
from promptmlr.options import option


@dataclass
class PositiveCoOpConfig(CoOpConfig):
    positive_offset: bool = option(True, "a learned per-class vector added to the positive text feature before it is "
                                         "normalised (PositiveCoOp's txt_prompt_learn)")
    embedding_init_std: float = option(1.0, "standard deviation of the negative embeddings' and the positive offsets' "
                                             "initial values (PositiveCoOp's torch.randn: 1)", above=0)
    context_lr_scale: float = option(0.01, "the prompt contexts' learning rate, as a multiple of train.lr "
                                           "(PositiveCoOp's 0.01; the vectors train at train.lr)", above=0)


@register_method
class PositiveCoOp(RegionPromptMethod):
    name = "positivecoop"
    Config = PositiveCoOpConfig
    negative_kind = "embedding"

    def branches(self, backbone, class_names, config: PositiveCoOpConfig) -> tuple[nn.Module, nn.Module]:
        offset_std = config.embedding_init_std if config.positive_offset else None
        return (positive_prompts(backbone, class_names, config, self.descriptions, text_offset_std=offset_std),
                negative_branch(self.negative_kind, backbone, class_names, config, config.embedding_init_std))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The prompt contexts at ``context_lr_scale``; the offsets and negative embeddings at 1. At a
        scale of 1, one group, as before the option existed: a checkpoint of then resumes."""
        if self.config.context_lr_scale == 1.0:
            return super().parameter_groups()
        contexts = [self.positive.context]
        vectors = [p for p in self.parameters() if p.requires_grad and all(p is not c for c in contexts)]
        return [{"params": contexts, "lr_scale": self.config.context_lr_scale},
                {"params": vectors, "lr_scale": 1.0}]
