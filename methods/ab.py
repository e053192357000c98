"""AB: Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by
Hidden Neurons", AAAI 2019.

The student's pre-activation stage features, through a connector r(.), learn on which side of zero
each teacher neuron is (its activation boundary). The paper's alternative (margin) loss, per stage:

    L(I) = || rho(T) * relu(mu - r(S))  +  (1 - rho(T)) * relu(mu + r(S)) ||_2^2,   rho(T) = 1[T > 0]

with margin mu = 1. Stages are weighted 2^(i - n + 1) (deepest 1, each shallower one half),
divided by the batch size and scaled by 3/1000, as in the authors' code kept by RepDistiller
(Tian et al., ICLR 2020, distiller_zoo/AB.py).

AB is a pre-training method: RepDistiller (train_student.py, helper/pretrain.py) trains the
connectors and the student body (every layer but the classifier) on this loss alone for
`--init_epochs 30` epochs with the main recipe's SGD, then trains the main stage with
`loss_kd = 0` (helper/loops.py), so its `-b 1` has no effect: the effective main-stage weight is 0,
our `method_weight` default. A positive `method_weight` adds the AB loss to the main stage too.
The engine trains all student parameters in the init stage; the classifier gets no gradient from
this loss, so, as in RepDistiller, only the body moves.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import (
    Features,
    FeatureShapes,
    InitStage,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
)


def activation_boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Squared hinge pushing each source value beyond +-margin on the teacher neuron's side; summed."""
    teacher_active = (target > 0).float()
    return (
        teacher_active * (margin - source).relu().pow(2)
        + (1 - teacher_active) * (margin + source).relu().pow(2)
    ).sum()


def connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """Identity where the shapes match (RepDistiller), else conv + BN to the teacher's shape.

    Same spatial size: the paper's 1x1 conv; student map twice as large: 3x3 stride-2 conv; half as
    large: 4x4 stride-2 transposed conv (RepDistiller's ConvReg without its ReLU).
    """
    (s_channels, s_height, _), (t_channels, t_height, _) = student_shape, teacher_shape
    if student_shape == teacher_shape:
        return nn.Identity()
    if s_height == t_height:
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    elif s_height == 2 * t_height:
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1, bias=False)
    else:
        conv = nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(t_channels))


@register_method
class AB(Method):
    """Activation-boundary distillation; an init stage, then plain CE (RepDistiller's protocol).

    Defaults: margin 1.0 (paper, Sec. 3.2; RepDistiller ABLoss), init_epochs 30 (RepDistiller
    `--init_epochs`), kd_weight 0 (`-a 0`), method_weight 0 (main-stage loss_kd = 0, see module doc).
    """

    name = "ab"
    student_features = ("preact",)
    teacher_features = ("preact",)
    defaults = {"kd_weight": 0.0, "method_weight": 0.0, "margin": 1.0, "init_epochs": 30}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        student, teacher = student_shapes.preact, teacher_shapes.preact
        if not student or len(student) != len(teacher):
            raise PairNotSupportedError(
                f"ab: needs as many pre-activation stages in the student as in the teacher "
                f"(student {len(student)}, teacher {len(teacher)})"
            )
        for s, t in zip(student, teacher, strict=True):
            if s[1] not in (t[1], 2 * t[1]) and 2 * s[1] != t[1]:
                raise PairNotSupportedError(
                    f"ab: stage sizes {s[1:]} (student) and {t[1:]} (teacher) differ by more than 2x"
                )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student, teacher = context.student_shapes.preact, context.teacher_shapes.preact
        self.connectors = nn.ModuleList(connector(s, t) for s, t in zip(student, teacher, strict=True))
        stages = len(self.connectors)
        self.stage_weights = [2.0 ** (i - stages + 1) for i in range(stages)]

    def ab_loss(self, student: Features, teacher: Features) -> dict[str, Tensor]:
        batch_size = student.preact[0].shape[0]
        total = sum(
            weight * activation_boundary_loss(connect(s), t, self.hp["margin"])
            for weight, connect, s, t in zip(
                self.stage_weights, self.connectors, student.preact, teacher.preact, strict=True
            )
        )
        return {"ab": total / batch_size * 3 / 1000}

    def init_stage(self) -> InitStage:
        return InitStage(
            self.init_epochs(), list(self.connectors.parameters()), self.ab_loss, trains_student=True
        )

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return self.ab_loss(student, teacher) if self.hp["method_weight"] else {}
