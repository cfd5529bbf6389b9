"""Learnable prompts: context vectors in front of each class name, through the frozen text encoder.

CoOp (Zhou et al., IJCV 2022) replaces a hand-written template with learnable token embeddings
``[v_1 ... v_M] <class name> .``; class-specific contexts (one set per class) follow CoOp's CSC
variant and DualCoOp (Sun et al., NeurIPS 2022). PositiveCoOp (Rawlekar et al., 2024) replaces the
negative *prompt* by a learned joint-space embedding, reporting that negative text prompts hurt.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import FrozenCLIP
from promptmlr.errors import ConfigError, check_choice
from promptmlr.models.text import class_text_features
from promptmlr.options import check_fields, option

CONTEXT_INIT_STD = 0.02  # CoOp's random context initialisation
PLACEHOLDER = "X"
PROMPT_INITS = ("phrase", "random", "descriptions-tokens", "descriptions-features")
NEGATIVE_BRANCHES = ("text", "embedding", "none")


@dataclass
class PromptConfig:
    """How the positive prompts are built (shared by every prompt-learning method).

    ``init``: ``phrase`` (context starts as ``init_phrase``), ``random``, ``descriptions-tokens``
    (each class's context starts as the token embeddings of its first description) or
    ``descriptions-features`` (phrase context plus a per-class feature offset that makes the initial
    prompt feature equal the class's description-ensemble feature).
    """

    n_ctx: int = option(16, "learnable context tokens in front of each class name", minimum=1,
                        refusal="n_ctx must be at least 1, got {value}")
    class_specific: bool = option(True, "one context per class (CoOp's CSC, DualCoOp's) rather than one shared")
    init: str = option("phrase", "how the context starts: init_phrase, random, a class's first description's "
                                 "tokens, or phrase plus its description features", choices=PROMPT_INITS)
    init_phrase: str = option("a photo of a", "the words the context starts as (init phrase or descriptions-features)")

    def __post_init__(self) -> None:
        check_fields(self)


class PromptLearner(nn.Module):
    """Learnable context + fixed class-name tokens -> one unit-norm text feature per class ``[C, D]``."""

    def __init__(self, backbone: FrozenCLIP, class_names: Sequence[str], n_ctx: int = 16,
                 class_specific: bool = True, init: str = "phrase", init_phrase: str = "a photo of a",
                 descriptions: Mapping[str, Sequence[str]] | None = None, text_offset_std: float | None = None):
        super().__init__()
        check_choice("prompt init", init, PROMPT_INITS)
        if init.startswith("descriptions") and not descriptions:
            raise ConfigError(f"prompt init {init!r} needs class descriptions (--descriptions FILE)")
        if init == "descriptions-tokens" and not class_specific:
            raise ConfigError("prompt init 'descriptions-tokens' needs class-specific contexts")
        self.backbone = backbone
        self.n_ctx = n_ctx
        token_ids = backbone.tokenize([" ".join([PLACEHOLDER] * n_ctx + [name]) + "." for name in class_names])
        eot = backbone.eot_positions(token_ids)
        if (eot >= backbone.context_length - 1).any():
            raise ConfigError(f"{n_ctx} context tokens plus a class name exceed the text encoder's "
                             f"{backbone.context_length} positions; lower n_ctx")
        with torch.no_grad():
            embedded = backbone.token_embedding(token_ids)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("prefix", embedded[:, :1], persistent=False)  # start-of-text
        suffix = embedded[:, 1 + n_ctx:backbone.text_length(eot)]  # name, '.', end (padding dropped)
        self.register_buffer("suffix", suffix, persistent=False)
        shape = (len(class_names), n_ctx) if class_specific else (n_ctx,)
        self.context = nn.Parameter(self._initial_context(shape, init, init_phrase, class_names, descriptions))
        # PositiveCoOp's per-class vector added to the text feature before it is normalised
        self.text_offset = None
        if text_offset_std is not None:
            self.text_offset = nn.Parameter(torch.randn(len(class_names), backbone.embed_dim) * text_offset_std)
        self.feature_offset = None
        if init == "descriptions-features":
            self.feature_offset = nn.Parameter(self._offset_to_descriptions(class_names, descriptions))
        self._fixed_features: torch.Tensor | None = None

    def _initial_context(self, shape: tuple[int, ...], init: str, phrase: str, class_names: Sequence[str],
                         descriptions: Mapping[str, Sequence[str]] | None) -> torch.Tensor:
        width = self.prefix.shape[-1]
        context = torch.randn(*shape, width) * CONTEXT_INIT_STD
        if init in ("phrase", "descriptions-features"):
            phrase_embedding = self._words_embedding([phrase])[0]
            if phrase_embedding.shape[0] > self.n_ctx:
                raise ConfigError(f"init phrase {phrase!r} has {phrase_embedding.shape[0]} tokens, more than "
                                 f"n_ctx={self.n_ctx}")
            context[..., self.n_ctx - phrase_embedding.shape[0]:, :] = phrase_embedding
        elif init == "descriptions-tokens":
            for index, embedding in enumerate(self._words_embedding([descriptions[n][0] for n in class_names])):
                kept = embedding[-self.n_ctx:]
                context[index, self.n_ctx - kept.shape[0]:] = kept
        return context

    def _words_embedding(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Token embeddings of each text without its start and end tokens."""
        token_ids = self.backbone.tokenize(texts)
        ends = self.backbone.eot_positions(token_ids)
        with torch.no_grad():
            embedded = self.backbone.token_embedding(token_ids)
        return [embedded[i, 1:end] for i, end in enumerate(ends.tolist())]

    @torch.no_grad()
    def _offset_to_descriptions(self, class_names: Sequence[str],
                                descriptions: Mapping[str, Sequence[str]]) -> torch.Tensor:
        target = class_text_features(self.backbone, class_names, descriptions=descriptions)
        return target - F.normalize(self._offset_features(), dim=-1)

    def _encode(self) -> torch.Tensor:
        context = self.context.to(self.prefix.dtype)
        if context.dim() == 2:  # one context for every class: start token + context is a shared prefix
            return self.backbone.encode_text_with_shared_prefix(torch.cat([self.prefix[0], context]), self.suffix,
                                                                self.eot)
        embeddings = torch.cat([self.prefix, context, self.suffix], dim=1)
        return self.backbone.encode_text_embeddings(embeddings, self.eot)

    def _offset_features(self) -> torch.Tensor:
        """The encoded prompts plus the per-class text offset, where there is one (in float32, as
        PositiveCoOp adds its float32 vectors to the text features)."""
        features = self._encode()
        return features if self.text_offset is None else features.float() + self.text_offset

    @contextlib.contextmanager
    def fixed(self, autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Iterator[None]:
        """Encode the prompts once on entry (under ``autocast()``, the precision the batches run at)
        and reuse that result for every gradient-free forward in the block. The prompts cannot
        change between evaluation batches, yet each forward would run all C prompts through the text
        encoder again, which dominates evaluation on cached features. A forward with gradients
        enabled (training) still encodes afresh."""
        with torch.no_grad(), autocast():
            features = self()
        self._fixed_features = features
        try:
            yield
        finally:
            self._fixed_features = None

    def forward(self) -> torch.Tensor:
        if self._fixed_features is not None and not torch.is_grad_enabled():
            return self._fixed_features
        features = F.normalize(self._offset_features(), dim=-1)
        if self.feature_offset is not None:
            features = F.normalize(features + self.feature_offset, dim=-1)
        return features


def positive_prompts(backbone: FrozenCLIP, class_names: Sequence[str], config: PromptConfig,
                     descriptions: Mapping[str, Sequence[str]] | None,
                     text_offset_std: float | None = None) -> PromptLearner:
    """The positive prompts every prompt method starts from, as ``config`` describes them, with a
    per-class text-feature offset drawn at ``text_offset_std`` where one is given."""
    return PromptLearner(backbone, class_names, config.n_ctx, config.class_specific, config.init,
                         config.init_phrase, descriptions, text_offset_std)


def negative_branch(kind: str, backbone: FrozenCLIP, class_names: Sequence[str],
                    config: PromptConfig, embedding_std: float = CONTEXT_INIT_STD) -> nn.Module | None:
    """``text``: DualCoOp's learned negative prompts (random start); ``embedding``: PositiveCoOp's
    joint-space vector per class, drawn at ``embedding_std``; ``none``: no negative (a learned
    threshold stands in)."""
    check_choice("negative", kind, NEGATIVE_BRANCHES)
    if kind == "text":
        return PromptLearner(backbone, class_names, config.n_ctx, config.class_specific, init="random")
    if kind == "embedding":
        return NegativeEmbedding(len(class_names), backbone.embed_dim, embedding_std)
    return None


class NegativeEmbedding(nn.Module):
    """PositiveCoOp's negative branch: a learned joint-space vector per class, no text encoder. Only
    its direction scores; its scale sets how far a step of the optimiser turns it."""

    def __init__(self, num_classes: int, embed_dim: int, init_std: float = CONTEXT_INIT_STD):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(num_classes, embed_dim) * init_std)

    def forward(self) -> torch.Tensor:
        return F.normalize(self.embedding, dim=-1)
