"""Datasets held in memory as uint8 tensors, and a batch iterator that augments on the device.

Every loader decodes its files once into an `ImageData` (uint8 images, int64 labels) and
describes the dataset in a `DatasetInfo` (shape, classes, normalisation, augmentation).
`iterate_batches` then slices batches out of memory, moves them to the device as uint8 and
applies the random crop / flip and the normalisation there, batched: no DataLoader workers,
no per-image Python, so on a 2-core machine feeding the model is not the bottleneck.

Loaders (registered in `kdbench.core.registries.DATASETS`, called as `fn(root, **options)`):
    fashion-mnist   IDX files (Xiao et al. 2017): Debian's dataset-fashion-mnist package,
                    torchvision's FashionMNIST/raw/ folder, or the files in any folder
    cifar10         torchvision's pickles under root/cifar-10-batches-py (Krizhevsky 2009)
    cifar100        torchvision's pickles under root/cifar-100-python, fine labels
    imagefolder     root/train/<class>/... and root/val (or root/test); Tiny-ImageNet's val layout too
    tiny-imagenet   the same layout (root or root/tiny-imagenet-200), 64x64, declared normalisation
    imagenet        the same layout (root or root/imagenet), 224x224, ImageNet's normalisation
    digits          scikit-learn's bundled 8x8 digits (UCI optdigits test set), stratified split
    synthetic       seeded class patterns plus noise, for tests and smoke runs

Nothing here downloads anything: a missing dataset raises DatasetNotFoundError saying where
it was looked for and how to get it.

The image-folder datasets can also be streamed from disk (`Recipe.loader`: memory | stream |
auto; kdbench/data/streaming.py): `prepare_data` then hands the engine `StreamData` splits, which
`iterate_batches` reads like `ImageData`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import inspect
import os
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.core.registries import DATASETS, lookup
from kdbench.core.spec import Recipe
from kdbench.data.streaming import (
    DatasetCorruptError,
    StreamData,
    available_memory,
    decode,
    fits_in_memory,
    image_side,
)

DATA_ROOT_ENV = "KDBENCH_DATA"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(KdbenchError, RuntimeError):
    """The dataset's files are not where they were looked for; the message says how to get them."""


class DataMismatchError(KdbenchError, RuntimeError):
    """The data found is not the data a run's spec names (`RunSpec.data_sha256`)."""


# DatasetCorruptError is defined in kdbench/data/streaming.py (which decodes images too), imported from here too


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
    of the source data (`data_digest`), set by `load_dataset` and `open_stream`.
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

    def __post_init__(self) -> None:
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.in_chans})")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")


def list_datasets() -> list[str]:
    return sorted(DATASETS.module_dict)


def load_dataset(
    name: str, root: str | os.PathLike | None = None, **options
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """Load dataset `name` as (info, train, test); `options` are the loader's keyword arguments.

    root: where to look (default: the KDBENCH_DATA environment variable; Fashion-MNIST also
    falls back to Debian's package folder). Raises UnknownNameError for an unknown name,
    ValueError for an option the loader does not take.
    """
    loader = lookup(DATASETS, "dataset", name)
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"dataset '{name}' has no option {', '.join(unknown)}; options: {', '.join(accepted)}"
        )
    info, train, test = loader(None if root is None else Path(root).expanduser(), **options)
    if info.data_sha256 is None:  # image folders name their files; every other loader, its arrays
        info = replace(info, data_sha256=arrays_digest(train, test))
    return info, train, test


# --- the identity of the data (RunSpec.data_sha256) ----------------------------------------


def arrays_digest(*splits: ImageData) -> str:
    """SHA-256 of decoded splits: each one's image and label shapes and bytes, in order."""
    digest = hashlib.sha256()
    for split in splits:
        for tensor in (split.images, split.labels):
            digest.update(repr(tuple(tensor.shape)).encode())
            digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# files of an image folder whose bytes go into its digest (evenly spaced over each split): names and
# sizes alone do not tell apart two folders of same-sized files (uncompressed or noise images)
DIGEST_SAMPLE = 32


