"""Frozen CLIP backbones: text path, dense features, resolution, freezing, loading and its failures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from promptmlr.backbones import BackboneLoadError, create_backbone, network
from promptmlr.backbones.openclip import resize_grid_embedding
from tests.conftest import TINY_SPECS

PROMPTS = ["a photo of a traffic light.", "a dog lying on a red sofa", "x"]
TRAFFIC_LIGHT_IDS = [49406, 320, 1125, 539, 320, 3399, 1395, 269, 49407]  # ../shared tokenizer README


@pytest.fixture(scope="module", params=TINY_SPECS)
def openclip_backbone(request):
    return create_backbone(request.param)


@pytest.fixture(scope="module")
def hf_backbone(tiny_hf_dir):
    return create_backbone(f"hf:{tiny_hf_dir}")


# ------------------------------------------------------------------------------------------ text path
def test_openclip_embedding_text_forward_equals_library_encode_text(openclip_backbone):
    ids = openclip_backbone.tokenize(PROMPTS)
    expected = openclip_backbone.model.encode_text(ids)
    torch.testing.assert_close(openclip_backbone.encode_text(PROMPTS), expected, rtol=0, atol=1e-5)


def test_hf_embedding_text_forward_equals_library_text_features(hf_backbone):
    ids = hf_backbone.tokenize(PROMPTS)
    expected = hf_backbone.model.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(hf_backbone.encode_text(PROMPTS), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_both_tokenizers_give_the_standard_clip_ids(openclip_backbone, hf_backbone):
    for backbone in (openclip_backbone, hf_backbone):
        ids = backbone.tokenize(PROMPTS[:1])
        assert ids.shape == (1, backbone.context_length)
        assert ids[0, :len(TRAFFIC_LIGHT_IDS)].tolist() == TRAFFIC_LIGHT_IDS
        assert backbone.eot_positions(ids).tolist() == [len(TRAFFIC_LIGHT_IDS) - 1]


def test_a_shared_prefix_encodes_as_the_whole_prompts_do(openclip_backbone):
    """Class-agnostic contexts: the prefix computed once must give the features, and the gradients
    to the context, of every prompt run whole (the base class's concatenation)."""
    from promptmlr.backbones.base import FrozenCLIP
    from promptmlr.backbones.openclip import _plain_block
    from promptmlr.models.prompts import PromptLearner


    assert all(_plain_block(block) for block in openclip_backbone.text.transformer.resblocks)  # not the fallback
    torch.manual_seed(0)
    learner = PromptLearner(openclip_backbone, ["cat", "traffic light", "a very long name of a class"], n_ctx=5,
                            class_specific=False, init="random")
    prefix = torch.cat([learner.prefix[0], learner.context])
    fast = openclip_backbone.encode_text_with_shared_prefix(prefix, learner.suffix, learner.eot)
    whole = FrozenCLIP.encode_text_with_shared_prefix(openclip_backbone, prefix, learner.suffix, learner.eot)
    torch.testing.assert_close(fast, whole, rtol=1e-5, atol=1e-5)
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), learner.context)
    (whole_grad,) = torch.autograd.grad(whole.square().sum(), learner.context)
    torch.testing.assert_close(fast_grad, whole_grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(learner(), torch.nn.functional.normalize(whole, dim=-1), rtol=1e-5, atol=1e-5)


def test_replacing_token_embeddings_changes_the_text_feature(openclip_backbone):
    """Learnable context vectors stand in for tokens: the text path must depend on the embeddings."""
    ids = openclip_backbone.tokenize(["a photo of a cat"])
    embeddings = openclip_backbone.token_embedding(ids)
    eot = openclip_backbone.eot_positions(ids)
    base = openclip_backbone.encode_text_embeddings(embeddings, eot)
    embeddings[:, 1:4] = torch.randn_like(embeddings[:, 1:4])
    assert not torch.allclose(openclip_backbone.encode_text_embeddings(embeddings, eot), base)


# ---------------------------------------------------------------------------------------- image path
def test_dense_feature_shapes_and_global_matches_library(openclip_backbone, hf_backbone):
    for backbone in (openclip_backbone, hf_backbone):
        size = backbone.image_size
        images = torch.randn(3, 3, size, size)
        features = backbone.encode_image(images)
        height, width = features.grid
        assert features.global_features.shape == (3, backbone.embed_dim)
        assert features.dense_features.shape == (3, height * width, backbone.embed_dim)
    images = torch.randn(3, 3, openclip_backbone.image_size, openclip_backbone.image_size)
    torch.testing.assert_close(openclip_backbone.encode_image(images).global_features,
                               openclip_backbone.model.encode_image(images), rtol=0, atol=1e-5)


def test_vit_token_mode_is_the_final_patch_tokens_projected():
    backbone = create_backbone("openclip:promptmlr-tiny-vit", dense_mode="tokens")
    images = torch.randn(2, 3, 32, 32)
    visual = backbone.model.visual
    visual.output_tokens = True
    try:
        _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    torch.testing.assert_close(backbone.encode_image(images).dense_features, tokens @ visual.proj)


@pytest.mark.slow
def test_vit_value_mode_differs_from_tokens_and_is_local():
    """MaskCLIP's value path has no attention mixing: a change in one patch moves only its feature."""
    backbone = create_backbone("openclip:promptmlr-tiny-vit", dense_mode="value")
    tokens = create_backbone("openclip:promptmlr-tiny-vit", dense_mode="tokens")
    images = torch.randn(1, 3, 32, 32)
    value_features = backbone.encode_image(images).dense_features
    assert not torch.allclose(value_features, tokens.encode_image(images).dense_features)
    with torch.no_grad():  # make the last block's input local too: zero the attention of earlier blocks
        for block in backbone.model.visual.transformer.resblocks[:-1]:
            block.attn.out_proj.weight.zero_()
            block.attn.out_proj.bias.zero_()
    before = backbone.encode_image(images).dense_features
    changed = images.clone()
    changed[..., :8, :8] += 1.0  # the top-left 8x8 patch only
    after = backbone.encode_image(changed).dense_features
    moved = (after - before).abs().amax(dim=-1)[0]
    assert moved[0] > 1e-4 and torch.all(moved[1:] < 1e-5)


def test_resnet_dense_features_are_the_attention_pool_values():
    """With query and key projections zeroed the pool attends uniformly, so CLIP's global feature is
    the mean of the value-path features of the mean token and of every location."""
    backbone = create_backbone("openclip:promptmlr-tiny-rn")
    pool = backbone.model.visual.attnpool
    with torch.no_grad():
        for projection in (pool.q_proj, pool.k_proj):
            projection.weight.zero_()
            projection.bias.zero_()
    images = torch.randn(2, 3, 64, 64)
    features = backbone.encode_image(images)
    visual = backbone.model.visual
    trunk = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
    mean_token = trunk.flatten(2).mean(dim=2) + pool.positional_embedding[0]
    mean_value = pool.c_proj(pool.v_proj(mean_token))
    locations = features.dense_features.shape[1]
    expected = (mean_value + features.dense_features.sum(dim=1)) / (locations + 1)
    torch.testing.assert_close(features.global_features, expected, rtol=1e-4, atol=1e-5)


def test_resnet_mean_token_offset_recovers_the_pools_mean_token_off_native_size():
    """DualCoOp's dense map keeps the attention pool's mean token as location 0; the backbone gives it
    as the dense mean plus a constant, which must be that token exactly, also with a resized pool."""
    backbone = create_backbone("openclip:promptmlr-tiny-rn", image_size=96)
    images = torch.randn(2, 3, 96, 96)
    visual = backbone.model.visual
    pool = visual.attnpool
    with torch.no_grad():
        trunk = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
        expected = pool.c_proj(pool.v_proj(trunk.flatten(2).mean(dim=2) + pool.positional_embedding[0]))
        dense = backbone.encode_image(images).dense_features
    torch.testing.assert_close(dense.mean(dim=1) + backbone.mean_token_offset(), expected, rtol=1e-4, atol=1e-6)
    assert create_backbone("openclip:promptmlr-tiny-vit").mean_token_offset() is None


def test_resnet_pool_is_resized_as_dualcoop_resizes_it():
    """Plain bicubic (DualCoOp's build_model_conv_proj), not open_clip's antialiased ViT resize: at
    448 px the two differ, and only the anchor's gives the anchor's dense map."""
    native = create_backbone("openclip:promptmlr-tiny-rn").model.visual.attnpool.positional_embedding
    resized = create_backbone("openclip:promptmlr-tiny-rn", image_size=128).model.visual.attnpool.positional_embedding
    side = int((native.shape[0] - 1) ** 0.5)
    grid = native[1:].T.reshape(1, -1, side, side)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic").reshape(-1, 16).T
    torch.testing.assert_close(resized[1:], expected)
    torch.testing.assert_close(resized[0], native[0])


# ---------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("spec,size,grid", [("openclip:promptmlr-tiny-vit", 48, (6, 6)),
                                            ("openclip:promptmlr-tiny-rn", 128, (4, 4))])
