"""Fashion-MNIST (kdbench/data/fashion_mnist.py): its IDX files load from tiny files written here in every
layout it is looked for in, and a missing, truncated or mislabelled file says what to do."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.data import (
    DATA_ROOT_ENV,
    DEBIAN_FASHION_MNIST,
    DatasetCorruptError,
    DatasetNotFoundError,
    channel_stats,
    iterate_batches,
    load_dataset,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX of unsigned bytes: magic 0x00 0x00 0x08 <ndim>, big-endian uint32 sizes, data."""
    header = bytes((0, 0, 0x08, array.ndim)) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def fake_fashion_mnist(folder: Path, compressed: bool = True, train: int = 20, test: int = 10) -> dict:
    """The four Fashion-MNIST IDX files with random pixels; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(test) % 10,
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if compressed else "")), array)
    return arrays


@pytest.mark.parametrize(
    ("subfolder", "compressed"),
    [
        (".", True),
        (".", False),
        ("FashionMNIST/raw", False),
        ("FashionMNIST/raw", True),
        ("fashion-mnist", True),
    ],
)
def test_fashion_mnist_layouts_load(tmp_path, subfolder, compressed):
    arrays = fake_fashion_mnist(tmp_path / subfolder, compressed)
    info, train, test = load_dataset("fashion-mnist", root=str(tmp_path))
    assert (info.num_classes, info.in_chans, info.image_size) == (10, 1, (28, 28))
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_root_from_environment(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert len(load_dataset("fashion-mnist")[1]) == 20


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    message = str(caught.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-root" in message
    assert DATA_ROOT_ENV in message and str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message


def test_truncated_idx_is_corrupt_and_named(tmp_path):
    fake_fashion_mnist(tmp_path)
    victim = tmp_path / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(victim.read_bytes())
    victim.write_bytes(gzip.compress(payload[:-100]))  # valid gzip, short payload
    with pytest.raises(DatasetCorruptError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("fashion-mnist", root=tmp_path)
    victim.write_bytes(gzip.compress(payload)[:-50])  # gzip stream cut mid-way
    with pytest.raises(DatasetCorruptError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_wrong_idx_magic_is_corrupt(tmp_path):
    fake_fashion_mnist(tmp_path, compressed=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x0d\x01" + labels.read_bytes()[4:])  # type 0x0d = float
    with pytest.raises(DatasetCorruptError, match="t10k-labels-idx1-ubyte is not an IDX file"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    info, train, test = load_dataset("fashion-mnist")
    assert (len(train), len(test), info.num_classes) == (60000, 10000, 10)
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    # The published normalisation constants are this training set's pixel statistics.
    assert channel_stats(train.images) == (info.mean, info.std)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_benchmark_fashion_mnist_epoch(benchmark, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    info, train, _ = load_dataset("fashion-mnist")
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def epoch() -> None:
        generator = torch.Generator().manual_seed(0)
        for _ in iterate_batches(
            train, info, 128, shuffle=True, augment=True, device=device, generator=generator
        ):
            pass
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    images_per_second = len(train) / benchmark.stats.stats.median
    benchmark.extra_info["images_per_second"] = images_per_second
    print(f"\nFashion-MNIST train epoch, augmented, batch 128, {device}: {images_per_second:,.0f} images/s")
