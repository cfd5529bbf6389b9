"""One registry style for methods, datasets and backbones: duplicates refused, built-ins loaded lazily,
every list of names derived from the registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from promptmlr.backbones import create_backbone, list_backbones, register_backbone_alias, register_backbone_source
from promptmlr.backbones.factory import BACKBONE_ALIASES, BACKBONE_SOURCES
from promptmlr.data.registry import DATASETS, register_dataset
from promptmlr.errors import ConfigError
from promptmlr.models import METHODS, list_methods, register_method
from promptmlr.models.linear import LinearProbe
from promptmlr.registry import Registry

TABLE_ORDER = ["zeroshot", "linear", "dualcoop", "positivecoop", "sst", "dsrb", "clsl", "sarl", "promptmlr"]


def test_a_name_is_registered_once_and_the_error_names_the_owner():
    registry: Registry[int] = Registry("widget")
    registry.register("one", 1, owner="module_a")
    with pytest.raises(ValueError, match="widget 'one' is already registered by module_a; module_b must choose"):
        registry.register("one", 2, owner="module_b")
    assert registry.get("one") == 1


def test_an_unknown_name_lists_the_known_ones_sorted_with_the_registry_error():
    registry: Registry[int] = Registry("widget", error=ConfigError)
    for name in ("b", "a"):
        registry.register(name, 0, owner="here")
    with pytest.raises(ConfigError, match="unknown widget 'c'; available: a, b"):
        registry.get("c")


def test_builtins_come_first_in_module_order_then_plugins_in_registration_order():
    assert METHODS.names() == TABLE_ORDER
    assert list_methods() == sorted(TABLE_ORDER)

    @register_method
    class Plugin(LinearProbe):
        name = "aaa-plugin"

    try:
        assert METHODS.names() == [*TABLE_ORDER, "aaa-plugin"]
        assert METHODS.names(sort=True)[0] == "aaa-plugin"
    finally:
        METHODS.unregister("aaa-plugin")


def test_a_method_dataset_or_backbone_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="method 'linear' is already registered by promptmlr.models.linear"):
        register_method(type("Shadow", (LinearProbe,), {"name": "linear"}))
    with pytest.raises(ValueError, match="dataset 'voc2007' is already registered by promptmlr.data.voc"):
        register_dataset("voc2007", splits=("train",))(lambda root, split: None)
    with pytest.raises(ValueError, match="backbone 'sandbox' is already registered"):
        register_backbone_alias("sandbox", "openclip:RN50")
    with pytest.raises(ValueError, match="backbone source 'hf' is already registered"):
        register_backbone_source("hf")(lambda spec, rest, size, mode: None)
    assert METHODS.get("linear") is LinearProbe and "sandbox" in list_backbones()


def test_a_backbone_source_plugs_in_without_touching_the_factory(monkeypatch):
    calls = []

    def toy_source(spec, rest, image_size, dense_mode):
        calls.append((spec, rest, image_size, dense_mode))
        return "a backbone"

    register_backbone_source("toy")(toy_source)
    register_backbone_alias("toy-alias", "toy:weights.bin")
    try:
        assert create_backbone("toy-alias", image_size=64) == "a backbone"
        assert calls == [("toy-alias", "weights.bin", 64, "value")]
        with pytest.raises(ConfigError, match="unknown backbone spec 'nosuch:x'.*'toy:...'"):
            create_backbone("nosuch:x")
    finally:
        BACKBONE_SOURCES.unregister("toy")
        BACKBONE_ALIASES.unregister("toy-alias")


def test_dense_mode_is_refused_before_any_weights_are_read():
    with pytest.raises(ConfigError, match="dense_mode must be one of value, tokens"):
        create_backbone("openclip:/no/such/weights.bin", dense_mode="patches")


def test_builtin_modules_are_imported_only_when_a_name_is_looked_up():
    code = ("import sys; from promptmlr.models.factory import METHODS; from promptmlr.data.registry import DATASETS; "
            "before = {m for m in sys.modules if m.startswith(('promptmlr.models.', 'promptmlr.data.'))}; "
            "METHODS.names(); DATASETS.names(); "
            "after = {m for m in sys.modules if m.startswith(('promptmlr.models.', 'promptmlr.data.'))}; "
            "print(sorted(m.rsplit('.', 1)[1] for m in after - before))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    for module in ("dualcoop", "promptmlr", "sarl", "voc", "coco", "synthetic"):
        assert f"'{module}'" in loaded


def test_every_dataset_module_registers_under_the_datasets_registry():
    assert {"voc2007", "coco2014", "nuswide", "vg200", "yolo", "jsonl", "csv", "custom", "synthetic"} == set(
        DATASETS.names())
