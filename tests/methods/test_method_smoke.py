"""Every registered method trains one epoch through the shared engine, with VAM off and on."""

import math

import pytest
import torch

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe, RunSpec
from kdbench.methods.base import method_class
from kdbench.training.engine import Trainer
from kdbench.wrappers import virtual_attention
from kdbench.wrappers.vam import VAMConfig

ALL_METHODS = sorted(name for name in METHODS.module_dict if "+" not in name) + ["crd+kd"]


def test_at_least_seventeen_methods():
    assert len(ALL_METHODS) >= 17


def test_the_cuda_battery_trains_every_method():
    """tests/training/test_cuda.py collects its methods on its own (a fresh process: no other module has
    registered them for it), so on a GPU every method trains."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parents[1]  # tests/: conftest.py there, test_cuda.py in training/
    code = "import sys; sys.path[:0] = ['training', '.']; import test_cuda; print(','.join(test_cuda.CUDA_METHODS))"
    printed = subprocess.run(
        [sys.executable, "-c", code], cwd=tests, capture_output=True, text=True, check=True
    ).stdout
    assert printed.strip().split(",") == [name for name in ALL_METHODS if "+" not in name]


@pytest.mark.parametrize("vam_on", [False, True], ids=["plain", "vam"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_trains_through_the_engine(method, vam_on, tiny_data, tiny_teacher, tmp_path):
    method_cls = method_class(method)
    spec = RunSpec(
        method=method,
        student="resnet8",
        teacher="resnet14" if method_cls.needs_teacher else None,
        dataset="synthetic",
        wrappers={"vam": VAMConfig()} if vam_on else {},
        hp=method_cls.resolve_hp(),
        recipe=Recipe(epochs=1, batch_size=32, lr_decay_epochs=()),
    )
    trainer = Trainer(
        spec,
        tiny_data,
        teacher=tiny_teacher if method_cls.needs_teacher else None,
        device=torch.device("cpu"),
        out=tmp_path,
        progress=lambda line: None,
        time_probe=not vam_on,  # every method's cost probe runs once (its twins built), with VAM off
    )
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    result = trainer.run()
    assert math.isfinite(result["history"][0]["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.student.state_dict().items())
    overhead = result["overhead"]
    own_params = sum(p.numel() for p in trainer.method.parameters() if p.requires_grad)
    vam_params = (
        4 * 4 * len(virtual_attention.attention_modules(trainer.student))
    )  # G x G attention logits per wrapped conv, G = 4
    assert overhead["extra_trainable_params"] == own_params + vam_params
    assert (result["vam"] is not None) == vam_on
