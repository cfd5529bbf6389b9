"""The one interface every frozen CLIP backbone offers, whatever library its weights come from.

A backbone turns images into a global embedding *and* dense per-location features in the joint
image-text space, and turns token embeddings (not just token ids) into text embeddings, so that
learnable context vectors can stand in for words (CoOp, Zhou et al. 2022; DualCoOp, Sun et al. 2022).

"Frozen" is enforced, not hoped for: parameters never require gradients, the module stays in eval
mode when a parent calls ``.train()``, and its weights never enter a parent's ``state_dict()``; a
spec string and a weight fingerprint identify it instead.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import torch
from torch import nn

from promptmlr.backbones.preprocess import PreprocessConfig, build_transform
from promptmlr.errors import PromptMLRError, check_choice


class BackboneLoadError(PromptMLRError, RuntimeError):
    """The weights for a backbone spec could not be obtained; the message says what was tried."""


@dataclass
class ImageFeatures:
    """Output of :meth:`FrozenCLIP.encode_image`.

    ``global_features`` is CLIP's own image embedding ``[B, D]``; ``dense_features`` holds one
    joint-space vector per spatial location ``[B, H*W, D]`` (row-major over ``grid``).
    """

    global_features: torch.Tensor
    dense_features: torch.Tensor
    grid: tuple[int, int]


DENSE_MODES = ("value", "tokens")


def weight_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every named tensor's name, dtype, shape and bytes.

    Computed on the weights as loaded (before any resolution change), so the same checkpoint has
    the same fingerprint at every input size and whichever file format it came in.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class FrozenCLIP(nn.Module, ABC):
    """Base class of all backbones. Subclasses wrap one library's CLIP model as ``self.model``."""

    def __init__(self, spec: str, preprocess: PreprocessConfig, dense_mode: str, fingerprint: str):
        super().__init__()
        check_choice("dense_mode", dense_mode, DENSE_MODES)
        self.spec = spec
        self.weights_source = spec  # set by create_backbone: the resolved spec, local paths left out
        self.preprocess = preprocess
        self.dense_mode = dense_mode
        self.fingerprint = fingerprint
        self._register_state_dict_hook(_drop_own_entries)
        self._register_load_state_dict_pre_hook(_fill_own_entries, with_module=True)

    def freeze(self) -> "FrozenCLIP":
        """Turn off gradients and dropout for good; subclasses call this at the end of ``__init__``."""
        self.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """Ignore ``mode``: a frozen encoder stays in eval mode (BatchNorm statistics, dropout)."""
        return super().train(False)

    # ----------------------------------------------------------------------------------- image side
    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def transform(self, train: bool = False, **augmentations) -> Callable:
        """PIL image -> normalised tensor at this backbone's resolution (see :mod:`.preprocess`)."""
        return build_transform(self.preprocess, train=train, **augmentations)

    @cached_property
    def dense_shape(self) -> tuple[int, tuple[int, int]]:
        """(embedding dim, dense grid) at this backbone's input size, from one dummy image; computed
        once (the resolution is fixed at construction), since the cache, the engine and the run
        summary all ask."""
        device = self.token_embedding.weight.device
        with torch.no_grad():
            features = self.encode_image(torch.zeros(1, 3, self.image_size, self.image_size, device=device))
        return features.dense_features.shape[-1], features.grid

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Global embedding and dense joint-space features for a normalised image batch."""

    def mean_token_offset(self) -> torch.Tensor | None:
        """``[D]``: the attention pool's mean token in the dense map, less the mean of the map; None
        where the image tower has no such token (ViTs).

        CLIP's ResNet attention pool prepends the mean of the grid's features, with position
        embedding 0, to the grid; DualCoOp's dense map (its ``AttentionConv``) keeps that token as
        location 0 and its region softmax runs over it. The dense path (value, then output
        projection) is affine, so that token's dense feature is the mean of the dense map plus
        ``W_c W_v (p_0 - mean_l p_l)``, a constant of the weights: methods recover the anchor's
        location 0 from any dense map, cached or not, and the cache stores nothing more.
        """
        return None

    # ------------------------------------------------------------------------------------ text side
    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Number of token positions the text encoder takes."""

    @property
    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The text encoder's token-embedding table (ids -> ``[width]`` vectors)."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """CLIP's learned temperature, already exponentiated (about 100 for OpenAI's models)."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` with start and end-of-text tokens, zero or eot padded."""

    @abstractmethod
    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token in each row of ``token_ids`` (where text features are read)."""

    @abstractmethod
    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """Joint-space text features ``[N, D]`` from token embeddings ``[N, L, width]``, where L is at most
        ``context_length`` (see :meth:`text_length`)."""

    def encode_text_with_shared_prefix(self, prefix: torch.Tensor, suffixes: torch.Tensor,
                                       eot_positions: torch.Tensor) -> torch.Tensor:
        """Text features ``[C, D]`` of the sequences ``prefix [P, width]`` + ``suffixes[c] [S, width]``;
        ``eot_positions`` index the whole sequence. The same as :meth:`encode_text_embeddings` on the
        concatenation, which is what this does; a backbone whose encoder is causal may compute the
        shared prefix once instead of C times (CoOp's class-agnostic context is such a prefix)."""
        classes = suffixes.shape[0]
        embeddings = torch.cat([prefix.expand(classes, -1, -1), suffixes], dim=1)
        return self.encode_text_embeddings(embeddings, eot_positions)

    @property
    def causal_text(self) -> bool:
        """Whether the text encoder attends causally (CLIP's does), so nothing after the end-of-text
        token can change the feature read there."""
        return True

    def text_length(self, eot_positions: torch.Tensor) -> int:
        """How many leading token positions the text encoder must see for these prompts.

        With causal attention the feature at the end-of-text token depends only on the tokens up to
        it, so the padding after the longest prompt can be dropped: the result is identical and a
        ~20-token prompt costs a quarter of the full 77 positions.
        """
        return int(eot_positions.max()) + 1 if self.causal_text else self.context_length

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Text features for plain strings, through the same embedding path learnable prompts use."""
        device = self.token_embedding.weight.device
        token_ids = self.tokenize(texts).to(device)
        eot = self.eot_positions(token_ids)
        token_ids = token_ids[:, :self.text_length(eot)]
        features = self.encode_text_embeddings(self.token_embedding(token_ids), eot)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def feature_identity(self) -> dict:
        """What decides this backbone's image features, for the feature cache's key: the resolved
        spec (an alias and the spec it stands for are the same backbone) and the weights'
        fingerprint, which identifies a local weights file by its contents wherever it lies."""
        return {"source": self.weights_source, "fingerprint": self.fingerprint, "image_size": self.image_size,
                "dense_mode": self.dense_mode}

    def describe(self) -> dict:
        """What identifies this backbone in checkpoints and exports (instead of its weights)."""
        return {
            "spec": self.spec,
            "fingerprint": self.fingerprint,
            "image_size": self.image_size,
            "dense_mode": self.dense_mode,
            "embed_dim": self.embed_dim,
        }


def _drop_own_entries(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: a frozen backbone contributes nothing to its parent's ``state_dict()``."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        del state_dict[key]


def _fill_own_entries(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load pre-hook: supply the backbone's own current tensors, so that loading a parent's
    ``state_dict()`` (which lacks them by design) neither fails strict checks nor changes them."""
    for module_name, submodule in module.named_modules(remove_duplicate=False):
        owner = f"{prefix}{module_name}." if module_name else prefix
        persistent = {**submodule._parameters, **{
            name: buffer for name, buffer in submodule._buffers.items()
            if name not in submodule._non_persistent_buffers_set}}
        for name, tensor in persistent.items():
            if tensor is not None:
                state_dict.setdefault(owner + name, tensor)
