"""The HCP family on frozen CLIP: one feature per category, each scored by its own class's classifier.

SST (Chen et al., AAAI 2022), SARB (Pu et al., AAAI 2022) and DSRB (Pu et al., arXiv:2205.13092) share one
pipeline (HCP-MLR-PL, ``model/SST.py``, ``model/DSRB.py``): semantic decoupling (Chen et al., AAAI
2019) pools a feature per category from a fine-tuned ResNet's map with word-vector-guided attention,
a GGNN propagates the category features, and an element-wise classifier scores feature c for class
c only. On CLIP's dense map, ``head`` chooses the decoupling and the classifier:

* ``authors``: HCP-MLR-PL's own (:class:`HCPDecouplingHead`, :class:`HCPClassifier`), their
  GloVe vectors replaced by the classes' CLIP text features. The map keeps CLIP's width: their
  1x1 convolution to 1024 channels exists to narrow ResNet-101's 2048.
* ``clip``: a decoupling and classifier that start from CLIP's zero-shot ranking
  (:class:`SemanticDecouplingHead`: cosine attention with the text features as queries;
  :class:`CategoryClassifier`: ``init_scale`` times the text features, on unit category features).

Either way the GGNN is left out: it propagates over the training labels' co-occurrence graph
(``model/GraphNeuralNetwork.py``, the graph counted from the partial labels in
``utils/dataloader.py``), and a method is built without the training labels. With it gone, their
classifier's ``fc`` on ``[GGNN(f); f]`` reads ``[f; f]`` (:class:`HCPClassifier`).

SST and DSRB also pull a class's category features together across the images of a batch and push
them away from the same class's features where it is absent (``contrastive_pairs``):
:func:`hcp_contrastive_loss` is the authors' ``ContrastiveLoss`` (the same in ``loss/SST.py`` and
``loss/DSRB.py``); :func:`category_contrastive_loss` is promptmlr's variant, which draws nothing at
random and leaves two images without a class free to differ in it (no negative-negative pairs).
Their training loops ramp it in over the first epoch (``ramp_epochs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import BYTES_PER_FLOAT, LossFn, MethodOutput, MultiLabelMethod
from promptmlr.models.head import SemanticDecouplingHead
from promptmlr.models.text import class_text_features
from promptmlr.options import check_fields, option

HEADS = ("authors", "clip")
CONTRASTIVE_PAIRS = ("authors", "positive")


@dataclass
class CategoryConfig:
    head: str = option("clip", "authors: HCP-MLR-PL's decoupling and element-wise classifier; clip: cosine attention "
                               "and a classifier that start from CLIP's text features", choices=HEADS)
    attention_temperature: float = option(10.0, "clip head: initial temperature of the decoupling's spatial "
                                                "softmax (learned)", above=0)
    init_scale: float = option(10.0, "clip head: each class's classifier starts as this times its text feature",
                               above=0)
    decoupling_dim: int = option(512, "authors' head: width of the decoupling's attention MLP (their intermediaDim)",
                                 minimum=1)
    classifier_dim: int = option(1024, "authors' head: width of tanh(fc(f)) that the element-wise classifier scores "
                                       "(their outputDim)", minimum=1)
    contrastive_weight: float = option(0.05, "weight of the category contrastive loss (contrastive_pairs); 0: off",
                                       minimum=0)
    contrastive_pairs: str = option("positive", "authors: HCP-MLR-PL's ContrastiveLoss (every known pair, negative "
                                                "pairs subsampled); positive: every pair with a known positive, none "
                                                "subsampled", choices=CONTRASTIVE_PAIRS)
    ramp_epochs: float = option(0.0, "the contrastive term (and SST's co-occurrence term) rises linearly from 0 over "
                                     "this many first epochs (HCP-MLR-PL: 1); 0: at full weight from the start",
                                minimum=0)
    known_only_epochs: int = option(2, "epochs on known labels only before the terms that fill unknown labels join",
                                    minimum=0)

    def __post_init__(self) -> None:
        check_fields(self)

    def inert_options(self) -> set[str]:
        """Options this configuration ignores: the other head's."""
        return {"decoupling_dim", "classifier_dim"} if self.head == "clip" else {"attention_temperature", "init_scale"}


