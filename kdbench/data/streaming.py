"""Image folders read from disk batch by batch: datasets larger than memory.

A `StreamData` is one split of an image folder (file paths and labels, nothing decoded) with the
interface kdbench/data/batches.py's `iterate_batches` reads from an in-memory `ImageData`: `labels`,
`len`, `take` (subsets and validation splits), `to` (a no-op: batches move to the device one by
one) and `batches`, which yields uint8 (N, 3, S, S) batches decoded by torch DataLoader workers;
`iterate_batches` normalises them on the device like the in-memory ones. The engine never knows
which of the two it trains on.

Transforms (PIL, per image, at the chosen side S):
    train   RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip (p 1/2):
            torchvision's ImageNet training transform (its `get_params` algorithm, bilinear)
    eval    the central `crop_fraction` of the shorter side, resized to S: Resize(S / f) +
            CenterCrop(S) (f = 0.875 is ImageNet's 224 of 256); f = 1 is how the in-memory loader
            decodes, so both loaders give the same unaugmented images (`fit_image`, shared)

Reproducible order: the epoch's permutation and one augmentation seed per sample are drawn from
the run's generator in the main process before any image is decoded; a worker transforms sample
i with a generator seeded by seed i alone. The same seed therefore gives the same batches with 0
or N workers, and the run's generator ends the epoch in the same state (checkpoints resume it).

Workers: `KDBENCH_WORKERS` (`kdbench run --workers N` sets it for every process it starts;
default `default_workers()`). Workers change speed, never numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from kdbench.core.errors import ConfigError, KdbenchError

WORKERS_ENV = "KDBENCH_WORKERS"
# auto streams when the decoded dataset would take more than this share of the available memory
# (host RAM, and the GPU's free memory when the run is on a GPU: the in-memory loader keeps the
# decoded images resident on the device)
MEMORY_FRACTION = 0.5
# torchvision's RandomResizedCrop defaults (Szegedy et al. 2015's "Inception" crop)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_NO_AUGMENT = -1  # the seed of a sample decoded without augmentation


class DatasetCorruptError(KdbenchError, RuntimeError):
    """A dataset file exists but cannot be decoded (truncated, wrong format); the message names it."""


# --- one image -----------------------------------------------------------------------------


def fit_image(image, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """The central `crop_fraction` of an RGB PIL image's shorter side, centre-cropped square and
    resized (bilinear) to size x size: uint8 (S, S, 3). PIL's `ImageOps.fit` with
    bleed (1 - f) / 2 per edge; f = 1 keeps the whole shorter side."""
    from PIL import Image, ImageOps

    bleed = (1.0 - crop_fraction) / 2
    return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR, bleed=bleed))


def random_resized_crop(image, size: int, generator: torch.Generator) -> np.ndarray:
    """torchvision's RandomResizedCrop(size) + RandomHorizontalFlip() of an RGB PIL image, every
    draw from `generator`: uint8 (S, S, 3)."""
    from PIL import Image

    width, height = image.size
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    box = None
    for _ in range(10):  # torchvision's 10 attempts, then a central crop
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        ratio = width / height
        if ratio < CROP_RATIO[0]:
            w, h = width, round(width / CROP_RATIO[0])
        elif ratio > CROP_RATIO[1]:
            w, h = round(height * CROP_RATIO[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    crop = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if float(torch.rand(1, generator=generator)) < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop)


def decode(path: str | Path, size: int, crop_fraction: float = 1.0, seed: int = _NO_AUGMENT) -> np.ndarray:
    """Image file -> uint8 (S, S, 3): augmented by `random_resized_crop` from `seed` when seed >= 0,
    else `fit_image`. Raises DatasetCorruptError naming a file PIL cannot decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as raw:
            image = raw.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetCorruptError(
            f"{path} cannot be decoded as an image ({error}); remove or replace it"
        ) from error
    if seed >= 0:
        return random_resized_crop(image, size, torch.Generator().manual_seed(seed))
    return fit_image(image, size, crop_fraction)


