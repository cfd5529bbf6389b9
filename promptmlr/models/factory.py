"""Methods by name, like open_clip's and timm's model factories: a registry, each method's typed
``Config``, and :class:`ModelConfig`, the ``model:`` section of a run's configuration.

``model.options`` is checked against the method's ``Config`` dataclass when the run's config is
resolved (:func:`method_options`), before any data is read or weights are loaded, and stored with
every field filled in, so ``config.yaml`` records the method's whole configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from promptmlr.backbones import FrozenCLIP, create_backbone
from promptmlr.descriptions import Descriptions, check_classes, load_descriptions, shipped_descriptions_path
from promptmlr.errors import ConfigError, check_number
from promptmlr.models.base import MultiLabelMethod
from promptmlr.settings import merge

_METHODS: dict[str, type[MultiLabelMethod]] = {}


@dataclass
class ModelConfig:
    backbone: str = "sandbox"
    image_size: int | None = None  # None: the backbone's own resolution
    dense_mode: str = "value"
    method: str = "promptmlr"
    options: dict[str, Any] = field(default_factory=dict)  # the method's Config fields (all, once resolved)
    descriptions: str | None = "auto"  # auto: prompts/<dataset>.yaml if shipped; none; or a file

    def __post_init__(self) -> None:
        if self.image_size is not None:
            check_number("model.image_size (--image-size)", self.image_size, minimum=16)


def register_method(cls: type[MultiLabelMethod]) -> type[MultiLabelMethod]:
    """Class decorator: make a method available to ``build_method`` and ``--method`` by its name."""
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[MultiLabelMethod]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


def method_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of method ``name``'s ``Config`` with ``options`` applied, as a plain dict.

    The typed merge of every other config section (:func:`promptmlr.settings.merge`) applies them,
    so an unknown key or a mistyped value fails with the same message as anywhere else; the
    ``Config``'s own ``__post_init__`` then refuses values out of range.
    """
    config_class = method_class(name).Config
    return dataclasses.asdict(merge(config_class(), dict(options), f"model.options (method {name})"))


def recorded_options(name: str, stored: Mapping[str, Any]) -> dict[str, Any]:
    """The options a method ran with, read from a record that holds every option it had then (a
    prompts file's header, a run folder's ``config.yaml``). An option the record lacks did not exist
    when it was written, and its default may have changed since (promptmlr's enhancement came on in
    issue #12, DualCoOp's mean token in #15): it takes the value the method had before it
    (``Config.PREDATING``), not today's default. An empty record, or one for a method not
    registered (refused later, with the usual message), is returned as it is."""
    stored = dict(stored)
    try:
        predating = getattr(method_class(name).Config, "PREDATING", {}) if stored else {}
    except ConfigError:
        predating = {}
    return {**{key: value for key, value in predating.items() if key not in stored}, **stored}


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
