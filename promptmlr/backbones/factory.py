"""Backbone specs -> frozen CLIP backbones: the single entry point, like open_clip's ``create_model``.

A spec names where the weights come from::

    openclip:<arch>                   random weights (seeded; tests and speed benchmarks)
    openclip:<arch>:<pretrained-tag>  open_clip's download, e.g. openclip:RN101:openai
    openclip:<arch>:<path>            a local checkpoint file
    hf:<hub-id> | hf:<local-dir>      a transformers CLIPModel directory
    <alias>                           a name registered with :func:`register_backbone_alias`

Sources (the prefix before the first colon) and aliases live in two registries of the same kind as
methods' and datasets' (:class:`promptmlr.registry.Registry`): :func:`register_backbone_source` adds
a source, such as a ``timm:`` one, without touching this function.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import open_clip

from promptmlr.backbones.base import DENSE_MODES, FrozenCLIP
from promptmlr.errors import ConfigError, check_choice
from promptmlr.registry import Registry

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
# Input resolutions a backbone is built at. CLIP is trained at 224-448 px; above 4096 px a single
# image's float32 input tensor alone outgrows a GPU (100,000 px: 112 GiB) long before it is useful.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 4096
open_clip.add_model_config(MODEL_CONFIG_DIR)  # tiny test architectures (and the sandbox's) by name

SourceLoader = Callable[[str, str, "int | None", str], FrozenCLIP]  # (spec, rest, image_size, dense_mode)
# where weights come from, by the spec's prefix: ``openclip:...``, ``hf:...``
BACKBONE_SOURCES: Registry[SourceLoader] = Registry("backbone source")
# names that stand for a full spec, e.g. ``sandbox``
BACKBONE_ALIASES: Registry[str] = Registry("backbone")
WEIGHTS_DIR = Path(__file__).parent / "weights"


def register_backbone_source(prefix: str) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: let specs ``<prefix>:<rest>`` be built by the decorated loader, called as
    ``loader(spec, rest, image_size, dense_mode)``."""
    return BACKBONE_SOURCES.decorator(prefix)


def register_backbone_alias(name: str, spec: str) -> None:
    """Let ``name`` stand for ``spec`` wherever a backbone spec is accepted; a name already taken is
    refused."""
    BACKBONE_ALIASES.register(name, spec, owner=sys._getframe(1).f_globals.get("__name__", "?"))


# The sandbox CLIPs shipped with promptmlr (tools/pretrain_sandbox_clip.py), loaded through the very
# code path a user's own checkpoint file takes: ``sandbox`` is the ResNet one (an attention pool over
# a 4x4 grid, as CLIP RN101's), ``sandbox-vit`` a ViT.
register_backbone_alias("sandbox", f"openclip:promptmlr-sandbox-rn:{WEIGHTS_DIR / 'sandbox-rn.safetensors'}")
register_backbone_alias("sandbox-vit", f"openclip:promptmlr-sandbox-vit:{WEIGHTS_DIR / 'sandbox-vit.safetensors'}")


@register_backbone_source("openclip")
def _openclip_backbone(spec: str, rest: str, image_size: int | None, dense_mode: str) -> FrozenCLIP:
    """``openclip:<arch>[:<pretrained-tag-or-file>]``."""
    from promptmlr.backbones.openclip import OpenCLIPBackbone, load_openclip_model

    arch, _, weights = rest.partition(":")
    model = load_openclip_model(arch, weights or None)
    backbone = OpenCLIPBackbone(spec, model, image_size=image_size, dense_mode=dense_mode)
    backbone.weights_source = f"openclip:{arch}:{_local_or(weights)}" if weights else f"openclip:{arch}"
    return backbone


@register_backbone_source("hf")
def _hf_backbone(spec: str, rest: str, image_size: int | None, dense_mode: str) -> FrozenCLIP:
    """``hf:<hub-id-or-dir>``."""
    from promptmlr.backbones.hf import HFCLIPBackbone, load_hf_clip

    model, tokenizer, processor = load_hf_clip(rest)
    backbone = HFCLIPBackbone(spec, model, tokenizer, processor, image_size=image_size, dense_mode=dense_mode)
    backbone.weights_source = f"hf:{_local_or(rest)}"
    return backbone


def list_backbones() -> dict[str, str]:
    """Registered aliases and the specs they stand for; plus any ``openclip:``/``hf:`` spec."""
    return dict(BACKBONE_ALIASES.items())


def resolve_spec(spec: str) -> str:
    return BACKBONE_ALIASES.get(spec) if spec in BACKBONE_ALIASES else spec


def check_image_size(setting: str, value: object) -> None:
    """Refuse an input resolution outside [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE], saying why the cap."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{setting} must be a whole number of pixels, got {value!r}")
    if value > MAX_IMAGE_SIZE:
        raise ConfigError(f"{setting} must be <= {MAX_IMAGE_SIZE}, got {value}: CLIP is trained at 224-448 px and "
                          f"its cost grows with the square of the size (at {value} px a ViT-B/16 sees "
                          f"{(value // 16) ** 2:,} patches, and one image's float32 input alone takes "
                          f"{3 * 4 * value ** 2 / 2**30:.1f} GiB)")
    if value < MIN_IMAGE_SIZE:
        raise ConfigError(f"{setting} must be >= {MIN_IMAGE_SIZE}, got {value}")


def create_backbone(spec: str, image_size: int | None = None, dense_mode: str = "value") -> FrozenCLIP:
    """Build the frozen backbone named by ``spec`` at input resolution ``image_size`` (None keeps the
    model's own). Raises :class:`BackboneLoadError` when weights cannot be obtained. The options are
    checked before any weights are read."""
    check_choice("dense_mode", dense_mode, DENSE_MODES)
    if image_size is not None:
        check_image_size("the backbone's image_size", image_size)
    source, _, rest = resolve_spec(spec).partition(":")
    if source in BACKBONE_SOURCES and rest:
        return BACKBONE_SOURCES.get(source)(spec, rest, image_size, dense_mode)
    sources = ", ".join(f"'{name}:...'" for name in BACKBONE_SOURCES.names())
    raise ConfigError(f"unknown backbone spec {spec!r}: use 'openclip:<arch>[:<tag-or-file>]', "
                      f"'hf:<hub-id-or-dir>' (sources: {sources}) or a registered name "
                      f"({', '.join(BACKBONE_ALIASES.names(sort=True)) or 'none'})")


def _local_or(weights: str) -> str:
    """``weights`` itself (a pretrained tag, a hub id), or ``<local>`` for a file or folder on disk:
    the weight fingerprint identifies local weights by content, wherever they lie."""
    return "<local>" if Path(weights).expanduser().exists() else weights
