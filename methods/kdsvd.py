"""KD-SVD: Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition", ECCV 2018.

Each sensing point's feature map is read as a matrix X of size (H*W) x C (one row per position) and
compressed by its singular value decomposition X = U S V^T: the knowledge is the first k right
singular vectors v_1..v_k (one direction over the channels each) scaled by their singular values,
l2-normalised over the k values (paper, Sec. 3):

    V^T = [v_1 .. v_k] * normalise(s_1 .. s_k)          teacher: its own k vectors
    V^S = [v'_1 .. v'_k] * normalise(s^T_1 .. s^T_k)    student: the k of its first k + 3 vectors
                                                        closest to the teacher's, sign-aligned

Alignment (the paper's "post-processing"): for each teacher vector v_j the student vector v'_i with
the largest |cos(v'_i, v_j)| is taken, times the sign of that cosine; both are scaled by the
teacher's normalised singular values. The knowledge transferred is the relation between two
consecutive sensing points l - 1 and l, a radial-basis "correlation" between every channel
direction of one and every one of the other, per singular vector j:

    G_l[c, c', j] = exp(-(V_l[c, j] - V_{l-1}[c', j])^2 / 8)
    L_KD-SVD = sum_l sum_{c, c', j} (G^S_l - G^T_l)^2 / batch        (teacher side not differentiated)

The SVD gradient: backpropagating through a rank-deficient feature (dead ReLU channels give repeated
zero singular values) makes the textbook SVD gradient 0 / 0. As the authors' TensorFlow code
(sseung0703/SSKD_SVD, SVP.py: a custom SVD gradient with `removenan`), kdbench uses the thin-SVD
gradient (Townsend, "Differentiating the Singular Value Decomposition", 2016) with the
1 / (s_j^2 - s_i^2) and 1 / s_i factors set to 0 where they are not finite (`right_singular`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    Features,
    FeatureShapes,
    Method,
    PairNotSupportedError,
    register_method,
    require_paired_stages,
)

RBF_WIDTH = 8.0  # the 8 of exp(-d^2 / 8): authors' code and mdistiller's KDSVD.py
STUDENT_EXTRA_VECTORS = 3  # the student offers k + 3 candidates for the alignment (both codes)


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _RightSingular(torch.autograd.Function):
    """(S, V) of the thin SVD of a batch of matrices, with a gradient that stays finite on repeated
    singular values (the non-finite factors set to 0, as the authors' custom SVD gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor]:
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh.transpose(-2, -1)
        ctx.save_for_backward(u, s, v)
        return s, v

    @staticmethod
    def backward(ctx, grad_s: Tensor | None, grad_v: Tensor | None) -> Tensor:
        u, s, v = ctx.saved_tensors
        inner = torch.zeros(*s.shape, s.shape[-1], dtype=s.dtype, device=s.device)
        if grad_s is not None:
            inner = inner + torch.diag_embed(grad_s)
        grad_x = 0.0
        if grad_v is not None:
            squared = s * s
            # f[i, j] = 1 / (s_j^2 - s_i^2) off the diagonal, 0 on it and wherever it is not finite
            f = _finite_or_zero(1.0 / (squared.unsqueeze(-2) - squared.unsqueeze(-1)))
            f = f * (1 - torch.eye(s.shape[-1], dtype=s.dtype, device=s.device))
            vt_gv = v.transpose(-2, -1) @ grad_v
            inner = inner + s.unsqueeze(-1) * (f * (vt_gv - vt_gv.transpose(-2, -1)))
            # the part of grad_v outside span(V) (only when H*W < C): U S^-1 gV^T (I - V V^T)
            inverse = _finite_or_zero(1.0 / s)
            outside = grad_v.transpose(-2, -1) - (grad_v.transpose(-2, -1) @ v) @ v.transpose(-2, -1)
            grad_x = (u * inverse.unsqueeze(-2)) @ outside
        return u @ inner @ v.transpose(-2, -1) + grad_x


def right_singular(x: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values (N, r) and right singular vectors (N, C, r) of (N, HW, C) matrices."""
    return _RightSingular.apply(x)


def svd_knowledge(feature: Tensor, num_vectors: int) -> tuple[Tensor, Tensor]:
    """(normalised singular values (N, n), right singular vectors (N, C, n)) of a (N, C, H, W) map
    read as (N, H*W, C), the first n of each (authors' SVP.SVD; mdistiller's `svd`)."""
    matrix = feature.float().flatten(2).transpose(1, 2)
    singular_values, vectors = right_singular(matrix)
    singular_values = _finite_or_zero(singular_values)[:, :num_vectors]
    vectors = _finite_or_zero(vectors)[:, :, :num_vectors]
    return torch.nn.functional.normalize(singular_values, dim=1), torch.nn.functional.normalize(
        vectors, dim=1
    )


def align_to_teacher(student_vectors: Tensor, teacher_vectors: Tensor) -> Tensor:
    """For each teacher vector, the student vector with the largest |cosine|, times that cosine's sign:
    (N, C, k + 3) x (N, C, k) -> (N, C, k) (authors' Align_rsv, mdistiller's `align_rsv`)."""
    cosine = student_vectors.transpose(1, 2) @ teacher_vectors
    best = cosine.abs() == cosine.abs().amax(dim=1, keepdim=True)
    selection = torch.where(best, cosine.sign(), torch.zeros_like(cosine)).detach()
    return student_vectors @ selection


def rbf_relation(vectors: Tensor, previous: Tensor) -> Tensor:
    """G[n, c, c', j] = exp(-(V[n, c, j] - V_prev[n, c', j])^2 / 8)."""
    return torch.exp(-(vectors.unsqueeze(2) - previous.unsqueeze(1)).pow(2) / RBF_WIDTH)


def kdsvd_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], k: int) -> Tensor:
    """Sum over consecutive sensing points of the squared RBF-relation differences, per sample."""
    total, previous_student, previous_teacher = 0.0, None, None
    for student_map, teacher_map in zip(student_maps, teacher_maps, strict=True):
        with torch.autocast(student_map.device.type, enabled=False):  # no half-precision SVD
            teacher_values, teacher_vectors = svd_knowledge(teacher_map.detach(), k)
            _, student_vectors = svd_knowledge(student_map, k + STUDENT_EXTRA_VECTORS)
            student_vectors = align_to_teacher(student_vectors, teacher_vectors)
            scale = teacher_values.unsqueeze(1)
            teacher_vectors, student_vectors = teacher_vectors * scale, student_vectors * scale
            if previous_student is not None:
                difference = rbf_relation(student_vectors, previous_student) - rbf_relation(
                    teacher_vectors, previous_teacher
                )
                total = total + _finite_or_zero(difference.pow(2)).sum()
        previous_student, previous_teacher = student_vectors, teacher_vectors
    return total / student_maps[0].shape[0]


@register_method
class KDSVD(Method):
    """SVD knowledge of consecutive stage outputs, related by an RBF, student matched to teacher.

    Sensing points: the stage outputs (post-activation), `Features.stages`, as mdistiller's
    KDSVD.py (its `feats[1:]`; the paper senses VGG's block outputs). Defaults from mdistiller
    (the DKD authors' code, which ports the authors' TensorFlow code): mdistiller/engine/cfg.py
    `KDSVD.K = 1`, `CE_WEIGHT 1.0`, `FEAT_WEIGHT 1.0`, configs/cifar100/kdsvd.yaml (no KL term);
    the loss summed over positions and divided by the batch size, as mdistiller's `kdsvd_loss`.

    Deviation from mdistiller, towards the paper: mdistiller views an NCHW map as (N, C*H, W), so its
    singular vectors run over the image width; kdbench reads it as (N, H*W, C) like the authors'
    NHWC code (`tf.reshape(x, [B, H*W, D])`), so the vectors run over the channels. The alignment then
    needs as many channels in the student as in the teacher at every stage, and pairs that differ are
    refused (wrn_40_2 -> wrn_40_1, resnet32x4 -> ShuffleV1, ...).
    """

    name = "kdsvd"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "k": 1}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_paired_stages("kdsvd", student_shapes, teacher_shapes)
        if len(student_shapes.stages) < 2:
            raise PairNotSupportedError("kdsvd: relates consecutive stages: it needs at least two")
        student_channels = [shape[0] for shape in student_shapes.stages]
        teacher_channels = [shape[0] for shape in teacher_shapes.stages]
        if student_channels != teacher_channels:
            raise PairNotSupportedError(
                f"kdsvd: aligns the student's singular vectors (one entry per channel) with the teacher's: "
                f"stage channels differ (student {student_channels}, teacher {teacher_channels})"
            )

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return {"kdsvd": kdsvd_loss(student.stages, teacher.stages, self.hp["k"])}
