"""open_clip CLIP models (ViT and ModifiedResNet image towers) behind the :class:`FrozenCLIP` interface.

Weights come from open_clip's own pretrained registry (a tag such as ``openai``), from a local
checkpoint file, or are random (seeded, for tests). The input resolution may differ from the one the
model was trained at: the anchors fine-tune prompts at 448 px on CLIP trained at 224 px, so the
position embeddings are interpolated once, at load time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from promptmlr.backbones.base import BackboneLoadError, FrozenCLIP, ImageFeatures, weight_fingerprint
from promptmlr.backbones.network import hub_endpoint, require_reachable
from promptmlr.backbones.preprocess import PreprocessConfig
from promptmlr.errors import ConfigError

RANDOM_INIT_SEED = 0
POOL_RESIZE = "bicubic"  # how a ResNet's attention-pool position embedding is resized (DualCoOp's way)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(source: str) -> bool:
    """A pretrained source naming a file rather than an open_clip tag."""
    return "/" in source or "\\" in source or source.endswith(CHECKPOINT_SUFFIXES) or Path(source).exists()


def load_openclip_model(arch: str, source: str | None) -> nn.Module:
    """Build ``arch`` with weights from ``source``: None (random), a pretrained tag, or a file path.

    Never falls back to random weights when weights were asked for: every failure raises
    :class:`BackboneLoadError` naming what was tried and how to pass a local file instead.
    """
    if arch not in open_clip.list_models():
        raise BackboneLoadError(
            f"open_clip has no architecture {arch!r}. Known ones include: "
            f"{', '.join(m for m in open_clip.list_models() if not m.startswith(('EVA', 'MobileCLIP')))[:600]}...")
    if source is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random weights, but the same ones every time
            return open_clip.create_model(arch, pretrained=None, device="cpu")
    if looks_like_path(source):
        return _load_from_file(arch, Path(source).expanduser())
    return _load_from_tag(arch, source)


def _load_from_file(arch: str, path: Path) -> nn.Module:
    if not path.is_file():
        raise BackboneLoadError(
            f"checkpoint file {path} does not exist (from backbone spec 'openclip:{arch}:{path}'). "
            f"Pass the path of an open_clip checkpoint (.pt/.bin/.safetensors state dict).")
    try:
        return open_clip.create_model(arch, pretrained=str(path), device="cpu")
    except Exception as error:  # open_clip raises several types for unreadable or mismatched files
        raise BackboneLoadError(
            f"could not load {path} into open_clip architecture {arch!r}: {error}. Check that the file "
            f"is a state dict for this architecture (OpenAI weights need the '-quickgelu' variant, "
            f"e.g. 'openclip:RN101-quickgelu:{path}').") from error


def _load_from_tag(arch: str, tag: str) -> nn.Module:
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise BackboneLoadError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r}; known tags: {tags or 'none'}. "
            f"For a local checkpoint use 'openclip:{arch}:/path/to/weights.bin'.")
    source = open_clip.get_pretrained_cfg(arch, tag)
    where = f"Hugging Face Hub repo {source['hf_hub']}" if source.get("hf_hub") else source.get("url", "?")
    how_to_fix = (
        f"Download the weights on a machine with internet (open_clip caches them under "
        f"~/.cache/huggingface, or fetch 'open_clip_pytorch_model.bin' from {where}) and pass the file: "
        f"'openclip:{arch}{'' if arch.endswith('quickgelu') or not source.get('quick_gelu') else '-quickgelu'}"
        f":/path/to/open_clip_pytorch_model.bin'.")
    require_reachable(hub_endpoint() if source.get("hf_hub") else source.get("url", ""),
                      f"cannot download open_clip weights '{arch}:{tag}' from {where}: ", how_to_fix)
    try:
        return open_clip.create_model(arch, pretrained=tag, device="cpu", require_pretrained=True)
    except Exception as error:
        raise BackboneLoadError(f"downloading open_clip weights '{arch}:{tag}' from {where} failed: {error}. "
                                + how_to_fix) from error


def resize_grid_embedding(embedding: torch.Tensor, new_grid: tuple[int, int], antialias: bool = True
                          ) -> torch.Tensor:
    """Bicubically resize a ``[1 + g*g, C]`` position embedding (leading class/mean token kept) to a
    new grid, as open_clip and timm do when changing resolution (antialiased)."""
    extra, grid_tokens = embedding[:1], embedding[1:]
    old = int(math.isqrt(grid_tokens.shape[0]))
    if old * old != grid_tokens.shape[0]:
        raise ValueError(f"position embedding of {grid_tokens.shape[0]} tokens is not a square grid")
    if (old, old) == tuple(new_grid):
        return embedding
    image = grid_tokens.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(image, size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    resized = resized.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(embedding.dtype)
    return torch.cat([extra, resized])


class OpenCLIPBackbone(FrozenCLIP):
    """A frozen open_clip ``CLIP`` model; image tower a ``VisionTransformer`` or ``ModifiedResNet``."""

    def __init__(self, spec: str, model: nn.Module, image_size: int | None = None, dense_mode: str = "value"):
        fingerprint = weight_fingerprint(model)
        visual = model.visual
        if not isinstance(visual, (VisionTransformer, ModifiedResNet)):
            raise BackboneLoadError(f"{spec}: image tower {type(visual).__name__} is not supported; "
                                    f"use a ViT or ModifiedResNet (RN50, RN101, ...) CLIP")
        native = _native_image_size(visual)
        cfg = open_clip.get_model_preprocess_cfg(model)
        preprocess = PreprocessConfig(image_size or native, tuple(cfg["mean"]), tuple(cfg["std"]),
                                      cfg.get("interpolation", "bicubic"))
        super().__init__(spec, preprocess, dense_mode, fingerprint)
        self._native_size = native
        self.model = model
        self._tokenizer = open_clip.SimpleTokenizer(context_length=self.text.context_length)
        _set_input_size(visual, preprocess.image_size)
        if isinstance(visual, ModifiedResNet):
            # channels-last convolutions: RN101 at 448 px encodes 1.15-1.3x faster on a CPU (oneDNN),
            # and GPUs' tensor cores want it too; the features agree to float rounding (~4e-8)
            visual.to(memory_format=torch.channels_last)
        self.freeze()

    @property
    def text(self) -> nn.Module:
        """The text tower: the CLIP model itself, or CustomTextCLIP's separate ``text`` module."""
        return getattr(self.model, "text", self.model)

    # ----------------------------------------------------------------------------------- image side
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        visual = self.model.visual
        if isinstance(visual, ModifiedResNet):
            return self._encode_resnet(visual, images)
        return self._encode_vit(visual, images)

    def _encode_vit(self, visual: VisionTransformer, images: torch.Tensor) -> ImageFeatures:
        x = visual._embeds(images)
        *blocks, last = visual.transformer.resblocks
        for block in blocks:
            x = block(x)
        pooled, tokens = visual._pool(last(x))
        if self.dense_mode == "value":
            tokens = visual.ln_post(_value_path(last, x)[:, 1:])
        grid = tuple(visual.grid_size)
        return ImageFeatures(pooled @ visual.proj, tokens @ visual.proj, grid)

    def _encode_resnet(self, visual: ModifiedResNet, images: torch.Tensor) -> ImageFeatures:
        """Dense features as in DualCoOp: the attention pool's value and output projections applied
        at every location (with its position embedding), so each location lands in the joint space."""
        images = images.contiguous(memory_format=torch.channels_last)  # as the tower's weights (see __init__)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
        grid = tuple(x.shape[-2:])
        pool = visual.attnpool
        global_features = pool(x)
        tokens = x.flatten(2).transpose(1, 2) + pool.positional_embedding[1:].to(x.dtype)
        dense = pool.c_proj(pool.v_proj(tokens))
        return ImageFeatures(global_features, dense, grid)

    def mean_token_offset(self) -> torch.Tensor | None:
        visual = self.model.visual
        if not isinstance(visual, ModifiedResNet):
            return None
        pool = visual.attnpool
        position = pool.positional_embedding.float()
        shift = position[0] - position[1:].mean(dim=0)
        return pool.c_proj.weight.float() @ (pool.v_proj.weight.float() @ shift)

    @property
    def _pool_resized(self) -> bool:
        """A ResNet whose attention pool was resized for another input size: its features depend on
        how the position embedding was resized (:data:`POOL_RESIZE`), so the cache key records it."""
        visual = self.model.visual
        return isinstance(visual, ModifiedResNet) and self.image_size != self._native_size

    def feature_identity(self) -> dict:
        identity = super().feature_identity()
        if isinstance(self.model.visual, ModifiedResNet):
            identity["memory_format"] = "channels_last"  # features equal to another layout's to float rounding only
        if self._pool_resized:
            identity["attnpool_resize"] = POOL_RESIZE
        return identity

    def describe(self) -> dict:
        description = super().describe()
        if self._pool_resized:
            description["attnpool_resize"] = POOL_RESIZE
        return description

    # ------------------------------------------------------------------------------------ text side
    @property
    def embed_dim(self) -> int:
        return self.model.visual.output_dim

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text.token_embedding

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        return token_ids.argmax(dim=-1)  # the end-of-text id is the largest in CLIP's vocabulary

    @property
    def causal_text(self) -> bool:
        return self.text.attn_mask is not None

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        text = self.text
        cast_dtype = text.transformer.get_cast_dtype()
        length = embeddings.shape[1]
        x = embeddings.to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)
        mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
        x = text.ln_final(text.transformer(x, attn_mask=mask))
        x = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        projection = text.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def encode_text_with_shared_prefix(self, prefix: torch.Tensor, suffixes: torch.Tensor,
                                       eot_positions: torch.Tensor) -> torch.Tensor:
        """The shared prefix (start token and a class-agnostic context: 17 of DualCoOp's ~21
        positions) through the causal encoder once, not once per class; each class's own tokens
        attend to it and to themselves. Exact: under a causal mask the prefix never sees what
        follows it. Profiled in ``tools/bench/text_encoder.py`` (3-4x fewer token positions)."""
        text = self.text
        blocks = list(text.transformer.resblocks)
        if not self.causal_text or not all(_plain_block(block) for block in blocks):
            return super().encode_text_with_shared_prefix(prefix, suffixes, eot_positions)
        cast_dtype = text.transformer.get_cast_dtype()
        length, classes = prefix.shape[0], suffixes.shape[0]
        position = text.positional_embedding.to(cast_dtype)
        shared = (prefix.to(cast_dtype) + position[:length])[None]
        rows = suffixes.to(cast_dtype) + position[length:length + suffixes.shape[1]]
        for block in blocks:
            shared, rows = _block_with_shared_prefix(block, shared, rows)
        x = text.ln_final(rows)[torch.arange(classes, device=rows.device), eot_positions - length]
        projection = text.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _plain_block(block: nn.Module) -> bool:
    """A standard pre-norm CLIP text block (batch first, self-attention only) that
    :func:`_block_with_shared_prefix` reproduces."""
    attention = block.attn
    return (type(block) is ResidualAttentionBlock and isinstance(attention, nn.MultiheadAttention)
            and attention.batch_first and attention.in_proj_weight is not None and attention.bias_k is None
            and not attention.add_zero_attn and attention.dropout == 0 and not hasattr(block, "ln_1_kv"))


