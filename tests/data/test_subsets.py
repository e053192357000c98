"""Subsets (kdbench/data/subsets.py): stratified subsets keep the class shares; validation splits are
disjoint and stratified."""

from __future__ import annotations

import pytest
import torch

from kdbench.data import ImageData, split_validation, stratified_subset


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
