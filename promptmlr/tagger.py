"""A tagger that runs without promptmlr: a run's method and its frozen image encoder as one ONNX
graph, and the code that opens such a graph with onnxruntime and labels images with it.

The graph takes ``images`` ``[N, 3, S, S]`` (float32, preprocessed as below; N free, S fixed at
export) and gives ``logits`` ``[N, C]``, whose sigmoid is P(class present), as every method's logits
are. The learned prompts' text features are computed once at export
(:meth:`MultiLabelMethod.fixed_prompts`) and stored in the graph as constants: it holds no text
encoder. Everything a caller needs besides is one JSON string under the key ``promptmlr`` in the
model's metadata (``metadata_props``): the class names, the preprocessing, the per-class
thresholds of the prompts file, the method and backbone, and the run it came from.

Preprocessing, outside the graph: the image in RGB, resized to ``S x S`` (the whole image, no crop)
with Pillow's ``interpolation`` filter, scaled to [0, 1], less ``mean``, over ``std``, channels
first. That is exactly what ``promptmlr predict`` does (torchvision resizes a PIL image with Pillow),
so :func:`preprocess_image`, with Pillow and numpy alone, gives the same pixels to the last bit.

Exported with PyTorch's TorchScript-based exporter: a method's forward has no branch that depends
on the data, so one trace is the whole model; the ``torch.export``-based exporter gives the same
graph but took 15 times as long on the sandbox (5 s against 0.3 s) and logs the traced program.
Before it is moved into place, the graph is run with onnxruntime on a batch of another size than
the traced one, and its logits are compared with PyTorch's: a graph that fails is not left behind.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from promptmlr import __version__, migrations
from promptmlr.backbones.preprocess import PreprocessConfig
from promptmlr.cache import encode
from promptmlr.errors import PromptMLRError, UsageError, one_line
from promptmlr.files import atomic_write, finite_or_null
from promptmlr.inference import Prediction, image_batches, record_scores
from promptmlr.models import MultiLabelMethod
from promptmlr.prompt_files import check_thresholds

METADATA_KEY = "promptmlr"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# 14: the first opset with CLIP's attention (scaled_dot_product_attention); 20: the TorchScript
# exporter's last
OPSET_RANGE = (14, 20)
DEFAULT_OPSET = 17
TRACE_BATCH, CHECK_BATCH = 2, 3  # traced at one batch size, checked at another: the batch axis is free
CHECK_TOLERANCE = 1e-4  # largest logit difference allowed at export, relative to max(1, largest |logit|)
ONNX_FILE_LIMIT = 2**31  # bytes: protobuf's limit on one file; larger graphs need external-data files
EXTRA_HINT = "pip install 'promptmlr[onnx]'"
RESAMPLING = {mode.name.lower(): mode for mode in Image.Resampling}  # Pillow's filters: nearest, bilinear, bicubic, ...


class TaggerFileError(PromptMLRError, ValueError):
    """A file that is not an ONNX tagger promptmlr wrote, or one this promptmlr cannot read."""


class TaggerCheckError(PromptMLRError, RuntimeError):
    """An exported graph whose logits differ from PyTorch's: it is not written."""


def require(package: str, purpose: str) -> ModuleType:
    """``package`` imported, or one line that says which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UsageError(f"{purpose} needs the {package} package, which is not installed: {EXTRA_HINT}") from None


def require_export_packages() -> ModuleType:
    """The ``onnx`` module, once onnx, onnxruntime (which checks every export) and a PyTorch whose
    exporter takes ``dynamo=`` (2.5 and later) are found."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise UsageError(f"ONNX export needs PyTorch 2.5 or later, found {torch.__version__}: pip install -U torch")
    require("onnxruntime", "ONNX export (the exported graph is checked with it)")
    return require("onnx", "ONNX export")


def check_opset(opset: object) -> None:
    """Refuse an opset the exporter cannot write (see :data:`OPSET_RANGE`)."""
    low, high = OPSET_RANGE
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise UsageError(f"--opset must be a whole number from {low} to {high}, got {opset!r}")


# ------------------------------------------------------------------------------------------ export
class ImagesToLogits(nn.Module):
    """The graph that is exported: preprocessed images through the frozen encoder and the method."""

    def __init__(self, method: MultiLabelMethod):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method(encode(self.method.backbone, images)).logits


