"""The student-wrapper contract: a module put around a student for training, exported away for
deployment. VAM (kdbench/wrappers/vam.py) is the built-in one.

A wrapper is registered in `kdbench.core.registries.WRAPPERS` under `name` (`register_wrapper`), with its
config class: a frozen dataclass of JSON values (numbers, strings, booleans, tuples) whose
`__post_init__` checks them. A run spec holds the wrappers it trains with as {name: config}
(`RunSpec.wrappers`); its record holds each config under the wrapper's name beside the spec's fields
(`RunSpec.from_dict` reads it back through `config_class`), and the wrapper's `summary` under its name.
A plugin file brings a wrapper and its config like a built-in (kdbench/execution/plugins.py). This module
and a wrapper's class import no torch: reports read specs and records without it. The engine handles
every wrapper through this interface alone:

    wrapper.wrap(student)                      after the student is built, before anything reads it
    wrapper.parameters(student)                its own trainable parameters (extra params in the record)
    wrapper.param_groups(student, lr)          optimizer groups for them (taken out of the student's group)
    wrapper.loss_terms(student)                extra weighted loss terms, added after the method's
    wrapper.set_epoch(student, epoch, n)       at the start of each epoch (1-based)
    wrapper.export(student, plain)             the deployed student in `plain`, the un-wrapped architecture
    wrapper.summary(student)                   JSON-able findings for the record
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from kdbench.core.registries import WRAPPERS, RegistrationError, check_name
from kdbench.core.spec import RunSpec
from kdbench.core.store import RunRecord

if TYPE_CHECKING:
    from torch import Tensor, nn


class StudentWrapper:
    """Base class; subclasses set `name` and `config_class` and override what they change."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type]
    # whether every spec holds the wrapper's key, null where it is not applied: VAM's alone, whose key
    # every spec had before wrappers were data, so the run ids of those records hold; a spec holds any
    # other wrapper's key only where it is applied, so adding a wrapper changes no run id
    in_every_spec: ClassVar[bool] = False

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


# a wrapper's name is a key of a record's spec and of the record itself: neither may be taken
_TAKEN_NAMES = {name for name in RunSpec.__dataclass_fields__} | set(RunRecord.__annotations__)


def register_wrapper(cls: type[StudentWrapper]) -> type[StudentWrapper]:
    """Class decorator: register a wrapper under its own `name`, with its `config_class`."""
    check_name(WRAPPERS.kind, cls.name)
    if cls.name in _TAKEN_NAMES:
        raise RegistrationError(
            f"student wrapper name '{cls.name}' is a key of every run spec or record; give yours another name"
        )
    if cls.in_every_spec and not cls.__module__.startswith("kdbench.wrappers."):
        raise RegistrationError(
            f"student wrapper '{cls.name}' sets in_every_spec, which only VAM's key (older than wrappers as "
            "data) has: it would change the run id of every run; leave it False"
        )
    config_class = getattr(cls, "config_class", None)
    if not (dataclasses.is_dataclass(config_class) and config_class.__dataclass_params__.frozen):
        raise RegistrationError(
            f"student wrapper '{cls.name}' has no config_class, a frozen dataclass of its settings"
        )
    WRAPPERS.register_module(name=cls.name, module=cls)
    return cls
