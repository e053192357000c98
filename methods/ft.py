"""FT: Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018.

A paraphraser (conv auto-encoder, compression rate k = 0.5) is first trained, in the init stage, to
reconstruct the teacher's last-stage feature (MSE); its encoder output is the teacher factor F_T.
A translator on the student's last-stage feature gives the student factor F_S, and the main stage
adds the paper's factor loss with p = 1:

    L_FT = || F_T / ||F_T||_2  -  F_S / ||F_S||_2 ||_p

As RepDistiller (Tian et al., ICLR 2020, distiller_zoo/FT.py `FactorTransfer(p1=2, p2=1)`), whose
beta = 200 we use, a factor is first reduced over its channels to the spatial map mean_c(F_c^2)
before the L2 normalisation, and the L1 norm is taken as a mean over positions; the larger map is
average-pooled to the smaller one's size. (The paper and the authors' code normalise the whole
flattened factor instead.)

Init stage, as RepDistiller's train_student.py / helper/pretrain.py: only the paraphraser is
trained, on the teacher's feature; the student is untouched. Its lr is RepDistiller's 0.01 (`init_lr`;
helper/pretrain.py sets it for factor transfer with ResNet/WRN students, and MobileNet/ShuffleNet
students train at 0.01 throughout): at the recipe's 0.05 the paraphraser, which has no BatchNorm,
diverged on 2 of 3 seeds of the ci preset. In the main stage the paraphraser is frozen and only the
translator (and the student) learn.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Features,
    FeatureShapes,
    InitStage,
    Method,
    MethodContext,
    register_method,
    require_stages,
)


def conv_stack(channels: list[int], conv: type[nn.Module], batch_norm: bool) -> nn.Sequential:
    """3x3 (transposed) convolutions between consecutive `channels`, each with LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    for in_channels, out_channels in pairwise(channels):
        layers.append(conv(in_channels, out_channels, 3, 1, 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Auto-encoder of the teacher feature: C -> C -> kC -> kC -> kC -> C -> C (RepDistiller, no BN)."""

    def __init__(self, channels: int, rate: float):
        super().__init__()
        factor_channels = int(channels * rate)
        self.encoder = conv_stack([channels, channels, factor_channels, factor_channels], nn.Conv2d, False)
        self.decoder = conv_stack(
            [factor_channels, factor_channels, channels, channels], nn.ConvTranspose2d, False
        )

    def forward(self, feature: Tensor) -> Tensor:
        return self.decoder(self.encoder(feature))


def factor_map(factor: Tensor) -> Tensor:
    """RepDistiller's normalised factor: L2-normalised spatial map of mean_c(F_c^2), shape (N, H*W)."""
    return F.normalize(factor.pow(2).mean(1).flatten(1))


def factor_transfer_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """Mean absolute difference (p = 1) of the normalised factors, after pooling to the smaller map."""
    size = tuple(map(min, student_factor.shape[-2:], teacher_factor.shape[-2:]))
    student_factor = F.adaptive_avg_pool2d(student_factor, size)
    teacher_factor = F.adaptive_avg_pool2d(teacher_factor, size)
    return (factor_map(student_factor) - factor_map(teacher_factor)).abs().mean()


@register_method
class FT(Method):
    """Factor transfer on the last stage.

    Defaults from RepDistiller scripts/run_cifar_distill.sh (`--distill factor -a 0 -b 200`),
    train_student.py (`--init_epochs 30`), helper/pretrain.py (init lr 0.01) and models/util.py
    (Paraphraser/Translator rate k = 0.5).
    """

    name = "ft"
    student_features = ("stages",)
    teacher_features = ("stages",)
    defaults = {
        "kd_weight": 0.0,
        "method_weight": 200.0,
        "paraphrase_rate": 0.5,
        "init_epochs": 30,
        "init_lr": 0.01,
    }

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_stages("ft", student_shapes, teacher_shapes)

    def __init__(self, hp: dict, context: MethodContext):
        super().__init__(hp, context)
        student_channels = context.student_shapes.stages[-1][0]
        teacher_channels = context.teacher_shapes.stages[-1][0]
        factor_channels = int(teacher_channels * hp["paraphrase_rate"])
        self.paraphraser = Paraphraser(teacher_channels, hp["paraphrase_rate"])
        # RepDistiller's Translator: the paraphraser's encoder shape, on the student, with BN.
        self.translator = conv_stack(
            [student_channels, student_channels, factor_channels, factor_channels], nn.Conv2d, True
        )

    def reconstruction_loss(self, student: Features, teacher: Features) -> dict[str, Tensor]:
        feature = teacher.stages[-1]
        return {"ft_reconstruction": F.mse_loss(self.paraphraser(feature), feature)}

    def init_stage(self) -> InitStage:
        return InitStage(
            self.init_epochs(),
            list(self.paraphraser.parameters()),
            self.reconstruction_loss,
            trains_student=False,
            lr=self.hp["init_lr"],
        )

    def method_terms(
        self, student: Features, teacher: Features, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher.stages[-1])
        return {"ft": factor_transfer_loss(self.translator(student.stages[-1]), teacher_factor)}
