"""WKD: Lv, Yang & Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
Distillation", NeurIPS 2024. Two variants, each registered under its own name.

WKD-L (`wkd`), logit distillation. The target class t is matched as in NKD, and the distributions
over the K - 1 non-target classes are compared with a discrete, entropy-regularised Wasserstein
distance whose ground cost C encodes how related two categories are (paper, Sec. 3.1):

    L_t      = -p_t^T log p_t^S                          (softmax at T = 1, p_t^T without gradient)
    p^       = softmax(z_{k != t} / T)                   (student's and teacher's non-target distributions)
    WD(p^S, p^T) = min_{Q in U(p^S, p^T)} sum_ij q_ij c_ij - eps H(Q)   (Sinkhorn, eps = lambda)
    L_WKD-L  = L_t + gamma * WD(p^S, p^T)                (batch means)

with C the cost between the K - 1 non-target categories of each sample:

    c_ij = 1 - exp(-kappa * d_ij),  d = 1 - cos(w_i, w_j),  w_k the teacher's classifier row of class k

Sinkhorn's iteration is the authors' (u <- 1/K; v = p^T / (K^T u); u = p^S / (K v); Q = diag(u) K
diag(v), K = exp(-C / lambda), every iteration differentiated) and C is clamped by ReLU and offset by
1e-8 before use, as in the code.

WKD-F (`wkdf`), feature distillation. The student's last stage map, projected onto the teacher's by
a ConvReg (methods/_parts.py), and the teacher's map are each summarised per channel by a diagonal
Gaussian (mean mu and standard deviation sigma over the spatial positions of a cell of a G x G grid);
the 2-Wasserstein distance between two diagonal Gaussians is closed-form (paper, Sec. 3.2):

    WD^2 = ||mu^S - mu^T||^2 + ||sigma^S - sigma^T||^2,      sigma = sqrt(var + eps)
    L_WKD-F = ratio * sum ||mu^S - mu^T||^2 / (B G^2) + sum ||sigma^S - sigma^T||^2 / (B G^2)

with var the unbiased variance (torch's default, as in the code) and the cells those of adaptive
pooling (cell k of n spans floor(k n / G) .. ceil((k + 1) n / G)).

Where kdbench follows the authors' code (JiamingLv/WKD, commit 214cf88,
mdistiller/distillers/WKD.py and configs/cifar100/wkd_l, wkd_f):
- L_t has weight 1 and is never decayed; gamma, and the WKD-F weight, decay by a half cosine from
  epoch 150 of 240 to the last epoch (COSINE_DECAY_EPOCH 150); kdbench shrinks 150 in proportion for a
  run shorter than 240 epochs (methods/base.py `scale_schedule`) and decays to the run's last epoch.
- No T^2 factor on the Wasserstein term.
- The category cost: the published CIFAR runs read a matrix computed offline (1 - linear CKA between
  the teacher's last-stage features of each pair of classes over the whole training set,
  tools/generate_cost_matrix.py), which needs the training set before training; a kdbench method
  sees the teacher, not the data, when it is built. kdbench uses the code's other option,
  COST_MATRIX "fc" (1 - cosine similarity of the teacher's classifier rows, the paper's "classifier
  weights" category prototypes), with the same sharpening (COST_MATRIX_SHARPEN 1.0). A teacher
  without a linear classifier on its pooled features is refused when the method is built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._parts import ConvRegressor, classifier_of, resizing_conv
from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
    require_same_classes,
    require_spatial_stages,
    scale_schedule,
)

SINKHORN_FLOOR = 1e-8  # the code's guard against a zero division in Sinkhorn's iteration


def sharpened_cost(prototypes: Tensor, sharpen: float) -> Tensor:
    """(K, K) cost 1 - exp(-kappa (1 - cos(w_i, w_j))) between class prototypes, the rows of `prototypes`;
    kappa 0 keeps the plain 1 - cos."""
    normed = F.normalize(prototypes, dim=1)
    distance = 1 - normed @ normed.t()
    return 1 - torch.exp(-sharpen * distance) if sharpen else distance


def sinkhorn_plan(source: Tensor, target: Tensor, cost: Tensor, reg: float, iterations: int) -> Tensor:
    """(B, K, K) transport plans from `source` (B, K) to `target` (B, K) under per-sample `cost` (B, K, K)."""
    source, target = source.unsqueeze(-1), target.unsqueeze(-1)
    kernel = torch.exp(-cost / reg)
    u = torch.full_like(source, 1.0 / source.shape[1])
    for _ in range(iterations):
        v = target / (kernel.transpose(1, 2) @ u + SINKHORN_FLOOR)
        u = source / (kernel @ v + SINKHORN_FLOOR)
    return u * kernel * v.transpose(1, 2)


def non_target(values: Tensor, labels: Tensor) -> Tensor:
    """(B, K - 1) column indices of every class but each row's label, in class order."""
    classes = torch.arange(values.shape[1], device=values.device).expand(len(labels), -1)
    return classes[classes != labels[:, None]].view(len(labels), -1)


