"""What the benchmarks share: the device and its description, autocast, timing loops, a method's
timed steps, and the VOC 2007 recipe with the reference it is measured against.

The benchmarks are modules of the ``tools.bench`` package, run from the repository root
(``python -m tools.bench.speed ...``), and import this one as ``tools.bench.common``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import platform
import resource
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from unittest import mock

import torch

from promptmlr import __version__
from promptmlr.backbones import ImageFeatures
from promptmlr.data.voc import VOC_CLASSES, VOC_SPLITS, find_voc_year_dir
from promptmlr.files import write_json_atomic, write_text_atomic
from promptmlr.losses import LossConfig, build_loss
from promptmlr.models import build_method

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# The VOC 2007 recipe and the reference it is compared with: DualCoOp on one H100, fp16, batch 32:
# training step ~570 images/s, data pipeline ~215 images/s, 50 epochs ~24 min; the RN101 encoder
# alone ~1,600 images/s at 448 px.
VOC_TRAIN_IMAGES, VOC_TEST_IMAGES, RECIPE_EPOCHS, RECIPE_BATCH = 5011, 4952, 50, 32
REFERENCE = {"dualcoop_voc2007_50_epochs_seconds": 24 * 60, "dualcoop_train_step_images_per_s": 570,
             "dualcoop_data_pipeline_images_per_s": 215, "rn101_448_encoder_images_per_s": 1600,
             "device": "NVIDIA H100, fp16, batch 32", "target_speedup": 20}


def usage_error(message: str) -> SystemExit:
    """``<benchmark>.py: error: <message>``, argparse's form, for the benchmark being run."""
    return SystemExit(f"{Path(sys.argv[0]).stem}.py: error: {message}")


# ------------------------------------------------------------------------------------------ device
def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise usage_error("--device cuda but no CUDA device is available")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform's guess elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device: torch.device) -> dict[str, Any]:
    info = {"type": device.type, "name": device_name(device), "torch": torch.__version__,
            "promptmlr": __version__, "python": platform.python_version()}
    if device.type == "cpu":
        info.update({"threads": torch.get_num_threads(), "logical_cpus": os.cpu_count()})
    else:
        info.update({"cuda": torch.version.cuda, "memory_gib": round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1)})
    return info


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated per configuration (tensors only; MiB)"
    return ("peak resident set size of the process so far (resource.getrusage ru_maxrss; only grows, so it "
            "covers this configuration and every earlier one; MiB)")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """A fresh autocast context for ``precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


# ---------------------------------------------------------------------------------------- timing
def images_per_second(step: Callable[[], Any], batch_size: int, warmup: int, iters: int,
                      device: torch.device) -> float:
    """Throughput of ``step`` (one batch), warm-up calls excluded."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return batch_size * iters / max(time.perf_counter() - started, 1e-9)


def interleaved_seconds(steps: dict[Any, Callable[[], Any]], warmup: int, rounds: int,
                        device: torch.device, log: Callable[[str], None] | None = None) -> dict[Any, list[float]]:
    """Seconds per call of every step, all steps once per round in turn, so that a neighbour's load on
    shared cores hits all of them alike (their ratios are the point); warm-up rounds dropped."""
    seconds: dict[Any, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + rounds):
        for name, step in steps.items():
            synchronize(device)
            started = time.perf_counter()
            step()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - started)
        if log is not None and round_index >= warmup:
            log(f"round {round_index - warmup + 1}/{rounds}: " +
                ", ".join(f"{name} {times[-1]:.2f} s" for name, times in seconds.items()))
    return seconds


# ------------------------------------------------------------------------------ the authors' code
class AnchorError(SystemExit):
    """An authors' checkout cannot be used; the message says why and what to pass."""


