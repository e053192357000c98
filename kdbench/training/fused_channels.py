"""Channel-grouped fusion (HFTA: Wang et al., "Horizontally Fused Training Array", MLSys 2021): M
same-architecture students as one model whose convolutions have M times the channels in M groups,
whose BatchNorms normalise M x C channels (each member's statistics on its own channels) and whose
linear layers are batched matrix products; the members' images are stacked along the channels.

Measured on CPU against `torch.func.vmap` over `functional_call` (kdbench/training/fused.py's
`VmapGroup`), it was the faster of the two at every batch size (`kdbench bench`, its "fusion, bare CE
steps" rows, and the README's fused-members section), so a group fuses this way where it can: models
made of Conv2d, BatchNorm2d and Linear layers and channel-wise operations (the CIFAR ResNets, WRNs,
VGGs, MobileNetV2's depthwise convolutions). A layer without a grouped counterpart is `NotFusable`,
and so is a model whose grouped features are not its members' own on the group's first batch (an
operation that mixes channels, such as ShuffleNet's channel shuffle): such a group fuses with vmap.

Member i's slice of a fused tensor is `fused.view(M, *own.shape)[i]`, for every parameter and buffer
(convolution and BatchNorm tensors are the members' concatenated along dimension 0, linear ones are
stacked), as for vmap's stacked ones: the optimizer, the write-back and the tests read both alike.
BatchNorm's step count is one scalar, equal for members that step in lockstep.

Compiled members (`--compile on`) fuse this way only: the grouped model is compiled with static shapes,
and on CUDA in torch.compile's reduce-overhead mode, which replays the step's kernels from CUDA graphs
(launch overhead is what a fused step of small students spends its time on there). Methods covered:
those that fuse (`kdbench list methods --verbose`); their loss terms run eagerly around the compiled
forward. On CPU it is the default compiled mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdbench.core.features import Features
from kdbench.training.fused import Batch, FusedGroup
from kdbench.training.member import Member

# grouped vs own features on the first batch, ||a - b|| / ||b|| per tensor: loose enough for TF32
# convolutions on CUDA, far below what mixing the members' channels gives (ShuffleNets: 0.4 to 1.2)
FEATURE_TOLERANCE = 1e-2


class NotFusable(ValueError):
    """The model has a layer or an operation HFTA's channel grouping does not cover."""


class BatchedLinear(nn.Module):
    """M linear layers on (N, M x in) inputs: (N, M x out), one batched product."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.members = len(linears)
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in linears]))
        biases = [layer.bias for layer in linears]
        self.bias = None if biases[0] is None else nn.Parameter(torch.stack([b.detach() for b in biases]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = torch.einsum("nmi,moi->nmo", x.reshape(n, self.members, -1), self.weight)
        return (out if self.bias is None else out + self.bias).reshape(n, -1)


def _grouped_conv(layer: nn.Conv2d, parts: list[nn.Conv2d]) -> nn.Conv2d:
    m = len(parts)
    if layer.padding_mode != "zeros":
        raise NotFusable(f"Conv2d with padding_mode={layer.padding_mode!r} has no HFTA counterpart here")
    fused = nn.Conv2d(
        layer.in_channels * m,
        layer.out_channels * m,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        groups=layer.groups * m,
        bias=layer.bias is not None,
    )
    fused.weight.data = torch.cat([p.weight.detach() for p in parts])
    if layer.bias is not None:
        fused.bias.data = torch.cat([p.bias.detach() for p in parts])
    return fused


def _grouped_norm(layer: nn.BatchNorm2d, parts: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    if not (layer.affine and layer.track_running_stats):
        raise NotFusable("BatchNorm2d without affine weights or running statistics has no HFTA counterpart")
    counts = {int(p.num_batches_tracked) for p in parts}
    if len(counts) > 1:
        raise NotFusable(f"the members' BatchNorm step counts differ: {sorted(counts)}")
    fused = nn.BatchNorm2d(layer.num_features * len(parts), layer.eps, layer.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(fused, name).data = torch.cat([getattr(p, name).detach() for p in parts])
    fused.num_batches_tracked.data = layer.num_batches_tracked.detach().clone()
    return fused


def _grouped(layer: nn.Module, parts: list[nn.Module]) -> nn.Module | None:
    """The layer of the fused model standing for `parts` (the members' layers at one name); None where
    the layer holds no state (ReLU, pooling, containers: channel-wise, or checked on the first batch)."""
    if type(layer) is nn.Conv2d:
        return _grouped_conv(layer, parts)
    if type(layer) is nn.BatchNorm2d:
        return _grouped_norm(layer, parts)
    if type(layer) is nn.Linear:
        return BatchedLinear(parts)
    if any(True for _ in layer.parameters(recurse=False)) or any(True for _ in layer.buffers(recurse=False)):
        raise NotFusable(f"{type(layer).__name__} has no HFTA counterpart here")
    return None


def hfta_model(models: list[nn.Module]) -> nn.Module:
    """One model computing every member's forward on channel-stacked inputs (see the module's text)."""
    fused = copy.deepcopy(models[0])
    for name, layer in list(fused.named_modules()):
        if not name:
            continue
        replacement = _grouped(layer, [m.get_submodule(name) for m in models])
        if replacement is not None:
            parent, _, child = name.rpartition(".")
            setattr(fused.get_submodule(parent) if parent else fused, child, replacement)
    return fused


def stack_channels(images: list[torch.Tensor]) -> torch.Tensor:
    """The members' images (one tensor per member, or the same one) along the channels, in their layout."""
    first = images[0]
    stacked = first.repeat(1, len(images), 1, 1) if all(x is first for x in images) else torch.cat(images, 1)
    if first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last):
        return stacked.contiguous(memory_format=torch.channels_last)
    return stacked


