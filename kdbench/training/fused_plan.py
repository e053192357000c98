"""Which members fuse, into which groups, and how large a group may grow (kdbench/training/fused.py).

A member fuses when its method declares `fuses` (methods/base.py: no data-dependent Python control
flow, no per-sample memory bank, no init stage), trains no parameters of its own, reads no extra
views and keeps the default optimizer and step (`Method.build_optimizer`, `Method.optimizer_step`),
in fp32, in one process, with no dropout in its student (random draws inside a batched forward are
refused). Its wrappers fuse with it: VAM's attention logits are parameters of the student and stack
with them. Members fuse with those of the same student architecture and wrapper settings, whatever
their seed: each keeps its own batches. A group's members are in run-id order, so the same runs make
the same group, in the same order, wherever they are trained (`kdbench rerun`). A group fuses
channel-grouped (kdbench/training/fused_channels.py) where that computes its members' own features on
its first batch, else by vmap (kdbench/training/fused.py); compiled members fuse channel-grouped only.

A group's size is bounded by memory measured, not guessed: on its first batch each planned group runs
one step without the update (on its stacked copies; the members' state and random streams untouched),
whose peak bytes (on CUDA `torch.cuda.max_memory_allocated`, elsewhere the stacked weights, gradients,
momentum and buffers plus the activations autograd saves, kdbench/training/measure.py's counter)
divided by its members is a member's share; a group larger than the budget (the device's free memory,
or the one given) holds is cut into groups of near-equal size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kdbench.core import distributed
from kdbench.core.features import Features
from kdbench.methods.base import Method, PairNotSupportedError
from kdbench.training.fused import Batch, FusedGroup, VmapGroup
from kdbench.training.fused_channels import ChannelGroup, channel_group
from kdbench.training.measure import _SavedTensorBytes
from kdbench.training.member import EpochMeter, Member, NonFiniteLossError

# the share of the device's free memory a fused group may fill: the rest is left to the teacher's
# forward, the evaluation and what else runs on the device
FREE_MEMORY_SHARE = 0.8


def fusable(member: Member) -> bool:
    """Whether `member` may train inside a fused group (else it steps alone, as unfused)."""
    spec = member.spec
    return (
        getattr(type(member.method), "fuses", False)
        and not member.extra_views
        and spec.precision == "fp32"
        and distributed.world_size() == 1
        and not any(p.requires_grad for p in member.method.parameters())
        # the default SGD and its one backward, one step: the fused SGD over the stacked slices is that
        and type(member.method).build_optimizer is Method.build_optimizer
        and type(member.method).optimizer_step is Method.optimizer_step
        and type(member.optimizer) is torch.optim.SGD
        and not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in member.student.modules())
    )


def group_key(member: Member) -> tuple:
    """What the members of one fused group share: the student's architecture and the wrappers' settings."""
    return member.spec.student, tuple((name, repr(config)) for name, config in member.spec.wrappers.items())


def partition(members: list[Member], limits: dict[tuple, int] | None = None) -> list[list[Member]]:
    """Which members fuse together: fusable members by `group_key`, in run-id order, cut to at most
    `limits[key]` members where a limit is known; a group of one is no group."""
    by_key: dict[tuple, list[Member]] = {}
    for member in sorted(members, key=lambda m: m.spec.run_id):
        if member.error is None and fusable(member):
            by_key.setdefault(group_key(member), []).append(member)
    parts = []
    for key, together in by_key.items():
        parts += [part for part in cut(together, (limits or {}).get(key)) if len(part) > 1]
    return parts


def choose_style(members: list[Member], images: torch.Tensor) -> str:
    """How these members fuse: channel-grouped (HFTA) where that computes each member's own features on
    `images`, the faster way where measured (kdbench/training/fused_channels.py), else vmap."""
    return "channels" if channel_group(members, images) is not None else "vmap"


def plan_groups(
    members: list[Member],
    limits: dict[tuple, int] | None = None,
    styles: dict[tuple, str] | None = None,
    built: dict[tuple, FusedGroup] | None = None,
) -> list[FusedGroup]:
    """The fused groups of these members (`partition`), each in its key's style (`choose_style`; vmap
    where none is given); compiled members (`--compile on`) whose style is not channels step alone.
    A group in `built` (an earlier epoch's, by `built_key`) is reloaded from its members, not built anew."""
    styles, groups = styles or {}, []
    for part in partition(members, limits):
        style = styles.get(group_key(part[0]), "vmap")
        if (
            style == "vmap" and part[0].spec.compile
        ):  # compiled members fuse as one compiled grouped model only
            continue
        group = (built or {}).get((tuple(m.spec.run_id for m in part), style))
        if group is not None:
            group.reload()
        else:
            group = ChannelGroup(part) if style == "channels" else VmapGroup(part)
        groups.append(group)
    return groups


def built_key(group: FusedGroup) -> tuple:
    """What `plan_groups` finds an earlier epoch's group by: its members' run ids and its style."""
    return group.run_ids, group.style


def cut(members: list[Member], largest: int | None) -> list[list[Member]]:
    """`members` in consecutive parts of near-equal size, each of at most `largest` (None: one part)."""
    if largest is None or len(members) <= largest:
        return [members]
    parts = math.ceil(len(members) / largest)
    size, extra = divmod(len(members), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [members[bounds[i] : bounds[i + 1]] for i in range(parts)]


def free_memory_bytes(device: torch.device) -> int:
    """The memory a fused group may take on `device`: a share of what is free now."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(FREE_MEMORY_SHARE * free)


@contextmanager
def _trial(member: Member) -> Iterator[None]:
    """As the member, leaving its random stream where it was and keeping no failure (the real step
    meets it again and records it)."""
    kept = member.rng
    try:
        with member.own_rng():
            yield
    except (NonFiniteLossError, PairNotSupportedError):
        pass
    finally:
        member.rng = kept


def step_bytes(group: FusedGroup, batches: list[Batch], teacher_outs: list[Features | None]) -> int:
    """Peak bytes of one step of `group` (forward, losses, backward; no update). It leaves gradients
    and moved BatchNorm statistics in the group's stacked copies: build the group anew after it."""
    device = next(iter(group.params.values())).device
    saved = _SavedTensorBytes()
    meters = {id(m): EpochMeter() for m in group.members}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        recorded = group.losses(batches, teacher_outs, meters, 0, _trial)
        if recorded:
            sum(loss for _, loss, _ in recorded).backward()
    state = sum(t.numel() * t.element_size() for t in group.params.values())
    buffers = sum(t.numel() * t.element_size() for t in group.buffers.values())
    if device.type == "cuda":
        # the stacked weights and buffers were allocated before; the momentum comes with the first update
        return torch.cuda.max_memory_allocated(device) - before + 2 * state + buffers
    return 3 * state + buffers + saved.total  # weights, gradients, momentum; buffers; saved activations


def size_limit(
    group: FusedGroup, batches: list[Batch], teacher_outs: list[Features | None], budget: int
) -> int:
    """The most members a group like `group` may hold within `budget` bytes, from its first step's peak."""
    share = step_bytes(group, batches, teacher_outs) / len(group.members)
    return max(1, int(budget // share))
