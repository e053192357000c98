"""scikit-learn's bundled 8x8 handwritten digits (registered as `digits`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdbench.core.registries import DATASETS
from kdbench.data.subsets import channel_stats, split_validation
from kdbench.data.types import DatasetInfo, DatasetNotFoundError, ImageData


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
