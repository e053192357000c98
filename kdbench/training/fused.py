"""Fused members: members that share a student architecture and wrappers train as one batched model.

Opt-in (`--fuse on`; issue 24). The members of a cohort (kdbench/training/engine.py) that fuse
(kdbench/training/fused_plan.py `fusable`) are grouped by student architecture and wrapper settings,
across the cohort's data streams: members of different seeds fuse too, each on its own batches. A
group runs one forward and one backward over all its members, in one of two styles:
- channel-grouped (HFTA; `ChannelGroup`, kdbench/training/fused_channels.py), where the student is
  made of layers it groups and its grouped features are the members' own: the faster on CPU;
- `VmapGroup` here, for any architecture and wrapper set: the members' parameters and buffers stacked
  (`torch.func.stack_module_state`; a wrapper's parameters, VAM's attention logits, are the student's
  and stack with them), `torch.func.vmap` over `functional_call`. Members of one stream share their
  batch (one image tensor, not batched); members of several streams each read their own (stacked).
Either way BatchNorm's running statistics are each member's own slice of the fused buffers. Each
member's loss terms are its own method's on its own slice of the outputs, with its own labels and
teacher features, then its wrappers' terms on its own slice of the parameters (in the solo order);
their sum's gradient on a member's slice is that member's own gradient. One SGD over the fused
parameters, a parameter group for each of the members' groups (the student's; VAM's, at its own lr
and no weight decay) with their momentum, dampening, weight decay, nesterov and current lr, is
elementwise: each slice steps as the member's own optimizer would.

Each epoch a group takes its members' students and optimizer state after `begin_epoch` (so a fused
member starts where its solo run starts, and resumes from its own checkpoint): built at its first
epoch, reloaded in place at the later ones (`reload`: the fused tensors keep their addresses), and
written back before `close_epoch` (parameters, buffers, momentum), so evaluation, checkpoints, export
and records read each member's own student as they do unfused. The fused
mathematics is the solo one; the numbers differ by floating-point reassociation only
(tests/training/test_fused.py measures the tolerance). Random draws inside a vmapped forward are
refused (`randomness="error"`): a member's stream cannot be reproduced inside a batched forward.
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

from kdbench.core.features import Features
from kdbench.training.member import EpochMeter, Member, check_finite

Guard = Callable[[Member], AbstractContextManager]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, indices
FEATURE_FIELDS = ("logits", "pooled", "stem", "stages", "preact")
SGD_SETTINGS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")


def _group_settings(member: Member) -> list[dict]:
    """The SGD settings of each of the member's parameter groups, in order (its lr this epoch included)."""
    return [{k: group[k] for k in SGD_SETTINGS} for group in member.optimizer.param_groups]


def _group_of_parameter(member: Member) -> dict[str, int]:
    """Which of the member's optimizer groups trains each of its student's parameters, by name."""
    index = {id(p): g for g, group in enumerate(member.optimizer.param_groups) for p in group["params"]}
    return {name: index[id(p)] for name, p in member.student.named_parameters()}


class _StudentWithTerms(nn.Module):
    """The student's forward and its wrappers' loss terms as one call, for `functional_call`: the terms
    read the same (stacked) parameters the forward does."""

    def __init__(self, student: nn.Module, wrappers: list, fields: tuple[str, ...]):
        super().__init__()
        self.student = student
        self.wrappers = wrappers
        self.fields = fields

    def forward(self, images: torch.Tensor):
        if self.fields:
            features = self.student(images, features=True)
            out = {name: getattr(features, name) for name in FEATURE_FIELDS}
        else:
            out = self.student(images)
        terms: dict[str, torch.Tensor] = {}
        for wrapper in self.wrappers:
            terms.update(wrapper.loss_terms(self.student))
        return out, terms


