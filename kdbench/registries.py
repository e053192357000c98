"""The name -> class registries (mmengine `Registry`): the engine builds by name, never by if/elif.

- MODELS:   factories `fn(num_classes, in_chans) -> nn.Module` (timm-style `@register_model`)
- METHODS:  `Method` subclasses (methods/<name>.py)
- DATASETS: loaders `fn(root, split, ...) -> InMemoryDataset`
- WRAPPERS: `StudentWrapper` subclasses (kdbench/wrappers/), e.g. VAM
"""

from __future__ import annotations

import difflib

from mmengine.registry import Registry

from kdbench.errors import KdbenchError

MODELS = Registry("kdbench model")
METHODS = Registry("kdbench method")
DATASETS = Registry("kdbench dataset")
WRAPPERS = Registry("kdbench student wrapper")


class UnknownNameError(KdbenchError, KeyError):
    """A name not in a registry; its message lists the valid names and a did-you-mean."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Valid: {', '.join(sorted(valid))}"


def lookup(registry: Registry, kind: str, name: str):
    """Return the registered object for `name`, or raise UnknownNameError with the valid names."""
    obj = registry.get(name) if name in registry.module_dict else None
    if obj is None:
        raise UnknownNameError(unknown_name_message(kind, name, list(registry.module_dict)))
    return obj
