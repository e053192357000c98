"""FCFD: Liu, Kan, Shan & Chen, "Function-Consistent Feature Distillation", ICLR 2023 (arXiv 2304.11832).

Student and teacher have K stages each; at stage j a bridge B (a conv-BN connector) maps one network's
stage output into the other's space. Besides matching the teacher's features in appearance, the
student's features must *function* as the teacher's: fed through the later stages of the teacher
they should give its outputs, and the teacher's features fed through the student's later stages too
(the paper's L_app and L_func, written here as the authors' code computes them). With s_j, t_j the
stage outputs (j = 1 .. K), the later stages of a network and its head run by the model protocol's
`forward_from`, p_T the teacher's logits:

    L_app  = sum_j MSE(B_j^{s->t}(s_j), t_j) + MSE(gap(relu(B_K^{s->t}(s_K))), gap(relu(t_K)))
    s->t path switched after stage j: the teacher's later stages on B_j^{s->t}(s_j), giving features
             u_k (k > j) and logits z;  t->s path: the student's later stages on B_j^{t->s}(t_j), logits z
    L_func = sum over the sampled paths of  KL_T(z, p_T)
             + for s->t paths  sum_{k > j} MSE(u_k, t_k) + MSE(gap(relu(u_K)), gap(relu(t_K)))
    L      = CE + KL_T(student, p_T) + w_l2 * ramp * (L_app + feature part of L_func)
             + w_path * (KL part of L_func)

gap = global average pool. As in the authors' code (LiuDongyang6/FCFD, commit 2aefb7b:
classification/models/meta.py `MetaModel`, classification/cifar/main.py `train_one_epoch`,
classification/experiments/cifar/*.yaml):
- paths: every step samples `extra_paths` = 2 of the candidate mixed paths without replacement
  (`random.sample`); candidates (`extra_type` "bi") are, for each switch after stage j = 1 .. K-1, the
  teacher up to stage j then the student (t->s) and the student up to j then the teacher (s->t)
  (their `_create_candidate_path` lists these for 4 and 5 of their stages; kdbench for any K >= 2);
  `extra_type` "s2t" / "t2s" keeps one direction, "nomix" none;
- the bridge: conv3x3 (stride 1, no bias) - BN at equal sizes; conv3x3 stride 2 (bias) - BN from a map
  twice as large; convtranspose4x4 stride 2 (bias) - BN from a map half as large; + LeakyReLU(0.1)
  when the target network's stage outputs are post-ReLU (their `stage_input == "afterrelu"`); convs
  Kaiming-normal (fan_out), BN weight 1 bias 0 (`build_bridge`);
- every L2 term (the MSE is the mean, `F.mse_loss`) is summed over stages and weighted by
  `weight_l2` = 5 (0.02 for resnet56 -> resnet20), ramped in linearly over the first 20 epochs
  (min(1, epoch / 20), epochs from 1); the path KL terms have weight 1 and the run's temperature
  (`T` 4; 8 for ShuffleV1 / ShuffleV2 / MobileNetV2 from resnet32x4 / ResNet50); the student keeps
  CE 1 and KL 1 (their `loss_student`);
- the student's BN statistics are not updated by its t->s path forwards (their `GhostForward` keeps a
  separate trace for each mixed path); those forwards normalise with the batch statistics.

Where kdbench differs, and why:
- the teacher is frozen in eval mode as for every kdbench method (its logits are those of the
  trained teacher), so its later stages normalise the bridged student features with their running
  statistics; the authors' `MetaModel.train()` leaves the teacher's BN in training mode;
- stage outputs are the models' `Features.stages` (post-activation where the model has one) and the
  later part of a network is its `forward_from`; the authors re-cut each network so that its last
  stage ends right before relu-pool-fc (WRN's bn1, ShuffleV2's conv2-bn2, MobileNetV2's conv2 in the
  last stage) and tap VGG, MobileNetV2 and ShuffleV1 before the ReLU. On the CIFAR ResNets
  (resnet8x4 ... resnet32x4, ResNet50) the taps are the authors'. "Post-ReLU" (the LeakyReLU of the
  bridge) is read off a probe: a network whose probed stage outputs are all >= 0;
- bridges are built only where a path or L_app uses them (the authors also build a t->s bridge at the
  last stage, which no path reads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError

from .base import (
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    kd_kl_div,
    probe_features,
    register_method,
    require_paired_stages,
    require_same_classes,
    scale_schedule,
)

EXTRA_TYPES = ("bi", "s2t", "t2s", "nomix")  # the authors' `--extra_type` choices


def bridge(source: tuple[int, ...], target: tuple[int, ...], post_relu_target: bool) -> nn.Sequential:
    """The authors' connector from a (C, H, W) map of one network to the other's stage shape."""
    (source_channels, *source_size), (target_channels, *target_size) = source, target
    if source_size == target_size:
        conv = nn.Conv2d(source_channels, target_channels, kernel_size=3, padding=1, bias=False)
    elif source_size == [2 * side for side in target_size]:
        conv = nn.Conv2d(source_channels, target_channels, kernel_size=3, stride=2, padding=1)
    elif [2 * side for side in source_size] == target_size:
        conv = nn.ConvTranspose2d(source_channels, target_channels, kernel_size=4, stride=2, padding=1)
    else:
        raise PairNotSupportedError(
            f"fcfd bridges stage maps of equal size, twice or half the size: cannot bridge "
            f"{tuple(source_size)} to {tuple(target_size)}"
        )
    layers = [conv, nn.BatchNorm2d(target_channels)]
    if post_relu_target:
        layers.append(nn.LeakyReLU(negative_slope=0.1))
    if isinstance(conv, nn.Conv2d):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(*layers)


def candidate_paths(num_stages: int, extra_type: str) -> list[tuple[str, int]]:
    """(direction, switch stage) of every mixed path, t->s first as the authors list them."""
    directions = {"bi": ("t2s", "s2t"), "s2t": ("s2t",), "t2s": ("t2s",), "nomix": ()}[extra_type]
    return [(direction, j) for direction in directions for j in range(num_stages - 1)]


def pooled_relu(feature_map: Tensor) -> Tensor:
    """gap(relu(map)): the vector the authors' classifier head reads from a last-stage map."""
    return F.adaptive_avg_pool2d(F.relu(feature_map), 1).flatten(1)


