"""Fashion-MNIST (Xiao et al. 2017) from its IDX files: Debian's dataset-fashion-mnist package,
torchvision's FashionMNIST/raw/ folder, or the files in any folder (registered as `fashion-mnist`)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from kdbench.core.registries import DATASETS
from kdbench.data.streaming import DatasetCorruptError
from kdbench.data.types import (
    DATA_ROOT_ENV,
    DatasetInfo,
    DatasetNotFoundError,
    ImageData,
    check_labels,
    root_or_env,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

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
    base = root_or_env(root) or DEBIAN_FASHION_MNIST
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
        check_labels(labels, 10, label_file)
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
