"""Cost as the data grows: every phase of a run, per image, at several dataset sizes and class counts.

Two parts, each written to ``--out`` as ``scale.json`` and ``scale.md``:

**Sizes** (``--sizes``, default 6,000 / 30,000 / 120,000 training images, a test split a third the
size). Each size runs in its own process, so that its peak memory is its own, and goes through:
generation (``promptmlr data synth``), data lists (reading the label files and checking that
every image exists), then one ``promptmlr.api.run`` of ``--method`` (one epoch, label recovery on,
timed per Trainer phase: caching, training, evaluation, the prompts' encoding, recovery,
checkpoint, and the rest), then the report of the run (``promptmlr report``). Per phase: seconds,
milliseconds per image of what the phase handles (see :data:`IMAGES_OF`), and the peak resident
memory while in it, split into anonymous memory (what the process allocated) and file-backed pages
(the cache's memory maps, which the kernel drops under pressure: a streamed cache shows here, not
above). Disk: the dataset, the cache and the run folder. The target is a flat cost per image: at
the largest size within 1.3x of the smallest, for every phase.

**Classes** (``--classes``, default 20, 81 and 1,000): the costs that grow with the label space,
on random features of ``--class-images`` images: one training step (the prompts' pass through the
frozen text encoder, forward and backward: every step pays it), scoring a batch with the prompts
encoded once, the mAP over the whole split, and label recovery over it.

::

    python -m tools.bench.scale --out bench/scale --threads 2                       # about an hour on 2 cores
    python -m tools.bench.scale --out bench/scale-quick --sizes 600 3000 --classes 20 81
    python -m tools.bench.scale --out bench/scale-gpu --device cuda --set train.num_workers=12
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from promptmlr.files import write_json_atomic, write_text_atomic
from tools.bench.common import device_info, pick_device, synchronize, usage_error
from tools.bench.recipe import PHASES as TRAINER_ROWS
from tools.bench.recipe import PhaseClock, reached_phases

LINEAR_TOLERANCE = 1.3  # the largest size's per-image cost may be at most this multiple of the smallest's
SIZE_PHASES = ("generation", "data lists", *TRAINER_ROWS, "checkpoint", "other", "report")
# what each phase's per-image cost is per: its seconds are divided by that many images of the size's counts
IMAGES_OF: dict[str, Callable[[dict[str, int]], float]] = {
    "generation": lambda n: n["train"] + n["test"],  # scenes rendered and written
    "data lists": lambda n: n["train"] + n["test"],  # label rows read, image files checked
    "caching": lambda n: n["train"] + n["test"],  # images encoded once (the validation split is carved from train)
    "training": lambda n: n["fit"],  # one epoch over the training images
    "evaluation": lambda n: n["val"] + 2 * n["test"],  # val and test after the epoch, test again for the final scores
    "recovery": lambda n: n["fit"],  # the training images scored and relabelled
    "report": lambda n: n["test"],  # the test predictions it reads and plots
    "other": lambda n: n["train"] + n["test"],  # backbone loading, data lists again, predictions, exports
}


# ------------------------------------------------------------------------------------------ memory
def _status_kib() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process (Linux: /proc/self/status), KiB."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0])
    return values


class MemoryMeter:
    """Peak resident memory per phase, sampled every ``interval`` seconds by a thread; a phase opened
    inside another counts for the inner one (as :class:`~tools.bench.recipe.PhaseClock` times them).

    Where /proc is missing (not Linux) only the process's overall peak (``ru_maxrss``) is known. Only
    this process is counted: the generator's and the data loaders' worker processes are not.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peaks: dict[str, dict[str, float]] = {}
        self._stack: list[str] = []
        self._stop = threading.Event()
        self.available = Path("/proc/self/status").is_file()
        self._thread = threading.Thread(target=self._sample_forever, daemon=True)

    def __enter__(self) -> "MemoryMeter":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A Trainer hook (and a context for the benchmark's own phases)."""
        self._stack.append(name)
        self._sample()
        try:
            yield
        finally:
            self._sample()
            self._stack.pop()

    def _sample(self) -> None:
        innermost = self._stack[-1:]  # one read: the main thread may pop the phase meanwhile
        if not self.available or not innermost:
            return
        values = _status_kib()
        peak = self.peaks.setdefault(innermost[0], {"rss": 0.0, "anon": 0.0, "file": 0.0})
        for key, name in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")):
            peak[key] = max(peak[key], values.get(name, 0) / 1024)

    def _sample_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


# ------------------------------------------------------------------------------------------- sizes
def measure_size(train_images: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One size, every phase (see the module docstring); its files are removed afterwards unless
    ``--keep``."""
    from promptmlr.api import run
    from promptmlr.config import parse_assignment, resolve_config
    from promptmlr.data.protocol import check_images_exist, load_splits
    from promptmlr.data.synthetic import write_synthetic_dataset
    from promptmlr.report.writer import write_report

    test_images = max(1, round(train_images * args.test_fraction))
    folder = args.out / f"size-{train_images}"
    if folder.exists():
        shutil.rmtree(folder)  # a fresh dataset, cache and run, or the timing means nothing
    data_root, cache_dir, run_dir, report_dir = (folder / "data", folder / "cache", folder / "run", folder / "report")
    seconds: dict[str, float] = {}
    with MemoryMeter() as meter:
        def timed(name: str, action: Callable[[], Any]) -> Any:
            with meter.phase(name):
                started = time.perf_counter()
                value = action()
                synchronize(device)
                seconds[name] = time.perf_counter() - started
            return value

        timed("generation", lambda: write_synthetic_dataset(data_root, train_images, test_images, seed=0,
                                                            workers=args.generation_workers))
        overrides = [{"data": {"root": str(data_root), "known": args.known}},
                     {"model": {"method": args.method}},
                     {"train": {"epochs": 1, "cache": {"directory": str(cache_dir)},
                                "recovery": {"enabled": True, "known_only_epochs": 1}}},
                     *(parse_assignment(text) for text in args.set)]
        config = resolve_config("synthetic", None, overrides)

        def data_lists():
            splits = load_splits(config.data)[0]
            check_images_exist(splits)
            return splits

        splits = timed("data lists", data_lists)
        counts = {"train": train_images, "test": test_images,
                  "val": len(splits.val) if splits.val is not None else 0, "fit": len(splits.train)}
        del splits  # the run reads its own: memory below is the run's alone
        clock = PhaseClock(device)
        with meter.phase("other"):
            started = time.perf_counter()
            result = run(config, run_dir, log=lambda line: print(line, flush=True), hooks=[clock.phase, meter.phase])
            wall = time.perf_counter() - started
        clock.check(reached_phases(result.metrics["history"]))
        seconds.update({name: clock.seconds.get(name, 0.0) for name in (*TRAINER_ROWS, "checkpoint")})
        seconds["other"] = max(0.0, wall - sum(clock.seconds.values()))
        timed("report", lambda: write_report([run_dir], report_dir))
    disk = {"dataset": folder_bytes(data_root), "cache": folder_bytes(cache_dir), "run": folder_bytes(run_dir),
            "report": folder_bytes(report_dir)}
    if not args.keep:
        shutil.rmtree(folder)
    per_image_ms = {name: 1000 * seconds[name] / IMAGES_OF[name](counts) for name in IMAGES_OF if name in seconds}
    return {"train_images": train_images, "test_images": test_images, "counts": counts, "seconds": seconds,
            "per_image_ms": per_image_ms, "memory_mib": meter.peaks, "peak_rss_mib": peak_rss_mib(),
            "disk_bytes": disk, "run_wall_seconds": wall, "test_mAP": result.metrics["best"].get("test_mAP"),
            "config": {"method": args.method, "known": args.known, "overrides": list(args.set),
                       "epochs": 1, "batch_size": config.train.batch_size,
                       "eval_batch_size": config.train.eval_batch_size, "num_workers": config.train.num_workers,
                       "cache_batch_size": config.train.cache.encode_batch_size(config.train.eval_batch_size, device),
                       "cache_budget_gb": config.train.cache.budget_gb,
                       "mixed_precision": config.train.mixed_precision}}


def run_size_in_child(train_images: int, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`measure_size` in a fresh process: its peak memory is the size's alone."""
    result_file = args.out / f"size-{train_images}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "tools.bench.scale", "--one-size", str(train_images), *args.child_argv]
    log(f"size {train_images:,}: " + " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0 or not result_file.is_file():
        raise SystemExit(f"scale.py: size {train_images} failed (exit status {completed.returncode}); its output is "
                         f"above, and its files are in {args.out / f'size-{train_images}'}")
    return json.loads(result_file.read_text())


def linearity(sizes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase: the per-image cost at the largest size over the smallest's, and whether it is flat."""
    smallest, largest = sizes[0], sizes[-1]
    verdict = {}
    for name in IMAGES_OF:
        low, high = smallest["per_image_ms"].get(name), largest["per_image_ms"].get(name)
        if low and high is not None:
            ratio = high / low
            verdict[name] = {"ratio": ratio, "flat": ratio <= LINEAR_TOLERANCE}
    return verdict


# ----------------------------------------------------------------------------------------- classes
def measure_classes(count: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The costs that grow with the number of classes ``count`` (see the module docstring)."""
    from promptmlr.backbones import ImageFeatures, create_backbone
    from promptmlr.metrics import mean_average_precision
    from promptmlr.recovery import RecoveryConfig, recover_labels
    from tools.bench.common import MethodSteps, class_names, interleaved_seconds

    backbone = create_backbone(args.backbone, image_size=None).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = args.class_batch
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=generator).to(device)
    with torch.no_grad():
        encoded = backbone.encode_image(images)
    features = ImageFeatures(encoded.global_features.float(), encoded.dense_features.float(), encoded.grid)
    steps = MethodSteps(args.method, backbone, class_names(count), images, features, device, "fp32")
    timing = interleaved_seconds({"train step": steps.train_cached}, warmup=1, rounds=args.rounds, device=device)
    with steps.method.fixed_prompts():  # as evaluation scores: the prompts encoded once for the whole split
        timing.update(interleaved_seconds({"score batch": steps.predict_cached}, warmup=1, rounds=args.rounds,
                                          device=device))
    rng = np.random.default_rng(0)
    n = args.class_images
    truth = np.where(rng.random((n, count)) < min(0.5, 3.0 / count), 1, -1).astype(np.int8)
    probabilities = np.clip(0.5 + 0.3 * truth + 0.3 * rng.standard_normal((n, count)), 0, 1)
    known = np.where(rng.random((n, count)) < 0.1, truth, 0).astype(np.int8)
    started = time.perf_counter()
    mean_average_precision(probabilities, truth)
    map_seconds = time.perf_counter() - started
    recovery_seconds = {}
    sst = RecoveryConfig(enabled=True, prototype_weight=0.25, cooccurrence_weight=0.25)
    for rule, config in (("fixed", RecoveryConfig(enabled=True)), ("sst evidence", sst)):  # fixed: the default
        similarity = rng.standard_normal((n, count)).astype(np.float32) if config.prototype_weight else None
        started = time.perf_counter()
        recover_labels(probabilities, known, config, similarity)
        recovery_seconds[rule] = time.perf_counter() - started
    median = {name: float(np.median(values)) for name, values in timing.items()}
    return {"classes": count, "train_step_seconds": median["train step"], "train_batch": batch,
            "score_ms_per_image": 1000 * median["score batch"] / batch,
            "map_ms_per_image": 1000 * map_seconds / n,
            "recovery_ms_per_image": {rule: 1000 * value / n for rule, value in recovery_seconds.items()},
            "split_images": n}


# ---------------------------------------------------------------------------------------- markdown
def markdown(report: dict[str, Any]) -> str:
    device = report["device"]
    lines = [f"# Cost as the data grows, on {device['name']} ({device['type']})", ""]
    sizes = report.get("sizes") or []
    if sizes:
        config = sizes[0]["config"]
        lines += [f"{config['method']}, {config['known']:.0%} known, one epoch with label recovery, batch "
                  f"{config['batch_size']}, cache built {config['cache_batch_size']} images per encoder call, "
                  f"{config['num_workers']} data workers, precision {config['mixed_precision']}; "
                  f"overrides: {', '.join(config['overrides']) or 'none'}.", "",
                  "Milliseconds per image (of what the phase handles: `tools/bench/scale.py`, IMAGES_OF) and "
                  "seconds:", ""]
        header = "| phase | " + " | ".join(f"{s['train_images']:,} + {s['test_images']:,}" for s in sizes)
        lines += [header + " | largest / smallest |", "| --- |" + " --- |" * (len(sizes) + 1)]
        verdict = report.get("linearity", {})
        for name in SIZE_PHASES:
            cells = []
            for size in sizes:
                seconds = size["seconds"].get(name)
                per = size["per_image_ms"].get(name)
                cells.append("" if seconds is None else
                             (f"{per:.3f} ms ({seconds:.1f} s)" if per is not None else f"{seconds:.1f} s"))
            judged = verdict.get(name)
            mark = "" if judged is None else f"{judged['ratio']:.2f}x" + ("" if judged["flat"] else " **not flat**")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mark} |")
        lines += ["", "Peak resident memory per phase, MiB: anonymous (allocated) / file-backed (memory maps, "
                      "page cache the kernel can drop):", "",
                  header + " |", "| --- |" + " --- |" * len(sizes)]
        for name in SIZE_PHASES:
            cells = [(lambda m: f"{m['anon']:.0f} / {m['file']:.0f}" if m else "")(s["memory_mib"].get(name))
                     for s in sizes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| peak of the process (ru_maxrss) | " + " | ".join(f"{s['peak_rss_mib']:.0f}" for s in sizes)
                     + " |")
        lines += ["", "Disk, MiB:", "", header.replace("| phase |", "| files |") + " |",
                  "| --- |" + " --- |" * len(sizes)]
        for name in ("dataset", "cache", "run", "report"):
            lines.append(f"| {name} | " + " | ".join(f"{s['disk_bytes'][name] / 2**20:.1f}" for s in sizes) + " |")
        lines.append("| test mAP (one epoch) | " + " | ".join(f"{s['test_mAP']:.2f}" if s["test_mAP"] is not
                                                             None else "" for s in sizes) + " |")
    classes = report.get("classes") or []
    if classes:
        lines += ["", f"## Classes ({report['method']} on {report['backbone']})", "",
                  "| classes | training step, s (batch " + str(classes[0]["train_batch"]) + ") | scoring, ms/image | "
                  "mAP, ms/image | recovery, ms/image | recovery with SST's evidence, ms/image |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in classes:
            recovery = row["recovery_ms_per_image"]
            lines.append(f"| {row['classes']:,} | {row['train_step_seconds']:.3f} | {row['score_ms_per_image']:.3f} | "
                         f"{row['map_ms_per_image']:.4f} | {recovery['fixed']:.4f} | {recovery['sst evidence']:.4f} |")
        lines.append(f"\nmAP and recovery over {classes[0]['split_images']:,} images of random scores; recovery with "
                     f"fixed thresholds (the default), and with SST's co-occurrence and prototype evidence "
                     f"(`train.recovery.cooccurrence_weight`, `prototype_weight`).")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="*", default=[6000, 30000, 120000], metavar="N",
                        help="training images per size (none: skip the sizes)")
    parser.add_argument("--test-fraction", type=float, default=1 / 3, help="test images per training image")
    parser.add_argument("--classes", type=int, nargs="*", default=[20, 81, 1000], metavar="C",
                        help="class counts (none: skip the classes)")
    parser.add_argument("--class-images", type=int, default=20000, help="images of the split scored per class count")
    parser.add_argument("--class-batch", type=int, default=64, help="training and scoring batch per class count")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per class count")
    parser.add_argument("--method", default="promptmlr")
    parser.add_argument("--backbone", default="sandbox", help="for the class counts (sizes: the synthetic config's)")
    parser.add_argument("--known", type=float, default=0.1)
    parser.add_argument("--generation-workers", type=int, default=None,
                        help="processes rendering the scenes (default: the cores available, up to 8)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides of each run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--keep", action="store_true", help="keep each size's dataset, cache and run folder")
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("class_images", "class_batch", "rounds") + (("threads",) if args.threads else ()):
        if getattr(args, name) < 1:
            raise usage_error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if any(n < 10 for n in args.sizes) or any(c < 1 for c in args.classes):
        raise usage_error("--sizes need at least 10 training images each and --classes at least 1 class each")
    if not 0 < args.test_fraction <= 10 or not 0 < args.known <= 1:
        raise usage_error("--test-fraction must be in (0, 10] and --known in (0, 1]")
    if args.generation_workers is None:
        from promptmlr.data.synthetic import default_workers
        args.generation_workers = default_workers()
    elif args.generation_workers < 1:
        raise usage_error(f"--generation-workers must be at least 1, got {args.generation_workers}")
    args.sizes = sorted(args.sizes)
    args.child_argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one_size is not None:  # the child of run_size_in_child
        write_json_atomic(args.out / f"size-{args.one_size}.json", measure_size(args.one_size, args, device))
        return 0
    command = "python -m tools.bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"device": device_info(device), "command": command, "method": args.method,
                              "backbone": args.backbone, "sizes": [], "classes": []}
    for train_images in args.sizes:
        report["sizes"].append(run_size_in_child(train_images, args, print))
        if len(report["sizes"]) > 1:
            report["linearity"] = linearity(report["sizes"])
        write_json_atomic(args.out / "scale.json", report)  # what is measured so far survives a later failure
    for count in args.classes:
        print(f"classes {count:,}...", flush=True)
        report["classes"].append(measure_classes(count, args, device))
        write_json_atomic(args.out / "scale.json", report)
    text = markdown(report)
    write_text_atomic(args.out / "scale.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
