"""Any timm architecture as a kdbench model (`timm:<name>`, e.g. `timm:resnet18`), randomly initialised.

The taps come from timm's own feature API (timm >= 1.0): `forward_intermediates` gives one output per
`feature_info` entry, `forward_head(..., pre_logits=True)` the penultimate vector. The first entry is
taken as the stem when its module holds no conv or linear layer (a stem activation / norm tap such as
ResNet's `act1` or MobileNetV3's `bn1`); every other entry is a stage. timm exposes no pre-activations,
so `preact` is the same list as `stages`. A model of a fixed input size (timm's `fixed_input_size`: ViTs,
Swins, Mixers) is built for the dataset's image side (timm's `img_size`), so `timm:vit_tiny_patch16_224`
trains on 32x32 images with 2x2 patches.

Shapes follow `feature_info`; for `timm:resnet18` on N 32x32 images:
    stem    (N, 64, 16, 16)
    stages  [(N, 64, 8, 8), (N, 128, 4, 4), (N, 256, 2, 2), (N, 512, 1, 1)]
    pooled  (N, 512)
"""

from __future__ import annotations

import difflib

import timm
from torch import Tensor, nn

from kdbench.core.errors import ConfigError
from kdbench.core.features import Features
from kdbench.core.registries import UnknownNameError


def _is_stem_tap(module: nn.Module) -> bool:
    return not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


class TimmModel(nn.Module):
    """Wraps a timm model (`self.model`, so its state_dict keys are timm's under the `model.` prefix)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        taps = [model.get_submodule(info["module"]) for info in model.feature_info]
        self.has_stem = bool(taps) and _is_stem_tap(taps[0])
        self._stage_names = [info["module"] for info in model.feature_info[int(self.has_stem) :]]

    def stage_modules(self) -> list[nn.Module]:
        """The modules named by timm's `feature_info`, minus the stem tap."""
        return [self.model.get_submodule(name) for name in self._stage_names]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        if not features:
            return self.model(x)
        final, taps = self.model.forward_intermediates(x)
        pooled = self.model.forward_head(final, pre_logits=True)
        logits = self.model.forward_head(final)
        stem = taps[0] if self.has_stem else None
        stages = taps[int(self.has_stem) :]
        return Features(logits=logits, pooled=pooled, stem=stem, stages=stages, preact=list(stages))


def takes_image_size(name: str) -> bool:
    """Whether timm builds `name` for one input size (`img_size`, as its ViTs, Swins and Mixers): its
    pretrained configuration says `fixed_input_size`."""
    config = timm.get_pretrained_cfg(name)
    return bool(config and config.fixed_input_size)


def build_timm_model(
    name: str, num_classes: int, in_chans: int = 3, image_size: int | tuple[int, int] | None = None
) -> TimmModel:
    """`timm.create_model(name, pretrained=False, ...)` wrapped; UnknownNameError for a name timm lacks.

    A model of a fixed input size (`takes_image_size`) is built for `image_size` ((height, width) or a
    side; timm's `img_size`); others take any size. A model timm cannot tap is refused (ConfigError)."""
    if not timm.is_model(name):
        valid = timm.list_models()
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean 'timm:{close[0]}'?" if close else ""
        raise UnknownNameError(
            f"unknown timm model '{name}'.{hint} timm has {len(valid)} architectures: see timm.list_models()"
        )
    options = {"img_size": image_size} if image_size is not None and takes_image_size(name) else {}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **options)
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(
            f"timm model 'timm:{name}' has no forward_intermediates: kdbench cannot tap its features; "
            "choose another model"
        )
    return TimmModel(model)
