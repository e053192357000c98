"""Numeric precision of a run (`RunSpec.precision`): fp32, or mixed precision by autocast.

bf16 and fp16 run the forward passes (student, teacher, losses) and evaluation under
`torch.autocast`; fp16 adds a gradient scaler (its small exponent range underflows gradients
without one). fp32 runs the plain path, untouched. Autocast exists on CPU too, so every path is
tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str, device: torch.device):
        self.name, self.device_type, self.dtype = name, device.type, DTYPES[name]

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A fresh gradient scaler for fp16 (one per optimizer), None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def backward_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    between: Callable[[], None] | None = None,
    retain_graph: bool = False,
) -> None:
    """loss.backward() and optimizer.step(), through the scaler where there is one; `between`
    runs after the backward (the gradient averaging of a distributed run); `retain_graph` keeps
    the graph for another backward of the same forward (DOT's two passes, methods/dot.py)."""
    if scaler is None:
        loss.backward(retain_graph=retain_graph)
        if between:
            between()
        optimizer.step()
        return
    scaler.scale(loss).backward(retain_graph=retain_graph)
    if between:
        between()
    scaler.step(optimizer)
    scaler.update()
