"""The model zoo: shapes, feature taps, RepDistiller parameter counts and state_dict keys, timm adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import UnknownNameError
from kdbench.models import build_model, list_models

ZOO = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16",
    "vgg19", "mobile_half", "ShuffleV1", "ShuffleV2", "ResNet50",
]  # fmt: skip

# Parameters with 100 classes, in millions: RepDistiller / CRD (Tian et al., ICLR 2020) published figures.
PUBLISHED_PARAMS_M = {
    "resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26, "vgg8": 3.96, "vgg13": 9.46,
    "ResNet50": 23.71, "mobile_half": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}  # fmt: skip

# Keys (with shapes, num_classes=100) read off RepDistiller's models/*.py, and keys that must NOT exist.
SENTINELS = {
    "resnet8x4": (
        {"conv1.weight": (32, 3, 3, 3), "layer1.0.downsample.0.weight": (64, 32, 1, 1),
         "layer3.0.downsample.1.running_var": (256,), "layer3.0.conv2.weight": (256, 256, 3, 3),
         "fc.weight": (100, 256)},
        ["avgpool.weight", "layer3.0.downsample.2.weight"],
    ),
    "resnet56": (
        {"layer1.8.conv2.weight": (16, 16, 3, 3), "layer2.0.downsample.0.weight": (32, 16, 1, 1),
         "layer3.8.bn2.num_batches_tracked": ()},
        ["layer1.0.downsample.0.weight", "layer1.9.conv1.weight"],
    ),
    "wrn_40_2": (
        {"conv1.weight": (16, 3, 3, 3), "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
         "block1.layer.0.bn1.weight": (16,), "block3.layer.5.conv2.weight": (128, 128, 3, 3),
         "bn1.running_mean": (128,), "fc.weight": (100, 128)},
        ["block1.layer.1.convShortcut.weight", "block3.layer.6.conv1.weight"],
    ),
    "wrn_16_1": (
        {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1), "block3.layer.1.bn2.running_var": (64,)},
        ["block1.layer.0.convShortcut.weight"],
    ),
    "vgg8": (
        {"block0.0.weight": (64, 3, 3, 3), "block0.0.bias": (64,), "block0.1.running_mean": (64,),
         "block4.0.weight": (512, 512, 3, 3), "block4.1.weight": (512,), "classifier.weight": (100, 512)},
        ["block0.3.weight", "pool4.weight"],
    ),
    "vgg13": (
        {"block0.3.weight": (64, 64, 3, 3), "block2.3.bias": (256,), "block4.4.running_var": (512,)},
        ["block4.6.weight"],
    ),
    "mobile_half": (
        {"conv1.0.weight": (16, 3, 3, 3), "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
         "blocks.1.0.conv.3.weight": (48, 1, 3, 3), "blocks.6.0.conv.7.running_var": (160,),
         "conv2.0.weight": (1280, 160, 1, 1), "classifier.0.weight": (100, 1280)},
        ["blocks.7.0.conv.0.weight", "classifier.1.weight"],
    ),
    "ShuffleV1": (
        {"conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (54, 24, 1, 1),
         "layer1.0.conv3.weight": (216, 18, 1, 1), "layer2.7.conv2.weight": (120, 1, 3, 3),
         "layer3.3.bn3.running_mean": (960,), "linear.weight": (100, 960)},
        ["layer3.4.conv1.weight", "fc.weight"],
    ),
    "ShuffleV2": (
        {"layer1.0.conv1.weight": (24, 1, 3, 3), "layer1.0.conv5.weight": (58, 58, 1, 1),
         "layer2.7.conv3.weight": (116, 116, 1, 1), "layer3.3.bn3.weight": (232,),
         "conv2.weight": (1024, 464, 1, 1), "bn2.running_var": (1024,), "linear.weight": (100, 1024)},
        ["layer1.1.conv4.weight", "layer3.4.conv1.weight"],
    ),
    "ResNet50": (
        {"conv1.weight": (64, 3, 3, 3), "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
         "layer4.0.shortcut.1.running_mean": (2048,), "layer4.2.conv3.weight": (2048, 512, 1, 1),
         "linear.weight": (100, 2048)},
        ["layer1.1.shortcut.0.weight", "fc.weight"],
    ),
}  # fmt: skip


def repdistiller_cifar_resnet_keys(depth: int, widths: list[int]) -> set[str]:
    """Every state_dict key of RepDistiller's `ResNet(depth, widths, 'basicblock')`, from its source."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{k}" for k in bn), "fc.weight", "fc.bias"}
    n, inplanes = (depth - 2) // 6, widths[0]
    for s, planes in enumerate(widths[1:], start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
            keys |= {f"{p}.bn{j}.{k}" for j in (1, 2) for k in bn}
            if i == 0 and (s > 1 or inplanes != planes):
                keys |= {f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{k}" for k in bn)}
        inplanes = planes
    return keys


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    """One eval-mode instance per zoo model with 100 classes, built once for the module."""
    return {name: build_model(name, num_classes=100).eval() for name in ZOO}


def test_list_models_is_the_zoo_plus_the_explainer_hme():
    # KDExplainer's HME (kdbench/models/hme.py) registers as a model so the shared engine trains it
    assert sorted(ZOO + ["hme", "hme_small"]) == list_models()


@pytest.mark.parametrize("name", ZOO)
def test_forward_and_features(zoo, name):
    model = zoo[name]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model(x, features=True)
    assert isinstance(feats, Features)
    assert logits.shape == (2, 100)
    torch.testing.assert_close(feats.logits, logits, rtol=0, atol=0)
    stages = model.stage_modules()
    assert len(feats.stages) == len(feats.preact) == len(stages) >= 3
    assert feats.stem is not None and feats.stem.shape[0] == 2
    for s, p in zip(feats.stages, feats.preact, strict=True):
        assert s.dim() == 4 and s.shape == p.shape
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert feats.pooled.shape == (2, classifier.in_features)
    # spatial size never grows from one stage to the next
    sizes = [s.shape[-1] for s in feats.stages]
    assert sizes == sorted(sizes, reverse=True)
    # stage modules: disjoint parts of the model, each with convolutions
    params = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    for stage in stages:
        ids = {id(p) for p in stage.parameters()}
        assert ids <= params and not ids & seen
        assert any(isinstance(m, nn.Conv2d) for m in stage.modules())
        seen |= ids


SMALL_ONE_OF_EACH = ["resnet8", "resnet20", "resnet8x4", "wrn_16_1", "vgg8", "mobile_half", "ShuffleV2"]


@pytest.mark.parametrize("name", SMALL_ONE_OF_EACH)
def test_fashion_mnist_single_channel_28px(name):
    model = build_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 1, 28, 28), features=True)
    assert feats.logits.shape == (2, 10)
    shapes = FeatureShapes.of(feats)
    assert len(shapes.stages) == len(model.stage_modules())
    assert shapes.stem is not None and shapes.stem[-1] in (28, 14)  # stride-1 or stride-2 stem
    # in_chans changes only the first conv: the keys are the 3-channel model's
    assert model.state_dict().keys() == build_model(name, num_classes=10).state_dict().keys()


