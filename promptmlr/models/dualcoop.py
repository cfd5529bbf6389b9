"""DualCoOp (Sun et al., NeurIPS 2022), and the region aggregation PositiveCoOp shares with it.

Both compare every location's dense feature with each class's positive and negative feature and
aggregate with DualCoOp's class-specific region aggregation: a spatial softmax of the positive
similarity map weights the positive and the negative region scores (DualCoOp, section 3.3, its
``20 * cos`` maps and ``5 *`` output scale). DualCoOp learns the negative as a text prompt;
PositiveCoOp as a joint-space embedding.

What is kept from the anchor's code, not only its paper: on a ResNet CLIP its dense map has the
attention pool's mean token as an extra location 0, and the softmax runs over it
(``mean_token``, on by default; :meth:`FrozenCLIP.mean_token_offset`). Without it the logits
differ from the anchor's by up to 0.19 on the same weights and input; with it they agree to
float precision (``tools/bench/anchor.py`` checks this against a DualCoOp checkout). PositiveCoOp
is built on DualCoOp's code and keeps the token too. Heatmaps show the grid's weights, renormalised.

Both codes start the contexts at random, N(0, 0.02) (``init: random``), and train with SGD on ASL
summed over the known labels, its focusing weights held constant in the gradient, times a loss
weight (``--loss_w``): ``configs/methods/dualcoop.yaml`` and ``positivecoop.yaml`` set that training
(``tools/bench/anchor.py`` checks DualCoOp's steps against its code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import BYTES_PER_FLOAT, MethodOutput, MultiLabelMethod
from promptmlr.models.factory import register_method
from promptmlr.models.prompts import PROMPT_INITS, PromptConfig, negative_branch, positive_prompts
from promptmlr.options import option


@dataclass
class CoOpConfig(PromptConfig):
    init: str = option("random", "how the context starts: at random (DualCoOp's and PositiveCoOp's code: N(0, "
                                 "0.02)), init_phrase, a class's first description's tokens, or phrase plus its "
                                 "description features", choices=PROMPT_INITS)
    map_scale: float = option(20.0, "similarity maps are map_scale times the cosine (DualCoOp's 20)", above=0)
    output_scale: float = option(5.0, "logits are output_scale times the aggregated region scores (DualCoOp's 5)",
                                 above=0)
    mean_token: bool = option(True, "a ResNet's attention-pool mean token as dense location 0, as DualCoOp's code")


def region_aggregation(dense: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, map_scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DualCoOp's class-specific region aggregation.

    ``dense [B, HW, D]``, unit-norm ``positive``/``negative [C, D]`` -> positive and negative region
    scores ``[B, C]`` and the spatial weights ``[B, C, HW]`` (softmax of the positive map).
    """
    dense = F.normalize(dense, dim=-1)
    positive_map = map_scale * torch.einsum("bld,cd->bcl", dense, positive)
    negative_map = map_scale * torch.einsum("bld,cd->bcl", dense, negative)
    weights = torch.softmax(positive_map, dim=-1)
    return (weights * positive_map).sum(-1), (weights * negative_map).sum(-1), weights


class RegionPromptMethod(MultiLabelMethod):
    """DualCoOp's scoring, shared with PositiveCoOp; a subclass names its negative branch."""

    Config = CoOpConfig
    negative_kind: str  # see prompts.negative_branch

    def __init__(self, backbone, class_names, config: CoOpConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        self.positive, self.negative = self.branches(backbone, class_names, config)
        offset = backbone.mean_token_offset() if config.mean_token else None
        self.register_buffer("mean_token_offset", offset, persistent=False)

    def branches(self, backbone, class_names, config: CoOpConfig) -> tuple[nn.Module, nn.Module]:
        """The positive prompts and the negative branch (``negative_kind``), built in this order."""
        return (positive_prompts(backbone, class_names, config, self.descriptions),
                negative_branch(self.negative_kind, backbone, class_names, config))

    def forward(self, features: ImageFeatures) -> MethodOutput:
        dense = features.dense_features
        if self.mean_token_offset is not None:
            mean_token = dense.float().mean(dim=1, keepdim=True) + self.mean_token_offset
            dense = torch.cat([mean_token.to(dense.dtype), dense], dim=1)
        positive, negative, weights = region_aggregation(dense, self.positive(), self.negative(),
                                                         self.config.map_scale)
        grid_weights = weights[..., dense.shape[1] - features.dense_features.shape[1]:]
        grid_weights = grid_weights / grid_weights.sum(dim=-1, keepdim=True)  # a map over the grid
        return MethodOutput(self.config.output_scale * (positive - negative), grid_weights, features.grid)

    def class_embeddings(self) -> torch.Tensor:
        with torch.no_grad():
            return self.positive()

    @classmethod
    def text_embeddings_refusal(cls, config: CoOpConfig) -> str:
        return (f"method {cls.name} scores each class on the dense map, weighted where the class is, against "
                f"a positive and a negative feature")

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        return BYTES_PER_FLOAT * 6 * batch_size * self.num_classes * locations  # 3 maps and their gradients


@register_method
class DualCoOp(RegionPromptMethod):
    name = "dualcoop"
    negative_kind = "text"
