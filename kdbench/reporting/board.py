"""The leaderboard of one dataset: statistics per (row, pair), the table of display strings, caption, notes.

Rows are configurations (docs/DESIGN.md, "Statistics"): the runs of a cell share every resolved setting but
the seed (the regression gate's cells, check.py), n = distinct seeds. A row's label is the method and the
student wrappers it applies (`kd +VAM`); configurations of one such row that differ within a pair get a row
each, labelled by what differs: `kd (temperature=2)`, `kd [teacher 3f2a1c]`. Measured rows come first,
published after; columns are teacher→student pairs, each with its Δ and the Δ of each wrapper (ΔVAM) where
there is one, then the overhead (or, with several pairs, a second table of costs). The statistics of each
cell (kdbench/reporting/stats.py) are in `Leaderboard.stats`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kdbench.core.errors import ConfigError
from kdbench.core.spec import wrapper_label
from kdbench.core.store import RunRecord
from kdbench.reporting.frame import (
    BASELINE_METHOD,
    OVERHEAD_KEYS,
    SPEC_FIELDS,
    _count,
    _pair_column,
    _pair_runs,
    _pairs,
    pair_label,
    records_frame,
    row_label,
    tested_on,
    wrapper_names,
)
from kdbench.reporting.reference_rows import bool_columns, published_rows, stats_columns, teacher_rows
from kdbench.reporting.stats import ALPHA, CONFIDENCE, cell_numbers, compare, wrapper_columns

# (header, records_frame column, formatter): the overhead shown beside accuracy. Deploy params/FLOPs are
# measured on the exported student, so equal values with and without a wrapper (VAM: its fold) show that
# exporting it adds nothing.
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
    best: set[tuple[str, str]] = field(default_factory=set)  # (row, pair): not significantly below the top
    published_rows: list[str] = field(default_factory=list)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (row, pair): stats_columns
    # With several pairs, costs differ per pair: they go in a second table, one row per (method, pair).
    costs: Leaderboard | None = None
    significant: set[tuple[str, str]] = field(default_factory=set)  # (row, "pair Δ"): significant gains
    dataset: str = ""
    wrappers: list[str] = field(default_factory=list)  # every wrapper the records name: its stats columns
    # the finished runs counted: their records_frame rows, with "row" (their row label)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)


def leaderboard(
    records: Iterable[RunRecord], published: dict | None = None, dataset: str | None = None
) -> Leaderboard:
    """Rows = configurations of methods (with their wrappers), columns = teacher→student pairs (+ Δ, the Δ of
    each wrapper) and overhead."""
    records = list(records)  # read twice: the frame, and the teachers' accuracy (teacher_rows)
    frame = records_frame(records)
    dataset = _pick_dataset(frame, dataset)
    others = sorted(set(frame["dataset"]) - {dataset})
    frame = frame[frame["dataset"] == dataset]
    pairs = _pairs(frame)
    wrappers = wrapper_names(frame["config"])
    done, duplicate_notes = _drop_duplicate_seeds(frame[frame["status"] == "done"])
    differing = _differing_settings(done, pairs)
    done = done.assign(row=[_config_label(run, differing) for run in done.itertuples()])
    stats, sources = _stats(records, done, pairs, published, dataset, wrappers)
    labels = _row_order(stats)
    published_labels = [label for label in labels if label.endswith("(published)")]

    several_pairs = len(pairs) > 1
    overhead_beside = not done.empty and not several_pairs
    table = _accuracy_table(stats, labels, _columns(stats, pairs, overhead_beside, wrappers), wrappers)
    if overhead_beside:
        cost = _cost_table(done, ["row"])
        table.loc[cost.index, cost.columns] = cost
    costs = _costs_board(done, dataset) if several_pairs and not done.empty else None

    measured = stats[~stats["published"] & (stats["method"] != "teacher")]  # the teacher row is no method
    caption = _caption(
        dataset, measured, bool(published_labels), _shown_wrappers(stats, wrappers), tested_on(done["config"])
    )
    notes = _notes(
        frame[frame["status"] != "done"],
        [f"the records also hold {', '.join(others)}: a board per dataset (--dataset NAME)"] * bool(others)
        + duplicate_notes
        + _split_notes(done, differing),
        measured,
        published,
        sources,
    )
    best = {(cell.row, cell.pair) for cell in measured.itertuples() if cell.best}
    significant = {
        (cell.row, f"{cell.pair} Δ") for cell in measured.itertuples() if cell.significant and cell.delta > 0
    }
    return Leaderboard(
        table,
        caption,
        notes,
        best=best,
        published_rows=published_labels,
        stats=stats,
        costs=costs,
        significant=significant,
        dataset=dataset,
        wrappers=wrappers,
        runs=done,
    )


def _pick_dataset(frame: pd.DataFrame, dataset: str | None) -> str:
    """`dataset`, or where none is named the one with most runs (of those, the first by name)."""
    counts = frame["dataset"].value_counts()
    if counts.empty:
        raise ConfigError("no run records to report; run `kdbench run` first")
    if dataset is None:
        return min(counts.index, key=lambda name: (-counts[name], name))
    if dataset not in counts:
        raise ConfigError(
            f"no run records for dataset '{dataset}'; records have {', '.join(sorted(counts.index))}"
        )
    return dataset


def _drop_duplicate_seeds(done: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One finished run per (configuration, seed): the first is kept, the others are named in a note."""
    duplicated = done.duplicated(["config", "seed"], keep=False)
    notes = []
    for (_, seed), group in done[duplicated].groupby(["config", "seed"], sort=False):
        first = group.iloc[0]
        dropped = ", ".join(str(run_id) for run_id in group["run_id"].iloc[1:])
        notes.append(
            f"{first['label']} on {pair_label(first['teacher'], first['student'])} seed {seed}: "
            f"{len(group)} finished runs of one configuration; kept {first['run_id']}, not counted: {dropped}"
        )
    return done[~done.duplicated(["config", "seed"], keep="first")], notes