@pytest.mark.parametrize(
    "name",
    ["resnet14", "resnet32", "resnet44", "resnet56", "resnet110", "resnet32x4", "ShuffleV1", "ResNet50"],
)
def test_single_channel_forward_rest(name):
    model = build_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8", "ShuffleV2"])
def test_features_do_not_change_training_forward(name):
    """In train mode too: same logits and same BN running statistics with or without the taps."""
    plain = build_model(name, num_classes=10).train()
    tapped = copy.deepcopy(plain)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tapped(x, features=True).logits, plain(x), rtol=0, atol=0)
    for a, b in zip(plain.state_dict().values(), tapped.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_count_matches_repdistiller(zoo, name):
    count = sum(p.numel() for p in zoo[name].parameters()) / 1e6
    assert count == pytest.approx(PUBLISHED_PARAMS_M[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(SENTINELS))
def test_repdistiller_keys_and_strict_load(zoo, name):
    present, absent = SENTINELS[name]
    state = zoo[name].state_dict()
    for key, shape in present.items():
        assert tuple(state[key].shape) == shape, key
    assert not set(absent) & state.keys()
    # a RepDistiller-style checkpoint ({"model": state_dict}) loads strictly into a fresh instance
    ckpt = {"model": {k: v.clone() for k, v in state.items()}}
    fresh = build_model(name, num_classes=100)
    fresh.load_state_dict(ckpt["model"], strict=True)


@pytest.mark.parametrize(
    ("name", "depth", "widths"),
    [
        ("resnet8", 8, [16, 16, 32, 64]),
        ("resnet56", 56, [16, 16, 32, 64]),
        ("resnet8x4", 8, [32, 64, 128, 256]),
    ],
)
def test_cifar_resnet_has_exactly_repdistillers_keys(zoo, name, depth, widths):
    assert set(zoo[name].state_dict()) == repdistiller_cifar_resnet_keys(depth, widths)


def test_unknown_zoo_name():
    with pytest.raises(UnknownNameError) as err:
        build_model("resnet21", num_classes=10)
    msg = str(err.value)
    assert "unknown model 'resnet21'" in msg and "Did you mean" in msg and "resnet8x4" in msg


def test_timm_adapter_features():
    model = build_model("timm:test_resnet", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model(x, features=True)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(feats.logits, logits, rtol=0, atol=0)
    assert feats.stem is not None and feats.stem.shape[-1] == 16  # timm resnet: act1 tap, stride 2
    assert len(feats.stages) == len(model.stage_modules()) == 4
    assert feats.stages[-1].shape[1] == feats.pooled.shape[1]
    assert model.stage_modules()[-1] is model.model.layer4


def test_timm_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'timm:resnet18'"):
        build_model("timm:resnet18x", num_classes=10)
