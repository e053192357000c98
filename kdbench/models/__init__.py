"""The model zoo: CIFAR-style networks with RepDistiller's state_dict keys, plus any timm model.

    build_model("resnet8x4", num_classes=100)            # zoo name (see list_models())
    build_model("timm:resnet18", num_classes=10, in_chans=1)   # any timm architecture, no weights

Every model has `forward(x, features=False) -> Tensor | Features` and `stage_modules()`.
"""

from __future__ import annotations

from torch import nn

from kdbench.models import hme, mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
from kdbench.registries import MODELS, lookup

TIMM_PREFIX = "timm:"


def build_model(name: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Build a zoo model by registry name, or a timm model named `timm:<timm name>` (random init)."""
    if name.startswith(TIMM_PREFIX):
        from kdbench.models.timm_adapter import build_timm_model  # imports timm only when asked

        return build_timm_model(name[len(TIMM_PREFIX) :], num_classes=num_classes, in_chans=in_chans)
    return lookup(MODELS, "model", name)(num_classes=num_classes, in_chans=in_chans)


def list_models() -> list[str]:
    """The zoo's registered names (timm models are reached with the `timm:` prefix)."""
    return sorted(MODELS.module_dict)
