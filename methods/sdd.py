"""SDD: Wei, Luo & Luo, "Scale Decoupled Distillation", CVPR 2024 (arXiv 2403.13512), as SD-DKD.

Each network's own classifier is applied to local features of the map F (C, H, W) that its global
average pooling reads (multi-scale pooling, paper Sec. 3.2): F is average-pooled to M x M cells
for every scale M in 1, 2, ..., `max_scale` (powers of two; the authors' `--M [1,2,4]`), and every
cell's C-vector goes through the classifier W, giving local logits z_r, r = 1..R, R = sum M^2
(r = 1 the global region, then the 2x2 cells, then the 4x4 cells, row-major). As the authors'
code (shicaiwei123/SDD-CVPR2024, mdistiller/models/cifar/utils.py `SPP`), the finest grid is pooled
from F and the coarser ones from the finest grid (the same block means when H, W are multiples of
`max_scale`; for a map smaller than the grid, adaptive pooling repeats cells, as theirs does).

With the teacher's arg-max prediction in each region and the label y_i, a region is consistent
(weight 1) when it agrees with the global region about correctness (both right or both wrong; the
global region itself is consistent), complementary (weight `complementary_weight`, the paper's
beta in L_SDD = D_con + beta * D_com) otherwise. Each region's pair of logits is distilled with
DKD (methods/dkd.py: alpha * TCKD + beta_DKD * NCKD, times T^2), per sample, and

    L_SDD = sum_{i, r} w_{i, r} * DKD(z^S_{i, r}, z^T_{i, r}, y_i) / (N * R)

(authors' mdistiller/distillers/SDD_DKD.py `multi_dkd`: the sum over the N*R rows of the weighted
per-row DKD, divided by N*R), scaled by the DKD warm-up min(epoch / warmup, 1). CE is on the
student's own (global) logits.

Defaults (SDD_DKD.py reads mdistiller's DKD config; the authors' configs/cifar100/sdd_dkd/*.yaml
and teacher_*.sh): CE weight 1, alpha 1, beta 8, T 4, warm-up 20 epochs ("warmup20" in their
scripts; kdbench scales it with `scale_schedule` for runs shorter than 240 epochs), scales
[1, 2, 4] (`--M [1,2,4]`; they use [1, 2] for vgg13 -> vgg8), complementary weight 2. Their per-pair
beta is DKD's (sdd_dkd/wrn40_2_wrn_16_2.yaml, vgg13_vgg8.yaml: 6.0; res56_res20.yaml,
res110_res32.yaml: 2.0; none given: 8.0), i.e. registry/pairs.json's `dkd` entries. Published
CIFAR-100 top-1 of SD-DKD: the table in their README (cifar100.png).

The map F is found on a probe batch when the method is built: the last stage output
(`stages[-1]`: ResNet, ResNetV2, VGG, ShuffleNetV1, timm models that pool it) or its
ReLU'd pre-activation (`relu(preact[-1])`: WRN, whose final BN-ReLU follows its last block).
A network that pools a map not exposed in `Features` (MobileNetV2 and ShuffleNetV2 pool the
output of a 1x1 conv head after their last stage) is refused. The student is called through
`MethodContext.student` (the live, possibly VAM-wrapped network), never registered here: SDD
adds no trainable parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError
from kdbench.methods._parts import classifier_of
from kdbench.methods._shared import standardized_pair
from kdbench.methods.base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    probe_features,
    register_method,
    require_same_classes,
    scale_schedule,
)
from kdbench.methods.dkd import DKD, decoupled_kd_parts

# How each network's pooled map is read from its Features (the first that reproduces `pooled`).
POOLED_MAPS = {
    "stages[-1]": lambda features: features.stages[-1],
    "relu(preact[-1])": lambda features: F.relu(features.preact[-1]),
}


def pyramid_scales(max_scale: int) -> tuple[int, ...]:
    """(1, 2, 4, ..., max_scale) for a power of two `max_scale`."""
    if max_scale < 1 or max_scale & (max_scale - 1):
        raise ConfigError(f"sdd.max_scale={max_scale}: takes a power of two (1, 2, 4, ...)")
    return tuple(2**i for i in range(max_scale.bit_length()))


def scale_decoupled_logits(feature_map: Tensor, classifier: nn.Module, scales: tuple[int, ...]) -> Tensor:
    """(N, K, R) local logits of an (N, C, H, W) map: regions by scale, then row-major."""
    finest = F.adaptive_avg_pool2d(feature_map, max(scales))
    cells = [F.adaptive_avg_pool2d(finest, scale).flatten(2) for scale in scales]  # (N, C, M^2) each
    regions = torch.cat(cells, dim=2)  # (N, C, R)
    return classifier(regions.transpose(1, 2)).transpose(1, 2)


def region_weights(teacher_local: Tensor, labels: Tensor, complementary_weight: float) -> Tensor:
    """(N, R): `complementary_weight` where region r's arg-max is right and the global one's
    (region 0) wrong or the reverse, 1 elsewhere."""
    correct = teacher_local.argmax(dim=1) == labels[:, None]  # (N, R)
    complementary = correct != correct[:, :1]
    return 1.0 + (complementary_weight - 1.0) * complementary.to(teacher_local.dtype)


def sdd_dkd_parts(
    student_local: Tensor,
    teacher_local: Tensor,
    labels: Tensor,
    temperature: float,
    complementary_weight: float,
    logit_std: bool = False,
) -> tuple[Tensor, Tensor]:
    """(weighted TCKD, weighted NCKD) of (N, K, R) local logits, each summed over the N*R
    (sample, region) rows with the region weights and divided by N*R."""
    n, k, r = student_local.shape
    rows_student = student_local.permute(0, 2, 1).reshape(n * r, k)
    rows_teacher = teacher_local.permute(0, 2, 1).reshape(n * r, k)
    rows_student, rows_teacher = standardized_pair(rows_student, rows_teacher, logit_std)
    tckd, nckd = decoupled_kd_parts(
        rows_student, rows_teacher, labels.repeat_interleave(r), temperature, per_row=True
    )
    weights = region_weights(teacher_local, labels, complementary_weight).reshape(n * r)
    return (weights * tckd).sum() / (n * r), (weights * nckd).sum() / (n * r)


def pooled_map_candidates(shapes: FeatureShapes) -> list[str]:
    """The POOLED_MAPS whose (C, H, W) shape has as many channels as the pooled vector."""
    last = {"stages[-1]": shapes.stages[-1:], "relu(preact[-1])": shapes.preact[-1:]}
    return [
        name
        for name, found in last.items()
        if found and len(found[0]) == 3 and (found[0][0],) == tuple(shapes.pooled)
    ]


def require_pooled_maps(
    method: str, what: str, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None
) -> None:
    """PairNotSupportedError unless both networks expose the map their global pooling reads (`what`
    says what `method` does with it: SDD and CAT-KD apply the classifier to it)."""
    for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
        if not pooled_map_candidates(shapes):
            raise PairNotSupportedError(
                f"{method} applies the {side}'s classifier {what}: its pooled vector has "
                f"{tuple(shapes.pooled)} features, but neither its last stage {shapes.stages[-1:] or None} "
                f"nor its last pre-activation {shapes.preact[-1:] or None} is that map (a head between them "
                "and the pooling, as MobileNetV2's or ShuffleNetV2's last 1x1 conv, is not exposed in Features)"
            )


def pooled_map_of(model: nn.Module, shapes: FeatureShapes, image_shape) -> str | None:
    """The POOLED_MAPS key whose spatial mean is `model`'s pooled vector on a probe batch, or None."""
    candidates = pooled_map_candidates(shapes)
    if not candidates:
        return None
    features = probe_features(model, image_shape)
    found = [
        name
        for name in candidates
        if torch.allclose(POOLED_MAPS[name](features).mean(dim=(2, 3)), features.pooled, rtol=1e-3, atol=1e-5)
    ]
    return found[0] if found else None


