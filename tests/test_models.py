"""Methods, prompts, the decoupling head, descriptions and the learned-prompts file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from promptmlr.backbones import ImageFeatures, create_backbone
from promptmlr.descriptions import DescriptionsError, check_classes, load_descriptions, shipped_descriptions_path
from promptmlr.errors import ConfigError
from promptmlr.losses import asymmetric_loss
from promptmlr.metrics import mean_average_precision
from promptmlr.models import build_method, list_methods
from promptmlr.models.fusion import simplex_grid, validated_weights
from promptmlr.models.head import SemanticDecouplingHead
from promptmlr.models.prompts import PromptLearner
from promptmlr.prompt_files import PromptsFileError, export_text_embeddings, load_prompts, read_header, save_prompts
from tests.conftest import TINY_SPECS

CLASSES = ["cat", "dog", "traffic light", "red sofa"]
DESCRIPTIONS = {name: [f"a blurry picture of a {name}", f"a {name} seen from above"] for name in CLASSES}
TRAINABLE = [name for name in list_methods() if name != "zeroshot"]


@pytest.fixture(scope="module", params=TINY_SPECS)
def backbone(request):
    return create_backbone(request.param)


def _batch(backbone, size: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, backbone.image_size, backbone.image_size, generator=generator)
    targets = torch.randint(0, 2, (size, len(CLASSES)), generator=generator).float() * 2 - 1
    targets[0, 0] = 0  # one unknown entry
    return backbone.encode_image(images), targets


def _separable_batch(backbone, size: int = 6, seed: int = 0):
    """Random features of the backbone's shapes that differ from image to image, with targets: a
    randomly initialised tiny ResNet maps random images to nearly one feature (std ~1e-4 across
    images), which no method can fit."""
    features, targets = _batch(backbone, size, seed)
    generator = torch.Generator().manual_seed(seed)
    return ImageFeatures(torch.randn(features.global_features.shape, generator=generator),
                         torch.randn(features.dense_features.shape, generator=generator), features.grid), targets


def _loss(method, features, targets):
    output = method(features)
    known = targets != 0
    loss = F.binary_cross_entropy_with_logits(output.logits[known], (targets[known] > 0).float())
    return loss + sum(method.auxiliary_losses(output, targets, asymmetric_loss).values())


# ------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("name", list_methods())
def test_output_shapes(backbone, name):
    features, _ = _batch(backbone)
    output = build_method(name, backbone, CLASSES, DESCRIPTIONS)(features)
    assert output.logits.shape == (6, len(CLASSES))
    assert torch.all((output.probabilities >= 0) & (output.probabilities <= 1))
    if output.attention is not None:
        locations = features.dense_features.shape[1]
        assert output.attention.shape == (6, len(CLASSES), locations)
        torch.testing.assert_close(output.attention.sum(-1), torch.ones(6, len(CLASSES)))
        assert output.attention_maps().shape == (6, len(CLASSES), *features.grid)


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_moves_only_learnable_parameters_and_lowers_the_loss(backbone, name):
    torch.manual_seed(0)
    method = build_method(name, backbone, CLASSES, DESCRIPTIONS)
    frozen = {n: p.clone() for n, p in backbone.named_parameters()}
    learnable = {n: p.clone() for n, p in method.named_parameters() if p.requires_grad}
    assert learnable and not any(n.startswith("backbone.") for n in learnable)
    features, targets = _separable_batch(backbone)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=2e-2)
    method.train()
    losses = []
    for _ in range(20):
        loss = _loss(method, features, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert not backbone.training
    for n, p in backbone.named_parameters():
        assert p.grad is None and torch.equal(p, frozen[n]), n
    moved = [n for n, p in method.named_parameters() if p.requires_grad and not torch.equal(p, learnable[n])]
    assert moved


@pytest.mark.parametrize("name", TRAINABLE)
def test_parameter_groups_cover_every_trainable_parameter_once(vit, name):
    method = build_method(name, vit, CLASSES, DESCRIPTIONS)
    grouped = [id(p) for group in method.parameter_groups() for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in method.parameters() if p.requires_grad)


def test_promptmlr_trains_its_enhancement_at_its_own_rate(vit):
    """The engine's optimiser gives each group ``lr_scale`` times ``train.lr``."""
    from promptmlr.engine import TrainConfig, build_optimizer

    method = build_method("promptmlr", vit, CLASSES, enhance_lr_scale=4.0)
    rest, enhancement = method.parameter_groups()
    assert {id(p) for p in enhancement["params"]} == {id(p) for p in method.enhancement.parameters()}
    assert (rest["lr_scale"], enhancement["lr_scale"]) == (1.0, 4.0)
    optimizer = build_optimizer(TrainConfig(lr=0.005), method.parameter_groups())
    assert [group["lr"] for group in optimizer.param_groups] == [0.005, 0.02]
    with pytest.raises(ConfigError, match="enhance_lr_scale"):
        build_method("promptmlr", vit, CLASSES, enhance_lr_scale=0)


