"""Read the declarative catalogs shipped in registry/ (kdbench.registry): pairs and presets
(registry/presets/*.yaml, sweep files read by kdbench/execution/config.py), and YAML as plain data (`read_yaml`),
the one way kdbench reads YAML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml

from kdbench.core.errors import ConfigError, shorten
from kdbench.core.registries import UnknownNameError, canonical_model_name, unknown_name_message


class _RefusedYaml(yaml.YAMLError):
    """YAML that plain data cannot hold: a tag or an alias."""


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise _RefusedYaml(
        f"line {node.start_mark.line + 1}: YAML tag {shorten(tag)} refused: kdbench reads YAML as plain "
        "data (mappings, lists, strings, numbers), never objects; remove the tag"
    )


class _PlainDataLoader(yaml.SafeLoader):
    """YAML's safe loader (mappings, lists, strings, numbers, booleans, dates), refusing by line
    every tag it cannot build as such (!!python/..., custom tags) and every alias (*name): an alias
    shares one value between places, so a few lines of nested aliases grow exponentially where
    the configuration is written out (sweeps/<sha>.json)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _RefusedYaml(
                f"line {event.start_mark.line + 1}: YAML alias {shorten('*' + event.anchor)} refused: kdbench "
                "reads YAML as plain data and expands no aliases; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # a key written twice keeps only its last value, silently: which one the user meant is a guess
        mapping = super().construct_mapping(node, deep=deep)  # refuses an unhashable key by line
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _RefusedYaml(
                    f"line {key_node.start_mark.line + 1}: key {shorten(key)} appears twice in one mapping; "
                    "keep one"
                )
            seen.add(key)
        return mapping


_PlainDataLoader.add_constructor(None, _refuse_tag)  # None: the constructor of every unknown tag


def read_yaml(text: str, source: str) -> object:
    """YAML `text` as plain data, never an object built by a tag; a ConfigError naming `source` and
    the line where it is malformed or holds a tag or an alias."""
    try:
        return yaml.load(text, Loader=_PlainDataLoader)
    except _RefusedYaml as err:
        raise ConfigError(f"{source} {err}") from err
    except yaml.MarkedYAMLError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark else ""
        raise ConfigError(f"{source} is unreadable ({where}{err.problem or err.context})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is unreadable ({str(err).splitlines()[0]})") from err
    except RecursionError as err:
        raise ConfigError(f"{source} is unreadable (nested too deeply)") from err


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
                f"bad pair {shorten(item)}: write teacher:student, e.g. resnet56:resnet20 "
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
    folder = resources.files("kdbench.registry").joinpath("presets")
    return {
        entry.name.removesuffix(".yaml"): read_yaml(entry.read_text(), f"preset {entry.name}")
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".yaml")
    }


def preset(name: str) -> dict:
    all_presets = presets()
    if name not in all_presets:
        raise UnknownNameError(unknown_name_message("preset", name, list(all_presets)))
    return all_presets[name]
