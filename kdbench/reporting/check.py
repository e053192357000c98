"""The CI regression gate: each baseline cell against the store's runs of the same configuration.

A cell is one configuration: the full resolved spec except the seed (teacher SHA-256, wrapper settings,
every hyper-parameter, recipe, precision, ...). The baseline holds per cell the mean, std and n of the
last-epoch top-1 over n >= 3 seeds, and the configuration itself. A cell regresses when its runs are
significantly below the baseline (one-sided Welch t-test; the p-values of a check's cells are Holm-
corrected, so `alpha`, default 0.01, bounds the chance of any false alarm in the whole check) or,
where a test is impossible (fewer than 2 seeds on a side, or no variance on either), when its mean
is more than `floor_pts` below. A baseline that is missing or malformed, an empty store, or a baseline cell whose
configuration the store never trained are unusable input (ConfigError: `kdbench check` exits 2).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scipy import stats

from kdbench.core.errors import ConfigError, file_problem
from kdbench.core.store import RunRecord, atomic_write_bytes
from kdbench.reporting.frame import applied_wrappers, pair_label, row_label

BASELINE_FORMAT = "kdbench-baseline/2"
DEFAULT_ALPHA = 0.01
DEFAULT_FLOOR_PTS = 1.0
MIN_SEEDS = 3
SHOWN_CELLS = 5  # cells named in a refusal; a grid may have thousands, and the message is one line
_CELL_KEYS = ("label", "config", "mean", "std", "n")


def _config(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != "seed"}


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _label(config: dict[str, Any]) -> str:
    pair = pair_label(config.get("teacher"), config["student"])
    return f"{row_label(config['method'], applied_wrappers(config))} on {config['dataset']} {pair}"


def _cells(records: Iterable[RunRecord]) -> dict[str, dict]:
    """Per configuration: its finished top-1 per distinct seed, and the errors of failed runs."""
    cells: dict[str, dict] = {}
    for record in records:
        config = _config(record["spec"])
        cell = cells.setdefault(_key(config), {"config": config, "top1": {}, "errors": []})
        if record["status"] == "done":
            cell["top1"].setdefault(record["spec"]["seed"], record["metrics"]["last_top1"])
        else:
            cell["errors"].append(record.get("error") or record["status"])
    return cells


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_baseline(
    records: Iterable[RunRecord],
    path: Path,
    alpha: float = DEFAULT_ALPHA,
    floor_pts: float = DEFAULT_FLOOR_PTS,
) -> dict:
    """Write the baseline of every finished cell; refuse (nothing written) an empty one or a cell
    with fewer than MIN_SEEDS seeds."""
    cells = [cell for cell in _cells(records).values() if cell["top1"]]
    if not cells:
        raise ConfigError(
            f"no finished run in the store: the baseline {path} would be empty; nothing written"
        )
    few = [f"{_label(c['config'])} (n={len(c['top1'])})" for c in cells if len(c["top1"]) < MIN_SEEDS]
    if few:
        shown = ", ".join(few[:SHOWN_CELLS]) + (
            f" and {len(few) - SHOWN_CELLS} more" if few[SHOWN_CELLS:] else ""
        )
        raise ConfigError(f"a baseline needs >= {MIN_SEEDS} seeds per cell: {shown}; nothing written")
    entries = []
    for cell in cells:
        mean, std = _summary(list(cell["top1"].values()))
        entries.append(
            {"label": _label(cell["config"]), "config": cell["config"], "mean": round(mean, 4),
             "std": round(std, 4), "n": len(cell["top1"]), "seeds": sorted(cell["top1"])}
        )  # fmt: skip
    baseline = {"format": BASELINE_FORMAT, "alpha": alpha, "floor_pts": floor_pts, "cells": entries}
    try:
        atomic_write_bytes(Path(path), (json.dumps(baseline, indent=1, sort_keys=True) + "\n").encode())
    except OSError as err:  # a folder, or a place the user cannot write: the path given is at fault
        raise ConfigError(
            f"baseline {path} cannot be written ({err.strerror}); give a writable file path"
        ) from err
    return baseline


def read_baseline(path: Path) -> dict:
    """The baseline at `path`, its shape checked; a ConfigError naming the file and the fault."""
    path = Path(path)
    problem = file_problem(path, missing="not found")
    if problem:
        raise ConfigError(f"baseline {path} {problem}; create it with kdbench check --write-baseline")
    try:
        baseline = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"baseline {path} is not readable JSON ({err})") from err
    if not isinstance(baseline, dict) or baseline.get("format") != BASELINE_FORMAT:
        raise ConfigError(
            f"baseline {path} is not a {BASELINE_FORMAT} file (rewrite it with --write-baseline)"
        )
    cells = baseline.get("cells")
    if not isinstance(cells, list) or not cells:
        raise ConfigError(f"baseline {path} has no cells")
    for index, cell in enumerate(cells):
        missing = [key for key in _CELL_KEYS if not isinstance(cell, dict) or key not in cell]
        if missing:
            raise ConfigError(f"baseline {path}: cell {index} lacks {', '.join(missing)}")
        wrong = [key for key, valid in _CELL_VALUES.items() if not valid(cell[key])]
        if wrong:
            raise ConfigError(f"baseline {path}: cell {index} has a bad {', '.join(wrong)}; rewrite it")
    wrong = [key for key, valid in _LEVELS.items() if key in baseline and not valid(baseline[key])]
    if wrong:
        raise ConfigError(f"baseline {path} has a bad {', '.join(wrong)}; rewrite it with --write-baseline")
    return baseline


def _number(value: object) -> bool:
    """A finite JSON number (a NaN std would make every test of its cell untestable, so pass)."""
    return type(value) in (int, float) and math.isfinite(value)


_CELL_VALUES = {
    "label": lambda value: isinstance(value, str),
    "config": lambda value: isinstance(value, dict),
    "mean": _number,
    "std": lambda value: _number(value) and value >= 0,
    "n": lambda value: type(value) is int and value >= 1,
}
_LEVELS = {
    "alpha": lambda value: _number(value) and 0 < value < 1,
    "floor_pts": lambda value: _number(value) and value >= 0,
}


def _p_value(values: list[float], cell: dict) -> float | None:
    """One-sided Welch p-value of `values` being below the baseline cell; None where untestable."""
    mean, std = _summary(values)
    if len(values) < 2 or cell["n"] < 2 or (std == 0 and cell["std"] == 0):
        return None
    p_value = stats.ttest_ind_from_stats(
        mean, std, len(values), cell["mean"], cell["std"], cell["n"], equal_var=False, alternative="less"
    ).pvalue
    return float(p_value) if math.isfinite(p_value) else None


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def _seen(values: list[float], cell: dict) -> str:
    mean, std = _summary(values)
    return (
        f"{cell['label']}: top-1 {mean:.2f} ± {std:.2f} (n={len(values)}) vs baseline "
        f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell['n']})"
    )


def check_regression(
    records: Iterable[RunRecord], baseline: dict, alpha: float | None = None, floor_pts: float | None = None
) -> list[str]:
    """One message per regressed cell (or cell whose runs all failed)."""
    alpha = baseline.get("alpha", DEFAULT_ALPHA) if alpha is None else alpha
    floor_pts = baseline.get("floor_pts", DEFAULT_FLOOR_PTS) if floor_pts is None else floor_pts
    cells = _cells(records)
    if not cells:
        raise ConfigError("the store has no run records to check")
    messages, tested = [], []
    for cell in baseline["cells"]:
        current = cells.get(_key(cell["config"]))
        if current is None:
            raise ConfigError(f"baseline cell '{cell['label']}' has no run of its configuration in the store")
        values = list(current["top1"].values())
        if not values:
            messages.append(
                f"{cell['label']}: no finished run; {len(current['errors'])} failed, e.g. {current['errors'][0]}"
            )
        elif (p_value := _p_value(values, cell)) is not None:
            tested.append((cell, values, p_value))
        elif statistics.mean(values) < cell["mean"] - floor_pts:
            below = cell["mean"] - statistics.mean(values)
            messages.append(
                f"{_seen(values, cell)}: {below:.2f} pts below, more than the floor {floor_pts} (too few seeds to test)"
            )
    for (cell, values, _), adjusted in zip(tested, holm([p for *_, p in tested]), strict=True):
        if adjusted < alpha:
            messages.append(
                f"{_seen(values, cell)}: significantly lower (one-sided Welch, Holm p = {adjusted:.2g} < {alpha})"
            )
    return messages
