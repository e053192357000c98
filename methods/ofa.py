"""OFA-KD: Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation", NeurIPS 2023.

Intermediate student stages are projected into the logit space by branches of their own, and every
branch, and the student's own logits, match the teacher's logits with the OFA loss: with p^t, p^s the
teacher's and the branch's softmax at temperature T, y the label and 1_y its one-hot mask,

    L_OFA(z_s) = - sum_k [ (p^t_k + 1_y,k)^eps - 1_y,k ] * log p^s_k
               = - [(1 + p^t_y)^eps - 1] log p^s_y  -  sum_{k != y} (p^t_k)^eps log p^s_k

(the paper's Eq. 5): eps > 1 strengthens the target-class term (the adaptive target enhancement), and
at eps = 1 it is the cross-entropy of p^s with the teacher's p^t plus the label. kdbench sums

    ce_weight * CE(z_s, y) + method_weight * (logit_weight * L_OFA(z_s) + sum_i L_OFA(branch_i(F_i)))

as the authors' distillers/ofa.py does (Hao840/OFAKD@f7bb896, `ofa_loss` and `OFA.forward`: gt, kd and
ofa losses), with their defaults (train.py: --gt-loss-weight 1, --kd-loss-weight 1, --ofa-loss-weight 1,
--ofa-temperature 1; README's CIFAR-100 command --ofa-eps 1.0). method_weight is their
--ofa-loss-weight and scales both terms here; logit_weight is --kd-loss-weight over it (1 at their
defaults). One eps serves every stage and the logits, as their default single --ofa-eps does.

Branches (their `OFA.__init__`; weights by their `init_weights`, distillers/utils.py):
- a CNN student's stage i of n: n - 1 - i depthwise-separable stride-2 blocks (their `SepConv`,
  channels doubling, the last to max(d_s, d_t), the students' and teachers' pooled widths), or a 1x1
  convolution for the last stage; global average pooling and a linear layer to the classes;
- a token student's (ViT, Swin, MLP-Mixer; `model_family`) stage i of n: the (C, H, W) token grid as
  tokens, patch merging (timm's `PatchMerging` + GELU, theirs in distillers/utils.py) while the grid is
  wider than 7, max(n - 1 - i, 1) timm ViT blocks of width d_s and 4 heads, mean over tokens and a
  linear layer to the classes.
Where kdbench differs, and why: kdbench's timm taps are grids without the class token, so a token
branch averages its tokens (theirs read the class token of a ViT); where no merge happens and the tap's
width is not d_s (small grids: theirs only meet this at 224 px where widths agree) a linear layer maps
it to d_s; a width not divisible by 4 heads takes 1 head. Which stages: every stage of a model with at
most 4 (their --ofa-stage 1 2 3 4 of 4-stage models); for more (a ViT's or a Mixer's blocks), the ends
of a 2:2:6:2 split, as their `stage_info` taps blocks 2, 4, 10 and 12 of a 12-block ViT or Mixer
(custom_forward/vision_transformer.py, mlp_mixer.py). Their CIFAR-100 recipe (configs/cifar/cnn.yaml:
300 epochs, label smoothing 0.1; train.py's timm loaders resize the images to the model's 224 px input)
is theirs for every method; kdbench keeps its own recipe for all methods alike (`--image-size 224`
resizes, kdbench/data/batches.py).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.errors import ConfigError

from .base import (
    PAIR_KINDS,
    Features,
    FeatureShapes,
    Method,
    MethodContext,
    PairNotSupportedError,
    model_family,
    register_method,
    require_same_classes,
)

FINAL_PATCH_GRID = 7  # a token branch merges patches while its grid is wider (their final_patch_grid)
BRANCH_HEADS = 4  # heads of a token branch's ViT blocks (their Block(dim, num_heads=4))
STAGE_SPLIT = (2, 4, 10, 12)  # ends of a 12-block model's four stages (their stage_info: blocks 2, 4, 10, 12)


def ofa_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, eps: float, temperature: float
) -> Tensor:
    """The paper's Eq. 5, averaged over the batch: -sum_k [(p^t_k + 1_y,k)^eps - 1_y,k] log p^s_k."""
    target_mask = F.one_hot(labels, student_logits.shape[1]).to(student_logits.dtype)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    weights = (p_teacher + target_mask) ** eps - target_mask
    return -(weights * log_p_student).sum(dim=1).mean()


