"""Figures from run records (PNG): accuracy against overhead, and learning curves per (dataset, pair)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kdbench.core.store import RunRecord
from kdbench.reporting.frame import _done_frame, _pair_column, _pair_runs, _pairs, pair_label


def plot_accuracy_vs_overhead(records: Iterable[RunRecord], path: Path) -> Path:
    """Last-epoch top-1 (mean ± std over seeds) against train GFLOPs/image and epoch time; one point per
    (dataset, pair, method and its student wrappers); triangles are runs with a wrapper (VAM)."""
    done = _done_frame(records)
    several_datasets = done["dataset"].nunique() > 1
    several_pairs = done[["dataset", "teacher", "student"]].astype(str).drop_duplicates().shape[0] > 1
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    points = done.assign(
        pair=_pair_column(done),
        train_gflops=done["train_flops_per_image"] / 1e9,
    ).groupby(["dataset", "pair", "label", "wrappers"])
    for axis, x_column, x_title in (
        (axes[0], "train_gflops", "train GFLOPs / image"),
        (axes[1], "epoch_seconds", "seconds / epoch"),
    ):
        for (dataset, pair, label, wrappers), group in points:
            x, y, spread = group[x_column].mean(), group["last_top1"].mean(), group["last_top1"].std(ddof=1)
            axis.errorbar(
                x, y, yerr=0 if math.isnan(spread) else spread, fmt="^" if wrappers else "o", capsize=3
            )
            where = f"{dataset}: {pair}" if several_datasets else pair
            axis.annotate(
                f"{label} ({where})" if several_pairs else label,
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        axis.set_xlabel(x_title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("last-epoch top-1 (%)")
    figure.suptitle("accuracy vs overhead (mean ± std over seeds; ▲ = with a student wrapper)")
    return _save(figure, path)


def plot_learning_curves(records: Iterable[RunRecord], path: Path) -> Path:
    """Test top-1 per epoch, mean over seeds; one panel per (dataset, pair), its student baseline included."""
    records = list(records)
    done = _done_frame(records)
    curves_by_run = {
        record.get("run_id"): pd.DataFrame(record["history"]).set_index("epoch")["test_top1"]
        for record in records
        if record.get("history")
    }
    panels = [
        (dataset, teacher, student)
        for dataset in sorted(done["dataset"].unique())
        for teacher, student in _pairs(done[done["dataset"] == dataset])
    ]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (dataset, teacher, student) in zip(axes, panels, strict=False):
        runs = _pair_runs(done[done["dataset"] == dataset], teacher, student)
        _plot_curves(axis, runs, curves_by_run, f"{dataset}: {pair_label(teacher, student)}")
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    return _save(figure, path)


def _plot_curves(
    axis: Axes, runs: pd.DataFrame, curves_by_run: dict[str | None, pd.Series], title: str
) -> None:
    """One panel: the mean test curve of each row label among `runs` (dashed with a student wrapper)."""
    for (label, wrappers), group in runs.groupby(["label", "wrappers"]):
        curves = [curves_by_run[run_id] for run_id in group["run_id"] if run_id in curves_by_run]
        if not curves:
            continue
        mean_curve = pd.concat(curves, axis=1).mean(axis=1)
        axis.plot(
            mean_curve.index,
            mean_curve.values,
            label=f"{label} (n={len(curves)})",
            linestyle="--" if wrappers else "-",
        )
    axis.set_title(title)
    axis.set_xlabel("epoch")
    axis.set_ylabel("test top-1 (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