class FusedGroup:
    """Members of one student architecture and wrapper set, fused; `step` trains them all at once. A
    style (`VmapGroup` here, `ChannelGroup` in kdbench/training/fused_channels.py) holds the fused
    parameters and buffers, `params` and `buffers` by the student's names, each a tensor whose view
    (M, *own shape) holds member i's at [i], and gives the batched forward (`outputs`) and a member's
    part of it (`member_output`); the optimizer, the loss terms and the write-back are this class's."""

    style = ""

    def __init__(
        self, members: list[Member], params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
    ):
        self.members = members
        self.fields = members[0].student_features
        self.params, self.buffers = params, buffers
        self.optimizer = self._members_optimizer()

    def _members_optimizer(self) -> torch.optim.SGD:
        """One SGD over the fused parameters at the members' settings and momentum now."""
        # each member's lr this epoch included (its scheduler steps at its `close_epoch`); one recipe
        # and one wrapper set per group, so a difference is a bug
        settings = [_group_settings(m) for m in self.members]
        if any(s != settings[0] for s in settings):
            raise RuntimeError(f"fused members' optimizers differ: {settings}")
        group_of = _group_of_parameter(self.members[0])
        groups = [
            {"params": [self.params[n] for n in self.params if group_of[n] == g], **s}
            for g, s in enumerate(settings[0])
        ]
        optimizer = torch.optim.SGD([g for g in groups if g["params"]])
        for name, fused in self.params.items():
            momenta = [
                m.optimizer.state.get(self._own(m, name), {}).get("momentum_buffer") for m in self.members
            ]
            if any(b is not None for b in momenta):  # the members have stepped (a later epoch, a resume)
                optimizer.state[fused]["momentum_buffer"] = torch.stack(momenta).view(fused.shape)
        return optimizer

    @torch.no_grad()
    def reload(self) -> None:
        """The group again for a new epoch: the members' state now (parameters, buffers; momentum and lr
        in a new optimizer) copied into the fused tensors in place, so their addresses stay the same:
        the compiled step's CUDA graphs read them there (a new address would record them anew)."""
        for index, member in enumerate(self.members):
            for name, own in member.student.named_parameters():
                self.mine(self.params[name], own, index).copy_(own)
            for name, own in member.student.named_buffers():
                self.mine(self.buffers[name], own, index).copy_(own)
        self.optimizer = self._members_optimizer()

    @staticmethod
    def _own(member: Member, name: str) -> nn.Parameter:
        return member.student.get_parameter(name)

    def mine(self, fused: torch.Tensor, own: torch.Tensor, index: int) -> torch.Tensor:
        """Member `index`'s slice of a fused tensor shaped like its own `own`: a view of `fused`; where
        `fused` is one value for all (a channel-grouped BatchNorm's step count), that value."""
        if fused.shape == own.shape:
            return fused
        return fused.view(len(self.members), *own.shape)[index]

    def member_gradients(self, index: int) -> dict[str, torch.Tensor]:
        """Member `index`'s gradients after a step's backward, by parameter name (copies)."""
        own = dict(self.members[index].student.named_parameters())
        return {name: self.mine(p.grad, own[name], index).clone() for name, p in self.params.items()}

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(m.spec.run_id for m in self.members)

    def outputs(self, batches: list[Batch]):
        """The batched forward of every member on its batch: (outputs, wrapper terms stacked)."""
        raise NotImplementedError

    def member_output(self, outputs, index: int) -> Features:
        """Member `index`'s features out of `outputs`."""
        raise NotImplementedError

    def losses(
        self,
        batches: list[Batch],
        teacher_outs: list[Features | None],
        meters: dict[int, EpochMeter],
        epoch: int,
        guard: Guard,
    ) -> list[tuple[Member, torch.Tensor, dict]]:
        """Each live member's (member, loss, terms) on its batch, its method's terms then its wrappers'."""
        outputs, wrapper_terms = self.outputs(batches)
        recorded = []
        for index, member in enumerate(self.members):
            if member.error is not None:  # failed earlier: its slice trains no more, nothing of it is kept
                continue
            with guard(member):
                _, labels, indices = batches[index]
                teacher = teacher_outs[index]
                teacher = None if member.teacher is None else teacher.only(member.teacher_features)
                terms = member.method.losses(self.member_output(outputs, index), teacher, labels, indices)
                terms.update({name: value[index] for name, value in wrapper_terms.items()})
                loss = sum(terms.values())
                check_finite(loss, f"epoch {epoch} step {meters[id(member)].steps}", terms)
                recorded.append((member, loss, terms))
        return recorded

    def step(
        self,
        batches: list[Batch],
        teacher_outs: list[Features | None],
        meters: dict[int, EpochMeter],
        epoch: int,
        guard: Guard,
    ) -> None:
        """One optimisation step of every live member, each on its own batch (`batches[i]`, with the
        teacher's features on it, `teacher_outs[i]`) and with its own loss terms."""
        start = time.perf_counter()
        recorded = self.losses(batches, teacher_outs, meters, epoch, guard)
        self.optimizer.zero_grad(set_to_none=True)
        if recorded:
            sum(loss for _, loss, _ in recorded).backward()
            self.optimizer.step()
        share = (time.perf_counter() - start) / len(self.members)
        for member, loss, terms in recorded:
            meter = meters[id(member)]
            images = len(batches[self.members.index(member)][1])
            meter.add(float(loss.detach()), {n: float(v.detach()) for n, v in terms.items()}, images)
            meter.seconds += share

    @torch.no_grad()
    def write_back(self) -> None:
        """Each member's slice into its own student and optimizer state (the member trains on from there)."""
        for index, member in enumerate(self.members):
            if member.error is not None:
                continue
            for name, own in member.student.named_parameters():
                own.copy_(self.mine(self.params[name], own, index))
                momentum = self.optimizer.state.get(self.params[name], {}).get("momentum_buffer")
                if momentum is not None:
                    member.optimizer.state[own]["momentum_buffer"] = self.mine(momentum, own, index).clone()
            for name, own in member.student.named_buffers():
                own.copy_(self.mine(self.buffers[name], own, index))
            # its step was taken here: tells its lr scheduler so (torch warns of a schedule stepped first)
            member.optimizer._opt_called = True


