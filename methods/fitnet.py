"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

A regressor r maps the student's guided layer onto the teacher's hint layer (paper, Eq. 3):

    L_hint = 1/2 || u_h(x) - r(v_g(x)) ||^2

As in RepDistiller (Tian et al., ICLR 2020), which the published CIFAR numbers come from:
- the loss is nn.MSELoss, the mean squared error (distiller_zoo/FitNet.py, HintLoss);
- r is ConvReg (models/util.py): a convolution that also matches the spatial size, then BN and ReLU;
- the hint is trained jointly with CE in one stage (the paper pre-trains the guided layers first);
- defaults `--distill hint -a 0 -b 100 --hint_layer 2` (scripts/run_cifar_distill.sh, train_student.py).

`hint_layer` keeps RepDistiller's numbering of its feat list [stem, stage 1, ..., stage n, pooled]:
0 is our `Features.stem` and k >= 1 is `Features.stages[k - 1]`, so the default 2 is `stages[1]`,
the output of the second stage (16x16 on CIFAR ResNets), for student and teacher alike.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._parts import ConvRegressor, resizing_conv
from .base import Features, FeatureShapes, Method, MethodContext, PairNotSupportedError, register_method


def hint_feature(features: Features | FeatureShapes, hint_layer: int):
    """The feature (or its shape) at RepDistiller's `hint_layer`: 0 = stem, k = k-th stage."""
    return features.stem if hint_layer == 0 else features.stages[hint_layer - 1]


def hint_shapes(
    student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, hint_layer: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(C, H, W) of the student's and the teacher's hint features; refuses a layer either model lacks."""
    for role, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
        if not 0 <= hint_layer <= len(shapes.stages) or hint_feature(shapes, hint_layer) is None:
            raise PairNotSupportedError(
                f"fitnet: the {role} has no hint_layer {hint_layer} "
                f"(0 = stem, 1..{len(shapes.stages)} = stages)"
            )
        if len(hint_feature(shapes, hint_layer)) != 3:
            raise PairNotSupportedError(
                f"fitnet: the {role}'s hint feature has shape {hint_feature(shapes, hint_layer)}, "
                "not (C, H, W); the convolutional regressor needs a spatial map"
            )
    return hint_feature(student_shapes, hint_layer), hint_feature(teacher_shapes, hint_layer)


@register_method
class FitNet(Method):
    """Hint loss: MSE(ConvReg(student hint), teacher hint)."""

    name = "fitnet"
    student_features = ("stem", "stages")
    teacher_features = ("stem", "stages")
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 100.0, "hint_layer": 2}

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.regressor = ConvRegressor(
            *hint_shapes(context.student_shapes, context.teacher_shapes, hp["hint_layer"]), "fitnet"
        )

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        # With the default hint_layer; an overridden one is checked the same way when the method is built.
        resizing_conv(*hint_shapes(student_shapes, teacher_shapes, cls.defaults["hint_layer"]), "fitnet")

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        hint_layer = self.hp["hint_layer"]
        regressed = self.regressor(hint_feature(student, hint_layer))
        return {"hint": F.mse_loss(regressed, hint_feature(teacher, hint_layer))}
