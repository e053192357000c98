"""Stratified subsets and validation splits of a dataset, and the per-channel statistics that
normalise datasets without declared ones."""

from __future__ import annotations

import torch

from kdbench.core.errors import ConfigError
from kdbench.data.types import ImageData


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation of range(len(labels)) every prefix of which is stratified.

    Each class's count in the first k indices is k * (its share of the data), rounded: the
    i-th (0-based) of a class's m samples, in a shuffled order, is placed at key (i + 1/2) / m,
    the Sainte-Laguë apportionment; ties between classes are broken by the shuffle.
    """
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled_labels = labels[shuffled]
    counts = torch.bincount(shuffled_labels)
    by_class = torch.sort(shuffled_labels, stable=True).indices
    class_starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.empty_like(by_class)
    rank_in_class[by_class] = torch.arange(len(labels)) - class_starts[shuffled_labels[by_class]]
    keys = (rank_in_class.double() + 0.5) / counts[shuffled_labels]
    return shuffled[torch.sort(keys, stable=True).indices]


def stratified_subset(data: ImageData, n: int, seed: int) -> ImageData:
    """n samples with the class proportions of `data` (counts rounded), in their original order.

    All of `data` when n >= len(data).
    """
    if n >= len(data):
        return data
    return data.take(torch.sort(stratified_order(data.labels, seed)[:n]).values)


def split_validation(train: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Split `train` into (train, val), val holding `fraction` of it, both stratified by class."""
    val_count = round(fraction * len(train))
    if not 0 < val_count < len(train):
        raise ConfigError(f"--val-split {fraction} leaves an empty split of {len(train)} samples")
    order = stratified_order(train.labels, seed)
    kept = torch.sort(order[val_count:]).values
    lost = sorted(set(train.labels.unique().tolist()) - set(train.labels[kept].unique().tolist()))
    if lost:
        raise ConfigError(
            f"--val-split {fraction} leaves class {lost[0]} without training images ({len(train)} "
            "samples in all); lower --val-split or use more data"
        )
    return train.take(kept), train.take(torch.sort(order[:val_count]).values)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, over all pixels, rounded to 4 places."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(4096):  # bounded float64 copies, even for ImageNet-sized data
        pixels = chunk.to(torch.float64)
        total += pixels.sum(dim=(0, 2, 3))
        total_sq += pixels.square().sum(dim=(0, 2, 3))
    pixels_per_channel = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / (pixels_per_channel * 255.0)
    std = (total_sq / (pixels_per_channel * 255.0**2) - mean.square()).clamp_min(0).sqrt()
    # a channel of one value in every pixel has no spread to scale: its std is 1, not 0, whose division made
    # every input NaN ("non-finite loss" at the first step, naming nothing)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) or 1.0 for v in std.tolist())
