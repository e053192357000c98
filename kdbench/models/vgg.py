"""VGG with batch norm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19) as used by RepDistiller.

Paper: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (arXiv:1409.1556); CIFAR variant without the FC layers (a single linear classifier), vgg8 from
Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020 (RepDistiller).
RepDistiller's names `vgg8`...`vgg19` are its `vgg*_bn` builders; these are the same networks.

Module and parameter names are RepDistiller's (`models/vgg.py`: block0..4 Sequentials of conv(bias)-bn-relu
without the last ReLU, pool0..4, classifier), so its CIFAR-100 checkpoints load with `strict=True`.
`pool3` is applied only to inputs larger than 32 px (RepDistiller: 64x64 Tiny-ImageNet); `pool4` is adaptive.

Shapes on a batch of N 32x32 images:
    stem    (N, 64, 32, 32)       block0, after its ReLU
    stages  [(N, 128, 16, 16), (N, 256, 8, 8), (N, 512, 4, 4), (N, 512, 4, 4)]   block1..4, post-ReLU
    preact  same shapes, each block's last BN output before the ReLU
    pooled  (N, 512)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.core.features import Features
from kdbench.core.registries import MODELS
from kdbench.models.resume import check_stage_index, resumed

# Output channels of the 3x3 convs of block0..4 (RepDistiller's cfg 'S', 'A', 'B', 'D', 'E').
CFGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(channels: list[int], in_channels: int) -> nn.Sequential:
    """conv3x3(bias)-bn-relu per entry of `channels`, minus the final ReLU (the model applies it)."""
    layers: list[nn.Module] = []
    for v in channels:
        conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv blocks separated by 2x2 max pools, global average pool, linear classifier."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.block0 = make_block(cfg[0], in_chans)
        self.block1 = make_block(cfg[1], cfg[0][-1])
        self.block2 = make_block(cfg[2], cfg[1][-1])
        self.block3 = make_block(cfg[3], cfg[2][-1])
        self.block4 = make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def stage_modules(self) -> list[nn.Module]:
        return [self.block1, self.block2, self.block3, self.block4]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        pools = [self.pool1, self.pool2, self.pool3 if x.shape[-2] > 32 else None, None]
        stem = F.relu(self.block0(x))
        x = self.pool0(stem)
        stages, preacts = [], []
        for block, pool in zip(self.stage_modules(), pools, strict=True):
            pre = block(x)
            x = F.relu(pre)
            preacts.append(pre)
            stages.append(x)
            if pool is not None:
                x = pool(x)
        pooled = self.pool4(x).flatten(1)
        logits = self.classifier(pooled)
        if not features:
            return logits
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=preacts)

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]` (post-ReLU): the pool after it, the later blocks (each
        relu'd, pooled as in `forward`), pool4, classifier (kdbench/models/resume.py).

        `forward` applies pool3 to inputs larger than 32 px; here the input's side is read off the
        stage's (stage i is 2^(i+1) times smaller), which is exact except for inputs of 33 to
        32 + 2^(i+1) - 1 px, whose stage i has the size a 32 px input gives it."""
        check_stage_index(stage_index, len(self.stage_modules()))
        larger_than_32 = x.shape[-2] * 2 ** (stage_index + 1) > 32
        pools = [self.pool1, self.pool2, self.pool3 if larger_than_32 else None]
        later = []
        for block, pool in zip(self.stage_modules()[stage_index + 1 :], pools[stage_index:], strict=True):
            if pool is not None:
                x = pool(x)
            x = F.relu(block(x))
            later.append(x)
        pooled = self.pool4(x).flatten(1)
        return resumed(self.classifier(pooled), pooled, later, features)


@MODELS.register_module()
def vgg8(num_classes: int = 100, in_chans: int = 3) -> VGG:
    return VGG(CFGS["vgg8"], num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def vgg11(num_classes: int = 100, in_chans: int = 3) -> VGG:
    return VGG(CFGS["vgg11"], num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def vgg13(num_classes: int = 100, in_chans: int = 3) -> VGG:
    return VGG(CFGS["vgg13"], num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def vgg16(num_classes: int = 100, in_chans: int = 3) -> VGG:
    return VGG(CFGS["vgg16"], num_classes=num_classes, in_chans=in_chans)


@MODELS.register_module()
def vgg19(num_classes: int = 100, in_chans: int = 3) -> VGG:
    return VGG(CFGS["vgg19"], num_classes=num_classes, in_chans=in_chans)
