"""CTKD: Li, Li, Yang, Zhang, Zhao, Ni, Xie, Wu & Yang, "Curriculum Temperature for Knowledge
Distillation", AAAI 2023.

The KD temperature is learned, adversarially: a global temperature module predicts tau, and a
gradient reversal layer (GRL) between it and the loss makes tau *maximise* the distillation loss
the student minimises (paper, Eq. 5-8; the "global" module of the authors' code):

    tau      = t_start + t_range * sigmoid(GRL_lambda(theta))          theta: one learned scalar
    L_kd     = tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))
    GRL_lambda: identity forward, gradient times -lambda backward

and lambda follows an easy-to-hard cosine curriculum over the first E_loops epochs (Eq. 9):

    lambda_n = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(n, E_loops) / E_loops)) / 2

(n the 1-based epoch; the authors' code writes it as the GRL factor (cos(n pi / E) + 1) / 2 * (0 - (-1))
+ (-1) = -lambda_n). The total loss is ce_weight * CE + method_weight * L_kd, the learned-temperature
KD replacing the fixed-temperature KL term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._shared import standardized_pair
from .base import (
    FeatureShapes,
    Method,
    MethodContext,
    kd_kl_div,
    register_method,
    require_same_classes,
    scale_schedule,
)


class GradientReversal(torch.autograd.Function):
    """Identity forward; the incoming gradient times -lambda backward (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lambda_ * grad, None


def curriculum_lambda(epoch: float, loops: float, lambda_min: float, lambda_max: float) -> float:
    """lambda at a 1-based epoch: a cosine rise from lambda_min (epoch 0) to lambda_max (epoch >= loops)."""
    if loops <= 0:
        return lambda_max
    progress = min(max(epoch, 0.0), loops) / loops
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * progress)) / 2.0


@register_method
class CTKD(Method):
    """KD with a learnable, adversarial global temperature on a cosine curriculum.

    Defaults from the authors' CIFAR script (zhengli97/CTKD, scripts/run_cifar_distill.sh and
    train_student.py): `--distill kd -r 0.1 -a 0.9 -b 0 --kd_T 4 --have_mlp 1 --mlp_name global
    --t_start 1 --t_end 20 --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10`: CE
    weight 0.1, learned-temperature KD weight 0.9, tau in (1, 21), theta initialised to 1
    (models/temp_global.py: `torch.ones(1)`, so tau starts at 1 + 20 sigmoid(1) = 15.6), lambda from
    0 to 1 over 10 epochs. Their `--kd_T 4` is unused once the module is on.

    Curriculum on shorter runs: the 10 epochs belong to a 240-epoch schedule, so a run of E < 240
    epochs rises over 10 * E / 240 epochs (`scale_schedule`), as DKD's warm-up. Until the engine calls
    `set_epoch`, lambda is lambda_min. The temperature parameter trains with the student's optimizer
    (weight decay included), as in the authors' code. Their recipe (batch 64, lr 0.05) is kdbench's
    shared recipe's business.
    """

    name = "ctkd"
    defaults = {
        "ce_weight": 0.1,
        "kd_weight": 0.0,
        "method_weight": 0.9,
        "t_start": 1.0,
        "t_range": 20.0,
        "init_theta": 1.0,
        "lambda_min": 0.0,
        "lambda_max": 1.0,
        "curriculum_epochs": 10.0,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("ctkd", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.theta = nn.Parameter(torch.full((1,), float(hp["init_theta"])))
        self.lambda_ = float(hp["lambda_min"])

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        loops = scale_schedule(self.hp["curriculum_epochs"], num_epochs)
        self.lambda_ = curriculum_lambda(epoch, loops, self.hp["lambda_min"], self.hp["lambda_max"])

    def temperature(self) -> Tensor:
        """tau as a 0-dim tensor, through the gradient reversal layer."""
        reversed_theta = GradientReversal.apply(self.theta, self.lambda_)
        return (self.hp["t_start"] + self.hp["t_range"] * torch.sigmoid(reversed_theta)).squeeze(0)

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        student_logits, teacher_logits = standardized_pair(
            student.logits, teacher.logits, self.hp["logit_std"]
        )
        return {"ctkd": kd_kl_div(student_logits, teacher_logits, self.temperature())}
