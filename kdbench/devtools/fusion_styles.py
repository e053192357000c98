"""Two ways to fuse M same-architecture students, as bare training steps for `kdbench bench` (issue 24
asks for both measured before one is chosen): `torch.func.vmap` over `functional_call` on stacked
parameters (kdbench/training/fused.py's `VmapGroup`), and HFTA's (Wang et al., MLSys 2021) channel
grouping (kdbench/training/fused_channels.py's `hfta_model`, the loop's `ChannelGroup`). Both against
the M students stepped one after another. For a model HFTA's grouping does not cover (`NotFusable`),
or one whose fused output is not the members' own (checked before it is timed), the HFTA row is left out.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdbench.models import build_model
from kdbench.training.fused_channels import NotFusable, hfta_model


def fusion_steps(
    student: str, batches: list, num_classes: int, in_chans: int, members: int, memory_format
) -> dict[str, Callable[[], None]]:
    """Epoch works over `batches` (images, labels, ...), CE on each member: the members one after
    another, vmap-fused and HFTA-fused; all start from the same M students."""
    device = batches[0][0].device
    torch.manual_seed(0)
    models = [
        build_model(student, num_classes=num_classes, in_chans=in_chans).to(
            device, memory_format=memory_format
        )
        for _ in range(members)
    ]
    try:
        hfta = hfta_model(models).to(device, memory_format=memory_format)
        _check_hfta(hfta, models, batches[0][0])
    except NotFusable:
        hfta = None  # measured without it
    alone = [copy.deepcopy(m) for m in models]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in alone]
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")
    stacked_optimizer = torch.optim.SGD(list(params.values()), lr=0.01, momentum=0.9)
    batched = vmap(lambda p, b, x: functional_call(template, (p, b), (x,)), in_dims=(0, 0, None))
    hfta_optimizer = torch.optim.SGD(hfta.parameters(), lr=0.01, momentum=0.9) if hfta is not None else None

    def one_after_another():
        for images, labels, *_ in batches:
            for model, optimizer in zip(alone, optimizers, strict=True):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(images), labels).backward()
                optimizer.step()

    def vmapped():
        for images, labels, *_ in batches:
            stacked_optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
                logits = batched(params, buffers, images)
            sum(F.cross_entropy(member, labels) for member in logits).backward()
            stacked_optimizer.step()

    def grouped():
        for images, labels, *_ in batches:
            hfta_optimizer.zero_grad(set_to_none=True)
            logits = hfta(images.repeat(1, members, 1, 1)).reshape(len(labels), members, -1)
            sum(F.cross_entropy(logits[:, i], labels) for i in range(members)).backward()
            hfta_optimizer.step()

    works = {"one after another": one_after_another, "vmap": vmapped, "hfta": grouped}
    return works if hfta is not None else {k: v for k, v in works.items() if k != "hfta"}


@torch.no_grad()
def _check_hfta(hfta: nn.Module, models: list[nn.Module], images: torch.Tensor) -> None:
    """The HFTA model's logits are each member's own (eval mode: no statistics move), else NotFusable."""
    hfta.eval()
    for model in models:
        model.eval()
    fused = hfta(images.repeat(1, len(models), 1, 1)).reshape(len(images), len(models), -1)
    own = torch.stack([model(images) for model in models], dim=1)
    hfta.train()
    for model in models:
        model.train()
    if not torch.allclose(fused, own, rtol=1e-4, atol=1e-5):
        raise NotFusable(
            f"the HFTA model's logits differ from the members' by {float((fused - own).abs().max())}"
        )
