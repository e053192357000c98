"""Seeded class patterns plus noise, a learnable stand-in dataset for tests and smoke runs
(registered as `synthetic`)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kdbench.core.registries import DATASETS
from kdbench.data.subsets import channel_stats
from kdbench.data.types import DatasetInfo, ImageData


@DATASETS.register_module(name="synthetic")
def load_synthetic(
    root: Path | None,
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int = 32,
    noise: float = 0.35,
    seed: int = 0,
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """A seeded, learnable stand-in dataset for tests and smoke runs; `root` is not used.

    Each class has a smooth random pattern (4x4 uniform noise upsampled bilinearly); a sample
    is its class's pattern, shifted by up to image_size/8 pixels, plus Gaussian pixel noise of
    std `noise` (on the [0, 1] scale). Classes are balanced. The same arguments give the same
    tensors on every machine (torch's CPU generator).
    """
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, in_chans, 4, 4, generator=generator)
    shift = image_size // 8
    patterns = F.interpolate(patterns, size=image_size + 2 * shift, mode="bilinear", align_corners=False)

    def make(count: int) -> ImageData:
        labels = torch.arange(count) % num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        offsets = torch.randint(0, 2 * shift + 1, (2, count, 1), generator=generator)
        rows = offsets[0] + torch.arange(image_size)
        cols = offsets[1] + torch.arange(image_size)
        images = patterns.permute(0, 2, 3, 1)[labels[:, None, None], rows[:, :, None], cols[:, None, :]]
        images = images.permute(0, 3, 1, 2) + noise * torch.randn(
            count, in_chans, image_size, image_size, generator=generator
        )
        return ImageData((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    train, test = make(num_train), make(num_test)
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name="synthetic",
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=(image_size, image_size),
        mean=mean,
        std=std,
        crop_padding=shift,
        hflip=False,
        classes=tuple(f"class{i}" for i in range(num_classes)),
    )
    return info, train, test
