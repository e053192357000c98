"""Student wrappers (kdbench/wrappers/base.py has the contract); importing this package
registers the built-in ones (VAM) in `kdbench.core.registries.WRAPPERS`, without importing torch."""

from __future__ import annotations

from kdbench.core.errors import ConfigError
from kdbench.core.registries import WRAPPERS, lookup
from kdbench.core.spec import RunSpec, wrapper_config
from kdbench.wrappers import vam  # noqa: F401  (registers the built-in wrapper)
from kdbench.wrappers.base import StudentWrapper


def build_wrappers(spec: RunSpec) -> list[StudentWrapper]:
    """The wrappers a spec asks for (`RunSpec.wrappers`), in the order of their names; a config still a
    mapping (a spec read before its wrapper's plugin was loaded) is read through the config class."""
    built = []
    for name, config in spec.wrappers.items():
        wrapper_cls = lookup(WRAPPERS, "student wrapper", name)
        if not isinstance(config, wrapper_cls.config_class):
            config = wrapper_config(wrapper_cls.config_class, config, name)
        built.append(wrapper_cls(config))
    return built


def wrapper_configs(settings: dict) -> dict:
    """The `wrappers` setting ({name: {field: value}}: a sweep file's key, `--wrapper`) as {name: config},
    each read through its registered wrapper's config class; a ConfigError naming a name or field that is
    not one."""
    if not isinstance(settings, dict):
        raise ConfigError(f"wrappers takes a mapping of wrapper name to settings, got {settings!r}")
    configs = {}
    for name, fields in settings.items():
        wrapper_cls = lookup(WRAPPERS, "student wrapper", name)
        configs[name] = wrapper_config(
            wrapper_cls.config_class, {} if fields is None else fields, f"wrappers.{name}"
        )
    return configs


__all__ = ["StudentWrapper", "build_wrappers", "wrapper_configs"]
