"""CLSL's mechanisms against the formulas of its authors' code (Qingdandian/CLSL, commit 2f9e916:
models/sarlp_clip.py, lib/aslloss.py, lib/util.py), written out here on small tensors, since that
code cannot run in CI (``tools/bench/parity_clsl.py`` runs it)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptmlr.losses import LossConfig, build_loss
from promptmlr.models import build_method
from promptmlr.models.clsl import (
    AuthorsEnhancement,
    ClassContext,
    LocationEncoderLayer,
    LowRankBilinearAttention,
    recovered_probabilities,
    recovered_targets,
    sine_position_embedding,
    soft_asymmetric_loss,
)
from promptmlr.models.text import class_text_features
from promptmlr.settings import read_yaml
from tests.conftest import seeded

CLASSES = ["cat", "dog", "sofa"]
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "methods" / "clsl.yaml"


# ------------------------------------------------------------------------------------ the layers
def test_position_embedding_is_their_normalised_sine_embedding():
    """PositionEmbeddingSine(dim / 2, normalize=True): rows then columns, 1-based and scaled to
    2 pi / count, sin and cos alternating over frequencies 10000^(2 floor(i / 2) / (dim / 2))."""
    height, width, dim = 2, 3, 8
    embedding = sine_position_embedding((height, width), dim)
    half = dim // 2
    for h, w, i in itertools.product(range(height), range(width), range(half)):
        frequency = 10000 ** (2 * (i // 2) / half)
        wave = math.sin if i % 2 == 0 else math.cos
        row, column = (h + 1) / (height + 1e-6) * 2 * math.pi, (w + 1) / (width + 1e-6) * 2 * math.pi
        assert embedding[h * width + w, i].item() == pytest.approx(wave(row / frequency), abs=1e-6)
        assert embedding[h * width + w, half + i].item() == pytest.approx(wave(column / frequency), abs=1e-6)


def test_encoder_layer_is_their_post_norm_layer_with_positions_on_queries_and_keys():
    """forward_post: x = LN1(x + MHA(q = k = x + pos, v = x)); x = LN2(x + W2 ReLU(W1 x))."""
    torch.manual_seed(0)
    layer = LocationEncoderLayer(dim=8, heads=2).eval()
    x, position = seeded(2, 5, 8), seeded(5, 8, seed=1)
    wq, wk, wv = layer.attention.in_proj_weight.chunk(3)
    bq, bk, bv = layer.attention.in_proj_bias.chunk(3)
    query, key, value = (x + position) @ wq.T + bq, (x + position) @ wk.T + bk, x @ wv.T + bv
    heads = []
    for head in range(2):
        part = slice(4 * head, 4 * head + 4)
        weights = torch.softmax(query[..., part] @ key[..., part].transpose(1, 2) / 2.0, dim=-1)  # sqrt(4)
        heads.append(weights @ value[..., part])
    attended = torch.cat(heads, dim=-1) @ layer.attention.out_proj.weight.T + layer.attention.out_proj.bias
    expected = F.layer_norm(x + attended, (8,), layer.norm1.weight, layer.norm1.bias)
    first, second = layer.feedforward[0], layer.feedforward[3]
    expected = F.layer_norm(expected + second(F.relu(first(expected))), (8,), layer.norm2.weight, layer.norm2.bias)
    torch.testing.assert_close(layer(x, position), expected)


def test_class_features_are_their_ttd_on_text_and_the_mean_location():
    """ttd: Conv1d(k=1), BatchNorm1d over images and classes (batch statistics in training), GELU,
    Conv1d(k=1), on [t_c; g_b]."""
    torch.manual_seed(0)
    context = ClassContext(text_dim=3, dim=4).train()
    text, image = seeded(5, 3), seeded(2, 4, seed=1)
    joint = torch.stack([torch.cat([text[c], image[b]]) for b in range(2) for c in range(5)])  # [B*C, 7]
    hidden = context.expand(joint)
    mean, variance = hidden.mean(0), hidden.var(0, unbiased=False)
    normed = (hidden - mean) / torch.sqrt(variance + 1e-5) * context.norm.weight + context.norm.bias
    expected = context.project(F.gelu(normed)).reshape(2, 5, 4)
    torch.testing.assert_close(context(text, image), expected)


def test_attention_scores_are_their_low_rank_bilinear_ones():
    """LowRankBilinearAttention: target(hidden(tanh(U x_p * V v_c))), no softmax."""
    torch.manual_seed(0)
    attention = LowRankBilinearAttention(dim=4, hidden=6)
    locations, classes = seeded(2, 3, 4), seeded(2, 5, 4, seed=1)
    scores = attention(locations, classes)
    assert scores.shape == (2, 3, 5)
    for b, p, c in itertools.product(range(2), range(3), range(5)):
        joint = torch.tanh((attention.locations.weight @ locations[b, p]) * (attention.classes.weight @ classes[b, c]))
        expected = attention.score(attention.hidden(joint))[0]
        torch.testing.assert_close(scores[b, p, c], expected)


def test_enhancement_reads_classes_by_softmax_and_pools_locations_by_their_own_softmax():
    """sarlp_clip.py forward: x normalised and encoded; v = ttd([t; mean_p x_p]); f_p = sum_c softmax_c
    (alpha[p, c]) v_c; a = fc2([f_p; x_p]) (Linear, GELU, Dropout 0.5, Linear); l_c = sum_p softmax_p(a) a."""
    torch.manual_seed(0)
    enhancement = AuthorsEnhancement(dim=8, text_dim=8, num_classes=3, attention_dim=5, layers=1, heads=2).eval()
    assert [type(m).__name__ for m in enhancement.classifier] == ["Linear", "GELU", "Dropout", "Linear"]
    assert enhancement.classifier[2].p == 0.5 and enhancement.classifier[0].out_features == 16
    dense, text = 3 * seeded(2, 4, 8), F.normalize(seeded(3, 8, seed=1), dim=-1)
    locations = enhancement.locations(dense, (2, 2))
    expected_locations = enhancement.encoder[0](F.normalize(dense, dim=-1), sine_position_embedding((2, 2), 8))
    torch.testing.assert_close(locations, expected_locations)
    logits, weights = enhancement(locations, text)
    context = enhancement.context(text, locations.mean(1))
    read = torch.softmax(enhancement.attention(locations, context), dim=-1) @ context
    scores = enhancement.classifier(torch.cat([read, locations], dim=-1))  # [B, P, C]
    torch.testing.assert_close(logits, (torch.softmax(scores, dim=1) * scores).sum(1))
    torch.testing.assert_close(weights, torch.softmax(scores, dim=1).transpose(1, 2))


# ---------------------------------------------------------------------------------- the recovery
def test_recovered_labels_are_sigmoid_of_the_logit_times_the_images_largest():
    """pre1 = sigmoid(logits1 * logits1.max(dim=1)): sharpened where the top logit is large, flipped
    where every logit is negative."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [-1.0, -3.0, -2.0]])
    expected = torch.sigmoid(torch.tensor([[4.0, -2.0, 1.0], [1.0, 3.0, 2.0]]))
    torch.testing.assert_close(recovered_probabilities(logits, "max-scaled"), expected)
    torch.testing.assert_close(recovered_probabilities(logits, "sigmoid"), torch.sigmoid(logits))
    soft = recovered_targets(torch.tensor([[1.0, 0.0, -1.0]]), recovered_probabilities(logits[:1], "max-scaled"))
    torch.testing.assert_close(soft, torch.tensor([[1.0, float(expected[0, 1]), 0.0]]))  # y_sam


