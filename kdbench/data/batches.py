"""Batches sliced out of memory and augmented on the device: the random crop / flip, the normalisation,
and `iterate_batches`, which reads an in-memory `ImageData` or a streamed `StreamData` alike.

Batches move to the device as uint8 and are augmented and normalised there, batched: no DataLoader
workers, no per-image Python, so on a 2-core machine feeding the model is not the bottleneck.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from kdbench.data.streaming import StreamData
from kdbench.data.types import DatasetInfo, ImageData


def augment_batch(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding, then random horizontal flip, of a uint8 batch, on its device.

    Per image this is torchvision's RandomCrop(size, padding=p) followed by
    RandomHorizontalFlip(), the training transform of RepDistiller (dataset/cifar100.py):
    offsets uniform in [0, 2p] on each axis, flip with probability 1/2. Batched here as one
    gather from the flattened padded images, the flip folded into the column indices (on the
    CPU this is 2-7x faster than advanced indexing or unfold). The random draws come from
    `generator` (on its own device), so a seeded generator gives the same batch anywhere.
    """
    pad, (n, chans, height, width) = info.crop_padding, images.shape
    if not pad and not info.hflip:
        return images
    offsets = torch.zeros(2, n, 1, dtype=torch.int64, device=generator.device)
    flip = torch.zeros(n, 1, dtype=torch.bool, device=generator.device)
    if pad:
        offsets = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=generator.device)
        images = F.pad(images, (pad, pad, pad, pad))
    if info.hflip:
        flip = torch.rand(n, 1, generator=generator, device=generator.device) < 0.5
    # Only the 3n draws cross to the device; the index grid is built there.
    offsets, flip = offsets.to(images.device, non_blocking=True), flip.to(images.device, non_blocking=True)
    rows = offsets[0] + torch.arange(height, device=images.device)
    cols = offsets[1] + torch.arange(width, device=images.device)
    cols = torch.where(flip, cols.flip(1), cols)
    flat_index = (rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]).view(n, 1, -1).expand(n, chans, -1)
    return images.reshape(n, chans, -1).gather(2, flat_index).view(n, chans, height, width)


@functools.lru_cache(maxsize=32)
def _normalization(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with uint8 x * scale - shift == (x / 255 - mean) / std; made once per device."""
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    return 1 / (255 * std), mean / std


# Conv nets (student, teacher, method modules) and batches are kept channels-last (NHWC):
# oneDNN's CPU convolutions run faster on it than on NCHW for the CIFAR ResNets (README,
# "Parallel runs"; `kdbench bench` measures it). Numbers differ from an NCHW run in the last
# float bits, so the layout is fixed here rather than left as an option.
MEMORY_FORMAT = torch.channels_last


# How a batch is resized where the run's image size is not the data's own (DatasetInfo.resized_from): the
# record's `data.resized` says it (`resize_note`)
RESIZE_MODE = "bilinear"


def resize_note(info: DatasetInfo) -> str | None:
    """What resizing the run's images went through, for its record; None where they are not resized."""
    if info.resized_from is None:
        return None
    (from_h, from_w), (to_h, to_w) = info.resized_from, info.image_size
    return f"{from_h}x{from_w} -> {to_h}x{to_w}, {RESIZE_MODE}, antialiased, per batch after augmentation"


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 images -> float32 (x / 255 - mean) / std per channel, channels-last, on their device;
    resized to `info.image_size` first where the data is stored at another size (`resized_from`)."""
    scale, shift = _normalization(info, images.device)
    images = images.to(torch.float32, memory_format=MEMORY_FORMAT)
    if info.resized_from is not None:
        images = F.interpolate(
            images, size=info.image_size, mode=RESIZE_MODE, antialias=True, align_corners=False
        )
        images = images.contiguous(memory_format=MEMORY_FORMAT)
    return images.mul_(scale).sub_(shift)


def iterate_batches(
    data: ImageData | StreamData,
    info: DatasetInfo,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images float32 normalised, labels int64, indices int64) batches, all on `device`.

    indices are the samples' positions in `data` (CRD's memory bank is indexed by them).
    The order and the augmentation are drawn from `generator` only, so one seeded generator
    makes an epoch reproducible; it is required when shuffling or augmenting. A `StreamData`
    split decodes its batches from disk (kdbench/data/streaming.py), normalised here alike.
    """
    if (shuffle or augment) and generator is None:
        raise ValueError("iterate_batches needs a torch.Generator to shuffle or augment")
    if isinstance(data, StreamData):
        streamed = data.batches(
            batch_size,
            shuffle=shuffle,
            augment=augment,
            generator=generator,
            drop_last=drop_last,
            pin_memory=torch.device(device).type == "cuda",
        )
        for images, labels, indices in streamed:
            images = images.to(device, non_blocking=True)
            yield normalize(images, info), labels.to(device, non_blocking=True), indices.to(device)
        return
    count = len(data)
    if shuffle:
        order = torch.randperm(count, generator=generator, device=generator.device).cpu()
    else:
        order = torch.arange(count)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        indices = order[start : start + batch_size]
        # Moved as uint8 (4x fewer bytes than float), augmented and normalised on the device.
        # non_blocking: a host-to-device copy then does not wait for the previous training step
        # (safe from pageable memory, which CUDA stages before the call returns).
        images = data.images[indices].to(device, non_blocking=True)
        if augment:
            images = augment_batch(images, info, generator)
        labels = data.labels[indices].to(device, non_blocking=True)
        yield normalize(images, info), labels, indices.to(device, non_blocking=True)
