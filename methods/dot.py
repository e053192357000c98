"""DOT: Zhao, Cui, Song & Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023 (arXiv 2307.08436).

DOT changes the optimiser, not the loss: KD's two terms keep their own momentum buffers, the
distillation term a larger momentum than the task term, so the update follows the distillation
gradient more steadily (paper, Sec. 4). With beta the recipe's SGD momentum, Delta = `delta`,
g_task = grad CE, g_kd = grad of the distillation terms, lambda the weight decay and eta the lr:

    v_task <- (beta - Delta) v_task + g_task + lambda theta
    v_kd   <- (beta + Delta) v_kd   + g_kd
    theta  <- theta - eta v_task - eta v_kd

The loss is KD's: ce_weight * CE + kd_weight * T^2 KL (methods/kd.py).

Followed from the authors' code, mdistiller commit a08d46f (mdistiller/engine/dot.py,
`DistillationOrientedTrainer` and `dot`; mdistiller/engine/trainer.py, class `DOT`), where the
paper leaves it open:
- two backward passes per step: the distillation loss first (graph retained), its gradients put
  aside (`step_kd`), then the task loss, then one update with both (`step`);
- the task term is the loss the distiller names `loss_ce`; every other term is distillation
  (kdbench: the term "ce" is the task; "kd" and any wrapper's terms, VAM's, are distillation);
- weight decay goes into the task buffer; a parameter with no task gradient takes it into its
  distillation buffer instead, except on that buffer's first step (the code clones the bare
  gradient there);
- a parameter with only one of the two gradients updates that buffer with the mean momentum
  (beta - Delta + beta + Delta) / 2 = beta;
- a buffer's first step is the gradient itself (SGD's convention), no dampening, no Nesterov.

Defaults: Delta = 0.075 (mdistiller/engine/cfg.py, SOLVER.DOT.DELTA; configs/cifar100/dot/*.yaml),
beta the recipe's momentum (0.9 there: task 0.825, distillation 0.975); the KD weights are the
KD node of the same cfg.py (CE_WEIGHT 0.1, KD_WEIGHT 0.9, TEMPERATURE 4), which the DOT configs
use (DISTILLER.TYPE "KD").

kdbench runs DOT through the method's optimizer hooks (`build_optimizer`, `optimizer_step` in
methods/base.py); the loop knows nothing of it. Under fp16 each pass goes through the member's
gradient scaler: a pass whose gradients overflow is skipped as a scaled step is (its gradients
are not used), the other one still applies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdbench.core.errors import ConfigError

from .base import FeatureShapes, Method, register_method, require_same_classes

# the loss terms DOT treats as the task; every other term is distillation
TASK_TERMS = frozenset({"ce"})


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """mdistiller's `DistillationOrientedTrainer` over any number of parameter groups: `momentum`
    for the task gradients, `momentum_kd` for the distillation gradients. The distillation
    gradients are recorded by a step of `distillation_pass` (so that a gradient scaler unscales
    them as any step's), the task gradients are those in `.grad` at `step()`."""

    def __init__(self, params, *, lr: float, momentum: float, momentum_kd: float, weight_decay: float):
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "momentum_kd": momentum_kd, "weight_decay": weight_decay}
        )
        self.distillation_grads: dict[int, Tensor] = {}
        self.distillation_pass = _DistillationPass(self)

    @torch.no_grad()
    def record_distillation_gradients(self) -> None:
        """Keep the gradients now in `.grad` as the distillation gradients of the coming `step()`."""
        self.distillation_grads = {
            id(p): p.grad for group in self.param_groups for p in group["params"] if p.grad is not None
        }

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            task_momentum, kd_momentum = group["momentum"], group["momentum_kd"]
            single_momentum = (task_momentum + kd_momentum) / 2.0
            for p in group["params"]:
                task_grad, kd_grad = p.grad, self.distillation_grads.get(id(p))
                state = self.state[p]
                if task_grad is not None:
                    update = task_grad.add(p, alpha=decay) if decay else task_grad
                    if task_momentum != 0:
                        update = _momentum(
                            state,
                            "momentum_buffer",
                            update,
                            task_momentum if kd_grad is not None else single_momentum,
                        )
                    p.add_(update, alpha=-lr)
                if kd_grad is not None:
                    if "momentum_kd_buffer" in state and task_grad is None and decay:
                        kd_grad = kd_grad.add(p, alpha=decay)
                    update = _momentum(
                        state,
                        "momentum_kd_buffer",
                        kd_grad,
                        kd_momentum if task_grad is not None else single_momentum,
                    )
                    p.add_(update, alpha=-lr)
        self.distillation_grads = {}
        return loss


def _momentum(state: dict, key: str, gradient: Tensor, momentum: float) -> Tensor:
    """The buffer `state[key]` after one step: the gradient itself first, then momentum * buffer + gradient."""
    buffer = state.get(key)
    if buffer is None:
        buffer = state[key] = torch.clone(gradient).detach()
    else:
        buffer.mul_(momentum).add_(gradient)
    return buffer


class _DistillationPass:
    """The optimizer a distillation backward steps: its step records the gradients (mdistiller's
    `step_kd`) and updates nothing. It shows the trainer's groups, so a gradient scaler unscales
    and checks them as it does a real step's."""

    def __init__(self, trainer: DistillationOrientedTrainer):
        self.trainer = trainer

    @property
    def param_groups(self) -> list[dict]:
        return self.trainer.param_groups

    def step(self) -> None:
        self.trainer.record_distillation_gradients()


@register_method
class DOT(Method):
    """KD trained with separate momenta for the task and the distillation gradients."""

    name = "dot"
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9, "method_weight": 0.0, "temperature": 4.0, "delta": 0.075}

    @classmethod
    def check_pair(cls, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes | None) -> None:
        require_same_classes("dot", student_shapes, teacher_shapes)

    def build_optimizer(self, groups: list[dict], recipe) -> DistillationOrientedTrainer:
        delta = self.hp["delta"]
        task_momentum, kd_momentum = recipe.momentum - delta, recipe.momentum + delta
        if not task_momentum >= 0.0 or not kd_momentum < 1.0:
            raise ConfigError(
                f"dot.delta={delta}: the momenta momentum-delta={task_momentum:g} and momentum+delta="
                f"{kd_momentum:g} must lie in [0, 1) (momentum {recipe.momentum:g})"
            )
        return DistillationOrientedTrainer(
            groups,
            lr=recipe.lr,
            momentum=task_momentum,
            momentum_kd=kd_momentum,
            weight_decay=recipe.weight_decay,
        )

    def optimizer_step(self, terms: dict[str, Tensor], optimizer, backward_step) -> None:
        """The distillation terms' backward and recording, then the task terms' backward and the
        update (mdistiller/engine/trainer.py, `DOT.train_iter`); a side without terms is skipped."""
        distillation = [value for name, value in terms.items() if name not in TASK_TERMS]
        task = [value for name, value in terms.items() if name in TASK_TERMS]
        optimizer.zero_grad(set_to_none=True)
        if distillation:
            backward_step(sum(distillation), optimizer.distillation_pass, retain_graph=bool(task))
            optimizer.zero_grad(set_to_none=True)
        if task:
            backward_step(sum(task), optimizer)
        else:
            optimizer.step()
