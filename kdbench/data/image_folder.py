"""Images in class folders (torchvision's ImageFolder layout, Tiny-ImageNet's val layout too), decoded
into memory (registered as `imagefolder`, `tiny-imagenet`, `imagenet`) or opened for streaming from disk
(`open_stream`, kdbench/data/streaming.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdbench.core.errors import ConfigError
from kdbench.core.registries import DATASETS
from kdbench.data.identity import folder_digest
from kdbench.data.streaming import DatasetCorruptError, StreamData, decode, image_side
from kdbench.data.subsets import channel_stats
from kdbench.data.types import (
    DATA_ROOT_ENV,
    DatasetInfo,
    DatasetNotFoundError,
    FolderListing,
    ImageData,
    root_or_env,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageFolderKind:
    """What is known of an image-folder dataset before reading it. image_size None: the first
    training image's shorter side; mean / std None: measured on the training images; crop_fraction:
    the central share of a test image's shorter side resized to the image size (1: all of it)."""

    subfolder: str | None = None  # also looked for under root (as torchvision's download leaves it)
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_fraction: float = 1.0


IMAGE_FOLDERS = {
    "imagefolder": ImageFolderKind(),
    # Tiny-ImageNet (CS231n, Stanford 2015): 200 classes, 500 train / 50 val 64x64 images each;
    # normalisation and full-image test transform as mdistiller's dataset/tiny_imagenet.py
    "tiny-imagenet": ImageFolderKind(
        "tiny-imagenet-200", 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), 1.0
    ),
    # ImageNet-1k (ILSVRC 2012) in torchvision's ImageFolder layout (val/ sorted into class folders):
    # 224 crops, Resize(256) + CenterCrop(224) for test, torchvision's normalisation
    "imagenet": ImageFolderKind("imagenet", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875),
}


def _image_files(folder: Path) -> list[Path]:
    # Recursive: Tiny-ImageNet keeps a class's training images in train/<wnid>/images/.
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _decode_images(paths: list[str], image_size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """Decode to RGB, the central crop_fraction of the shorter side resized to image_size
    (kdbench/data/streaming.py's `fit_image`, as the streaming loader's unaugmented images): uint8 (N, 3, S, S)."""
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode(path, image_size, crop_fraction)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _folder_split(split_dir: Path, classes: tuple[str, ...]) -> tuple[list[str], torch.Tensor]:
    """One split's (paths, labels): <class>/... subfolders, or Tiny-ImageNet's images/ + val_annotations.txt."""
    index = {name: i for i, name in enumerate(classes)}
    annotations = split_dir / "val_annotations.txt"
    if annotations.is_file():
        # Tiny-ImageNet val: "<file>\t<wnid>\t<box>" per line, the files in images/.
        rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
        if any(len(row) != 2 for row in rows):
            raise DatasetCorruptError(f"{annotations}: expected '<file>\\t<class>\\t...' lines")
        samples = [(split_dir / "images" / file, wnid) for file, wnid in rows]
    else:
        samples = [(p, d.name) for d in sorted(split_dir.iterdir()) if d.is_dir() for p in _image_files(d)]
    unknown = sorted({name for _, name in samples} - set(index))
    if unknown:
        raise DatasetCorruptError(f"{split_dir} has classes not in train/: {', '.join(unknown[:5])}")
    if not samples:
        raise DatasetNotFoundError(
            f"no images in {split_dir} (expected {split_dir}/<class>/*.png|jpg, or Tiny-ImageNet's "
            "images/ + val_annotations.txt)"
        )
    labels = torch.tensor([index[name] for _, name in samples], dtype=torch.int64)
    return [str(path) for path, _ in samples], labels


def list_image_folder(name: str, root: Path | None) -> FolderListing:
    """The files of image-folder dataset `name` (IMAGE_FOLDERS) under `root` (else $KDBENCH_DATA)."""
    kind = IMAGE_FOLDERS[name]
    base = root_or_env(root)
    layout = (
        f"expected DIR/train/<class>/*.png|jpg and DIR/val/ or DIR/test/ (class folders, or Tiny-ImageNet's "
        f"images/ + val_annotations.txt); pass --data-root DIR or set {DATA_ROOT_ENV}"
    )
    if base is None:
        raise DatasetNotFoundError(f"{name} needs a data folder: {layout}")
    base = Path(os.path.abspath(base))  # every path below it starts with it (`folder_digest`)
    if kind.subfolder and not (base / "train").is_dir() and (base / kind.subfolder).is_dir():
        base = base / kind.subfolder
    train_dir = base / "train"
    test_dir = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetNotFoundError(f"no train/ and val/ (or test/) folders in {base}; {layout}")
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    if not classes:
        raise DatasetNotFoundError(f"no class folders in {train_dir}; {layout}")
    if len(classes) < 2:  # one class: every prediction is right, a meaningless 100 %
        raise DatasetCorruptError(
            f"{train_dir} has one class folder ({classes[0]}); classification needs at least 2 classes"
        )
    train = _folder_split(train_dir, classes)
    empty = sorted(set(range(len(classes))) - set(train[1].tolist()))
    if empty:
        raise DatasetCorruptError(
            f"class folder {train_dir / classes[empty[0]]} holds no images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
        )
    return FolderListing(base, classes, train, _folder_split(test_dir, classes))


def folder_image_size(name: str, listing: FolderListing, image_size: int | None) -> int:
    """The side images are trained at: asked for, else declared for the dataset, else the first
    training image's shorter side (the folder's own resolution)."""
    if image_size is not None:
        check_image_size(image_size)
        return image_size
    return IMAGE_FOLDERS[name].image_size or image_side(listing.train[0][0])


# the largest image side decoded: one 3 x 4096 x 4096 image is 48 MiB; a larger side is a typo
MAX_IMAGE_SIZE = 4096


def check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image-size must be a whole number >= 1, got {image_size!r}")
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"--image-size {image_size} is over {MAX_IMAGE_SIZE}, the largest side kdbench decodes"
        )


