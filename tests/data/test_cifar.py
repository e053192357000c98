"""CIFAR-10 and CIFAR-100 (kdbench/data/cifar.py): torchvision's pickles written here load with the
right plane order and labels; a pickle with foreign code is refused; a missing root says what to pass."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from kdbench.data import DATA_ROOT_ENV, DatasetCorruptError, DatasetNotFoundError, load_dataset


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str) -> None:
    """A CIFAR python batch: rows of 3072 bytes (R, G, B planes), pickled with protocol 2 as the originals."""
    batch = {"data": images.reshape(len(images), 3072).astype(np.uint8), label_key: labels}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label // 5 for label in labels]
    path.write_bytes(pickle.dumps(batch, protocol=2))


def fake_cifar(root: Path, num_classes: int, per_file: int = 4) -> None:
    rng = np.random.default_rng(num_classes)
    if num_classes == 10:
        folder, names = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        )
        label_key, meta_name, meta = "labels", "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder, names = root / "cifar-100-python", ["train", "test"]
        label_key, meta_name = "fine_labels", "meta"
        meta = {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [str(i) for i in range(20)],
        }
    folder.mkdir(parents=True)
    for name in names:
        images = rng.integers(0, 256, (per_file, 3, 32, 32))
        write_cifar_batch(
            folder / name, images, [int(v) for v in rng.integers(0, num_classes, per_file)], label_key
        )
    (folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_pickles_load_with_plane_order(tmp_path):
    fake_cifar(tmp_path, 10)
    batch_file = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    images = np.zeros((4, 3072), dtype=np.uint8)
    images[0, 0] = 255  # red plane, row 0, column 0
    images[0, 1024 + 32] = 7  # green plane, row 1, column 0
    write_cifar_batch(batch_file, images, [3, 1, 4, 1], "labels")
    info, train, test = load_dataset("cifar10", root=tmp_path)
    assert (info.num_classes, info.in_chans, info.crop_padding, info.hflip) == (10, 3, 4, True)
    assert info.classes[3] == "c3" and info.mean == (0.4914, 0.4822, 0.4465)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.images[0, 0, 0, 0] == 255 and train.images[0, 1, 1, 0] == 7
    assert train.labels[:4].tolist() == [3, 1, 4, 1]


def test_cifar100_uses_fine_labels(tmp_path):
    fake_cifar(tmp_path, 100)
    info, train, test = load_dataset(
        "cifar100", root=tmp_path / "cifar-100-python"
    )  # the folder itself works
    assert info.num_classes == 100 and len(info.classes) == 100 and info.std == (0.2675, 0.2565, 0.2761)
    assert len(train) == 4 and len(test) == 4 and int(train.labels.max()) < 100


def test_cifar_pickle_with_foreign_code_is_refused(tmp_path):
    fake_cifar(tmp_path, 10)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(DatasetCorruptError, match="test_batch.*refusing"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_without_root_says_what_to_pass(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError, match="--data-root DIR or set KDBENCH_DATA.*cifar-100-python"):
        load_dataset("cifar100")
