"""The Python API for notebooks and scripts: `kdbench.run`, `kdbench.leaderboard`, `kdbench.runs_frame`,
`kdbench.report`, `kdbench.load_records`.

    import kdbench
    records = kdbench.run(methods=["student", "kd"], seeds=3, recipe={"epochs": 6}, out="store")
    board = kdbench.leaderboard("store")  # a pandas DataFrame, one row per cell of the board
    print(kdbench.report("store", format="markdown"))

`run` takes the keys of a sweep file (kdbench/execution/settings.py, README "Sweep files") as keyword
arguments, over a sweep file or dict given as `config` and a preset, exactly like
`kdbench run --config FILE --preset NAME` with flags; it trains what is not in the store yet and
returns the sweep's records. Its signature lists those keys, read from the settings schema; its errors name
the keyword at fault (a sweep file's keys are checked as the file's).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from kdbench.core import store
from kdbench.core.errors import ConfigError
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

    valid = settings.keys_of("run")
    unknown = sorted(str(key) for key in keys if key not in valid)
    if unknown:
        raise ConfigError(
            f"unknown keyword(s): {', '.join(unknown)}; kdbench.run takes {', '.join(sorted(valid))}"
        )
    try:
        resolved = sweep_config.resolve(config, keys, preset)
        request = sweep_config.prepare(sweep_config.build_request(resolved), resolved, ["api.run"])
    except ConfigError as error:
        raise ConfigError(_as_keywords(str(error), valid)) from error
    summary = Sweep(request, progress=progress).run()
    wanted = summary.done + summary.cached + summary.failed
    return [store.find_record(request.out, run_id) for run_id in wanted]


def _as_keywords(message: str, valid: set[str]) -> str:
    """A settings error as the API's caller reads it: a setting the message names as its command-line flag
    (`--train-subset`) named as the keyword it was given as (`keyword train_subset`)."""

    def keyword(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return f"keyword {name}" if name in valid else match.group(0)

    return re.sub(r"--([a-z][a-z0-9-]*)", keyword, message)


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


def _board(records: str | Path | list[RunRecord], dataset: str | None, published: bool):
    from kdbench import reporting

    if not isinstance(records, list):
        records = load_records(records)
    return reporting.leaderboard(records, reporting.load_published() if published else None, dataset=dataset)


def leaderboard(
    records: str | Path | list[RunRecord] = settings.DEFAULT_STORE,
    dataset: str | None = None,
    published: bool = True,
) -> pd.DataFrame:
    """The leaderboard of a store (or of given records) as a pandas DataFrame: one row per cell of the board
    (a configuration on a pair; the teacher and published rows too), the columns of `--format csv`
    (kdbench/reporting/tidy.py `tidy_columns`); its caption and notes in `.attrs["caption"]`, `["notes"]`.
    `dataset`: the dataset to tabulate (default: the one with most runs)."""
    from kdbench import reporting

    return reporting.tidy_frame(_board(records, dataset, published))


def runs_frame(records: str | Path | list[RunRecord] = settings.DEFAULT_STORE) -> pd.DataFrame:
    """The per-run form of the data: one row per distillation record of a store (or of given records),
    failed ones included (`status`, `error`): the spec fields tables group by, the seed, the last- and
    best-epoch metrics, the costs and the evaluation's scalars (kdbench/reporting/frame.py `FRAME_COLUMNS`)."""
    from kdbench import reporting

    return reporting.records_frame(records if isinstance(records, list) else load_records(records))


def report(
    records: str | Path | list[RunRecord] = settings.DEFAULT_STORE,
    format: str = "markdown",
    dataset: str | None = None,
    published: bool = True,
) -> str:
    """The leaderboard of a store (or of given records) as text: markdown, csv, json, latex, html,
    terminal; the same table as `kdbench report`."""
    from kdbench import reporting

    return reporting.render(_board(records, dataset, published), format)
