"""FSP: Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning", CVPR 2017.

The "flow of solution procedure" between two layers with maps F1 (h x w x m) and F2 (h x w x n) is

    G[i, j] = sum_{s, t} F1[s, t, i] * F2[s, t, j] / (h * w)

and the student learns the teacher's FSP matrices: L = sum_pairs lambda * ||G_T - G_S||_2^2, with
equal lambda; as RepDistiller (Tian et al., ICLR 2020, distiller_zoo/FSP.py) the squared norm is a
mean over the matrix entries and the batch, and the larger of two maps is average-pooled to the
smaller one's size. The layers are the stem and the stages' outputs (RepDistiller's feat[:-1]);
the stem is left out when either network has none. FSP matrices compare only when the student's
and the teacher's layers have the same channel counts, so other pairs are refused.

FSP is a pre-training method: RepDistiller (train_student.py, helper/pretrain.py) trains the
student body (every layer but the classifier) on the FSP loss alone for `--init_epochs 30` epochs,
then trains the main stage with `loss_kd = 0` (helper/loops.py), so its `-b 50` has no effect: the
effective main-stage weight is 0, our `method_weight` default. A positive `method_weight` adds the
FSP loss to the main stage too. FSP has no trainable modules of its own; the engine trains all
student parameters in the init stage, and the classifier gets no gradient from this loss.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    Features,
    FeatureShapes,
    InitStage,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
)


def fsp_matrix(lower: Tensor, upper: Tensor) -> Tensor:
    """(N, m, n) FSP matrices of (N, m, h, w) and (N, n, h', w') maps, pooled to the smaller size."""
    size = tuple(map(min, lower.shape[-2:], upper.shape[-2:]))
    lower, upper = F.adaptive_avg_pool2d(lower, size), F.adaptive_avg_pool2d(upper, size)
    return torch.einsum("nihw,njhw->nij", lower, upper) / (size[0] * size[1])


def fsp_layers(shapes_or_features: FeatureShapes | Features, with_stem: bool) -> list:
    """The layers whose consecutive pairs give the FSP matrices: [stem] + stages."""
    return ([shapes_or_features.stem] if with_stem else []) + list(shapes_or_features.stages)


def both_have_stem(student_shapes: FeatureShapes, teacher_shapes: FeatureShapes) -> bool:
    return student_shapes.stem is not None and teacher_shapes.stem is not None


@register_method
class FSP(Method):
    """FSP-matrix distillation; an init stage, then plain CE (RepDistiller's protocol).

    Defaults: init_epochs 30 (RepDistiller `--init_epochs`), kd_weight 0 (`-a 0`), method_weight 0
    (main-stage loss_kd = 0, see module doc).
    """

    name = "fsp"
    student_features = ("stem", "stages")
    teacher_features = ("stem", "stages")
    defaults = {"kd_weight": 0.0, "method_weight": 0.0, "init_epochs": 30}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        with_stem = both_have_stem(student_shapes, teacher_shapes)
        student_channels = [shape[0] for shape in fsp_layers(student_shapes, with_stem)]
        teacher_channels = [shape[0] for shape in fsp_layers(teacher_shapes, with_stem)]
        if len(student_shapes.stages) != len(teacher_shapes.stages):
            raise PairNotSupportedError(
                f"fsp: student has {len(student_shapes.stages)} stages, teacher has "
                f"{len(teacher_shapes.stages)}; FSP needs the same number"
            )
        if len(student_channels) < 2:
            raise PairNotSupportedError(
                "fsp: needs at least two layers (stem and stages) to form an FSP matrix"
            )
        if student_channels != teacher_channels:
            raise PairNotSupportedError(
                f"fsp: FSP layer channels differ (student {student_channels}, teacher {teacher_channels}); "
                f"FSP matrices need the same channels layer by layer"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.with_stem = both_have_stem(context.student_shapes, context.teacher_shapes)

    def fsp_loss(self, student: Features, teacher: Features) -> dict[str, Tensor]:
        student_pairs = pairwise(fsp_layers(student, self.with_stem))
        teacher_pairs = pairwise(fsp_layers(teacher, self.with_stem))
        total = sum(
            (fsp_matrix(*s_pair) - fsp_matrix(*t_pair)).pow(2).mean()
            for s_pair, t_pair in zip(student_pairs, teacher_pairs, strict=True)
        )
        return {"fsp": total}

    def init_stage(self) -> InitStage:
        return InitStage(self.init_epochs(), [], self.fsp_loss, trains_student=True)

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return self.fsp_loss(student, teacher) if self.hp["method_weight"] else {}
