"""DOT (Zhao et al., ICCV 2023, methods/dot.py): task and distillation gradients with their own
momenta, m - delta and m + delta, through the method's optimizer hooks.

The update is checked against mdistiller's rules (mdistiller/engine/dot.py, commit a08d46f)
written out here in plain Python on three scalar parameters: one with only a task gradient, one
with both, one with only a distillation gradient."""

from __future__ import annotations

import pytest
import torch

from kdbench.core.errors import ConfigError
from kdbench.core.features import FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe
from kdbench.methods.base import MethodContext, PairNotSupportedError
from kdbench.methods.dot import DistillationOrientedTrainer

SHAPES = FeatureShapes(None, (), (), (2,), (3,))
LR, MOMENTUM, DECAY, DELTA = 0.1, 0.9, 0.01, 0.075
START = {"a": 0.7, "w": -0.4, "c": 1.3}


def build(**overrides):
    cls = METHODS.get("dot")
    return cls(
        cls.resolve_hp(overrides), MethodContext(SHAPES, SHAPES, 3, 8, torch.zeros(8, dtype=torch.long))
    )


def plain_backward_step(loss, optimizer, retain_graph=False):
    """The member's backward and step without a scaler or distributed averaging."""
    loss.backward(retain_graph=retain_graph)
    optimizer.step()


def task_loss(a, w):  # "ce": reaches a and w
    return (a * w - 1.0) ** 2


def distillation_loss(w, c):  # "kd": reaches w and c
    return (w * c - 2.0) ** 2


def gradients_by_hand(v):
    task_a = 2 * (v["a"] * v["w"] - 1.0) * v["w"]
    task_w = 2 * (v["a"] * v["w"] - 1.0) * v["a"]
    kd_w = 2 * (v["w"] * v["c"] - 2.0) * v["c"]
    kd_c = 2 * (v["w"] * v["c"] - 2.0) * v["w"]
    return {"a": task_a, "w": task_w}, {"w": kd_w, "c": kd_c}


def dot_steps_by_hand(steps: int) -> dict[str, float]:
    """mdistiller's update: task buffer (m - delta where the parameter has both gradients, else m)
    with weight decay; distillation buffer (m + delta where both, else m, with weight decay then,
    but not on its first step); a first step takes the gradient itself."""
    values, task_buffer, kd_buffer = dict(START), {}, {}
    for _ in range(steps):
        task, kd = gradients_by_hand(values)
        before = dict(values)
        for name, grad in task.items():
            grad += DECAY * before[name]
            momentum = MOMENTUM - DELTA if name in kd else MOMENTUM
            task_buffer[name] = grad if name not in task_buffer else momentum * task_buffer[name] + grad
            values[name] -= LR * task_buffer[name]
        for name, grad in kd.items():
            if name not in kd_buffer:
                kd_buffer[name] = grad
            elif name in task:
                kd_buffer[name] = (MOMENTUM + DELTA) * kd_buffer[name] + grad
            else:
                kd_buffer[name] = MOMENTUM * kd_buffer[name] + grad + DECAY * before[name]
            values[name] -= LR * kd_buffer[name]
    return values


def dot_steps(method, steps: int, decay: float = DECAY) -> dict[str, float]:
    params = {
        name: torch.tensor(value, dtype=torch.float64, requires_grad=True) for name, value in START.items()
    }
    recipe = Recipe(lr=LR, momentum=MOMENTUM, weight_decay=decay)
    optimizer = method.build_optimizer([{"params": list(params.values())}], recipe)
    for _ in range(steps):
        terms = {"ce": task_loss(params["a"], params["w"]), "kd": distillation_loss(params["w"], params["c"])}
        method.optimizer_step(terms, optimizer, plain_backward_step)
    return {name: p.item() for name, p in params.items()}


@pytest.mark.parametrize("steps", [1, 3])
def test_dot_steps_with_a_task_and_a_distillation_momentum(steps):
    assert dot_steps(build(), steps) == pytest.approx(dot_steps_by_hand(steps), rel=1e-12, abs=1e-12)


def test_dot_is_sgd_on_the_summed_loss_at_delta_zero_and_not_otherwise():
    """Without weight decay (whose first distillation step differs) and with delta 0, the two
    buffers sum to SGD's one; with delta 0.075 they do not."""
    params = {
        name: torch.tensor(value, dtype=torch.float64, requires_grad=True) for name, value in START.items()
    }
    sgd = torch.optim.SGD(params.values(), lr=LR, momentum=MOMENTUM)
    for _ in range(3):
        sgd.zero_grad()
        (task_loss(params["a"], params["w"]) + distillation_loss(params["w"], params["c"])).backward()
        sgd.step()
    summed = {name: p.item() for name, p in params.items()}
    assert dot_steps(build(delta=0.0), 3, decay=0.0) == pytest.approx(summed, rel=1e-12)
    assert dot_steps(build(), 3, decay=0.0)["w"] != pytest.approx(summed["w"], rel=1e-6)


def test_dot_is_kd_with_mdistillers_delta_and_its_own_optimizer():
    method = build()
    assert {k: method.hp[k] for k in ("ce_weight", "kd_weight", "temperature", "delta")} == {
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "temperature": 4.0,
        "delta": 0.075,
    }
    optimizer = method.build_optimizer([{"params": [torch.zeros(1, requires_grad=True)]}], Recipe())
    assert isinstance(optimizer, DistillationOrientedTrainer)
    (group,) = optimizer.param_groups
    assert (group["momentum"], group["momentum_kd"]) == pytest.approx((0.825, 0.975))
    assert not METHODS.get("dot").fuses


def test_dot_refuses_momenta_outside_zero_one_and_other_classes():
    with pytest.raises(ConfigError, match=r"dot.delta=0.2"):
        build(delta=0.2).build_optimizer([{"params": [torch.zeros(1, requires_grad=True)]}], Recipe())
    with pytest.raises(ConfigError, match=r"dot.delta=0.075"):
        build().build_optimizer([{"params": [torch.zeros(1, requires_grad=True)]}], Recipe(momentum=0.05))
    other = FeatureShapes(None, (), (), (2,), (4,))
    with pytest.raises(PairNotSupportedError, match="logits"):
        METHODS.get("dot").check_pair(SHAPES, other)