def tagger_metadata(method: MultiLabelMethod, header: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The record stored under :data:`METADATA_KEY`: what the graph takes and gives, the class names,
    the preprocessing, the prompts file's thresholds, the method and backbone, and ``run`` (where
    the prompts came from)."""
    preprocess = method.backbone.preprocess
    return {
        **migrations.header("onnx-tagger"),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, preprocess.image_size, preprocess.image_size],
                  "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", method.num_classes], "dtype": "float32",
                   "meaning": "logits: sigmoid(logit) is the probability that the class is present"},
        "class_names": method.class_names,
        "preprocess": {"image_size": preprocess.image_size, "resize": "square",
                       "interpolation": preprocess.interpolation, "scale": "1/255", "mean": list(preprocess.mean),
                       "std": list(preprocess.std)},
        "thresholds": header.get("thresholds"),
        **method.describe(),
        "backbone": {**method.backbone.describe(), "spec": method.backbone.weights_source},  # no local paths
        "run": run,
        "promptmlr_version": __version__,
    }


def export_tagger(method: MultiLabelMethod, out: Path, metadata: dict[str, Any], opset: int = DEFAULT_OPSET) -> Path:
    """Write ``method`` and its encoder as one ONNX graph to ``out`` (atomically), with ``metadata``,
    once onnxruntime's logits on a check batch match PyTorch's."""
    onnx = require_export_packages()
    check_opset(opset)
    method = method.cpu().eval()
    _refuse_oversize(method)
    if method.backbone.preprocess.interpolation not in RESAMPLING:
        raise UsageError(f"the backbone resizes images with {method.backbone.preprocess.interpolation!r}, which "
                         f"Pillow has no filter for: a tagger's users could not preprocess as it does")
    size = method.backbone.image_size
    images = torch.randn(TRACE_BATCH + CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    stored = json.dumps(finite_or_null(metadata), allow_nan=False)  # NaN metrics as null: JSON every reader takes

    def write(temp: Path) -> None:
        try:
            with _exportable(method):
                graph = ImagesToLogits(method)
                expected = graph(images[TRACE_BATCH:]).numpy()
                torch.onnx.export(graph, (images[:TRACE_BATCH],), str(temp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            model = onnx.load(str(temp))
            model.metadata_props.add(key=METADATA_KEY, value=stored)
            onnx.checker.check_model(model)
            onnx.save(model, str(temp))
        except (RuntimeError, ValueError, TypeError, onnx.checker.ValidationError) as error:
            # an operator the opset cannot express, a graph the checker refuses
            raise TaggerCheckError(f"the ONNX export failed at opset {opset}: {one_line(error)}; nothing was "
                                   f"written") from None
        check_tagger(temp, images[TRACE_BATCH:].numpy(), expected)

    return atomic_write(out, write)


def _refuse_oversize(method: MultiLabelMethod) -> None:
    """Refuse a model whose float32 weights (the text encoder's included, an upper bound on the
    graph's) would pass :data:`ONNX_FILE_LIMIT`: the exporter would write them as external-data files
    beside the graph, which this export does not manage."""
    tensors = [*method.parameters(), *method.buffers()]
    weight_bytes = sum(4 * tensor.numel() for tensor in tensors if tensor.is_floating_point())
    if weight_bytes >= ONNX_FILE_LIMIT:
        raise UsageError(f"the model's weights take {weight_bytes / 2**30:.1f} GiB in float32, more than one ONNX "
                         f"file holds (2 GiB); export a smaller backbone, or use the prompts file with promptmlr")


@contextlib.contextmanager
def _exportable(method: MultiLabelMethod) -> Iterator[None]:
    """Prompts encoded once; ``nn.MultiheadAttention``'s fused inference kernel (an open_clip ViT's
    attention in eval mode), which has no ONNX form, off; the exporter's notes hidden: its deprecation
    and the tracer's on shape checks and on CLIP's temperature read as a number, both constant here."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), method.fixed_prompts(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def check_tagger(path: Path, images: np.ndarray, expected: np.ndarray) -> None:
    """Refuse a graph whose logits for ``images`` differ from ``expected`` (PyTorch's) by more than
    :data:`CHECK_TOLERANCE` of the logits' scale."""
    runtime = require("onnxruntime", "ONNX export (the exported graph is checked with it)")
    try:  # on the CPU, where the logits are comparable with PyTorch's; a GPU provider rounds otherwise
        session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        found = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    except Exception as error:  # onnxruntime raises its own exception types for graphs it cannot run
        raise TaggerCheckError(f"onnxruntime cannot run the exported graph: {one_line(error)}; nothing was "
                               f"written") from None
    if found.shape != expected.shape:
        raise TaggerCheckError(f"the exported graph gives logits of shape {found.shape} for a batch of "
                               f"{len(images)}, PyTorch {expected.shape}; nothing was written")
    difference = float(np.abs(found - expected).max())
    allowed = CHECK_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if not difference <= allowed:
        raise TaggerCheckError(f"the exported graph's logits differ from PyTorch's by up to {difference:.3g} "
                               f"(allowed {allowed:.3g}); nothing was written")


