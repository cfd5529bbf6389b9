"""CLSL: Collaborative Learning of Semantic-aware feature learning and Label recovery (He, Xie et
al., arXiv:2510.10055, 2025), on frozen CLIP, as the authors' CLIP model computes it
(Qingdandian/CLSL, commit 2f9e916, ``models/sarlp_clip.py``, class ``SARLP``; lines cited):

1. The locations of CLIP's dense map, each scaled to unit length (:400), go through a transformer
   encoder layer whose queries and keys carry a 2-D sine position embedding (:409-414;
   :class:`LocationEncoderLayer`, :func:`sine_position_embedding`).
2. Semantic-related features: a feature per class and image from the class's fixed text feature and
   the mean of the encoded locations, ``v = W2 GELU(BN(W1 [t_c; g_b]))`` (``gsp``, ``ttd``, :420-428;
   :class:`ClassContext`).
3. Semantic-guided enhancement: each location attends over the classes by a learned low-rank
   bilinear score (``attention2``, :438; :class:`LowRankBilinearAttention`), reads
   ``e_p = sum_c softmax_c(alpha[p, c]) v_c``, and ``[e_p; x_p]`` goes through
   Linear-GELU-Dropout(0.5)-Linear to per-location logits ``a[p, c]`` (``fc2``, :439-445), pooled by
   their own softmax over the locations (``logits1``, :446): the prediction.
4. Label recovery: a second head scores every encoded location, ``max_p W x_p`` (``fc0``,
   ``logits0``, :431-432), and learns from the known labels with the unknown ones filled in by the
   first head's recovered labels ``sigmoid(l_c * max_k l_k)``, detached (``pre1``, ``y_sam``,
   :480-496), under their ASL on soft labels, its mean over every entry times 1000
   (``lib/aslloss.py``:123-161), weighted 0.1 (``ce_loss = 1 * bce1 + 0.1 * bce0``, :504; their
   ResNet model, ``models/sarlp.py``:371, weighs it 0.8). The recovered labels train the shared
   encoder that the prediction reads, from the first step.

The prediction's own loss is their ASL on the known labels only (:498), summed and times 1000, with
gamma_neg 2, gamma_pos 0, no clip and the focusing weights held constant in the gradient
(``lib/aslloss.py``:83-121; ``lib/util.py``:163-173, 342-344, whose defaults every script keeps):
the run's ``train.loss``, which ``configs/methods/clsl.yaml`` sets so; that recipe also holds their
optimiser (AdamW, weight decay 1e-4 on every parameter, one learning rate) and schedule (OneCycleLR
stepped per batch). The recovery term's weight is relative to that summed main term. (With every
label known, their code takes the mean for both terms, ``partial == 1``, :471-473; here the main
term stays summed.)

Deliberate differences: CLIP's image encoder is frozen (theirs trains it); the class text features
are CLIP's, from the class name alone by default (``template``), where theirs are BERT's embeddings
of the name (``scripts/embedding.py``), a fixed 768-wide input: CLIP's text encoder shares the image
features' space and needs no second model; the moving average of the weights (``train.ema_decay``)
averages the learned parameters and not BatchNorm's running statistics, which their ``ModelEma``
(``lib/util.py``:68-93) averages too.

Options that depart from the authors' rules, each for a reason:

* ``enhancement: promptmlr``: promptmlr's enhancement (:class:`~promptmlr.models.enhancement.
  SemanticEnhancement`: a linear projection of the locations starting at the identity for the
  encoder, scaled-cosine attention for the bilinear one, ReLU MLPs of width ``hidden``, CLIP's global
  feature for the mean location): it starts from CLIP's own geometry, and it is the layer set the
  ``promptmlr`` method adds to its prompts;
* ``recovered_label: sigmoid``: ``sigmoid(l_c)``, the prediction's own probability, which their
  scaling by the image's largest logit sharpens, and flips where every logit is negative;
* ``recovery_loss: bce``: binary cross-entropy on the soft labels, its plain mean, a term whose
  scale does not depend on the main loss's reduction;
* ``known_only_epochs`` above 0: the recovery head learns from the known labels alone at first, so
  that it does not learn the untrained prediction's labels;
* ``template``: any prompt the class name fills, e.g. CLIP's ``"a photo of a {}."``, whose text
  features CLIP's zero-shot use was tuned on (Radford et al. 2021).

``tools/bench/parity_clsl.py`` compares this code with the authors' part by part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.errors import ConfigError
from promptmlr.models.base import BYTES_PER_FLOAT, LossFn, MethodOutput, MultiLabelMethod
from promptmlr.models.enhancement import SemanticEnhancement, location_softmax_pool
from promptmlr.models.factory import register_method
from promptmlr.models.text import class_text_features
from promptmlr.options import check_fields, option

ENHANCEMENTS = ("authors", "promptmlr")
RECOVERED_LABELS = ("max-scaled", "sigmoid")
RECOVERY_LOSSES = ("asl", "bce")
# the authors' constants (models/sarlp_clip.py, lib/util.py, lib/aslloss.py)
FEEDFORWARD = 2048  # their TransformerEncoderLayer's dim_feedforward
ENCODER_DROPOUT = 0.1  # its dropout, in the attention and after each sub-layer
CLASSIFIER_DROPOUT = 0.5  # fc2's nn.Dropout()
POSITION_TEMPERATURE = 10000.0  # PositionEmbeddingSine's temperature
ASL_GAMMA_NEG, ASL_GAMMA_POS = 2.0, 0.0  # their --gamma-neg / --gamma-pos defaults, no clip
ASL_EPS = 1e-5  # get_loss_fn's eps, the floor under each probability in the log
ASL_SCALE = 1000.0  # AsymmetricLossOptimized multiplies both of its reductions by 1000


@dataclass
class CLSLConfig:
    enhancement: str = option("authors", "the layers: the authors' (a transformer layer over the locations, bilinear "
                                         "attention, GELU MLPs) or promptmlr's enhancement", choices=ENHANCEMENTS)
    template: str = option("{}", "the prompt each class name fills for its fixed text feature (the authors embed the "
                                 "bare name); class descriptions replace it")
    attention_dim: int = option(256, "width of the low-rank bilinear attention (the authors' CLIP model: 256)",
                                minimum=1)
    encoder_layers: int = option(1, "transformer encoder layers over the locations (the authors' --num-layers)",
                                 minimum=0)
    encoder_heads: int = option(8, "attention heads of each encoder layer (the authors' --num-heads)", minimum=1)
    hidden: int = option(256, "width of promptmlr's enhancement's MLPs (enhancement promptmlr)", minimum=1)
    attention_scale: float = option(10.0, "s: sharpness of promptmlr's enhancement's attention over classes "
                                          "(enhancement promptmlr)", above=0)
    recovery_weight: float = option(0.1, "weight of the recovery head's loss (the authors' CLIP model: 0.1, against "
                                         "a main loss summed over the known labels)", minimum=0)
    recovered_label: str = option("max-scaled", "a recovered label: sigmoid(l_c * max_k l_k) (the authors') or "
                                                "sigmoid(l_c)", choices=RECOVERED_LABELS)
    recovery_loss: str = option("asl", "the recovery head's loss on soft labels: the authors' ASL (mean x 1000) or "
                                       "binary cross-entropy", choices=RECOVERY_LOSSES)
    known_only_epochs: int = option(0, "epochs on known labels only before recovered labels fill the unknown ones",
                                    minimum=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.template.count("{}") != 1:
            raise ConfigError(f"template must hold one {{}} for the class name, got {self.template!r}")

    def inert_options(self) -> set[str]:
        """The options of the layers not in use: two configs that differ only in them train the same model."""
        if self.enhancement == "authors":
            return {"hidden", "attention_scale"}
        return {"attention_dim", "encoder_layers", "encoder_heads"}


# ------------------------------------------------------------------------------ the authors' layers
def sine_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """``[H*W, dim]``, row-major over the grid: DETR's normalised 2-D sine embedding, as the authors'
    ``PositionEmbeddingSine(dim // 2, normalize=True)``. Its first half encodes the row, its second
    the column; each half alternates ``sin(u / T^(2i/n))`` and ``cos(u / T^(2i/n))`` for the pairs
    ``i``, with ``u`` the 1-based row (column) index scaled to ``(0, 2 pi]`` and ``n = dim // 2``."""
    height, width = grid
    half = dim // 2
    frequencies = POSITION_TEMPERATURE ** (2 * (torch.arange(half) // 2) / half)

    def encode(count: int) -> torch.Tensor:
        positions = torch.arange(1, count + 1, dtype=torch.float32) / (count + 1e-6) * 2 * math.pi
        angles = positions[:, None] / frequencies
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)  # sin, cos, ...

    rows = encode(height)[:, None].expand(height, width, half)
    columns = encode(width)[None].expand(height, width, half)
    return torch.cat([rows, columns], dim=-1).reshape(height * width, dim)


class LocationEncoderLayer(nn.Module):
    """A post-norm transformer encoder layer whose queries and keys carry the position embedding and
    whose values do not (the authors' ``TransformerEncoderLayer.forward_post``, from DETR):
    ``x = LN(x + Attn(x + pos, x + pos, x))``, ``x = LN(x + W2 ReLU(W1 x))``, dropout 0.1 on the
    attention weights and on each sub-layer's output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=ENCODER_DROPOUT, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(dim, FEEDFORWARD), nn.ReLU(), nn.Dropout(ENCODER_DROPOUT),
                                         nn.Linear(FEEDFORWARD, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(ENCODER_DROPOUT), nn.Dropout(ENCODER_DROPOUT)

    def forward(self, locations: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        query = locations + position
        attended = self.attention(query, query, locations, need_weights=False)[0]
        locations = self.norm1(locations + self.dropout1(attended))
        return self.norm2(locations + self.dropout2(self.feedforward(locations)))


class ClassContext(nn.Module):
    """The semantic-related feature of each class in each image, ``W2 GELU(BN(W1 [t_c; g_b]))``: the
    authors' ``ttd`` (Conv1d of kernel 1, BatchNorm1d over the images and classes, GELU, Conv1d), with
    ``g_b`` the mean of the image's encoded locations (their ``gsp``)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        width = text_dim + dim
        self.expand = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.project = nn.Linear(width, dim)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Class text ``[C, Dt]``, image feature ``[B, D]`` -> ``[B, C, D]``."""
        batch, classes = image.shape[0], text.shape[0]
        joint = torch.cat([text[None].expand(batch, -1, -1), image[:, None].expand(-1, classes, -1)], dim=-1)
        hidden = F.gelu(self.norm(self.expand(joint).flatten(0, 1))).unflatten(0, (batch, classes))
        return self.project(hidden)


class LowRankBilinearAttention(nn.Module):
    """``alpha[p, c] = w . (W3 tanh(U x_p * V v_c) + b3) + b``, the authors' ``LowRankBilinearAttention``
    (from SGRE): how much location ``p`` reads class ``c``, before any softmax."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.locations = nn.Linear(dim, hidden, bias=False)
        self.classes = nn.Linear(dim, hidden, bias=False)
        self.hidden = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, locations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Locations ``[B, P, D]``, class features ``[B, C, D]`` -> scores ``[B, P, C]``."""
        joint = torch.tanh(self.locations(locations)[:, None] * self.classes(classes)[:, :, None])  # [B, C, P, H]
        return self.score(self.hidden(joint)).squeeze(-1).transpose(1, 2)


class AuthorsEnhancement(nn.Module):
    """Items 1-3 of the module docstring: the encoder over the locations, the class features, the
    bilinear attention and the per-location classifier with its pooling."""

    def __init__(self, dim: int, text_dim: int, num_classes: int, attention_dim: int, layers: int, heads: int):
        super().__init__()
        if layers and (dim % 4 or dim % heads):  # the sine embedding pairs sin and cos in each half of the width
            raise ConfigError(f"method clsl's encoder needs a feature width divisible by 4 and by encoder_heads "
                              f"({heads}); this backbone's is {dim}")
        self.encoder = nn.ModuleList(LocationEncoderLayer(dim, heads) for _ in range(layers))
        self.context = ClassContext(text_dim, dim)
        self.attention = LowRankBilinearAttention(dim, attention_dim)
        self.classifier = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Dropout(CLASSIFIER_DROPOUT),
                                        nn.Linear(2 * dim, num_classes))

    def locations(self, dense: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """CLIP's dense map ``[B, P, D]`` -> the encoded locations that both heads read."""
        locations = F.normalize(dense, dim=-1)
        position = sine_position_embedding(grid, dense.shape[-1]).to(locations)
        for layer in self.encoder:
            locations = layer(locations, position)
        return locations

    def forward(self, locations: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded locations ``[B, P, D]``, class text ``[C, Dt]`` -> logits ``[B, C]`` and each class's
        pooling weights over the locations ``[B, C, P]``."""
        context = self.context(text.to(locations.dtype), locations.mean(1))
        read = torch.softmax(self.attention(locations, context), dim=-1) @ context
        return location_softmax_pool(self.classifier(torch.cat([read, locations], dim=-1)))

    @staticmethod
    def activation_floats(batch_size: int, locations: int, dim: int, classes: int, attention_dim: int,
                          layers: int, heads: int) -> int:
        """Floats held for the backward pass, roughly: the bilinear attention's three ``[C, H]`` maps
        per location, each encoder layer's attention map and feed-forward, the classifier's input and
        hidden layer, and the class features."""
        per_location = 3 * classes * attention_dim + layers * (heads * locations + FEEDFORWARD + 6 * dim)
        per_location += 4 * dim + 3 * classes
        return batch_size * (locations * per_location + classes * 4 * dim)


# ------------------------------------------------------------------------------------ the recovery
def recovered_targets(targets: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Soft labels ``[B, C]``: 1 / 0 where the label is known, the recovered probability elsewhere
    (a recovered label never overwrites a known one; the authors' ``y_sam``)."""
    return torch.where(targets != 0, (targets > 0).to(probabilities.dtype), probabilities)


def recovered_probabilities(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """The prediction's recovered labels ``[B, C]``, detached: ``sigmoid(l_c * max_k l_k)`` for
    ``max-scaled`` (the authors' ``pre1``, which sharpens every label of an image whose strongest
    logit is large and flips their sign where every logit is negative), ``sigmoid(l_c)`` otherwise."""
    logits = logits.detach().float()
    if rule == "max-scaled":
        logits = logits * logits.amax(dim=1, keepdim=True)
    return torch.sigmoid(logits)


def soft_asymmetric_loss(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """The authors' ASL on soft labels ``y`` in [0, 1] (``AsymmetricLossOptimized``, unmasked branch):
    ``-(y log p + (1 - y) log(1 - p)) (1 - p_t)^(gamma_pos y + gamma_neg (1 - y))`` with
    ``p_t = p y + (1 - p)(1 - y)``, the focusing factor held constant in the gradient, each log's
    argument floored at 1e-5; the mean over every entry, times 1000."""
    probability = torch.sigmoid(logits.float())
    entry = -(soft_targets * torch.log(probability.clamp(min=ASL_EPS))
              + (1 - soft_targets) * torch.log((1 - probability).clamp(min=ASL_EPS)))
    agreement = probability * soft_targets + (1 - probability) * (1 - soft_targets)
    focus = (1 - agreement) ** (ASL_GAMMA_POS * soft_targets + ASL_GAMMA_NEG * (1 - soft_targets))
    return ASL_SCALE * (entry * focus.detach()).mean()


# ---------------------------------------------------------------------------------------- method
@register_method
class CLSL(MultiLabelMethod):
    name = "clsl"
    Config = CLSLConfig

    def __init__(self, backbone, class_names, config: CLSLConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        dim = backbone.embed_dim
        text = class_text_features(backbone, class_names, templates=(config.template,),
                                   descriptions=self.descriptions)
        self.register_buffer("text", text, persistent=False)
        if config.enhancement == "authors":
            self.enhancement = AuthorsEnhancement(dim, text.shape[-1], self.num_classes, config.attention_dim,
                                                  config.encoder_layers, config.encoder_heads)
        else:
            self.enhancement = SemanticEnhancement(dim, self.num_classes, config.hidden, config.attention_scale)
        self.recovery_head = nn.Linear(dim, self.num_classes)  # the authors' fc0, a Conv1d of kernel 1

    def forward(self, features: ImageFeatures) -> MethodOutput:
        if self.config.enhancement == "authors":
            locations = self.enhancement.locations(features.dense_features, features.grid)
            logits, weights = self.enhancement(locations, self.text)
        else:
            locations = self.enhancement.locations(features.dense_features)
            image = F.normalize(features.global_features, dim=-1)
            logits, weights = self.enhancement(locations, image, self.text)
        extras = {"recovery_logits": self.recovery_head(locations).amax(1)}
        return MethodOutput(logits, weights, features.grid, extras=extras)

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        recovery_logits = output.extras["recovery_logits"]
        config = self.config
        if self.epoch < config.known_only_epochs:
            loss = loss_fn(recovery_logits, targets)
        else:
            soft = recovered_targets(targets, recovered_probabilities(output.logits, config.recovered_label))
            if config.recovery_loss == "asl":
                loss = soft_asymmetric_loss(recovery_logits, soft)
            else:
                loss = F.binary_cross_entropy_with_logits(recovery_logits.float(), soft)
        return {"recovery": config.recovery_weight * loss}

    @classmethod
    def text_embeddings_refusal(cls, config: CLSLConfig) -> str:
        return "method clsl scores classes with MLPs over image locations, with no vector per class"

    def class_embeddings(self) -> torch.Tensor:
        raise ConfigError("method clsl scores classes with MLPs over image locations, not with one joint-space "
                          "vector per class, so it has no text embeddings to export; use its run folder's "
                          "best.safetensors with promptmlr predict")

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        config, dim = self.config, self.backbone.embed_dim
        if config.enhancement == "authors":
            floats = AuthorsEnhancement.activation_floats(batch_size, locations, dim, self.num_classes,
                                                          config.attention_dim, config.encoder_layers,
                                                          config.encoder_heads)
        else:
            floats = SemanticEnhancement.activation_floats(batch_size, locations, dim, config.hidden,
                                                           self.num_classes)
        return BYTES_PER_FLOAT * floats
