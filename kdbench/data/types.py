"""What every dataset module shares: the in-memory split (`ImageData`), the dataset's description
(`DatasetInfo`), an image folder's file listing (`FolderListing`), the errors a missing or mismatched
dataset raises, and where a loader looks for its files.

`DatasetCorruptError` is defined in kdbench/data/streaming.py (which decodes images too) and imported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kdbench.core.errors import KdbenchError
from kdbench.data.streaming import DatasetCorruptError

DATA_ROOT_ENV = "KDBENCH_DATA"


class DatasetNotFoundError(KdbenchError, RuntimeError):
    """The dataset's files are not where they were looked for; the message says how to get them."""


class DataMismatchError(KdbenchError, RuntimeError):
    """The data found is not the data a run's spec names (`RunSpec.data_sha256`)."""


@dataclass
class ImageData:
    """One split of a dataset, decoded into memory.

    images: uint8 (N, C, H, W); labels: int64 (N,). Sample i is images[i], labels[i]. Decoded on
    the CPU; a GPU run keeps them resident on the device (`to`), where batches are then sliced.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({len(self.images)},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device))

    def take(self, indices: torch.Tensor) -> ImageData:
        """The samples at `indices`, in that order (a copy)."""
        return ImageData(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine and the models need to know about a dataset.

    mean / std are per channel, on the [0, 1] scale. crop_padding: training images are
    zero-padded by this many pixels per side and randomly cropped back (0 = no crop);
    hflip: training images are mirrored left-right with probability 1/2. data_sha256: the identity
    of the source data (`data_digest`), set by `load_dataset` and `open_stream`. resized_from: the
    (height, width) the images are stored at when a run trains at another `image_size` (a recipe's
    image size on a dataset of a fixed size): each batch is resized, after its augmentation
    (`kdbench.data.batches.normalize`); None, the images are used at their own size.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    hflip: bool
    classes: tuple[str, ...]
    data_sha256: str | None = None
    resized_from: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.in_chans})")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")


@dataclass(frozen=True)
class FolderListing:
    """An image folder's files, nothing decoded: class names, (paths, labels) per split."""

    base: Path
    classes: tuple[str, ...]
    train: tuple[list[str], torch.Tensor]
    test: tuple[list[str], torch.Tensor]


def root_or_env(root: Path | None) -> Path | None:
    """`root`, else $KDBENCH_DATA (None when neither is set); a DatasetNotFoundError for a file."""
    if root is None:
        env = os.environ.get(DATA_ROOT_ENV)
        root = Path(env).expanduser() if env else None
    if root is not None and root.exists() and not root.is_dir():
        raise DatasetNotFoundError(f"data root {root} is a file, not a folder; pass the dataset's folder")
    return root


def check_labels(labels: torch.Tensor, num_classes: int, source: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetCorruptError(
            f"{source}: labels outside 0..{num_classes - 1}; the file is damaged, fetch it again"
        )
