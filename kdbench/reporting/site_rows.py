"""The rows of a leaderboard page (kdbench/reporting/html.py) and of the site (site.py), from a board's
statistics: one dict per (row, pair) cell, holding the board's display strings, the numbers a column sorts
by, the filter fields, the chart's fields and, for a measured cell, its run ids and the published row it is
compared with. Nothing is recomputed but what a page shows differently from the text boards: an interval
is "n < 3" below three seeds and clipped to [0, 100] (accuracy cannot leave it), and the Pareto front of
each pair (no other cell of the pair both more accurate and cheaper)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import pandas as pd

from kdbench.core.spec import wrapper_label
from kdbench.reporting.board import OVERHEAD_COLUMNS, Leaderboard
from kdbench.reporting.frame import records_frame
from kdbench.reporting.stats import wrapper_columns

NO_WRAPPER = "none"  # the wrappers field of a row that applies none
MIN_INTERVAL_SEEDS = 3  # below this, a t-interval is too wide to say anything: the cell says "n < 3"
# the cost each chart puts on its x axis against top-1: (row field, axis title, Pareto field)
CHART_COSTS = (
    ("train_gflops", "train GFLOPs / image (teacher forward included)", "pareto_train"),
    ("deploy_gflops", "deploy GFLOPs / image (the exported student)", "pareto_deploy"),
)
# the record's evaluation (kdbench/core/records.py) a board shows, mean over a row's runs: (key, header,
# first sort order); a row whose records predate it has none
EVALUATION_SHOWN = (
    ("ece", "ECE (%)", "ascending"),
    ("agreement_top1", "agrees with teacher (%)", "descending"),
)
_CHART_FIELDS = {
    "train_gflops": ("train_flops_per_image", 1e-9),
    "deploy_gflops": ("deploy_flops_per_image", 1e-9),
    "time_ratio": ("time_ratio_vs_student", 1.0),
}


def interval_text(ci_low: float, ci_high: float, n: float, published: bool) -> str:
    """A cell's 95 % interval as the page shows it: "n < 3" below three seeds, else clipped to [0, 100]."""
    if published or pd.isna(n):
        return ""
    if n < MIN_INTERVAL_SEEDS or pd.isna(ci_low):
        return f"n < {MIN_INTERVAL_SEEDS}"
    return f"{max(0.0, ci_low):.2f}–{min(100.0, ci_high):.2f}"


def cell_id(dataset: str, config: str) -> str:
    """A measured cell's page name: the digest of its dataset and configuration (a safe file name)."""
    return hashlib.sha256(f"{dataset}\n{config}".encode()).hexdigest()[:16]


