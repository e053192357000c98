"""KDExplainer's hierarchical mixture of experts (HME), registered as the models `hme` and `hme_small`.

Paper: M. Xue, J. Song, X. Wang, Y. Chen, X. Wang, M. Song, "KDExplainer: A Task-oriented
Attention Model for Explaining Knowledge Distillation", IJCAI 2021 (arXiv:2105.04181). The HME is
built as the authors' public code builds it (`LEARNTOBRANCH.py`, class `LEARNTOBRANCH_Deep`, and
`train_LTB_s1.py` / `train_LTB_s2.py` / `train_LTB_kd_s1.py`, github.com/zju-vipa/KDExplainer):

- a tree of expert blocks, conv3x3-BN-ReLU-conv3x3-BN-ReLU-maxpool2, with 2 -> 4 -> 8 experts per
  level; both first-level experts read the image;
- every child's input is the weighted mix of all its parents' outputs, the weights one row of
  softmax(R / (0.5 t)) over the parents (R: a learned children x parents matrix, initialised
  U(0, 1)). The authors compute it in two steps, softmax(log(softmax(R / 0.5)) / t), which is the
  same thing;
- the K leaves (one per class) mix the last experts' outputs the same way; each leaf has its own
  head (adaptive avg-pool 7x7, Linear-ReLU-Dropout(0.15), Linear-ReLU-Dropout(0.15), Linear -> 1
  score), so a K-class problem is K binary "is it this class" subtasks. The authors' `ce` setting
  concatenates the K scores into logits and trains them with cross-entropy over the classes; so
  does kdbench (the logits feed the shared CE / KD losses unchanged);
- stage 1 routes softly with t = t0 / epoch, t0 = 10 (`training.t` in their configs); stage 2 routes
  each child to the arg-max parent of its row only (one-hot weights: a fixed tree) and trains the
  experts under that tree.

Deviations, because kdbench trains every model with its one engine (SGD) on short schedules:
- stage 2: the authors run it as a second 300-epoch run that re-initialises the experts
  (`model._initialize_weights()` in `train_LTB_s2.py`) and keeps only the routing. kdbench runs both
  stages in one engine run (`set_epoch` switches to hard routing for the last `hard_fraction` of the
  epochs, default 0.5 = the authors' 300 + 300) and keeps training the experts it has. In the hard
  stage R gets no gradient, so SGD leaves it as stage 1 ended; t stays at its last soft value;
- optimizer: the authors train stage 1 with Adam (lr 0.05, routing lr 0.01). Adam moves R by about
  its lr per step whatever the gradient's size; SGD moves it by lr x gradient, and the gradient
  through softmax(R / (0.5 t)) at t = 10 is tiny, so R would stay at its random init. The HME
  therefore stores R / `routing_lr_scale` as the parameter, which makes SGD's steps on R
  routing_lr_scale^2 times larger (the "equalized learning rate" reparameterisation of Karras et
  al., ICLR 2018); weight decay acts on R as before. 30 is measured: on a 6,000-image Fashion-MNIST
  subset, 3 soft epochs left the routing entropy within 1% of uniform at scale 1 and within 12% at
  10; at 30 the routing settles into a tree (2-75% of uniform, level by level);
- the leaf heads' linears keep PyTorch's default init instead of the authors' N(0, 0.01), which
  under SGD left the loss at log K for several epochs (measured on Fashion-MNIST).

The analysis (`HME.analysis()`, stored in the run record under "analysis") reports per routing
level the mean entropy (nats) of the children's routing rows at the last soft temperature, and the
learned tree: each child's arg-max parent and which classes sit under every expert.

The `kdbench explain` workflow that trains the HME lives in kdbench/explain/__init__.py, its report and figure
in kdbench/reporting/explain_report.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resume import check_stage_index, resumed

# Authors' code: `gumbel_softmax(R, 0.5)` before the temperature-t softmax (no Gumbel noise is drawn).
ROUTING_BASE_TEMPERATURE = 0.5
# R is stored divided by this, so SGD moves it this squared times faster (see the module docstring).
ROUTING_LR_SCALE = 30.0


def expert_block(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3-BN-ReLU-conv3x3-BN-ReLU-maxpool2: one expert (the authors' `conv{level}_{i}`)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2),
    )


class LeafHead(nn.Module):
    """One class's binary subtask head (the authors' `fc1_i` + `fc2_i`): pooled features -> 1 score."""

    def __init__(self, in_channels: int, pool_size: int, hidden: int, dropout: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.hidden = nn.Sequential(
            nn.Linear(in_channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (hidden vector, score)."""
        hidden = self.hidden(self.pool(x).flatten(1))
        return hidden, self.score(hidden)


