"""Methods by name, like open_clip's and timm's model factories: a registry, each method's typed
``Config``, and :class:`ModelConfig`, the ``model:`` section of a run's configuration.

``model.options`` is checked against the method's ``Config`` dataclass when the run's config is
resolved (:func:`method_options`), before any data is read or weights are loaded, and stored with
every field filled in, so ``config.yaml`` records the method's whole configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from promptmlr.backbones import FrozenCLIP, create_backbone
from promptmlr.backbones.base import DENSE_MODES
from promptmlr.backbones.factory import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_image_size
from promptmlr.descriptions import Descriptions, check_classes, load_descriptions, shipped_descriptions_path
from promptmlr.errors import ConfigError
from promptmlr.models.base import MultiLabelMethod
from promptmlr.options import check_fields, option
from promptmlr.registry import Registry
from promptmlr.settings import merge

# one module per method; this order is the order of every results table (baselines first)
BUILTIN_METHODS = ("zeroshot", "linear", "dualcoop", "positivecoop", "sst", "dsrb", "clsl", "sarl", "promptmlr")
METHODS: Registry[type[MultiLabelMethod]] = Registry(
    "method", tuple(f"promptmlr.models.{name}" for name in BUILTIN_METHODS))


@dataclass
class ModelConfig:
    backbone: str = option("sandbox", "frozen CLIP: a registered name, openclip:<arch>[:<tag-or-file>] or "
                                      "hf:<hub-id-or-dir> (promptmlr config --list)")
    image_size: int | None = option(None, "input resolution in pixels; null: the backbone's own",
                                    minimum=MIN_IMAGE_SIZE, maximum=MAX_IMAGE_SIZE, flag="--image-size")
    dense_mode: str = option("value", "a ViT's dense features: its last block's value path, or its output "
                                      "tokens (ResNets always take the value path)", choices=DENSE_MODES)
    method: str = option("promptmlr", "registered method name (promptmlr config --list shows them all)")
    options: dict[str, Any] = option(help="the method's own options (model.options.*: every field of its "
                                          "Config once resolved)", factory=dict)
    descriptions: str | None = option("auto", "class descriptions: auto (prompts/<dataset>.yaml if shipped), "
                                              "none, or a file")

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int) and self.image_size > MAX_IMAGE_SIZE:  # the bound, with its reason
            check_image_size("model.image_size (--image-size)", self.image_size)
        check_fields(self, "model.")


def register_method(cls: type[MultiLabelMethod]) -> type[MultiLabelMethod]:
    """Class decorator: make a method available to ``build_method`` and ``--method`` by its
    ``name``; a name already taken is refused."""
    return METHODS.register(cls.name, cls)


def list_methods() -> list[str]:
    """Every method's name, alphabetically (:data:`METHODS` ``.names()`` gives the table order)."""
    return METHODS.names(sort=True)


def method_class(name: str) -> type[MultiLabelMethod]:
    return METHODS.get(name)


def method_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of method ``name``'s ``Config`` with ``options`` applied, as a plain dict.

    The typed merge of every other config section (:func:`promptmlr.settings.merge`) applies them,
    so an unknown key or a mistyped value fails with the same message as anywhere else; the
    ``Config``'s own ``__post_init__`` then refuses values out of range.
    """
    config_class = method_class(name).Config
    return dataclasses.asdict(merge(config_class(), dict(options), f"model.options (method {name})"))


def build_method(name: str, backbone: FrozenCLIP, class_names: Sequence[str],
                 descriptions: Mapping[str, Sequence[str]] | None = None, **options: Any) -> MultiLabelMethod:
    """Create method ``name`` with ``options`` overriding its config defaults."""
    cls = method_class(name)
    fields = {field.name for field in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; its options: {sorted(fields)}")
    return cls(backbone, class_names, cls.Config(**options), descriptions)


def build_backbone(model: ModelConfig) -> FrozenCLIP:
    return create_backbone(model.backbone, image_size=model.image_size, dense_mode=model.dense_mode)


def resolve_descriptions(choice: str | None, dataset: str, class_names: Sequence[str]
                         ) -> tuple[Descriptions | None, str]:
    """The class descriptions to use and where they came from ('none' when there are none).

    ``choice`` is ``model.descriptions``: ``auto`` takes ``prompts/<dataset>.yaml`` when it is shipped
    and names exactly this dataset's classes (a user's class list may differ), ``none`` uses none,
    anything else is a file.
    """
    if choice in (None, "none"):
        return None, "none"
    if choice == "auto":
        path = shipped_descriptions_path(dataset)
        if path is None:
            return None, "none"
        descriptions = load_descriptions(path)
        if set(descriptions) != set(class_names):
            return None, f"none ({path} does not match this dataset's classes)"
        return check_classes(descriptions, class_names, str(path)), str(path)
    return check_classes(load_descriptions(Path(choice)), class_names, choice), choice
