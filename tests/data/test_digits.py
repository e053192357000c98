"""scikit-learn's digits (kdbench/data/digits.py): a deterministic, stratified train/test split."""

from __future__ import annotations

import pytest
import torch

from kdbench.data import load_dataset


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