@pytest.mark.slow
def test_resolution_interpolates_position_embeddings(spec, size, grid):
    native = create_backbone(spec)
    resized = create_backbone(spec, image_size=size)
    features = resized.encode_image(torch.randn(2, 3, size, size))
    assert features.grid == grid and features.dense_features.shape[1] == grid[0] * grid[1]
    assert resized.fingerprint == native.fingerprint  # the same weights, whatever the input size
    assert resized.transform()(_pil_image(70, 50)).shape == (3, size, size)


def test_hf_resolution_interpolates(tiny_hf_dir):
    backbone = create_backbone(f"hf:{tiny_hf_dir}", image_size=48)
    assert backbone.encode_image(torch.randn(1, 3, 48, 48)).grid == (6, 6)


def test_resize_grid_embedding_keeps_class_token_and_constants():
    embedding = torch.cat([torch.randn(1, 8), torch.full((16, 8), 0.5)])
    resized = resize_grid_embedding(embedding, (6, 6))
    assert resized.shape == (37, 8)
    torch.testing.assert_close(resized[0], embedding[0])
    torch.testing.assert_close(resized[1:], torch.full((36, 8), 0.5))
    assert resize_grid_embedding(embedding, (4, 4)) is embedding


def test_input_size_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        create_backbone("openclip:promptmlr-tiny-vit", image_size=36)