def element_wise_parameters(rows: int, width: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weights ``[rows, width]`` and biases ``[rows]`` of an element-wise layer (row r scores input row r
    only), drawn as HCP-MLR-PL's ``Element_Wise_Layer`` draws them: uniform within ``±1/sqrt(width)``."""
    bound = 1 / math.sqrt(width)
    return (nn.Parameter(torch.empty(rows, width).uniform_(-bound, bound)),
            nn.Parameter(torch.empty(rows).uniform_(-bound, bound)))


class HCPDecouplingHead(nn.Module):
    """HCP-MLR-PL's ``SemanticDecoupling`` (``model/SemanticDecoupling.py``) on a dense map ``x [B, L, D]``,
    guided by fixed class vectors ``t_c`` (their GloVe vectors; here the classes' text features):

        a[b, c, l] = fc4(fc3(tanh(fc1(x[b, l]) * fc2(t_c)))),   A = softmax_l(a),   f[b, c] = sum_l A[b, c, l] x[b, l]

    ``fc1`` and ``fc2`` have no bias, as theirs. The biases of ``fc3`` and ``fc4`` shift every location's
    score alike, which the softmax ignores (they get no gradient there), so they are left out; and
    ``fc4(fc3(h))`` is one linear map of ``h``, applied as such, so that one ``[B, C, L, hidden]`` tensor is
    held instead of two."""

    def __init__(self, embed_dim: int, class_vectors: torch.Tensor, hidden: int):
        super().__init__()
        self.image = nn.Linear(embed_dim, hidden, bias=False)  # their fc1
        self.text = nn.Linear(class_vectors.shape[1], hidden, bias=False)  # fc2
        self.hidden = nn.Linear(hidden, hidden, bias=False)  # fc3
        self.score = nn.Linear(hidden, 1, bias=False)  # fc4
        self.register_buffer("class_vectors", class_vectors.detach().clone())

    def forward(self, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``dense [B, L, D]`` -> category features ``[B, C, D]`` and attention ``[B, C, L]``."""
        gate = torch.tanh(self.image(dense)[:, None] * self.text(self.class_vectors)[None, :, None])  # [B, C, L, H]
        direction = self.score.weight[0] @ self.hidden.weight  # fc4 after fc3, as one vector
        attention = torch.softmax(gate @ direction, dim=-1)
        return torch.bmm(attention, dense), attention

    def estimate_activation_bytes(self, batch_size: int, locations: int, embed_dim: int) -> int:
        """The gate ``[B, C, L, hidden]`` (its product, tanh and gradient), the attention maps and the
        category features."""
        classes, hidden = self.class_vectors.shape[0], self.hidden.weight.shape[0]
        return BYTES_PER_FLOAT * (3 * batch_size * classes * locations * hidden + 4 * batch_size * classes * locations
                                  + 2 * batch_size * classes * embed_dim)


class HCPClassifier(nn.Module):
    """HCP-MLR-PL's classifier (``model/SST.py``: ``fc``, ``tanh``, ``Element_Wise_Layer``):
    ``logit[b, c] = <w_c, tanh(fc([g; f[b, c]]))> + b_c``, class c's weights reading class c's feature
    only, ``w_c`` and ``b_c`` drawn as theirs (:func:`element_wise_parameters`). Their ``g`` is the
    GGNN's output; without the GGNN it is ``f`` (their ``GatedGNN`` at zero steps returns its input).
    ``fc`` keeps their ``2D``-wide input rather than one ``D``-wide map of the same function: Adam steps
    each half on its own, so the halves' sum moves as theirs does (about twice one matrix's step)."""

    def __init__(self, num_classes: int, embed_dim: int, hidden: int):
        super().__init__()
        self.project = nn.Linear(2 * embed_dim, hidden)
        self.weight, self.bias = element_wise_parameters(num_classes, hidden)

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """Category features ``[B, C, D]`` (as decoupled, not normalised) -> logits ``[B, C]``."""
        hidden = torch.tanh(self.project(torch.cat((category, category), dim=-1)))
        return (hidden * self.weight).sum(-1) + self.bias


class CategoryClassifier(nn.Module):
    """``logit[b, c] = <w_c, f[b, c]> + b_c``: class c's weights see only class c's feature (HCP's
    element-wise classifier), starting from ``init_scale`` times the class's text feature."""

    def __init__(self, class_features: torch.Tensor, init_scale: float):
        super().__init__()
        self.weight = nn.Parameter(init_scale * class_features.detach().clone())
        self.bias = nn.Parameter(torch.zeros(class_features.shape[0]))

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """Unit category features ``[B, C, D]`` -> logits ``[B, C]``."""
        return (category * self.weight).sum(-1) + self.bias

    def directions(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=-1)


def category_contrastive_loss(category: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """promptmlr's contrastive term on unit category features ``[B, C, D]`` (``contrastive_pairs:
    positive``; promptmlr's own method's): for every class, each ordered pair of images where it is a
    known positive costs ``1 - cos`` (pulled together; so each such pair counts twice), each pair of a
    known positive and a known negative ``1 + cos`` (pushed apart); the mean over all of them, none
    subsampled. Pairs of two negatives do not count."""
    similarity = torch.einsum("icd,jcd->cij", category, category)  # [C, B, B]
    positive = (targets > 0).T.float()  # [C, B]
    negative = (targets < 0).T.float()
    both_positive = positive[:, :, None] * positive[:, None, :]
    both_positive = both_positive * (1 - torch.eye(category.shape[0], device=category.device))
    positive_negative = positive[:, :, None] * negative[:, None, :]
    total = (both_positive * (1 - similarity)).sum() + (positive_negative * (1 + similarity)).sum()
    return total / (both_positive.sum() + positive_negative.sum()).clamp_min(1.0)


def _random_and_hardest(terms: torch.Tensor, count: int) -> torch.Tensor:
    """``2 * count`` of ``terms`` drawn without replacement by torch's global generator, then the ``count``
    largest (a term may be in both), as HCP-MLR-PL's ``ContrastiveLoss`` subsamples negative pairs."""
    if terms.numel() == 0:
        return terms
    drawn = torch.randperm(terms.numel())[:2 * count].to(terms.device)
    return torch.cat((terms[drawn], terms.topk(min(count, terms.numel())).values))


def hcp_contrastive_loss(category: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """HCP-MLR-PL's ``ContrastiveLoss`` (``loss/SST.py``, identical in ``loss/DSRB.py``; SST's and DSRB's
    inter-image term) on category features ``[B, C, D]``: for every class and every pair of images
    ``i < j`` whose labels for it are both known,

    * both positive: ``1 - cos`` (pulled together);
    * one positive and one negative, or both negative: ``1 + cos`` (pushed apart).

    When there are P > 0 positive pairs, each kind of negative pair is cut to 2P drawn at random plus
    the P hardest (:func:`_random_and_hardest`; negative-negative pairs drawn first, then
    positive-negative, as theirs, so that one seed draws the same pairs), every pair taken in their
    order (pairs ``i < j`` row by row, then classes). The loss is the mean over every term kept; 0
    when there is none (theirs: the mean of an empty tensor, NaN)."""
    first, second = torch.triu_indices(category.shape[0], category.shape[0], 1, device=category.device)
    unit = F.normalize(category, dim=-1, eps=1e-9)
    similarity = torch.einsum("icd,jcd->ijc", unit, unit)[first, second]  # [pairs, C]
    left, right = targets[first], targets[second]
    pull = (1 - similarity)[(left > 0) & (right > 0)]
    push = 1 + similarity
    positive_negative = push[((left > 0) & (right < 0)) | ((left < 0) & (right > 0))]
    negative_negative = push[(left < 0) & (right < 0)]
    if pull.numel():
        negative_negative = _random_and_hardest(negative_negative, pull.numel())
        positive_negative = _random_and_hardest(positive_negative, pull.numel())
    terms = torch.cat((pull, positive_negative, negative_negative))
    return terms.mean() if terms.numel() else category.sum() * 0


CONTRASTIVE_LOSSES = {"authors": hcp_contrastive_loss, "positive": category_contrastive_loss}


class CategoryMethod(MultiLabelMethod):
    """Decoupled category features scored per class (``head``); subclasses add their transfer terms in
    :meth:`auxiliary_losses` and set ``name`` and ``Config`` (a :class:`CategoryConfig`)."""

    Config = CategoryConfig

    def __init__(self, backbone, class_names, config: CategoryConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        text = class_text_features(backbone, class_names, descriptions=self.descriptions)
        if config.head == "authors":
            self.head = HCPDecouplingHead(backbone.embed_dim, text, config.decoupling_dim)
            self.classifier = HCPClassifier(self.num_classes, backbone.embed_dim, config.classifier_dim)
        else:
            self.head = SemanticDecouplingHead(backbone.embed_dim, self.num_classes, text,
                                               config.attention_temperature)
            self.classifier = CategoryClassifier(text, config.init_scale)

    @property
    def warmed_up(self) -> bool:
        return self.epoch >= self.config.known_only_epochs

    def ramp(self) -> float:
        """The factor on the terms that ramp in: the share of ``ramp_epochs`` trained, at most 1 (HCP-MLR-PL's
        ``SST.py`` and ``DSRB.py`` weigh them by ``batchIndex / len(train_loader)`` in the first epoch)."""
        epochs = self.config.ramp_epochs
        return min(1.0, self.epochs_trained / epochs) if epochs else 1.0

    def forward(self, features: ImageFeatures) -> MethodOutput:
        return self.scored(*self.head(features.dense_features), features.grid)

    def scored(self, category: torch.Tensor, attention: torch.Tensor, grid: tuple[int, int]) -> MethodOutput:
        """The output for the head's category features ``[B, C, D]`` and attention: the logits, and the
        category features normalised (what the transfer terms compare, by cosine)."""
        unit = F.normalize(category, dim=-1)
        if self.config.head == "authors":
            return MethodOutput(self.classifier(category), attention, grid, unit)
        return MethodOutput(self.classifier(unit), attention, grid, unit, self.classifier.directions())

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        config = self.config
        if config.contrastive_weight == 0:
            return {}
        loss = CONTRASTIVE_LOSSES[config.contrastive_pairs](output.category_features, targets)
        return {"contrastive": config.contrastive_weight * self.ramp() * loss}

    def class_embeddings(self) -> torch.Tensor:
        """The clip head's classifier directions; the authors' head's class vectors (the text features
        its decoupling attends with: its classifier reads another space)."""
        with torch.no_grad():
            if self.config.head == "authors":
                return F.normalize(self.head.class_vectors, dim=-1)
            return self.classifier.directions()

    @classmethod
    def text_embeddings_refusal(cls, config: CategoryConfig) -> str:
        return (f"method {cls.name} scores a feature pooled for each class from the dense map, with that "
                f"class's own classifier")

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        return self.head.estimate_activation_bytes(batch_size, locations, self.backbone.embed_dim)
