"""Wide Residual Networks (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2) as used by RepDistiller.

Paper: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146).
WRN-d-k: depth d = 6n + 4, width factor k, pre-activation basic blocks (bn-relu-conv, twice).

Module and parameter names are RepDistiller's (`models/wrn.py`: conv1, block1..3.layer.<i>.{bn1, conv1,
bn2, conv2, convShortcut}, bn1, fc), so its published CIFAR-100 checkpoints load with `strict=True`.
The fixed 8x8 average pool is replaced by a parameter-free adaptive one so 28x28 inputs work too.

Pre-activation network, so the taps follow RepDistiller's `is_feat` / `preact` lists: the stem is the
first conv's output and each stage output is the raw residual sum (no activation); `preact` is that sum
after the BN that the next block (or the final bn1) applies to it, before its ReLU.

Shapes on a batch of N 32x32 images, k the width factor:
    stem    (N, 16, 32, 32)
    stages  [(N, 16k, 32, 32), (N, 32k, 16, 16), (N, 64k, 8, 8)]
    preact  same shapes
    pooled  (N, 64k)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resume import resumed, run_later_stages


class BasicBlock(nn.Module):
    """bn-relu-conv3x3-bn-relu-conv3x3 plus the identity, or a 1x1 `convShortcut` of the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.convShortcut = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward_with_input_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, bn1(x)): the block's input after its BN, before its ReLU."""
        pre = self.bn1(x)
        act = F.relu(pre)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out, pre

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_input_preact(x)[0]


class NetworkBlock(nn.Module):
    """One stage: `nb_layers` blocks in `self.layer`, the first one with the stage's stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride)]
        blocks += [BasicBlock(out_planes, out_planes, 1) for _ in range(1, nb_layers)]
        self.layer = nn.Sequential(*blocks)

    def forward_with_input_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, the stage input after the first block's BN, before its ReLU)."""
        first, *rest = self.layer
        x, pre = first.forward_with_input_preact(x)
        for block in rest:
            x = block(x)
        return x, pre

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """3x3 stem conv, three stages of (depth - 4) / 6 pre-activation blocks, bn-relu, pool, fc."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"a WRN has depth 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def stage_modules(self) -> list[nn.Module]:
        return [self.block1, self.block2, self.block3]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stem = x = self.conv1(x)
        x = self.block1(x)
        stages, preacts = [x], []
        for stage in (self.block2, self.block3):
            x, pre = stage.forward_with_input_preact(x)
            preacts.append(pre)
            stages.append(x)
        pre = self.bn1(x)
        preacts.append(pre)
        pooled = self.avgpool(F.relu(pre)).flatten(1)
        logits = self.fc(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=preacts)

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]` (a raw residual sum): the later stages, bn1-relu, pool, fc
        (kdbench/models/resume.py)."""
        x, later = run_later_stages(self.stage_modules(), stage_index, x)
        pooled = self.avgpool(F.relu(self.bn1(x))).flatten(1)
        return resumed(self.fc(pooled), pooled, later, features)


@MODELS.register_module()
def wrn_16_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def wrn_16_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def wrn_40_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def wrn_40_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes=num_classes, in_chans=in_chans)
