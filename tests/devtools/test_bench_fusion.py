"""`kdbench bench`'s fusion measures (kdbench/devtools/bench.py, fusion_styles.py): the HFTA model computes
each member's own logits, a model it does not cover is left out, and the board is extrapolated from
images/s (timings themselves are never asserted)."""

import pytest
import torch

from kdbench.devtools.bench import BOARD_IMAGES, _board_rows
from kdbench.devtools.fusion_styles import fusion_steps
from kdbench.models import build_model
from kdbench.training.fused_channels import NotFusable, hfta_model


def test_the_hfta_model_is_its_members_and_trains_them():
    torch.manual_seed(0)
    models = [build_model("resnet8", num_classes=10, in_chans=3) for _ in range(3)]
    fused = hfta_model(models)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():  # train mode: batch statistics, each member's own channels
        together = fused(images.repeat(1, 3, 1, 1)).reshape(4, 3, -1)
        for index, model in enumerate(models):
            assert torch.allclose(together[:, index], model(images), rtol=1e-4, atol=1e-5)
    batches = [(images, torch.tensor([0, 1, 2, 3]))]
    works = fusion_steps("resnet8", batches, 10, 3, 2, torch.contiguous_format)
    assert list(works) == ["one after another", "vmap", "hfta"]
    for work in works.values():
        work()


def test_a_layer_hfta_does_not_group_is_refused():
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm(4)) for _ in range(2)]
    with pytest.raises(NotFusable, match="LayerNorm"):
        hfta_model(models)


def test_the_board_is_extrapolated_from_images_per_second():
    rows = [
        {"measure": "classic", "images_per_s": 1000.0},
        {"measure": "fused", "images_per_s": 4000.0},
    ]
    classic, fused = _board_rows(rows, "classic", "fused")
    assert classic["gpu_hours"] == pytest.approx(BOARD_IMAGES / 1000 / 3600)
    assert fused["gpu_hours"] == pytest.approx(classic["gpu_hours"] / 4)
    assert fused["reference"] == classic["measure"] and fused["throughput_x"] == pytest.approx(4.0)
    assert BOARD_IMAGES == 468_000_000  # issue 24's 468 M training images
