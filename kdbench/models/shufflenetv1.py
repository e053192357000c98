"""ShuffleNet V1 for CIFAR (`ShuffleV1`: groups 3, stages of 240/480/960 channels) as used by RepDistiller.

Paper: X. Zhang, X. Zhou, M. Lin, J. Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018 (arXiv:1707.01083).

Module and parameter names are RepDistiller's (`models/ShuffleNetv1.py`: conv1, bn1, layer1..3.<i>.{conv1,
bn1, conv2, bn2, conv3, bn3}, linear), so its CIFAR-100 checkpoints load with `strict=True`. The 4x4 average
pool is parameter-free and adaptive so 28x28 inputs work too. PyTorch's default initialisation, as there.

Shapes on a batch of N 32x32 images:
    stem    (N, 24, 32, 32)       1x1 conv-bn-relu
    stages  [(N, 240, 16, 16), (N, 480, 8, 8), (N, 960, 4, 4)]   post-ReLU output of layer1..3
    preact  same shapes, the last block's sum (or concat, for a stride-2 block) before its ReLU
    pooled  (N, 960)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resnet import run_stages
from kdbench.models.resume import resumed, run_later_stages


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g*c, H, W) -> (N, c*g, H, W): interleave the channels of the `groups` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups  # the stem output is too thin to group
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, sum or concat before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1) if self.stride == 2 else out + x
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ShuffleNet(nn.Module):
    """1x1 stem, three stages (each opens with a stride-2 concatenating block), pool, linear."""

    def __init__(
        self,
        out_planes: list[int],
        num_blocks: list[int],
        groups: int,
        num_classes: int = 100,
        in_chans: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        # The stride-2 first block concatenates its input, so its branch makes only the missing channels.
        layers = [Bottleneck(self.in_planes, out_planes - self.in_planes, stride=2, groups=groups)]
        layers += [Bottleneck(out_planes, out_planes, stride=1, groups=groups) for _ in range(1, num_blocks)]
        self.in_planes = out_planes
        return nn.Sequential(*layers)

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stem = x = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(self.stage_modules(), x)
        x = stages[-1]
        pooled = self.avgpool(x).flatten(1)
        logits = self.linear(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=preacts)

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]` (post-ReLU): the later stages, pool, linear
        (kdbench/models/resume.py)."""
        x, later = run_later_stages(self.stage_modules(), stage_index, x)
        pooled = self.avgpool(x).flatten(1)
        return resumed(self.linear(pooled), pooled, later, features)


@MODELS.register_module()
def ShuffleV1(num_classes: int = 100, in_chans: int = 3) -> ShuffleNet:
    return ShuffleNet([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes, in_chans=in_chans)
