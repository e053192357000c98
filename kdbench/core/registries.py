"""The name -> class registries (mmengine `Registry`): the engine builds by name, never by if/elif.

- MODELS:   factories `fn(num_classes, in_chans) -> nn.Module` (timm-style `@register_model`)
- METHODS:  `Method` subclasses (methods/<name>.py)
- DATASETS: loaders `fn(root, split, ...) -> InMemoryDataset`
- WRAPPERS: `StudentWrapper` subclasses (kdbench/wrappers/), e.g. VAM

MODEL_ALIASES maps other code bases' model names to the registered ones (RepDistiller's and mdistiller's
`MobileNetV2` is kdbench's `mobile_half`; kdbench/models/__init__.py registers them): a name is made
canonical where it enters (`canonical_model_name`), so specs, records and run ids hold one spelling.

A name is checked where it is registered (`NAME_RULE`): the command line splits lists at `,`, composes
methods with `+` (crd+kd), separates a pair's models and the `timm:` prefix with `:` and a hyper-parameter
from its method with `.` and `=` (`--hp kd.temperature=4`), so a name holding any of them could never be
selected; a leading letter or digit keeps a name from reading as a flag or a spreadsheet formula. A
name registered twice (a plugin reusing a built-in's) is refused rather than replaced.
"""

from __future__ import annotations

import difflib
import importlib
import re

from mmengine.registry import Registry

from kdbench.core.errors import KdbenchError, shorten

NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE_TEXT = "letters, digits, '_' and '-', starting with a letter or digit, at most 64 characters"


class RegistrationError(KdbenchError, KeyError):
    """A name that cannot be registered: malformed, or already taken (`existing` names its module)."""

    def __init__(self, message: str, existing: str | None = None):
        super().__init__(message)
        self.existing = existing

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def check_name(kind: str, name) -> str:
    """`name` when it is a valid registry name (NAME_RULE), else a RegistrationError saying why."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise RegistrationError(f"{kind} name {shorten(name)} is not valid: use {NAME_RULE_TEXT}")
    return name


class NamedRegistry(Registry):
    """An mmengine `Registry` that checks each name (`check_name`) and refuses one already taken,
    even with `force`: a plugin cannot silently replace a built-in."""

    def __init__(self, kind: str, locations: tuple[str, ...] = ()):
        super().__init__(f"kdbench {kind}", scope="kdbench", locations=list(locations))
        self.kind = kind

    def _register_module(self, module, module_name=None, force: bool = False) -> None:
        names = module_name if module_name is not None else getattr(module, "__name__", None)
        for name in [names] if not isinstance(names, list) else names:
            check_name(self.kind, name)
            if name in self._module_dict:
                existing = self._module_dict[name].__module__
                raise RegistrationError(
                    f"{self.kind} '{name}' is already registered (by {existing}); give yours another name",
                    existing,
                )
        super()._register_module(module, names)

    def import_from_location(self) -> None:
        """Import the modules that register the built-ins (`locations`), once, as mmengine's does but
        without its logger, which imports torch: reading records stays torch-free."""
        if not self._imported:
            for location in self._locations:
                importlib.import_module(location)
            self._imported = True

    def unregister(self, name: str) -> None:
        """Forget `name` (a plugin being loaded again in its edited form)."""
        self._module_dict.pop(name, None)


MODELS = NamedRegistry("model")
METHODS = NamedRegistry("method")
DATASETS = NamedRegistry("dataset")
# a spec names its wrappers (kdbench/core/spec.py), so reading one imports the built-ins where they live
WRAPPERS = NamedRegistry("student wrapper", locations=("kdbench.wrappers",))
MODEL_ALIASES: dict[str, str] = {}  # alias -> registered model name


class UnknownNameError(KdbenchError, KeyError):
    """A name not in a registry; its message lists the valid names and a did-you-mean."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def register_model_alias(alias: str, name: str) -> None:
    """Let `alias` (another code base's name) stand for the registered model `name`."""
    check_name("model alias", alias)
    if name not in MODELS.module_dict:
        raise RegistrationError(f"model alias '{alias}' names '{name}', which is not a registered model")
    if alias in MODELS.module_dict or alias in MODEL_ALIASES:
        raise RegistrationError(f"model alias '{alias}' is already a registered model or alias")
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
    return f"unknown {kind} {shorten(name)}.{hint} Valid: {', '.join(sorted(valid))}"


def lookup(registry: Registry, kind: str, name: str):
    """Return the registered object for `name` (a model alias resolved first), or raise
    UnknownNameError with the valid names."""
    aliases = MODEL_ALIASES if registry is MODELS else {}
    name = aliases.get(name, name)
    obj = registry.get(name) if name in registry.module_dict else None
    if obj is None:
        raise UnknownNameError(unknown_name_message(kind, name, list(registry.module_dict), aliases))
    return obj