def folder_digest(listing: FolderListing) -> str:
    """SHA-256 of an image folder: per split, each file's path below the dataset folder, its size and its
    class, and the bytes of DIGEST_SAMPLE of its files. Cheap on a million files (one stat each, a few
    reads, nothing decoded); an edit that keeps a file's size, outside the sample, is not noticed."""
    digest = hashlib.sha256()
    prefix = len(str(listing.base)) + 1
    for split, (paths, labels) in (("train", listing.train), ("test", listing.test)):
        for path, label in zip(paths, labels.tolist(), strict=True):
            line = f"{split}\t{path[prefix:]}\t{os.stat(path).st_size}\t{listing.classes[label]}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
        for index in np.unique(np.linspace(0, len(paths) - 1, min(DIGEST_SAMPLE, len(paths))).round()):
            digest.update(Path(paths[int(index)]).read_bytes())
    return digest.hexdigest()


def data_digest(dataset: str, data_root: str | None, recipe: Recipe) -> str:
    """The identity of the data a run of `recipe` on `dataset` reads (`RunSpec.data_sha256`): an image
    folder's `folder_digest` (nothing decoded), else the `arrays_digest` of the decoded splits. The
    recipe's subset and validation split are not in it: they are in the spec's recipe."""
    if dataset in IMAGE_FOLDERS:
        return folder_digest(list_image_folder(dataset, None if data_root is None else Path(data_root)))
    return prepare_data(dataset, data_root, recipe).info.data_sha256


def check_data(expected: str | None, info: DatasetInfo, data_root: str | None) -> None:
    """Refuse data whose identity differs from the one a spec or record names (None: not recorded)."""
    if expected is not None and expected != info.data_sha256:
        where = f"under {data_root}" if data_root else f"in the default location (${DATA_ROOT_ENV})"
        raise DataMismatchError(
            f"the {info.name} data found {where} has SHA-256 {str(info.data_sha256)[:12]}, not the run's "
            f"{expected[:12]}: pass --data-root pointing at the data the run was trained on"
        )


# --- batches -------------------------------------------------------------------------------


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


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 images -> float32 (x / 255 - mean) / std per channel, channels-last, on their device."""
    scale, shift = _normalization(info, images.device)
    return images.to(torch.float32, memory_format=MEMORY_FORMAT).mul_(scale).sub_(shift)


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


# --- subsets -------------------------------------------------------------------------------


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


def _root_or_env(root: Path | None) -> Path | None:
    """`root`, else $KDBENCH_DATA (None when neither is set); a DatasetNotFoundError for a file."""
    if root is None:
        env = os.environ.get(DATA_ROOT_ENV)
        root = Path(env).expanduser() if env else None
    if root is not None and root.exists() and not root.is_dir():
        raise DatasetNotFoundError(f"data root {root} is a file, not a folder; pass the dataset's folder")
    return root


def _check_labels(labels: torch.Tensor, num_classes: int, source: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetCorruptError(
            f"{source}: labels outside 0..{num_classes - 1}; the file is damaged, fetch it again"
        )


# --- Fashion-MNIST -------------------------------------------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST-style files use


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (LeCun's MNIST format), gzip-compressed or not.

    Format (http://yann.lecun.com/exdb/mnist/): magic = 0x00 0x00 <type> <ndim>, then ndim
    big-endian uint32 sizes, then the data, row-major. A wrong magic, a size that does not
    match the payload, or a broken gzip stream raises DatasetCorruptError naming the file.
    """
    advice = "delete it and reinstall the dataset (e.g. apt-get install --reinstall dataset-fashion-mnist)"
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetCorruptError(f"{path} cannot be read ({error}); {advice}") from error
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, IDX_UBYTE, ndim)):
        raise DatasetCorruptError(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes "
            f"(magic {raw[:4].hex() or 'missing'}); {advice}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetCorruptError(
            f"{path} holds {len(raw)} bytes but its header {shape} needs {expected} (truncated?); {advice}"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(shape)


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (uncompressed preferred, else .gz), or None if any is missing."""
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        found[key] = next((f for f in (folder / stem, folder / f"{stem}.gz") if f.is_file()), None)
        if found[key] is None:
            return None
    return found


@DATASETS.register_module(name="fashion-mnist")
def load_fashion_mnist(root: Path | None) -> tuple[DatasetInfo, ImageData, ImageData]:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv 1708.07747): 60k/10k 28x28 grey, 10 classes.

    The folder searched is `root`, else $KDBENCH_DATA, else Debian's package folder; in it the
    IDX files may lie directly, in torchvision's FashionMNIST/raw/, or in fashion-mnist/.
    Normalisation 0.2860 / 0.3530: the training set's pixel mean / std (checked by the tests).
    """
    base = _root_or_env(root) or DEBIAN_FASHION_MNIST
    searched = [base, base / "FashionMNIST" / "raw", base / "fashion-mnist"]
    files = next((f for f in map(_find_idx_files, searched) if f is not None), None)
    if files is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {', '.join(map(str, searched))}; install it with "
            f"`apt-get install dataset-fashion-mnist`, or pass --data-root DIR / set {DATA_ROOT_ENV} "
            f"to a folder with the four IDX .gz files ({', '.join(FASHION_MNIST_FILES.values())})"
        )
    splits = []
    for split in ("train", "test"):
        image_file, label_file = files[f"{split}_images"], files[f"{split}_labels"]
        images, labels = read_idx(image_file, ndim=3), read_idx(label_file, ndim=1).long()
        if images.shape[1:] != (28, 28):
            raise DatasetCorruptError(f"{image_file} holds {tuple(images.shape[1:])} images, not 28x28")
        if len(images) != len(labels):
            raise DatasetCorruptError(
                f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels; "
                "reinstall the dataset"
            )
        _check_labels(labels, 10, label_file)
        splits.append(ImageData(images.unsqueeze(1), labels))
    info = DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        in_chans=1,
        image_size=(28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        crop_padding=2,
        hflip=True,
        classes=FASHION_MNIST_CLASSES,
    )
    return info, splits[0], splits[1]