# ------------------------------------------------------------------------------------- run a tagger
def preprocess_image(image: Image.Image, preprocess: PreprocessConfig) -> np.ndarray:
    """An RGB image as the graph takes it, ``[3, S, S]`` float32: the same values as
    ``build_transform(preprocess)`` gives, with Pillow and numpy only (see the module docstring)."""
    size = preprocess.image_size
    resized = image.resize((size, size), RESAMPLING[preprocess.interpolation])
    pixels = np.asarray(resized, dtype=np.float32) / 255
    mean, std = np.asarray(preprocess.mean, dtype=np.float32), np.asarray(preprocess.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


class OnnxTagger:
    """An exported tagger opened with onnxruntime: its metadata read and checked, a session ready."""

    def __init__(self, path: str | Path, threads: int | None = None):
        require("onnxruntime", "an ONNX tagger")
        self.path = Path(path)
        if not self.path.is_file():
            raise TaggerFileError(f"--model {self.path} does not exist; give the .onnx file `promptmlr export "
                                  f"--format onnx` wrote")
        self._session = _open_session(self.path, threads)
        stored = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if stored is None:
            raise TaggerFileError(f"{self.path} has no promptmlr metadata; give a file written by `promptmlr export "
                                  f"--format onnx`")
        try:
            record = json.loads(stored)
            if not isinstance(record, dict):
                raise ValueError("it is not a JSON object")
            self.metadata = migrations.upgrade("onnx-tagger", record, self.path, TaggerFileError)
            self.class_names: list[str] = [str(name) for name in self.metadata["class_names"]]
            stored_preprocess = self.metadata["preprocess"]
            self.preprocess = PreprocessConfig(int(stored_preprocess["image_size"]),
                                               tuple(map(float, stored_preprocess["mean"])),
                                               tuple(map(float, stored_preprocess["std"])),
                                               stored_preprocess["interpolation"])
            if (self.preprocess.interpolation not in RESAMPLING or len(self.preprocess.mean) != 3
                    or len(self.preprocess.std) != 3 or self.preprocess.image_size < 1):
                raise ValueError(f"its preprocessing {stored_preprocess} is not one Pillow applies")
        except (ValueError, KeyError, TypeError) as error:
            raise TaggerFileError(f"{self.path}: its promptmlr metadata is damaged ({one_line(error)}); export it "
                                  f"again from its run folder") from None
        check_thresholds(self.path, self.metadata, TaggerFileError)
        self.thresholds: list[float] | None = self.metadata.get("thresholds")
        width = self._session.get_outputs()[0].shape[-1]
        if width != len(self.class_names):
            raise TaggerFileError(f"{self.path}: its graph gives {width} logits per image but its metadata names "
                                  f"{len(self.class_names)} classes; export it again from its run folder")

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def logits(self, images: np.ndarray) -> np.ndarray:
        """``[N, C]`` logits for preprocessed images ``[N, 3, S, S]``."""
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def _open_session(path: Path, threads: int | None) -> Any:
    """An onnxruntime session for ``path`` on the providers installed (a GPU where onnxruntime-gpu
    is), on ``threads`` CPU threads (None: onnxruntime's default, every core)."""
    runtime = require("onnxruntime", "an ONNX tagger")
    options = runtime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return runtime.InferenceSession(str(path), options, providers=runtime.get_available_providers())
    except Exception as error:  # onnxruntime raises its own exception types for files it cannot run
        raise TaggerFileError(f"{path} is not an ONNX model onnxruntime can run: {one_line(error)}") from None


def predict_with_tagger(tagger: OnnxTagger, images: Sequence[Path], threshold: float | Sequence[float] | None = None,
                        top_k: int | None = None, batch_size: int = 32) -> list[Prediction]:
    """Predictions for each image path, in order, as :func:`promptmlr.inference.predict_images` makes
    them, with the graph run by onnxruntime; unreadable images carry an ``error``."""
    predictions = [Prediction(Path(path)) for path in images]
    for rows, opened in image_batches(predictions, batch_size, draft_size=tagger.image_size):
        logits = tagger.logits(np.stack([preprocess_image(image, tagger.preprocess) for image in opened]))
        for row, image_logits in zip(rows, logits):
            record_scores(predictions[row], image_logits, tagger.class_names, threshold, top_k)
    return predictions