def _block_with_shared_prefix(block: ResidualAttentionBlock, shared: torch.Tensor, rows: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One causal block over ``[shared [1, P, W] ; rows [C, S, W]]``, the prefix computed once."""
    attention = block.attn
    heads = attention.num_heads

    def split(x: torch.Tensor) -> list[torch.Tensor]:  # [N, L, W] -> q, k, v of [N, heads, L, W / heads]
        projected = F.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias)
        return [part.unflatten(-1, (heads, -1)).transpose(1, 2) for part in projected.chunk(3, dim=-1)]

    def merge(x: torch.Tensor) -> torch.Tensor:
        return attention.out_proj(x.transpose(1, 2).flatten(2))

    query_p, key_p, value_p = split(shared)
    query_r, key_r, value_r = split(rows)
    classes, length, own = rows.shape[0], shared.shape[1], rows.shape[1]
    keys = torch.cat([key_p.expand(classes, -1, -1, -1), key_r], dim=2)
    values = torch.cat([value_p.expand(classes, -1, -1, -1), value_r], dim=2)
    visible = torch.ones(own, length + own, dtype=torch.bool, device=rows.device).tril(diagonal=length)
    shared = shared + block.ls_1(merge(F.scaled_dot_product_attention(query_p, key_p, value_p, is_causal=True)))
    rows = rows + block.ls_1(merge(F.scaled_dot_product_attention(query_r, keys, values, attn_mask=visible)))
    shared = shared + block.ls_2(block.mlp(block.ln_2(shared)))
    rows = rows + block.ls_2(block.mlp(block.ln_2(rows)))
    return shared, rows


def _native_image_size(visual: nn.Module) -> int:
    size = visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def _set_input_size(visual: nn.Module, image_size: int) -> None:
    """Interpolate the image tower's position embedding for ``image_size`` input (in place)."""
    if isinstance(visual, ModifiedResNet):
        if image_size % 32:
            raise ConfigError(f"ModifiedResNet input size must be a multiple of 32, got {image_size}")
        pool = visual.attnpool
        # plain bicubic, as DualCoOp resizes RN101's attention pool for 448 px (build_model_conv_proj),
        # so that the dense map at 448 px is the anchor's; open_clip itself never resizes this pool
        new = resize_grid_embedding(pool.positional_embedding.data, (image_size // 32, image_size // 32),
                                    antialias=False)
        pool.positional_embedding = nn.Parameter(new, requires_grad=False)
        visual.image_size = image_size
        return
    patch = visual.patch_size[0]
    if image_size % patch:
        raise ConfigError(f"ViT input size must be a multiple of the patch size {patch}, got {image_size}")
    grid = (image_size // patch, image_size // patch)
    visual.positional_embedding = nn.Parameter(resize_grid_embedding(visual.positional_embedding.data, grid),
                                               requires_grad=False)
    visual.grid_size = grid
    visual.image_size = (image_size, image_size)


def _value_path(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP (Zhou et al., ECCV 2022): in the last block, skip query-key attention and take each
    token's value through the output projection; dropping the residual and MLP keeps the features
    local, which localises far better than the final tokens."""
    attention = block.attn
    if not isinstance(attention, nn.MultiheadAttention):
        raise BackboneLoadError(f"dense_mode='value' needs nn.MultiheadAttention blocks, found "
                                f"{type(attention).__name__}; use dense_mode='tokens'")
    width = x.shape[-1]
    value = F.linear(block.ln_1(x), attention.in_proj_weight[2 * width:], attention.in_proj_bias[2 * width:])
    return block.ls_1(attention.out_proj(value))
