"""The model zoo: CIFAR-style networks with RepDistiller's state_dict keys, plus any timm model.

    build_model("resnet8x4", num_classes=100)            # zoo name (see list_models())
    build_model("MobileNetV2", num_classes=100)          # mdistiller's name: kdbench's mobile_half
    build_model("timm:resnet18", num_classes=10, in_chans=1)   # any timm architecture, no weights

Every model has `forward(x, features=False) -> Tensor | Features`, `stage_modules()` and
`forward_from(stage_index, x)`, its logits from a stage output (kdbench/models/resume.py; a timm model
whose stages do not chain refuses it).
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

from kdbench.core.registries import MODELS, lookup, register_model_alias
from kdbench.models import hme, mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401

TIMM_PREFIX = "timm:"

# Other code bases' names for zoo models. RepDistiller's `model_dict` (models/__init__.py) and
# mdistiller's `cifar_model_dict` (mdistiller/models/cifar/__init__.py) otherwise use kdbench's own
# names (resnet8 ... resnet110, resnet8x4, resnet32x4, ResNet50, wrn_16_1 ... wrn_40_2, vgg8 ... vgg19,
# mobile_half, ShuffleV1, ShuffleV2); their mobile_full and ResNet18 have no kdbench model.
ALIASES = {
    "MobileNetV2": "mobile_half",  # mdistiller's name for RepDistiller's mobile_half
    # RepDistiller's and mdistiller's factory functions behind vgg8 ... vgg19 (models/vgg.py)
    "vgg8_bn": "vgg8",
    "vgg11_bn": "vgg11",
    "vgg13_bn": "vgg13",
    "vgg16_bn": "vgg16",
    "vgg19_bn": "vgg19",
}
for _alias, _name in ALIASES.items():
    register_model_alias(_alias, _name)


def build_model(
    name: str, num_classes: int, in_chans: int = 3, image_size: int | tuple[int, int] | None = None
) -> nn.Module:
    """Build a zoo model by registry name (or alias), or a timm model named `timm:<timm name>` (random init).

    image_size: the (height, width) or side of the images it will see (`DatasetInfo.image_size`); a timm
    model of a fixed input size is built for it (zoo models take any size). None: the model's default."""
    if name.startswith(TIMM_PREFIX):
        from kdbench.models.timm_adapter import build_timm_model  # imports timm only when asked

        return build_timm_model(
            name[len(TIMM_PREFIX) :], num_classes=num_classes, in_chans=in_chans, image_size=image_size
        )
    return lookup(MODELS, "model", name)(num_classes=num_classes, in_chans=in_chans)


def list_models() -> list[str]:
    """The zoo's registered names (timm models are reached with the `timm:` prefix; aliases: ALIASES)."""
    return sorted(MODELS.module_dict)


def fit_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` keyed as `model` expects: a timm model's weights saved by timm (no adapter `model.` prefix)
    get the prefix; everything else is unchanged."""
    adapter = sys.modules.get("kdbench.models.timm_adapter")  # imported wherever a timm model was built
    if (
        adapter is not None
        and isinstance(model, adapter.TimmModel)
        and not any(k.startswith("model.") for k in state)
    ):
        return {f"model.{key}": value for key, value in state.items()}
    return state


def weights_mismatch(model: nn.Module, state: dict[str, Tensor]) -> str | None:
    """Why `state` does not load into `model` strictly (missing / unexpected keys, first shape that
    differs), or None when it does."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = {key: tuple(value.shape) for key, value in fit_state_dict(model, state).items()}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else ""]
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})" if unexpected else ""]
        return ", ".join(part for part in parts if part)
    for key, shape in expected.items():
        if given[key] != shape:
            return f"{key} has shape {list(given[key])} in the file, {list(shape)} in the model"
    return None


def load_weights(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Load `state` into `model` strictly (timm's own keys accepted for a `timm:` model)."""
    model.load_state_dict(fit_state_dict(model, state), strict=True)
    return model
