"""The leaderboard of one dataset: statistics per (row, pair), the table of display strings, caption, notes.

Rows are configurations (docs/DESIGN.md, "Statistics"): the runs of a cell share every resolved setting but
the seed (the regression gate's cells, check.py), n = distinct seeds. Configurations of one method (±VAM)
that differ within a pair get a row each, labelled by what differs: `kd (temperature=2)`,
`kd [teacher 3f2a1c]`. Measured rows come first, published after; columns are teacher→student pairs, each
with its Δ and ΔVAM where there is one, then the overhead (or, with several pairs, a second table of costs).

Per cell: mean, sample std, n and a 95 % t-interval; Δ vs the student baseline of the same pair and
configuration (VAM settings, recipe, precision) with a two-sided Welch p-value, Holm-corrected across the
cells of the pair; "best" is every cell not significantly below the pair's top mean (one-sided Welch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats as scipy_stats

from kdbench.core.errors import ConfigError
from kdbench.core.store import RunRecord
from kdbench.reporting.frame import (
    BASELINE_METHOD,
    OVERHEAD_KEYS,
    _count,
    _pair_column,
    _pair_runs,
    _pairs,
    pair_label,
    records_frame,
    row_label,
)

ALPHA = 0.05  # significance level of Δ (after Holm) and of "best"
CONFIDENCE = 0.95  # the t-interval of a cell's mean

STATS_COLUMNS = (
    "row",
    "method",
    "vam",
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
    "vam_delta",
    "vam_p_value",  # two-sided Welch p of ΔVAM (VAM on vs off, same configuration), Holm across the pair
) + OVERHEAD_KEYS  # mean over the cell's runs, plain units (counts, FLOPs, seconds, bytes, ratio)

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
    best: set[tuple[str, str]] = field(default_factory=set)  # (row, pair): not significantly below the top
    published_rows: list[str] = field(default_factory=list)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (row, pair): STATS_COLUMNS
    # With several pairs, costs differ per pair: they go in a second table, one row per (method, pair).
    costs: Leaderboard | None = None
    significant: set[tuple[str, str]] = field(default_factory=set)  # (row, "pair Δ"): significant gains
    dataset: str = ""


def leaderboard(
    records: Iterable[RunRecord], published: dict | None = None, dataset: str | None = None
) -> Leaderboard:
    """Rows = configurations of methods (±VAM), columns = teacher→student pairs (+ Δ, ΔVAM) and overhead."""
    records = list(records)  # read twice: the frame, and the teachers' accuracy (_teacher_stats)
    frame = records_frame(records)
    dataset = _pick_dataset(frame, dataset)
    frame = frame[frame["dataset"] == dataset]
    pairs = _pairs(frame)
    done, duplicate_notes = _drop_duplicate_seeds(frame[frame["status"] == "done"])
    differing = _differing_settings(done, pairs)
    done = done.assign(row=[_config_label(run, differing) for run in done.itertuples()])
    stats, sources = _stats(done, pairs, published, dataset)
    if not (teacher_stats := _teacher_stats(records, dataset)).empty:
        stats = pd.concat([teacher_stats, stats], ignore_index=True)
    labels = _row_order(stats)
    published_labels = [label for label in labels if label.endswith("(published)")]

    several_pairs = len(pairs) > 1
    overhead_beside = not done.empty and not several_pairs
    table = _accuracy_table(stats, labels, _columns(stats, pairs, overhead_beside))
    if overhead_beside:
        cost = _cost_table(done, ["row"])
        table.loc[cost.index, cost.columns] = cost
    costs = _costs_board(done, dataset) if several_pairs and not done.empty else None

    measured = stats[~stats["published"] & (stats["method"] != "teacher")]  # the teacher row is no method
    caption = _caption(dataset, measured, bool(published_labels))
    notes = _notes(
        frame[frame["status"] != "done"],
        duplicate_notes + _split_notes(done, differing),
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
    )


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


# Settings a row label never needs: the pair and dataset are the column and board, VAM on/off is in the label.
_UNLABELLED = {"method", "teacher", "student", "dataset", "seed"}


def _flat_settings(config: dict[str, Any]) -> dict[str, str]:
    """A configuration as {dotted path: canonical JSON value}: hp.temperature, recipe.epochs, vam.groups."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = json.dumps(value, sort_keys=True, default=str)

    for key, value in config.items():
        if key not in _UNLABELLED and not (key == "vam" and not value):
            walk(key, value)
    return flat


