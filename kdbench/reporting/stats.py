"""The statistics of a leaderboard's cells (docs/DESIGN.md, "Statistics"): what a cell claims.

A cell is one configuration of one pair: mean, sample std, n and a 95 % t-interval of its last-epoch top-1
over seeds (`cell_numbers`). `compare` fills in, for the measured cells of one pair: Δ vs the student
baseline of the same configuration (but the distillation) with a two-sided Welch p-value, Holm-corrected
across the pair; "best", every cell not significantly below the pair's top mean (one-sided Welch); and for
each student wrapper a cell applies, the Δ of that wrapper: the cell minus the same configuration without
it (`<wrapper>_delta`), with its own Welch p Holm-corrected across the pair (`<wrapper>_p_value`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pandas as pd
from scipy import stats as scipy_stats

from kdbench.reporting.frame import BASELINE_METHOD

ALPHA = 0.05  # significance level of Δ (after Holm) and of "best"
CONFIDENCE = 0.95  # the t-interval of a cell's mean

# A student baseline is the same experiment but the distillation: these settings may differ from it.
_BASELINE_FREE = ("method", "teacher", "teacher_sha256", "hp", "kind")


def wrapper_columns(wrapper: str) -> tuple[str, str, str]:
    """A wrapper's columns of the stats: applied in the cell (bool), its Δ, the Holm-corrected p of its Δ."""
    return wrapper, f"{wrapper}_delta", f"{wrapper}_p_value"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; a NaN (no test) stays NaN and is not counted."""
    order = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted


def welch(cell: dict, other: dict, alternative: str = "two-sided") -> float:
    """Welch's t-test of cell vs other from their mean/std/n; NaN where impossible (n < 2, no variance)."""
    if cell["n"] < 2 or other["n"] < 2 or not (cell["std"] > 0 or other["std"] > 0):
        return math.nan
    result = scipy_stats.ttest_ind_from_stats(
        cell["mean"], cell["std"], cell["n"], other["mean"], other["std"], other["n"],
        equal_var=False, alternative=alternative,
    )  # fmt: skip
    return float(result.pvalue)


def _t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    if n < 2:
        return math.nan, math.nan
    if std == 0:
        return mean, mean
    low, high = scipy_stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    return float(low), float(high)


def cell_numbers(values: pd.Series) -> dict:
    """Mean, sample std (NaN for one seed), n and the t-interval of a cell's top-1 values."""
    values = values.astype(float)
    mean, n = float(values.mean()), len(values)
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    ci_low, ci_high = _t_interval(mean, std, n)
    return {"mean": mean, "std": std, "n": n, "ci_low": ci_low, "ci_high": ci_high}


def _without(config: dict, keys: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in keys}, sort_keys=True, default=str)


def compare(cells: list[dict], wrappers: Sequence[str]) -> None:
    """Δ, each wrapper's Δ, Welch and Holm p-values, significance and "best" of the measured cells of one
    pair (each a dict with its "config", "method", mean/std/n and a bool per wrapper)."""
    # a wrapper not applied is absent from the configuration, whether its key is null (VAM's) or missing
    parsed = [
        {k: v for k, v in json.loads(cell["config"]).items() if not (k in wrappers and v is None)}
        for cell in cells
    ]
    baselines = {
        _without(config, _BASELINE_FREE): cell
        for cell, config in zip(cells, parsed, strict=True)
        if cell["method"] == BASELINE_METHOD
    }
    for cell, config in zip(cells, parsed, strict=True):
        baseline = (
            baselines.get(_without(config, _BASELINE_FREE)) if cell["method"] != BASELINE_METHOD else None
        )
        cell["delta"] = cell["mean"] - baseline["mean"] if baseline else math.nan
        cell["p_raw"] = welch(cell, baseline) if baseline else math.nan
    for wrapper in wrappers:
        _compare_wrapper(cells, parsed, wrapper)
    for cell, p_value in zip(cells, holm([cell["p_raw"] for cell in cells]), strict=True):
        cell["p_value"] = p_value
        cell["significant"] = p_value < ALPHA  # False for NaN
    if cells:
        top = max(cells, key=lambda cell: cell["mean"])
        for cell in cells:
            # where no test is possible, only the top mean (and its ties) is best
            cell["best"] = cell["mean"] >= top["mean"] - 1e-9 or welch(cell, top, "less") >= ALPHA


def _compare_wrapper(cells: list[dict], parsed: list[dict], wrapper: str) -> None:
    """The Δ of `wrapper` in each cell that applies it: the cell minus the same configuration without it.
    A plugin's wrapper adds its plugin to the run's `plugin_sha256`, so the configuration without it may
    use a subset of the cell's plugins, at the same versions."""
    applied, delta, p_value = wrapper_columns(wrapper)
    without: dict[str, list[tuple[dict, dict]]] = {}
    for cell, config in zip(cells, parsed, strict=True):
        if not cell[applied]:
            without.setdefault(_without(config, (wrapper, "plugin_sha256")), []).append((cell, config))
    p_raw = []
    for cell, config in zip(cells, parsed, strict=True):
        candidates = without.get(_without(config, (wrapper, "plugin_sha256")), []) if cell[applied] else []
        plugins = config.get("plugin_sha256", {}).items()
        off = next(
            (other for other, found in candidates if found.get("plugin_sha256", {}).items() <= plugins), None
        )
        cell[delta] = cell["mean"] - off["mean"] if off else math.nan
        p_raw.append(welch(cell, off) if off else math.nan)
    for cell, adjusted in zip(cells, holm(p_raw), strict=True):
        cell[p_value] = adjusted