BRANCHES = {"enhance_layers": "clsl", "decoupled": True, "decoupling_dim": 8, "classifier_dim": 16}


def test_promptmlr_branches_are_summed_by_default_and_averaged_as_an_ensemble_under_branch_losses(vit):
    torch.manual_seed(0)
    summed = build_method("promptmlr", vit, CLASSES, **BRANCHES).eval()
    ensemble = build_method("promptmlr", vit, CLASSES, **BRANCHES, branch_losses=True).eval()
    ensemble.load_state_dict(summed.state_dict())
    features, targets = _separable_batch(vit)
    one, each = summed(features), ensemble(features)
    branches = each.extras["branch_logits"]
    assert branches.shape == (3, 6, len(CLASSES)) and "branch_logits" not in one.extras
    torch.testing.assert_close(one.logits, branches.sum(0))
    torch.testing.assert_close(each.logits, branches.mean(0))
    assert [logits.data_ptr() for logits in summed.supervised_logits(one)] == [one.logits.data_ptr()]
    assert len(ensemble.supervised_logits(each)) == 3
    # each branch learns from its own loss alone: the decoupled classifier's gradient is its branch's
    ensemble.train()
    output = ensemble(features)
    sum(asymmetric_loss(logits, targets) for logits in ensemble.supervised_logits(output)).backward()
    together = ensemble.decoupled_classifier.weight.grad.clone()
    ensemble.zero_grad()
    asymmetric_loss(ensemble(features).extras["branch_logits"][2], targets).backward()
    torch.testing.assert_close(ensemble.decoupled_classifier.weight.grad, together)


def test_simplex_grid_holds_the_mean_first_and_convex_weights():
    grid = simplex_grid(4)
    assert grid.shape == (1 + 286, 4) and np.allclose(grid.sum(1), 1) and (grid >= 0).all()
    np.testing.assert_array_equal(grid[0], [0.25] * 4)
    np.testing.assert_allclose(simplex_grid(2)[1:], [(i / 10, (10 - i) / 10) for i in range(11)])


def test_validated_weights_favour_the_branch_that_ranks_the_validation_labels():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((200, 5)) < 0.3, 1, -1)
    labels[rng.random((200, 5)) < 0.5] = 0  # half the entries unknown
    informative = 3.0 * labels + rng.normal(size=(200, 5))
    noise = 3.0 * rng.normal(size=(200, 5))
    weights = validated_weights(np.stack([noise, informative], axis=1), labels)
    fused = np.einsum("nkc,k->nc", np.stack([noise, informative], axis=1), weights)
    assert weights[1] > weights[0] and mean_average_precision(fused, labels) >= mean_average_precision(
        informative, labels)
    # the unknown entries play no part: changing their logits leaves the choice as it was
    changed = np.where(labels == 0, rng.normal(size=(200, 5)) * 50, informative)
    np.testing.assert_array_equal(validated_weights(np.stack([noise, changed], axis=1), labels), weights)
    # a split that cannot tell the weights apart keeps the mean
    np.testing.assert_array_equal(validated_weights(np.stack([informative, informative], axis=1), labels), [0.5, 0.5])
    np.testing.assert_array_equal(validated_weights(np.stack([noise, informative], axis=1), np.zeros_like(labels)),
                                  [0.5, 0.5])


