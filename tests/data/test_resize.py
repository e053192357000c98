"""A recipe's image size on a dataset of a fixed size (kdbench/data/preparation.py `_loaded`): the images
stay stored at their own size and each batch is resized after its augmentation (kdbench/data/batches.py
`normalize`), as a heterogeneous pair at another resolution needs; the record's `data.resized` says how.
Without an image size every batch is what it was."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.core.spec import Recipe
from kdbench.data import iterate_batches, load_dataset, prepare_data, split_sizes
from kdbench.data.batches import _normalization


def test_a_fixed_size_dataset_at_another_size_is_resized_per_batch():
    prepared = prepare_data("digits", None, Recipe(image_size=16))
    info, train = prepared.info, prepared.train
    assert (info.image_size, info.resized_from) == ((16, 16), (8, 8))
    assert tuple(train.images.shape[-2:]) == (8, 8)  # stored as it is: resized batch by batch
    images, labels, indices = next(
        iterate_batches(train, info, 8, shuffle=False, augment=False, device="cpu")
    )
    assert images.shape == (8, 1, 16, 16)
    scale, shift = _normalization(info, torch.device("cpu"))
    stored = train.images[indices].float()
    expected = F.interpolate(stored, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(images, expected * scale - shift)
    assert (
        split_sizes(prepared)["resized"]
        == "8x8 -> 16x16, bilinear, antialiased, per batch after augmentation"
    )
    # the data's identity is the stored arrays', the size is the recipe's (both in the spec)
    assert info.data_sha256 == load_dataset("digits")[0].data_sha256


def test_without_an_image_size_batches_and_records_are_unchanged():
    prepared = prepare_data("digits", None, Recipe())
    info, train = prepared.info, prepared.train
    assert (info.image_size, info.resized_from) == ((8, 8), None)
    images, _, indices = next(iterate_batches(train, info, 8, shuffle=False, augment=False, device="cpu"))
    scale, shift = _normalization(info, torch.device("cpu"))
    assert torch.equal(images, train.images[indices].float() * scale - shift)
    assert set(split_sizes(prepared)) == {"train", "val", "test"}