def branch_stages(num_stages: int) -> list[int]:
    """Which stages get a branch: all of at most 4, else the ends of a 2:2:6:2 split (0-based)."""
    if num_stages <= len(STAGE_SPLIT):
        return list(range(num_stages))
    last = STAGE_SPLIT[-1]
    return sorted({max(1, round(num_stages * end / last)) - 1 for end in STAGE_SPLIT})


class SepConv(nn.Module):
    """Their `SepConv` (distillers/utils.py): two depthwise-pointwise pairs, the first strided by 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def cnn_branch(channels: int, downsamples: int, width: int, num_classes: int) -> nn.Sequential:
    """Stride-2 SepConvs doubling the channels (the last to `width`), or a 1x1 conv; pool; classify."""
    if downsamples == 0:
        blocks = [nn.Conv2d(channels, width, 1)]
    else:
        blocks = []
        for index in range(downsamples):
            out = width if index == downsamples - 1 else channels * 2
            blocks.append(SepConv(channels, out))
            channels *= 2
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class TokenBranch(nn.Module):
    """A token grid (N, C, H, W) as H*W tokens: patch merging to a grid of at most 7 (GELU after each
    but the last), ViT blocks of width `width`, the tokens' mean, a linear classifier."""

    def __init__(self, shape: tuple[int, int, int], blocks: int, width: int, num_classes: int):
        # timm, imported only where a token student needs it (its import is slow for every other run)
        from timm.models.swin_transformer import PatchMerging
        from timm.models.vision_transformer import Block

        super().__init__()
        channels, height, _ = shape
        merges = max(int(math.log2(height / FINAL_PATCH_GRID)), 0) if height > 0 else 0
        layers: list[nn.Module] = []
        for index in range(merges):
            layers.append(PatchMerging(channels if index == 0 else width, out_dim=width))
            layers.append(nn.GELU() if index != merges - 1 else nn.Identity())
        self.merge = nn.Sequential(*layers)
        self.project = nn.Linear(channels, width) if merges == 0 and channels != width else nn.Identity()
        heads = BRANCH_HEADS if width % BRANCH_HEADS == 0 else 1
        self.blocks = nn.Sequential(*[Block(dim=width, num_heads=heads) for _ in range(blocks)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.merge(x.permute(0, 2, 3, 1))  # NHWC, as timm's PatchMerging takes it
        x = self.project(x.flatten(1, 2))
        return self.head(self.blocks(x).mean(dim=1))


def init_weights(module: nn.Module) -> None:
    """Their `init_weights` (distillers/utils.py): Kaiming convs, unit BNs, truncated-normal linears."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_method
class OFA(Method):
    """One-for-All KD: stage branches into the logit space, each matched to the teacher by the OFA loss."""

    name = "ofa"
    student_features = ("stages",)
    pair_kinds = PAIR_KINDS  # its branches take a CNN's maps and a token model's grids alike
    defaults = {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 1.0,
        "temperature": 1.0,
        "eps": 1.0,
        "logit_weight": 1.0,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes(cls.name, student_shapes, teacher_shapes)
        if not student_shapes.stages or any(len(shape) != 3 for shape in student_shapes.stages):
            raise PairNotSupportedError(
                f"{cls.name} branches from the student's (C, H, W) stage outputs; it has "
                f"{list(student_shapes.stages) or 'none'}"
            )

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        for key in ("eps", "temperature"):
            if not hp[key] > 0:
                raise ConfigError(f"hyper-parameter ofa.{key}={hp[key]!r}: takes a number above 0")
        student, teacher = context.student_shapes, context.teacher_shapes
        width = max(student.pooled[0], teacher.pooled[0])
        self.stage_indices = branch_stages(len(student.stages))
        last = len(self.stage_indices) - 1
        token_student = model_family(context.student) == "token"
        branches = []
        for position, stage in enumerate(self.stage_indices):
            shape = student.stages[stage]
            if token_student:
                blocks = max(last - position, 1)
                branches.append(TokenBranch(shape, blocks, student.pooled[0], context.num_classes))
            else:
                branches.append(cnn_branch(shape[0], last - position, width, context.num_classes))
        self.branches = nn.ModuleList(branches)
        init_weights(self.branches)

    def method_terms(
        self, student: Features, teacher: Features | None, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        hp = self.hp
        eps, temperature = hp["eps"], hp["temperature"]
        stage_losses = [
            ofa_loss(branch(student.stages[stage]), teacher.logits, labels, eps, temperature)
            for stage, branch in zip(self.stage_indices, self.branches, strict=True)
        ]
        return {
            "ofa_logits": hp["logit_weight"]
            * ofa_loss(student.logits, teacher.logits, labels, eps, temperature),
            "ofa_stages": sum(stage_losses),
        }