def test_promptmlr_probe_branch_and_validated_fusion(vit, tmp_path):
    torch.manual_seed(0)
    method = build_method("promptmlr", vit, CLASSES, **BRANCHES, probe=True, probe_lr_scale=10,
                          branch_losses=True, fusion="validated").eval()
    assert method.fits_on_validation() and not build_method(
        "promptmlr", vit, CLASSES, **BRANCHES, branch_losses=True).fits_on_validation()
    features, targets = _separable_batch(vit)
    output = method(features)
    branches = output.extras["branch_logits"]
    assert branches.shape == (4, 6, len(CLASSES))
    torch.testing.assert_close(branches[3], method.probe(F.normalize(features.global_features, dim=-1)))
    torch.testing.assert_close(output.logits, branches.mean(0))  # the mean until the first fit
    method.fit_on_validation(method.validation_fit_inputs(output).detach().numpy(), targets.numpy())
    weights = method.branch_weights.clone()
    assert not torch.allclose(weights, torch.full((4,), 0.25))
    assert float(weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(method(features).logits, torch.einsum("k,kbc->bc", weights, branches))
    # the fitted weights are part of the state: the selected epoch and an exported file keep them
    loaded, _ = load_prompts(save_prompts(method, tmp_path / "prompts.safetensors", thresholds=[0.5] * 4,
                                          metrics={"mAP": 1.0}, mask_sha256="ab" * 32))
    torch.testing.assert_close(loaded.branch_weights, weights, rtol=0, atol=0)
    groups = method.parameter_groups()
    assert groups[-1]["lr_scale"] == 10 and {id(p) for p in groups[-1]["params"]} == \
        {id(p) for p in method.probe.parameters()}
    inert = build_method("promptmlr", vit, CLASSES, fusion="validated").config.inert_options()
    assert {"fusion", "probe_lr_scale"} <= inert  # without branch_losses nothing is weighted
    probe_only = build_method("promptmlr", vit, CLASSES, enhance=False, probe=True, branch_losses=True,
                              fusion="validated")
    assert probe_only.fits_on_validation() and not {"fusion", "probe_lr_scale", "branch_losses"} & \
        probe_only.config.inert_options()


def test_promptmlr_trains_its_decoupled_branch_at_its_own_rate(vit):
    from promptmlr.engine import TrainConfig, build_optimizer

    method = build_method("promptmlr", vit, CLASSES, **BRANCHES, decoupled_lr_scale=0.4)
    rest, enhancement, decoupling, classifier = method.parameter_groups()
    assert {id(p) for p in decoupling["params"]} == {id(p) for p in method.decoupling.parameters()}
    assert {id(p) for p in classifier["params"]} == {id(p) for p in method.decoupled_classifier.parameters()}
    optimizer = build_optimizer(TrainConfig(lr=0.005), method.parameter_groups())
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.005, 0.02, 0.002, 0.002])
    assert {"decoupling_dim", "classifier_dim", "decoupled_lr_scale"} <= build_method(
        "promptmlr", vit, CLASSES).config.inert_options()
    assert "enhance_hidden" in method.config.inert_options()  # CLSL's layers have CLSL's widths
    assert "branch_losses" in build_method("promptmlr", vit, CLASSES, enhance=False).config.inert_options()


def test_unknown_entries_do_not_reach_the_gradient(vit):
    """The known-only loss used above gives exactly zero gradient through an unknown entry."""
    method = build_method("promptmlr", vit, CLASSES, align_weight=0.0)
    features, targets = _batch(vit)
    output = method(features)
    output.logits.retain_grad()
    known = targets != 0
    F.binary_cross_entropy_with_logits(output.logits[known], (targets[known] > 0).float()).backward()
    assert output.logits.grad[0, 0] == 0 and output.logits.grad[known].abs().min() > 0


def test_unknown_method_and_option_are_named():
    backbone = create_backbone(TINY_SPECS[0])
    with pytest.raises(ValueError, match="unknown method 'coop'; available: clsl, dsrb, dualcoop, linear"):
        build_method("coop", backbone, CLASSES)
    with pytest.raises(ValueError, match=r"no option\(s\) \['n_context'\]"):
        build_method("dualcoop", backbone, CLASSES, n_context=4)


