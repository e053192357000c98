"""The loops `kdbench bench` measures the engine against, written without the engine.

- `bare_epoch`: a bare PyTorch SGD loop (student only) over pre-made batches;
- `bare_kd_epoch`: the same with a frozen teacher and Hinton's KD loss (fp32, eager);
- `classic_kd_epoch`: the classic KD training loop of RepDistiller's `train_student.py`: a
  torch `Dataset` of images augmented one at a time on the CPU (random crop with padding,
  horizontal flip), batched by a `DataLoader`, moved to the device each step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kdbench.data import MEMORY_FORMAT, DatasetInfo, ImageData
from kdbench.methods.base import kd_kl_div
from kdbench.models import build_model


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def bare_epoch(
    student: str, batches: list, num_classes: int, in_chans: int, memory_format: torch.memory_format
) -> Callable[[], None]:
    """One epoch of a bare SGD loop over `batches` (already on their device)."""
    device = batches[0][0].device
    model = build_model(student, num_classes=num_classes, in_chans=in_chans).to(
        device, memory_format=memory_format
    )
    optimizer = _sgd(model)
    steps = [(images.contiguous(memory_format=memory_format), labels) for images, labels, _ in batches]

    def epoch():
        for images, labels in steps:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def _kd_step(student, teacher, optimizer, images, labels) -> None:
    with torch.no_grad():
        teacher_logits = teacher(images)
    logits = student(images)
    loss = 0.1 * F.cross_entropy(logits, labels) + 0.9 * kd_kl_div(logits, teacher_logits, 4.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bare_kd_epoch(student: str, teacher: torch.nn.Module, batches: list, num_classes: int, in_chans: int):
    """One epoch of a bare fp32 KD loop (RepDistiller's -r 0.1 -a 0.9, T = 4) over `batches`."""
    device = batches[0][0].device
    model = build_model(student, num_classes=num_classes, in_chans=in_chans).to(
        device, memory_format=MEMORY_FORMAT
    )
    optimizer = _sgd(model)

    def epoch():
        for images, labels, _ in batches:
            _kd_step(model, teacher, optimizer, images, labels)

    return epoch


class _PerImageAugmented(Dataset):
    """Images augmented one at a time, as torchvision transforms do (crop with padding, flip)."""

    def __init__(self, data: ImageData, info: DatasetInfo):
        self.images, self.labels, self.info = data.images, data.labels, info
        self.mean = torch.tensor(info.mean).view(-1, 1, 1)
        self.std = torch.tensor(info.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255
        pad = self.info.crop_padding
        padded = F.pad(image, (pad, pad, pad, pad))
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        image = padded[:, top : top + image.shape[1], left : left + image.shape[2]]
        if self.info.hflip and torch.rand(()) < 0.5:
            image = image.flip(2)
        return (image - self.mean) / self.std, self.labels[index]


def classic_kd_epoch(
    student: str, teacher: torch.nn.Module, data: ImageData, info: DatasetInfo, batch_size: int
):
    """One epoch of the classic per-image DataLoader KD loop (NCHW, fp32, no engine)."""
    device = next(teacher.parameters()).device
    model = build_model(student, num_classes=info.num_classes, in_chans=info.in_chans).to(device)
    optimizer = _sgd(model)
    loader = DataLoader(_PerImageAugmented(data, info), batch_size=batch_size, shuffle=True, num_workers=0)

    def epoch():
        for images, labels in loader:
            _kd_step(model, teacher, optimizer, images.to(device), labels.to(device))

    return epoch
