"""The leaderboard of one dataset: statistics per (row, pair), the table of display strings, caption, notes.

Rows are methods (±VAM), measured first and published after; columns are teacher→student pairs, each with
its Δ and ΔVAM where there is one, then the overhead (or, with several pairs, a second table of costs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from kdbench.errors import ConfigError
from kdbench.report.frame import (
    BASELINE_METHOD,
    _count,
    _pair_column,
    _pair_runs,
    _pairs,
    pair_label,
    records_frame,
    row_label,
)
from kdbench.store import RunRecord

STATS_COLUMNS = (
    "row",
    "method",
    "vam",
    "pair",
    "published",
    "mean",
    "std",
    "n",
    "configs",
    "delta",
    "vam_delta",
)

# (header, records_frame column, formatter): the overhead shown beside accuracy. Deploy params/FLOPs are
# measured on the exported student, so equal values with and without VAM show that its fold adds nothing.
OVERHEAD_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("extra params", "extra_trainable_params", _count),
    ("train GFLOPs/img", "train_flops_per_image", lambda v: f"{v / 1e9:.3g}"),
    ("time / student", "time_ratio_vs_student", lambda v: f"{v:.2f}"),
    ("peak MiB", "peak_memory_bytes", lambda v: f"{v / 2**20:.0f}"),
    ("deploy params", "deploy_params", _count),
    ("deploy GFLOPs/img", "deploy_flops_per_image", lambda v: f"{v / 1e9:.3g}"),
)


@dataclass
class Leaderboard:
    """A rendered-format-independent leaderboard: display strings plus the numbers behind them."""

    table: pd.DataFrame  # display strings; index = row labels (measured first, then published); "" = no value
    caption: str
    notes: list[str]
    best: set[tuple[str, str]] = field(default_factory=set)  # (row, column): best measured mean of a pair
    published_rows: list[str] = field(default_factory=list)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (row, pair): mean, std, n, deltas
    # With several pairs, costs differ per pair: they go in a second table, one row per (method, pair).
    costs: Leaderboard | None = None


def leaderboard(
    records: Iterable[RunRecord], published: dict | None = None, dataset: str | None = None
) -> Leaderboard:
    """Rows = methods (±VAM), columns = teacher→student pairs (+ Δ, ΔVAM) and overhead, for one dataset."""
    frame = records_frame(records)
    dataset = _pick_dataset(frame, dataset)
    frame = frame[frame["dataset"] == dataset]
    done = frame[frame["status"] == "done"]
    pairs = _pairs(frame)
    stats, sources = _stats(done, pairs, published, dataset)
    labels = _row_order(stats)
    published_labels = [label for label in labels if label.endswith("(published)")]

    several_pairs = len(pairs) > 1
    overhead_beside = not done.empty and not several_pairs
    table = _accuracy_table(stats, labels, _columns(stats, pairs, overhead_beside))
    if overhead_beside:
        cost = _cost_table(done, ["label"])
        table.loc[cost.index, cost.columns] = cost
    costs = _costs_board(done, dataset) if several_pairs and not done.empty else None

    measured = stats[~stats["published"]]
    caption = _caption(dataset, measured, bool(published_labels))
    notes = _notes(frame[frame["status"] != "done"], measured, published, sources)
    return Leaderboard(table, caption, notes, _best_cells(measured), published_labels, stats, costs)


def _pick_dataset(frame: pd.DataFrame, dataset: str | None) -> str:
    datasets = sorted(frame["dataset"].unique())
    if not datasets:
        raise ConfigError("no run records to report; run `kdbench run` first")
    if dataset is None:
        if len(datasets) > 1:
            raise ConfigError(f"records span datasets {', '.join(datasets)}; choose one with --dataset")
        return datasets[0]
    if dataset not in datasets:
        raise ConfigError(f"no run records for dataset '{dataset}'; records have {', '.join(datasets)}")
    return dataset


def _stats(
    done: pd.DataFrame, pairs: list[tuple[str | None, str]], published: dict | None, dataset: str
) -> tuple[pd.DataFrame, set[str]]:
    """One row per (row, pair), measured then published (if any), and the published sources used."""
    rows = _measured_stats(done, pairs)
    sources: set[str] = set()
    if published:
        published_rows, sources = _published_stats(published, dataset, pairs, set(done["method"]))
        rows += published_rows
    # explicit dtypes: an empty object column would make `stats[~stats["published"]]` select columns
    stats = pd.DataFrame(rows, columns=list(STATS_COLUMNS)).astype({"vam": bool, "published": bool})
    return stats, sources


def _measured_stats(done: pd.DataFrame, pairs: list[tuple[str | None, str]]) -> list[dict]:
    rows = []
    for teacher, student in pairs:
        runs = _pair_runs(done, teacher, student)
        cells = {
            (method, bool(vam)): group for (method, vam), group in runs.groupby(["method", "vam"], sort=False)
        }
        means = {key: group["last_top1"].mean() for key, group in cells.items()}
        for (method, vam), group in cells.items():
            mean = means[(method, vam)]
            baseline = means.get((BASELINE_METHOD, vam))
            vam_off = means.get((method, False))
            rows.append(
                {
                    "row": row_label(method, vam),
                    "method": method,
                    "vam": vam,
                    "pair": pair_label(teacher, student),
                    "published": False,
                    "mean": mean,
                    "std": group["last_top1"].std(ddof=1),
                    "n": len(group),
                    "configs": group["config"].nunique(),
                    "delta": mean - baseline
                    if baseline is not None and method != BASELINE_METHOD
                    else math.nan,
                    "vam_delta": mean - vam_off if vam and vam_off is not None else math.nan,
                }
            )
    return rows


def _published_stats(
    published: dict, dataset: str, pairs: list[tuple[str | None, str]], methods: set[str]
) -> tuple[list[dict], set[str]]:
    """Published rows for the measured pairs and methods (plus teacher and student), and the sources used."""
    teacher_top1 = {t["model"]: t for t in published.get("teachers", []) if t["dataset"] == dataset}
    rows, sources = [], set()

    def add(method: str, pair: str, top1: float, delta: float, source: str) -> None:
        rows.append(
            {
                "row": f"{method} (published)",
                "method": method,
                "vam": False,
                "pair": pair,
                "published": True,
                "mean": top1,
                "std": math.nan,
                "n": math.nan,
                "configs": 1,
                "delta": delta,
                "vam_delta": math.nan,
            }
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


def _row_order(stats: pd.DataFrame) -> list[str]:
    rows = stats.drop_duplicates("row").to_dict("records")
    # measured before published; teacher, then the student baseline, then methods by name; +VAM after off
    rows.sort(
        key=lambda r: (
            r["published"],
            r["method"] != "teacher",
            r["method"] != BASELINE_METHOD,
            r["method"],
            r["vam"],
        )
    )
    return [r["row"] for r in rows]


def _columns(stats: pd.DataFrame, pairs: list[tuple[str | None, str]], overhead: bool) -> list[str]:
    """Each pair, then its Δ and ΔVAM where any row has one; the overhead headers if `overhead`."""
    columns = []
    for teacher, student in pairs:
        pair = pair_label(teacher, student)
        in_pair = stats[stats["pair"] == pair]
        columns.append(pair)
        if in_pair["delta"].notna().any():
            columns.append(f"{pair} Δ")
        if in_pair["vam_delta"].notna().any():
            columns.append(f"{pair} ΔVAM")
    if overhead:
        columns += [header for header, _, _ in OVERHEAD_COLUMNS]
    return columns


def _cell_text(mean: float, std: float, n: float, published: bool) -> str:
    if published:
        return f"{mean:.2f}"
    spread = f" ± {std:.2f}" if not math.isnan(std) else ""
    return f"{mean:.2f}{spread} (n={int(n)})"


def _accuracy_table(stats: pd.DataFrame, labels: list[str], columns: list[str]) -> pd.DataFrame:
    """The display strings of the accuracy cells and their deltas; "" where a row has no value."""
    table = pd.DataFrame("", index=pd.Index(labels, name="method"), columns=columns)
    for cell in stats.itertuples():
        table.loc[cell.row, cell.pair] = _cell_text(cell.mean, cell.std, cell.n, cell.published)
        if not math.isnan(cell.delta):
            table.loc[cell.row, f"{cell.pair} Δ"] = f"{cell.delta:+.2f}"
        if not math.isnan(cell.vam_delta):
            table.loc[cell.row, f"{cell.pair} ΔVAM"] = f"{cell.vam_delta:+.2f}"
    return table


def _cost_table(done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Overhead display strings, mean over the runs of each group of `keys`."""
    done = done.assign(pair=_pair_column(done))
    rows = {}
    for key, group in done.groupby(keys):
        label = " on ".join(key)
        rows[label] = {
            header: "" if math.isnan(value := group[column].mean()) else fmt(value)
            for header, column, fmt in OVERHEAD_COLUMNS
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def _costs_board(done: pd.DataFrame, dataset: str) -> Leaderboard:
    """The second table of a several-pair leaderboard: costs per (method, pair)."""
    return Leaderboard(
        _cost_table(done, ["label", "pair"]),
        f"{dataset}: costs per pair, mean over the runs of each (method, pair).",
        [],
    )


def _best_cells(measured: pd.DataFrame) -> set[tuple[str, str]]:
    """(row, pair) of the best measured mean of each pair, ties included."""
    best = set()
    for pair, group in measured.groupby("pair"):
        top = group["mean"].max()
        best |= {(row, pair) for row in group["row"][group["mean"] >= top - 1e-9]}
    return best


def _seed_count_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high} (n per cell)"


