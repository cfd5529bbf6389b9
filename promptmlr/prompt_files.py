"""The learned-prompts file: everything a method learned, in one self-describing safetensors file.

Like a transformers/PEFT artefact it carries a header that says what it is for: format version,
method and its config, backbone spec and weight fingerprint, input resolution, class names,
descriptions, context length, decision thresholds, training metrics and the partial-label mask's
hash. Loading rebuilds the method on the named backbone and refuses a file that does not fit.

Its format and version, and how older versions are read, are in :mod:`promptmlr.migrations`.

A second format, ``text-embeddings``, is a plain ``[C, D]`` classifier (one unit vector per class)
in ``.safetensors`` or ``.npy``, usable with open_clip or transformers alone:
``scores = normalize(clip.encode_image(x)) @ embeddings.T``. Only a method that scores with one vector
per class on the global image feature can be exported so (``zeroshot``; ``linear`` on the global
feature): those scores rank every class's images exactly as the method's logits do (the same AP),
up to a per-class scale and bias, so thresholds do not carry over. Every other method refuses the
export (:meth:`MultiLabelMethod.text_embeddings_refusal`): its prompts file, with ``promptmlr predict``
or :func:`load_prompts`, is what reproduces its scores.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from promptmlr import migrations
from promptmlr.backbones import FrozenCLIP, create_backbone
from promptmlr.errors import ConfigError, PromptMLRError, one_line
from promptmlr.files import atomic_write
from promptmlr.models import MultiLabelMethod, build_method

HEADER_KEY = "promptmlr"


class PromptsFileError(PromptMLRError, ValueError):
    """A prompts file that cannot be read, or that does not fit the backbone or dataset given."""


def save_prompts(method: MultiLabelMethod, path: str | Path, thresholds: Sequence[float] | None = None,
                 metrics: dict | None = None, mask_sha256: str | None = None, extra: dict | None = None) -> Path:
    """Write ``method``'s learned tensors and a header describing them (atomically)."""
    header = {
        **migrations.header("prompts"),
        **method.describe(),
        "backbone": method.backbone.describe(),
        "class_names": method.class_names,
        "descriptions": method.descriptions,
        "context_length": getattr(method.config, "n_ctx", None),
        "thresholds": list(thresholds) if thresholds is not None else None,
        "metrics": metrics or {},
        "mask_sha256": mask_sha256,
        **(extra or {}),
    }
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in method.state_dict().items()}
    return atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata={HEADER_KEY: json.dumps(header)}))


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a prompts file, checked to be one, at the current format version."""
    path = Path(path)
    if not path.is_file():
        raise PromptsFileError(f"prompts file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for non-safetensors bytes
        raise PromptsFileError(f"{path} is not a safetensors prompts file: {one_line(error)}") from None
    if HEADER_KEY not in metadata:
        raise PromptsFileError(f"{path} has no promptmlr header; was it written by `promptmlr export`?")
    try:
        header = json.loads(metadata[HEADER_KEY])
        if not isinstance(header, dict):
            raise ValueError("the header is not a mapping")
    except ValueError as error:
        raise PromptsFileError(f"{path}: its promptmlr header is damaged ({one_line(error)})") from None
    return migrations.upgrade("prompts", header, path, PromptsFileError)


def load_prompts(path: str | Path, backbone: FrozenCLIP | None = None,
                 class_names: Sequence[str] | None = None) -> tuple[MultiLabelMethod, dict[str, Any]]:
    """Rebuild the method stored in ``path`` on ``backbone`` (default: the backbone its header names).

    Refuses a backbone whose weight fingerprint differs from the one the prompts were learned on,
    and, when ``class_names`` are given, a file learned for other classes.
    """
    header = read_header(path)
    check_thresholds(path, header)
    with safe_open(str(path), framework="pt") as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    _refuse_non_finite(path, state)  # before a backbone is loaded for it: nothing it scores would be a number
    stored = header["backbone"]
    if backbone is None:
        backbone = create_backbone(stored["spec"], image_size=stored["image_size"], dense_mode=stored["dense_mode"])
    if backbone.fingerprint != stored["fingerprint"]:
        raise PromptsFileError(_weights_mismatch(path, stored, backbone))
    if class_names is not None and list(class_names) != header["class_names"]:
        raise PromptsFileError(_class_mismatch(path, header["class_names"], list(class_names)))
    _warn_if_pool_resized_otherwise(path, stored, backbone)
    method = build_method(header["method"], backbone, header["class_names"], header.get("descriptions"),
                          **header.get("method_config", {}))
    _refuse_misfit(path, state, method)
    method.load_state_dict(state, strict=True)
    return method, header


def check_thresholds(path: str | Path, header: dict[str, Any], error: type[PromptMLRError] = PromptsFileError) -> None:
    """``thresholds`` of a prompts file's or a tagger's header: null, or one probability in [0, 1] per
    class. A NaN one would silently admit no label, and one too many or too few would end in numpy's
    broadcasting error when predicting."""
    thresholds, classes = header.get("thresholds"), header.get("class_names") or []
    if thresholds is None:
        return
    if (not isinstance(thresholds, list) or len(thresholds) != len(classes)
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds)):
        raise error(f"{path}: its header's thresholds must be null or {len(classes)} probabilities in [0, 1], one "
                    f"per class, got {str(thresholds)[:80]}; the header was edited: export it again from its run "
                    f"folder")


def _refuse_non_finite(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """A NaN or inf weight makes every score it touches NaN, and a NaN never passes a threshold: the
    file would predict no label for any image and still evaluate to some mAP."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise PromptsFileError(f"{path}: tensor {name!r} holds {count} NaN or infinite value(s) of "
                                   f"{tensor.numel()}, so no score would be a number; the run that wrote it "
                                   f"diverged, or the file was altered: learn the prompts again (a lower train.lr)")