def _differing_settings(done: pd.DataFrame, pairs: list[tuple[str | None, str]]) -> dict[tuple, list[str]]:
    """Per (method, vam): the settings in which its configurations differ within some pair."""
    flat = {config: _flat_settings(json.loads(config)) for config in done["config"].unique()}
    differing: dict[tuple, set[str]] = {}
    for teacher, student in pairs:
        runs = _pair_runs(done, teacher, student)
        for (method, vam), group in runs.groupby(["method", "vam"], sort=False):
            configs = [flat[config] for config in group["config"].unique()]
            if len(configs) < 2:
                continue
            paths = set().union(*configs)
            differing.setdefault((method, bool(vam)), set()).update(
                path for path in paths if len({settings.get(path) for settings in configs}) > 1
            )
    return {key: sorted(paths) for key, paths in differing.items()}


def _setting_text(path: str, value: str) -> str:
    head, _, rest = path.partition(".")  # "hp" alone: a configuration with no hyper-parameters at all
    name = rest if head in ("hp", "recipe") and rest else path
    return f"{name}={'–' if value is None else value.strip(chr(34))}"


def _config_label(run: Any, differing: dict[tuple, list[str]]) -> str:
    """The row of a run: `kd`, or `kd (temperature=2)`, `kd [teacher 3f2a1c]` where configurations differ."""
    label = row_label(run.method, bool(run.vam))
    paths = differing.get((run.method, bool(run.vam)))
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
    for (method, vam), paths in differing.items():
        runs = done[(done["method"] == method) & (done["vam"] == vam)]
        notes.append(
            f"{row_label(method, vam)}: {runs['config'].nunique()} configurations, one row each, never "
            f"averaged together; they differ in {', '.join(paths)}"
        )
    return notes


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
    stats = pd.DataFrame(rows, columns=list(STATS_COLUMNS)).astype(
        {"vam": bool, "published": bool, "significant": bool, "best": bool}
    )
    return stats, sources


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; a NaN (no test) stays NaN and is not counted."""
    order = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted


def _welch(cell: dict, other: dict, alternative: str = "two-sided") -> float:
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


def _teacher_stats(records: list[RunRecord], dataset: str) -> pd.DataFrame:
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
    rows = [
        {
            **dict.fromkeys(STATS_COLUMNS, math.nan),
            **{"row": f"teacher [{sha[:6]}]" if several else "teacher", "method": "teacher", "vam": False},
            **{"pair": pair, "config": "", "published": False, "significant": False, "best": False},
            **{"mean": float(teacher["test_top1"]), "n": 1},
        }
        for (pair, sha), teacher in found.items()
    ]
    return pd.DataFrame(rows, columns=list(STATS_COLUMNS)).astype(
        {"vam": bool, "published": bool, "significant": bool, "best": bool}
    )


def _without(config: dict, keys: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in keys}, sort_keys=True, default=str)


# A student baseline is the same experiment but the distillation: these settings may differ from it.
_BASELINE_FREE = ("method", "teacher", "teacher_sha256", "hp", "kind")


def _measured_stats(done: pd.DataFrame, pairs: list[tuple[str | None, str]]) -> list[dict]:
    rows = []
    for teacher, student in pairs:
        pair_rows = []
        for config, group in _pair_runs(done, teacher, student).groupby("config", sort=False):
            values = group["last_top1"].astype(float)
            mean, std, n = (
                float(values.mean()),
                float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                len(values),
            )
            ci_low, ci_high = _t_interval(mean, std, n)
            first = group.iloc[0]
            pair_rows.append(
                {
                    "row": first["row"],
                    "method": first["method"],
                    "vam": bool(first["vam"]),
                    "pair": pair_label(teacher, student),
                    "config": config,
                    "published": False,
                    "mean": mean,
                    "std": std,
                    "n": n,
                    "ci_low": ci_low,
                    "ci_high": ci_high,
                    **{key: float(group[key].mean()) for key in OVERHEAD_KEYS},
                }
            )
        _compare(pair_rows)
        rows += pair_rows
    return rows


def _compare(cells: list[dict]) -> None:
    """Δ, ΔVAM, Welch and Holm p-values, significance and "best" of the measured cells of one pair."""
    parsed = [json.loads(cell["config"]) for cell in cells]
    baselines = {
        _without(config, _BASELINE_FREE): cell
        for cell, config in zip(cells, parsed, strict=True)
        if cell["method"] == BASELINE_METHOD
    }
    vam_off = {
        _without(config, ("vam",)): cell
        for cell, config in zip(cells, parsed, strict=True)
        if not cell["vam"]
    }
    for cell, config in zip(cells, parsed, strict=True):
        baseline = (
            baselines.get(_without(config, _BASELINE_FREE)) if cell["method"] != BASELINE_METHOD else None
        )
        cell["delta"] = cell["mean"] - baseline["mean"] if baseline else math.nan
        cell["p_raw"] = _welch(cell, baseline) if baseline else math.nan
        off = vam_off.get(_without(config, ("vam",))) if cell["vam"] else None
        cell["vam_delta"] = cell["mean"] - off["mean"] if off else math.nan
        cell["vam_p_raw"] = _welch(cell, off) if off else math.nan
    for cell, p_value in zip(cells, holm([cell.pop("vam_p_raw") for cell in cells]), strict=True):
        cell["vam_p_value"] = p_value
    for cell, p_value in zip(cells, holm([cell["p_raw"] for cell in cells]), strict=True):
        cell["p_value"] = p_value
        cell["significant"] = p_value < ALPHA  # False for NaN
    if cells:
        top = max(cells, key=lambda cell: cell["mean"])
        for cell in cells:
            # where no test is possible, only the top mean (and its ties) is best
            cell["best"] = cell["mean"] >= top["mean"] - 1e-9 or _welch(cell, top, "less") >= ALPHA


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
                "config": "",
                "std": math.nan,
                "n": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "delta": delta,
                "p_raw": math.nan,
                "p_value": math.nan,
                "significant": False,
                "best": False,
                "vam_delta": math.nan,
                "vam_p_value": math.nan,
                **dict.fromkeys(OVERHEAD_KEYS, math.nan),
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
            r["row"],
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
        _cost_table(done, ["row", "pair"]),
        f"{dataset}: costs per pair, mean over the runs of each (method, pair).",
        [],
    )


def _seed_count_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high} (n per cell)"


def _caption(dataset: str, measured: pd.DataFrame, has_published: bool) -> str:
    seeds = _seed_count_text(measured["n"]) if not measured.empty else "0"
    caption = (
        f"{dataset}: top-1 (%) of the last epoch on the test split, mean ± std over {seeds} seeds; "
        "best-epoch accuracy recorded, not shown. A row is one configuration (every resolved setting but the "
        "seed; n = distinct seeds); configurations of one method that differ get a row each, labelled by what "
        "differs. Δ: vs the student baseline of the same pair and configuration (VAM setting, recipe); "
        f"† = significant gain (two-sided Welch t-test, Holm-corrected across the methods of the pair, "
        f"α = {ALPHA}). ΔVAM: VAM on − off (its two-sided Welch p, Holm-corrected likewise: vam_p_value in csv and json). Best: every measured method not significantly below the top mean "
        f"of its pair (one-sided Welch, α = {ALPHA}; where untestable, n < 2 or no variance, the top mean "
        f"only). {CONFIDENCE:.0%} t-intervals and p-values: --format csv or json. Overhead: mean over the "
        "row's runs; deploy params/FLOPs are those of the exported student (after VAM's fold)."
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
        for vam in sorted(set(in_pair["vam"])):
            setting = in_pair[in_pair["vam"] == vam]
            if BASELINE_METHOD not in set(setting["method"]):
                notes.append(f"{pair}: no {row_label(BASELINE_METHOD, vam)} baseline, so no Δ for it")
                continue
            unmatched = setting[(setting["method"] != BASELINE_METHOD) & setting["delta"].isna()]
            notes += [
                f"{row} on {pair}: no student baseline of the same configuration (recipe, VAM settings, "
                "precision), so no Δ"
                for row in unmatched["row"]
            ]
    return notes
