"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv 2017.

Each channel's spatial map f^i (flattened over h*w and L2-normalised) is one sample of the
distribution of neuron selectivity patterns; the student's distribution is matched to the
teacher's with the squared Maximum Mean Discrepancy under the polynomial kernel
k(x, y) = (x^T y)^2 (d = 2, c = 0, the paper's choice):

    MMD^2 = 1/C_T^2 sum_{i,i'} k(f_T^i, f_T^i') + 1/C_S^2 sum_{j,j'} k(f_S^j, f_S^j')
          - 2/(C_T C_S) sum_{i,j} k(f_S^j, f_T^i)

averaged over the batch. Channel counts may differ; spatial sizes are matched by
average-pooling the larger map to the smaller one (RepDistiller, distiller_zoo/NST.py).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import FeatureShapes, Method, register_method, require_paired_stages


def pool_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


def mean_polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch and all channel pairs of (a_i^T b_j)^2; a (N, Ca, hw), b (N, Cb, hw)."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(student: Tensor, teacher: Tensor) -> Tensor:
    student, teacher = pool_to_common_size(student, teacher)
    student = F.normalize(student.flatten(2), dim=2)
    teacher = F.normalize(teacher.flatten(2), dim=2)
    return (
        mean_polynomial_kernel(teacher, teacher)
        + mean_polynomial_kernel(student, student)
        - 2 * mean_polynomial_kernel(student, teacher)
    )


@register_method
class NST(Method):
    """Neuron selectivity transfer on every stage output, stages paired one to one.

    Features: RepDistiller (Tian et al., ICLR 2020) applies NSTLoss to each entry of `feat[1:-1]`
    of its list [stem, stage_1, ..., stage_n, pooled], i.e. `Features.stages` here
    (post-activation), and sums the per-stage losses. Defaults: RepDistiller's
    scripts/run_cifar_distill.sh, `--distill nst -r 1 -a 0 -b 50`.
    """

    name = "nst"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 50.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_paired_stages("nst", student_shapes, teacher_shapes)

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        return {"nst": sum(nst_loss(s, t) for s, t in zip(student.stages, teacher.stages, strict=True))}