# --- CIFAR ---------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files, which hold only dicts, lists, strings and numpy arrays.

    Any other global is refused, so a tampered file cannot run code on load (the risk the
    pickle documentation warns about). The allowed names cover the original Python 2 files
    and files re-pickled by numpy 1 or 2 with protocols 2 to 5.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            # latin1 decodes the Python 2 strings of the original files (torchvision does the same).
            return _CifarUnpickler(file, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as error:
        raise DatasetCorruptError(
            f"{path} is not a CIFAR python batch ({error}); delete it and fetch the dataset again"
        ) from error


def _cifar_split(paths: list[Path], label_key: str, num_classes: int) -> ImageData:
    images, labels = [], []
    for path in paths:
        batch = _read_cifar_pickle(path)
        try:
            # Each row is 3072 bytes: the red, green and blue 32x32 planes, row-major.
            images.append(torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)))
            labels.append(torch.as_tensor(batch[label_key], dtype=torch.int64))
        except (KeyError, ValueError, TypeError) as error:
            raise DatasetCorruptError(
                f"{path} lacks CIFAR's 'data' (N x 3072 bytes) or '{label_key}' ({error!r}); fetch it again"
            ) from error
        if len(images[-1]) != len(labels[-1]):
            raise DatasetCorruptError(f"{path}: {len(images[-1])} images but {len(labels[-1])} labels")
        _check_labels(labels[-1], num_classes, path)
    return ImageData(torch.cat(images), torch.cat(labels))


