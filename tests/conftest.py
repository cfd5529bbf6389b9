"""Shared test fixtures: the read-only ``../shared`` folder, tiny generated images, and tiny frozen
backbones that run in milliseconds."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_DIR = SHARED / "models" / "clip-bpe-tokenizer"
TINY_SPECS = ("openclip:promptmlr-tiny-vit", "openclip:promptmlr-tiny-rn")


def shared_path(*parts: str) -> Path:
    """A path under ``../shared``; skips the calling test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers CLIPModel saved with the real CLIP tokenizer files (offline)."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer_dir = shared_path("models", "clip-bpe-tokenizer")
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-hf-clip")
    CLIPModel(config).save_pretrained(directory)
    for file in tokenizer_dir.iterdir():
        if file.name != "README.md":
            shutil.copy(file, directory)
    return directory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (as CI clones it); tests skip when it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (CI clones the repo with shared/ beside it)")
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a small image file: ``make_image(path, size=(32, 24), color=(200, 30, 30), mode="RGB")``."""

    def make(path: Path, size: tuple[int, int] = (32, 24), color=(200, 30, 30), mode: str = "RGB",
             **save_options) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color).save(path, **save_options)
        return path

    return make


COLOUR_CLASSES = ["red", "green", "blue"]


def write_colour_csv(root: Path, counts=(("train", 20), ("test", 10)), seed: int = 0) -> Path:
    """CSV splits of 32 px images labelled by the colour channels lit in them: learnable in a few
    steps even by a random tiny encoder, so training tests can assert on their numbers."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        rows = [["image", *COLOUR_CLASSES]]
        for index in range(count):
            labels = rng.random(3) < 0.5
            labels[rng.integers(3)] = True
            pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            for channel in np.flatnonzero(labels):
                top = rng.integers(0, 16)
                pixels[top:top + 16, :, channel] = 230
            path = root / "images" / f"{split}{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            rows.append([f"images/{path.name}", *("1" if value else "-1" for value in labels)])
        with open(root / f"{split}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


@pytest.fixture(scope="module")
def vit():
    """The tiny ViT CLIP (random weights), built once per module."""
    from promptmlr.backbones import create_backbone

    return create_backbone(TINY_SPECS[0])


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    """A standard normal tensor drawn from its own generator: the same for every caller and order."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the tests share the machine with other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
