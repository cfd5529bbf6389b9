"""PositiveCoOp (Rawlekar et al., 2024): DualCoOp with the negative text prompt replaced by a learned
joint-space embedding per class.

Built on DualCoOp's code, as the authors' is: the same class-specific region aggregation
(:class:`~promptmlr.models.dualcoop.RegionPromptMethod`), the attention pool's mean token included.
"""

from __future__ import annotations

from promptmlr.models.dualcoop import RegionPromptMethod
from promptmlr.models.factory import register_method


@register_method
class PositiveCoOp(RegionPromptMethod):
    name = "positivecoop"
    negative_kind = "embedding"