def routing_weights(routing_logits: Tensor, temperature: float, hard: bool) -> Tensor:
    """children x parents mixing weights: rows of softmax(R / (0.5 t)), or their arg-max one-hot."""
    if hard:
        return F.one_hot(routing_logits.argmax(dim=1), routing_logits.shape[1]).to(routing_logits.dtype)
    return F.softmax(routing_logits / (ROUTING_BASE_TEMPERATURE * temperature), dim=1)


def row_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of each row of a row-stochastic matrix."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(dim=1)


class HME(nn.Module):
    """Hierarchical mixture of experts of KDExplainer (Xue et al., IJCAI 2021); see the module docstring.

    Args:
        num_classes: K, the number of leaves (one binary subtask per class).
        in_chans: image channels.
        experts: experts per level (authors: 2, 4, 8); the leaves add the last routing level.
        channels: output channels of each level's experts (authors: 64, 64, 32).
        mid_channels: channels between an expert's two convolutions (authors: 64).
        pool_size, head_hidden, dropout: leaf heads (authors: 7, 128, 0.15).
        t0: initial routing temperature, t = t0 / epoch in stage 1 (authors: `t: 10`).
        hard_fraction: last fraction of the epochs routed by arg-max (stage 2; authors: 300 of 600).
        routing_lr_scale: R is stored as R / routing_lr_scale (SGD's steps on R grow by its square).

    Shapes on N 32x32 images with the authors' sizes (28x28 gives 14, 7, 3 instead of 16, 8, 4):
        stages  [(N, 2*64, 16, 16), (N, 4*64, 8, 8), (N, 8*32, 4, 4)]  every level's experts, concatenated
        pooled  (N, K*128)  every leaf head's hidden vector, concatenated
        logits  (N, K)      the leaf scores
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        experts: tuple[int, ...] = (2, 4, 8),
        channels: tuple[int, ...] = (64, 64, 32),
        mid_channels: int = 64,
        pool_size: int = 7,
        head_hidden: int = 128,
        dropout: float = 0.15,
        t0: float = 10.0,
        hard_fraction: float = 0.5,
        routing_lr_scale: float = ROUTING_LR_SCALE,
    ):
        super().__init__()
        if len(experts) != len(channels):
            raise ValueError(f"HME: {len(experts)} expert levels but {len(channels)} channel widths")
        if not 0.0 <= hard_fraction < 1.0:
            raise ValueError(f"HME: hard_fraction must be in [0, 1), got {hard_fraction}")
        self.num_classes, self.experts = num_classes, tuple(experts)
        self.t0, self.hard_fraction, self.routing_lr_scale = t0, hard_fraction, routing_lr_scale
        inputs = (in_chans, *channels[:-1])
        self.levels = nn.ModuleList(
            nn.ModuleList(expert_block(c_in, mid_channels, c_out) for _ in range(count))
            for count, c_in, c_out in zip(experts, inputs, channels, strict=True)
        )
        # routing[i]: R / routing_lr_scale of level i, (children, parents); the last children are the leaves
        children = (*experts[1:], num_classes)
        self.routing = nn.ParameterList(
            nn.Parameter(torch.rand(child, parent) / routing_lr_scale)
            for parent, child in zip(experts, children, strict=True)
        )
        self.heads = nn.ModuleList(
            LeafHead(channels[-1], pool_size, head_hidden, dropout) for _ in range(num_classes)
        )
        self.register_buffer("temperature", torch.tensor(float(t0)))
        self.register_buffer("hard_routing", torch.tensor(False))
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """The authors' `_initialize_weights` for the convs (Kaiming-normal, fan_out) and BN (1, 0); the
        linears keep PyTorch's default init (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- schedule ------------------------------------------------------------------------------
    def soft_epochs(self, num_epochs: int) -> int:
        """Epochs of stage 1 (soft routing): the first (1 - hard_fraction) of the run, at least 1."""
        return max(1, round(num_epochs * (1.0 - self.hard_fraction)))

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Engine hook (1-based epoch): t = t0 / epoch in stage 1; arg-max routing in stage 2."""
        soft = self.soft_epochs(num_epochs)
        self.temperature.fill_(self.t0 / min(epoch, soft))
        self.hard_routing.fill_(epoch > soft)

    def routing_logits(self) -> list[Tensor]:
        """R of every routing level, (children, parents)."""
        return [self.routing_lr_scale * scaled for scaled in self.routing]

    def routing_weights(self) -> list[Tensor]:
        """The mixing weights of every routing level, as the forward pass uses them now."""
        temperature, hard = float(self.temperature), bool(self.hard_routing)
        return [routing_weights(logits, temperature, hard) for logits in self.routing_logits()]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stages = []
        inputs = [x] * self.experts[0]
        for experts, weights in zip(self.levels, self.routing_weights(), strict=True):
            outputs = torch.stack([expert(part) for expert, part in zip(experts, inputs, strict=True)])
            stages.append(outputs.transpose(0, 1).flatten(1, 2))
            # child k's input = sum over parents p of weights[k, p] * output of parent p
            inputs = torch.einsum("kp,pnchw->knchw", weights, outputs).unbind(0)
        heads = [head(part) for head, part in zip(self.heads, inputs, strict=True)]
        logits = torch.cat([score for _, score in heads], dim=1)
        if not features:
            return logits
        pooled = torch.cat([hidden for hidden, _ in heads], dim=1)
        return Features(logits=logits, pooled=pooled, stages=stages)

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]` (level i's expert outputs, concatenated): that level's
        routing, the later levels and the leaf heads, with the routing weights of now
        (kdbench/models/resume.py)."""
        check_stage_index(stage_index, len(self.levels))
        weights = self.routing_weights()
        # (N, E*C, H, W) back to the stacked (E, N, C, H, W) the routing mixes
        outputs = x.unflatten(1, (self.experts[stage_index], -1)).transpose(0, 1).contiguous()
        inputs = torch.einsum("kp,pnchw->knchw", weights[stage_index], outputs).unbind(0)
        later = []
        for experts, level_weights in zip(
            self.levels[stage_index + 1 :], weights[stage_index + 1 :], strict=True
        ):
            outputs = torch.stack([expert(part) for expert, part in zip(experts, inputs, strict=True)])
            later.append(outputs.transpose(0, 1).flatten(1, 2))
            inputs = torch.einsum("kp,pnchw->knchw", level_weights, outputs).unbind(0)
        heads = [head(part) for head, part in zip(self.heads, inputs, strict=True)]
        logits = torch.cat([score for _, score in heads], dim=1)
        pooled = torch.cat([hidden for hidden, _ in heads], dim=1)
        return resumed(logits, pooled, later, features)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.levels)

    # -- analysis ------------------------------------------------------------------------------
    @torch.no_grad()
    def soft_routing_weights(self) -> list[Tensor]:
        """Every level's soft weights at the current temperature (in stage 2: the last soft one)."""
        return [routing_weights(r, float(self.temperature), hard=False) for r in self.routing_logits()]

    def routing_entropies(self) -> list[float]:
        """Mean routing-row entropy (nats) per level at the current (in stage 2: last soft) temperature."""
        return [float(row_entropy(weights).mean()) for weights in self.soft_routing_weights()]

    @torch.no_grad()
    def learned_tree(self) -> dict:
        """The arg-max tree: each child's parent per routing level, and the classes under every expert.

        Returns {"parents": [[parent of each child] per routing level],
                 "classes": [[sorted classes under each expert] per expert level]}.
        """
        parents = [r.argmax(dim=1).tolist() for r in self.routing]  # the scale does not move an arg-max
        under = [[leaf] for leaf in range(self.num_classes)]
        classes = []
        for level_parents, count in zip(reversed(parents), reversed(self.experts), strict=True):
            grouped: list[list[int]] = [[] for _ in range(count)]
            for child, parent in enumerate(level_parents):
                grouped[parent].extend(under[child])
            under = [sorted(group) for group in grouped]
            classes.insert(0, under)
        return {"parents": parents, "classes": classes}

    def analysis(self) -> dict:
        """What the engine stores in the run record under "analysis" (JSON-able)."""
        return {
            "routing_levels": [
                f"{parents}->{children}"
                for parents, children in zip(self.experts, (*self.experts[1:], self.num_classes), strict=True)
            ],
            "temperature": float(self.temperature),
            "routing_entropy": self.routing_entropies(),
            "max_entropy": [math.log(parents) for parents in self.experts],
            "routing_weights": [weights.tolist() for weights in self.soft_routing_weights()],
            "tree": self.learned_tree(),
        }


# FLOPs of one forward pass on a 1x28x28 image with 10 classes (Fashion-MNIST): hme 281 M,
# hme_small 18 M (16x fewer).
@MODELS.register_module()
def hme(num_classes: int, in_chans: int = 3) -> HME:
    """KDExplainer's HME with the authors' CIFAR sizes (experts 2/4/8, channels 64/64/32)."""
    return HME(num_classes, in_chans)


@MODELS.register_module()
def hme_small(num_classes: int, in_chans: int = 3) -> HME:
    """The HME at a quarter of the authors' width (channels 16/16/8, heads 32): CPU-sized analyses."""
    return HME(num_classes, in_chans, channels=(16, 16, 8), mid_channels=16, head_hidden=32)