def _load_cifar(
    root: Path | None,
    *,
    title: str,
    folder: str,
    train_files: list[str],
    test_file: str,
    meta_file: str,
    label_key: str,
    names_key: str,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[DatasetInfo, ImageData, ImageData]:
    how = (
        f"pass --data-root DIR or set {DATA_ROOT_ENV} to a folder holding {folder}/ in torchvision's layout "
        f"(made where there is network by torchvision.datasets.{title.replace('-', '')}(DIR, download=True))"
    )
    base = _root_or_env(root)
    if base is None:
        raise DatasetNotFoundError(f"{title} needs a data folder: {how}")
    needed = [*train_files, test_file, meta_file]
    searched = [base / folder, base]
    found = next((d for d in searched if all((d / f).is_file() for f in needed)), None)
    if found is None:
        raise DatasetNotFoundError(
            f"{title} not found in {', '.join(map(str, searched))} (needs {', '.join(needed)}); {how}"
        )
    meta = _read_cifar_pickle(found / meta_file)
    if names_key not in meta or len(meta[names_key]) != num_classes:
        raise DatasetCorruptError(f"{found / meta_file} lacks {num_classes} '{names_key}'; fetch it again")
    train = _cifar_split([found / f for f in train_files], label_key, num_classes)
    test = _cifar_split([found / test_file], label_key, num_classes)
    info = DatasetInfo(
        name=title.lower(),
        num_classes=num_classes,
        in_chans=3,
        image_size=(32, 32),
        mean=mean,
        std=std,
        crop_padding=4,
        hflip=True,
        classes=tuple(meta[names_key]),
    )
    return info, train, test


@DATASETS.register_module(name="cifar10")
def load_cifar10(root: Path | None) -> tuple[DatasetInfo, ImageData, ImageData]:
    """CIFAR-10 (Krizhevsky 2009): 50k/10k 32x32 colour, 10 classes, torchvision's python pickles.

    Normalisation: the per-pixel mean / std of the training set, (0.4914, 0.4822, 0.4465) /
    (0.2470, 0.2435, 0.2616). Augmentation: crop with padding 4 and flip, as for CIFAR-100.
    """
    return _load_cifar(
        root,
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )


@DATASETS.register_module(name="cifar100")
def load_cifar100(root: Path | None) -> tuple[DatasetInfo, ImageData, ImageData]:
    """CIFAR-100 (Krizhevsky 2009): 50k/10k 32x32 colour, the 100 fine labels.

    Normalisation and augmentation as RepDistiller (Tian et al., ICLR 2020, dataset/cifar100.py):
    mean (0.5071, 0.4867, 0.4408), std (0.2675, 0.2565, 0.2761), RandomCrop(32, padding=4), flip.
    """
    return _load_cifar(
        root,
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=["train"],
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    )


# --- ImageFolder ---------------------------------------------------------------------------

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


@dataclass(frozen=True)
class FolderListing:
    """An image folder's files, nothing decoded: class names, (paths, labels) per split."""

    base: Path
    classes: tuple[str, ...]
    train: tuple[list[str], torch.Tensor]
    test: tuple[list[str], torch.Tensor]


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
    base = _root_or_env(root)
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


def _folder_image_size(name: str, listing: FolderListing, image_size: int | None) -> int:
    """The side images are trained at: asked for, else declared for the dataset, else the first
    training image's shorter side (the folder's own resolution)."""
    if image_size is not None:
        _check_image_size(image_size)
        return image_size
    return IMAGE_FOLDERS[name].image_size or image_side(listing.train[0][0])


# the largest image side decoded: one 3 x 4096 x 4096 image is 48 MiB; a larger side is a typo
MAX_IMAGE_SIZE = 4096


def _check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image-size must be a whole number >= 1, got {image_size!r}")
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"--image-size {image_size} is over {MAX_IMAGE_SIZE}, the largest side kdbench decodes"
        )


def _load_image_folder(
    name: str, root: Path | None, image_size: int | None, crop_padding: int | None, hflip: bool
) -> tuple[DatasetInfo, ImageData, ImageData]:
    kind, listing = IMAGE_FOLDERS[name], list_image_folder(name, root)
    size = _folder_image_size(name, listing, image_size)
    train = ImageData(_decode_images(listing.train[0], size), listing.train[1])
    test = ImageData(_decode_images(listing.test[0], size, kind.crop_fraction), listing.test[1])
    mean, std = (kind.mean, kind.std) if kind.mean else channel_stats(train.images)
    info = DatasetInfo(
        name=name,
        num_classes=len(listing.classes),
        in_chans=3,
        image_size=(size, size),
        mean=mean,
        std=std,
        crop_padding=size // 8 if crop_padding is None else crop_padding,
        hflip=hflip,
        classes=listing.classes,
        data_sha256=folder_digest(listing),
    )
    return info, train, test


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
    size = _folder_image_size(name, listing, image_size)
    train = StreamData(listing.train[0], listing.train[1], size)
    test = StreamData(listing.test[0], listing.test[1], size, kind.crop_fraction)
    if kind.mean:
        mean, std = kind.mean, kind.std
    else:
        sample = torch.linspace(0, len(train) - 1, min(STATS_SAMPLE, len(train))).round().long().unique()
        batches = train.take(sample).batches(256, shuffle=False, augment=False, generator=None)
        mean, std = channel_stats(torch.cat([images for images, _, _ in batches]))
    info = DatasetInfo(
        name=name,
        num_classes=len(listing.classes),
        in_chans=3,
        image_size=(size, size),
        mean=mean,
        std=std,
        crop_padding=0,
        hflip=True,
        classes=listing.classes,
        data_sha256=folder_digest(listing),
    )
    return info, train, test