def _folder_info(
    name: str, listing: FolderListing, size: int, mean, std, crop_padding: int, hflip: bool
) -> DatasetInfo:
    """The DatasetInfo of an image folder decoded at `size` px, for either loader."""
    return DatasetInfo(
        name=name,
        num_classes=len(listing.classes),
        in_chans=3,
        image_size=(size, size),
        mean=mean,
        std=std,
        crop_padding=crop_padding,
        hflip=hflip,
        classes=listing.classes,
        data_sha256=folder_digest(listing),
    )


def _load_image_folder(
    name: str, root: Path | None, image_size: int | None, crop_padding: int | None, hflip: bool
) -> tuple[DatasetInfo, ImageData, ImageData]:
    kind, listing = IMAGE_FOLDERS[name], list_image_folder(name, root)
    size = folder_image_size(name, listing, image_size)
    train = ImageData(_decode_images(listing.train[0], size), listing.train[1])
    test = ImageData(_decode_images(listing.test[0], size, kind.crop_fraction), listing.test[1])
    mean, std = (kind.mean, kind.std) if kind.mean else channel_stats(train.images)
    crop_padding = size // 8 if crop_padding is None else crop_padding
    return _folder_info(name, listing, size, mean, std, crop_padding, hflip), train, test


@DATASETS.register_module(name="imagefolder")
def load_imagefolder(
    root: Path | None, image_size: int | None = None, crop_padding: int | None = None, hflip: bool = True
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """Images in class folders (torchvision's ImageFolder layout): root/train/<class>/..., and
    root/val/ (or root/test/) the same way or as Tiny-ImageNet ships it (val_annotations.txt).

    Decoded once with PIL, centre-cropped square and resized to image_size (default: the first
    training image's shorter side, the folder's own resolution). crop_padding defaults to
    image_size / 8 (4 at 32, as CIFAR); normalisation is computed from the training images.
    """
    return _load_image_folder("imagefolder", root, image_size, crop_padding, hflip)


@DATASETS.register_module(name="tiny-imagenet")
def load_tiny_imagenet(
    root: Path | None, image_size: int | None = None, crop_padding: int | None = None, hflip: bool = True
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """Tiny-ImageNet as unpacked (tiny-imagenet-200/: train/<wnid>/images/, val/images/ +
    val_annotations.txt), under root or root/tiny-imagenet-200; 64x64 unless image_size says
    otherwise; mdistiller's normalisation (0.4802, 0.4481, 0.3975) / (0.2302, 0.2265, 0.2262)."""
    return _load_image_folder("tiny-imagenet", root, image_size, crop_padding, hflip)


@DATASETS.register_module(name="imagenet")
def load_imagenet(
    root: Path | None, image_size: int | None = None, crop_padding: int | None = None, hflip: bool = True
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """ImageNet-1k in torchvision's ImageFolder layout (train/<wnid>/, val/<wnid>/) under root or
    root/imagenet; 224 unless image_size says otherwise. Decoded into memory only when asked
    (`--loader memory`): at 224 that is about 200 GB; `--loader auto` streams it."""
    return _load_image_folder("imagenet", root, image_size, crop_padding, hflip)


# sample of training images (evenly spaced) whose pixels give a streamed folder's mean / std
STATS_SAMPLE = 2048


def open_stream(
    name: str, root: Path | None, image_size: int | None = None
) -> tuple[DatasetInfo, StreamData, StreamData]:
    """An image-folder dataset as streamed splits (kdbench/data/streaming.py): (info, train, test).

    Normalisation: declared for the dataset, else measured on up to STATS_SAMPLE training images
    decoded as the in-memory loader decodes them (all of them in a folder that small: then both
    loaders normalise alike). info.crop_padding is 0: streamed training images are augmented by
    RandomResizedCrop + flip instead.
    """
    if name not in IMAGE_FOLDERS:
        raise ConfigError(
            f"the streaming loader reads image folders ({', '.join(IMAGE_FOLDERS)}); "
            f"{name} is decoded into memory: use --loader memory"
        )
    kind, listing = (
        IMAGE_FOLDERS[name],
        list_image_folder(name, None if root is None else Path(root).expanduser()),
    )
    size = folder_image_size(name, listing, image_size)
    train = StreamData(listing.train[0], listing.train[1], size)
    test = StreamData(listing.test[0], listing.test[1], size, kind.crop_fraction)
    if kind.mean:
        mean, std = kind.mean, kind.std
    else:
        sample = torch.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).round().long().unique()
        batches = train.take(sample).batches(256, shuffle=False, augment=False, generator=None)
        mean, std = channel_stats(torch.cat([images for images, _, _ in batches]))
    return _folder_info(name, listing, size, mean, std, crop_padding=0, hflip=True), train, test