class VmapGroup(FusedGroup):
    """A fused group as stacked parameters and buffers under `torch.func.vmap` over `functional_call`:
    any architecture and wrapper set (see the module's text)."""

    style = "vmap"

    def __init__(self, members: list[Member]):
        fields = members[0].student_features
        model = copy.deepcopy(members[0].student).to("meta")  # the architecture, no storage
        self.template = _StudentWithTerms(model, members[0].wrappers, fields)
        super().__init__(members, *stack_module_state([m.student for m in members]))
        # one batch for all (one stream), or each member's own (several streams: the images stacked)
        self.shared_forward = vmap(self._forward, in_dims=(0, 0, None), randomness="error")
        self.own_forward = vmap(self._forward, in_dims=(0, 0, 0), randomness="error")

    def _forward(self, params: dict, buffers: dict, images: torch.Tensor):
        state = {f"student.{name}": value for name, value in {**params, **buffers}.items()}
        return functional_call(self.template, state, (images,))

    def member_output(self, outputs, index: int) -> Features:
        if not self.fields:
            return Features(logits=outputs[index], pooled=None)
        mine = tree_map(lambda t: t[index], outputs)
        return Features(**mine).only(self.fields)

    def outputs(self, batches: list[Batch]):
        first = batches[0][0]
        shared = all(batch[0] is first for batch in batches)
        images = first if shared else torch.stack([batch[0] for batch in batches])
        with warnings.catch_warnings():
            # vmap runs the adaptive pool's in-place view (as_strided_) member by member and says so;
            # what fusion costs or saves in all is `kdbench bench`'s fusion row
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            return (self.shared_forward if shared else self.own_forward)(self.params, self.buffers, images)
