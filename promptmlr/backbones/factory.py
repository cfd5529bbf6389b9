"""Backbone specs -> frozen CLIP backbones: the single entry point, like open_clip's ``create_model``.

A spec names where the weights come from::

    openclip:<arch>                   random weights (seeded; tests and speed benchmarks)
    openclip:<arch>:<pretrained-tag>  open_clip's download, e.g. openclip:RN101:openai
    openclip:<arch>:<path>            a local checkpoint file
    hf:<hub-id> | hf:<local-dir>      a transformers CLIPModel directory
    <alias>                           a name registered with :func:`register_backbone_alias`
"""

from __future__ import annotations

from pathlib import Path

import open_clip

from promptmlr.backbones.base import FrozenCLIP
from promptmlr.errors import ConfigError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # tiny test architectures (and the sandbox's) by name

_ALIASES: dict[str, str] = {}
WEIGHTS_DIR = Path(__file__).parent / "weights"


def register_backbone_alias(name: str, spec: str) -> None:
    """Let ``name`` stand for ``spec`` wherever a backbone spec is accepted."""
    _ALIASES[name] = spec


# The sandbox CLIPs shipped with promptmlr (tools/pretrain_sandbox_clip.py), loaded through the very
# code path a user's own checkpoint file takes: ``sandbox`` is the ResNet one (issue #11: an attention
# pool over a 4x4 grid, as CLIP RN101's), ``sandbox-vit`` the earlier ViT (issue #6).
register_backbone_alias("sandbox", f"openclip:promptmlr-sandbox-rn:{WEIGHTS_DIR / 'sandbox-rn.safetensors'}")
register_backbone_alias("sandbox-vit", f"openclip:promptmlr-sandbox-vit:{WEIGHTS_DIR / 'sandbox-vit.safetensors'}")


def list_backbones() -> dict[str, str]:
    """Registered aliases and the specs they stand for; plus any ``openclip:``/``hf:`` spec."""
    return dict(_ALIASES)


def resolve_spec(spec: str) -> str:
    return _ALIASES.get(spec, spec)


def create_backbone(spec: str, image_size: int | None = None, dense_mode: str = "value") -> FrozenCLIP:
    """Build the frozen backbone named by ``spec`` at input resolution ``image_size`` (None keeps the
    model's own). Raises :class:`BackboneLoadError` when weights cannot be obtained."""
    resolved = resolve_spec(spec)
    source, _, rest = resolved.partition(":")
    if source == "openclip" and rest:
        from promptmlr.backbones.openclip import OpenCLIPBackbone, load_openclip_model

        arch, _, weights = rest.partition(":")
        model = load_openclip_model(arch, weights or None)
        backbone: FrozenCLIP = OpenCLIPBackbone(spec, model, image_size=image_size, dense_mode=dense_mode)
        backbone.weights_source = f"openclip:{arch}:{_local_or(weights)}" if weights else f"openclip:{arch}"
        return backbone
    if source == "hf" and rest:
        from promptmlr.backbones.hf import HFCLIPBackbone, load_hf_clip

        model, tokenizer, processor = load_hf_clip(rest)
        backbone = HFCLIPBackbone(spec, model, tokenizer, processor, image_size=image_size, dense_mode=dense_mode)
        backbone.weights_source = f"hf:{_local_or(rest)}"
        return backbone
    aliases = ", ".join(sorted(_ALIASES)) or "none"
    raise ConfigError(f"unknown backbone spec {spec!r}: use 'openclip:<arch>[:<tag-or-file>]', "
                     f"'hf:<hub-id-or-dir>' or a registered name ({aliases})")


def _local_or(weights: str) -> str:
    """``weights`` itself (a pretrained tag, a hub id), or ``<local>`` for a file or folder on disk:
    the weight fingerprint identifies local weights by content, wherever they lie."""
    return "<local>" if Path(weights).expanduser().exists() else weights
