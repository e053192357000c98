"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

For a batch of b samples with flattened activations Q (b x chw), the pairwise similarities

    G = Q Q^T,   G~[i, :] = G[i, :] / ||G[i, :]||_2          (row-wise L2 normalisation)

are matched between teacher and student:

    L_SP = 1 / b^2 * ||G~_T - G~_S||_F^2

Only sample-by-sample similarities are compared, so teacher and student may have any
feature shapes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.base import FeatureShapes, Method, register_method, require_stages


def normalized_gram(features: Tensor) -> Tensor:
    """G~ = row-L2-normalised Q Q^T of the flattened batch features (b x b)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def similarity_preserving_loss(student: Tensor, teacher: Tensor) -> Tensor:
    batch_size = student.shape[0]
    return (normalized_gram(teacher) - normalized_gram(student)).pow(2).sum() / batch_size**2


@register_method
class SP(Method):
    """Similarity-preserving KD on the last stage output.

    Features: RepDistiller (Tian et al., ICLR 2020) applies SP to `feat[-2]` of its feature
    list [stem, stage_1, ..., stage_n, pooled], i.e. `Features.stages[-1]` here
    (post-activation). Defaults: RepDistiller's scripts/run_cifar_distill.sh,
    `--distill similarity -r 1 -a 0 -b 3000`.
    """

    name = "sp"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 3000.0}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_stages("sp", student_shapes, teacher_shapes)

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        return {"sp": similarity_preserving_loss(student.stages[-1], teacher.stages[-1])}
