"""Figures from run records (PNG): accuracy against overhead, and learning curves per (dataset, pair).

Both keep the leaderboard's rows apart: a point or a curve is one configuration (every resolved setting but the
seed), labelled as its row on the board (`kd (temperature=2)`), never an average of a method's configurations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from kdbench.core.store import RunRecord
from kdbench.reporting.board import OVERHEAD_COLUMNS, leaderboard
from kdbench.reporting.frame import _done_frame, _pair_runs, _pairs, pair_label

# the costs on the x axes: (records_frame column, its scale, the axis title); the time is the board's own
# column ("time / student"), so the plot shows what the table does
_TIME_COLUMN = next(column for header, column, _ in OVERHEAD_COLUMNS if header == "time / student")
COST_AXES = (
    ("train_flops_per_image", 1e-9, "train GFLOPs / image"),
    (_TIME_COLUMN, 1.0, "training time / student (×)"),
)


def configuration_points(records: list[RunRecord]) -> pd.DataFrame:
    """One row per measured configuration and pair, of every dataset: the board's cells (`Leaderboard.stats`:
    row, method, wrappers, pair, config, mean, std, n, and each cost, mean over its runs) with the dataset, in
    the board's row order."""
    done = _done_frame(records)
    cells = []
    for dataset in sorted(done["dataset"].unique()):
        board = leaderboard(records, dataset=dataset)
        order = {row: position for position, row in enumerate(board.table.index)}
        measured = board.stats[~board.stats["published"] & (board.stats["method"] != "teacher")]
        cells.append(
            measured.assign(dataset=dataset).sort_values(
                "row", key=lambda rows: rows.map(order), kind="stable"
            )
        )
    return pd.concat(cells, ignore_index=True)


def _point_label(cell, several_datasets: bool, several_pairs: bool) -> str:
    where = f"{cell.dataset}: {cell.pair}" if several_datasets else cell.pair
    return f"{cell.row} ({where})" if several_pairs or several_datasets else cell.row


def plot_accuracy_vs_overhead(records: Iterable[RunRecord], path: Path) -> Path:
    """`accuracy_vs_overhead_figure` as a PNG at `path`."""
    return _save(accuracy_vs_overhead_figure(records), path)