def _caption(dataset: str, measured: pd.DataFrame, has_published: bool) -> str:
    seeds = _seed_count_text(measured["n"]) if not measured.empty else "0"
    caption = (
        f"{dataset}: top-1 (%) of the last epoch on the test split, mean ± std over {seeds} seeds; "
        "best-epoch accuracy recorded, not shown. Δ: vs the student baseline of the same pair and VAM "
        "setting; ΔVAM: VAM on − off; best measured mean per pair marked. Overhead: mean over the row's "
        "runs; deploy params/FLOPs are those of the exported student (after VAM's fold)."
    )
    if has_published:
        caption += " '(published)': reference numbers from the literature, never averaged with measured runs."
    return caption


def _notes(
    failed: pd.DataFrame, measured: pd.DataFrame, published: dict | None, sources: set[str]
) -> list[str]:
    """Failed runs, mixed configs, missing baselines, too few seeds, then the published sources used."""
    notes = [
        f"failed, not averaged: {run.label} on {pair_label(run.teacher, run.student)} seed {run.seed} "
        f"({run.run_id}): {run.error}"
        for run in failed.itertuples()
    ]
    notes += [
        f"{cell.row} on {cell.pair} averages runs of {cell.configs} different hp/recipes"
        for cell in measured.itertuples()
        if cell.configs > 1
    ]
    notes += _missing_baseline_notes(measured)
    if not measured.empty and measured["n"].min() < 3:
        notes.append("cells with fewer than 3 seeds are not committable results (protocol: N ≥ 3)")
    # sources is empty unless `published` was given
    notes += [
        f"published source '{source}': {published['sources'][source]['url']}" for source in sorted(sources)
    ]
    return notes


def _missing_baseline_notes(measured: pd.DataFrame) -> list[str]:
    notes = []
    for pair in measured["pair"].unique():
        in_pair = measured[measured["pair"] == pair]
        for vam in sorted(set(in_pair["vam"])):
            setting = in_pair[in_pair["vam"] == vam]
            if BASELINE_METHOD not in set(setting["method"]):
                notes.append(f"{pair}: no {row_label(BASELINE_METHOD, vam)} baseline, so no Δ for it")
    return notes
