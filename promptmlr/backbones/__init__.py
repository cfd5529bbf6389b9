"""Frozen CLIP image and text encoders from open_clip or transformers, behind one interface."""

from promptmlr.backbones.base import BackboneLoadError, FrozenCLIP, ImageFeatures
from promptmlr.backbones.factory import (
    create_backbone,
    list_backbones,
    register_backbone_alias,
    register_backbone_source,
)
from promptmlr.backbones.preprocess import PreprocessConfig, build_transform

__all__ = [
    "BackboneLoadError",
    "FrozenCLIP",
    "ImageFeatures",
    "PreprocessConfig",
    "build_transform",
    "create_backbone",
    "list_backbones",
    "register_backbone_alias",
    "register_backbone_source",
]
