"""The optimizer hooks of the Method contract (methods/base.py, `build_optimizer`, `optimizer_step`):
the member builds and steps its optimizer only through them, the default is RepDistiller's SGD
step, and DOT (methods/dot.py) trains through them alone, in fp32 and fp16, and resumes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe
from kdbench.methods.base import Method, register_method
from kdbench.methods.dot import DistillationOrientedTrainer


class _StepRecorder(Method):
    """Plain CE through its own optimizer (no momentum) and a step that records each call."""

    name = "step-recorder"
    needs_teacher = False
    steps: list = []

    def build_optimizer(self, groups, recipe):
        return torch.optim.SGD(groups, lr=recipe.lr)

    def optimizer_step(self, terms, optimizer, backward_step):
        self.steps.append(sorted(terms))
        super().optimizer_step(terms, optimizer, backward_step)


@pytest.fixture
def step_recorder():
    _StepRecorder.steps.clear()
    register_method(_StepRecorder)
    yield
    METHODS.module_dict.pop(_StepRecorder.name)


def test_the_member_builds_and_steps_through_the_methods_hooks(tiny_data, tmp_path, step_recorder):
    trainer = make_trainer(tiny_data, tmp_path, "step-recorder")
    assert trainer.optimizer.param_groups[0]["momentum"] == 0  # the method's optimizer, not the recipe's
    trainer.train_epoch(1)
    assert _StepRecorder.steps == [["ce"]] * 4  # 128 images, batch 32


def test_the_default_optimizer_is_the_recipes_sgd_and_steps_on_the_summed_loss(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, "kd", recipe=Recipe(lr=0.03, momentum=0.8, weight_decay=1e-3))
    (group,) = trainer.optimizer.param_groups
    assert type(trainer.optimizer) is torch.optim.SGD
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.03, 0.8, 1e-3)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(model.state_dict())
    images, labels = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    recipe = Recipe(lr=0.1, momentum=0.9, weight_decay=5e-4)
    hooked = trainer.method.build_optimizer([{"params": list(model.parameters())}], recipe)
    plain = torch.optim.SGD(copy.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def backward_step(loss, optimizer, retain_graph=False):
        loss.backward(retain_graph=retain_graph)
        optimizer.step()

    for _ in range(2):
        logits = model(images)
        terms = {"ce": torch.nn.functional.cross_entropy(logits, labels), "kd": logits.square().mean()}
        trainer.method.optimizer_step(terms, hooked, backward_step)
        plain.zero_grad()
        logits = copy(images)
        (torch.nn.functional.cross_entropy(logits, labels) + logits.square().mean()).backward()
        plain.step()
    for mine, theirs in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dot_trains_through_the_hooks_with_both_buffers(tiny_data, tmp_path, precision):
    trainer = make_trainer(tiny_data, tmp_path, "dot", precision=precision)
    assert isinstance(trainer.optimizer, DistillationOrientedTrainer)
    trainer.train_epoch(1)
    buffers = [trainer.optimizer.state[p] for p in trainer.student.parameters()]
    assert all({"momentum_buffer", "momentum_kd_buffer"} <= set(state) for state in buffers)
    assert all(torch.isfinite(state["momentum_kd_buffer"]).all() for state in buffers)
    assert trainer.optimizer.distillation_grads == {}  # used by the step, not kept


def test_dot_resumes_both_buffers_from_a_checkpoint(tiny_data, tmp_path):
    first = make_trainer(tiny_data, tmp_path, "dot")
    first.train_epoch(1)
    first.save_checkpoint(1)
    second = make_trainer(tiny_data, tmp_path, "dot")
    assert second.try_resume()
    for mine, theirs in zip(first.student.parameters(), second.student.parameters(), strict=True):
        for key in ("momentum_buffer", "momentum_kd_buffer"):
            assert torch.equal(first.optimizer.state[mine][key], second.optimizer.state[theirs][key])
