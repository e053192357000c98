"""ShuffleNet V2 1x for CIFAR (`ShuffleV2`) as used by RepDistiller.

Paper: N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018 (arXiv:1807.11164). CIFAR variant: 1x1 stem conv without max pool.

Module and parameter names are RepDistiller's (`models/ShuffleNetv2.py`: conv1, bn1, layer1..3 = a DownBlock
(conv1..5/bn1..5) then BasicBlocks (conv1..3/bn1..3), conv2, bn2, linear), so its CIFAR-100 checkpoints load
with `strict=True`. The 4x4 average pool is parameter-free and adaptive so 28x28 inputs work too. PyTorch's
default initialisation, as there.

Shapes on a batch of N 32x32 images:
    stem    (N, 24, 32, 32)       1x1 conv-bn-relu
    stages  [(N, 116, 16, 16), (N, 232, 8, 8), (N, 464, 4, 4)]   output of layer1..3
    preact  same shapes: RepDistiller's pre-activation of the last block, [kept half, branch before its
            ReLU] concatenated and *not* channel-shuffled
    pooled  (N, 1024)             after conv2-bn2-relu
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resnet import run_stages
from kdbench.models.resume import resumed, run_later_stages
from kdbench.models.shufflenetv1 import channel_shuffle


class BasicBlock(nn.Module):
    """Split the channels in half; one half goes through 1x1-dw3x3-1x1, the other is kept; concat, shuffle."""

    def __init__(self, in_channels: int):
        super().__init__()
        c = in_channels // 2
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, [kept half, branch before its final ReLU] unshuffled)."""
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        return out, torch.cat([x1, pre], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class DownBlock(nn.Module):
    """Stride-2 unit: left dw3x3-1x1, right 1x1-dw3x3-1x1, both on the whole input; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem, three stages (DownBlock + BasicBlocks), 1x1 conv to `out_channels[3]`, pool, linear."""

    def __init__(
        self, out_channels: list[int], num_blocks: list[int], num_classes: int = 100, in_chans: int = 3
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stem = x = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(self.stage_modules(), x)
        x = stages[-1]
        pooled = self.avgpool(F.relu(self.bn2(self.conv2(x)))).flatten(1)
        logits = self.linear(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=preacts)

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]`: the later stages, conv2-bn2-relu, pool, linear
        (kdbench/models/resume.py)."""
        x, later = run_later_stages(self.stage_modules(), stage_index, x)
        pooled = self.avgpool(F.relu(self.bn2(self.conv2(x)))).flatten(1)
        return resumed(self.linear(pooled), pooled, later, features)


@MODELS.register_module()
def ShuffleV2(num_classes: int = 100, in_chans: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2([116, 232, 464, 1024], [3, 7, 3], num_classes=num_classes, in_chans=in_chans)
