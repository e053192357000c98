"""SSKD: Xu, Liu, Li & Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020 (arXiv 2006.07114).

Each image x_i of a batch of B is also seen rotated by 90, 180 and 270 degrees (the transformed
images x~_ij, j = 1..3; kdbench's views "rot90", "rot180", "rot270"). A projection head h (Linear,
ReLU, Linear on the pooled feature) on each network gives embeddings; their cosine similarities
between every transformed image and every normal image form a 3B x B matrix

    A_(ij),k = cos(h(f(x~_ij)), h(f(x_k)))          (student: A^s, teacher: A^t)

whose correct column is k = i (the self-supervised task: which image was transformed). With
z the logits and KL_T(p || q) = T^2 KL(softmax(p / T) || softmax(q / T)), averaged over the rows kept:

    L_ce = CE(z^s(x), y)                             (normal images)
    L_kd = KL_4(z^t(x) || z^s(x))                    (normal images)
    L_tf = KL_tf_T(z^t(x~) || z^s(x~))               over the transformed rows kept for L_tf
    L_ss = KL_ss_T(A^t || A^s)                       over the rows of A kept for L_ss
    total = ce_weight L_ce + kd_weight L_kd + transform_weight L_tf + similarity_weight L_ss

Rows kept ("error level ranking", paper Sec. 3.3): a row whose target the teacher ranks first (the
label for L_tf, the image's own column for L_ss) is always kept; of the others, the
int(wrong x keep) whose target the teacher ranks highest (`transform_keep`, `similarity_keep`).

The teacher's head is trained first with the backbone frozen, on the cross-entropy of its raw
cosine similarities A^t against the correct column (the method's init stage; frozen afterwards);
the student's head trains with the student in the main stage.

Defaults from the authors' student.py (xuguodong03/SSKD, commit 661b972): --ce-weight 0.1,
--kd-weight 0.9, --tf-weight 2.7, --ss-weight 10.0, --kd-T 4, --tf-T 4, --ss-T 0.5,
--ratio-tf 1.0 (every transformed row kept), --ratio-ss 0.75, --t-epoch 60 (the head stage, of
the 240 epochs of the student: scaled with the run's length as other init stages), --t-lr 0.05
(the recipe's lr); wrapper.py gives the head, cifar.py the rotations (np.rot90 of the flipped
image, each rotation cropped on its own).

Where kdbench follows its own engine rather than the code, and why:
- the code runs one forward of all 4B images; kdbench's engine runs the normal batch and each
  view separately, so BatchNorm's batch statistics are those of B images of one rotation (a
  rotation keeps each channel's pixel values, so its statistics differ little);
- each rotation view re-draws the crop and the flip (kdbench/data/views.py): the code crops each
  rotation anew too, but flips the image once for all four;
- the head stage keeps the recipe's lr throughout (kdbench's init stages have no schedule; the
  code decays it x0.1 at epochs 30 and 45 of 60);
- rows whose target ranks equally are kept in row order (a stable sort; the code's argsort is not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError

from .base import (
    Features,
    FeatureShapes,
    InitStage,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
    require_same_classes,
)

ROTATIONS = ("rot90", "rot180", "rot270")


def projection_head(dim: int) -> nn.Sequential:
    """SSKD's wrapper.py head on the pooled feature: Linear(d, d), ReLU, Linear(d, d)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


def rotated_rows(views: dict[str, tuple[Features, Features | None]], side: int, field: str) -> Tensor:
    """(3B, ...) the rotated images' `field` (0: student, 1: teacher), image-major: row 3i + j - 1
    is image i turned j quarter turns, the order of the code's 4-image groups."""
    return torch.stack([getattr(views[name][side], field) for name in ROTATIONS], dim=1).flatten(0, 1)


def similarity_matrix(rotated: Tensor, normal: Tensor) -> Tensor:
    """(3B, B) cosine similarity of each rotated embedding with each normal one."""
    return F.normalize(rotated, dim=1) @ F.normalize(normal, dim=1).T