def resolve_recipe(
    dataset: str,
    data_root: str | None,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    copies: int = 1,
) -> Recipe:
    """`recipe` with the data choices made, so a spec records them: an image folder's image size
    (asked for, declared, else its first training image's) and the loader (`auto`: memory when
    `copies` decoded copies of train + test fit in kdbench/data/streaming.py's share of the available
    memory, else stream). Datasets of a fixed size take the in-memory loader only.
    """
    if dataset in IMAGE_FOLDERS:
        listing = list_image_folder(dataset, None if data_root is None else Path(data_root).expanduser())
        size = _folder_image_size(dataset, listing, recipe.image_size)
        loader = recipe.loader
        decoded = (len(listing.train[1]) + len(listing.test[1])) * 3 * size * size * copies
        if loader == "auto":
            loader = "memory" if fits_in_memory(decoded, device) else "stream"
        elif loader == "memory" and decoded > available_memory():  # would be killed part-way through
            raise ConfigError(
                f"--loader memory: {dataset} decoded at {size}x{size} takes {decoded / 2**30:.1f} GiB, more "
                f"than the {available_memory() / 2**30:.1f} GiB available; use --loader stream or a smaller --image-size"
            )
        return replace(recipe, image_size=size, loader=loader)
    if recipe.image_size is not None:
        _check_image_size(recipe.image_size)
    if recipe.loader == "stream":
        open_stream(dataset, None)  # raises: not an image folder
    if (
        recipe.image_size is not None
        and "image_size" not in inspect.signature(lookup(DATASETS, "dataset", dataset)).parameters
    ):
        raise ConfigError(
            f"--image-size applies to image folders ({', '.join(IMAGE_FOLDERS)}) and synthetic data; "
            f"{dataset} has a fixed size"
        )
    return replace(recipe, loader="memory")


# --- scikit-learn digits -------------------------------------------------------------------


@DATASETS.register_module(name="digits")
def load_digits(
    root: Path | None, test_fraction: float = 0.25, seed: int = 0
) -> tuple[DatasetInfo, ImageData, ImageData]:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; UCI optdigits test set).

    Shipped inside scikit-learn, so `root` is not used. Pixel values 0..16 are scaled to 0..255.
    The train/test split is stratified and fixed by `seed`. No crop (8 pixels leave no room)
    and no flip (mirrored digits are other symbols).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise DatasetNotFoundError(
            "the digits dataset ships with scikit-learn: pip install scikit-learn"
        ) from error
    bunch = sklearn_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    full = ImageData(images, torch.from_numpy(bunch.target).long())
    train, test = split_validation(full, test_fraction, seed)
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        in_chans=1,
        image_size=(8, 8),
        mean=mean,
        std=std,
        crop_padding=0,
        hflip=False,
        classes=tuple(str(d) for d in range(10)),
    )
    return info, train, test


# --- synthetic -----------------------------------------------------------------------------


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


# The seed of a recipe's training subset and validation split: fixed, not the run's, so every seed
# of a sweep trains on the same images (the engine records it in each run's `seeds`).
SUBSET_SEED = 0