# Settings a row label never needs: the pair and dataset are the column and board; the wrappers a row applies
# are in its label (`+VAM`), one it does not apply (null) is no setting.
_UNLABELLED = {"method", "teacher", "student", "dataset", "seed"}


def _flat_settings(config: dict[str, Any]) -> dict[str, str]:
    """A configuration as {dotted path: canonical JSON value}: hp.temperature, recipe.epochs, vam.groups
    (a wrapper not applied, null, is left out)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = json.dumps(value, sort_keys=True, default=str)

    for key, value in config.items():
        if key not in _UNLABELLED and (key in SPEC_FIELDS or value is not None):
            walk(key, value)
    return flat


def _differing_settings(done: pd.DataFrame, pairs: list[tuple[str | None, str]]) -> dict[tuple, list[str]]:
    """Per (method, wrappers): the settings in which its configurations differ within some pair."""
    flat = {config: _flat_settings(json.loads(config)) for config in done["config"].unique()}
    differing: dict[tuple, set[str]] = {}
    for teacher, student in pairs:
        runs = _pair_runs(done, teacher, student)
        for (method, wrappers), group in runs.groupby(["method", "wrappers"], sort=False):
            configs = [flat[config] for config in group["config"].unique()]
            if len(configs) < 2:
                continue
            paths = set().union(*configs)
            differing.setdefault((method, wrappers), set()).update(
                path for path in paths if len({settings.get(path) for settings in configs}) > 1
            )
    return {key: sorted(paths) for key, paths in differing.items()}


def _setting_text(path: str, value: str) -> str:
    head, _, rest = path.partition(".")  # "hp" alone: a configuration with no hyper-parameters at all
    name = rest if head in ("hp", "recipe") and rest else path
    return f"{name}={'–' if value is None else value.strip(chr(34))}"


def _config_label(run: Any, differing: dict[tuple, list[str]]) -> str:
    """The row of a run: `kd`, or `kd (temperature=2)`, `kd [teacher 3f2a1c]` where configurations differ."""
    label = row_label(run.method, run.wrappers)
    paths = differing.get((run.method, run.wrappers))
    if not paths:
        return label
    settings = _flat_settings(json.loads(run.config))
    shown = [_setting_text(path, settings.get(path)) for path in paths if not _is_digest(path)]
    if shown:
        label += f" ({', '.join(shown)})"
    for path in filter(_is_digest, paths):  # teacher, data, student init, plugin: six hex digits each
        sha = json.loads(settings.get(path, "null"))
        name = path.removesuffix("_sha256").replace("plugin_sha256.", "plugin ")
        label += f" [{name} {sha[:6] if isinstance(sha, str) else 'unknown'}]"
    return label


def _is_digest(path: str) -> bool:
    """A setting that names something by its SHA-256 (`teacher_sha256`, `plugin_sha256.<file>`, ...)."""
    return path.endswith("_sha256") or path.startswith("plugin_sha256.")


def _split_notes(done: pd.DataFrame, differing: dict[tuple, list[str]]) -> list[str]:
    notes = []
    for (method, wrappers), paths in differing.items():
        runs = done[(done["method"] == method) & (done["wrappers"] == wrappers)]
        notes.append(
            f"{row_label(method, wrappers)}: {runs['config'].nunique()} configurations, one row each, never "
            f"averaged together; they differ in {', '.join(paths)}"
        )
    return notes


def _stats(
    records: list[RunRecord],
    done: pd.DataFrame,
    pairs: list[tuple[str | None, str]],
    published: dict | None,
    dataset: str,
    wrappers: list[str],
) -> tuple[pd.DataFrame, set[str]]:
    """One row per (row, pair): each pair's teacher, the measured cells, then the published (if any); and
    the published sources used."""
    rows = teacher_rows(records, dataset, wrappers) + _measured_stats(done, pairs, wrappers)
    sources: set[str] = set()
    if published:
        found, sources = published_rows(published, dataset, pairs, set(done["method"]), wrappers)
        rows += found
    stats = pd.DataFrame(rows, columns=stats_columns(wrappers)).astype(bool_columns(wrappers))
    return stats, sources


def _measured_stats(
    done: pd.DataFrame, pairs: list[tuple[str | None, str]], wrappers: list[str]
) -> list[dict]:
    rows = []
    for teacher, student in pairs:
        pair_rows = []
        for config, group in _pair_runs(done, teacher, student).groupby("config", sort=False):
            first = group.iloc[0]
            applied = first["wrappers"].split("+")
            pair_rows.append(
                {
                    "row": first["row"],
                    "method": first["method"],
                    "wrappers": first["wrappers"],
                    "pair": pair_label(teacher, student),
                    "config": config,
                    "published": False,
                    **cell_numbers(group["last_top1"]),
                    **{key: float(group[key].mean()) for key in OVERHEAD_KEYS},
                    **{wrapper_columns(wrapper)[0]: wrapper in applied for wrapper in wrappers},
                }
            )
        compare(pair_rows, wrappers)
        rows += pair_rows
    return rows


def _row_order(stats: pd.DataFrame) -> list[str]:
    rows = stats.drop_duplicates("row").to_dict("records")
    # measured before published; teacher, then the student baseline, then methods by name; a method without
    # wrappers before it with them (kd, kd +VAM)
    rows.sort(
        key=lambda r: (
            r["published"],
            r["method"] != "teacher",
            r["method"] != BASELINE_METHOD,
            r["method"],
            r["wrappers"],
            r["row"],
        )
    )
    return [r["row"] for r in rows]


def wrapper_delta_header(pair: str, wrapper: str) -> str:
    """The column of a wrapper's Δ on a pair: `resnet56→resnet20 ΔVAM`."""
    return f"{pair} Δ{wrapper_label(wrapper)}"


