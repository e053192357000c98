"""A leaderboard as tidy data: one row per cell of the board (a configuration on a pair, the teacher and
published rows included), each with what identifies it (dataset, teacher, student, method, wrappers, the
epochs and each hyper-parameter as a column of its own), its statistics, its costs and the mean of its
runs' evaluation scalars. `--format csv` and `json` write it, `kdbench.leaderboard()` returns it."""

from __future__ import annotations

import json
import math

import pandas as pd

from kdbench.reporting.board import Leaderboard
from kdbench.reporting.frame import EVALUATION_KEYS, OVERHEAD_KEYS
from kdbench.reporting.stats import wrapper_columns

# what identifies a cell, before its numbers: the pair's teacher ("" for a bare student) and student
IDENTITY_COLUMNS = ("dataset", "teacher", "student", "method", "wrappers")


def tidy_columns(wrappers: list[str], hp_columns: list[str] = ()) -> list[str]:
    """The columns of a tidy export, one row per (row, pair) cell: what identifies it, whether it applies each
    wrapper (`vam`), its row label and pair, the epochs and each hyper-parameter (`hp.temperature`); then its
    statistics (percent points), each wrapper's Δ and Holm-corrected p (`vam_delta`, `vam_p_value`), its costs
    (counts, FLOPs, seconds, bytes), the mean of its runs' evaluation (ECE %, top-1 agreement with the teacher
    %, KL(teacher || student) in nats) and its configuration (canonical JSON). NaN/empty where a cell has no
    value; booleans are True/False."""
    applied = [wrapper_columns(wrapper)[0] for wrapper in wrappers]
    deltas = [column for wrapper in wrappers for column in wrapper_columns(wrapper)[1:]]
    return [
        *IDENTITY_COLUMNS,
        *applied,
        *("row", "pair", "epochs", *hp_columns),
        *("mean", "std", "n", "ci_low", "ci_high", "delta", "p_raw", "p_value", "significant", "best"),
        *deltas,
        "published",
        *OVERHEAD_KEYS,
        *EVALUATION_KEYS,
        "config",
    ]


def _pair_members(pair: str) -> tuple[str, str]:
    """(teacher, student) of a pair label (`pair_label`): "" for the teacher of a bare student."""
    teacher, _, student = pair.rpartition("→")
    return teacher, student


def _hp_value(value: object) -> object:
    """A hyper-parameter as one cell: a number or a string stays itself, a list or mapping is its JSON."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def tidy_frame(board: Leaderboard) -> pd.DataFrame:
    """The board's cells as tidy rows (`tidy_columns`), pair by pair in the board's row order; the caption and
    notes in `attrs`."""
    stats = board.stats
    specs = [json.loads(config) if config else {} for config in stats["config"]]
    members = [_pair_members(pair) for pair in stats["pair"]]
    identity = pd.DataFrame(
        {
            "dataset": board.dataset,
            "teacher": [teacher for teacher, _ in members],
            "student": [student for _, student in members],
            "epochs": [(spec.get("recipe") or {}).get("epochs", math.nan) for spec in specs],
        },
        index=stats.index,
    )
    hp = pd.DataFrame(
        [{f"hp.{key}": _hp_value(value) for key, value in (spec.get("hp") or {}).items()} for spec in specs],
        index=stats.index,
    )
    runs = board.runs
    evaluation = (
        runs.groupby("config")[list(EVALUATION_KEYS)].mean()
        if "config" in runs
        else pd.DataFrame(columns=list(EVALUATION_KEYS), dtype=float)
    )
    scalars = evaluation.reindex(stats["config"]).set_index(stats.index)
    frame = pd.concat([stats, identity, hp, scalars], axis=1)
    # pair by pair, each in the board's row order (whatever order the records came in)
    pairs = {pair: position for position, pair in enumerate(pd.unique(stats["pair"]))}
    rows = {row: position for position, row in enumerate(board.table.index)}
    order = sorted(
        frame.index, key=lambda cell: (pairs[frame.at[cell, "pair"]], rows.get(frame.at[cell, "row"], -1))
    )
    columns = tidy_columns(board.wrappers, sorted(hp.columns))
    frame = frame.loc[order].reindex(columns=columns).reset_index(drop=True)
    frame.attrs.update(caption=board.caption, notes=list(board.notes))
    return frame