@dataclass
class PreparedData:
    info: DatasetInfo
    train: ImageData | StreamData
    test: ImageData | StreamData
    val: ImageData | StreamData | None

    def to(self, device: torch.device | str) -> PreparedData:
        """Every split on `device` (uint8 images: a quarter of their float size)."""
        return PreparedData(
            self.info, self.train.to(device), self.test.to(device), self.val.to(device) if self.val else None
        )


def split_sizes(data: PreparedData) -> dict[str, int]:
    """The images a run trained, validated and tested on (a record's `data`): what its recipe's subset
    and split left of the data, whatever they asked for."""
    return {
        "train": len(data.train),
        "val": len(data.val) if data.val is not None else 0,
        "test": len(data.test),
    }


def prepare_data(dataset: str, data_root: str | None, recipe: Recipe) -> PreparedData:
    """Load a dataset once (decoded tensors in memory) and apply the recipe's subset / val split.

    The subset and the split use a fixed seed (`SUBSET_SEED`), so every run and seed of a sweep sees
    the same images; the run seed varies every other random source (docs/DESIGN.md, "Protocol").
    The dataset is decoded once per process (`_loaded`) for every subset and split of it (the sweep's
    validation, its in-process worker and `kdbench explain`'s sweeps alike).
    """
    # the environment's data folder is part of the key: the loader looks there when data_root is None
    return _prepared(
        dataset,
        data_root,
        recipe.train_subset,
        recipe.val_split,
        os.environ.get(DATA_ROOT_ENV),
        recipe.image_size,
        recipe.loader,
    )


def fit_train_subset(dataset: str, data_root: str | None, recipe: Recipe) -> tuple[Recipe, str | None]:
    """(`recipe`, None), or (`recipe` without its train_subset, a warning) where the subset asks for at
    least every training image: the run trains on all of them, and its spec says so (a 6000-image
    subset of 16 images is the 16, the same run as one without a subset)."""
    if recipe.train_subset is None:
        return recipe, None
    available = len(
        _loaded(dataset, data_root, os.environ.get(DATA_ROOT_ENV), recipe.image_size, recipe.loader)[1]
    )
    if recipe.train_subset < available:
        return recipe, None
    warning = None
    if recipe.train_subset > available:
        warning = (
            f"kdbench: warning: --train-subset {recipe.train_subset} exceeds the {available} training images of "
            f"{dataset}; training on all {available}"
        )
    return replace(recipe, train_subset=None), warning


@functools.lru_cache(maxsize=4)
def _prepared(
    dataset: str,
    data_root: str | None,
    train_subset: int | None,
    val_split: float,
    env_root: str | None,
    image_size: int | None = None,
    loader: str = "memory",
) -> PreparedData:
    info, train, test = _loaded(dataset, data_root, env_root, image_size, loader)
    if train_subset and train_subset < len(train.labels):
        train = stratified_subset(train, train_subset, seed=SUBSET_SEED)
    val = None
    if val_split:
        train, val = split_validation(train, val_split, seed=SUBSET_SEED)
    return PreparedData(info, train, test, val)


@functools.lru_cache(maxsize=2)
def _loaded(
    dataset: str, data_root: str | None, env_root: str | None, image_size: int | None, loader: str
) -> tuple[DatasetInfo, ImageData | StreamData, ImageData | StreamData]:
    """The whole dataset, decoded (or opened for streaming) once per process for every subset of it."""
    del env_root  # a cache key only
    if loader == "auto":  # `kdbench run` decides before making specs; a recipe left at auto decides here
        loader = resolve_recipe(dataset, data_root, Recipe(image_size=image_size, loader=loader)).loader
    if loader == "stream":
        return open_stream(dataset, data_root, image_size)
    options = {} if image_size is None else {"image_size": image_size}
    return load_dataset(dataset, data_root, **options)


# --- extra augmented views (a method's `extra_views`) --------------------------------------
#
# A method may read more views of each training batch than the standard one (MLKD's weak/strong
# pair). The engine asks `augment_views` for them: each view re-augments the batch's raw uint8
# images with a generator of the run's own (`view_generator`), so drawing views leaves the batch
# order and the standard crop / flip, shared with every other run of a cohort, untouched.

