"""Modules and look-ups several methods build from; not a method (nothing here registers).

- `resizing_conv` / `ConvRegressor`: RepDistiller's ConvReg (models/util.py), the regressor that maps
  a student's (C, H, W) map onto a teacher's, channels and spatial size (FitNet's hint regressor,
  WKD-F's projector);
- `classifier_of`: the `nn.Linear` that maps a model's pooled vector to its logits (SimKD reuses the
  teacher's, WKD reads its rows, SDD and CAT-KD apply it to local features);
- `StrongViewMethod`: the base of the two-view methods (CRLD, MLKD), the student's CE on both views.

They live apart from methods/_shared.py because they refuse a pair (`PairNotSupportedError`), probe
a model (`probe_features`) or extend `Method`, all of methods/base.py, which itself imports methods/_shared.py.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FeatureShapes, Method, PairNotSupportedError, probe_features


def resizing_conv(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], method: str) -> nn.Module:
    """ConvReg's convolution: student (C_s, H_s, W_s) -> teacher (C_t, H_t, W_t); a refusal names `method`.

    H_s = 2 H_t: 3x3 conv, stride 2; 2 H_s = H_t: 4x4 transposed conv, stride 2;
    H_s >= H_t: valid conv with kernel (1 + H_s - H_t, 1 + W_s - W_t), a 1x1 conv at equal sizes.
    """
    student_channels, student_h, student_w = student_shape
    teacher_channels, teacher_h, teacher_w = teacher_shape
    if (student_h, student_w) == (2 * teacher_h, 2 * teacher_w):
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=3, stride=2, padding=1)
    if (2 * student_h, 2 * student_w) == (teacher_h, teacher_w):
        return nn.ConvTranspose2d(student_channels, teacher_channels, kernel_size=4, stride=2, padding=1)
    if student_h >= teacher_h and student_w >= teacher_w:
        kernel_size = (1 + student_h - teacher_h, 1 + student_w - teacher_w)
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=kernel_size)
    raise PairNotSupportedError(
        f"{method}: cannot regress a {student_h}x{student_w} student map onto a {teacher_h}x{teacher_w} "
        "teacher map (ConvReg handles a student map twice, half, or at least as large as the teacher's)"
    )


class ConvRegressor(nn.Sequential):
    """RepDistiller's ConvReg (use_relu=True): resizing conv -> BatchNorm -> ReLU."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], method: str):
        super().__init__(
            OrderedDict(
                conv=resizing_conv(student_shape, teacher_shape, method),
                bn=nn.BatchNorm2d(teacher_shape[0]),
                relu=nn.ReLU(),
            )
        )


def classifier_of(model: nn.Module, shapes: FeatureShapes, image_shape) -> tuple[str, nn.Linear] | None:
    """(name, module) of the `nn.Linear` that maps `model`'s pooled vector to its logits, checked
    on a probe batch of `image_shape` (C, H, W) images; None when the model has no such layer."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and (module.in_features,) == tuple(shapes.pooled)
        and (module.out_features,) == tuple(shapes.logits)
    ]
    if not candidates:
        return None
    features = probe_features(model, image_shape)
    with torch.no_grad():
        found = [
            (name, module)
            for name, module in candidates
            if torch.allclose(module(features.pooled), features.logits, rtol=1e-3, atol=1e-4)
        ]
    return found[0] if found else None


class StrongViewMethod(Method):
    """A method trained on a weak and a strong augmented view of each batch (`extra_views`): the
    student's CE is taken on the strong view too, weighted and smoothed as on the weak one."""

    extra_views = ("strong",)

    def losses(self, student, teacher, labels, indices, views=None) -> dict[str, Tensor]:
        terms = super().losses(student, teacher, labels, indices, views=views)
        if self.hp["ce_weight"]:
            strong_student, _ = views["strong"]
            terms["ce_strong"] = self.hp["ce_weight"] * F.cross_entropy(
                strong_student.logits, labels, label_smoothing=self.hp["label_smoothing"]
            )
        return terms
