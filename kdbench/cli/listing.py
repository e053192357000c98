"""`kdbench list`: the registered names (methods, models, datasets, pairs, presets)."""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench.cli import common

HELP = "list registered names"
EXAMPLES = """examples:
  kdbench list methods --verbose                         # hyper-parameters, defaults, citations
  kdbench list presets
"""


def add(commands) -> None:
    common.command_parser(commands, "list", HELP, EXAMPLES)


def _methods(verbose: bool) -> None:
    from kdbench.core.registries import METHODS
    from kdbench.execution import plugins

    for name in sorted(name for name in METHODS.module_dict if "+" not in name):
        cls = METHODS.get(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        source = plugins.owner("method", name)
        print(f"{name:12s} {summary}" + (f" (plugin {source})" if source else ""))
        if verbose:
            citation = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[:1]
            print(f"{'':12s} paper: {citation[0] if citation else '(none)'}")
            hp = ", ".join(f"{key}={value}" for key, value in cls.resolve_hp().items())
            print(f"{'':12s} hyper-parameters (--hp {name}.KEY=VALUE): {hp}")
            # what a method needs and allows, from its class: a teacher, extra views, fusing (--fuse on)
            needs = "a teacher" if cls.needs_teacher else "no teacher"
            views = f", extra views {', '.join(cls.extra_views)}" if cls.extra_views else ""
            print(f"{'':12s} needs {needs}{views}; fuses under --fuse on: {'yes' if cls.fuses else 'no'}")
            print(f"{'':12s} pair kinds: {', '.join(cls.served_pair_kinds())}")
    print(
        f"{'NAME+kd':12s} Any teacher method plus vanilla KD (kd_weight 1), e.g. crd+kd as in the CRD paper."
    )
    if verbose:
        print(
            "pair kinds: cnn = two CNNs, hetero = a CNN and a token model (ViT, Swin, MLP-Mixer through timm), "
            "token = two token models; a method refuses, before training, a pair of a kind it does not serve"
        )


def _models() -> None:
    from kdbench.core.registries import MODEL_ALIASES
    from kdbench.models import list_models

    # the other code bases' names each model also answers to (RepDistiller, mdistiller)
    aliases: dict[str, list[str]] = {}
    for alias, name in sorted(MODEL_ALIASES.items()):
        aliases.setdefault(name, []).append(alias)
    for name in list_models():
        also = f" (alias {', '.join(aliases[name])})" if name in aliases else ""
        print(f"{name}{also}")
    print("timm:<any timm model name>")


def _datasets() -> None:
    from kdbench.data import list_datasets

    print("\n".join(list_datasets()))


def _pairs() -> None:
    from kdbench.core.catalog import pair_groups, registered_pairs

    for group in pair_groups():
        print(f"{group}: " + ", ".join(str(p) for p in registered_pairs(group)))


def _presets() -> None:
    from kdbench.core.catalog import presets

    for name, body in presets().items():
        print(f"{name:8s} {body['description']}")


def execute(args) -> int:
    from kdbench.execution import plugins

    # installed plugins' entry points register their names too
    plugins.load(plugins.resolve(args.plugins, Path.cwd()))
    if args.what == "methods":
        _methods(args.verbose)
    else:
        {"models": _models, "datasets": _datasets, "pairs": _pairs, "presets": _presets}[args.what]()
    return 0
