"""The synthetic dataset (kdbench/data/synthetic.py): seeded, and learnable."""

from __future__ import annotations

import torch

from kdbench.data import load_dataset


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