def image_side(path: str | Path) -> int:
    """The shorter side of an image file, read from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return min(image.size)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetCorruptError(
            f"{path} cannot be decoded as an image ({error}); remove or replace it"
        ) from error


# --- DataLoader plumbing ---------------------------------------------------------------------


class _Decoded(torch.utils.data.Dataset):
    """Item (position, seed) -> (uint8 (S, S, 3) array, None), or (None, the error's message): an
    error crosses from a worker as a value, so the main process raises it as one line."""

    def __init__(self, paths: Sequence[str], size: int, crop_fraction: float):
        self.paths, self.size, self.crop_fraction = paths, size, crop_fraction

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]):
        position, seed = item
        try:
            return decode(self.paths[position], self.size, self.crop_fraction, seed), None
        except DatasetCorruptError as error:
            return None, str(error)


def _collate(samples: list) -> tuple[torch.Tensor | None, str | None]:
    errors = [message for _, message in samples if message]
    if errors:
        return None, errors[0]
    images = torch.from_numpy(np.stack([array for array, _ in samples]))
    return images.permute(0, 3, 1, 2), None  # (N, 3, S, S), channels-last in memory


def default_workers() -> int:
    """DataLoader workers when KDBENCH_WORKERS is unset: the CPU cores but one (one at least), at most 8."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))


def workers() -> int:
    value = os.environ.get(WORKERS_ENV, "")
    if not value:
        return default_workers()
    if not value.isdigit():
        raise ConfigError(f"{WORKERS_ENV} must be a whole number >= 0, got {value!r}")
    return int(value)


class StreamData:
    """One split of an image folder: file paths and labels; images decoded batch by batch.

    paths[i] has label labels[i]. Unaugmented images are `fit_image(., image_size, crop_fraction)`
    (a training split keeps f = 1, as the in-memory loader decodes it; a test split takes the
    dataset's f); augmented ones are `random_resized_crop`.
    """

    def __init__(
        self, paths: Sequence[str], labels: torch.Tensor, image_size: int, crop_fraction: float = 1.0
    ):
        if labels.dtype != torch.int64 or labels.shape != (len(paths),):
            raise ValueError(
                f"labels must be int64 ({len(paths)},), got {labels.dtype} {tuple(labels.shape)}"
            )
        self.paths = np.asarray(paths, dtype=object)
        self.labels = labels
        self.image_size = image_size
        self.crop_fraction = crop_fraction

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> torch.Tensor:
        raise ConfigError(
            "this needs the decoded images in memory (a method's extra augmented views); the streaming "
            "loader decodes batch by batch: use --loader memory"
        )

    def to(self, device: torch.device | str) -> StreamData:
        return self  # batches go to the device one by one

    def take(self, indices: torch.Tensor) -> StreamData:
        """The samples at `indices`, in that order."""
        chosen = indices.cpu().numpy()
        return StreamData(
            self.paths[chosen].tolist(), self.labels[indices.cpu()], self.image_size, self.crop_fraction
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images (N, 3, S, S), labels int64, indices int64) on the CPU.

        The order is drawn from `generator` as the in-memory loader draws it, then one seed per
        sample for its augmentation: all before the first image is decoded.
        """
        count = len(self)
        if shuffle:
            order = torch.randperm(count, generator=generator, device=generator.device).cpu()
        else:
            order = torch.arange(count)
        if augment:
            seeds = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device).cpu()
        else:
            seeds = torch.full((count,), _NO_AUGMENT, dtype=torch.int64)
        stop = count - count % batch_size if drop_last else count
        items = list(zip(order.tolist(), seeds[order].tolist(), strict=True))
        plan = [items[start : start + batch_size] for start in range(0, stop, batch_size)]
        if not plan:
            return
        count_workers = min(workers(), len(plan))
        loader = torch.utils.data.DataLoader(
            _Decoded(self.paths, self.image_size, self.crop_fraction),
            batch_sampler=plan,
            num_workers=count_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            prefetch_factor=4 if count_workers else None,
        )
        for batch, (images, error) in zip(plan, loader, strict=True):
            if error:
                raise DatasetCorruptError(error)
            indices = torch.tensor([position for position, _ in batch], dtype=torch.int64)
            yield images, self.labels[indices], indices


# --- choosing the loader ---------------------------------------------------------------------


def available_memory() -> int:
    """Bytes of host memory available now (Linux's MemAvailable; else the free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits_in_memory(nbytes: int, device: torch.device | str = "cpu", copies: int = 1) -> bool:
    """Whether `copies` decoded copies of `nbytes` (one per concurrent run) take at most
    MEMORY_FRACTION of the available host memory, and of the GPU's free memory on a GPU."""
    budget = MEMORY_FRACTION * available_memory()
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        budget = min(budget, MEMORY_FRACTION * torch.cuda.mem_get_info(device)[0])
    return nbytes * copies <= budget
