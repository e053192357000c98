"""`forward_from` (kdbench/models/resume.py): every zoo model, the HME and the timm adapter resume from
any of their stage outputs to their own logits, and leave the stage tensor as it was."""

from __future__ import annotations

import pytest
import torch

from kdbench.core.errors import ConfigError
from kdbench.models import build_model, list_models

ZOO = [name for name in list_models() if name not in ("hme", "hme_small")]


def resumed_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(model(x), [forward_from(i, stages[i]) for every stage i]), without gradients; checks on the
    way that `features=True` gives the same logits, the model's pooled vector and its later stages."""
    with torch.no_grad():
        logits = model(x)
        features = model(x, features=True)
        resumed = []
        for index, stage in enumerate(features.stages):
            kept = stage.clone()
            resumed.append(model.forward_from(index, stage))
            torch.testing.assert_close(stage, kept, rtol=0, atol=0)  # nothing in place on the input
            run = model.forward_from(index, stage, features=True)
            torch.testing.assert_close(run.logits, resumed[-1], rtol=0, atol=0)
            torch.testing.assert_close(run.pooled, features.pooled, rtol=0, atol=0)
            assert len(run.stages) == len(features.stages) - index - 1
            for later, expected in zip(run.stages, features.stages[index + 1 :], strict=True):
                torch.testing.assert_close(later, expected, rtol=0, atol=0)
    return logits, resumed


@pytest.mark.parametrize("side", [32, 28])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_resumes_from_every_stage_exactly(name, side):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).eval()
    logits, resumed = resumed_logits(model, torch.randn(2, 3, side, side))
    for index, from_stage in enumerate(resumed):
        torch.testing.assert_close(from_stage, logits, rtol=0, atol=0, msg=f"{name} from stage {index}")


def test_vgg_resumes_with_pool3_on_larger_images():
    """VGG pools after its third block only for inputs above 32 px (RepDistiller's Tiny-ImageNet)."""
    torch.manual_seed(0)
    model = build_model("vgg8", num_classes=10).eval()
    logits, resumed = resumed_logits(model, torch.randn(2, 3, 64, 64))
    for from_stage in resumed:
        torch.testing.assert_close(from_stage, logits, rtol=0, atol=0)


def test_resuming_from_the_wrong_stage_gives_other_logits():
    """A stage skipped or run twice changes the logits (where the shapes even allow it)."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, stages = model(x), model(x, features=True).stages
        # stage 0's output given as stage 1's: layer3 cannot read layer1's 16-channel map
        with pytest.raises(RuntimeError):
            model.forward_from(1, stages[0])
        assert not torch.allclose(model.forward_from(2, stages[2] * 1.5), logits)


@pytest.mark.parametrize("name", ["resnet8", "hme_small", "vgg8"])
def test_stage_index_out_of_range_is_refused(name):
    model = build_model(name, num_classes=10).eval()
    stages = model(torch.randn(1, 3, 32, 32), features=True).stages
    with pytest.raises(
        IndexError, match=rf"stage_index {len(stages)}: the model has stages 0\.\.{len(stages) - 1}"
    ):
        model.forward_from(len(stages), stages[-1])
    with pytest.raises(IndexError, match="stage_index -1"):
        model.forward_from(-1, stages[-1])


@pytest.mark.parametrize("hard", [False, True])
def test_hme_resumes_with_its_routing(hard):
    torch.manual_seed(0)
    model = build_model("hme_small", num_classes=10).eval()
    model.set_epoch(3 if hard else 1, 4)  # soft routing at t0 / 1, then the arg-max tree
    logits, resumed = resumed_logits(model, torch.randn(2, 3, 32, 32))
    for from_stage in resumed:
        torch.testing.assert_close(from_stage, logits, rtol=0, atol=0)


def test_forward_from_carries_gradients_to_the_stage_tensor():
    torch.manual_seed(0)
    model = build_model("ShuffleV2", num_classes=10).train()
    stage = model(torch.randn(2, 3, 32, 32), features=True).stages[0].detach().requires_grad_(True)
    model.forward_from(0, stage).sum().backward()
    assert stage.grad is not None and stage.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_convnext"])
def test_timm_model_whose_stages_chain_resumes(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, image_size=32).eval()
    logits, resumed = resumed_logits(model, torch.randn(2, 3, 32, 32))
    for from_stage in resumed:
        torch.testing.assert_close(from_stage, logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["timm:test_vit", "timm:test_efficientnet"])
def test_timm_model_whose_stages_do_not_chain_says_so(name):
    model = build_model(name, num_classes=10, image_size=32).train()
    stages = model(torch.randn(2, 3, 32, 32), features=True).stages
    rng = torch.get_rng_state()
    with pytest.raises(ConfigError, match="its stages do not chain"):
        model.forward_from(0, stages[0])
    assert model.training  # the check's eval-mode probe restored the mode
    assert torch.equal(torch.get_rng_state(), rng)  # and drew nothing from the global generator
