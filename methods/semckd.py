"""SemCKD: Chen, Mei, Zhang, Wang, Wang, Feng & Chen, "Cross-Layer Distillation with Semantic
Calibration", AAAI 2021.

Every student layer s_l learns, per sample i, an attention over all teacher layers t_l (paper,
Eq. 3-6): the queries and keys are embeddings of the layers' within-batch similarity matrices,

    A^l      = R(F^l) R(F^l)^T                           (b x b; R flattens a sample's feature map)
    q_i^s_l  = MLP_Q^s_l(A_s^s_l[i]),  k_i^t_l = MLP_K^t_l(A_t^t_l[i])    (L2-normalised)
    alpha_i^(s_l, t_l) = softmax_t_l( q_i^s_l . k_i^t_l / soft )

and each student layer is projected to every teacher layer's shape and pulled towards it with the
attention as weight (the larger map of a pair average-pooled to the smaller's size first):

    L_SemCKD = 1 / (b |S|) sum_i sum_s_l sum_t_l alpha_i^(s_l, t_l) MSE(Proj^(s_l, t_l)(F_s^s_l[i]), F_t^t_l[i])

with MSE the mean over a sample's C x H x W. As the authors' code (DefangChen/SemCKD, models/util.py
`SelfA` / `MLPEmbed` / `AAEmbed`, distiller_zoo/SemCKD.py; the same in DefangChen/SimKD, where
`--soft` divides the energies): the layers are RepDistiller's `feat[1:-1]`, the post-activation
stage outputs (`Features.stages`); MLP_Q, MLP_K are Linear(b, 2b/4)-ReLU-Linear(2b/4, b/4)-L2norm
(factor 4), so their width is the batch size; Proj is conv1x1(C_s -> 2C_t)-BN-ReLU-
conv3x3(2C_t -> 2C_t)-BN-ReLU-conv1x1(2C_t -> C_t).

Because the embeddings read a b-wide row, the authors skip a batch smaller than the batch size
(helper/loops.py: `if opt.distill == 'semckd' and input.shape[0] < opt.batch_size: continue`). A
kdbench step cannot be skipped by a method, so on such a batch (the last one of an epoch, if the
training set is not a multiple of the batch size) the SemCKD term is 0 and only CE + KL train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._shared import ConvProjector, align_spatially
from .base import Features, FeatureShapes, Method, MethodContext, register_method, require_spatial_stages


class SimilarityEmbed(nn.Module):
    """MLPEmbed: Linear(b, 2d) - ReLU - Linear(2d, d) - L2 normalisation, d = b // factor."""

    def __init__(self, batch_size: int, factor: int):
        super().__init__()
        width = max(1, batch_size // factor)
        self.linear1 = nn.Linear(batch_size, 2 * width)
        self.linear2 = nn.Linear(2 * width, width)

    def forward(self, similarity: Tensor) -> Tensor:
        return F.normalize(self.linear2(F.relu(self.linear1(similarity))), dim=1)


def layer_projector(student_channels: int, teacher_channels: int) -> ConvProjector:
    """AAEmbed: conv1x1 (C_s -> 2 C_t) - BN - ReLU - conv3x3 - BN - ReLU - conv1x1 (2 C_t -> C_t)."""
    return ConvProjector(student_channels, 2 * teacher_channels, teacher_channels, normalized_output=False)


def batch_similarity(feature: Tensor) -> Tensor:
    """A = R(F) R(F)^T, the (b, b) Gram matrix of the flattened per-sample features."""
    flat = feature.reshape(feature.shape[0], -1)
    return flat @ flat.t()


def layer_attention(queries: list[Tensor], keys: list[Tensor], soft: float) -> Tensor:
    """(b, |S|, |T|) attention: softmax over teacher layers of q_i . k_i / soft."""
    query = torch.stack(queries, dim=1)  # (b, S, d)
    key = torch.stack(keys, dim=2)  # (b, d, T)
    return F.softmax(torch.bmm(query, key) / soft, dim=-1)


def weighted_layer_loss(per_sample: Tensor, attention: Tensor) -> Tensor:
    """sum_{i, s, t} alpha * MSE_i(s, t) / (b |S|); per_sample and attention are (b, S, T)."""
    batch, num_student, _ = attention.shape
    return (attention * per_sample).sum() / (batch * num_student)


@register_method
class SemCKD(Method):
    """Cross-layer feature distillation with per-sample attention over the teacher's layers.

    Defaults from the authors' code and scripts (DefangChen/SemCKD, README and
    scripts/run_cifar_distill.sh: `--distill semckd -r 1 -a 1 -b 400`, `--kd_T 4`; models/util.py
    `SelfA(..., factor=4)`; DefangChen/SimKD train_student.py `--soft 1.0`): CE weight 1, KL weight 1
    at T = 4, SemCKD weight 400, embedding factor 4, attention temperature 1.
    """

    name = "semckd"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "method_weight": 400.0,
        "temperature": 4.0,
        "factor": 4,
        "soft": 1.0,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_spatial_stages("semckd", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student, teacher = context.student_shapes.stages, context.teacher_shapes.stages
        self.batch_size = context.batch_size
        self.queries = nn.ModuleList(SimilarityEmbed(self.batch_size, hp["factor"]) for _ in student)
        self.keys = nn.ModuleList(SimilarityEmbed(self.batch_size, hp["factor"]) for _ in teacher)
        self.projectors = nn.ModuleList(
            nn.ModuleList(layer_projector(s[0], t[0]) for t in teacher) for s in student
        )

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        if len(labels) != self.batch_size:  # the authors skip such a batch (module docstring)
            return {"semckd": student.stages[0].new_zeros(())}
        queries = [embed(batch_similarity(f)) for embed, f in zip(self.queries, student.stages, strict=True)]
        keys = [embed(batch_similarity(f)) for embed, f in zip(self.keys, teacher.stages, strict=True)]
        attention = layer_attention(queries, keys, self.hp["soft"])
        per_sample = torch.stack(
            [
                torch.stack(
                    [
                        _per_sample_mse(projector, student_map, teacher_map)
                        for projector, teacher_map in zip(row, teacher.stages, strict=True)
                    ],
                    dim=1,
                )
                for row, student_map in zip(self.projectors, student.stages, strict=True)
            ],
            dim=1,
        )  # (b, S, T)
        return {"semckd": weighted_layer_loss(per_sample, attention)}


def _per_sample_mse(projector: nn.Module, student_map: Tensor, teacher_map: Tensor) -> Tensor:
    source, target = align_spatially(student_map, teacher_map)
    return (projector(source) - target).pow(2).flatten(1).mean(dim=1)
