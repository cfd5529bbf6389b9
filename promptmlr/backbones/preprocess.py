"""Image preprocessing at a backbone's resolution and normalisation: one place for both.

:class:`PreprocessConfig` says what a backbone expects (each backbone fills it from its library's
own preprocessing); :func:`build_transform` turns it into torchvision transforms. Evaluation
resizes the whole image to a square (no centre crop: in multi-label recognition a crop throws
labelled objects away), as DualCoOp and HCP-MLR-PL do. Training adds the anchors' augmentations:
random resized crop and flip, and optionally RandAugment and Cutout (DualCoOp's recipe; Cutout via
torchvision's RandomErasing with a square patch of up to half the side).
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class PreprocessConfig:
    """What image preprocessing a backbone expects: input resolution and normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


CUTOUT_AREA = (0.0625, 0.25)  # a square of 1/4 to 1/2 of the image side, as DualCoOp's cutout_factor=0.5


def build_transform(preprocess: PreprocessConfig, train: bool = False, randaugment: bool = False,
                    cutout: bool = False, crop_scale: tuple[float, float] = (0.5, 1.0)) -> T.Compose:
    """PIL RGB image -> normalised ``[3, S, S]`` tensor for the given backbone preprocessing."""
    size = preprocess.image_size
    interpolation = InterpolationMode(preprocess.interpolation)
    if train:
        steps = [T.RandomResizedCrop(size, scale=crop_scale, interpolation=interpolation),
                 T.RandomHorizontalFlip()]
        if randaugment:
            steps.append(T.RandAugment())
    else:
        steps = [T.Resize((size, size), interpolation=interpolation)]
    steps += [T.ToTensor(), T.Normalize(preprocess.mean, preprocess.std)]
    if train and cutout:
        steps.append(T.RandomErasing(p=0.5, scale=CUTOUT_AREA, ratio=(1.0, 1.0), value=0))
    return T.Compose(steps)
