"""Class text features: what a class's name, templates or descriptions look like to the frozen
text encoder. The one home of the features zero-shot CLIP scores with, the linear probe starts
from and the description-initialised prompts are pulled towards.

A class's text feature is the normalised mean of its normalised prompt features (CLIP's prompt
ensemble, Radford et al. 2021, section 3.1.4); prompts come from templates ("a photo of a {}.") or
from per-class descriptions (a description ensemble, as CuPL, Pratt et al. 2023).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from promptmlr.backbones.base import FrozenCLIP
from promptmlr.errors import ConfigError

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def class_prompts(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                  descriptions: Mapping[str, Sequence[str]] | None = None) -> list[list[str]]:
    """The prompts that describe each class: its descriptions if given, else the filled templates."""
    if descriptions is not None:
        missing = [name for name in class_names if not descriptions.get(name)]
        if missing:
            raise ConfigError(f"no descriptions for classes: {missing}")
        return [list(descriptions[name]) for name in class_names]
    return [[template.format(name) for template in templates] for name in class_names]


@torch.no_grad()
def class_text_features(backbone: FrozenCLIP, class_names: Sequence[str],
                        templates: Sequence[str] = DEFAULT_TEMPLATES,
                        descriptions: Mapping[str, Sequence[str]] | None = None) -> torch.Tensor:
    """Unit-norm text feature per class ``[C, D]``, averaged over that class's prompts."""
    features = []
    for prompts in class_prompts(class_names, templates, descriptions):
        mean = backbone.encode_text(prompts, normalize=True).mean(dim=0)
        features.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.stack(features)


def standardize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Each image's scores ``[N, C]`` as z-scores across the classes (SPARC, 2025)."""
    return (scores - scores.mean(dim=1, keepdim=True)) / scores.std(dim=1, keepdim=True).clamp_min(1e-6)
