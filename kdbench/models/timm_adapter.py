"""Any timm architecture as a kdbench model (`timm:<name>`, e.g. `timm:resnet18`), randomly initialised.

The taps come from timm's own feature API (timm >= 1.0): `forward_intermediates` gives one output per
`feature_info` entry, `forward_head(..., pre_logits=True)` the penultimate vector. The first entry is
taken as the stem when its module holds no conv or linear layer (a stem activation / norm tap such as
ResNet's `act1` or MobileNetV3's `bn1`); every other entry is a stage. timm exposes no pre-activations,
so `preact` is the same list as `stages`. A model of a fixed input size (timm's `fixed_input_size`: ViTs,
Swins, Mixers) is built for the dataset's image side (timm's `img_size`), so `timm:vit_tiny_patch16_224`
trains on 32x32 images with 2x2 patches.

Its `family` says what its stage outputs are (`kdbench.methods.base.model_family` reads it): "token" when no
stage module holds a convolution (a ViT's, a Swin's or an MLP-Mixer's blocks, whose taps timm reshapes
from tokens into (C, H, W) grids), else "cnn" (ResNets, ConvNeXts, MobileNets, and hybrids with a
convolution in some stage). Methods that read CNN stage maps refuse a token model by it.

Shapes follow `feature_info`; for `timm:resnet18` on N 32x32 images:
    stem    (N, 64, 16, 16)
    stages  [(N, 64, 8, 8), (N, 128, 4, 4), (N, 256, 2, 2), (N, 512, 1, 1)]
    pooled  (N, 512)
"""

from __future__ import annotations

import difflib

import timm
import torch
from torch import Tensor, nn

from kdbench.core.errors import ConfigError
from kdbench.core.features import Features
from kdbench.core.registries import UnknownNameError
from kdbench.models.resume import check_stage_index, resumed


def _is_stem_tap(module: nn.Module) -> bool:
    return not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


class TimmModel(nn.Module):
    """Wraps a timm model (`self.model`, so its state_dict keys are timm's under the `model.` prefix).

    image_shape: the (C, H, W) of the images it is built for; `forward_from` checks on it, once,
    that the model's stages chain. name: its kdbench name without the prefix (constructor arguments
    included), for messages; default, timm's architecture."""

    def __init__(self, model: nn.Module, image_shape: tuple[int, int, int], name: str | None = None):
        super().__init__()
        self.model = model
        self.image_shape = tuple(image_shape)
        taps = [model.get_submodule(info["module"]) for info in model.feature_info]
        self.has_stem = bool(taps) and _is_stem_tap(taps[0])
        self._stage_names = [info["module"] for info in model.feature_info[int(self.has_stem) :]]
        self.architecture = f"timm:{name or model.default_cfg.get('architecture', type(model).__name__)}"
        convolutional = any(
            isinstance(m, nn.Conv2d) for stage in self.stage_modules() for m in stage.modules()
        )
        self.family = "cnn" if convolutional else "token"
        self._stages_chain: bool | None = None  # whether `forward_from` is the model's function; checked once

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

    def forward_from(self, stage_index: int, x: Tensor, features: bool = False) -> Tensor | Features:
        """Logits from `stages[stage_index]`: the later stage modules in order, then timm's
        `forward_head` (kdbench/models/resume.py).

        That is the model's own function only where its stages chain: each stage module takes the
        previous one's tap as it is and the head reads the last tap (timm's ResNets, ConvNeXts,
        RegNets). Where they do not (a ViT's or a Mixer's taps are reshaped tokens; a Swin's
        are permuted and normed; an EfficientNet has blocks between its taps), ConfigError. Which
        it is is checked once, on a probe batch of `image_shape` images in eval mode, against
        `forward` (nothing random is drawn and nothing in the model changes)."""
        check_stage_index(stage_index, len(self._stage_names))
        if self._stages_chain is None:
            self._stages_chain = self._check_stages_chain()
        if not self._stages_chain:
            raise ConfigError(
                f"timm model '{self.model.default_cfg.get('architecture', type(self.model).__name__)}': "
                "its stages do not chain (a stage does not read the previous stage's tap as it is, or "
                "the head does not read the last one), so it cannot be run from a stage output"
            )
        later = self._run_stages_from(stage_index, x)
        final = later[-1] if later else x
        pooled = self.model.forward_head(final, pre_logits=True)
        return resumed(self.model.forward_head(final), pooled, later, features)

    def _run_stages_from(self, stage_index: int, x: Tensor) -> list[Tensor]:
        later = []
        for stage in self.stage_modules()[stage_index + 1 :]:
            x = stage(x)
            later.append(x)
        return later

    def _check_stages_chain(self) -> bool:
        probe = torch.randn(2, *self.image_shape, generator=torch.Generator().manual_seed(0))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                features = self(probe.to(next(self.parameters()).device), features=True)
                for index, stage in enumerate(features.stages):
                    try:
                        later = self._run_stages_from(index, stage)
                        logits = self.model.forward_head(later[-1] if later else stage)
                    except (RuntimeError, ValueError, AssertionError):  # a token block given a map
                        return False
                    if logits.shape != features.logits.shape or not torch.allclose(
                        logits, features.logits, rtol=1e-4, atol=1e-5
                    ):
                        return False
            return True
        finally:
            self.train(was_training)