def cosine_ramp_down(epoch: int, num_epochs: int, start_epoch: float) -> float:
    """1 until `start_epoch`, then 0.5 (1 + cos(pi (epoch - start) / (num_epochs - start)))."""
    if epoch <= start_epoch or num_epochs <= start_epoch:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (epoch - start_epoch) / (num_epochs - start_epoch)))


@register_method
class WKDL(Method):
    """WKD-L: the target class as NKD's term, the non-target classes by Sinkhorn's Wasserstein distance.

    Defaults from the authors' configs/cifar100/wkd_l/res32x4_res8x4.yaml (JiamingLv/WKD, 214cf88):
    CE weight 1, gamma (WKD_LOGIT_WEIGHT) 600, T 8, Sinkhorn lambda 0.05 and 10 iterations, cost
    sharpening 1, decay from epoch 150. Their other CIFAR pair, wrn_40_2 -> ShuffleV1, uses gamma 200
    and T 6 (wkd_l/wrn40_2_shuv1.yaml).
    """

    name = "wkd"
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 8.0,
        "gamma": 600.0,
        "sinkhorn_lambda": 0.05,
        "sinkhorn_iterations": 10,
        "sharpen": 1.0,
        "decay_epoch": 150,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("wkd", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        found = None
        if context.teacher is not None:
            found = classifier_of(context.teacher, context.teacher_shapes, context.image_shape)
        if found is None:
            raise PairNotSupportedError(
                "wkd reads category relations from the teacher's classifier: the teacher has no nn.Linear "
                "that maps its pooled features to its logits"
            )
        with torch.no_grad():
            cost = sharpened_cost(found[1].weight.detach().float(), hp["sharpen"])
        self.register_buffer("cost", F.relu(cost) + SINKHORN_FLOOR)
        self.decay = 1.0

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.decay = cosine_ramp_down(epoch, num_epochs, scale_schedule(self.hp["decay_epoch"], num_epochs))

    def wasserstein(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        """Batch mean of the Sinkhorn distance between the non-target distributions at temperature T."""
        others = non_target(student_logits, labels)
        temperature = self.hp["temperature"]
        with torch.autocast(student_logits.device.type, enabled=False):  # exp(-C / 0.05) needs float32
            p_student = F.softmax(student_logits.float().gather(1, others) / temperature, dim=1)
            p_teacher = F.softmax(teacher_logits.float().gather(1, others) / temperature, dim=1)
            cost = self.cost[others[:, :, None], others[:, None, :]]
            plan = sinkhorn_plan(
                p_student, p_teacher, cost, self.hp["sinkhorn_lambda"], self.hp["sinkhorn_iterations"]
            )
            return (plan * cost).sum(dim=(1, 2)).mean()

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        log_p_student = F.log_softmax(student.logits, dim=1).gather(1, labels[:, None])
        p_teacher = F.softmax(teacher.logits.detach(), dim=1).gather(1, labels[:, None])
        wasserstein = self.wasserstein(student.logits, teacher.logits.detach(), labels)
        return {
            "wkd_target": -(p_teacher * log_p_student).mean(),
            "wkd_wasserstein": self.decay * self.hp["gamma"] * wasserstein,
        }


def grid_cells(size: int, grid: int) -> list[slice]:
    """Adaptive pooling's cells along one axis: cell k spans floor(k n / G) .. ceil((k + 1) n / G)."""
    return [slice(k * size // grid, -(-(k + 1) * size // grid)) for k in range(grid)]


def gaussian_moments(feature: Tensor, grid: int, eps: float) -> tuple[Tensor, Tensor]:
    """(B, C, G, G) means and standard deviations sqrt(var + eps) of each channel over each grid cell."""
    rows, cols = grid_cells(feature.shape[2], grid), grid_cells(feature.shape[3], grid)
    cells = [[feature[:, :, r, c].flatten(2) for c in cols] for r in rows]
    mean = torch.stack([torch.stack([cell.mean(dim=2) for cell in row], dim=-1) for row in cells], dim=-2)
    std = torch.stack(
        [torch.stack([(cell.var(dim=2) + eps).sqrt() for cell in row], dim=-1) for row in cells], dim=-2
    )
    return mean, std


@register_method
class WKDF(Method):
    """WKD-F: the closed-form Wasserstein distance between per-channel Gaussians of the last stage maps.

    Defaults from the authors' configs/cifar100/wkd_f/res32x4_res8x4.yaml (JiamingLv/WKD, 214cf88):
    CE weight 1, WKD_FEAT_WEIGHT 0.08, MEAN_COV_RATIO 4, SPATIAL_GRID 1, EPS 1e-5, HINT_LAYER -1 (the
    last stage), PROJECTOR conv1x1 (ConvReg with BN and ReLU), decay from epoch 150. Their other CIFAR
    pair, wrn_40_2 -> ShuffleV1, uses weight 0.3, ratio 3 and a 4 x 4 grid (wkd_f/wrn40_2_shuv1.yaml).
    """

    name = "wkdf"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 0.08,
        "mean_ratio": 4.0,
        "grid": 1,
        "eps": 1e-5,
        "decay_epoch": 150,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_spatial_stages("wkdf", student_shapes, teacher_shapes)
        resizing_conv(student_shapes.stages[-1], teacher_shapes.stages[-1], "wkdf")
        cls._require_cells(teacher_shapes.stages[-1], cls.defaults["grid"])

    @staticmethod
    def _require_cells(shape: tuple[int, ...], grid: int) -> None:
        """Refuse a grid with a cell of fewer than two positions (its variance is undefined)."""
        _, height, width = shape
        smallest = min(s.stop - s.start for s in grid_cells(height, grid)) * min(
            s.stop - s.start for s in grid_cells(width, grid)
        )
        if grid < 1 or smallest < 2:
            raise PairNotSupportedError(
                f"wkdf: a {grid} x {grid} grid on the teacher's {height}x{width} last stage leaves a cell of "
                f"{smallest} position(s); a standard deviation needs two"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self._require_cells(context.teacher_shapes.stages[-1], hp["grid"])
        self.regressor = ConvRegressor(
            context.student_shapes.stages[-1], context.teacher_shapes.stages[-1], "wkdf"
        )
        self.decay = 1.0

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.decay = cosine_ramp_down(epoch, num_epochs, scale_schedule(self.hp["decay_epoch"], num_epochs))

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        grid, eps = self.hp["grid"], self.hp["eps"]
        with torch.autocast(labels.device.type, enabled=False):  # variances of float32 maps, as the code
            mean_s, std_s = gaussian_moments(self.regressor(student.stages[-1].float()), grid, eps)
            mean_t, std_t = gaussian_moments(teacher.stages[-1].float(), grid, eps)
        cells = len(labels) * grid**2
        return {
            "wkdf_mean": self.decay * self.hp["mean_ratio"] * (mean_s - mean_t).pow(2).sum() / cells,
            "wkdf_std": self.decay * (std_s - std_t).pow(2).sum() / cells,
        }