def _number(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _pareto(points: list[tuple[int, float, float]]) -> set[int]:
    """The indices of the points (index, cost, accuracy) no other point dominates: at most its cost with
    a higher accuracy, or less cost with at least its accuracy."""
    front = set()
    for index, cost, accuracy in points:
        dominated = any(
            (c <= cost and a > accuracy) or (c < cost and a >= accuracy) for i, c, a in points if i != index
        )
        if not dominated:
            front.add(index)
    return front


def _mark_pareto(rows: list[dict]) -> None:
    """Each measured row's Pareto flags, per pair and cost (a row without that cost is on no front)."""
    for field, _, flag in CHART_COSTS:
        for row in rows:
            row[flag] = False
        for pair in {row["pair"] for row in rows}:
            points = [
                (index, row[field], row["mean"])
                for index, row in enumerate(rows)
                if row["pair"] == pair
                and row["measured"]
                and row[field] is not None
                and row["mean"] is not None
            ]
            for index in _pareto(points):
                rows[index][flag] = True


def board_rows(
    board: Leaderboard, records: Sequence[dict], significant_mark: str, wrappers: Sequence[str]
) -> list[dict]:
    """One dict per (row, pair) cell of `board`, in the board's row order; `records` give each measured
    cell its run ids; a Δ of each of `wrappers` (those of every board on the page)."""
    display = board.table.copy()
    for row, column in board.significant:
        display.loc[row, column] = f"{display.loc[row, column]}{significant_mark}"
    order = {label: index for index, label in enumerate(board.table.index)}
    stats = board.stats.assign(_order=board.stats["row"].map(order)).sort_values("_order", kind="stable")
    runs = _run_ids(records, board.dataset)
    evaluations = {record["run_id"]: record.get("evaluation") or {} for record in records}
    published = {
        (cell["method"], cell["pair"]): cell["row"] for cell in stats.to_dict("records") if cell["published"]
    }
    rows = [
        _row(board, cell, display, runs, published, wrappers, index)
        for index, cell in enumerate(stats.to_dict("records"))
    ]
    for row in rows:
        row["evaluation"] = _mean_evaluation([evaluations.get(run_id, {}) for run_id in row["runs"]])
    _mark_pareto(rows)
    return rows


def _mean_evaluation(evaluations: list[dict]) -> dict[str, float | None]:
    """The mean of each EVALUATION_SHOWN figure over the runs that have it (None where none has)."""
    means = {}
    for key, _, _ in EVALUATION_SHOWN:
        values = [evaluation[key] for evaluation in evaluations if evaluation.get(key) is not None]
        means[key] = sum(values) / len(values) if values else None
    return means


def _run_ids(records: Sequence[dict], dataset: str) -> dict[str, list[str]]:
    """Configuration -> the run ids of its finished runs on `dataset`."""
    frame = records_frame(records)
    done = frame[(frame["status"] == "done") & (frame["dataset"] == dataset)]
    return {config: list(group["run_id"]) for config, group in done.groupby("config", sort=False)}


def _shown(display: pd.DataFrame, label: str, column: str) -> str:
    return str(display.loc[label, column]) if column in display.columns else ""


def _row(
    board: Leaderboard,
    cell: dict,
    display: pd.DataFrame,
    runs: dict[str, list[str]],
    published: dict[tuple[str, str], str],
    wrappers: Sequence[str],
    index: int,
) -> dict:
    label, pair, dataset = cell["row"], cell["pair"], board.dataset
    measured = not cell["published"] and cell["method"] != "teacher"
    applied = " ".join(wrapper_label(name) for name in cell["wrappers"].split("+") if name) or NO_WRAPPER
    costs = {
        column: (_number(cell[column]), "" if pd.isna(cell[column]) else fmt(float(cell[column])))
        for _, column, fmt in OVERHEAD_COLUMNS
    }
    return {
        "id": f"{_slug_of(dataset)}-{index}",
        "dataset": dataset,
        "pair": pair,
        "label": label,
        "method": cell["method"],
        "wrappers": applied,
        "published": bool(cell["published"]),
        "measured": measured,
        "best": (label, pair) in board.best,
        "significant": (label, f"{pair} Δ") in board.significant,
        "top1_text": _shown(display, label, pair),
        "mean": _number(cell["mean"]),
        "n": _number(cell["n"]),
        "ci_text": interval_text(cell["ci_low"], cell["ci_high"], cell["n"], bool(cell["published"])),
        "ci_low": _number(cell["ci_low"]),
        "delta_text": _shown(display, label, f"{pair} Δ"),
        "delta": _number(cell["delta"]),
        "p_value": _number(cell["p_value"]),
        "wrapper_deltas": [
            (_shown(display, label, f"{pair} Δ{wrapper_label(w)}"), _number(cell.get(wrapper_columns(w)[1])))
            for w in wrappers
        ],
        "costs": costs,
        **{name: _scaled(cell, column, scale) for name, (column, scale) in _CHART_FIELDS.items()},
        "cell": cell_id(dataset, cell["config"]) if measured and cell["config"] else None,
        "runs": runs.get(cell["config"], []) if measured else [],
        "published_row": published.get((cell["method"], pair)) if measured else None,
    }


def _scaled(cell: dict, column: str, scale: float) -> float | None:
    value = _number(cell[column])
    return None if value is None or math.isnan(value) else value * scale


def _slug_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def published_anchor(rows: Sequence[dict], row: dict) -> str | None:
    """The id of the published row `row` is compared with (same method and pair), where the page has it."""
    if not row["published_row"]:
        return None
    return next(
        (
            other["id"]
            for other in rows
            if other["published"] and other["pair"] == row["pair"] and other["label"] == row["published_row"]
        ),
        None,
    )


def filter_values(rows: Sequence[dict], field: str, key: Callable[[str], object] = str) -> list[str]:
    """The values a filter offers: those of its field in the rows, sorted."""
    return sorted({row[field] for row in rows}, key=key)
