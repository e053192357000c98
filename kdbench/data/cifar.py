"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from torchvision's python pickles under the data root
(registered as `cifar10` and `cifar100`); the pickles are read by an unpickler that runs no code."""

from __future__ import annotations

import pickle
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
        check_labels(labels[-1], num_classes, path)
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
    base = root_or_env(root)
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
