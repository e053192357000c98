"""The values of settings (kdbench/execution/settings.py): a flag's text parsed and checked, a flag's value
as configuration, a configuration value as a request's. A parser raises ConfigError with the reason; the
command line shows it as argparse's one line (`argument --epochs: must be >= 1, got 0`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdbench.core.errors import ConfigError, shorten

# -- values from text (a flag's) ----------------------------------------------------------------------


def whole(low: int):
    """A whole number >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"takes a whole number, got {text!r}") from None
        if value < low:
            raise ConfigError(f"must be >= {low}, got {value}")
        return value

    return parse


def number(above: float | None = None, low: float | None = None, below: float | None = None):
    """A finite number in range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"takes a number, got {text!r}") from None
        if not (
            math.isfinite(value)
            and (above is None or value > above)
            and (low is None or value >= low)
            and (below is None or value < below)
        ):
            bounds = [f"> {above}" if above is not None else "", f">= {low}" if low is not None else ""]
            bounds += [f"< {below}" if below is not None else ""]
            raise ConfigError(f"must be {' and '.join(b for b in bounds if b)}, got {text}")
        return value

    return parse


def cohort(text: str) -> bool | int:
    """on, off, or the most runs a cohort holds."""
    return {"on": True, "off": False}.get(text) if text in ("on", "off") else whole(1)(text)


def on_off(text: str) -> bool:
    """on or off."""
    if text not in ("on", "off"):
        raise ConfigError(f"takes on or off, got {text!r}")
    return text == "on"


def whole_list(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers >= 1 (`4,8`)."""
    return tuple(whole(1)(part) for part in text.split(",") if part)


def device(text: str) -> str:
    """A torch device that exists on this machine."""
    if text == "cpu":
        return text
    import torch

    try:
        found = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if found.type == "cuda" and (
        not torch.cuda.is_available() or (found.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"{text}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu"
        )
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{text}: MPS is not available here; use --device cpu")
    return text


# -- a flag's value as configuration, a configuration value as a request's ----------------------------


def hp_overrides(items: list[str]) -> dict[str, list]:
    """--hp METHOD.KEY=V[,V...] as {METHOD.KEY: [values]}: several values are a grid."""
    overrides: dict[str, list] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name or not value:
            raise ConfigError(
                f"bad --hp '{item}': write METHOD.KEY=VALUE[,VALUE...], e.g. kd.temperature=2,4"
            )
        overrides[key] = value.split(",")  # typed by the method's defaults (resolve_hp)
    return overrides


def wrapper_settings(items: list[str]) -> dict[str, dict]:
    """--wrapper NAME[:KEY=VALUE,...] as the `wrappers` key, {NAME: {KEY: value}}; a value is read as JSON
    (2, 0.5, true) or else kept as text. The wrapper's config class checks the names and values."""
    wrappers: dict[str, dict] = {}
    for item in items:
        name, _, fields = item.partition(":")
        pairs = [pair.partition("=") for pair in fields.split(",")] if fields else []
        if not name or any(not key or not sep for key, sep, _ in pairs):
            raise ConfigError(f"bad --wrapper '{item}': write NAME or NAME:KEY=VALUE[,KEY=VALUE...]")
        wrappers.setdefault(name, {}).update({key: _json_or_text(value) for key, _, value in pairs})
    return wrappers


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def plugin_files(files: list[str]) -> dict:
    """--plugin files as a sweep's `custom_imports`, their paths made absolute."""
    from kdbench.execution import plugins

    return {"imports": plugins.resolve(files, Path.cwd())}


def names(value, what: str) -> str | list[str]:
    """A comma list or a list of names ('all' stays a word)."""
    if isinstance(value, str):
        return value if value == "all" else [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ConfigError(f"{what} takes a comma list or a list of names, got {shorten(value)}")


def tracker_names(value) -> tuple[str, ...]:
    from kdbench.core.trackers import check_trackers

    return check_trackers(names(value, "log"))