def test_soft_asl_is_their_unmasked_asl_mean_times_1000_with_constant_focusing():
    """AsymmetricLossOptimized (gamma_neg 2, gamma_pos 0, clip 0, eps 1e-5), unmasked branch:
    -(y log p + (1 - y) log(1 - p)) (1 - p y - (1 - p)(1 - y))^(2 (1 - y)), summed, / B / C x 1000."""
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    soft = torch.tensor([[0.3, 0.0], [1.0, 0.8]])
    p = torch.sigmoid(logits.detach())
    focus = (1 - p * soft - (1 - p) * (1 - soft)) ** (2 * (1 - soft))
    entry = -(soft * torch.log(p) + (1 - soft) * torch.log(1 - p)) * focus
    loss = soft_asymmetric_loss(logits, soft)
    assert loss.item() == pytest.approx(1000 * entry.sum().item() / 4, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logits.grad, 1000 / 4 * focus * (p - soft))  # the factor passes no gradient
    floored = soft_asymmetric_loss(torch.tensor([[-30.0]]), torch.tensor([[1.0]]))
    assert floored.item() == pytest.approx(-1000 * math.log(1e-5), rel=1e-6)  # log's argument floored at 1e-5


def test_the_recipes_main_loss_is_their_masked_asl_summed_times_1000():
    """MASK branch: unknown entries dropped, -(y log p + (1 - y) p^2 log(1 - p)) summed x 1000, the
    focusing factor constant in the gradient (configs/methods/clsl.yaml's train.loss)."""
    loss_fn = build_loss(LossConfig(**read_yaml(RECIPE)["train"]["loss"]))
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.3, 2.0, -1.0]], requires_grad=True)
    targets = torch.tensor([[1.0, -1.0, 0.0], [0.0, -1.0, 1.0]])
    p = torch.sigmoid(logits.detach())
    entry = torch.where(targets > 0, -torch.log(p), -(p ** 2) * torch.log(1 - p)) * (targets != 0)
    loss = loss_fn(logits, targets)
    assert loss.item() == pytest.approx(1000 * entry.sum().item(), rel=1e-6)
    loss.backward()
    expected = torch.where(targets > 0, p - 1, p ** 2 * p) * (targets != 0) * 1000  # d/dl of -p^2 log(1-p), p^2 fixed
    torch.testing.assert_close(logits.grad, expected)


