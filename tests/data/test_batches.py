"""Batches (kdbench/data/batches.py): the device-side padded crop and flip, deterministic per generator,
and `iterate_batches`, which covers the data with its indices and normalises."""

from __future__ import annotations

import pytest
import torch

from kdbench.data import DatasetInfo, ImageData, augment_batch, iterate_batches, normalize


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
