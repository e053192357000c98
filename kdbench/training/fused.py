"""Fused members: the members of a stream that share a student architecture train as one batched model.

Opt-in (`--fuse on`; issue 24). The members of one stream of a cohort (kdbench/training/engine.py)
see the same batches; those whose method declares `fuses` (methods/base.py), with no wrappers, in
fp32, uncompiled, in one process, and whose method trains no parameters of its own, are grouped by
student architecture. A group holds its members' parameters and buffers stacked
(`torch.func.stack_module_state`) and runs one forward and one backward over all of them:
`torch.func.vmap` over `functional_call`, whose convolution batching rule is the grouped convolution
HFTA writes by hand, for any architecture. BatchNorm's running statistics are stacked buffers that
vmap updates in place, one slice per member. Each member's loss terms are its own method's, on its
own slice of the outputs; their sum's gradient on a member's slice is that member's own gradient.
One SGD over the stacked parameters, with the members' momentum, dampening, weight decay, nesterov
and current lr, is elementwise: each slice steps as the member's own optimizer would.

A group lives for one epoch of its stream: built from the members' students and optimizer state
after `begin_epoch` (so a fused member starts where its solo run starts, and resumes from its own
checkpoint), written back before `close_epoch` (parameters, buffers, momentum), so evaluation,
checkpoints, export and records read each member's own student as they do unfused. The fused
mathematics is the solo one; the numbers differ by floating-point reassociation only
(tests/training/test_fused.py measures the tolerance). Random draws inside the forward are refused
(`randomness="error"`): a member's stream cannot be reproduced inside a batched forward.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils._pytree import tree_map

from kdbench.core import distributed
from kdbench.core.features import Features
from kdbench.training.member import EpochMeter, Member, check_finite

Guard = Callable[[Member], AbstractContextManager]
FEATURE_FIELDS = ("logits", "pooled", "stem", "stages", "preact")


def fusable(member: Member) -> bool:
    """Whether `member` may train inside a fused group (else it steps alone, as unfused)."""
    spec = member.spec
    return (
        getattr(type(member.method), "fuses", False)
        and not member.wrappers
        and not member.extra_views
        and spec.precision == "fp32"
        and not spec.compile
        and distributed.world_size() == 1
        and not any(p.requires_grad for p in member.method.parameters())
        and not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in member.student.modules())
    )


def plan_groups(members: list[Member]) -> list[FusedGroup]:
    """The fused groups of a stream's members: fusable members by student architecture, two or more."""
    by_student: dict[str, list[Member]] = {}
    for member in members:
        if member.error is None and fusable(member):
            by_student.setdefault(member.spec.student, []).append(member)
    return [FusedGroup(group) for group in by_student.values() if len(group) > 1]


def _sgd_hyperparameters(member: Member) -> dict:
    (group,) = member.optimizer.param_groups  # no wrappers: one group, the student's parameters
    return {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")}


class FusedGroup:
    """Members of one student architecture, stacked; `step` trains them all on a batch."""

    def __init__(self, members: list[Member]):
        self.members = members
        # each member's lr this epoch included (its scheduler steps at its `close_epoch`); one recipe
        # per cohort, so a difference is a bug
        hyper = [_sgd_hyperparameters(m) for m in members]
        if any(h != hyper[0] for h in hyper):
            raise RuntimeError(f"fused members' optimizers differ: {hyper}")
        self.fields = members[0].student_features
        self.template = copy.deepcopy(members[0].student).to("meta")  # the architecture, no storage
        self.params, self.buffers = stack_module_state([m.student for m in members])
        self.optimizer = torch.optim.SGD(list(self.params.values()), **hyper[0])
        for name, stacked in self.params.items():
            momenta = [m.optimizer.state.get(self._own(m, name), {}).get("momentum_buffer") for m in members]
            if any(b is not None for b in momenta):  # the members have stepped (a later epoch, a resume)
                self.optimizer.state[stacked]["momentum_buffer"] = torch.stack(momenta)
        self.batched_forward = vmap(self._forward, in_dims=(0, 0, None), randomness="error")

    @staticmethod
    def _own(member: Member, name: str) -> nn.Parameter:
        return member.student.get_parameter(name)

    def _forward(self, params: dict, buffers: dict, images: torch.Tensor):
        if not self.fields:
            return functional_call(self.template, (params, buffers), (images,))
        out = functional_call(self.template, (params, buffers), (images,), {"features": True})
        return {name: getattr(out, name) for name in FEATURE_FIELDS}

    def _member_output(self, outputs, index: int) -> Features:
        if not self.fields:
            return Features(logits=outputs[index], pooled=None)
        mine = tree_map(lambda t: t[index], outputs)
        return Features(**mine).only(self.fields)

    def step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        teacher_out: Features | None,
        meters: dict[int, EpochMeter],
        epoch: int,
        guard: Guard,
    ) -> None:
        """One optimisation step of every live member on `batch`, each with its own loss terms."""
        images, labels, indices = batch
        start = time.perf_counter()
        with warnings.catch_warnings():
            # vmap runs the adaptive pool's in-place view (as_strided_) member by member and says so;
            # what fusion costs or saves in all is `kdbench bench`'s fusion row
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            outputs = self.batched_forward(self.params, self.buffers, images)
        losses, recorded = [], []
        for index, member in enumerate(self.members):
            if member.error is not None:  # failed earlier: its slice trains no more, nothing of it is kept
                continue
            with guard(member):
                teacher = None if member.teacher is None else teacher_out.only(member.teacher_features)
                terms = member.method.losses(self._member_output(outputs, index), teacher, labels, indices)
                loss = sum(terms.values())
                check_finite(loss, f"epoch {epoch} step {meters[id(member)].steps}", terms)
                losses.append(loss)
                recorded.append((member, loss, terms))
        self.optimizer.zero_grad(set_to_none=True)
        if losses:
            sum(losses).backward()
            self.optimizer.step()
        share = (time.perf_counter() - start) / len(self.members)
        for member, loss, terms in recorded:
            meter = meters[id(member)]
            meter.add(float(loss.detach()), {n: float(v.detach()) for n, v in terms.items()}, len(labels))
            meter.seconds += share

    @torch.no_grad()
    def write_back(self) -> None:
        """Each member's slice into its own student and optimizer state (the member trains on from there)."""
        for index, member in enumerate(self.members):
            if member.error is not None:
                continue
            for name, own in member.student.named_parameters():
                own.copy_(self.params[name][index])
                momentum = self.optimizer.state.get(self.params[name], {}).get("momentum_buffer")
                if momentum is not None:
                    member.optimizer.state[own]["momentum_buffer"] = momentum[index].clone()
            for name, own in member.student.named_buffers():
                own.copy_(self.buffers[name][index])
            # its step was taken here: tells its lr scheduler so (torch warns of a schedule stepped first)
            member.optimizer._opt_called = True
