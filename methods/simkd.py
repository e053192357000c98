"""SimKD: Chen, Mei, Zhang, Wang, Feng & Chen, "Knowledge Distillation with the Reused Teacher
Classifier", CVPR 2022.

The student's last feature map f_s is mapped by a projector P onto the teacher's last feature map
f_t, and the student deploys the teacher's classifier W_t on the projected feature (paper, Eq. 2-3):

    L_SimKD = || f_t - P(f_s) ||_2^2                 (nn.MSELoss: the mean over N x C x H x W)
    p_s     = softmax(W_t^T avgpool(P(f_s)))         (the deployed student's prediction)

As the authors' code (DefangChen/SimKD, models/util.py `SimKD`, helper/loops.py, train_student.py):
- f_s, f_t are `feat[-2]`, the post-activation output of the last stage (`Features.stages[-1]`);
- the spatial sizes are aligned first: the larger map is average-pooled to the smaller one;
- P is a bottleneck: conv1x1(C_s -> C_t / f)-BN-ReLU, conv3x3(C_t / f -> C_t / f)-BN-ReLU,
  conv1x1(C_t / f -> C_t)-BN-ReLU, factor f = 2 (`-f 2`);
- the teacher's classifier is frozen and reused; the student's own classifier is not used: CE and
  KL (weights 0 by default) would be computed on the reused classifier's logits (`logit_s =
  pred_feat_s`), and test accuracy is that of backbone + P + the teacher's classifier.

The deployed model (`deploy`) is therefore the student's backbone (its own classifier replaced by
an identity), P and a copy of the teacher's classifier: the record's test accuracy, deploy
parameters and FLOPs are those of that network.
"""

from __future__ import annotations

import copy
import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from ._parts import classifier_of
from ._shared import ConvProjector, align_spatially
from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    register_method,
    require_stages,
)


def simkd_projector(student_channels: int, teacher_channels: int, factor: int) -> ConvProjector:
    """The authors' bottleneck: 1x1, 3x3, 1x1 convolutions, each followed by BN and ReLU."""
    return ConvProjector(
        student_channels, teacher_channels // factor, teacher_channels, normalized_output=True
    )


class ReusedClassifierStudent(nn.Module):
    """The deployed SimKD student: backbone -> (pool to the teacher's size) -> projector ->
    global average pool -> the teacher's classifier. Follows the model protocol."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, classifier: nn.Module, size):
        super().__init__()
        self.backbone, self.projector, self.classifier = backbone, projector, classifier
        self.size = size  # spatial size the student's map is pooled to first; None: kept

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        out = self.backbone(x, features=True)
        last = out.stages[-1]
        if self.size is not None:
            last = F.adaptive_avg_pool2d(last, self.size)
        pooled = self.projector(last).mean(dim=(2, 3))
        logits = self.classifier(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=out.stem, stages=out.stages, preact=out.preact)

    def stage_modules(self) -> list[nn.Module]:
        return self.backbone.stage_modules()


def _without(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` whose submodule `name` is an identity."""
    model = copy.deepcopy(model)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return model


@register_method
class SimKD(Method):
    """Projector to the teacher's last feature map (MSE) + the teacher's classifier, reused.

    Defaults from the authors' code and scripts (DefangChen/SimKD, README and scripts/run_distill.sh:
    `--distill simkd -c 0 -d 0 -b 1`, train_student.py `--factor 2`): CE weight 0, KL weight 0,
    SimKD loss weight 1, projector factor 2. Their CIFAR recipe (batch 64, lr 0.05, 0.01 for
    MobileNet / ShuffleNet students) is kdbench's shared recipe's business, not the method's.
    """

    name = "simkd"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {"ce_weight": 0.0, "kd_weight": 0.0, "method_weight": 1.0, "factor": 2}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_stages("simkd", student_shapes, teacher_shapes)
        if any(len(shapes.stages[-1]) != 3 for shapes in (student_shapes, teacher_shapes)):
            raise PairNotSupportedError("simkd needs a (C, H, W) last stage on both sides")
        if tuple(teacher_shapes.pooled) != tuple(teacher_shapes.stages[-1][:1]):
            raise PairNotSupportedError(
                f"simkd feeds the projected map, pooled, to the teacher's classifier: the teacher's "
                f"classifier reads {tuple(teacher_shapes.pooled)} features, its last stage has "
                f"{teacher_shapes.stages[-1][0]} channels (a head between them, as MobileNetV2's or "
                "ShuffleNetV2's last 1x1 conv, is not reused)"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student, teacher = context.student_shapes, context.teacher_shapes
        if context.teacher is None:
            raise PairNotSupportedError("simkd reuses the teacher's classifier: the method needs the teacher")
        found = classifier_of(context.teacher, teacher, context.image_shape)
        if found is None:
            raise PairNotSupportedError(
                "simkd reuses the teacher's classifier: the teacher has no nn.Linear that maps its pooled "
                "vector to its logits"
            )
        self.classifier = copy.deepcopy(found[1]).requires_grad_(False)
        if hp["factor"] < 1 or teacher.stages[-1][0] // hp["factor"] < 1:
            raise PairNotSupportedError(f"simkd: factor {hp['factor']} leaves no projector channels")
        self.projector = simkd_projector(student.stages[-1][0], teacher.stages[-1][0], hp["factor"])
        student_size, teacher_size = tuple(student.stages[-1][1:]), tuple(teacher.stages[-1][1:])
        self.size = teacher_size if student_size[-1] > teacher_size[-1] else None

    def project(self, student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
        """(P(aligned student map), aligned teacher map)."""
        source, target = align_spatially(student_map, teacher_map)
        return self.projector(source), target

    def reused_logits(self, projected: Tensor) -> Tensor:
        return self.classifier(projected.mean(dim=(2, 3)))

    def losses(self, student, teacher, labels, indices, views=None) -> dict[str, Tensor]:
        # CE / KL, when weighted, read the reused classifier's logits (the authors' logit_s)
        if self.hp["ce_weight"] or self.hp["kd_weight"]:
            projected, _ = self.project(student.stages[-1], teacher.stages[-1])
            student = dataclasses.replace(student, logits=self.reused_logits(projected))
        return super().losses(student, teacher, labels, indices)

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        projected, target = self.project(student.stages[-1], teacher.stages[-1])
        return {"simkd": F.mse_loss(projected, target)}

    def deploy(self, student: nn.Module) -> nn.Module:
        found = classifier_of(student, self.context.student_shapes, self.context.image_shape)
        backbone = _without(student, found[0]) if found else copy.deepcopy(student)
        deployed = ReusedClassifierStudent(
            backbone, copy.deepcopy(self.projector), copy.deepcopy(self.classifier), self.size
        )
        return deployed.train(student.training)
