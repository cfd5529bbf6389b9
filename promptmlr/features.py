"""Where a run's image features come from: the feature cache, or the frozen encoder batch by batch.

A :class:`FeatureSource` answers the data questions of one run, so that the training loop
(:mod:`promptmlr.engine`) only asks for loaders and features:

- whether to cache (``train.cache.enabled``; ``auto`` is off only when the disk cannot hold what is
  still to build), decided once, on the main process, for every process;
- the views each split is seen through: the evaluation transform, and for training either
  ``train.cache.views`` augmented views stored in the cache or, without it, the augmentation applied
  to every image every epoch;
- the loaders: over the cached features (:mod:`promptmlr.cache`, built here if absent, the encoding
  shared among accelerate's processes) or over the images, prepared by accelerate;
- a loader batch turned into :class:`~promptmlr.backbones.base.ImageFeatures` and the dataset rows
  it holds, read from the cache or encoded under ``no_grad``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from promptmlr.backbones.base import FrozenCLIP, ImageFeatures
from promptmlr.cache import (
    ALONE,
    CachedFeatureDataset,
    ProcessGroup,
    build_or_open_cache,
    bytes_to_build,
    cache_root,
    encode,
    estimated_bytes,
    free_bytes,
)
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.protocol import Splits
from promptmlr.scoring import FeatureBatch


def process_group(accelerator: Accelerator) -> ProcessGroup:
    """accelerate's processes as the group that shares the cache's encoding pass."""
    if accelerator.num_processes == 1:
        return ALONE
    return ProcessGroup(accelerator.process_index, accelerator.num_processes,
                        lambda value: broadcast_object_list([value], from_process=0)[0],
                        accelerator.wait_for_everyone)


class FeatureSource:
    """The features of one run's splits, from the cache or the encoder (see the module docstring).

    ``config`` is the run's ``train:`` section (:class:`promptmlr.engine.TrainConfig`); its batch
    sizes, seed, data workers, augmentation and ``cache`` are read. Messages go to the main
    process's output, through ``accelerator``.
    """

    def __init__(self, backbone: FrozenCLIP, splits: Splits, config: Any, accelerator: Accelerator):
        self.backbone = backbone  # frozen: never wrapped by accelerate
        self.splits = splits
        self.config = config
        self.accelerator = accelerator
        self.use_cache = self._decide_cache()

    def _decide_cache(self) -> bool:
        """Whether to cache: ``auto`` says no only when the disk cannot hold what is still to build.
        Decided on the main process and shared, so that every process takes the same path."""
        cache = self.config.cache
        if cache.enabled == "off":
            return False
        parts = [(self.splits.train, self.transforms(train=True, cached=True))]
        parts += [(split, self.transforms(train=False, cached=True))
                  for split in (self.splits.val, self.splits.test) if split is not None]
        rows = sum(len(dataset) * len(transforms) for dataset, transforms in parts)
        size = estimated_bytes(self.backbone, rows, cache.dtype)
        smaller = "" if cache.dtype == "int8" else \
            f" (train.cache.dtype=int8 takes ~{estimated_bytes(self.backbone, rows, 'int8') / 2**30:.1f} GiB)"
        if cache.enabled == "auto":
            group = process_group(self.accelerator)
            root = cache_root(cache.directory)
            needed, free = group.share(
                (bytes_to_build(self.backbone, parts, root, self.config.seed, cache.dtype), free_bytes(root))
                if group.is_main else None)
            if needed > free:
                self.accelerator.print(
                    f"feature cache off: it needs ~{needed / 2**30:.1f} GiB more and {root} has "
                    f"{free / 2**30:.1f} GiB free; features are computed every step. Point "
                    f"train.cache.directory at a larger disk{smaller}")
                return False
        if size > cache.budget_gb * 2**30:
            self.accelerator.print(
                f"feature cache ~{size / 2**30:.1f} GiB exceeds train.cache.budget_gb={cache.budget_gb}: it "
                f"is built on disk and streamed from there every epoch, so steps wait on the disk where "
                f"memory cannot hold it{smaller}")
        return True

    def transforms(self, train: bool, cached: bool | None = None) -> list:
        """The views a split is seen through: with the cache (``cached``, default: whether this run
        caches) training takes ``cache.views`` augmented views, or only the eval view when it is 1."""
        backbone = self.backbone
        cached = self.use_cache if cached is None else cached
        if not train or (cached and self.config.cache.views == 1):
            return [backbone.transform(train=False)]
        augment = backbone.transform(train=True, randaugment=self.config.randaugment, cutout=self.config.cutout)
        return [augment] * (self.config.cache.views if cached else 1)

    def loader(self, dataset: MultiLabelDataset, train: bool, description: str) -> DataLoader:
        """A prepared loader over ``dataset``: shuffled training batches, or evaluation batches in
        order; its cache is built first if it is not on disk yet (``description`` names it in the
        progress bar)."""
        config = self.config
        batch_size = config.batch_size if train else config.eval_batch_size
        transforms = self.transforms(train)
        if self.use_cache:
            cache = build_or_open_cache(
                self.backbone, dataset, transforms, config.cache.directory, config.seed,
                config.cache.encode_batch_size(config.eval_batch_size, self.accelerator.device), config.num_workers,
                config.cache.dtype, self.accelerator.autocast,
                description, process_group(self.accelerator))
            source = CachedFeatureDataset(cache)
            loader = DataLoader(source, batch_size=batch_size, shuffle=train, collate_fn=source.collate,
                                pin_memory=torch.cuda.is_available())  # no workers: see CachedFeatureDataset
        else:
            loader = DataLoader(dataset.with_transform(transforms[0], draft_size=self.backbone.image_size),
                                batch_size=batch_size, shuffle=train, num_workers=config.num_workers,
                                pin_memory=torch.cuda.is_available())
        return self.accelerator.prepare_data_loader(loader)

    def start_epoch(self, loader, epoch: int) -> None:
        """Before training epoch ``epoch`` (0-based): the loader's shuffling for that epoch and, from
        a cache of several views, the view each image is seen through in it."""
        loader.set_epoch(epoch)
        if isinstance(loader.dataset, CachedFeatureDataset):
            loader.dataset.draw_views(self.config.seed, epoch)

    def from_batch(self, batch) -> FeatureBatch:
        """A loader batch as features (float32) and the dataset rows it holds."""
        if self.use_cache:
            global_features, dense, indices = batch
            return ImageFeatures(global_features.float(), dense.float(), self.backbone.dense_shape[1]), indices
        images, _, indices = batch
        return encode(self.backbone, images, self.accelerator.autocast), indices

    def batches(self, loader: Iterable) -> Iterator[FeatureBatch]:
        """Every batch of ``loader`` as :meth:`from_batch` gives it."""
        return (self.from_batch(batch) for batch in loader)
