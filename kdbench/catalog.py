"""Read the declarative catalogs shipped in registry/ (kdbench.registry): pairs and presets
(registry/presets/*.yaml, sweep files read by kdbench/config.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from kdbench.errors import ConfigError
from kdbench.registries import UnknownNameError, canonical_model_name, unknown_name_message


@cache
def _load(name: str) -> dict:
    return json.loads(resources.files("kdbench.registry").joinpath(name).read_text())


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    # published per-pair hyper-parameters, {method: {key: value}}; user --hp overrides win
    hp: dict = field(default_factory=dict, compare=False, hash=False)

    def __str__(self) -> str:
        return f"{self.teacher}:{self.student}"


def registered_pairs(group: str | None = None) -> list[Pair]:
    return [
        Pair(p["teacher"], p["student"], p.get("hp", {}))
        for p in _load("pairs.json")["pairs"]
        if group in (None, p["group"])
    ]


def pair_groups() -> list[str]:
    return sorted({p["group"] for p in _load("pairs.json")["pairs"]})


def parse_pairs(text: str) -> list[Pair]:
    """'t:s,t2:s2' or a group name of registry/pairs.json ('repdistiller', 'quick')."""
    if text in pair_groups():
        return registered_pairs(text)
    pairs = []
    for item in text.split(","):
        # another code base's name (RepDistiller's, mdistiller's) becomes kdbench's before anything uses it
        names = [canonical_model_name(name) for name in _model_names(item.strip())]
        if len(names) != 2 or not all(names):
            raise ConfigError(
                f"bad pair '{item}': write teacher:student, e.g. resnet56:resnet20 "
                f"(timm models as timm:NAME), or a group: {', '.join(pair_groups())}"
            )
        registered = {(p.teacher, p.student): p for p in registered_pairs()}
        pairs.append(registered.get(tuple(names), Pair(*names)))
    return pairs


def _model_names(item: str) -> list[str]:
    """Split 'teacher:student' where either side may itself be 'timm:NAME'."""
    names: list[str] = []
    parts = iter(item.split(":"))
    for part in parts:
        names.append(f"timm:{next(parts, '')}" if part == "timm" else part)
    return names


@cache
def presets() -> dict[str, dict]:
    """The built-in presets, registry/presets/<name>.yaml: sweep files that fill every key."""
    import yaml

    folder = resources.files("kdbench.registry").joinpath("presets")
    return {
        entry.name.removesuffix(".yaml"): yaml.safe_load(entry.read_text())
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".yaml")
    }


def preset(name: str) -> dict:
    all_presets = presets()
    if name not in all_presets:
        raise UnknownNameError(unknown_name_message("preset", name, list(all_presets)))
    return all_presets[name]
