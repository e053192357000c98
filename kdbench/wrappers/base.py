"""The student-wrapper contract: a module put around a student for training, exported away for
deployment. VAM (kdbench/wrappers/vam.py) is the built-in one.

A wrapper is registered in `kdbench.core.registries.WRAPPERS` under `name`, which is also the name of
the `RunSpec` field that holds its config (None: not applied) and the run record's key for its
`summary`. The engine handles every wrapper through this interface alone:

    wrapper.wrap(student)                      after the student is built, before anything reads it
    wrapper.parameters(student)                its own trainable parameters (extra params in the record)
    wrapper.param_groups(student, lr)          optimizer groups for them (taken out of the student's group)
    wrapper.loss_terms(student)                extra weighted loss terms, added after the method's
    wrapper.set_epoch(student, epoch, n)       at the start of each epoch (1-based)
    wrapper.export(student, plain)             the deployed student in `plain`, the un-wrapped architecture
    wrapper.summary(student)                   JSON-able findings for the record
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from kdbench.core.registries import WRAPPERS


class StudentWrapper:
    """Base class; subclasses set `name` and override what they change."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config

    def wrap(self, student: nn.Module) -> None:
        raise NotImplementedError

    def parameters(self, student: nn.Module) -> list[nn.Parameter]:
        return []

    def param_groups(self, student: nn.Module, lr: float) -> list[dict]:
        return []

    def loss_terms(self, student: nn.Module) -> dict[str, Tensor]:
        return {}

    def set_epoch(self, student: nn.Module, epoch: int, num_epochs: int) -> None:
        """Called at the start of each epoch (1-based)."""

    def export(self, student: nn.Module, plain: nn.Module) -> nn.Module:
        """The trained student as deployed, written into `plain` (a fresh un-wrapped copy)."""
        raise NotImplementedError

    def summary(self, student: nn.Module) -> dict | None:
        return None


def register_wrapper(cls: type[StudentWrapper]) -> type[StudentWrapper]:
    """Class decorator: register a wrapper under its own `name` (its RunSpec field)."""
    WRAPPERS.register_module(name=cls.name, module=cls)
    return cls