def target_rank(scores: Tensor, targets: Tensor) -> Tensor:
    """(N,) the position of each row's target among its scores sorted high to low (0: the top)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return (order == targets[:, None]).long().argmax(dim=1)


def kept_rows(rank: Tensor, keep: float) -> Tensor:
    """Indices, in row order, of the rows whose target ranks first, and of the int(wrong x keep)
    other rows whose target ranks highest."""
    wrong = int((rank > 0).sum())
    order = torch.sort(rank, stable=True).indices
    return torch.sort(order[: rank.numel() - wrong + int(wrong * keep)]).values


def kl_times_t2(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over the rows."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


@register_method
class SSKD(Method):
    """KD on the normal and the rotated images, plus the teacher's self-supervised similarities."""

    name = "sskd"
    extra_views = ROTATIONS
    student_features = ("pooled",)
    teacher_features = ("pooled",)
    defaults = {
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "method_weight": 1.0,
        "temperature": 4.0,
        "transform_weight": 2.7,
        "similarity_weight": 10.0,
        "transform_temperature": 4.0,
        "similarity_temperature": 0.5,
        "transform_keep": 1.0,
        "similarity_keep": 0.75,
        "init_epochs": 60,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("sskd", student_shapes, teacher_shapes)
        if student_shapes.pooled is None or teacher_shapes.pooled is None:
            raise PairNotSupportedError("sskd projects pooled features: both networks must expose one")

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        height, width = context.image_shape[-2:]
        if height != width:
            raise ConfigError(
                f"sskd rotates images by 90 degrees: it needs square images, not {height}x{width}"
            )
        self.student_head = projection_head(context.student_shapes.pooled[0])
        self.teacher_head = projection_head(context.teacher_shapes.pooled[0])

    def teacher_head_loss(self, student: Features, teacher: Features, views) -> dict[str, Tensor]:
        """The head stage: CE of the teacher's raw cosine similarities against each image's own column."""
        similarity = similarity_matrix(
            self.teacher_head(rotated_rows(views, 1, "pooled")), self.teacher_head(teacher.pooled)
        )
        return {
            "sskd_teacher_head": F.cross_entropy(similarity, own_columns(len(teacher.pooled), similarity))
        }

    def init_stage(self) -> InitStage:
        return InitStage(self.init_epochs(), list(self.teacher_head.parameters()), self.teacher_head_loss)

    def method_terms(self, student, teacher, labels, indices, views=None) -> dict[str, Tensor]:
        hp = self.hp
        student_rotated = rotated_rows(views, 0, "logits")
        teacher_rotated = rotated_rows(views, 1, "logits").detach()
        rotated_labels = labels.repeat_interleave(len(ROTATIONS))
        transform_rows = kept_rows(target_rank(teacher_rotated, rotated_labels), hp["transform_keep"])
        transform = kl_times_t2(
            student_rotated[transform_rows], teacher_rotated[transform_rows], hp["transform_temperature"]
        )

        student_similarity = similarity_matrix(
            self.student_head(rotated_rows(views, 0, "pooled")), self.student_head(student.pooled)
        )
        with torch.no_grad():
            teacher_similarity = similarity_matrix(
                self.teacher_head(rotated_rows(views, 1, "pooled")), self.teacher_head(teacher.pooled)
            )
        own = own_columns(len(labels), teacher_similarity)
        similarity_rows = kept_rows(target_rank(teacher_similarity, own), hp["similarity_keep"])
        similarity = kl_times_t2(
            student_similarity[similarity_rows],
            teacher_similarity[similarity_rows],
            hp["similarity_temperature"],
        )
        return {
            "sskd_transform": hp["transform_weight"] * transform,
            "sskd_similarity": hp["similarity_weight"] * similarity,
        }


def own_columns(batch: int, like: Tensor) -> Tensor:
    """(3B,) the column of each rotated row's own normal image: row 3i + j - 1 -> i."""
    return torch.arange(batch, device=like.device).repeat_interleave(len(ROTATIONS))