def _shown_wrappers(stats: pd.DataFrame, wrappers: list[str]) -> list[str]:
    """The wrappers whose Δ some cell has."""
    return [wrapper for wrapper in wrappers if stats[wrapper_columns(wrapper)[1]].notna().any()]


def _columns(
    stats: pd.DataFrame, pairs: list[tuple[str | None, str]], overhead: bool, wrappers: list[str]
) -> list[str]:
    """Each pair, then its Δ and each wrapper's Δ where any row has one; the overhead headers if `overhead`."""
    columns = []
    for teacher, student in pairs:
        pair = pair_label(teacher, student)
        in_pair = stats[stats["pair"] == pair]
        columns.append(pair)
        if in_pair["delta"].notna().any():
            columns.append(f"{pair} Δ")
        columns += [wrapper_delta_header(pair, wrapper) for wrapper in _shown_wrappers(in_pair, wrappers)]
    if overhead:
        columns += [header for header, _, _ in OVERHEAD_COLUMNS]
    return columns


def _cell_text(mean: float, std: float, n: float, published: bool) -> str:
    if published:
        return f"{mean:.2f}"
    spread = f" ± {std:.2f}" if not math.isnan(std) else ""
    return f"{mean:.2f}{spread} (n={int(n)})"


def _accuracy_table(
    stats: pd.DataFrame, labels: list[str], columns: list[str], wrappers: list[str]
) -> pd.DataFrame:
    """The display strings of the accuracy cells and their deltas; "" where a row has no value."""
    table = pd.DataFrame("", index=pd.Index(labels, name="method"), columns=columns)
    for cell in stats.to_dict("records"):
        row, pair = cell["row"], cell["pair"]
        table.loc[row, pair] = _cell_text(cell["mean"], cell["std"], cell["n"], cell["published"])
        if not math.isnan(cell["delta"]):
            table.loc[row, f"{pair} Δ"] = f"{cell['delta']:+.2f}"
        for wrapper in wrappers:
            if not math.isnan(delta := cell[wrapper_columns(wrapper)[1]]):
                table.loc[row, wrapper_delta_header(pair, wrapper)] = f"{delta:+.2f}"
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
        _cost_table(done, ["row", "pair"]),
        f"{dataset}: costs per pair, mean over the runs of each (method, pair).",
        [],
    )


