"""Frozen CLIP image and text encoders from open_clip or transformers, behind one interface."""

from promptmlr.backbones.base import BackboneLoadError, FrozenCLIP, ImageFeatures, PreprocessConfig
from promptmlr.backbones.factory import create_backbone, list_backbones, register_backbone_alias

__all__ = [
    "BackboneLoadError",
    "FrozenCLIP",
    "ImageFeatures",
    "PreprocessConfig",
    "create_backbone",
    "list_backbones",
    "register_backbone_alias",
]