def takes_image_size(name: str) -> bool:
    """Whether timm builds `name` for one input size (`img_size`, as its ViTs, Swins and Mixers): its
    pretrained configuration says `fixed_input_size`."""
    config = timm.get_pretrained_cfg(name)
    return bool(config and config.fixed_input_size)


# `timm:NAME@key=value@key=value`: keyword arguments for timm's constructor, in the model's name so a
# spec's `student` / `teacher` says which configuration it is (`@`: the command line already splits at
# `,` and `:`); a value of numbers joined by `-` is a tuple (depths=1-1-1-1)
ARGUMENT_SEPARATOR = "@"


def _argument_value(text: str) -> object:
    def number(item: str) -> int | float:
        return int(item) if item.lstrip("+").isdigit() else float(item)

    if text in ("true", "false"):
        return text == "true"
    try:
        parts = [number(item) for item in text.split("-")]
    except ValueError:
        return text
    return parts[0] if len(parts) == 1 else tuple(parts)


def split_arguments(name: str) -> tuple[str, dict]:
    """'NAME@key=value@...' as (NAME, {key: value}); a ConfigError naming an argument without `=`."""
    base, *items = name.split(ARGUMENT_SEPARATOR)
    arguments = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key or not value:
            raise ConfigError(
                f"timm model 'timm:{name}': argument {item!r} is not key=value "
                "(write timm:NAME@key=value@key=value, a tuple as 1-1-1-1)"
            )
        arguments[key] = _argument_value(value)
    return base, arguments


def build_timm_model(
    name: str, num_classes: int, in_chans: int = 3, image_size: int | tuple[int, int] | None = None
) -> TimmModel:
    """`timm.create_model(name, pretrained=False, ...)` wrapped; UnknownNameError for a name timm lacks.

    `name` may carry constructor arguments after `@` (`split_arguments`: a tiny configuration,
    `swin_tiny_patch4_window7_224@embed_dim=24@depths=1-1-1-1@num_heads=1-2-4-8`); one the model does not
    take is a ConfigError. A model of a fixed input size (`takes_image_size`) is built for `image_size`
    ((height, width) or a side; timm's `img_size`); others take any size. A model timm cannot tap is
    refused (ConfigError)."""
    full_name = name
    name, arguments = split_arguments(name)
    if not timm.is_model(name):
        valid = timm.list_models()
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean 'timm:{close[0]}'?" if close else ""
        raise UnknownNameError(
            f"unknown timm model '{name}'.{hint} timm has {len(valid)} architectures: see timm.list_models()"
        )
    options = {"img_size": image_size} if image_size is not None and takes_image_size(name) else {}
    try:
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **options, **arguments
        )
    except TypeError as error:  # an argument the constructor does not take, or one its factory fixes
        if not arguments:
            raise
        raise ConfigError(f"timm model 'timm:{full_name}': {error}") from error
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(
            f"timm model 'timm:{full_name}' has no forward_intermediates: kdbench cannot tap its features; "
            "choose another model"
        )
    size = image_size if image_size is not None else model.pretrained_cfg.get("input_size", (3, 224, 224))[1:]
    height, width = (size, size) if isinstance(size, int) else size
    return TimmModel(model, (in_chans, height, width), full_name)
