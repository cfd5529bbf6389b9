"""Pretrain the sandbox CLIP contrastively on the synthetic world, and ship it.

The sandbox backbone is an open_clip CLIP (``promptmlr-sandbox-rn``, the default: a scaled-down
ModifiedResNet image tower with CLIP's attention pool, as RN50/RN101; or ``promptmlr-sandbox-vit``,
a small ViT; both with a text transformer and the standard CLIP BPE tokenizer) trained from scratch
on (scene, caption) pairs from :mod:`promptmlr.data.world`, so that prompt tuning has a frozen,
pretrained encoder to work with offline. Four modes:

train (default)
    Render a pool of scenes once (``--pool-size``, in ``--workers`` processes, cached to
    ``<out-dir>/pool-<seed>-<size>-<n>.npz``), then train with symmetric InfoNCE, AdamW, linear
    warmup and cosine decay. Each step draws a batch from the pool, flips half the images left-right
    (the caption is written for the flipped scene, so "left of" stays true) and writes a fresh
    caption for every image; with ``--crop-fraction`` a share of the images is replaced by a close-up
    (a square crop of ``--crop-side`` of the scene, resized back, captioned for the objects it holds
    or, when it holds none, for its bare background). Progress (step, loss, lr, images/s) goes to stdout; every
    ``--save-every`` steps and at the end the model is saved atomically to
    ``<out-dir>/last.safetensors`` with a zero-shot mAP on held-out scenes, so a usable checkpoint exists
    even if the run is cut short (``--time-budget`` stops it cleanly). A step's batch is a function
    of the step alone (:class:`PairBatches`; ``--batch-workers`` processes prepare them ahead, which
    a GPU needs to be kept busy) and the checkpoint holds every other random state, so ``--resume``
    continues bit for bit as if never stopped, unless ``--time-budget`` ends the schedule (the rate
    then follows the clock, on purpose: a run on a slow machine still ends decayed). It resumes only
    under the options the run was trained with (``RUN_DEFINING_OPTIONS``); ``--steps`` and
    ``--time-budget`` may change.
--bench
    Time a few steps of one or more architectures (``--bench-arch``) and exit.
--finalize
    Take ``<out-dir>/last.safetensors``, store it as fp16 safetensors at
    ``<weights-dir>/<name>.safetensors`` (by default ``promptmlr/backbones/weights/`` and the arch
    without ``promptmlr-``: ``sandbox-rn``, ``sandbox-vit``; ``--name`` ships a candidate beside
    them), load it back through ``create_backbone("openclip:<arch>:<file>")`` (the path a user's
    own checkpoint takes), measure zero-shot mAP against chance, per-location zero-shot mAP, the
    lone-object check of ``--diagnose`` and linear probes on the global and on the mean dense
    feature of a held-out synthetic set, and write the recipe next to it (``<name>.json``).
--diagnose SPEC
    For any backbone (a shipped name or a checkpoint spec), on the same held-out set: how widely its
    attention pool spreads its attention, and how often a lone object's own dense location, the best
    location and the global embedding name it (zero-shot top-1); with ``--close-up-probes SIDE ...``
    also the fully labelled probes on close-ups of each side. Prints JSON and exits.

Example (the shipped checkpoint's command is recorded in ``sandbox-rn.json``)::

    python tools/pretrain_sandbox_clip.py --arch promptmlr-sandbox-rn --image-size 128 \\
        --out-dir /tmp/sandbox_run --steps 1500 --batch-size 256 --bf16
    python tools/pretrain_sandbox_clip.py --out-dir /tmp/sandbox_run --finalize
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d
from PIL import Image
from torch.nn.utils import parametrize

import promptmlr.backbones  # noqa: F401  (registers promptmlr's model configs with open_clip)
from promptmlr.checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from promptmlr.data.world import (
    BACKGROUND_WORDS,
    SIZES,
    SYNTHETIC_CLASS_NAMES,
    TEST_INDEX_OFFSET,
    Scene,
    SyntheticWorld,
    object_mask,
    visible_parts,
)
from promptmlr.files import atomic_write, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "promptmlr" / "backbones" / "weights"
ARCH = "promptmlr-sandbox-rn"
EVAL_TEMPLATE = "a photo of a {}."


# ------------------------------------------------------------------------------------------ data
def _render_chunk(job: tuple[int, int, int, int, int]) -> tuple[np.ndarray, list]:
    seed, size, max_objects, start, stop = job
    world = SyntheticWorld(seed, size, max_objects)
    scenes = [world.scene(i) for i in range(start, stop)]
    return np.stack([world.render_array(s, size) for s in scenes]), scenes


def render_pool(seed: int, size: int, count: int, max_objects: int, workers: int, offset: int = 0,
                log=print) -> tuple[np.ndarray, list]:
    """Scenes ``offset .. offset+count-1`` of ``SyntheticWorld(seed)`` rendered at ``size``: a uint8
    ``[N, size, size, 3]`` array and the scenes."""
    chunk = 2000
    jobs = [(seed, size, max_objects, offset + s, offset + min(s + chunk, count)) for s in range(0, count, chunk)]
    start = time.time()
    images, scenes = [], []
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for i, (array, part) in enumerate(pool.imap(_render_chunk, jobs)):
                images.append(array)
                scenes.extend(part)
                if (i + 1) % 10 == 0:
                    log(f"rendered {len(scenes)}/{count} scenes ({time.time() - start:.0f}s)")
    else:
        for job in jobs:
            array, part = _render_chunk(job)
            images.append(array)
            scenes.extend(part)
    return np.concatenate(images), scenes


def load_or_render_pool(args, log) -> tuple[np.ndarray, list]:
    cache = Path(args.out_dir) / f"pool-{args.data_seed}-{args.image_size}-{args.pool_size}-{args.max_objects}.npz"
    world = SyntheticWorld(args.data_seed, args.image_size, args.max_objects)
    if cache.exists():
        images = np.load(cache)["images"]
        scenes = [world.scene(i) for i in range(args.pool_size)]  # layout is cheap; pixels are cached
        log(f"loaded pool {cache}")
        return images, scenes
    images, scenes = render_pool(args.data_seed, args.image_size, args.pool_size, args.max_objects,
                                 args.workers, log=log)

    def write(temp: Path) -> None:
        with temp.open("wb") as handle:  # a handle: np.savez would add ".npz" to the temp name
            np.savez(handle, images=images)

    atomic_write(cache, write)
    return images, scenes


def to_tensor(images: np.ndarray | torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` images as the normalised float ``[N, 3, S, S]`` input, on ``mean``'s device."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.to(mean.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean) / std


# ----------------------------------------------------------------------------------- close-ups
CROP_GRID = 64  # raster on which an object's share inside a crop is measured (the world's layout grid)
CROP_INSIDE = 0.6  # an object with at least this share of its visible area inside a crop is in it, and named
CROP_TRIES = 8
MIN_CROP_SIDE = 0.1  # a close-up's side, at least, as a fraction of the scene's


def size_word(radius: float) -> str:
    """The world's size word for an object of ``radius`` (a fraction of the image side): a close-up
    makes a small object large, and its caption says so."""
    if radius < (SIZES["small"][1] + SIZES["medium"][0]) / 2:
        return "small"
    if radius < (SIZES["medium"][1] + SIZES["large"][0]) / 2:
        return "medium"
    return "large"


Box = tuple[float, float, float]  # a square crop: left, top and side, as fractions of the image side


def crop_scene(scene: Scene, rng: np.random.Generator, side_range: tuple[float, float]) -> tuple[Scene, Box] | None:
    """A square close-up of ``scene``: ``(view, (left, top, side))`` in image fractions, where ``view``
    holds the objects in the crop, in the crop's own coordinates and size words, so that its caption
    is true of the crop. Why: on a whole scene every location's feature is trained only through the
    pooled embedding; a crop makes a few locations the whole image, so each location learns to name
    what covers it, and a crop of bare background (a view with no objects) learns to name nothing.

    An object is in the crop when at least ``CROP_INSIDE`` of its visible (unoccluded) area is, and
    out when none of it is (every grid cell the crop touches counts); a crop that shows part of an
    object without holding it is redrawn, so no caption leaves out an object one can see. After
    ``CROP_TRIES`` such draws the scene stays whole (``None``)."""
    visible = visible_parts([object_mask(o, CROP_GRID) for o in scene.objects])
    areas = [max(int(mask.sum()), 1) for mask in visible]
    for _ in range(CROP_TRIES):
        side = float(rng.uniform(*side_range))
        left, top = (float(v) for v in rng.uniform(0, 1 - side, 2))
        x0, y0 = math.floor(left * CROP_GRID), math.floor(top * CROP_GRID)
        x1, y1 = math.ceil((left + side) * CROP_GRID), math.ceil((top + side) * CROP_GRID)
        inside = [mask[y0:y1, x0:x1].sum() / area for mask, area in zip(visible, areas)]
        if any(0 < share < CROP_INSIDE for share in inside):
            continue
        objects = tuple(replace(o, x=(o.x - left) / side, y=(o.y - top) / side, radius=o.radius / side,
                                size=size_word(o.radius / side))
                        for o, share in zip(scene.objects, inside) if share >= CROP_INSIDE)
        return replace(scene, objects=objects), (left, top, side)
    return None


def crop_pixels(image: np.ndarray, box: Box) -> np.ndarray:
    """The ``(left, top, side)`` crop of a ``uint8 [S, S, 3]`` image, resized back to ``S`` (bicubic,
    sampled at the box's exact fractions, as :func:`crop_scene` maps the objects)."""
    size = image.shape[0]
    left, top, side = (v * size for v in box)
    crop = Image.fromarray(image).resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(crop)


BACKGROUND_TEMPLATES = ("a photo of an empty {b} background", "an empty {b} background", "a {b} background",
                        "a {b} background with no objects", "nothing on a {b} background",
                        "a picture of a plain {b} background")


def describe(world: SyntheticWorld, scene: Scene, rng: np.random.Generator) -> str:
    """The world's caption for a scene with objects; for a bare-background crop, a caption that names
    only the background, so that "no object here" has words of its own."""
    if scene.objects:
        return world.caption(scene, rng)
    words = BACKGROUND_WORDS[scene.background]
    template = BACKGROUND_TEMPLATES[int(rng.integers(len(BACKGROUND_TEMPLATES)))]
    return template.format(b=words[int(rng.integers(len(words)))]) + ("." if rng.random() < 0.7 else "")


# --------------------------------------------------------------------------------------- batches
BATCH_STREAM = "per-step"  # in checkpoints: the batches are PairBatches', a function of the step alone
EPOCH_ORDER, STEP_CHOICES = 1, 2  # the two kinds of random stream a run's batches draw from


def random_stream(seed: int, kind: int, index: int) -> np.random.Generator:
    """The run's ``index``-th random stream of ``kind``. Spawn keys keep it apart from the world's
    ``default_rng([seed, index])`` streams, which a plain list would not (NumPy's seed sequence drops
    trailing zeros: ``[s, 1, 0]`` and ``[s, 1]`` are one stream)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind, index)))


@functools.lru_cache(maxsize=2)  # a step needs its epoch's order, and at an epoch's end the next one's
def epoch_order(seed: int, epoch: int, pool_size: int) -> np.ndarray:
    """Epoch ``epoch``'s permutation of the pool, from the stream ``(EPOCH_ORDER, epoch)``."""
    order = random_stream(seed, EPOCH_ORDER, epoch).permutation(pool_size)
    order.flags.writeable = False  # shared by every step of the epoch
    return order


def batch_positions(step: int, batch_size: int, pool_size: int, seed: int) -> np.ndarray:
    """The pool indices of step ``step``'s batch: consecutive slices of a fresh permutation of the
    pool per epoch (:func:`epoch_order`), a batch running over an epoch's end into the next's.
    Computed from the step alone, so any process can compute any step."""
    start, stop = step * batch_size, (step + 1) * batch_size
    parts = []
    for epoch in range(start // pool_size, (stop - 1) // pool_size + 1):
        order = epoch_order(seed, epoch, pool_size)
        offset = epoch * pool_size
        parts.append(order[max(start - offset, 0):min(stop - offset, pool_size)])
    return np.concatenate(parts)


class PairBatches(torch.utils.data.Dataset):
    """Step ``k``'s (images, caption tokens) of a pretraining run: uint8 ``[B, S, S, 3]`` and the
    tokenizer's ``[B, L]``.

    Its scenes are :func:`batch_positions`' and every other random choice of step ``k`` (which
    images are flipped, which become close-ups and where, how each is captioned) comes from the
    step's own stream ``(STEP_CHOICES, k)``, so a batch is the same whichever process makes it and in
    whatever order: batches can be prepared in parallel (on a GPU one process cannot keep up: a batch
    of 512 takes ~0.3 s to caption and crop) and a run resumes bit for bit from its step count alone."""

    def __init__(self, images: np.ndarray, scenes: Sequence[Scene], world: SyntheticWorld, tokenizer,
                 batch_size: int, seed: int, crop_fraction: float, crop_side: tuple[float, float]):
        self.images, self.scenes, self.world, self.tokenizer = images, scenes, world, tokenizer
        self.batch_size, self.seed, self.crop_fraction, self.crop_side = batch_size, seed, crop_fraction, crop_side

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random_stream(self.seed, STEP_CHOICES, step)
        idx = batch_positions(step, self.batch_size, len(self.images), self.seed)
        flip = rng.random(len(idx)) < 0.5
        images = self.images[idx]
        images[flip] = images[flip][:, :, ::-1]
        captions = []
        for row, (i, flipped) in enumerate(zip(idx, flip)):
            scene = self.scenes[i].mirror() if flipped else self.scenes[i]
            if self.crop_fraction and rng.random() < self.crop_fraction:
                close_up = crop_scene(scene, rng, self.crop_side)
                if close_up is not None:
                    scene, box = close_up
                    images[row] = crop_pixels(images[row], box)
            captions.append(describe(self.world, scene, rng))
        return torch.from_numpy(images), self.tokenizer(captions)


# ----------------------------------------------------------------------------------------- model
def build_model(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model(arch, pretrained=None, device="cpu")


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Start from a shipped checkpoint (``--init-weights``, fp16 safetensors as ``--finalize`` writes
    them): continued pretraining, a longer run for the sandbox without redoing the pairs it saw.
    Every key must match the arch, so a checkpoint of another architecture fails here."""
    from safetensors.torch import load_file

    state = {key: value.float() if value.is_floating_point() else value for key, value in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)


class _DivideBy(torch.nn.Module):
    """A parametrization: the tensor the module uses is the stored one divided by ``divisor``."""

    def __init__(self, divisor: float):
        super().__init__()
        self.divisor = divisor

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored / self.divisor


TEMPERED_KEYS = ("visual.attnpool.q_proj.weight", "visual.attnpool.q_proj.bias")


def temper_pool(model: torch.nn.Module, temperature: float) -> None:
    """Divide the attention pool's logits by ``temperature`` while pretraining (in place): its query is
    ``(W x + b) / T``, so a ``T`` above 1 flattens the pool's softmax over the grid. Real RN101 pools a
    14 x 14 grid with attention spread over it, which keeps its global embedding close to the mean of its
    dense map (DualCoOp scores that map); a small pool can learn to look at one cell instead. The
    division is folded into ``q_proj`` when the model ships (:func:`shipped_model_state`), so the
    weights keep open_clip's plain architecture. A ViT has no attention pool and is left as it is."""
    pool = getattr(model.visual, "attnpool", None)
    if temperature == 1 or not isinstance(pool, AttentionPool2d):
        return
    for name in ("weight", "bias"):
        parametrize.register_parametrization(pool.q_proj, name, _DivideBy(temperature))


def shipped_model_state(model_state: dict[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
    """A training checkpoint's model state with the pool's temperature folded into ``q_proj``
    (:func:`temper_pool`): the keys and values of open_clip's plain architecture."""
    state = dict(model_state)
    for key in TEMPERED_KEYS:
        module, name = key.rsplit(".", 1)
        stored = state.pop(f"{module}.parametrizations.{name}.original", None)
        if stored is not None:
            state[key] = stored / temperature
    return state


@torch.no_grad()
def pool_attention(pool: AttentionPool2d, x: torch.Tensor) -> torch.Tensor:
    """The attention pool's weights ``[B, heads, 1 + HW]``: how much its one query (the mean token)
    takes from the mean token and from each location of the feature map ``x`` ``[B, C, H, W]``,
    computed as open_clip's :class:`AttentionPool2d` computes them."""
    tokens = x.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + pool.positional_embedding.to(x.dtype)
    batch, count, width = tokens.shape
    head_dim = width // pool.num_heads
    query = pool.q_proj(tokens[:, :1]).view(batch, 1, pool.num_heads, head_dim).transpose(1, 2)
    keys = pool.k_proj(tokens).view(batch, count, pool.num_heads, head_dim).transpose(1, 2)
    return torch.softmax(query @ keys.transpose(-1, -2) / math.sqrt(head_dim), dim=-1).squeeze(2)


def attention_spread(weights: torch.Tensor) -> dict[str, float]:
    """How widely attention weights ``[..., N]`` spread: the entropy as a fraction of the uniform
    one, ``H / log N`` (1: uniform, 0: one token), and the effective number of tokens ``exp H``,
    both averaged over images and heads."""
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1)
    return {"normalized_entropy": float((entropy / math.log(weights.shape[-1])).mean()),
            "effective_tokens": float(entropy.exp().mean()), "tokens": int(weights.shape[-1])}


@torch.no_grad()
def pool_attention_spread(visual: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """:func:`attention_spread` of a ModifiedResNet's attention pool over ``images`` (normalised pixels)."""
    weights = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(next(visual.parameters()).device)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(batch)))))
        weights.append(pool_attention(visual.attnpool, x).float().cpu())
    return attention_spread(torch.cat(weights))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's convention: no weight decay on gains, biases, norms and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def clip_loss(image_features, text_features, logit_scale) -> torch.Tensor:
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def mean_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes with at least one positive of sklearn's average precision, in percent."""
    from sklearn.metrics import average_precision_score

    keep = labels.sum(0) > 0
    return 100.0 * float(np.mean([average_precision_score(labels[:, c], scores[:, c])
                                  for c in np.flatnonzero(keep)]))


@torch.no_grad()
def quick_zeroshot(model, tokenizer, images: torch.Tensor, labels: np.ndarray) -> float:
    model.eval()
    device = model.logit_scale.device
    text = model.encode_text(tokenizer([EVAL_TEMPLATE.format(c) for c in SYNTHETIC_CLASS_NAMES]).to(device))
    image = torch.cat([model.encode_image(images[i:i + 256].to(device)) for i in range(0, len(images), 256)])
    scores = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    model.train()
    return mean_ap(scores.cpu().numpy(), labels)


def lr_at(step: int, args, elapsed: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 0 at ``--steps`` or at ``--time-budget`` seconds,
    whichever comes first (so a run on a slow or busy machine still ends with a decayed rate)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    if args.time_budget:
        progress = max(progress, elapsed / args.time_budget)
    return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _plain(arguments: dict) -> dict:
    """Parsed arguments as checkpoint data (paths as strings)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in arguments.items()}


def chance_map(labels: np.ndarray) -> float:
    """mAP of random scores: each class's AP is then its positive rate (classes with a positive)."""
    return 100.0 * float(labels.mean(0)[labels.sum(0) > 0].mean())


# ------------------------------------------------------------------------------------- training
class Trainer:
    """One training run's state: model, optimiser, pool, and the step function."""

    def __init__(self, args, arch: str, images: np.ndarray, scenes: list, log=print):
        self.args, self.arch, self.log = args, arch, log
        self.world = SyntheticWorld(args.data_seed, args.image_size, args.max_objects)
        self.device = torch.device(args.device)
        self.model = build_model(arch, args.seed)
        if args.init_weights:
            load_weights(self.model, args.init_weights)
        temper_pool(self.model, args.pool_temperature)
        self.model.to(self.device)
        if args.channels_last:  # oneDNN's convolutions run ~1.4x faster in NHWC on CPU (ResNet towers)
            self.model.visual.to(memory_format=torch.channels_last)
        self.model.train()
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        # on the device, where the inputs are normalised (a GPU's work, not the data loader's)
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=args.lr,
                                           betas=(0.9, 0.98), eps=1e-6)
        self.pairs = PairBatches(images, scenes, self.world, self.tokenizer, args.batch_size, args.seed,
                                 args.crop_fraction, tuple(args.crop_side))
        self.step = 0

    def input(self, images: torch.Tensor) -> torch.Tensor:
        """A batch's uint8 images as the model's normalised input, on its device."""
        pixels = to_tensor(images, self.mean, self.std)
        return pixels.contiguous(memory_format=torch.channels_last) if self.args.channels_last else pixels

    def batches(self, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The inputs and tokens of steps ``self.step`` to ``--steps`` in order, made by this process
        (``workers`` 0) or by ``workers`` processes two steps ahead each. Each step's batch depends on
        the step alone (:class:`PairBatches`), so the worker count changes the speed, never the batches.
        The loader draws its base seed from a generator of its own: from the global one it would
        advance the torch RNG state a resumed run restores."""
        loader = torch.utils.data.DataLoader(
            self.pairs, batch_size=None, sampler=range(self.step, self.args.steps), num_workers=workers,
            prefetch_factor=2 if workers else None, pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),
            multiprocessing_context="fork" if workers else None)  # fork: the workers share the pool's pages
        for images, tokens in loader:
            yield self.input(images), tokens.to(self.device, non_blocking=True)

    def train_step(self, images: torch.Tensor, tokens: torch.Tensor, elapsed: float = 0.0) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.args, elapsed)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            image_features = self.model.encode_image(images)
            text_features = self.model.encode_text(tokens)
        loss = clip_loss(image_features, text_features, self.model.logit_scale.exp())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        self.step += 1
        return float(loss.detach())


def eval_set(args, mean, std) -> tuple[torch.Tensor, np.ndarray]:
    world = SyntheticWorld(args.data_seed, args.image_size, args.max_objects)
    scenes = [world.scene(TEST_INDEX_OFFSET + i) for i in range(args.eval_size)]
    images = np.stack([world.render_array(s) for s in scenes])
    return to_tensor(images, mean, std), np.stack([world.labels(s) for s in scenes])


# The options that define a run's data, model and optimisation: its recipe. --steps and --time-budget
# may change on resume (a run is extended or cut); --init-weights is overwritten by the checkpoint;
# threads, logging and saving leave the recipe as it is (--device and --channels-last change float
# rounding only).
RUN_DEFINING_OPTIONS = ("arch", "data_seed", "pool_size", "image_size", "max_objects", "batch_size", "lr",
                        "weight_decay", "warmup", "bf16", "seed", "pool_temperature", "crop_fraction",
                        "crop_side")


def check_resume_options(args, stored: dict, checkpoint: Path) -> None:
    """Refuse to resume a run under options it was not trained with.

    ``--resume`` continues the stored run bit for bit only when its data, model and optimiser are the
    stored ones; a different ``--crop-fraction`` or ``--lr`` on the command line would otherwise train a
    different run under the old one's name and recipe. Options a checkpoint predates compare against
    their defaults, which is what such a run used."""
    defaults = vars(parse_args([]))
    for name in RUN_DEFINING_OPTIONS:
        now, was = _option_text(name, getattr(args, name)), _option_text(name, stored.get(name, defaults[name]))
        if now != was:
            raise SystemExit(f"pretrain_sandbox_clip.py: error: {now} differs from {was}, which {checkpoint} was "
                             f"trained with; resume it with {was}, or start a new run in a new --out-dir")


def _option_text(name: str, value) -> str:
    """An option as typed on the command line (a flag's absence as 'no --flag'), for comparing and for messages."""
    option = "--" + name.replace("_", "-")
    if value is None or value is False:
        return f"no {option}"
    if value is True:
        return option
    if isinstance(value, (list, tuple)):
        return f"{option} {' '.join(map(str, value))}"
    return f"{option} {value}"


def train(args) -> None:
    log = _logger()
    out = Path(args.out_dir)
    resume = out / "last.safetensors"
    state = load_checkpoint(resume) if args.resume and resume.exists() else {}
    if state:
        check_resume_options(args, state.get("args", {}), resume)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    start = time.time()
    images, scenes = load_or_render_pool(args, log)
    log(f"pool: {len(images)} scenes at {args.image_size}px ready in {time.time() - start:.0f}s")
    trainer = Trainer(args, args.arch, images, scenes, log)
    eval_images, eval_labels = eval_set(args, trainer.mean, trainer.std)
    chance = chance_map(eval_labels)
    log(f"arch {args.arch}: {sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f}M params; "
        f"held-out eval {args.eval_size} scenes, chance mAP {chance:.2f}")
    if state:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = state["step"]
        restore_rng_states(state["rng"])
        log(f"resumed from step {trainer.step}" + ("" if state.get("batch_stream") == BATCH_STREAM else
            ", with batches other than the ones it would have seen: it predates per-step batches"))
    train_start = time.time() - state.get("train_seconds", 0.0)
    seen, window, losses = state.get("pairs_seen", 0), time.time(), []
    history = state.get("history", [])
    for images_t, tokens in trainer.batches(args.batch_workers):
        losses.append(trainer.train_step(images_t, tokens, time.time() - train_start))
        seen += args.batch_size
        elapsed = time.time() - train_start
        out_of_time = args.time_budget and elapsed > args.time_budget
        if trainer.step % args.log_every == 0:
            rate = args.log_every * args.batch_size / (time.time() - window)
            lr = trainer.optimizer.param_groups[0]["lr"]
            log(f"step {trainer.step}/{args.steps} loss {np.mean(losses):.4f} lr {lr:.2e} "
                f"scale {trainer.model.logit_scale.exp().item():.1f} {rate:.0f} img/s elapsed {elapsed / 60:.1f}min")
            window, losses = time.time(), []
        if trainer.step % args.save_every == 0 or trainer.step == args.steps or out_of_time:
            zeroshot = quick_zeroshot(trainer.model, trainer.tokenizer, eval_images, eval_labels)
            history.append({"step": trainer.step, "zeroshot_map": round(zeroshot, 2),
                            "minutes": round(elapsed / 60, 1), **_pool_spread_entry(trainer.model, eval_images)})
            save_checkpoint(resume, {"model": _on_cpu(trainer.model.state_dict()),
                                     "optimizer": _on_cpu(trainer.optimizer.state_dict()),
                                     "step": trainer.step, "batch_stream": BATCH_STREAM,
                                     "arch": args.arch, "args": _plain(vars(args)),
                                     "history": history, "train_seconds": elapsed, "pairs_seen": seen,
                                     "chance_map": chance, "command": _command()})
            spread = history[-1].get("pool_normalized_entropy")
            log(f"saved step {trainer.step}: zero-shot mAP {zeroshot:.2f} (chance {chance:.2f})"
                + (f", pool attention entropy {spread:.3f} of uniform" if spread is not None else ""))
        if out_of_time:
            log(f"time budget of {args.time_budget}s reached at step {trainer.step}; stopping")
            break
    log("done")


def augmentation_summary(train_args: dict) -> str:
    """The pretraining augmentation in words, for the recipe."""
    text = "left-right flip with the caption written for the flipped scene"
    fraction = train_args.get("crop_fraction", 0.0)
    if fraction:
        low, high = train_args["crop_side"]
        text += (f"; a share {fraction:g} of the images replaced by a square close-up ({low:g}-{high:g} of the "
                 "side, resized back) captioned for the objects it holds or for its bare background")
    return text


def _on_cpu(tree):
    """A state dict (nested dicts and lists of tensors) with every tensor on the CPU, as checkpoints store it."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {key: _on_cpu(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_on_cpu(value) for value in tree)
    return tree


def _pool_spread_entry(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """The attention pool's spread over held-out images, for the zero-shot history (ResNets only)."""
    if not isinstance(getattr(model.visual, "attnpool", None), AttentionPool2d):
        return {}
    model.eval()
    spread = pool_attention_spread(model.visual, images)
    model.train()
    return {"pool_normalized_entropy": round(spread["normalized_entropy"], 4),
            "pool_effective_tokens": round(spread["effective_tokens"], 2)}


def bench(args) -> None:
    log = _logger()
    torch.set_num_threads(args.threads)
    t = time.time()
    images, scenes = render_pool(args.data_seed, args.image_size, 2 * args.batch_size, args.max_objects, 1)
    log(f"render: {(time.time() - t) / len(images) * 1e3:.2f} ms/scene at {args.image_size}px (one process)")
    for arch in args.bench_arch:
        trainer = Trainer(args, arch, images, scenes, log)
        params = sum(p.numel() for p in trainer.model.parameters())
        times, batch_times = [], []
        batches = trainer.batches(workers=0)  # made in this process, so that their time is measured
        for i in range(args.bench_steps):
            t0 = time.time()
            batch = next(batches)
            t1 = time.time()
            loss = trainer.train_step(*batch)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.time() - t1)
            batch_times.append(t1 - t0)
            log(f"  {arch} step {i} loss {loss:.3f} step {times[-1]:.2f}s batch {batch_times[-1]:.2f}s")
        step = float(np.median(times[1:])) if len(times) > 1 else times[0]
        log(f"{arch}: {params / 1e6:.2f}M params, fp16 {params * 2 / 1e6:.1f}MB, batch {args.batch_size}: "
            f"{step:.2f}s/step + {np.median(batch_times):.2f}s data = "
            f"{args.batch_size / (step + np.median(batch_times)):.0f} img/s (bf16={args.bf16})")


# ------------------------------------------------------------------------------------- finalize
def finalize(args) -> None:
    """Ship ``<out-dir>/last.safetensors``: fp16 safetensors, loaded back through the user path, evaluated."""
    from safetensors.torch import save_file

    from promptmlr.backbones import create_backbone
    from promptmlr.models import build_method
    from promptmlr.scoring import image_batches, score

    def zeroshot_scores(backbone, images, classes, templates, standardize=False):
        """Zero-shot logits through promptmlr's own scoring path."""
        method = build_method("zeroshot", backbone, classes, templates=list(templates), standardize=standardize)
        return score(method, image_batches(backbone, images), logits=True, progress=False)

    log = _logger()
    torch.set_num_threads(args.threads)
    state = load_checkpoint(Path(args.out_dir) / "last.safetensors")
    weights_dir = Path(args.weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or state["arch"].removeprefix("promptmlr-")  # sandbox-rn, sandbox-vit
    target = weights_dir / f"{name}.safetensors"
    state["model"] = shipped_model_state(state["model"], state["args"].get("pool_temperature", 1.0))
    tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state["model"].items()}
    atomic_write(target, lambda temp: save_file(tensors, str(temp),
                                                 metadata={"arch": state["arch"], "step": str(state["step"])}))
    spec = f"openclip:{state['arch']}:{target}"
    backbone = create_backbone(spec)
    log(f"loaded {spec} ({target.stat().st_size / 1e6:.1f} MB)")

    results = {}
    world, test, images = held_out_set(args)
    labels = np.stack([world.labels(s) for s in test])
    scores = zeroshot_scores(backbone, images, SYNTHETIC_CLASS_NAMES, templates=(EVAL_TEMPLATE,))
    results["zeroshot_map"] = round(mean_ap(scores, labels), 2)
    results["chance_map"] = round(chance_map(labels), 2)
    standardized = zeroshot_scores(backbone, images, SYNTHETIC_CLASS_NAMES, templates=(EVAL_TEMPLATE,),
                                   standardize=True)
    results["zeroshot_map_standardized"] = round(mean_ap(standardized, labels), 2)
    small_world = SyntheticWorld(0, 64)  # the fixed set tests/test_world.py asserts on
    small = [small_world.scene(TEST_INDEX_OFFSET + i) for i in range(256)]
    small_labels = np.stack([small_world.labels(s) for s in small])
    small_scores = zeroshot_scores(backbone, [small_world.render(s) for s in small], SYNTHETIC_CLASS_NAMES,
                                   templates=(EVAL_TEMPLATE,))
    results["test_set"] = {"set": "SyntheticWorld(seed=0, image_size=64) test scenes TEST_INDEX_OFFSET + 0..255",
                           "zeroshot_map": round(mean_ap(small_scores, small_labels), 2),
                           "chance_map": round(chance_map(small_labels), 2)}
    fp32 = _fp32_backbone(state)
    scores32 = zeroshot_scores(fp32, images, SYNTHETIC_CLASS_NAMES, templates=(EVAL_TEMPLATE,))
    results["zeroshot_map_fp32_weights"] = round(mean_ap(scores32, labels), 2)
    log(f"zero-shot mAP {results['zeroshot_map']} (fp32 weights {results['zeroshot_map_fp32_weights']}), "
        f"chance {results['chance_map']}; standardized per image {results['zeroshot_map_standardized']}; "
        f"test set {results['test_set']}")

    test_global, test_dense = encode_images(backbone, images)
    results["dense_zeroshot_map"] = round(mean_ap(dense_zeroshot_scores(backbone, test_dense), labels), 2)
    log(f"per-location zero-shot mAP {results['dense_zeroshot_map']} (each class's best location)")
    results["lone_objects"] = lone_object_top1(backbone, test, test_global, test_dense)
    log(f"lone objects: {results['lone_objects']}")
    if isinstance(getattr(fp32.model.visual, "attnpool", None), AttentionPool2d):
        results["pool_attention"] = backbone_pool_spread(fp32, images)
        log(f"attention pool: entropy {results['pool_attention']['normalized_entropy']:.3f} of uniform, "
            f"{results['pool_attention']['effective_tokens']:.1f} of {results['pool_attention']['tokens']} tokens")

    train_scenes = [world.scene(i) for i in range(args.probe_train)]
    train_global, train_dense = encode_images(backbone, [world.render(s) for s in train_scenes])
    train_y = np.stack([world.labels(s) for s in train_scenes])
    on_global, on_dense = probe_maps((train_global, train_dense, train_y), (test_global, test_dense, labels))
    results["linear_probe_map"], results["linear_probe_dense_map"] = round(on_global, 2), round(on_dense, 2)
    log(f"linear probe mAP {results['linear_probe_map']} on the global feature, "
        f"{results['linear_probe_dense_map']} on the mean dense feature "
        f"({results['linear_probe_dense_map'] / results['linear_probe_map']:.2f}x; {args.probe_train} training scenes)")

    train_args = state["args"]
    recipe = {
        "name": name,
        "spec": f"openclip:{state['arch']}:<this folder>/{target.name}",
        "arch": state["arch"],
        "model_config": f"promptmlr/backbones/model_configs/{state['arch']}.json",
        "weights": {"file": target.name, "dtype": "float16", "bytes": target.stat().st_size},
        "pretraining": {
            "command": state.get("command"),
            "data": {"generator": "promptmlr.data.world.SyntheticWorld", "seed": train_args["data_seed"],
                     "pool_size": train_args["pool_size"], "image_size": train_args["image_size"],
                     "max_objects": train_args["max_objects"],
                     "augmentation": augmentation_summary(train_args)},
            "steps_done": state["step"], "steps_planned": train_args["steps"],
            "batch_size": train_args["batch_size"], "pairs_seen": state.get("pairs_seen"),
            "optimizer": {"name": "AdamW", "lr": train_args["lr"], "weight_decay": train_args["weight_decay"],
                          "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": train_args["warmup"],
                          "schedule": "linear warmup, then cosine decay to 0 at steps_planned or at "
                                      "time_budget_seconds of training, whichever comes first",
                          "time_budget_seconds": train_args["time_budget"], "grad_clip": 1.0},
            "loss": "symmetric InfoNCE with learned temperature (clamped at 100)",
            "pool_temperature": train_args.get("pool_temperature", 1.0),
            "init_weights": train_args.get("init_weights"),  # continued from these (pairs_seen: this run's)
            "bf16_autocast": train_args["bf16"], "init_seed": train_args["seed"],
            "wall_time_minutes": round(state.get("train_seconds", 0) / 60, 1),
            "machine": _machine(train_args),
            "torch": torch.__version__, "open_clip": open_clip.__version__,
            "zeroshot_history_during_training": state.get("history"),
        },
        "evaluation": {
            "set": f"SyntheticWorld(seed={args.eval_seed}, image_size={args.eval_image_size}) test scenes "
                   f"TEST_INDEX_OFFSET + 0..{args.eval_size - 1} (1-5 objects), resized by the backbone's "
                   f"eval transform",
            "template": EVAL_TEMPLATE, "metric": "mean over classes of sklearn average_precision_score, percent",
            **results,
            "linear_probe": f"one logistic regression (C=0.1) per class on standardised frozen features of "
                            f"{args.probe_train} train scenes of the same world: the global embedding "
                            f"(linear_probe_map) and the mean of the dense map (linear_probe_dense_map, "
                            f"a fully labelled preview of docs/sandbox.md's property c)",
            "command": _command(),
        },
    }
    write_json_atomic(weights_dir / f"{name}.json", recipe)
    log(f"wrote {weights_dir / f'{name}.json'}")


def backbone_pool_spread(backbone, images) -> dict[str, float]:
    """:func:`pool_attention_spread` of a promptmlr backbone's attention pool over PIL ``images``
    under its eval transform, rounded for the recipe."""
    transform = backbone.transform(train=False)
    pixels = torch.stack([transform(image) for image in images])
    spread = pool_attention_spread(backbone.model.visual.eval(), pixels)
    return {key: round(value, 4) for key, value in spread.items()}


def held_out_set(args) -> tuple[SyntheticWorld, list[Scene], list]:
    """The world, scenes and rendered images ``--finalize`` and ``--diagnose`` evaluate on: test
    scenes of world ``--eval-seed`` (indices from TEST_INDEX_OFFSET, which the pretraining pool never
    draws)."""
    world = SyntheticWorld(args.eval_seed, args.eval_image_size)
    scenes = [world.scene(TEST_INDEX_OFFSET + i) for i in range(args.eval_size)]
    return world, scenes, [world.render(s) for s in scenes]


def report_diagnosis(args) -> None:
    """Print, for the backbone ``--diagnose`` names, on the held-out scenes ``--finalize`` evaluates
    on: how widely its attention pool spreads its attention (ResNets), :func:`lone_object_top1`, and with
    ``--close-up-probes`` :func:`close_up_probes` at each side."""
    import json

    from promptmlr.backbones import create_backbone

    torch.set_num_threads(args.threads)
    backbone = create_backbone(args.diagnose)
    world, scenes, images = held_out_set(args)
    report = {"backbone": args.diagnose, "scenes": args.eval_size}
    if isinstance(getattr(backbone.model.visual, "attnpool", None), AttentionPool2d):
        report["pool_attention"] = backbone_pool_spread(backbone, images)
    report["lone_objects"] = lone_object_top1(backbone, scenes, *encode_images(backbone, images))
    if args.close_up_probes:
        report["close_up_probes"] = [close_up_probes(backbone, world, range(args.probe_train), scenes, side)
                                     for side in args.close_up_probes]
    print(json.dumps(report))


def close_up_views(world: SyntheticWorld, scenes: Sequence[Scene], side: float, seed: int
                   ) -> tuple[list[Image.Image], np.ndarray]:
    """Each scene as a close-up of a fixed ``side`` (1: the scene itself), its objects ``1 / side`` times
    as large, and the labels of the objects it holds (at least ``CROP_INSIDE`` of one in view); a
    scene :func:`crop_scene` finds no such close-up of is left out."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for scene in scenes:
        pixels = world.render_array(scene)
        if side < 1:
            close_up = crop_scene(scene, rng, (side, side))
            if close_up is None:
                continue
            scene, box = close_up
            pixels = crop_pixels(pixels, box)
        images.append(Image.fromarray(pixels))
        labels.append(world.labels(scene))
    return images, np.stack(labels)


def close_up_probes(backbone, world: SyntheticWorld, train_indices: Sequence[int], test_scenes: Sequence[Scene],
                    side: float) -> dict[str, float]:
    """The fully labelled probes of ``--finalize`` (global embedding, mean of the dense map) on close-ups
    of ``side``: whether the dense map's gap (property c of docs/sandbox.md) narrows when every object
    covers more of the grid, ``1 / side ** 2`` times the area."""
    train_images, train_y = close_up_views(world, [world.scene(i) for i in train_indices], side, seed=1)
    test_images, test_y = close_up_views(world, test_scenes, side, seed=2)
    on_global, on_dense = probe_maps((*encode_images(backbone, train_images), train_y),
                                     (*encode_images(backbone, test_images), test_y))
    return {"side": side, "train_views": len(train_images), "test_views": len(test_images),
            "classes_per_test_view": round(float(test_y.sum(1).mean()), 2), "probe_global": round(on_global, 2),
            "probe_dense": round(on_dense, 2), "dense_over_global": round(on_dense / on_global, 3)}


@torch.no_grad()
def encode_images(backbone, images, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ``[N, D]`` and dense ``[N, HW, D]`` features of PIL ``images`` under the eval transform."""
    transform = backbone.transform(train=False)
    batch = torch.stack([transform(image) for image in images])
    encoded = [backbone.encode_image(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
    return (torch.cat([e.global_features for e in encoded]), torch.cat([e.dense_features for e in encoded]))


@torch.no_grad()
def dense_zeroshot_scores(backbone, dense: torch.Tensor) -> np.ndarray:
    """Each class's score is its best location's cosine with "a photo of a {class}.": a diagnostic
    of how well single locations of the dense map match text, which DualCoOp-style methods rely on."""
    from promptmlr.models.text import class_text_features

    text = class_text_features(backbone, SYNTHETIC_CLASS_NAMES, templates=[EVAL_TEMPLATE])
    return (F.normalize(dense, dim=-1) @ text.T).amax(1).numpy()


@torch.no_grad()
def lone_object_top1(backbone, scenes: Sequence[Scene], global_features: torch.Tensor, dense: torch.Tensor
                     ) -> dict[str, float | int]:
    """Zero-shot top-1 accuracy (%) over the ``scenes`` that hold a single object: from CLIP's global
    embedding, from the dense location under the object's centre, and from the best-scoring location.

    DualCoOp-style methods score locations, so they need the object's own location to name it as the
    global embedding does, and no background location to outscore it (their spatial softmax follows
    the highest score). A lone object is where nothing else in the scene can explain a miss.
    """
    from promptmlr.models.text import class_text_features

    lone = [i for i, scene in enumerate(scenes) if len(scene.objects) == 1]
    if not lone:
        return {"scenes": 0}
    objects = [scenes[i].objects[0] for i in lone]
    truth = torch.tensor([obj.class_index for obj in objects])
    rows, cols = backbone.dense_shape[1]
    under_centre = torch.tensor([min(int(obj.y * rows), rows - 1) * cols + min(int(obj.x * cols), cols - 1)
                                 for obj in objects])
    text = class_text_features(backbone, SYNTHETIC_CLASS_NAMES, templates=[EVAL_TEMPLATE])
    cosines = F.normalize(dense[lone], dim=-1) @ text.T  # [N, HW, C]

    def top1(scores: torch.Tensor) -> float:
        return round(100.0 * (scores.argmax(-1) == truth).float().mean().item(), 2)

    return {"scenes": len(lone), "global": top1(global_features[lone] @ text.T),
            "object_location": top1(cosines[torch.arange(len(lone)), under_centre]),
            "best_location": top1(cosines.amax(1))}


def linear_probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Test scores ``[N, C]`` of one logistic regression per class (C=0.1) on standardised frozen
    features: the linear-probe ceiling CLIP reports, and, fed the mean of the dense map instead of the
    global embedding, how much of it the dense map holds (DualCoOp-style methods score that map).
    A class absent from the training scenes scores 0."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    scores = np.zeros((len(test_x), train_y.shape[1]))
    for c in range(train_y.shape[1]):
        if train_y[:, c].min() == train_y[:, c].max():
            continue
        clf = LogisticRegression(C=0.1, max_iter=1000).fit((train_x - mean) / std, train_y[:, c])
        scores[:, c] = clf.decision_function((test_x - mean) / std)
    return scores


def probe_maps(train: tuple[torch.Tensor, torch.Tensor, np.ndarray], test: tuple[torch.Tensor, torch.Tensor, np.ndarray]
               ) -> tuple[float, float]:
    """Test mAP of :func:`linear_probe_scores` on the global features and on the mean of the dense map;
    ``train`` and ``test`` are (global ``[N, D]``, dense ``[N, HW, D]``, labels ``[N, C]``)."""
    (train_global, train_dense, train_y), (test_global, test_dense, test_y) = train, test
    on_global = mean_ap(linear_probe_scores(train_global.numpy(), train_y, test_global.numpy()), test_y)
    on_dense = mean_ap(linear_probe_scores(train_dense.mean(1).numpy(), train_y, test_dense.mean(1).numpy()), test_y)
    return on_global, on_dense


def _fp32_backbone(state):
    from promptmlr.backbones.openclip import OpenCLIPBackbone

    model = build_model(state["arch"], 0)
    model.load_state_dict(state["model"])
    return OpenCLIPBackbone("fp32", model)


# ------------------------------------------------------------------------------------------ misc
def _logger():
    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - start:6.0f}s] {message}", flush=True)
    return log


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(train_args: dict) -> str:
    """Where the pretraining ran, for the recipe: the CPU, or the GPU when it ran on one."""
    if train_args.get("device", "cpu").startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (bf16={train_args['bf16']}), rendering on {_cpu_name()}"
    return f"{_cpu_name()}, {train_args['threads']} CPU threads (shared with other jobs), no GPU"


def _command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="/tmp/sandbox_run", help="checkpoints, pool cache")
    p.add_argument("--arch", default=ARCH)
    p.add_argument("--extra-config-dir", help="another folder of open_clip model configs (for --bench)")
    p.add_argument("--data-seed", type=int, default=1, help="pretraining world seed (the datasets default to 0)")
    p.add_argument("--pool-size", type=int, default=100_000)
    p.add_argument("--image-size", type=int, default=128, help="render size: the arch's input size")
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPUs with AVX512-BF16/AMX, GPUs)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC image tower (faster convolutions on CPU)")
    p.add_argument("--seed", type=int, default=0, help="init and batch-order seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda or cuda:N (the pool renders on the CPU)")
    p.add_argument("--pool-temperature", type=float, default=1.0,
                   help="divide the attention pool's logits by this while pretraining (>1 spreads its attention; "
                        "folded into the shipped weights)")
    p.add_argument("--crop-fraction", type=float, default=0.0,
                   help="share of the pretraining images replaced by a captioned close-up (0 to 1)")
    p.add_argument("--crop-side", type=float, nargs=2, default=(0.4, 0.8), metavar=("MIN", "MAX"),
                   help="a close-up's side as a fraction of the scene's, drawn uniformly")
    p.add_argument("--init-weights", metavar="FILE",
                   help="start from these weights (a shipped <name>.safetensors of the same arch) instead of "
                        "a random init: continued pretraining")
    p.add_argument("--workers", type=int, default=2, help="processes rendering the pool")
    p.add_argument("--batch-workers", type=int, default=0,
                   help="processes preparing the batches a few steps ahead (0: the training process, best on a "
                        "2-core CPU; on a GPU, most of the cores); the batches are the same for any count")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--time-budget", type=float, default=0, help="stop (and save) after this many training seconds")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.safetensors")
    p.add_argument("--eval-size", type=int, default=512, help="held-out scenes for zero-shot mAP")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--bench-arch", nargs="+", default=[ARCH])
    p.add_argument("--bench-steps", type=int, default=4)
    p.add_argument("--finalize", action="store_true")
    p.add_argument("--diagnose", metavar="SPEC",
                   help="print, for this backbone (e.g. sandbox), how widely its attention pool spreads its attention "
                        "and how often a lone object's own location names it, over the held-out scenes, and exit")
    p.add_argument("--close-up-probes", type=float, nargs="+", metavar="SIDE",
                   help="--diagnose: also the fully labelled probes (global, mean dense) on close-ups of each SIDE "
                        "(1: whole scenes; 0.5: every object twice as large), --probe-train training scenes")
    p.add_argument("--weights-dir", default=str(WEIGHTS_DIR), help="--finalize: where to ship the files")
    p.add_argument("--name", help="--finalize: the shipped files' name (default: the arch without 'promptmlr-', "
                                  "sandbox-rn or sandbox-vit); another name keeps the shipped sandbox as it is")
    p.add_argument("--eval-seed", type=int, default=0, help="--finalize: world seed of the evaluation set")
    p.add_argument("--eval-image-size", type=int, default=128, help="--finalize: evaluation render size")
    p.add_argument("--probe-train", type=int, default=2000, help="--finalize: linear-probe training scenes")
    args = p.parse_args(argv)
    if args.pool_temperature <= 0:
        p.error(f"--pool-temperature must be positive, got {args.pool_temperature}")
    if args.batch_workers < 0:
        p.error(f"--batch-workers must be 0 or more, got {args.batch_workers}")
    if not 0 <= args.crop_fraction <= 1:
        p.error(f"--crop-fraction must be in [0, 1], got {args.crop_fraction}")
    low, high = args.crop_side
    if not MIN_CROP_SIDE <= low <= high < 1:
        p.error(f"--crop-side must satisfy {MIN_CROP_SIDE} <= MIN <= MAX < 1, got {low} {high}")
    if args.close_up_probes and not args.diagnose:
        p.error("--close-up-probes needs --diagnose SPEC (the backbone whose probes it scores)")
    if args.close_up_probes and not all(MIN_CROP_SIDE <= side <= 1 for side in args.close_up_probes):
        p.error(f"--close-up-probes: each SIDE must be in [{MIN_CROP_SIDE}, 1], got {args.close_up_probes}")
    if args.init_weights and not Path(args.init_weights).is_file():
        p.error(f"--init-weights {args.init_weights}: no such file; give a shipped .safetensors checkpoint")
    if args.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", args.device):
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this machine has no CUDA device; use --device cpu")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.extra_config_dir:
        open_clip.add_model_config(args.extra_config_dir)
    if args.diagnose:
        report_diagnosis(args)
    elif args.bench:
        bench(args)
    elif args.finalize:
        finalize(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