def accuracy_vs_overhead_figure(records: Iterable[RunRecord]) -> Figure:
    """Last-epoch top-1 (mean ± std over seeds) against train GFLOPs/image and training time relative to the
    student; one point per configuration and pair, labelled as its board row in a column beside each panel
    (`_stack_labels`), a grey line to its point; triangles are runs with a student wrapper."""
    records = list(records)
    points = configuration_points(records)
    several_datasets = points["dataset"].nunique() > 1
    several_pairs = points[["dataset", "pair"]].drop_duplicates().shape[0] > 1
    labels = [_point_label(cell, several_datasets, several_pairs) for cell in points.itertuples()]
    colors = {label: f"C{index % 10}" for index, label in enumerate(dict.fromkeys(points["row"]))}
    # room for one line of text per label beside each panel
    figure = Figure(figsize=(15, max(5.5, 2 + 0.2 * len(points))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for axis, (column, scale, title) in zip(axes, COST_AXES, strict=True):
        for cell in points.itertuples():
            x = getattr(cell, column) * scale
            if not math.isnan(x):
                spread = 0 if math.isnan(cell.std) else cell.std
                fmt = "^" if cell.wrappers else "o"
                axis.errorbar(x, cell.mean, yerr=spread, fmt=fmt, color=colors[cell.row], capsize=3)
        axis.set_xlabel(title)
        axis.grid(alpha=0.3)
        if points[column].isna().all():  # records from before it was measured: say so, not a blank panel
            axis.text(0.5, 0.5, "not in these records", transform=axis.transAxes, ha="center", color="0.4")
    axes[0].set_ylabel("last-epoch top-1 (%)")
    figure.suptitle(
        "accuracy vs overhead: one point per configuration (mean ± std over seeds; ▲ = with a student wrapper)"
    )
    annotations = [
        _label_points(axis, points[column] * scale, points["mean"], labels)
        for axis, (column, scale, _) in zip(axes, COST_AXES, strict=True)
    ]
    figure.draw_without_rendering()  # the layout, room for the labels made: then they are spaced in it
    figure.set_layout_engine("none")
    for axis, labelled in zip(axes, annotations, strict=True):
        _stack_labels(axis, labelled)
    return figure


# where a panel's labels stand, in the panel's width (just right of it)
_LABEL_COLUMN = 1.02


def _label_points(axis: Axes, xs: pd.Series, ys: pd.Series, labels: list[str]) -> list:
    """Each point's label right of the panel at the point's height, joined to it by a grey line."""
    bottom, top = axis.get_ylim()
    annotations = []
    for x, y, label in zip(xs, ys, labels, strict=True):
        if not math.isnan(x):
            annotations.append(
                axis.annotate(
                    label,
                    xy=(x, y),
                    xytext=(_LABEL_COLUMN, (y - bottom) / (top - bottom)),
                    textcoords="axes fraction",
                    va="center",
                    fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkB": 3},
                    annotation_clip=False,
                )
            )
    return annotations


def _stack_labels(axis: Axes, annotations: list) -> None:
    """Moves the labels up or down as little as keeps them a line apart, in the order of their points'
    heights (so that few of their lines cross): no two labels overlap, whatever the points do."""
    if not annotations:
        return
    renderer = axis.figure.canvas.get_renderer()
    # the text's own box (an Annotation's extent spans its line to the point too)
    line = max(Text.get_window_extent(text, renderer).height for text in annotations) * 1.2
    gap = min(line / axis.get_window_extent(renderer).height, 1 / len(annotations))
    ordered = sorted(annotations, key=lambda text: -text.xyann[1])
    heights = [min(ordered[0].xyann[1], 1 - gap / 2)]
    for text in ordered[1:]:  # top down: each at its point or a line below the one above
        heights.append(min(text.xyann[1], heights[-1] - gap))
    heights[-1] = max(heights[-1], gap / 2)
    for index in range(len(heights) - 2, -1, -1):  # bottom up: none below the panel
        heights[index] = max(heights[index], heights[index + 1] + gap)
    for text, height in zip(ordered, heights, strict=True):
        text.xyann = (_LABEL_COLUMN, height)


def plot_learning_curves(records: Iterable[RunRecord], path: Path) -> Path:
    """`learning_curves_figure` as a PNG at `path`."""
    return _save(learning_curves_figure(records), path)


def learning_curves_figure(records: Iterable[RunRecord]) -> Figure:
    """Per (dataset, pair), two panels: the test top-1 at each evaluated epoch (a marker on each; a recipe's
    `eval_every` skips epochs) and the training loss of every epoch, each the mean over seeds, one curve per
    configuration (its board row), the student baseline included; dashed with a student wrapper."""
    records = list(records)
    points = configuration_points(records)
    done = _done_frame(records)
    history = {
        record.get("run_id"): pd.DataFrame(record["history"]) for record in records if record.get("history")
    }
    panels = [
        (dataset, teacher, student)
        for dataset in sorted(done["dataset"].unique())
        for teacher, student in _pairs(done[done["dataset"] == dataset])
    ]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    # each panel's legend beside it: one column of labels, two beyond _LEGEND_ROWS configurations
    legend_columns = 1 if points.groupby(["dataset", "pair"]).size().max() <= _LEGEND_ROWS else 2
    figure = Figure(figsize=((5 + 2.8 * legend_columns) * columns, 6.5 * rows), layout="constrained")
    grid = figure.subplots(2 * rows, columns, squeeze=False, sharex="col")
    for index, (dataset, teacher, student) in enumerate(panels):
        accuracy, loss = (
            grid[2 * (index // columns), index % columns],
            grid[2 * (index // columns) + 1, index % columns],
        )
        pair = pair_label(teacher, student)
        cells = points[(points["dataset"] == dataset) & (points["pair"] == pair)]
        runs = _pair_runs(done[done["dataset"] == dataset], teacher, student)
        _plot_pair(accuracy, loss, cells, runs, history)
        accuracy.set_title(f"{dataset}: {pair}")
    for index in range(len(panels), rows * columns):
        for axis in grid[2 * (index // columns) : 2 * (index // columns) + 2, index % columns]:
            axis.set_visible(False)
    return figure


def _mean_curve(runs: Iterable[str], history: dict[str | None, pd.DataFrame], key: str) -> pd.Series:
    """The mean over runs of one history column by epoch, at the epochs that have it (NaN elsewhere dropped)."""
    curves = [
        history[run_id].set_index("epoch")[key]
        for run_id in runs
        if run_id in history and key in history[run_id]
    ]
    if not curves:
        return pd.Series(dtype=float)
    return pd.concat(curves, axis=1).mean(axis=1).dropna().sort_index()


_MARKERS = ("o", "s", "^", "D", "v")
_LEGEND_ROWS = 20


def _plot_pair(
    accuracy: Axes,
    loss: Axes,
    cells: pd.DataFrame,
    runs: pd.DataFrame,
    history: dict[str | None, pd.DataFrame],
) -> None:
    """A pair's two panels: each configuration's mean test top-1 and training loss, a color and marker each
    (ten colors, then the next marker), the legend beside the panels."""
    for index, cell in enumerate(cells.itertuples()):
        run_ids = runs.loc[runs["config"] == cell.config, "run_id"]
        style = {
            "color": f"C{index % 10}",
            "marker": _MARKERS[index // 10 % len(_MARKERS)],
            "markersize": 4,
            "linestyle": "--" if cell.wrappers else "-",
        }
        tested = _mean_curve(run_ids, history, "test_top1")
        accuracy.plot(tested.index, tested.values, label=f"{cell.row} (n={cell.n:.0f})", **style)
        trained = _mean_curve(run_ids, history, "train_loss")
        loss.plot(trained.index, trained.values, **style)
    accuracy.set_ylabel("test top-1 (%)")
    accuracy.grid(alpha=0.3)
    accuracy.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), ncols=1 if len(cells) <= 20 else 2
    )
    loss.set_xlabel("epoch")
    loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss.set_ylabel("training loss")
    loss.grid(alpha=0.3)


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
