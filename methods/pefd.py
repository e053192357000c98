"""PEFD: Chen, Wang, Liu, Xu, de Hoog & Huang, "Improved Feature Distillation via Projector Ensemble",
NeurIPS 2022.

The student's pooled feature z_s is mapped onto the teacher's width by an ensemble of q linear
projectors, each followed by ReLU; their average is pulled towards the teacher's pooled feature z_t
in direction (paper, Eq. 3-4):

    f_s   = 1/q sum_k ReLU(W_k z_s + b_k)
    L_PE  = 1/B sum_i ( 1 - <f_s,i, z_t,i> / (||f_s,i|| ||z_t,i||) )
    total = ce_weight * CE + method_weight * L_PE

As the authors' code (chenyd7/PEFD, commit 7f1e2de, helper/loops.py `opt.distill == 'ours'`,
train_student.py, models/util.py `Reg`): q = 3 projectors `Reg(Cs, Ct)` (nn.Linear with bias); z is
RepDistiller's last feature, the pooled vector (kdbench's `Features.pooled`); no KL term;
scripts/run_cifar.sh `--distill ours -a 0 -b 25` with -r at its default 1. train_student.py builds a
fourth projector that is never trained nor used; kdbench builds the three that are. An all-zero
ensemble (every ReLU off) has no direction: the code's division gives NaN, kdbench's cosine (norms
clamped at 1e-12) gives 0, a distance of 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError

from .base import Features, FeatureShapes, Method, MethodContext, PairNotSupportedError, register_method


@register_method
class PEFD(Method):
    """Cosine distance between the average of q ReLU-linear projections of the student and the teacher."""

    name = "pefd"
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 25.0, "num_projectors": 3}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        if teacher_shapes is None:
            raise PairNotSupportedError("pefd distils the teacher's pooled features: it needs a teacher")

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        if hp["num_projectors"] < 1:
            raise ConfigError(f"hyper-parameter pefd.num_projectors={hp['num_projectors']}: takes 1 or more")
        student_width = math.prod(context.student_shapes.pooled)
        teacher_width = math.prod(context.teacher_shapes.pooled)
        self.projectors = nn.ModuleList(
            nn.Linear(student_width, teacher_width) for _ in range(hp["num_projectors"])
        )

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        pooled = student.pooled.flatten(1)
        ensemble = torch.stack([F.relu(projector(pooled)) for projector in self.projectors]).mean(dim=0)
        cosine = F.cosine_similarity(ensemble, teacher.pooled.flatten(1), dim=1, eps=1e-12)
        return {"pefd": (1 - cosine).mean()}