# ---------------------------------------------------------------------------------------- prompts
def test_phrase_initialised_prompt_equals_the_hand_written_prompt(vit):
    """With as many context tokens as the phrase has, the initial prompt IS 'a photo of a <class>.'"""
    learner = PromptLearner(vit, CLASSES, n_ctx=4, init="phrase", init_phrase="a photo of a")
    expected = vit.encode_text([f"a photo of a {name}." for name in CLASSES], normalize=True)
    torch.testing.assert_close(learner(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["dualcoop", "promptmlr"])
def test_fixed_prompts_encode_once_and_give_the_same_scores(vit, name, monkeypatch):
    """Evaluation encodes the prompts once per block, not once per batch, with identical logits;
    a forward with gradients inside the block, and any forward after it, encode afresh."""
    method = build_method(name, vit, CLASSES).eval()
    batches = [_batch(vit, seed=seed)[0] for seed in range(3)]
    with torch.no_grad():
        expected = [method(features).logits for features in batches]
    calls = []
    original = vit.encode_text_embeddings
    monkeypatch.setattr(vit, "encode_text_embeddings", lambda *args: calls.append(1) or original(*args))
    learners = sum(isinstance(module, PromptLearner) for module in method.modules())
    with torch.no_grad(), method.fixed_prompts():
        logits = [method(features).logits for features in batches]
    assert len(calls) == learners  # 3 batches, one encoding per prompt learner
    for got, want in zip(logits, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with method.fixed_prompts():
        calls.clear()
        method(batches[0]).logits.sum().backward()  # training inside the block is not served stale prompts
        assert len(calls) == learners and method.positive.context.grad is not None
    calls.clear()
    with torch.no_grad():
        method(batches[0])
    assert len(calls) == learners


def test_shared_context_has_one_set_of_vectors(vit):
    learner = PromptLearner(vit, CLASSES, n_ctx=8, class_specific=False, init="random")
    assert learner.context.shape == (8, vit.token_embedding.embedding_dim)
    assert learner().shape == (len(CLASSES), vit.embed_dim)


def test_description_feature_init_starts_at_the_description_ensemble(vit):
    from promptmlr.models.text import class_text_features

    target = class_text_features(vit, CLASSES, descriptions=DESCRIPTIONS)
    for offset_std in (None, 1.0):  # with PositiveCoOp's text offset too: the description features still
        learner = PromptLearner(vit, CLASSES, init="descriptions-features", descriptions=DESCRIPTIONS,
                                text_offset_std=offset_std)
        torch.testing.assert_close(learner(), target, rtol=0, atol=1e-5)


def test_description_token_init_copies_the_description_tokens(vit):
    learner = PromptLearner(vit, CLASSES, n_ctx=16, init="descriptions-tokens", descriptions=DESCRIPTIONS)
    ids = vit.tokenize([DESCRIPTIONS["dog"][0]])
    length = int(vit.eot_positions(ids)) - 1
    torch.testing.assert_close(learner.context[1, -length:], vit.token_embedding(ids)[0, 1:1 + length])


def test_prompt_init_errors(vit):
    with pytest.raises(ValueError, match="needs class descriptions"):
        PromptLearner(vit, CLASSES, init="descriptions-tokens")
    with pytest.raises(ValueError, match="more than n_ctx=2"):
        PromptLearner(vit, CLASSES, n_ctx=2, init_phrase="a photo of a")
    with pytest.raises(ValueError, match="exceed the text encoder's 77 positions"):
        PromptLearner(vit, CLASSES, n_ctx=80, init="random")


# ------------------------------------------------------------------------------------------- head
def test_head_never_materialises_classes_by_locations_by_dims():
    """Every tensor saved for backward stays far below B*C*HW*D elements."""
    batch, classes, locations, dims = 2, 60, 49, 32
    head = SemanticDecouplingHead(dims, classes, torch.randn(classes, dims))
    dense = torch.randn(batch, locations, dims, requires_grad=True)
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        category, attention = head(dense)
    category.sum().backward()
    assert category.shape == (batch, classes, dims) and attention.shape == (batch, classes, locations)
    assert max(sizes) <= batch * classes * locations  # linear in C*HW (and in C*D), not C*HW*D
    assert head.estimate_activation_bytes(batch, locations, dims) < 4 * batch * classes * locations * dims / 4


def test_head_pools_where_the_query_matches():
    """A location that matches one class's query dominates that class's feature."""
    dims = 8
    queries = torch.eye(dims)[:2]
    head = SemanticDecouplingHead(dims, 2, temperature=50.0)
    dense = 0.1 * torch.randn(1, 9, dims)
    dense[0, 4] = queries[0] * 3
    dense[0, 7] = queries[1] * 3
    _, attention = head(dense, queries)
    assert attention[0, 0].argmax() == 4 and attention[0, 1].argmax() == 7
    assert attention[0, 0, 4] > 0.9


# ----------------------------------------------------------------------------------- descriptions
def test_descriptions_yaml_and_text_formats(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text("# my classes\ncat: a furry pet; whiskers and a tail\ndog: a loyal pet\n")
    assert load_descriptions(text) == {"cat": ["a furry pet", "whiskers and a tail"], "dog": ["a loyal pet"]}
    bad = tmp_path / "bad.txt"
    bad.write_text("cat a furry pet\n")
    with pytest.raises(DescriptionsError, match="bad.txt, line 1"):
        load_descriptions(bad)


def test_descriptions_that_miss_or_add_classes_are_listed():
    with pytest.raises(DescriptionsError, match=r"missing classes \['dog'\]; unknown classes \['cow'\]"):
        check_classes({"cat": ["x"], "cow": ["y"]}, ["cat", "dog"])


@pytest.mark.parametrize("dataset,count", [("voc2007", 20), ("coco2014", 80), ("nuswide", 81), ("vg200", 200),
                                           ("synthetic", 40)])
def test_shipped_descriptions_cover_their_dataset(dataset, count):
    descriptions = load_descriptions(shipped_descriptions_path(dataset))
    assert len(descriptions) == count
    assert all(3 <= len(phrases) <= 5 for phrases in descriptions.values())


# ------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("name, options", [(name, {}) for name in list_methods()]
                         + [("promptmlr", {**BRANCHES, "branch_losses": True})])
def test_export_then_import_gives_identical_logits(tmp_path, vit, name, options):
    torch.manual_seed(1)
    method = build_method(name, vit, CLASSES, DESCRIPTIONS, **options)
    with torch.no_grad():  # make the learned state differ from a fresh initialisation
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    features, _ = _batch(vit)
    path = save_prompts(method, tmp_path / "prompts.safetensors", thresholds=[0.5] * 4, metrics={"mAP": 1.0},
                        mask_sha256="ab" * 32)
    loaded, header = load_prompts(path)
    torch.testing.assert_close(loaded.eval()(features).logits, method.eval()(features).logits, rtol=0, atol=0)
    assert header["backbone"]["fingerprint"] == vit.fingerprint and header["mask_sha256"] == "ab" * 32
    assert header["class_names"] == CLASSES and header["method"] == name
    assert not any(key.startswith("backbone.") for key in load_file(path))


def test_promptmlr_enhancement_has_its_own_attention_scale_defaulting_to_the_heads(vit):
    assert build_method("promptmlr", vit, CLASSES, attention_temperature=7.0).enhancement.attention_scale == 7.0
    own = build_method("promptmlr", vit, CLASSES, attention_temperature=7.0, enhance_temperature=3.0)
    assert own.enhancement.attention_scale == 3.0
    with pytest.raises(ConfigError, match="enhance_temperature"):
        build_method("promptmlr", vit, CLASSES, enhance_temperature=0)


def test_a_file_written_before_an_option_existed_loads_as_it_was_trained(tmp_path, vit):
    """A promptmlr file whose header lacks the 'enhance' option (an older file) was trained without
    the enhancement: it loads that way, whatever the current default says."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from promptmlr.prompt_files import HEADER_KEY

    method = build_method("promptmlr", vit, CLASSES, enhance=False)
    path = save_prompts(method, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
    header["method_config"] = {key: value for key, value in header["method_config"].items()
                               if not key.startswith("enhance")}
    header["format_version"] = 1  # as such a file was written
    save_file(load_file(path), str(path), metadata={HEADER_KEY: json.dumps(header)})
    loaded, _ = load_prompts(path)
    assert loaded.enhancement is None
    features, _ = _batch(vit)
    torch.testing.assert_close(loaded(features).logits, method(features).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dualcoop", "positivecoop"])
def test_region_methods_keep_the_mean_token_as_the_anchors_location_0(name):
    """On a ResNet the softmax runs over the mean token and the grid (DualCoOp's code): the logits are
    the region aggregation over both; heatmaps keep the grid's own weights."""
    from promptmlr.models.dualcoop import region_aggregation

    rn = create_backbone("openclip:promptmlr-tiny-rn")
    features, _ = _separable_batch(rn)
    torch.manual_seed(0)
    method = build_method(name, rn, CLASSES)
    output = method(features)
    dense = features.dense_features
    with_token = torch.cat([dense.mean(dim=1, keepdim=True) + rn.mean_token_offset(), dense], dim=1)
    positive, negative, weights = region_aggregation(with_token, method.positive(), method.negative(), 20.0)
    torch.testing.assert_close(output.logits, 5.0 * (positive - negative))
    torch.testing.assert_close(output.attention, weights[..., 1:] / weights[..., 1:].sum(-1, keepdim=True))
    assert output.attention_maps().shape[-2:] == features.grid
    torch.manual_seed(0)
    without = build_method(name, rn, CLASSES, mean_token=False)
    assert (without(features).logits - output.logits).abs().max() > 1e-3


def test_a_dualcoop_file_from_before_the_mean_token_loads_without_it(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from promptmlr.prompt_files import HEADER_KEY

    rn = create_backbone("openclip:promptmlr-tiny-rn")
    method = build_method("dualcoop", rn, CLASSES, mean_token=False)
    path = save_prompts(method, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
    del header["method_config"]["mean_token"]
    header["format_version"] = 1  # as such a file was written
    save_file(load_file(path), str(path), metadata={HEADER_KEY: json.dumps(header)})
    loaded, _ = load_prompts(path)
    assert loaded.mean_token_offset is None and loaded.config.mean_token is False


def test_a_resnet_file_learned_on_the_earlier_pool_resize_warns_when_loaded(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from promptmlr.prompt_files import HEADER_KEY

    rn = create_backbone("openclip:promptmlr-tiny-rn", image_size=96)  # off its native 64 px: the pool is resized
    path = save_prompts(build_method("dualcoop", rn, CLASSES), tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[HEADER_KEY])
    assert header["backbone"].pop("attnpool_resize") == "bicubic"
    header["format_version"] = 1  # as such a file was written
    save_file(load_file(path), str(path), metadata={HEADER_KEY: json.dumps(header)})
    with pytest.warns(UserWarning, match="resized bicubic-antialiased; this backbone resizes it bicubic.*learn the "
                                         "prompts again"):
        load_prompts(path, backbone=rn)
    assert create_backbone("openclip:promptmlr-tiny-rn").describe().get("attnpool_resize") is None


@pytest.mark.slow
def test_a_file_for_another_backbone_or_other_classes_is_refused(tmp_path, vit):
    path = save_prompts(build_method("dualcoop", vit, CLASSES), tmp_path / "p.safetensors")
    with pytest.raises(PromptsFileError, match=r"learned on 'openclip:promptmlr-tiny-vit' \(weights"):
        load_prompts(path, backbone=create_backbone(TINY_SPECS[1]))
    with pytest.raises(PromptsFileError, match="prompts for 4 classes, but the dataset has 3"):
        load_prompts(path, class_names=CLASSES[:3])
    with pytest.raises(PromptsFileError, match="learned for other classes"):
        load_prompts(path, class_names=list(reversed(CLASSES)))
    not_prompts = tmp_path / "x.safetensors"
    not_prompts.write_bytes(b"garbage")
    with pytest.raises(PromptsFileError, match="not a safetensors prompts file"):
        read_header(not_prompts)


def test_text_embeddings_export_is_a_plain_classifier(tmp_path, vit):
    method = build_method("linear", vit, CLASSES)
    expected = method.class_embeddings()
    stored = load_file(export_text_embeddings(method, tmp_path / "emb.safetensors"))["text_embeddings"]
    torch.testing.assert_close(stored, expected)
    array = np.load(export_text_embeddings(method, tmp_path / "emb.npy"))
    np.testing.assert_allclose(array, expected.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.safetensors"]  # no temp files left


def test_a_method_without_class_vectors_refuses_the_export_with_one_line(tmp_path, vit):
    method = build_method("clsl", vit, CLASSES)
    with pytest.raises(ConfigError, match="method clsl scores classes with MLPs .* export the prompts file"):
        export_text_embeddings(method, tmp_path / "emb.safetensors")
    assert list(tmp_path.iterdir()) == []