# The view stream is derived from the run's seed and this tag, so it differs from the batch stream.
_VIEW_STREAM = 0x5EED_713F


def view_generator(seed: int) -> torch.Generator:
    """The CPU generator of a run's extra views (drawn on the CPU: the same views on any device)."""
    state = np.random.SeedSequence([seed, _VIEW_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# FixMatch's RandAugment as the MLKD pipeline uses it: n=2 ops drawn with replacement, each with a
# uniform magnitude in its range, then Cutout of a square of side U[0, 0.5) x width.
_RANDAUGMENT_OPS = (
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
)
_RANGES = {
    "brightness": (0.05, 0.95),
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "sharpness": (0.05, 0.95),
    "posterize": (4.0, 8.0),
    "rotate": (-30.0, 30.0),
    "shear_x": (-0.3, 0.3),
    "shear_y": (-0.3, 0.3),
    "solarize": (0.0, 256.0),
    "translate_x": (-0.3, 0.3),
    "translate_y": (-0.3, 0.3),
}
_CUTOUT_FILL = (125, 123, 114)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma as PIL's convert("L") (ITU-R 601, fixed point, rounded), as float;
    the channel mean for images without 3 channels."""
    if images.shape[1] != 3:
        return images.float().mean(dim=1, keepdim=True)
    weights = torch.tensor([19595, 38470, 7471], device=images.device).view(1, 3, 1, 1)
    return ((images.long() * weights).sum(dim=1, keepdim=True) + 0x8000).bitwise_right_shift(16).float()


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), per image, truncated to uint8."""
    out = degenerate + factor.view(-1, 1, 1, 1) * (images.float() - degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling: output pixel centre p samples the input at `matrices` @ (p, 1)
    (pixel coordinates, one 2x3 matrix per image); outside the image: 0, as PIL's transform."""
    n, chans, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device) + 0.5,
        torch.arange(width, device=images.device) + 0.5,
        indexing="ij",
    )
    points = torch.stack([xs.flatten(), ys.flatten(), torch.ones_like(xs.flatten())])  # (3, HW)
    source = torch.floor(matrices @ points).long()  # (n, 2, HW)
    inside = (source[:, 0] >= 0) & (source[:, 0] < width) & (source[:, 1] >= 0) & (source[:, 1] < height)
    flat = (source[:, 1].clamp(0, height - 1) * width + source[:, 0].clamp(0, width - 1))[:, None]
    out = images.reshape(n, chans, -1).gather(2, flat.expand(n, chans, -1)) * inside[:, None]
    return out.view(n, chans, height, width)


def _geometric(name: str, images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    n, _, height, width = images.shape
    matrices = torch.eye(3, device=images.device)[:2].repeat(n, 1, 1)
    if name == "shear_x":  # PIL: transform(AFFINE, (1, v, 0, 0, 1, 0))
        matrices[:, 0, 1] = value
    elif name == "shear_y":
        matrices[:, 1, 0] = value
    elif name == "translate_x":  # v is a fraction of the width
        matrices[:, 0, 2] = value * width
    elif name == "translate_y":
        matrices[:, 1, 2] = value * height
    else:  # rotate by v degrees about the centre
        angle = torch.deg2rad(value)
        cos, sin = torch.cos(angle), torch.sin(angle)
        centre_x, centre_y = width / 2, height / 2
        matrices[:, 0, 0], matrices[:, 0, 1] = cos, -sin
        matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
        matrices[:, 0, 2] = centre_x - cos * centre_x + sin * centre_y
        matrices[:, 1, 2] = centre_y - sin * centre_x - cos * centre_y
    return _affine(images, matrices)


def _random_op(name: str, images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One RandAugment op on a uint8 batch, `value` (N,) its per-image magnitude."""
    from torchvision.transforms.v2 import functional as TF

    if name == "identity":
        return images
    if name == "autocontrast":
        return TF.autocontrast(images)
    if name == "equalize":
        return TF.equalize(images)
    if name == "brightness":
        return _blend(torch.zeros((), device=images.device), images, value)
    if name == "color":
        return _blend(_grey(images), images, value) if images.shape[1] == 3 else images
    if name == "contrast":
        return _blend(_grey(images).mean(dim=(1, 2, 3), keepdim=True).round(), images, value)
    if name == "sharpness":  # PIL's SMOOTH kernel inside, the border pixels kept
        kernel = torch.ones(3, 3, device=images.device)
        kernel[1, 1] = 5
        kernel = (kernel / 13).expand(images.shape[1], 1, 3, 3)
        smooth = F.conv2d(images.float(), kernel, groups=images.shape[1])
        degenerate = images.float().clone()
        degenerate[:, :, 1:-1, 1:-1] = smooth.round()
        return _blend(degenerate, images, value)
    if name == "posterize":  # keep the top int(v) bits
        shift = (8 - value.long()).view(-1, 1, 1, 1)
        return ((images.long() >> shift) << shift).to(torch.uint8)
    if name == "solarize":  # invert every pixel at or above the threshold
        return torch.where(images.float() >= value.view(-1, 1, 1, 1), 255 - images, images)
    return _geometric(name, images, value)


def rand_augment(images: torch.Tensor, generator: torch.Generator, num_ops: int = 2) -> torch.Tensor:
    """FixMatch-style RandAugment + Cutout of a uint8 (N, C, H, W) batch, batched per op.

    Per image: `num_ops` ops drawn uniformly with replacement from the 14 of `_RANDAUGMENT_OPS`, each
    with a magnitude uniform in its range (`_RANGES`), then a Cutout square of side U[0, 0.5) x W
    centred uniformly (clipped at the border) and filled with (125, 123, 114). All draws come from
    `generator` on the CPU, so the same generator state gives the same views on any device.
    """
    n, chans, height, width = images.shape
    ops = torch.randint(0, len(_RANDAUGMENT_OPS), (num_ops, n), generator=generator)
    levels = torch.rand(num_ops, n, generator=generator)
    cut = torch.rand(3, n, generator=generator)  # side fraction, centre x, centre y
    device = images.device
    for step in range(num_ops):
        for index, name in enumerate(_RANDAUGMENT_OPS):
            chosen = (ops[step] == index).nonzero().flatten()
            if not len(chosen):
                continue
            low, high = _RANGES.get(name, (0.0, 1.0))
            value = (low + (high - low) * levels[step, chosen]).to(device)
            chosen = chosen.to(device)
            images = images.index_copy(0, chosen, _random_op(name, images[chosen], value))
    side = cut[0] * 0.5 * width
    left = (cut[1] * width - side / 2).clamp(min=0).long()
    top = (cut[2] * height - side / 2).clamp(min=0).long()
    right, bottom = (left + side).clamp(max=width).long(), (top + side).clamp(max=height).long()
    cols, rows = torch.arange(width), torch.arange(height)
    box = (
        (rows[None, :, None] >= top[:, None, None])
        & (rows[None, :, None] < bottom[:, None, None])
        & (cols[None, None, :] >= left[:, None, None])
        & (cols[None, None, :] < right[:, None, None])
    ).to(device)
    fill = torch.tensor(_CUTOUT_FILL if chans == 3 else _CUTOUT_FILL[:1] * chans, dtype=torch.uint8)
    return torch.where(box[:, None], fill.to(device).view(1, chans, 1, 1), images)


def _strong_view(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """The standard crop / flip drawn anew, then RandAugment + Cutout (MLKD's strong pipeline)."""
    return rand_augment(augment_batch(images, info, generator), generator)


# view name -> fn(uint8 batch, info, generator) -> uint8 batch
VIEWS = {"strong": _strong_view}


def augment_views(
    data: ImageData,
    info: DatasetInfo,
    indices: torch.Tensor,
    names: tuple[str, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    """Each named view of the samples at `indices` of `data` (a training batch), normalised on `device`."""
    unknown = sorted(set(names) - set(VIEWS))
    if unknown:
        raise ConfigError(f"unknown augmented view {', '.join(unknown)}; views: {', '.join(sorted(VIEWS))}")
    images = data.images[indices.to(data.images.device)].to(device, non_blocking=True)
    return {name: normalize(VIEWS[name](images, info, generator), info) for name in names}
