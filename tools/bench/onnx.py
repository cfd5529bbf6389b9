"""The ONNX tagger against promptmlr's own predict: images/s on the CPU, file size, and agreement,
for every method on the sandbox's backbones.

    python -m tools.bench.onnx --out bench/onnx                          # every method, both sandbox CLIPs
    python -m tools.bench.onnx --out bench/onnx --methods promptmlr --backbones sandbox   # a quick look

For each backbone and method, one run folder holding the method's prompts as it starts training
(seeded; the cost of a forward pass does not depend on the values of the weights) is exported with
``promptmlr.export(format="onnx")``. Then on the same ``--images`` sandbox scenes (PNG files, written
once under ``--out``), on ``--threads`` threads for both PyTorch and onnxruntime:

``predict``  images/s of a whole prediction, files to labels: ``predict_images`` (PyTorch, the code
             under ``promptmlr predict --prompts``) and ``predict_with_tagger`` (onnxruntime, under
             ``predict --model``); both decode and resize the images the same way
``model``    images/s of the model alone on one preprocessed batch of ``--batch`` images: the
             encoder and the head in PyTorch (no gradients, prompts encoded once) against the graph

Both are timed in interleaved rounds (PyTorch, onnxruntime, PyTorch, ...), so that a neighbour's load
on the shared cores hits both alike; the median round is reported. ``max |logit diff|`` is the
largest difference between the two models' logits over the images. Results: ``onnx.json`` and
``onnx.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from promptmlr import export
from promptmlr.backbones import create_backbone
from promptmlr.cache import encode
from promptmlr.data.images import load_image
from promptmlr.data.world import SYNTHETIC_CLASS_NAMES, SyntheticWorld
from promptmlr.inference import predict_images
from promptmlr.models import build_method
from promptmlr.models.factory import METHODS
from promptmlr.prompt_files import load_prompts, save_prompts
from promptmlr.tagger import OnnxTagger, predict_with_tagger, preprocess_image
from tools.bench.common import bench_command, device_info, interleaved_seconds, write_report

BACKBONES = ("sandbox", "sandbox-vit")


def scene_images(folder: Path, count: int) -> list[Path]:
    """``count`` sandbox test scenes as PNG files (written once; kept for the next run)."""
    folder.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(seed=1)
    paths = []
    for index in range(count):
        path = folder / f"scene{index:05d}.png"
        if not path.exists():
            world.render(world.scene(index)).save(path)
        paths.append(path)
    return paths


def measure(out: Path, backbone_spec: str, method_name: str, images: Sequence[Path], batch: int, rounds: int,
            threads: int) -> dict[str, Any]:
    run = out / "runs" / f"{backbone_spec}-{method_name}"
    run.mkdir(parents=True, exist_ok=True)
    backbone = create_backbone(backbone_spec)
    torch.manual_seed(0)
    save_prompts(build_method(method_name, backbone, SYNTHETIC_CLASS_NAMES, None), run / "best.safetensors")
    model_path = out / "models" / f"{backbone_spec}-{method_name}.onnx"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export(run, model_path, format="onnx", force=True)
    export_seconds = time.perf_counter() - started
    method = load_prompts(run / "best.safetensors", backbone)[0].eval()
    tagger = OnnxTagger(model_path, threads=threads)
    transform = backbone.transform(train=False)
    opened = [load_image(path, draft_size=backbone.image_size) for path in images]
    torch_pixels = torch.stack([transform(image) for image in opened])
    onnx_pixels = np.stack([preprocess_image(image, tagger.preprocess) for image in opened])
    with torch.no_grad(), method.fixed_prompts():
        torch_logits = method(encode(backbone, torch_pixels)).logits.numpy()
        difference = float(np.abs(tagger.logits(onnx_pixels) - torch_logits).max())

        def torch_model() -> None:
            method(encode(backbone, torch_pixels[:batch]))

        model_seconds = interleaved_seconds({"pytorch": torch_model,
                                             "onnxruntime": lambda: tagger.logits(onnx_pixels[:batch])},
                                            warmup=1, rounds=rounds, device=torch.device("cpu"))
    predict_seconds = interleaved_seconds(
        {"pytorch": lambda: predict_images(method, images, batch_size=batch),
         "onnxruntime": lambda: predict_with_tagger(tagger, images, batch_size=batch)},
        warmup=1, rounds=rounds, device=torch.device("cpu"))
    row = {"backbone": backbone_spec, "method": method_name, "image_size": backbone.image_size,
           "file_mib": model_path.stat().st_size / 2**20, "export_seconds": export_seconds,
           "max_logit_difference": difference}
    for name, seconds, count in (("predict", predict_seconds, len(images)), ("model", model_seconds, batch)):
        for runtime, times in seconds.items():
            row[f"{name}_{runtime}_images_per_s"] = count / statistics.median(times)
    print(f"{backbone_spec} {method_name}: {row['file_mib']:.1f} MiB; predict {row['predict_pytorch_images_per_s']:.0f}"
          f" vs {row['predict_onnxruntime_images_per_s']:.0f} images/s; model {row['model_pytorch_images_per_s']:.0f}"
          f" vs {row['model_onnxruntime_images_per_s']:.0f}; max |logit diff| {difference:.1e}", flush=True)
    return row


def markdown(report: dict[str, Any]) -> str:
    settings, device = report["settings"], report["device"]
    lines = [
        "# The ONNX tagger against promptmlr's own predict (CPU)", "",
        f"`{report['command']}`", "",
        f"{device['name']}, {settings['threads']} threads for PyTorch {device['torch']} and onnxruntime "
        f"{report['onnxruntime']}; {settings['images']} sandbox scenes (PNG, 128 px), batches of "
        f"{settings['batch']}, median of {settings['rounds']} interleaved rounds. One run: compare the columns of a "
        f"row (both runtimes shared the same rounds), not numbers across machines.", "",
        "| backbone | method | file (MiB) | export (s) | predict: PyTorch | predict: onnxruntime | ratio "
        "| model: PyTorch | model: onnxruntime | ratio | max \\|logit diff\\| |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        predict = row["predict_onnxruntime_images_per_s"] / row["predict_pytorch_images_per_s"]
        model = row["model_onnxruntime_images_per_s"] / row["model_pytorch_images_per_s"]
        lines.append(f"| {row['backbone']} | {row['method']} | {row['file_mib']:.1f} | {row['export_seconds']:.1f} "
                     f"| {row['predict_pytorch_images_per_s']:.0f} | {row['predict_onnxruntime_images_per_s']:.0f} "
                     f"| {predict:.2f}x | {row['model_pytorch_images_per_s']:.0f} "
                     f"| {row['model_onnxruntime_images_per_s']:.0f} | {model:.2f}x "
                     f"| {row['max_logit_difference']:.1e} |")
    lines += ["", "Images/s: `predict` from files to labels (decoding and resizing included), `model` the "
              "encoder and head alone on a preprocessed batch. Ratio: onnxruntime over PyTorch."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--methods", nargs="+", default=METHODS.names(), choices=METHODS.names())
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("images", "batch", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import onnxruntime

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    images = scene_images(args.out / "images", args.images)
    rows = [measure(args.out, backbone, method, images, min(args.batch, args.images), args.rounds, args.threads)
            for backbone in args.backbones for method in args.methods]
    report = {"device": device_info(torch.device("cpu")), "onnxruntime": onnxruntime.__version__,
              "settings": {"images": args.images, "batch": args.batch, "rounds": args.rounds, "threads": args.threads},
              "rows": rows, "command": bench_command("onnx", argv)}
    write_report(args.out, "onnx", report, markdown)
    return report


if __name__ == "__main__":
    main()
