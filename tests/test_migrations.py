"""Files written by earlier versions (built here as that code wrote them) read back as they were
trained; files newer than this promptmlr, and pickles, are refused in one line."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import promptmlr
from promptmlr import migrations
from promptmlr.backbones import create_backbone
from promptmlr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from promptmlr.config import load_run_config, parse_assignment, resolve_config
from promptmlr.errors import ConfigError, PromptMLRError
from promptmlr.models import build_method, method_options
from promptmlr.prompt_files import HEADER_KEY, PromptsFileError, export_text_embeddings, load_prompts, save_prompts
from promptmlr.runs import holds_run, read_metrics, write_config, write_metrics, write_predictions
from tests.conftest import TINY_SPECS

CLASSES = ["cat", "dog", "traffic light", "red sofa"]
NEWER = "newer than promptmlr .* upgrade promptmlr"


def _one_line(error: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


# ----------------------------------------------------------------------------------- the table
def test_every_format_has_a_step_from_each_older_version_and_is_in_the_docstring():
    for kind, spec in migrations.FORMATS.items():
        assert sorted(spec.steps) == list(range(1, spec.version)), kind
        assert re.search(rf"^{kind}\s+{spec.name}\s+{spec.version}\s", migrations.__doc__, re.MULTILINE), kind


def test_upgrade_leaves_the_record_it_is_given_unchanged():
    record = {"model": {"method": "promptmlr", "options": {"blend_warmup_epochs": 3, "n_ctx": 4}},
              "train": {"warmup_epochs": 2.0, "recovery": {"warmup_epochs": 1}}}
    before = json.loads(json.dumps(record))
    upgraded = migrations.upgrade("run-config", record, "config.yaml")
    assert record == before
    blender = {"instance_alpha": 0.5, "prototype_beta": 0.5, "regions": 2, "prototype_momentum": 0.9}
    assert upgraded == {"model": {"method": "promptmlr", "options": {"known_only_epochs": 3, "n_ctx": 4,
                                                                     "enhance": False, **blender}},
                        "train": {"lr_warmup_epochs": 2.0, "recovery": {"known_only_epochs": 1}},
                        "format": "promptmlr-run-config", "format_version": migrations.FORMATS["run-config"].version}


# ------------------------------------------------------------------------------------ run configs
def _as_written_by_version_1(values: dict) -> dict:
    """A resolved config as ``config.yaml`` held it at version 1: no header, the old key names, and
    none of the options added during version 1."""
    values = json.loads(json.dumps(values))
    values["train"]["warmup_epochs"] = values["train"].pop("lr_warmup_epochs")
    values["train"]["recovery"]["warmup_epochs"] = values["train"]["recovery"].pop("known_only_epochs")
    model = values["model"]
    for old, new in migrations.RENAMED_OPTIONS_IN_V2.get(model["method"], {}).items():
        model["options"][old] = model["options"].pop(new)
    for key in migrations.V1_OPTION_VALUES.get(model["method"], {}):
        del model["options"][key]
    return values


@pytest.mark.parametrize("method", ["sst", "dsrb", "clsl", "promptmlr", "sarl", "dualcoop", "positivecoop", "linear"])
def test_an_old_run_folders_config_loads_with_todays_keys_and_its_values(tmp_path, method):
    overrides = [{"model": {"method": method}},
                 {"train": {"lr_warmup_epochs": 3.0, "recovery": {"known_only_epochs": 4}}}]
    if method in migrations.RENAMED_OPTIONS_IN_V2:
        overrides.append({"model": {"options": {"known_only_epochs": 5}}})
    today = resolve_config("synthetic", overrides=overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_as_written_by_version_1(today.to_dict()), sort_keys=False))
    added = migrations.V1_OPTION_VALUES.get(method, {})  # trained without them: their value from before
    expected = dataclasses.replace(today, model=dataclasses.replace(today.model, options={**today.model.options,
                                                                                          **added}))
    assert load_run_config(path) == expected
    assert "enhance" not in added or expected.model.options["enhance"] is False


def test_a_run_config_written_now_carries_its_header_and_reads_back_as_it_was(tmp_path):
    config = resolve_config("synthetic", overrides=[{"model": {"method": "sst"}}])
    write_config(tmp_path, config.to_dict())
    text = (tmp_path / "config.yaml").read_text()
    version = migrations.FORMATS["run-config"].version
    assert text.startswith(f"format: promptmlr-run-config\nformat_version: {version}\n")
    assert load_run_config(tmp_path / "config.yaml") == config
    assert resolve_config(None, tmp_path / "config.yaml") == config  # re-runnable with --config


def test_an_old_run_config_passed_as_config_reads_its_renamed_keys_with_todays_defaults(tmp_path):
    today = resolve_config("synthetic", overrides=[{"model": {"method": "dualcoop"}},
                                                   {"train": {"lr_warmup_epochs": 3.0}}])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_as_written_by_version_1(today.to_dict()), sort_keys=False))
    reused = resolve_config(None, path)  # a user's settings: options left out take today's defaults
    assert reused.train.lr_warmup_epochs == 3.0 and reused.model.options["mean_token"] is True
    assert load_run_config(path).model.options["mean_token"] is False  # the run itself: as it was trained


@pytest.mark.parametrize("assignment, message", [
    ("train.warmup_epochs=2", "'warmup_epochs' is now named 'lr_warmup_epochs'"),
    ("train.recovery.warmup_epochs=2", "'warmup_epochs' is now named 'known_only_epochs'"),
    ("model.options.blend_warmup_epochs=2", "'blend_warmup_epochs' is now named 'known_only_epochs'"),
])
def test_an_old_key_given_today_is_refused_naming_the_new_one(assignment, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config("synthetic", overrides=[{"model": {"method": "promptmlr"}}, parse_assignment(assignment)])


def test_a_run_config_from_a_newer_promptmlr_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    newer = migrations.FORMATS["run-config"].version + 1
    path.write_text(yaml.safe_dump({"format": "promptmlr-run-config", "format_version": newer,
                                    **resolve_config("synthetic").to_dict()}))
    for read in (lambda: load_run_config(path), lambda: resolve_config(None, path)):
        with pytest.raises(ConfigError, match=NEWER) as error:
            read()
        assert str(path) in _one_line(error)


# ---------------------------------------------------------------------------------- prompts files
def _header(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[HEADER_KEY])


def _rewrite_header(path: Path, header: dict) -> None:
    save_file(load_file(path), str(path), metadata={HEADER_KEY: json.dumps(header)})


@pytest.mark.parametrize("method", ["promptmlr", "sarl", "sst", "clsl", "dualcoop"])
def test_an_old_prompts_file_loads_into_the_same_method(tmp_path, vit, method):
    options = {"known_only_epochs": 5} if method in migrations.RENAMED_OPTIONS_IN_V2 else {}
    options.update(migrations.V1_OPTION_VALUES.get(method, {}))  # what such a file was trained with
    torch.manual_seed(0)
    original = build_method(method, vit, CLASSES, **options)
    path = save_prompts(original, tmp_path / "old.safetensors", thresholds=[0.4] * len(CLASSES))
    header = _header(path)
    header["format_version"] = 1
    stored = header["method_config"]
    for old, new in migrations.RENAMED_OPTIONS_IN_V2.get(method, {}).items():
        stored[old] = stored.pop(new)
    for added in migrations.V1_OPTION_VALUES.get(method, {}):
        for key in [key for key in stored if key.startswith(added)]:  # the option and those that came with it
            del stored[key]
    _rewrite_header(path, header)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ViT has no attention pool to warn about
        loaded, read = load_prompts(path, backbone=vit, class_names=CLASSES)
    assert loaded.config == original.config
    assert read["method_config"].items() <= dataclasses.asdict(original.config).items()  # today's names
    assert read["format_version"] == migrations.FORMATS["prompts"].version
    assert read["thresholds"] == [0.4] * len(CLASSES)
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    features = vit.encode_image(torch.randn(2, 3, vit.image_size, vit.image_size, generator=torch.Generator()))
    torch.testing.assert_close(loaded.eval()(features).logits, original.eval()(features).logits, rtol=0, atol=0)


# (the table of options a version added, the last prompts version and run-config version without them)
OPTIONS_ADDED = [(migrations.OPTION_VALUES_BEFORE_AUTHORS_TRAINING, 2, 3),
                 (migrations.OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING, 3, 4)]


@pytest.mark.parametrize("table, prompts_version, run_config_version, method", [
    (table, prompts_version, run_config_version, method)
    for table, prompts_version, run_config_version in OPTIONS_ADDED for method in sorted(table)])
def test_a_prompts_file_from_before_the_authors_training_loads_as_it_was_trained(
        tmp_path, vit, table, prompts_version, run_config_version, method):
    before = table[method]
    torch.manual_seed(0)
    original = build_method(method, vit, CLASSES, **before).eval()
    path = save_prompts(original, tmp_path / "old.safetensors")
    header = _header(path)
    header["format_version"] = prompts_version
    for option in before:
        del header["method_config"][option]
    _rewrite_header(path, header)
    loaded, read = load_prompts(path, backbone=vit, class_names=CLASSES)
    assert loaded.config == original.config and read["format_version"] == migrations.FORMATS["prompts"].version
    features = vit.encode_image(torch.randn(2, 3, vit.image_size, vit.image_size))
    torch.testing.assert_close(loaded.eval()(features).logits, original(features).logits, rtol=0, atol=0)
    kept = next(option for option in method_options(method, {}) if option not in before)
    recorded = {kept: method_options(method, {})[kept]}
    config = {"format": "promptmlr-run-config", "format_version": run_config_version,
              "model": {"method": method, "options": recorded}}
    upgraded = migrations.upgrade("run-config", config, "config.yaml")
    assert upgraded["model"]["options"] == {**before, **recorded}
    assert build_method(method, vit, CLASSES).config != original.config  # today's default is the authors'


def test_an_old_resnet_prompts_file_warns_only_where_the_pool_resize_differs(tmp_path):
    native = create_backbone(TINY_SPECS[1])
    path = save_prompts(build_method("dualcoop", native, CLASSES), tmp_path / "native.safetensors")
    header = _header(path)
    assert "attnpool_resize" not in header["backbone"]
    header["format_version"] = 1
    _rewrite_header(path, header)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # learned and loaded at the native size: the pool was never resized
        load_prompts(path, backbone=native)
    with pytest.warns(UserWarning, match="resized bicubic-antialiased; this backbone resizes it bicubic"):
        load_prompts(path, backbone=create_backbone(TINY_SPECS[1], image_size=96))
    resized = create_backbone(TINY_SPECS[1], image_size=96)  # a file written now, off the native size
    path = save_prompts(build_method("dualcoop", resized, CLASSES), tmp_path / "resized.safetensors")
    with pytest.warns(UserWarning, match="resized bicubic; this backbone resizes it not at all"):
        load_prompts(path, backbone=native)


@pytest.mark.parametrize("change, error", [
    ({"format_version": migrations.FORMATS["prompts"].version + 1}, NEWER),
    ({"format_version": "two"}, "is not a version number; the file is damaged"),
    ({"format": "promptmlr-checkpoint"}, "is not a promptmlr-prompts file"),
    ({"format": None}, "is not a promptmlr-prompts file .*no format"),
])
def test_a_prompts_file_of_another_format_or_a_newer_version_is_refused(tmp_path, vit, change, error):
    path = save_prompts(build_method("linear", vit, CLASSES), tmp_path / "p.safetensors")
    header = {key: value for key, value in {**_header(path), **change}.items() if value is not None}
    _rewrite_header(path, header)
    with pytest.raises(PromptsFileError, match=error) as caught:
        load_prompts(path, backbone=vit)
    assert str(path) in _one_line(caught)


def test_text_embeddings_name_their_format(tmp_path, vit):
    path = export_text_embeddings(build_method("linear", vit, CLASSES), tmp_path / "e.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert (metadata["format"], metadata["format_version"]) == ("promptmlr-text-embeddings", "1")


# ------------------------------------------------------------------------------------- checkpoints
def _rewrite_checkpoint_header(path: Path, change) -> None:
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["promptmlr-checkpoint"])
    change(header)
    save_file(load_file(path), str(path), metadata={"promptmlr-checkpoint": json.dumps(header)})


def test_a_version_1_checkpoint_resumes_the_same_state(tmp_path):
    state = {"epoch": 2, "method": {"w": torch.randn(3, 4)}, "history": [{"epoch": 1, "lr": 0.1}]}
    path = save_checkpoint(tmp_path / "checkpoint.safetensors", state)
    current = load_checkpoint(path)

    def as_version_1(header: dict) -> None:
        del header["format_version"]
        header["version"] = 1  # where version 1 kept it

    _rewrite_checkpoint_header(path, as_version_1)
    old = load_checkpoint(path)
    assert old.keys() == current.keys() and torch.equal(old["method"]["w"], state["method"]["w"])
    assert old["history"] == current["history"] and old["epoch"] == 2
    _rewrite_checkpoint_header(path, lambda header: header.update(version=7))
    with pytest.raises(CheckpointError, match=NEWER) as error:
        load_checkpoint(path)
    assert str(path) in _one_line(error)


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_run_folder_with_only_the_legacy_pickle_checkpoint_is_refused_unread(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "code-ran"
    (run / migrations.LEGACY_CHECKPOINT).write_bytes(pickle.dumps({"epoch": _Payload(marker)}))
    assert holds_run(run)  # a folder that holds a run of any format is never overwritten
    write_config(run, resolve_config("synthetic").to_dict())
    with pytest.raises(CheckpointError, match="is a pickle: pickles can run code, so promptmlr never loads") as error:
        promptmlr.tune(out=run, resume=True, log=lambda *_: None)
    assert str(run / "checkpoint.pt") in _one_line(error) and not marker.exists()
    (run / "checkpoint.safetensors").write_bytes(pickle.dumps({"epoch": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="a pickle") as error:
        load_checkpoint(run / "checkpoint.safetensors")
    assert not marker.exists() and _one_line(error)


# ------------------------------------------------------------------- metrics, predictions, caches
def test_metrics_carry_a_header_and_older_ones_read_the_same(tmp_path):
    metrics = {"method": "linear", "best": {"epoch": 1, "test_mAP": 50.0}, "history": []}
    write_metrics(tmp_path, metrics)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert (written["format"], written["format_version"]) == ("promptmlr-metrics", 1)
    assert read_metrics(tmp_path) == metrics
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))  # written before metrics had a header
    assert read_metrics(tmp_path) == metrics
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "format_version": 2}))
    with pytest.raises(PromptMLRError, match=NEWER):
        read_metrics(tmp_path)


def test_predictions_name_their_format(tmp_path):
    write_predictions(tmp_path / "predictions_test", [Path("a.png")], ["cat"], np.zeros((1, 1)), np.ones((1, 1)))
    with np.load(tmp_path / "predictions_test.npz", allow_pickle=False) as arrays:
        assert (str(arrays["format"]), int(arrays["format_version"])) == ("promptmlr-predictions", 1)


def test_a_feature_cache_without_a_header_opens_and_a_newer_one_does_not(tmp_path):
    from promptmlr.cache import DamagedCacheError, FeatureCache, _file_stamps

    np.save(tmp_path / "global.npy", np.zeros((1, 2, 4), np.float16))
    np.save(tmp_path / "dense.npy", np.zeros((1, 2, 9, 4), np.float16))
    meta = {"key": "k", "grid": [3, 3], "images": 2, "views": 1, "files": _file_stamps(tmp_path)}
    (tmp_path / "meta.json").write_text(json.dumps(meta))  # as caches were written before their header
    assert FeatureCache.open(tmp_path, "k", images=2, views=1).grid == (3, 3)
    (tmp_path / "meta.json").write_text(json.dumps({**migrations.header("feature-cache"), **meta}))
    assert FeatureCache.open(tmp_path, "k", images=2, views=1).grid == (3, 3)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(DamagedCacheError, match=NEWER):
        FeatureCache.open(tmp_path, "k", images=2, views=1)


def test_a_synthetic_dataset_without_a_header_reads_and_a_newer_one_does_not(tmp_path):
    from promptmlr.data import DatasetError, build_dataset
    from promptmlr.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "synthetic", n_train=2, n_test=1, image_size=32)
    meta = json.loads((root / "meta.json").read_text())
    assert (meta.pop("format"), meta.pop("format_version")) == ("promptmlr-synthetic-dataset", 1)
    (root / "meta.json").write_text(json.dumps(meta))  # as datasets were written before their header
    assert len(build_dataset("synthetic", root, "train")) == 2
    (root / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(DatasetError, match=NEWER):
        build_dataset("synthetic", root, "train")
