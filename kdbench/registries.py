"""The name -> class registries (mmengine `Registry`): the engine builds by name, never by if/elif.

- MODELS:   factories `fn(num_classes, in_chans) -> nn.Module` (timm-style `@register_model`)
- METHODS:  `Method` subclasses (methods/<name>.py)
- DATASETS: loaders `fn(root, split, ...) -> InMemoryDataset`
- WRAPPERS: `StudentWrapper` subclasses (kdbench/wrappers/), e.g. VAM

MODEL_ALIASES maps other code bases' model names to the registered ones (RepDistiller's and mdistiller's
`MobileNetV2` is kdbench's `mobile_half`; kdbench/models/__init__.py registers them): a name is made
canonical where it enters (`canonical_model_name`), so specs, records and run ids hold one spelling.
"""

from __future__ import annotations

import difflib

from mmengine.registry import Registry

from kdbench.errors import KdbenchError

MODELS = Registry("kdbench model")
METHODS = Registry("kdbench method")
DATASETS = Registry("kdbench dataset")
WRAPPERS = Registry("kdbench student wrapper")
MODEL_ALIASES: dict[str, str] = {}  # alias -> registered model name


class UnknownNameError(KdbenchError, KeyError):
    """A name not in a registry; its message lists the valid names and a did-you-mean."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def register_model_alias(alias: str, name: str) -> None:
    """Let `alias` (another code base's name) stand for the registered model `name`."""
    if name not in MODELS.module_dict:
        raise KeyError(f"model alias '{alias}' names '{name}', which is not a registered model")
    if alias in MODELS.module_dict:
        raise KeyError(f"model alias '{alias}' is itself a registered model")
    MODEL_ALIASES[alias] = name


def canonical_model_name(name: str) -> str:
    """The registered name an alias stands for; any other name unchanged."""
    return MODEL_ALIASES.get(name, name)


def closest_name(name: str, candidates: list[str]) -> str | None:
    """The candidate `name` most likely meant: a match ignoring case first, then the closest spelling
    (compared in lower case, so `mobilenetv2` finds `MobileNetV2`)."""
    folded: dict[str, str] = {}
    for candidate in sorted(candidates):
        folded.setdefault(candidate.lower(), candidate)
    if name.lower() in folded:
        return folded[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(folded), n=1)
    return folded[close[0]] if close else None


def unknown_name_message(
    kind: str, name: str, valid: list[str], aliases: dict[str, str] | None = None
) -> str:
    """One line: the unknown name, a did-you-mean (over the valid names and their `aliases`), the valid names."""
    aliases = aliases or {}
    close = closest_name(name, [*valid, *aliases])
    hint = ""
    if close in aliases:
        hint = f" Did you mean '{close}' (kdbench's '{aliases[close]}')?"
    elif close:
        hint = f" Did you mean '{close}'?"
    return f"unknown {kind} '{name}'.{hint} Valid: {', '.join(sorted(valid))}"


def lookup(registry: Registry, kind: str, name: str):
    """Return the registered object for `name` (a model alias resolved first), or raise
    UnknownNameError with the valid names."""
    aliases = MODEL_ALIASES if registry is MODELS else {}
    name = aliases.get(name, name)
    obj = registry.get(name) if name in registry.module_dict else None
    if obj is None:
        raise UnknownNameError(unknown_name_message(kind, name, list(registry.module_dict), aliases))
    return obj
