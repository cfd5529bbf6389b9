"""Hugging Face transformers ``CLIPModel`` behind the :class:`FrozenCLIP` interface.

Loaded the transformers way: ``from_pretrained`` on a hub id (``openai/clip-vit-base-patch16``) or a
local directory holding ``config.json``, the weights, the tokenizer files and
``preprocessor_config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
from transformers.masking_utils import create_causal_mask
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from promptmlr.backbones.base import BackboneLoadError, FrozenCLIP, ImageFeatures, weight_fingerprint
from promptmlr.backbones.network import hub_endpoint, require_reachable
from promptmlr.backbones.preprocess import PreprocessConfig
from promptmlr.errors import ConfigError

REQUIRED_FILES = ("config.json", "preprocessor_config.json")


def load_hf_clip(source: str) -> tuple[CLIPModel, object, CLIPImageProcessor]:
    """Model, tokenizer and image processor from a hub id or a local directory."""
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise BackboneLoadError(f"{path} is not a complete transformers CLIP directory: missing {missing}. "
                                    f"Save one with CLIPModel.save_pretrained plus the processor's save_pretrained.")
        return _from_pretrained(str(path), local_files_only=True)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BackboneLoadError(f"'hf:{source}' is neither an existing directory nor a hub id like "
                                f"'openai/clip-vit-base-patch16'.")
    how_to_fix = (f"On a machine with internet run `hf download {source} --local-dir DIR` (or "
                  f"CLIPModel.from_pretrained('{source}').save_pretrained(DIR) and the same for "
                  f"CLIPProcessor), copy DIR here and pass 'hf:DIR'.")
    require_reachable(hub_endpoint(), f"cannot download '{source}' from the Hugging Face Hub: ", how_to_fix)
    try:
        return _from_pretrained(source, local_files_only=False)
    except OSError as error:
        raise BackboneLoadError(f"loading '{source}' from the Hugging Face Hub failed: {error}. "
                                f"{how_to_fix}") from error


def _from_pretrained(source: str, local_files_only: bool) -> tuple[CLIPModel, object, CLIPImageProcessor]:
    model = CLIPModel.from_pretrained(source, local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local_files_only)
    return model, tokenizer, processor


class HFCLIPBackbone(FrozenCLIP):
    """A frozen transformers ``CLIPModel``."""

    def __init__(self, spec: str, model: CLIPModel, tokenizer, processor: CLIPImageProcessor,
                 image_size: int | None = None, dense_mode: str = "value"):
        vision = model.config.vision_config
        preprocess = PreprocessConfig(image_size or vision.image_size, tuple(processor.image_mean),
                                      tuple(processor.image_std), "bicubic")
        if preprocess.image_size % vision.patch_size:
            raise ConfigError(f"input size must be a multiple of the patch size {vision.patch_size}, "
                             f"got {preprocess.image_size}")
        super().__init__(spec, preprocess, dense_mode, weight_fingerprint(model))
        self.model = model
        self._tokenizer = tokenizer
        self._patch_size = vision.patch_size
        self._interpolate = preprocess.image_size != vision.image_size
        self.freeze()

    # ----------------------------------------------------------------------------------- image side
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        vision = self.model.vision_model
        x = vision.pre_layrnorm(vision.embeddings(images, interpolate_pos_encoding=self._interpolate))
        *layers, last = vision.encoder.layers
        for layer in layers:
            x = layer(x, None)
        output = last(x, None)
        pooled = vision.post_layernorm(output[:, 0])
        tokens = _value_path(last, x) if self.dense_mode == "value" else output
        dense = vision.post_layernorm(tokens[:, 1:])
        grid = (images.shape[-2] // self._patch_size, images.shape[-1] // self._patch_size)
        projection = self.model.visual_projection
        return ImageFeatures(projection(pooled), projection(dense), grid)

    # ------------------------------------------------------------------------------------ text side
    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def context_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts), padding="max_length", max_length=self.context_length,
                               truncation=True, return_tensors="pt").input_ids

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """First end-of-text token, as ``CLIPTextModel`` pools (padding may repeat that token)."""
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # configs older than transformers PR #24773: the eot id is the largest id
            return token_ids.argmax(dim=-1)
        return (token_ids == eos).int().argmax(dim=-1)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        text = self.model.text_model
        x = text.embeddings(inputs_embeds=embeddings)
        mask = create_causal_mask(config=text.config, inputs_embeds=x, attention_mask=None, past_key_values=None)
        x = text.encoder(inputs_embeds=x, attention_mask=mask, is_causal=True).last_hidden_state
        x = text.final_layer_norm(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        return self.model.text_projection(x)


def _value_path(layer: CLIPEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's value path through the last encoder layer (see ``openclip._value_path``)."""
    attention = layer.self_attn
    return attention.out_proj(attention.v_proj(layer.layer_norm1(x)))