def _seed_count_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high} (n per cell)"


def _caption(
    dataset: str, measured: pd.DataFrame, has_published: bool, shown_wrappers: list[str], tested: str
) -> str:
    seeds = _seed_count_text(measured["n"]) if not measured.empty else "0"
    wrapper_deltas = "".join(
        f" Δ{wrapper_label(wrapper)}: with {wrapper_label(wrapper)} − without it, same configuration (its "
        f"two-sided Welch p, Holm-corrected likewise: {wrapper_columns(wrapper)[2]} in csv and json)."
        for wrapper in shown_wrappers
    )
    caption = (
        f"{dataset}: top-1 (%) of the last epoch on {tested}, mean ± std over {seeds} seeds; "
        "best-epoch accuracy recorded, not shown. A row is one configuration (every resolved setting but the "
        "seed; n = distinct seeds); configurations of one method that differ get a row each, labelled by what "
        "differs. Δ: vs the student baseline of the same pair and configuration (wrappers, recipe); "
        f"† = significant gain (two-sided Welch t-test, Holm-corrected across the methods of the pair, "
        f"α = {ALPHA}).{wrapper_deltas} Best: every measured method not significantly below the top mean "
        f"of its pair (one-sided Welch, α = {ALPHA}; where untestable, n < 2 or no variance, the top mean "
        f"only). {CONFIDENCE:.0%} t-intervals and p-values: --format csv or json. Overhead: mean over the "
        "row's runs; time / student: the run's training step timed against its student baseline's, in turns, "
        "in the run's own process (the same with cohorts or workers); deploy params/FLOPs are those of the "
        "exported student (its wrappers exported)."
    )
    if has_published:
        caption += " '(published)': reference numbers from the literature, never averaged with measured runs."
    return caption


def _notes(
    failed: pd.DataFrame,
    cell_notes: list[str],
    measured: pd.DataFrame,
    published: dict | None,
    sources: set[str],
) -> list[str]:
    """Failed runs, `cell_notes` (duplicate seeds, split configurations), missing baselines, too few
    seeds, then the published sources used."""
    notes = [
        f"failed, not averaged: {run.label} on {pair_label(run.teacher, run.student)} seed {run.seed} "
        f"({run.run_id}): {run.error}"
        for run in failed.itertuples()
    ]
    notes += cell_notes
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
        for wrappers in sorted(set(in_pair["wrappers"])):
            setting = in_pair[in_pair["wrappers"] == wrappers]
            if BASELINE_METHOD not in set(setting["method"]):
                notes.append(f"{pair}: no {row_label(BASELINE_METHOD, wrappers)} baseline, so no Δ for it")
                continue
            unmatched = setting[(setting["method"] != BASELINE_METHOD) & setting["delta"].isna()]
            notes += [
                f"{row} on {pair}: no student baseline of the same configuration (recipe, wrapper settings, "
                "precision), so no Δ"
                for row in unmatched["row"]
            ]
    return notes
