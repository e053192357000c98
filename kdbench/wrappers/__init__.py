"""Student wrappers (kdbench/wrappers/base.py has the contract); importing this package
registers the built-in ones (VAM) in `kdbench.core.registries.WRAPPERS`, without importing torch."""

from __future__ import annotations

from kdbench.core.registries import WRAPPERS, lookup
from kdbench.core.spec import RunSpec
from kdbench.wrappers import vam  # noqa: F401  (registers the built-in wrapper)
from kdbench.wrappers.base import StudentWrapper


def build_wrappers(spec: RunSpec) -> list[StudentWrapper]:
    """The wrappers a spec asks for (`RunSpec.wrappers`), in the order of their names."""
    return [lookup(WRAPPERS, "student wrapper", name)(config) for name, config in spec.wrappers.items()]


__all__ = ["StudentWrapper", "build_wrappers"]