def last_stage_mse(source: Tensor, target: Tensor) -> Tensor:
    """MSE of the maps plus MSE of their pooled, relu'd vectors (the authors' `is_final` stage)."""
    return F.mse_loss(source, target) + F.mse_loss(pooled_relu(source), pooled_relu(target))


@contextlib.contextmanager
def batch_statistics_only(model: nn.Module) -> Iterator[None]:
    """Within: `model`'s BN layers in training mode normalise with the batch statistics and leave
    their running statistics as they are (the authors' GhostForward keeps the main trace untouched)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, was in zip(norms, tracked, strict=True):
            m.track_running_stats = was


def resumable_and_post_relu(model: nn.Module | None, role: str, image_shape) -> bool:
    """Whether `model`'s stage outputs are post-ReLU (all >= 0 on a probe), after checking that its
    `forward_from` gives its own logits from every stage on that probe; PairNotSupportedError if not."""
    if model is None or not hasattr(model, "forward_from"):
        raise PairNotSupportedError(
            f"fcfd runs each network's later stages on the other's features: the {role} has no "
            "forward_from (kdbench/models/resume.py)"
        )
    features = probe_features(model, image_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, stage in enumerate(features.stages):
                resumed = model.forward_from(index, stage)
                if not torch.allclose(resumed, features.logits, rtol=1e-4, atol=1e-5):
                    raise PairNotSupportedError(
                        f"fcfd: the {role}'s forward_from({index}, ...) does not give its logits on "
                        f"{tuple(image_shape)} images"
                    )
    except ConfigError as error:  # a timm model whose stages do not chain
        raise PairNotSupportedError(
            f"fcfd: the {role} cannot be run from its stage outputs: {error}"
        ) from error
    finally:
        model.train(was_training)
    return all(bool((stage >= 0).all()) for stage in features.stages)


@register_method
class FCFD(Method):
    """Appearance L2 through bridges + randomly switched student/teacher paths (see module docstring).

    Defaults from the authors' CIFAR configs (classification/experiments/cifar/resnet8x4-resnet32x4.yaml
    and the others, main.py's `--extra_paths 2 --extra_type bi`): CE 1, KL 1 at T 4, weight_l2 5,
    path KL weight 1, 2 paths, 20 warm-up epochs. Their CIFAR recipe (batch 64, lr 0.05, 0.01 for
    MobileNet / ShuffleNet students) is kdbench's shared recipe's business, not the method's.
    """

    name = "fcfd"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "method_weight": 1.0,
        "temperature": 4.0,
        "weight_l2": 5.0,
        "path_kd_weight": 1.0,
        "extra_paths": 2,
        "extra_type": "bi",
        "warmup_epochs": 20,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_paired_stages("fcfd", student_shapes, teacher_shapes)
        require_same_classes("fcfd", student_shapes, teacher_shapes)
        if len(student_shapes.stages) < 2:
            raise PairNotSupportedError(
                "fcfd switches between the networks after a stage: needs two stages or more"
            )
        for student_stage, teacher_stage in zip(student_shapes.stages, teacher_shapes.stages, strict=True):
            bridge(student_stage, teacher_stage, post_relu_target=False)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        if hp["extra_type"] not in EXTRA_TYPES:
            raise ConfigError(
                f"hyper-parameter fcfd.extra_type={hp['extra_type']!r}: takes one of {', '.join(EXTRA_TYPES)}"
            )
        student, teacher = context.student_shapes.stages, context.teacher_shapes.stages
        self.paths = candidate_paths(len(student), hp["extra_type"])
        if not 0 <= hp["extra_paths"] <= len(self.paths):
            raise PairNotSupportedError(
                f"fcfd: extra_paths={hp['extra_paths']} but stages of {len(student)} networks give "
                f"{len(self.paths)} '{hp['extra_type']}' paths"
            )
        student_post_relu = resumable_and_post_relu(context.student, "student", context.image_shape)
        teacher_post_relu = resumable_and_post_relu(context.teacher, "teacher", context.image_shape)
        self.to_teacher = nn.ModuleList(
            bridge(s, t, teacher_post_relu) for s, t in zip(student, teacher, strict=True)
        )
        self.to_student = nn.ModuleList(
            bridge(t, s, student_post_relu) for s, t in zip(student[:-1], teacher[:-1], strict=True)
        )
        self.warmup_factor = 1.0

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        warmup_epochs = scale_schedule(self.hp["warmup_epochs"], num_epochs)
        self.warmup_factor = min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0

    def sample_paths(self) -> list[tuple[str, int]]:
        """`extra_paths` distinct candidate paths, drawn from the global generator (method_sampling)."""
        order = torch.randperm(len(self.paths))[: self.hp["extra_paths"]]
        return [self.paths[i] for i in order.tolist()]

    def path_terms(
        self, direction: str, switch: int, bridged: list[Tensor], teacher: Features
    ) -> tuple[Tensor, Tensor]:
        """(feature L2, logit KL) of one mixed path switched after stage `switch`."""
        temperature = self.hp["temperature"]
        if direction == "s2t":
            run = self.context.teacher.forward_from(switch, bridged[switch], features=True)
            *inner, last = teacher.stages[switch + 1 :]
            *inner_run, last_run = run.stages
            l2 = sum(
                (F.mse_loss(u, t) for u, t in zip(inner_run, inner, strict=True)),
                last_stage_mse(last_run, last),
            )
            return l2, kd_kl_div(run.logits, teacher.logits, temperature)
        with batch_statistics_only(self.context.student):
            logits = self.context.student.forward_from(
                switch, self.to_student[switch](teacher.stages[switch])
            )
        return torch.zeros((), device=logits.device), kd_kl_div(logits, teacher.logits, temperature)

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        bridged = [to_teacher(s) for to_teacher, s in zip(self.to_teacher, student.stages, strict=True)]
        *inner, last = list(zip(bridged, teacher.stages, strict=True))
        appearance = sum((F.mse_loss(b, t) for b, t in inner), last_stage_mse(*last))
        path_l2 = path_kd = torch.zeros((), device=appearance.device)
        for direction, switch in self.sample_paths():
            l2, kd = self.path_terms(direction, switch, bridged, teacher)
            path_l2, path_kd = path_l2 + l2, path_kd + kd
        l2_weight = self.hp["weight_l2"] * self.warmup_factor
        return {
            "fcfd_app": l2_weight * appearance,
            "fcfd_func_l2": l2_weight * path_l2,
            "fcfd_func_kd": self.hp["path_kd_weight"] * path_kd,
        }