@contextlib.contextmanager
def cuda_as_identity() -> Iterator[None]:
    """``Tensor.cuda`` and ``Module.cuda`` return their object: the authors' code moves what it makes
    to CUDA, and the parity benchmarks run it on the CPU."""
    def identity(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self
    with mock.patch.object(torch.Tensor, "cuda", identity), mock.patch.object(torch.nn.Module, "cuda", identity):
        yield


def bench_command(module: str, argv: Sequence[str] | None) -> str:
    """The command line that reproduces a benchmark run, for its report: ``python -m tools.bench.<module> ...``."""
    return f"python -m tools.bench.{module} " + " ".join(sys.argv[1:] if argv is None else argv)


def write_report(out: Path, stem: str, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> str:
    """Write a benchmark's ``<stem>.json`` and its ``<stem>.md`` (each atomically) into ``out``, print
    the Markdown and return it: one report shape for every benchmark a later command or page reads."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{stem}.json", report)
    text = markdown(report)
    write_text_atomic(out / f"{stem}.md", text)
    print(text)
    return text


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of two tensors of one shape (0 for empty ones): the parity
    benchmarks' measure of how far promptmlr's value is from the authors'."""
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def import_checkout(script: str, anchor_dir: Path, name: str, url: str, wanted: dict[str, str]
                    ) -> types.SimpleNamespace:
    """``wanted`` (attribute -> its module, e.g. ``"clip.model"``) imported from the authors'
    checkout ``anchor_dir``, whose top-level packages (``clip``, ``models``, ``utils``) are on the
    path only while they load, so that their generic names stay out of later imports; what the
    modules print as they load is dropped. ``script``, ``name`` and ``url`` word the refusals."""
    files = sorted({module.replace(".", "/") + ".py" for module in wanted.values()})
    missing = [file for file in files if not (anchor_dir / file).is_file()]
    if missing:
        raise AnchorError(f"{script}: error: --anchor-dir {anchor_dir} is not a {name} checkout (no "
                          f"{', '.join(missing)}); clone {url} and pass its folder")
    sys.path.insert(0, str(anchor_dir.resolve()))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            found = {attribute: getattr(importlib.import_module(module), attribute)
                     for attribute, module in wanted.items()}
    except ImportError as error:
        raise AnchorError(f"{script}: error: importing {name} from {anchor_dir} failed: {error}") from None
    finally:
        sys.path.remove(str(anchor_dir.resolve()))
    return types.SimpleNamespace(**found)


# ---------------------------------------------------------------------------------- partial targets
def partial_targets(batch: int, classes: int, known: float = 0.5) -> torch.Tensor:
    """Labels as promptmlr takes them, 1 / -1 / 0 (unknown), seeded, about ``known`` of them known."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (batch, classes), generator=generator).float() * 2 - 1
    return labels * (torch.rand(batch, classes, generator=generator) < known)


def anchor_targets(targets: torch.Tensor) -> torch.Tensor:
    """The same labels as DualCoOp's and PositiveCoOp's code takes them: 1, 0 negative, -1 unknown."""
    return torch.where(targets > 0, 1.0, torch.where(targets < 0, 0.0, -1.0))


# --------------------------------------------------------------------------------------- methods
def class_names(count: int) -> list[str]:
    """``count`` class names: VOC's, then ``object 20``, ``object 21``, ..."""
    return list(VOC_CLASSES[:count]) + [f"object {i}" for i in range(len(VOC_CLASSES), count)]


class MethodSteps:
    """The timed steps of one method on one backbone, batch and precision."""

    def __init__(self, method_name: str, backbone, classes: list[str], images: torch.Tensor,
                 features: ImageFeatures, device: torch.device, precision: str,
                 options: dict[str, Any] | None = None):
        torch.manual_seed(0)
        self.method = build_method(method_name, backbone, classes, **(options or {})).to(device)
        self.parameters = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=1e-4) if self.parameters else None
        self.loss_fn = build_loss(LossConfig())
        self.backbone, self.images, self.features = backbone, images, features
        self.device, self.precision = device, precision
        generator = torch.Generator().manual_seed(0)
        self.targets = (torch.randint(0, 2, (images.shape[0], len(classes)), generator=generator) * 2 - 1).float()
        self.targets = self.targets.to(device)

    def _step(self, features: ImageFeatures) -> None:
        self.method.train()
        with autocast(self.device, self.precision):
            output = self.method(features)
            loss = self.method.training_loss(output, self.targets, self.loss_fn)  # the losses compute in float32
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_cached(self) -> None:
        self._step(self.features)

    def train_uncached(self) -> None:
        with torch.no_grad(), autocast(self.device, self.precision):
            features = self.backbone.encode_image(self.images)
        self._step(ImageFeatures(features.global_features.float(), features.dense_features.float(), features.grid))

    @torch.no_grad()
    def predict(self) -> None:
        self.method.eval()
        with autocast(self.device, self.precision):
            self.method(self.backbone.encode_image(self.images)).probabilities.float().cpu()

    @torch.no_grad()
    def predict_cached(self) -> None:
        self.method.eval()
        with autocast(self.device, self.precision):
            self.method(self.features).probabilities.float().cpu()


# ------------------------------------------------------------------------------------------- VOC
def voc_splits_present(data_root: Path) -> list[str]:
    """The VOC splits whose image lists are under ``data_root``."""
    main = find_voc_year_dir(Path(data_root)) / "ImageSets" / "Main"
    return [split for split in VOC_SPLITS if (main / f"{split}.txt").is_file()]


def voc_training_split(data_root: Path, present: Sequence[str]) -> str:
    """The split to train on: trainval, else train, else val."""
    split = next((name for name in ("trainval", "train", "val") if name in present), None)
    if split is None:
        raise usage_error(f"no VOC training split under {data_root} "
                          f"(found: {', '.join(present) or 'no split'})")
    return split

