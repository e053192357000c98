"""Image folders decoded into memory (kdbench/data/image_folder.py): class folders and Tiny-ImageNet's
val annotations, images resized to one side; a folder without val/ is not found."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.data import DatasetNotFoundError, load_dataset


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


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