def member_slice(tensor: torch.Tensor, members: int, index: int) -> torch.Tensor:
    """Member `index`'s part of a grouped model's output: its channels, [i*C, (i+1)*C) (a view)."""
    return tensor.unflatten(1, (members, -1))[:, index]


def member_features(features: Features, members: int, index: int) -> Features:
    """Member `index`'s features out of the grouped model's."""

    def mine(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else member_slice(tensor, members, index)

    return Features(
        logits=mine(features.logits),
        pooled=mine(features.pooled),
        stem=mine(features.stem),
        stages=[mine(s) for s in features.stages],
        preact=[mine(p) for p in features.preact],
    )


class ChannelGroup(FusedGroup):
    """A fused group as one channel-grouped model (HFTA); see the module's text."""

    style = "channels"

    def __init__(self, members: list[Member]):
        if members[0].wrappers:  # a wrapper's layers (VAM's attended convolutions) have no grouped form
            raise NotFusable(f"wrappers {[w.name for w in members[0].wrappers]} have no HFTA counterpart")
        self.model = hfta_model([m.student for m in members])
        super().__init__(members, dict(self.model.named_parameters()), dict(self.model.named_buffers()))
        self.graphs = members[0].spec.compile and next(self.model.parameters()).device.type == "cuda"
        self.forward = self.model
        if members[0].spec.compile:
            # static shapes: the last, partial batch compiles once more (and is captured again on CUDA);
            # a new group each epoch reuses the compiled code (the weights are its inputs, not constants)
            self.forward = torch.compile(
                self.model, dynamic=False, mode="reduce-overhead" if self.graphs else None
            )

    def outputs(self, batches: list[Batch]):
        images = stack_channels([batch[0] for batch in batches])
        if self.graphs:  # a new training step: the previous step's graph outputs are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        return (self.forward(images, features=True) if self.fields else self.forward(images)), {}

    def member_output(self, outputs, index: int) -> Features:
        if not self.fields:
            return Features(logits=member_slice(outputs, len(self.members), index), pooled=None)
        return member_features(outputs, len(self.members), index).only(self.fields)

    @torch.no_grad()
    def matches_members(self, images: torch.Tensor) -> bool:
        """Whether the grouped model's features on `images` are each member's own, in training mode, on
        copies (no member's statistics move): else an operation mixes the members' channels."""
        members = len(self.members)
        try:
            fused = copy.deepcopy(self.model)(stack_channels([images] * members), features=True)
            # a feature whose dimension 1 is not M blocks (an operation that reduced the channels)
            parts = [_tensors(member_features(fused, members, index)) for index in range(members)]
        except RuntimeError:  # an operation that reads the channel count (a reshape to it, a shuffle)
            return False
        for member, mine in zip(self.members, parts, strict=True):
            own = _tensors(copy.deepcopy(member.student)(images, features=True))
            if [a.shape for a in mine] != [b.shape for b in own]:
                return False
            for a, b in zip(mine, own, strict=True):
                if float((a - b).norm()) > FEATURE_TOLERANCE * max(float(b.norm()), 1e-12):
                    return False
        return True


def _tensors(features: Features) -> list[torch.Tensor]:
    return [t for t in (features.logits, features.pooled, features.stem) if t is not None] + [
        *features.stages,
        *features.preact,
    ]


def channel_group(members: list[Member], images: torch.Tensor) -> ChannelGroup | None:
    """The members as one channel-grouped model where it computes their own features on `images`."""
    try:
        group = ChannelGroup(members)
    except NotFusable:
        return None
    return group if group.matches_members(images) else None