@register_method
class SDD(Method):
    """Scale decoupled DKD (SD-DKD): DKD on every multi-scale local logit, complementary regions x2.

    Defaults from the authors' code (SDD_DKD.py, mdistiller's DKD config, teacher_*.sh): CE 1,
    alpha 1, beta 8 (per pair as DKD's), T 4, warm-up 20 epochs (scaled to the run's length),
    scales up to 4 (M = [1, 2, 4]), complementary weight 2. See the module docstring.
    """

    name = "sdd"
    student_features = ("stages", "preact")
    teacher_features = ("stages", "preact")
    defaults = {
        **DKD.defaults,
        "max_scale": 4,
        "complementary_weight": 2.0,
    }  # DKD's, as SDD_DKD.py reads them

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("sdd", student_shapes, teacher_shapes)
        require_pooled_maps(
            "sdd", "to regions of the map its global pooling reads", student_shapes, teacher_shapes
        )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        self.scales = pyramid_scales(hp["max_scale"])
        self.warmup_factor = 1.0
        taps = []
        for side, model, shapes in (
            ("student", context.student, context.student_shapes),
            ("teacher", context.teacher, context.teacher_shapes),
        ):
            if model is None:
                raise PairNotSupportedError(
                    f"sdd calls the {side}'s classifier: the method needs the {side} module"
                )
            found = classifier_of(model, shapes, context.image_shape)
            if found is None:
                raise PairNotSupportedError(
                    f"sdd calls the {side}'s classifier: the {side} has no nn.Linear that maps its pooled "
                    "vector to its logits"
                )
            pooled_map = pooled_map_of(model, shapes, context.image_shape)
            if pooled_map is None:
                raise PairNotSupportedError(
                    f"sdd: no map in the {side}'s Features (last stage, or its ReLU'd pre-activation) "
                    "averages to its pooled vector"
                )
            taps.append((pooled_map, found[1]))
        # A tuple, not attributes: the classifiers stay the networks' own (the student's trains with
        # the student, the teacher's stays frozen), out of this module's parameters and state_dict.
        self.taps = tuple(taps)

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        warmup_epochs = scale_schedule(self.hp["warmup_epochs"], num_epochs)
        self.warmup_factor = min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0

    def local_logits(self, student: Features, teacher: Features) -> tuple[Tensor, Tensor]:
        """(student, teacher) (N, K, R) local logits; the teacher's without a graph."""
        (student_map, student_fc), (teacher_map, teacher_fc) = self.taps
        student_local = scale_decoupled_logits(POOLED_MAPS[student_map](student), student_fc, self.scales)
        with torch.no_grad():
            teacher_local = scale_decoupled_logits(POOLED_MAPS[teacher_map](teacher), teacher_fc, self.scales)
        return student_local, teacher_local

    def method_terms(self, student, teacher, labels, indices) -> dict[str, Tensor]:
        hp = self.hp
        student_local, teacher_local = self.local_logits(student, teacher)
        tckd, nckd = sdd_dkd_parts(
            student_local.float(),
            teacher_local.float(),
            labels,
            hp["temperature"],
            hp["complementary_weight"],
            hp["logit_std"],
        )
        return {
            "sdd_tckd": self.warmup_factor * hp["alpha"] * tckd,
            "sdd_nckd": self.warmup_factor * hp["beta"] * nckd,
        }
