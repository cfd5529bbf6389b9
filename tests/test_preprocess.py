"""Train and eval transforms built from a backbone's preprocessing (promptmlr.backbones.preprocess)."""

from __future__ import annotations

import torch
from PIL import Image

from promptmlr.backbones.preprocess import PreprocessConfig, build_transform

PREPROCESS = PreprocessConfig(48, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))


def test_eval_transform_resizes_the_whole_image_and_normalises():
    image = Image.new("RGB", (100, 30), (255, 102, 0))
    out = build_transform(PREPROCESS)(image)
    assert out.shape == (3, 48, 48)
    expected = torch.tensor([(1.0 - 0.5) / 0.2, (0.4 - 0.4) / 0.2, (0.0 - 0.3) / 0.2])
    torch.testing.assert_close(out[:, 24, 24], expected, atol=1e-2, rtol=0)


def test_train_transform_augments_at_the_same_resolution():
    image = Image.effect_noise((80, 60), 40).convert("RGB")
    train = build_transform(PREPROCESS, train=True, randaugment=True, cutout=True)
    torch.manual_seed(0)
    first, second = train(image), train(image)
    assert first.shape == second.shape == (3, 48, 48)
    assert not torch.equal(first, second)