def test_recovery_term_is_point_one_of_their_asl_on_the_max_over_locations(vit):
    """ce_loss = bce1 + 0.1 * bce0; bce0 = ASL(max_p fc0(x_p), y_sam.detach()), from the first step."""
    torch.manual_seed(0)
    method = build_method("clsl", vit, CLASSES).eval()
    assert method.config.known_only_epochs == 0 and method.config.recovery_weight == 0.1
    features = vit.encode_image(seeded(2, 3, vit.image_size, vit.image_size))
    output = method(features)
    locations = method.enhancement.locations(features.dense_features, features.grid)
    recovery_logits = (locations @ method.recovery_head.weight.T + method.recovery_head.bias).amax(1)
    torch.testing.assert_close(output.extras["recovery_logits"], recovery_logits)
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    term = method.auxiliary_losses(output, targets, build_loss(LossConfig()))["recovery"]
    y_sam = recovered_targets(targets, torch.sigmoid(output.logits * output.logits.amax(1, keepdim=True)))
    assert term.item() == pytest.approx(0.1 * soft_asymmetric_loss(recovery_logits, y_sam.detach()).item(), rel=1e-5)
    (gradient,) = torch.autograd.grad(term, output.logits, retain_graph=True, allow_unused=True)
    assert gradient is None  # the recovered labels are targets, not a path into the prediction


# ---------------------------------------------------------------------------------- the method
def test_clsl_defaults_to_their_layers_and_the_bare_class_name(vit):
    torch.manual_seed(0)
    method = build_method("clsl", vit, CLASSES)
    assert isinstance(method.enhancement, AuthorsEnhancement) and len(method.enhancement.encoder) == 1
    assert method.enhancement.encoder[0].attention.num_heads == 8
    assert method.enhancement.attention.hidden.in_features == 256
    torch.testing.assert_close(method.text, class_text_features(vit, CLASSES, templates=("{}",)))
    assert method.config.inert_options() == {"hidden", "attention_scale"}


def test_the_earlier_layers_and_rules_stay_as_options(vit):
    """enhancement promptmlr, template "a photo of a {}.", recovered_label sigmoid, recovery_loss bce:
    the options' values that load a clsl file written before the authors' layers were its defaults."""
    torch.manual_seed(0)
    method = build_method("clsl", vit, CLASSES, enhancement="promptmlr", template="a photo of a {}.",
                          recovered_label="sigmoid", recovery_loss="bce", recovery_weight=0.8)
    assert sorted(method.state_dict()) == sorted(
        [f"enhancement.{part}.{kind}" for part in ("projection", "semantic.0", "semantic.2", "enhance.0", "enhance.2")
         for kind in ("weight", "bias")] + ["recovery_head.weight", "recovery_head.bias"])
    torch.testing.assert_close(method.text, class_text_features(vit, CLASSES))
    features = vit.encode_image(seeded(2, 3, vit.image_size, vit.image_size))
    output = method(features)
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    soft = recovered_targets(targets, torch.sigmoid(output.logits.detach()))
    expected = 0.8 * F.binary_cross_entropy_with_logits(output.extras["recovery_logits"], soft)
    torch.testing.assert_close(method.auxiliary_losses(output, targets, build_loss(LossConfig()))["recovery"], expected)


def test_a_template_without_a_place_for_the_name_is_refused(vit):
    from promptmlr.errors import ConfigError

    with pytest.raises(ConfigError, match="template must hold one"):
        build_method("clsl", vit, CLASSES, template="a photo")
    with pytest.raises(ConfigError, match="divisible by 4 and by encoder_heads"):
        build_method("clsl", vit, CLASSES, encoder_heads=3)
