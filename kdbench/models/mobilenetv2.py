"""MobileNetV2 for CIFAR (`mobile_half`: expansion 6, width 0.5) as used by RepDistiller.

Paper: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381); CIFAR variant from X. Jin et al., "Knowledge
Distillation via Route Constrained Optimization", ICCV 2019, as shipped by RepDistiller.

Module and parameter names are RepDistiller's (`models/mobilenetv2.py`: conv1 = conv-bn-relu Sequential,
blocks.<stage>.<i>.conv Sequential, conv2 = 1x1 conv-bn-relu, classifier.0), so its CIFAR-100 checkpoints
load with `strict=True`. The average pool is parameter-free and adaptive so 28x28 inputs work too.

Taps follow RepDistiller: stages are the outputs of blocks[1], blocks[2], blocks[4], blocks[6] (linear
bottlenecks: there is no activation, so `preact` is the same list). For `mobile_half` on N 32x32 images:
    stem    (N, 16, 16, 16)
    stages  [(N, 12, 16, 16), (N, 16, 8, 8), (N, 48, 4, 4), (N, 160, 2, 2)]
    preact  = stages
    pooled  (N, 1280)             after conv2 (1x1 conv-bn-relu to 1280 channels)
"""

from __future__ import annotations

from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resume import check_stage_index, resumed

# Expansion t (None: the model's T), output channels c, repeats n, first stride s (RepDistiller's setting).
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Indices of `blocks` grouped into the four tapped stages.
STAGES = ((0, 1), (2,), (3, 4), (5, 6))


def conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-bn-relu, 3x3 depthwise-bn-relu, 1x1 linear projection-bn; + identity if shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Stride-2 3x3 stem, seven inverted-residual groups, 1x1 conv to 1280 channels, pool, linear."""

    def __init__(self, expansion: int, width_mult: float, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_chans, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t or expansion))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(input_channel, last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def stage_modules(self) -> list[nn.Module]:
        """The four tapped stages, each a ModuleList view over the shared `blocks` (no new parameters)."""
        return [nn.ModuleList(self.blocks[i] for i in idx) for idx in STAGES]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stem = x = self.conv1(x)
        stages = []
        for idx in STAGES:
            for i in idx:
                x = self.blocks[i](x)
            stages.append(x)
        pooled = self.avgpool(self.conv2(x)).flatten(1)
        logits = self.classifier(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=list(stages))

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]`: the later blocks, conv2, pool, classifier
        (kdbench/models/resume.py)."""
        check_stage_index(stage_index, len(STAGES))
        later = []
        for idx in STAGES[stage_index + 1 :]:
            for i in idx:
                x = self.blocks[i](x)
            later.append(x)
        pooled = self.avgpool(self.conv2(x)).flatten(1)
        return resumed(self.classifier(pooled), pooled, later, features)


@MODELS.register_module()
def mobile_half(num_classes: int = 100, in_chans: int = 3) -> MobileNetV2:
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes, in_chans=in_chans)