# -------------------------------------------------------------------------------------------- frozen
class _Downstream(nn.Module):
    """A trainable head on a frozen backbone, as a method module will be."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, 3)

    def forward(self, images):
        features = self.backbone.encode_image(images)
        return self.head(features.dense_features.mean(dim=1)) + self.backbone.encode_text(["a", "b", "c"]).sum()


def test_backbone_is_unchanged_and_gradient_free_after_a_downstream_step(openclip_backbone):
    model = _Downstream(openclip_backbone)
    before = {name: p.clone() for name, p in openclip_backbone.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    assert not openclip_backbone.training and model.head.training
    size = openclip_backbone.image_size
    model(torch.randn(2, 3, size, size)).sum().backward()
    optimizer.step()
    assert model.head.weight.grad is not None
    for name, parameter in openclip_backbone.named_parameters():
        assert parameter.grad is None and not parameter.requires_grad
        assert torch.equal(parameter, before[name]), name


def test_backbone_weights_never_enter_a_parent_state_dict(hf_backbone):
    model = _Downstream(hf_backbone)
    state = model.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    before = {name: p.clone() for name, p in hf_backbone.named_parameters()}
    model.load_state_dict(state, strict=True)  # loads although the backbone's weights are absent
    assert all(torch.equal(p, before[name]) for name, p in hf_backbone.named_parameters())


@pytest.mark.slow
def test_random_weights_are_reproducible():
    assert create_backbone(TINY_SPECS[0]).fingerprint == create_backbone(TINY_SPECS[0]).fingerprint
    assert create_backbone(TINY_SPECS[0]).fingerprint != create_backbone(TINY_SPECS[1]).fingerprint


# ------------------------------------------------------------------------------------ load failures
def test_unreachable_hub_fails_at_once_with_instructions(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(network, "host_reachable", lambda url, timeout=0: False)
    with pytest.raises(BackboneLoadError, match=r"unreachable.*openclip:RN101-quickgelu:/path/to/"):
        create_backbone("openclip:RN101:openai")
    with pytest.raises(BackboneLoadError, match=r"unreachable.*hf download openai/clip-vit-base-patch16"):
        create_backbone("hf:openai/clip-vit-base-patch16")


@pytest.mark.parametrize("spec,message", [
    ("openclip:RN101:no-such-tag", r"no pretrained tag 'no-such-tag'.*known tags: \['openai'"),
    ("openclip:RN101:/nowhere/RN101.pt", "does not exist"),
    ("openclip:NoSuchArch", "no architecture 'NoSuchArch'"),
    ("hf:./no/such/dir", "neither an existing directory nor a hub id"),
])
def test_bad_specs_name_what_was_tried(spec, message):
    with pytest.raises(BackboneLoadError, match=message):
        create_backbone(spec)


def test_unknown_spec_scheme_lists_the_forms():
    with pytest.raises(ValueError, match="openclip:<arch>"):
        create_backbone("timm:resnet50")


def test_incomplete_hf_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackboneLoadError, match=r"missing \['preprocessor_config.json'\]"):
        create_backbone(f"hf:{tmp_path}")


def test_a_corrupt_checkpoint_file_is_refused_not_replaced_by_random_weights(tmp_path):
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneLoadError, match="could not load"):
        create_backbone(f"openclip:promptmlr-tiny-vit:{checkpoint}")


@pytest.mark.slow
def test_a_local_checkpoint_file_loads_exactly(tmp_path):
    source = create_backbone("openclip:promptmlr-tiny-rn")
    checkpoint = tmp_path / "tiny.bin"
    with torch.no_grad():
        state = {name: tensor + 1.0 if tensor.is_floating_point() else tensor
                 for name, tensor in source.model.state_dict().items()}
    torch.save(state, checkpoint)
    loaded = create_backbone(f"openclip:promptmlr-tiny-rn:{checkpoint}")
    assert loaded.fingerprint != source.fingerprint
    torch.testing.assert_close(loaded.model.visual.attnpool.c_proj.weight, state["visual.attnpool.c_proj.weight"])


def _pil_image(width: int, height: int):
    from PIL import Image

    return Image.new("RGB", (width, height), (120, 30, 200))


def test_dropping_the_padding_after_the_longest_prompt_changes_nothing(openclip_backbone):
    """Causal attention: the end-of-text feature ignores later positions, so full-length and
    truncated sequences agree (up to float rounding)."""
    ids = openclip_backbone.tokenize(PROMPTS)
    eot = openclip_backbone.eot_positions(ids)
    length = openclip_backbone.text_length(eot)
    assert length == int(eot.max()) + 1 < openclip_backbone.context_length
    full = openclip_backbone.encode_text_embeddings(openclip_backbone.token_embedding(ids), eot)
    short = openclip_backbone.encode_text_embeddings(openclip_backbone.token_embedding(ids[:, :length]), eot)
    torch.testing.assert_close(short, full, rtol=0, atol=1e-5)
