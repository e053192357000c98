"""CAT-KD: Guo, Yan, Li & Lin, "Class Attention Transfer Based Knowledge Distillation", CVPR 2023.

A CNN classifies by pooling its last feature map F (C, H, W) and applying a linear classifier W (K x C);
swapping the two gives the class activation maps (CAMs), one map per class, whose spatial mean is
the logits (less the classifier's bias):

    CAM(F)_k  = sum_c W_kc F_c                                 (K x H x W; a 1x1 convolution by W)

CAT-KD transfers the teacher's CAMs, average-pooled to a small R x R grid:

    L_CAT = MSE( pool_R(CAM_s), pool_R(CAM_t) )                (the mean over N x K x R x R)

optionally with each CAM L2-normalised over its R x R cells first (`normalize`). The total loss is
CE + beta * L_CAT ("CAT-KD"; the authors' `onlyCAT: False`).

The authors' code (GzyAftermath/CAT-KD at 4467073ca31b9929e7c45f5a6761e5e1b7c9442f,
mdistiller/distillers/CAT_KD.py, tools/train.py, mdistiller/models/cifar/*.py `*_test`) rebuilds both
networks with the classifier as a bias-free 1x1 convolution `conv_test` before the pooling; the
teacher's takes its trained fc weight and drops the bias. kdbench keeps each network as it is and
computes the same CAMs from it: the classifier (`nn.Linear`, found by methods/simkd.py
`classifier_of`) applied at every position of the map its global pooling reads (found as
methods/sdd.py does: the last stage, or its ReLU'd pre-activation for WRN), without the bias, as
theirs. One difference: kdbench's student keeps its classifier's bias in its own logits (the
authors' student has none). The student's classifier is called through `MethodContext.student` and
is never registered here, so the CAT loss trains the student's own classifier, as theirs does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError

from ._parts import classifier_of
from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
    require_same_classes,
)
from .sdd import POOLED_MAPS, pooled_map_of, require_pooled_maps


def class_activation_maps(feature_map: Tensor, classifier: nn.Linear) -> Tensor:
    """(N, K, H, W): the classifier's weight applied at every position of an (N, C, H, W) map, no bias."""
    return torch.einsum("nchw,kc->nkhw", feature_map, classifier.weight)


def class_attention_loss(
    student_cams: Tensor, teacher_cams: Tensor, resolution: int, normalize: bool
) -> Tensor:
    """MSE of the two sets of CAMs average-pooled to resolution x resolution (each L2-normalised over
    its cells when `normalize`)."""
    student_cams = F.adaptive_avg_pool2d(student_cams, resolution)
    teacher_cams = F.adaptive_avg_pool2d(teacher_cams.detach(), resolution)
    if normalize:
        student_cams, teacher_cams = (F.normalize(cams, dim=(2, 3)) for cams in (student_cams, teacher_cams))
    return F.mse_loss(student_cams, teacher_cams)


@register_method
class CATKD(Method):
    """Class attention transfer: the student's class activation maps, pooled to a small grid, match the teacher's.

    Defaults from the authors' config for resnet32x4 -> resnet8x4 (GzyAftermath/CAT-KD at 4467073,
    configs/cifar100/CAT_KD/res32x4_res8x4.yaml): CE 1, beta (`method_weight`) 15, CAM resolution 2,
    no normalisation. Their other CIFAR-100 configs (beta, resolution, normalise): res56 -> res20
    0.7, 2, no; res110 -> res32 1.8, 2, no; wrn_40_2 -> wrn_16_2 12, 2, no; wrn_40_2 -> wrn_40_1 1.5,
    2, no; vgg13 -> vgg8 4.5, 2, no; vgg13 -> MobileNetV2 15, 2, yes; ResNet50 -> MobileNetV2 40, 2,
    yes; res32x4 -> ShuffleV1 / ShuffleV2 600, 4, yes; wrn_40_2 -> ShuffleV1 80, 4, yes.
    """

    name = "catkd"
    student_features = ("stages", "preact")
    teacher_features = ("stages", "preact")
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 15.0,
        "cam_resolution": 2,
        "normalize": False,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("catkd", student_shapes, teacher_shapes)
        require_pooled_maps(
            "catkd", "at every position of the map its global pooling reads", student_shapes, teacher_shapes
        )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        if hp["cam_resolution"] < 1:
            raise ConfigError(f"catkd.cam_resolution={hp['cam_resolution']}: takes a whole number above 0")
        taps = []
        for side, model, shapes in (
            ("student", context.student, context.student_shapes),
            ("teacher", context.teacher, context.teacher_shapes),
        ):
            found = None if model is None else classifier_of(model, shapes, context.image_shape)
            pooled_map = None if model is None else pooled_map_of(model, shapes, context.image_shape)
            if found is None or pooled_map is None:
                raise PairNotSupportedError(
                    f"catkd builds the {side}'s class activation maps from its classifier and the map its "
                    f"pooling averages: the {side} has no nn.Linear from its pooled vector to its logits, or "
                    "no map in its Features averages to its pooled vector"
                )
            taps.append((pooled_map, found[1]))
        # A tuple, not attributes: the classifiers stay the networks' own (out of this module's
        # parameters and state_dict), as sdd's.
        self.taps = tuple(taps)

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        (student_map, student_fc), (teacher_map, teacher_fc) = self.taps
        student_cams = class_activation_maps(POOLED_MAPS[student_map](student), student_fc)
        with torch.no_grad():
            teacher_cams = class_activation_maps(POOLED_MAPS[teacher_map](teacher), teacher_fc)
        loss = class_attention_loss(
            student_cams, teacher_cams, self.hp["cam_resolution"], self.hp["normalize"]
        )
        return {"catkd": loss}
