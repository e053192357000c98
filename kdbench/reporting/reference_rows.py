"""The rows of a leaderboard that are no configuration trained here: each pair's teacher as its distillation
records measured it, and the published reference numbers (registry/published.json), never averaged with
measured runs. Each is a row of the board's statistics (`stats_columns`), its measured-only values NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence

from kdbench.core.store import RunRecord
from kdbench.reporting.frame import BASELINE_METHOD, OVERHEAD_KEYS, pair_label
from kdbench.reporting.stats import wrapper_columns

# The statistics of a board, one row per (row, pair): these, then each wrapper's (stats.wrapper_columns).
STATS_COLUMNS = (
    "row",
    "method",
    "wrappers",  # the wrappers the cell applies, by name, joined by "+" ("" for none)
    "pair",
    "config",  # the cell's configuration: its spec minus the seed, canonical JSON ("" for published rows)
    "published",
    "mean",
    "std",
    "n",
    "ci_low",
    "ci_high",
    "delta",
    "p_raw",  # two-sided Welch p of Δ, uncorrected
    "p_value",  # the same, Holm-corrected across the cells of the pair
    "significant",  # p_value < ALPHA (either sign; the table marks gains only)
    "best",
) + OVERHEAD_KEYS  # mean over the cell's runs, plain units (counts, FLOPs, seconds, bytes, ratio)


def stats_columns(wrappers: Sequence[str]) -> list[str]:
    return [*STATS_COLUMNS, *(column for wrapper in wrappers for column in wrapper_columns(wrapper))]


def bool_columns(wrappers: Sequence[str]) -> dict[str, type]:
    """The boolean columns of the statistics, as `DataFrame.astype` takes them (an empty object column
    would make `stats[~stats["published"]]` select columns)."""
    flags = ["published", "significant", "best", *(wrapper_columns(wrapper)[0] for wrapper in wrappers)]
    return dict.fromkeys(flags, bool)


def _reference_row(wrappers: Sequence[str], **values) -> dict:
    """A row that is no measured configuration: no wrapper, no test, no cost."""
    blank = dict.fromkeys(stats_columns(wrappers), math.nan)
    return (
        blank
        | {"wrappers": "", "config": "", "significant": False, "best": False}
        | {wrapper_columns(wrapper)[0]: False for wrapper in wrappers}
        | values
    )


def teacher_rows(records: list[RunRecord], dataset: str, wrappers: Sequence[str]) -> list[dict]:
    """Measured "teacher" rows: each pair's teacher on the test split, as its distillation records carry
    it (`record["teacher"]`, measured once per teacher checkpoint, loaded or trained); one row per
    checkpoint, labelled by its SHA-256 where a pair has several."""
    found: dict[tuple[str, str], dict] = {}  # (pair, teacher sha256) -> accuracy
    for record in records:
        spec, teacher = record.get("spec") or {}, record.get("teacher")
        if (
            record.get("status") == "done"
            and teacher
            and spec.get("teacher")
            and spec.get("dataset") == dataset
        ):
            found.setdefault((pair_label(spec["teacher"], spec["student"]), teacher["sha256"]), teacher)
    pairs = [pair for pair, _ in found]
    several = len(pairs) > len(set(pairs))
    return [
        _reference_row(
            wrappers,
            row=f"teacher [{sha[:6]}]" if several else "teacher",
            method="teacher",
            pair=pair,
            published=False,
            mean=float(teacher["test_top1"]),
            n=1,
        )
        for (pair, sha), teacher in found.items()
    ]


def published_rows(
    published: dict,
    dataset: str,
    pairs: list[tuple[str | None, str]],
    methods: set[str],
    wrappers: Sequence[str],
) -> tuple[list[dict], set[str]]:
    """Published rows for the measured pairs and methods (plus teacher and student), and the sources used."""
    teacher_top1 = {t["model"]: t for t in published.get("teachers", []) if t["dataset"] == dataset}
    rows, sources = [], set()

    def add(method: str, pair: str, top1: float, delta: float, source: str) -> None:
        rows.append(
            _reference_row(
                wrappers,
                row=f"{method} (published)",
                method=method,
                pair=pair,
                published=True,
                mean=top1,
                delta=delta,
            )
        )
        sources.add(source)

    for teacher, student in pairs:
        if teacher is None:
            continue
        pair = pair_label(teacher, student)
        if teacher in teacher_top1:
            add("teacher", pair, teacher_top1[teacher]["top1"], math.nan, teacher_top1[teacher]["source"])
        entries = {
            e["method"]: e
            for e in published["entries"]
            if (e["dataset"], e["teacher"], e["student"]) == (dataset, teacher, student)
        }
        student_entry = entries.get(BASELINE_METHOD)
        for method, entry in entries.items():
            if method in methods or method == BASELINE_METHOD:
                # Δ of a published row is against the *published* student: the two kinds never mix.
                delta = (
                    entry["top1"] - student_entry["top1"]
                    if student_entry and method != BASELINE_METHOD
                    else math.nan
                )
                add(method, pair, entry["top1"], delta, entry["source"])
    return rows, sources