def _refuse_misfit(path: str | Path, state: dict[str, torch.Tensor], method: MultiLabelMethod) -> None:
    """The tensors must be those of the method the header describes, name for name, shape for shape and
    of the same kind (float, integer, bool): a header edited after the file was written (its classes,
    ``n_ctx``) would otherwise end in torch's multi-line error, or an integer tensor be cast silently."""
    expected = method.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise PromptsFileError(f"{path}: its tensors are not those of the {_described(method)} its header "
                               f"describes (missing {missing[:3]}, unexpected {unexpected[:3]}); the header was "
                               f"edited or the file damaged: export it again from its run folder")
    for name, wanted in expected.items():
        tensor = state[name]
        if tensor.shape != wanted.shape:
            raise PromptsFileError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, but the "
                                   f"{_described(method)} its header describes needs {list(wanted.shape)}; the "
                                   f"header was edited or the file damaged: export it again from its run folder")
        if _kind(tensor) != _kind(wanted):
            raise PromptsFileError(f"{path}: tensor {name!r} holds {tensor.dtype} values where the method keeps "
                                   f"{wanted.dtype}; export it again from its run folder")


def _described(method: MultiLabelMethod) -> str:
    return f"method {method.name} for {method.num_classes} classes"


def _kind(tensor: torch.Tensor) -> str:
    return "float" if tensor.is_floating_point() else "bool" if tensor.dtype == torch.bool else "integer"


def _warn_if_pool_resized_otherwise(path: str | Path, stored: dict[str, Any], backbone: FrozenCLIP) -> None:
    """Off its native input size, a ResNet's features depend on how its attention pool's position
    embedding is resized: prompts learned on one resize score a little differently on another.
    They are loaded, with a warning."""
    now = backbone.describe().get("attnpool_resize")
    then = migrations.pool_resize_learned_on(stored, resized_here=now is not None)
    if then != now:
        warnings.warn(f"{path} was learned on features with the attention pool resized {then or 'not at all'}; "
                      f"this backbone resizes it {now or 'not at all'}, so its scores can differ a little from "
                      f"the run's: learn the prompts again to match", stacklevel=3)


def _weights_mismatch(path: str | Path, stored: dict[str, Any], backbone: FrozenCLIP) -> str:
    learned = f"weights {stored['fingerprint'][:12]}…"
    if backbone.spec == stored["spec"]:  # same name, other weights: the file behind the spec changed
        return (f"{path} was learned on '{stored['spec']}' with {learned}, but '{backbone.spec}' now loads weights "
                f"{backbone.fingerprint[:12]}…: the checkpoint behind that name changed. Put the original weights "
                f"back where '{stored['spec']}' points, or learn prompts on the new ones")
    return (f"{path} was learned on '{stored['spec']}' ({learned}), not on '{backbone.spec}' (weights "
            f"{backbone.fingerprint[:12]}…); load it without a backbone of your own to use '{stored['spec']}', or "
            f"learn prompts on '{backbone.spec}'")


def _class_mismatch(path: str | Path, stored: list[str], given: list[str]) -> str:
    if len(stored) != len(given):
        return (f"{path} holds prompts for {len(stored)} classes, but the dataset has {len(given)}; "
                f"export prompts learned on this dataset")
    differing = [(a, b) for a, b in zip(stored, given) if a != b][:5]
    return f"{path} was learned for other classes (file vs dataset, first differences: {differing})"


def refuse_text_embeddings(method_type: type[MultiLabelMethod], config: Any) -> None:
    """Refuse the ``text-embeddings`` export of a method whose scores it would not reproduce."""
    refusal = method_type.text_embeddings_refusal(config)
    if refusal is not None:
        raise ConfigError(f"--format text-embeddings: {refusal}, so a [C, D] classifier scored as "
                          f"normalize(encode_image(x)) @ embeddings.T would not reproduce its scores; export the "
                          f"prompts file (--format promptmlr) and score with promptmlr predict or "
                          f"promptmlr.load_prompts")


def export_text_embeddings(method: MultiLabelMethod, path: str | Path) -> Path:
    """Write the ``[C, D]`` class vectors as ``.safetensors`` (with class names and the backbone in the
    metadata) or ``.npy`` (array only; class order as in the run's config). A method whose scores they
    would not reproduce is refused (see the module's docstring)."""
    path = Path(path)
    refuse_text_embeddings(type(method), method.config)
    embeddings = method.class_embeddings().detach().cpu().float().contiguous()
    if path.suffix == ".npy":
        return atomic_write(path, lambda temp: _save_npy(temp, embeddings.numpy()))
    if path.suffix != ".safetensors":
        raise PromptsFileError(f"text embeddings are written as .safetensors or .npy, not {path.suffix!r}")
    metadata = {**{key: str(value) for key, value in migrations.header("text-embeddings").items()},
                "class_names": json.dumps(method.class_names), "backbone": json.dumps(method.backbone.describe()),
                "method": method.name}
    return atomic_write(path, lambda temp: save_file({"text_embeddings": embeddings}, str(temp), metadata=metadata))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object, so numpy does not append '.npy' to the temp name
        np.save(handle, array)
