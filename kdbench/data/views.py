"""Extra augmented views of a training batch (a method's `extra_views`, methods/base.py).

A method may read more views of each training batch than the standard one (MLKD's weak/strong
pair). The engine asks `augment_views` for them: each view re-augments the batch's raw uint8
images with a generator of the run's own (`view_generator`), so drawing views leaves the batch
order and the standard crop / flip, shared with every other run of a cohort, untouched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.core.errors import ConfigError
from kdbench.data.batches import augment_batch, normalize
from kdbench.data.types import DatasetInfo, ImageData

# The view stream is derived from the run's seed and this tag, so it differs from the batch stream.
_VIEW_STREAM = 0x5EED_713F


def view_generator(seed: int) -> torch.Generator:
    """The CPU generator of a run's extra views (drawn on the CPU: the same views on any device)."""
    state = np.random.SeedSequence([seed, _VIEW_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# FixMatch's RandAugment as the MLKD pipeline uses it: n=2 ops drawn with replacement, each with a
# uniform magnitude in its range, then Cutout of a square of side U[0, 0.5) x width.
_RANDAUGMENT_OPS = (
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
)
_RANGES = {
    "brightness": (0.05, 0.95),
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "sharpness": (0.05, 0.95),
    "posterize": (4.0, 8.0),
    "rotate": (-30.0, 30.0),
    "shear_x": (-0.3, 0.3),
    "shear_y": (-0.3, 0.3),
    "solarize": (0.0, 256.0),
    "translate_x": (-0.3, 0.3),
    "translate_y": (-0.3, 0.3),
}
_CUTOUT_FILL = (125, 123, 114)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma as PIL's convert("L") (ITU-R 601, fixed point, rounded), as float;
    the channel mean for images without 3 channels."""
    if images.shape[1] != 3:
        return images.float().mean(dim=1, keepdim=True)
    weights = torch.tensor([19595, 38470, 7471], device=images.device).view(1, 3, 1, 1)
    return ((images.long() * weights).sum(dim=1, keepdim=True) + 0x8000).bitwise_right_shift(16).float()


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), per image, truncated to uint8."""
    out = degenerate + factor.view(-1, 1, 1, 1) * (images.float() - degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling: output pixel centre p samples the input at `matrices` @ (p, 1)
    (pixel coordinates, one 2x3 matrix per image); outside the image: 0, as PIL's transform."""
    n, chans, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device) + 0.5,
        torch.arange(width, device=images.device) + 0.5,
        indexing="ij",
    )
    points = torch.stack([xs.flatten(), ys.flatten(), torch.ones_like(xs.flatten())])  # (3, HW)
    source = torch.floor(matrices @ points).long()  # (n, 2, HW)
    inside = (source[:, 0] >= 0) & (source[:, 0] < width) & (source[:, 1] >= 0) & (source[:, 1] < height)
    flat = (source[:, 1].clamp(0, height - 1) * width + source[:, 0].clamp(0, width - 1))[:, None]
    out = images.reshape(n, chans, -1).gather(2, flat.expand(n, chans, -1)) * inside[:, None]
    return out.view(n, chans, height, width)


def _geometric(name: str, images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    n, _, height, width = images.shape
    matrices = torch.eye(3, device=images.device)[:2].repeat(n, 1, 1)
    if name == "shear_x":  # PIL: transform(AFFINE, (1, v, 0, 0, 1, 0))
        matrices[:, 0, 1] = value
    elif name == "shear_y":
        matrices[:, 1, 0] = value
    elif name == "translate_x":  # v is a fraction of the width
        matrices[:, 0, 2] = value * width
    elif name == "translate_y":
        matrices[:, 1, 2] = value * height
    else:  # rotate by v degrees about the centre
        angle = torch.deg2rad(value)
        cos, sin = torch.cos(angle), torch.sin(angle)
        centre_x, centre_y = width / 2, height / 2
        matrices[:, 0, 0], matrices[:, 0, 1] = cos, -sin
        matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
        matrices[:, 0, 2] = centre_x - cos * centre_x + sin * centre_y
        matrices[:, 1, 2] = centre_y - sin * centre_x - cos * centre_y
    return _affine(images, matrices)


def _random_op(name: str, images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One RandAugment op on a uint8 batch, `value` (N,) its per-image magnitude."""
    from torchvision.transforms.v2 import functional as TF

    if name == "identity":
        return images
    if name == "autocontrast":
        return TF.autocontrast(images)
    if name == "equalize":
        return TF.equalize(images)
    if name == "brightness":
        return _blend(torch.zeros((), device=images.device), images, value)
    if name == "color":
        return _blend(_grey(images), images, value) if images.shape[1] == 3 else images
    if name == "contrast":
        return _blend(_grey(images).mean(dim=(1, 2, 3), keepdim=True).round(), images, value)
    if name == "sharpness":  # PIL's SMOOTH kernel inside, the border pixels kept
        kernel = torch.ones(3, 3, device=images.device)
        kernel[1, 1] = 5
        kernel = (kernel / 13).expand(images.shape[1], 1, 3, 3)
        smooth = F.conv2d(images.float(), kernel, groups=images.shape[1])
        degenerate = images.float().clone()
        degenerate[:, :, 1:-1, 1:-1] = smooth.round()
        return _blend(degenerate, images, value)
    if name == "posterize":  # keep the top int(v) bits
        shift = (8 - value.long()).view(-1, 1, 1, 1)
        return ((images.long() >> shift) << shift).to(torch.uint8)
    if name == "solarize":  # invert every pixel at or above the threshold
        return torch.where(images.float() >= value.view(-1, 1, 1, 1), 255 - images, images)
    return _geometric(name, images, value)


def rand_augment(images: torch.Tensor, generator: torch.Generator, num_ops: int = 2) -> torch.Tensor:
    """FixMatch-style RandAugment + Cutout of a uint8 (N, C, H, W) batch, batched per op.

    Per image: `num_ops` ops drawn uniformly with replacement from the 14 of `_RANDAUGMENT_OPS`, each
    with a magnitude uniform in its range (`_RANGES`), then a Cutout square of side U[0, 0.5) x W
    centred uniformly (clipped at the border) and filled with (125, 123, 114). All draws come from
    `generator` on the CPU, so the same generator state gives the same views on any device.
    """
    n, chans, height, width = images.shape
    ops = torch.randint(0, len(_RANDAUGMENT_OPS), (num_ops, n), generator=generator)
    levels = torch.rand(num_ops, n, generator=generator)
    cut = torch.rand(3, n, generator=generator)  # side fraction, centre x, centre y
    device = images.device
    for step in range(num_ops):
        for index, name in enumerate(_RANDAUGMENT_OPS):
            chosen = (ops[step] == index).nonzero().flatten()
            if not len(chosen):
                continue
            low, high = _RANGES.get(name, (0.0, 1.0))
            value = (low + (high - low) * levels[step, chosen]).to(device)
            chosen = chosen.to(device)
            images = images.index_copy(0, chosen, _random_op(name, images[chosen], value))
    side = cut[0] * 0.5 * width
    left = (cut[1] * width - side / 2).clamp(min=0).long()
    top = (cut[2] * height - side / 2).clamp(min=0).long()
    right, bottom = (left + side).clamp(max=width).long(), (top + side).clamp(max=height).long()
    cols, rows = torch.arange(width), torch.arange(height)
    box = (
        (rows[None, :, None] >= top[:, None, None])
        & (rows[None, :, None] < bottom[:, None, None])
        & (cols[None, None, :] >= left[:, None, None])
        & (cols[None, None, :] < right[:, None, None])
    ).to(device)
    fill = torch.tensor(_CUTOUT_FILL if chans == 3 else _CUTOUT_FILL[:1] * chans, dtype=torch.uint8)
    return torch.where(box[:, None], fill.to(device).view(1, chans, 1, 1), images)


def _strong_view(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """The standard crop / flip drawn anew, then RandAugment + Cutout (MLKD's strong pipeline)."""
    return rand_augment(augment_batch(images, info, generator), generator)


def _rotated_view(quarter_turns: int):
    """The view rotated by `quarter_turns` x 90 degrees: the standard crop / flip drawn anew, then the
    rotation, as np.rot90 turns SSKD's images (xuguodong03/SSKD, cifar.py; methods/sskd.py)."""

    def rotated(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
        return torch.rot90(augment_batch(images, info, generator), quarter_turns, dims=(2, 3))

    return rotated


# view name -> fn(uint8 batch, info, generator) -> uint8 batch
VIEWS = {
    "strong": _strong_view,
    "rot90": _rotated_view(1),
    "rot180": _rotated_view(2),
    "rot270": _rotated_view(3),
}


def augment_views(
    data: ImageData,
    info: DatasetInfo,
    indices: torch.Tensor,
    names: tuple[str, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    """Each named view of the samples at `indices` of `data` (a training batch), normalised on `device`."""
    unknown = sorted(set(names) - set(VIEWS))
    if unknown:
        raise ConfigError(f"unknown augmented view {', '.join(unknown)}; views: {', '.join(sorted(VIEWS))}")
    images = data.images[indices.to(data.images.device)].to(device, non_blocking=True)
    return {name: normalize(VIEWS[name](images, info, generator), info) for name in names}
