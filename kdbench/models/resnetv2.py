"""ResNet-50 for CIFAR (`ResNet50`: 3x3 stem, no max pool) as used by RepDistiller.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385): bottleneck blocks [3, 4, 6, 3]; the CIFAR stem (3x3 conv, stride 1, no max pool)
is RepDistiller's `models/resnetv2.py`.

Module and parameter names are RepDistiller's (conv1, bn1, layer1..4.<i>.{conv1..3, bn1..3, shortcut.0/1},
linear), so its CIFAR-100 checkpoints load with `strict=True`.

Shapes on a batch of N 32x32 images:
    stem    (N, 64, 32, 32)
    stages  [(N, 256, 32, 32), (N, 512, 16, 16), (N, 1024, 8, 8), (N, 2048, 4, 4)]   post-ReLU, layer1..4
    preact  same shapes, the last block's residual sum before its ReLU
    pooled  (N, 2048)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resnet import run_stages
from kdbench.models.resume import resumed, run_later_stages


class Bottleneck(nn.Module):
    """1x1-bn-relu, 3x3(stride)-bn-relu, 1x1(x4)-bn, plus identity or 1x1 conv-bn `shortcut`, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, residual sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ResNet(nn.Module):
    """3x3 stem, four stages of bottleneck blocks (strides 1, 2, 2, 2), global average pool, linear."""

    def __init__(self, num_blocks: list[int], num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

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
def ResNet50(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans)
