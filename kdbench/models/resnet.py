"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) as used by RepDistiller.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385), section 4.2 (the 6n+2 CIFAR networks); the "x4" variants (4x wider) are from
Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020 (RepDistiller).

Module and parameter names are RepDistiller's (`models/resnet.py`: conv1/bn1/layer1..3/fc, a
`downsample` Sequential of conv+bn), so its published CIFAR-100 checkpoints load with `strict=True`.
The fixed 8x8 average pool is replaced by a parameter-free adaptive one so 28x28 inputs work too.

Shapes on a batch of N 32x32 images, (c0, c1, c2, c3) = (16, 16, 32, 64), or (32, 64, 128, 256) for x4:
    stem    (N, c0, 32, 32)
    stages  [(N, c1, 32, 32), (N, c2, 16, 16), (N, c3, 8, 8)]   post-ReLU output of layer1..3
    preact  same shapes, the last block's residual sum before its ReLU
    pooled  (N, c3)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resume import resumed, run_later_stages


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus the identity (or 1x1 conv-bn `downsample`) shortcut, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, residual sum before the final ReLU)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage of blocks that have `forward_preact`; return (output, last block's pre-activation)."""
    *head, last = stage
    for block in head:
        x = block(x)
    return last.forward_preact(x)


def run_stages(stages: list[nn.Sequential], x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Run stages in order; return each stage's output and each stage's last pre-activation."""
    outputs, preacts = [], []
    for stage in stages:
        x, pre = run_stage(stage, x)
        outputs.append(x)
        preacts.append(pre)
    return outputs, preacts


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, three stages of (depth - 2) / 6 basic blocks (strides 1, 2, 2), pool, fc."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"a CIFAR ResNet with basic blocks has depth 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_chans, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stem = x = self.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(self.stage_modules(), x)
        x = stages[-1]
        pooled = self.avgpool(x).flatten(1)
        logits = self.fc(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=preacts)

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]` (post-ReLU): the later stages, pool, fc
        (kdbench/models/resume.py)."""
        x, later = run_later_stages(self.stage_modules(), stage_index, x)
        pooled = self.avgpool(x).flatten(1)
        return resumed(self.fc(pooled), pooled, later, features)


def _resnet(depth: int, num_filters: list[int], num_classes: int, in_chans: int) -> ResNet:
    return ResNet(depth, num_filters, num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def resnet8(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(8, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet14(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(14, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet20(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(20, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet32(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(32, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet44(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(44, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet56(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(56, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet110(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(110, [16, 16, 32, 64], num_classes, in_chans)


@MODELS.register_module()
def resnet8x4(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(8, [32, 64, 128, 256], num_classes, in_chans)


@MODELS.register_module()
def resnet32x4(num_classes: int = 100, in_chans: int = 3) -> ResNet:
    return _resnet(32, [32, 64, 128, 256], num_classes, in_chans)
