"""Student wrappers (kdbench/wrappers/base.py has the contract); importing this package
registers the built-in ones (VAM) in `kdbench.core.registries.WRAPPERS`."""

from __future__ import annotations

from kdbench.core.registries import WRAPPERS
from kdbench.core.spec import RunSpec
from kdbench.wrappers import vam  # noqa: F401  (registers the built-in wrapper)
from kdbench.wrappers.base import StudentWrapper


def build_wrappers(spec: RunSpec) -> list[StudentWrapper]:
    """The wrappers a spec asks for: one per registered wrapper whose spec field is set, by name."""
    return [
        wrapper_cls(getattr(spec, name))
        for name, wrapper_cls in sorted(WRAPPERS.module_dict.items())
        if getattr(spec, name, None) is not None
    ]


__all__ = ["StudentWrapper", "build_wrappers"]
