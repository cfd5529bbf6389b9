"""Zero-shot CLIP through the one scoring path, class text features, the command-line skeleton, and a
configuration that explains itself (each field's help and allowed values, ``promptmlr config``)."""

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
    for command in ("tune", "eval", "predict", "export", "zeroshot", "data", "config"):
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


# ------------------------------------------------------------------------ configuration: help, promptmlr config
def _config_classes() -> dict[str, type]:
    """Every configuration dataclass: the run's sections, nested ones included, and each method's Config."""
    import dataclasses

    from promptmlr.config import RunConfig
    from promptmlr.models.factory import METHODS

    found: dict[str, type] = {f"method {name}": METHODS.get(name).Config for name in METHODS.names()}
    pending = [RunConfig()]
    while pending:
        config = pending.pop()
        found[type(config).__name__] = type(config)
        pending += [value for value in vars(config).values() if dataclasses.is_dataclass(value)]
    return found


def test_every_config_field_has_one_line_of_help():
    import dataclasses

    classes = _config_classes()
    assert {"RunConfig", "DataConfig", "ModelConfig", "TrainConfig", "LossConfig", "RecoveryConfig",
            "CacheConfig", "method zeroshot", "method promptmlr"} <= set(classes)
    for owner, config_class in classes.items():
        for field in dataclasses.fields(config_class):
            help_text = field.metadata.get("help", "")
            assert help_text.strip() and "\n" not in help_text, f"{owner}.{field.name} has no one-line help"


def test_blending_options_default_to_the_values_promptmlr_had_built_in():
    from promptmlr.models.dsrb import DSRBConfig
    from promptmlr.models.promptmlr import PromptMLRConfig

    for config in (PromptMLRConfig(), DSRBConfig()):
        assert (config.instance_alpha, config.prototype_beta, config.regions, config.prototype_momentum) == (
            0.5, 0.5, 2, 0.9)
    assert (PromptMLRConfig().instance_blend, DSRBConfig().instance_blend) == (False, True)
    promptmlr = PromptMLRConfig()  # its blending keeps its own rules; DSRB's are its authors' (test_authors_dsrb.py)
    assert (promptmlr.blend_shares, promptmlr.blend_targets, promptmlr.blend_entries, promptmlr.prototype_region,
            promptmlr.prototype_update) == ("fixed", "hard", "blended", "own", "moving_average")


@pytest.mark.parametrize("method, options, message", [
    ("zeroshot", {"templates": []}, "templates must hold at least one template"),
    ("zeroshot", {"templates": ["a photo"]}, r"templates: 'a photo' must hold \{\} where the class name goes"),
    ("zeroshot", {"templates": ["a {name}"]}, "must hold"),
    ("linear", {"features": "pooled"}, "features must be one of global, dense, got 'pooled'"),
    ("linear", {"init_scale": 0}, "init_scale must be > 0, got 0"),
    ("promptmlr", {"regions": 0}, "regions must be >= 1, got 0"),
    ("promptmlr", {"instance_alpha": 1.0}, r"instance_alpha must be >= 0 and < 1, got 1.0"),
])
def test_baseline_and_blending_options_refuse_bad_values(method, options, message):
    from promptmlr.errors import ConfigError
    from promptmlr.models.factory import method_options

    with pytest.raises(ConfigError, match=message):
        method_options(method, options)


def _config_lines(capsys, *argv: str) -> dict[str, str]:
    """``promptmlr config ...``'s table as {key: the rest of its line}."""
    assert main(["config", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "DEFAULT", "ALLOWED", "HELP"]
    return {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}


def test_config_command_shows_value_default_allowed_values_and_help(capsys):
    lines = _config_lines(capsys, "dualcoop", "--dataset", "synthetic", "--set", "model.options.n_ctx=8")
    # Its recipe is the authors' SGD; the default and the allowed values follow.
    assert lines["train.optimizer"].split()[:7] == ["sgd", "adamw", "adamw", "|", "adam", "|", "sgd"]
    assert "optimiser of the method's learnable parameters" in lines["train.optimizer"]
    assert lines["model.options.n_ctx"].split()[:4] == ["8", "16", ">=", "1"]
    assert "context tokens" in lines["model.options.n_ctx"]
    assert "model.options.map_scale" in lines and "model.options.enhance" not in lines  # dualcoop's options only
    # its sandbox recipe sets 50 epochs over configs/synthetic.yaml's 10; the dataclass default is 20
    assert lines["train.epochs"].split()[:2] == ["50", "20"]
    assert lines["model.method"].split()[:2] == ["dualcoop", "promptmlr"]


def test_config_api_rows_and_json_agree(capsys):
    import json

    import promptmlr

    rows = {row.key: row for row in promptmlr.describe_config("promptmlr", "synthetic")}
    lr = rows["train.lr"]  # configs/methods/synthetic/promptmlr.yaml: 0.005
    assert (lr.value, lr.default, lr.allowed) == (0.005, 0.002, "> 0") and lr.help
    assert rows["model.options.logit_scale"].default == 5.0
    assert {row.key: row.default for row in promptmlr.describe_config("sarl")}["model.options.logit_scale"] == 20.0
    assert main(["config", "promptmlr", "--json"]) == 0
    printed = {row["key"]: row for row in json.loads(capsys.readouterr().out)}
    assert printed["train.lr"] == lr.as_dict()
    assert printed["train.recovery.thresholds"]["allowed"] == "fixed | prior | calibrated"


def test_config_list_names_every_method_dataset_and_backbone(capsys):
    from promptmlr.models.factory import BUILTIN_METHODS

    assert main(["config", "--list"]) == 0
    out = capsys.readouterr().out
    methods = next(line for line in out.splitlines() if line.startswith("methods:"))
    assert methods.split(":", 1)[1].strip().split(", ") == list(BUILTIN_METHODS) and len(BUILTIN_METHODS) == 9
    for name in ("voc2007", "coco2014", "synthetic", "sandbox", "openclip:<arch>", "hf:<hub-id-or-dir>"):
        assert name in out


def test_config_command_reports_a_bad_key_as_one_line(capsys):
    assert main(["config", "--set", "train.optimizer=adagrad"]) == 1
    assert "train.optimizer must be one of adamw, adam, sgd, got 'adagrad'" in capsys.readouterr().err
