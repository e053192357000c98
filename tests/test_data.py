"""Data layer: every on-disk format loads from tiny files written here, errors say what to do,
and the device-side augmentation and the stratified subsets do what they claim."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.core.registries import UnknownNameError
from kdbench.data import (
    DATA_ROOT_ENV,
    DEBIAN_FASHION_MNIST,
    DatasetCorruptError,
    DatasetInfo,
    DatasetNotFoundError,
    ImageData,
    augment_batch,
    channel_stats,
    iterate_batches,
    list_datasets,
    load_dataset,
    normalize,
    split_validation,
    stratified_subset,
)

# --- writers of the on-disk formats ---------------------------------------------------------


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


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


# --- Fashion-MNIST ------------------------------------------------------------------------------


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


# --- CIFAR -------------------------------------------------------------------------------------


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


# --- ImageFolder -------------------------------------------------------------------------------


def test_imagefolder_decodes_and_resizes(tmp_path):
    colors = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for name, color in colors.items():
        for i in range(3):
            write_png(tmp_path / "train" / name / f"{i}.png", color)
        write_png(tmp_path / "test" / name / "sub" / "0.PNG", color, size=(16, 16))
    info, train, test = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert info.classes == ("cat", "dog") and info.image_size == (16, 16) and info.crop_padding == 2
    assert train.images.shape == (6, 3, 16, 16) and test.images.shape == (2, 3, 16, 16)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 1]
    assert train.images[0, :, 8, 8].tolist() == [200, 10, 10]
    assert info.mean == pytest.approx((105 / 255, 105 / 255, 10 / 255), abs=1e-3)


def test_imagefolder_reads_tiny_imagenet_val_annotations(tmp_path):
    for wnid, color in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
        write_png(tmp_path / "train" / wnid / "images" / f"{wnid}_0.JPEG", color)
    write_png(tmp_path / "val" / "images" / "val_0.JPEG", (0, 0, 255))
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\n")
    info, train, test = load_dataset("imagefolder", root=tmp_path, image_size=8)
    assert info.classes == ("n01", "n02") and len(train) == 2 and test.labels.tolist() == [1]


def test_imagefolder_without_val_is_not_found(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", (0, 0, 0))
    with pytest.raises(DatasetNotFoundError, match="val/ \\(or test/\\)"):
        load_dataset("imagefolder", root=tmp_path)


# --- digits, synthetic, registry -----------------------------------------------------------------


def test_digits_split_is_deterministic_and_stratified():
    pytest.importorskip("sklearn")
    info, train, test = load_dataset("digits")
    assert (info.in_chans, info.image_size, info.crop_padding, info.hflip) == (1, (8, 8), 0, False)
    assert len(train) + len(test) == 1797 and len(test) == 449
    assert int(train.images.max()) == 255
    _, _, again = load_dataset("digits")
    assert torch.equal(test.labels, again.labels) and torch.equal(test.images, again.images)
    share = test.labels.bincount().double() / train.labels.bincount().double()
    assert share.min() > 0.3 and share.max() < 0.36  # every class split about 1:3


def test_synthetic_is_seeded_and_learnable():
    info, train, test = load_dataset(
        "synthetic", num_train=200, num_test=100, num_classes=4, in_chans=1, image_size=16
    )
    assert train.images.shape == (200, 1, 16, 16) and info.num_classes == 4
    assert torch.equal(train.labels.bincount(), torch.full((4,), 50))
    same = load_dataset("synthetic", num_train=200, num_test=100, num_classes=4, in_chans=1, image_size=16)[1]
    assert torch.equal(same.images, train.images)
    other = load_dataset(
        "synthetic", num_train=200, num_test=100, num_classes=4, in_chans=1, image_size=16, seed=1
    )[1]
    assert not torch.equal(other.images, train.images)
    # Nearest class mean already beats chance by far: the classes carry a learnable signal.
    flat = train.images.flatten(1).float()
    centroids = torch.stack([flat[train.labels == c].mean(0) for c in range(4)])
    predicted = torch.cdist(test.images.flatten(1).float(), centroids).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.8


def test_registry_names_and_errors():
    assert set(list_datasets()) >= {
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "imagefolder",
        "digits",
        "synthetic",
    }
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar10'"):
        load_dataset("cifar-10")
    with pytest.raises(ValueError, match="no option colour; options: num_train"):
        load_dataset("synthetic", colour=True)


# --- augmentation and batches --------------------------------------------------------------------


def small_info(crop_padding: int = 2, hflip: bool = True) -> DatasetInfo:
    return DatasetInfo("toy", 2, 1, (8, 8), (0.5,), (0.25,), crop_padding, hflip, ("a", "b"))


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image content moved by (dy, dx) pixels, zeros where it came from outside."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def test_augment_is_a_padded_crop_and_flip_deterministic_per_generator():
    images = torch.randint(1, 256, (64, 1, 8, 8), dtype=torch.uint8)
    info = small_info()
    out = augment_batch(images, info, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, augment_batch(images, info, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, augment_batch(images, info, torch.Generator().manual_seed(4)))
    moves = []
    for original, augmented in zip(images, out, strict=True):
        candidates = [
            (dy, dx, flip)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            for flip in (False, True)
            if torch.equal(augmented, shift(original.flip(-1) if flip else original, dy, dx))
        ]
        assert len(candidates) == 1, "each output is exactly one shift (and maybe flip) of its input"
        moves.append(candidates[0])
    assert len({(dy, dx) for dy, dx, _ in moves}) > 10  # content really moves, in many ways
    assert 0 < sum(flip for _, _, flip in moves) < 64


def test_augment_without_crop_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(augment_batch(images, small_info(0, False), torch.Generator()), images)


def test_iterate_batches_covers_data_with_indices_and_normalises():
    data = ImageData(torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8), torch.arange(10) % 2)
    info = small_info()
    batches = list(iterate_batches(data, info, 4, shuffle=False, augment=False, device="cpu"))
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 2]
    images, labels, indices = batches[0]
    assert images.dtype == torch.float32 and indices.tolist() == [0, 1, 2, 3]
    assert torch.allclose(images, (data.images[:4].float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert torch.allclose(normalize(data.images[:4], info), images)

    def epoch(seed: int) -> list:
        generator = torch.Generator().manual_seed(seed)
        return list(
            iterate_batches(
                data, info, 4, shuffle=True, augment=True, device="cpu", generator=generator, drop_last=True
            )
        )

    shuffled = epoch(5)
    assert [len(labels) for _, labels, _ in shuffled] == [4, 4]
    seen = torch.cat([indices for _, _, indices in shuffled])
    assert len(set(seen.tolist())) == 8 and seen.tolist() != sorted(seen.tolist())
    for _, labels, indices in shuffled:
        assert torch.equal(labels, data.labels[indices])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, epoch(5), strict=True))
    with pytest.raises(ValueError, match="Generator"):
        next(iterate_batches(data, info, 4, shuffle=True, augment=False, device="cpu"))


# --- subsets -------------------------------------------------------------------------------------


def imbalanced_data() -> ImageData:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate((60, 30, 10))])
    return ImageData(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), labels)


def test_stratified_subset_keeps_class_shares():
    data = imbalanced_data()
    for n in (10, 17, 50):
        subset = stratified_subset(data, n, seed=0)
        expected = torch.tensor([0.6, 0.3, 0.1]) * n
        assert len(subset) == n and (subset.labels.bincount(minlength=3) - expected).abs().max() < 1
        assert torch.equal(subset.labels, data.labels[subset.images.view(-1).long()])  # pairs kept
    assert not torch.equal(stratified_subset(data, 10, 0).images, stratified_subset(data, 10, 1).images)
    assert stratified_subset(data, 500, 0) is data


def test_split_validation_is_disjoint_and_stratified():
    data = imbalanced_data()
    train, val = split_validation(data, 0.2, seed=0)
    assert val.labels.bincount().tolist() == [12, 6, 2] and len(train) == 80
    ids = torch.cat([train.images.view(-1), val.images.view(-1)]).long()
    assert sorted(ids.tolist()) == list(range(100))
    with pytest.raises(ValueError, match="empty split"):
        split_validation(data, 0.001, seed=0)


# --- throughput (run with --benchmark-only; skipped by the default --benchmark-skip) -----------


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
