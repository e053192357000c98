"""The Python API for notebooks and scripts: `kdbench.run`, `kdbench.report`, `kdbench.load_records`.

    import kdbench
    records = kdbench.run(methods=["student", "kd"], seeds=3, recipe={"epochs": 6}, out="store")
    print(kdbench.report("store", format="markdown"))

`run` takes the keys of a sweep file (kdbench/execution/settings.py, README "Sweep files") as keyword
arguments, over a sweep file or dict given as `config` and a preset, exactly like
`kdbench run --config FILE --preset NAME` with flags; it trains what is not in the store yet and
returns the sweep's records. Its signature lists those keys, read from the settings schema.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from kdbench.core import store
from kdbench.core.store import RunRecord
from kdbench.execution import config as sweep_config
from kdbench.execution import settings


def run(
    config: str | Path | dict | None = None,
    *,
    preset: str | None = None,
    progress: Callable[[str], None] | None = None,
    **keys,
) -> list[RunRecord]:
    """Train a sweep (preset < `config` < `keys`) and return its records (done, cached, then failed)."""
    from kdbench.execution.sweep import Sweep

    resolved = sweep_config.resolve(config, keys, preset)
    request = sweep_config.prepare(sweep_config.build_request(resolved), resolved, ["api.run"])
    summary = Sweep(request, progress=progress).run()
    wanted = summary.done + summary.cached + summary.failed
    return [store.find_record(request.out, run_id) for run_id in wanted]


def _run_signature() -> inspect.Signature:
    """`run`'s own parameters, then every other sweep key as a keyword (what notebooks complete)."""
    own = list(inspect.signature(run).parameters.values())[:-1]  # **keys stands for the sweep keys
    named = {parameter.name for parameter in own}
    keys = [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None)
        for key in settings.sweep_settings()
        if key not in named
    ]
    return inspect.Signature([*own, *keys], return_annotation=list[RunRecord])


run.__signature__ = _run_signature()


def load_records(out: str | Path = settings.DEFAULT_STORE, kind: str | None = "distill") -> list[RunRecord]:
    """The run records of a store: distillation runs (the baseline's included), or `kind="teacher"`,
    or every record with `kind=None`."""
    return store.load_records(Path(out), kind)


def report(
    records: str | Path | list[RunRecord] = settings.DEFAULT_STORE,
    format: str = "markdown",
    dataset: str | None = None,
    published: bool = True,
) -> str:
    """The leaderboard of a store (or of given records) as text: markdown, csv, json, latex, html,
    terminal; the same table as `kdbench report`."""
    from kdbench import reporting as board

    if not isinstance(records, list):
        records = load_records(records)
    table = board.leaderboard(records, board.load_published() if published else None, dataset=dataset)
    return board.render(table, format)
