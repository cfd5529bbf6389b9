"""Zero-shot CLIP through the one scoring path, class text features, and the command-line skeleton."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from promptmlr.backbones import create_backbone
from promptmlr.cli import main
from promptmlr.models import build_method
from promptmlr.models.text import class_text_features
from promptmlr.scoring import image_batches, score

CLASSES = ["cat", "dog", "traffic light"]


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("openclip:promptmlr-tiny-vit")


def _zeroshot(backbone, images, batch_size=64, **options) -> torch.Tensor:
    method = build_method("zeroshot", backbone, CLASSES, **options)
    return torch.from_numpy(score(method, image_batches(backbone, images, batch_size), logits=True, progress=False))


def test_scores_are_scaled_cosines_of_global_image_and_class_features(backbone):
    images = torch.randn(5, 3, 32, 32)
    scores = _zeroshot(backbone, images, batch_size=2, templates=["a photo of a {}.", "a {}"])
    text = class_text_features(backbone, CLASSES, templates=["a photo of a {}.", "a {}"])
    image = torch.nn.functional.normalize(backbone.encode_image(images).global_features, dim=-1)
    torch.testing.assert_close(scores, backbone.logit_scale * image @ text.T)
    assert scores.shape == (5, 3)


def test_template_ensemble_is_the_normalised_mean_of_prompt_features(backbone):
    features = class_text_features(backbone, ["cat"], templates=["a photo of a {}.", "a sketch of a {}."])
    prompts = backbone.encode_text(["a photo of a cat.", "a sketch of a cat."], normalize=True)
    torch.testing.assert_close(features[0], torch.nn.functional.normalize(prompts.mean(0), dim=-1))


def test_description_ensemble_and_missing_descriptions(backbone):
    descriptions = {"cat": ["a small furry pet with whiskers"], "dog": ["a barking pet"],
                    "traffic light": ["a pole with red, amber and green lamps"]}
    features = class_text_features(backbone, CLASSES, descriptions=descriptions)
    torch.testing.assert_close(features[2], backbone.encode_text(descriptions["traffic light"], normalize=True)[0])
    with pytest.raises(ValueError, match=r"no descriptions for classes: \['traffic light'\]"):
        class_text_features(backbone, CLASSES, descriptions={"cat": ["x"], "dog": ["y"]})


def test_pil_images_go_through_the_eval_transform_and_standardize(backbone):
    images = [Image.new("L", (40, 24), 90), Image.new("RGB", (20, 50), (10, 200, 30))]
    scores = _zeroshot(backbone, images, standardize=True)
    expected = _zeroshot(backbone, torch.stack([backbone.transform()(i.convert("RGB")) for i in images]),
                         standardize=True)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(scores.mean(dim=1), torch.zeros(2), atol=1e-5, rtol=0)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("tune", "eval", "predict", "export", "zeroshot", "data"):
        assert command in out


def test_console_script_reports_version():
    result = subprocess.run([sys.executable, "-m", "promptmlr", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("promptmlr ")


def test_config_words_are_not_yaml_1_1_booleans(tmp_path):
    """`off`, `no`, `on` reach the settings that take them as words, in a file and in --set; only
    true/false are booleans, and a word given to a boolean setting is an error that names it."""
    from promptmlr.config import parse_assignment, resolve_config
    from promptmlr.errors import ConfigError

    config_file = tmp_path / "run.yaml"
    config_file.write_text("train:\n  cache:\n    enabled: off\n  mixed_precision: no\n  cutout: true\n")
    config = resolve_config("synthetic", config_file)
    assert (config.train.cache.enabled, config.train.mixed_precision, config.train.cutout) == ("off", "no", True)
    config = resolve_config("synthetic", overrides=[parse_assignment("train.cache.enabled=on"),
                                                    parse_assignment("train.randaugment=false")])
    assert (config.train.cache.enabled, config.train.randaugment) == ("on", False)
    with pytest.raises(ConfigError, match=r"train.cutout: expected bool, got 'yes'"):
        resolve_config("synthetic", overrides=[parse_assignment("train.cutout=yes")])
