"""The `kdbench explain` report: tables, the verdict on the paper's claim, the learned trees, the figure.

Reads an `ExplainResult` (kdbench/explain/__init__.py): per variant the run records, each with the HME's routing
analysis (`HME.analysis()`, kdbench/models/hme.py). It reports per level the routing entropy, the trees
and the accuracy (mean ± std over seeds; `render_report`, `plot_explain`). The paper's claim, that KD
modulates the knowledge conflicts between the subtasks more than label smoothing does, is checked as:
the mean over levels of H / log(parents) is lower with KD than with label smoothing and than plain.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from tabulate import tabulate

from kdbench.core import store
from kdbench.explain import VARIANTS, ExplainResult


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: list[float], digits: int) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def entropy_ratios(analysis: dict) -> list[float]:
    """H / log(parents) per routing level: 1 = uniform routing, 0 = a hard tree."""
    pairs = zip(analysis["routing_entropy"], analysis["max_entropy"], strict=True)
    return [entropy / maximum for entropy, maximum in pairs]


def normalised_entropy(analysis: dict) -> float:
    """The mean over routing levels of H / log(parents)."""
    ratios = entropy_ratios(analysis)
    return sum(ratios) / len(ratios)


def explain_table(result: ExplainResult) -> pd.DataFrame:
    """Rows: plain / label smoothing / KD. Columns: mean routing entropy (nats) per level, the mean
    normalised entropy, last-epoch top-1 (%); mean ± sample std over seeds."""
    rows = []
    for label, records in result.records.items():
        if not records:
            continue
        analyses = [record["analysis"] for record in records]
        first = analyses[0]
        row = {"variant": label, "n": len(records)}
        for level, (name, maximum) in enumerate(
            zip(first["routing_levels"], first["max_entropy"], strict=True)
        ):
            row[f"H {name} (max {maximum:.2f})"] = _cell([a["routing_entropy"][level] for a in analyses], 3)
        row["H / Hmax"] = _cell([normalised_entropy(a) for a in analyses], 3)
        row["top-1 (%)"] = _cell([record["metrics"]["last_top1"] for record in records], 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def tree_text(analysis: dict, classes: tuple[str, ...]) -> list[str]:
    """The learned tree, one line per expert level: the classes under each expert, "|" between experts."""
    return [
        " | ".join("{" + ", ".join(classes[c] for c in group) + "}" for group in groups)
        for groups in analysis["tree"]["classes"]
    ]


def claim_verdict(result: ExplainResult) -> str:
    """Whether the paper's claim held here: KD lowers the routing entropy more than label smoothing
    does, both measured against the plain HME (mean normalised entropy over levels and seeds)."""
    entropy = {
        label: _mean_std([normalised_entropy(r["analysis"]) for r in records])
        for label, records in result.records.items()
        if records
    }
    if len(entropy) < len(VARIANTS):
        return "Paper's claim not checked: a variant has no finished run (see the failures above)."
    # compared at the 3 decimals printed: a smaller gap is no difference
    plain, smoothing, kd = (round(entropy[label][0], 3) for label in ("plain", "label smoothing", "KD"))
    held = kd < smoothing and kd < plain

    def change(value: float) -> str:
        return "left it unchanged" if value == plain else f"{'lowered' if value < plain else 'raised'} it"

    lines = [
        f"Paper's claim (KD lowers routing entropy more than label smoothing, both vs plain) "
        f"{'HELD' if held else 'DID NOT HOLD'} on {result.dataset}: normalised routing entropy (H / Hmax) "
        f"plain {plain:.3f}; label smoothing {change(smoothing)} ({smoothing:.3f}, {smoothing - plain:+.3f}); "
        f"KD {change(kd)} ({kd:.3f}, {kd - plain:+.3f})."
    ]
    spreads = [std for _, std in entropy.values()]
    if any(math.isnan(std) for std in spreads):
        lines.append("One seed only: no seed-to-seed spread, so no statement about noise.")
    elif abs(kd - smoothing) <= max(entropy["KD"][1], entropy["label smoothing"][1]):
        lines.append("The KD vs label-smoothing gap is within the seed-to-seed std: not conclusive.")
    return "\n".join(lines)


def render_report(result: ExplainResult) -> str:
    table = explain_table(result)
    seeds = max((len(records) for records in result.records.values()), default=0)
    lines = [
        f"KDExplainer on {result.dataset} (teacher {result.teacher}); routing entropy in nats at the last "
        f"soft-routing temperature, top-1 of the last epoch (hard tree) on the test split; "
        f"mean ± std over {seeds} seed(s).",
        tabulate(table, headers="keys", tablefmt="github"),
        "",
        "Learned trees (seed 0): the classes under each expert, level by level ({} = an unused expert)",
    ]
    for label, records in result.records.items():
        if records:
            lines.append(f"  {label}:")
            lines += [
                f"    L{level} {text}"
                for level, text in enumerate(tree_text(records[0]["analysis"], result.classes), 1)
            ]
    lines += ["", *([f"FAILED: {line}" for line in result.failed]), claim_verdict(result)]
    return "\n".join(lines)


def _tree_layout(parents: list[list[int]], first_level: int) -> list[list[float]]:
    """x position of every node, level by level (the image, the expert levels, the leaves), in [0, 1].

    Each level is ordered by its nodes' arg-max parents' positions, so the hard tree's edges do not cross.
    """
    positions = [[0.5], [(i + 0.5) / first_level for i in range(first_level)]]
    for level_parents in parents:
        order = sorted(
            range(len(level_parents)), key=lambda child: (positions[-1][level_parents[child]], child)
        )
        slot = {child: rank for rank, child in enumerate(order)}
        positions.append([(slot[child] + 0.5) / len(level_parents) for child in range(len(level_parents))])
    return positions


def _draw_tree(axis, analysis: dict, classes: tuple[str, ...], title: str) -> None:
    parents = analysis["tree"]["parents"]
    positions = _tree_layout(parents, len(analysis["tree"]["classes"][0]))
    depth = len(positions) - 1
    for x in positions[1]:
        axis.plot([0.5, x], [depth, depth - 1], color="0.6", lw=1, zorder=1)
    for level, weights in enumerate(analysis["routing_weights"], start=1):
        y_parent, y_child = depth - level, depth - level - 1
        for child, row in enumerate(weights):
            for parent, weight in enumerate(row):
                hard = parent == parents[level - 1][child]
                axis.plot(
                    [positions[level][parent], positions[level + 1][child]],
                    [y_parent, y_child],
                    color="tab:blue" if hard else "tab:red",
                    alpha=max(0.05, weight),
                    lw=0.5 + 2.5 * weight,
                    zorder=2 if hard else 1,
                )
    for level, xs in enumerate(positions):
        axis.scatter(xs, [depth - level] * len(xs), s=30 if level < depth else 12, color="k", zorder=3)
    for leaf, x in enumerate(positions[-1]):
        axis.text(x, -0.15, classes[leaf], rotation=90, ha="center", va="top", fontsize=7)
    axis.set_yticks(
        range(depth + 1), ["leaves", *[f"L{level}" for level in range(depth - 1, 0, -1)], "image"]
    )
    axis.set_xticks([])
    axis.set_ylim(-1.5, depth + 0.3)
    axis.set_title(title, fontsize=9)
    for side in ("top", "right", "bottom"):
        axis.spines[side].set_visible(False)


def plot_explain(result: ExplainResult, path: Path) -> Path:
    """One learned tree per variant (seed 0; edge width/opacity = soft routing weight at the last soft
    temperature, blue = the arg-max edge kept in stage 2), and the per-level routing entropy."""
    shown = [(label, records) for label, records in result.records.items() if records]
    figure = Figure(figsize=(4.2 * len(shown), 7), layout="constrained")
    grid = figure.add_gridspec(2, len(shown), height_ratios=(3, 1.4))
    for column, (label, records) in enumerate(shown):
        record = records[0]
        title = (
            f"{label}: top-1 {record['metrics']['last_top1']:.1f}%, "
            f"H/Hmax {normalised_entropy(record['analysis']):.2f}"
        )
        _draw_tree(figure.add_subplot(grid[0, column]), record["analysis"], result.classes, title)
    axis = figure.add_subplot(grid[1, :])
    levels = shown[0][1][0]["analysis"]["routing_levels"]
    width = 0.8 / len(shown)
    for index, (label, records) in enumerate(shown):
        ratios = [entropy_ratios(record["analysis"]) for record in records]
        stats = [_mean_std([per_run[level] for per_run in ratios]) for level in range(len(levels))]
        axis.bar(
            [level + (index - (len(shown) - 1) / 2) * width for level in range(len(levels))],
            [mean for mean, _ in stats],
            width,
            yerr=[0.0 if math.isnan(std) else std for _, std in stats],
            capsize=3,
            label=label,
        )
    axis.set_xticks(range(len(levels)), [f"routing {name}" for name in levels])
    axis.set_ylabel("H / log(parents)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"KDExplainer HME on {result.dataset}, teacher {result.teacher} (mean ± std over seeds)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_report(result: ExplainResult, out: Path) -> list[Path]:
    """Write the report (markdown) and the figure (PNG) under `out`/explain/; return their paths."""
    stem = Path(out) / "explain" / f"{result.dataset}-{result.teacher}-{result.student}"
    report = stem.with_suffix(".md")
    store.atomic_write_bytes(report, (render_report(result) + "\n").encode())
    if not any(result.records.values()):
        return [report]
    return [report, plot_explain(result, stem.with_suffix(".png"))]
