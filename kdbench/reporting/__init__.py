"""Leaderboards, plots and the CI regression check, all computed from run records (`store.load_records`).

What a number means (README.md and docs/DESIGN.md, "Protocol"): a leaderboard cell is the top-1 (%) of the
*last* epoch on the test split, mean ± sample std (ddof=1) over seeds, with n. Best-epoch accuracy is in every
record but is never shown next to it, and published numbers are separate rows marked "(published)", never
averaged in. Failed runs are never averaged either: they are listed in the notes with their error.

Modules: `frame` (records as a pandas frame, labels, the published numbers), `board` (the `Leaderboard`),
`stats` (the statistics of its cells), `reference_rows` (teacher and published rows), `tidy` (the cells as
tidy data), `renderers` (text formats), `terminal` (the board fitted to a terminal), `html` (the board page, shared
by the report and the site), `site`, `site_rows`, `site_cells` (`kdbench site`: the static site), `plots` (figures), `summaries` (a student
wrapper's findings, e.g. VAM's attention entropies) and `check` (the regression baseline). A cell is one configuration (the full spec but
the seed), the same in the leaderboard and the regression gate; its statistics are in `Leaderboard.stats`
(`STATS_COLUMNS`, then each wrapper's: applied, its Δ and p); `tidy` makes them tidy rows with what
identifies each cell (`tidy_columns`), which `--format csv` and `--format json` write.
"""

from kdbench.reporting.board import OVERHEAD_COLUMNS, Leaderboard, leaderboard
from kdbench.reporting.check import check_regression, read_baseline, write_baseline
from kdbench.reporting.frame import (
    BASELINE_METHOD,
    EVALUATION_KEYS,
    FRAME_COLUMNS,
    METRIC_KEYS,
    NUMERIC_COLUMNS,
    OVERHEAD_KEYS,
    load_published,
    pair_label,
    records_frame,
    row_label,
)
from kdbench.reporting.plots import plot_accuracy_vs_overhead, plot_learning_curves
from kdbench.reporting.reference_rows import STATS_COLUMNS
from kdbench.reporting.renderers import FORMATS, latex_escape, render
from kdbench.reporting.stats import holm
from kdbench.reporting.summaries import wrapper_summary_table
from kdbench.reporting.tidy import tidy_columns, tidy_frame

__all__ = [
    "BASELINE_METHOD",
    "EVALUATION_KEYS",
    "FORMATS",
    "FRAME_COLUMNS",
    "METRIC_KEYS",
    "NUMERIC_COLUMNS",
    "OVERHEAD_COLUMNS",
    "OVERHEAD_KEYS",
    "STATS_COLUMNS",
    "Leaderboard",
    "check_regression",
    "holm",
    "read_baseline",
    "latex_escape",
    "leaderboard",
    "load_published",
    "pair_label",
    "plot_accuracy_vs_overhead",
    "plot_learning_curves",
    "records_frame",
    "render",
    "row_label",
    "tidy_columns",
    "tidy_frame",
    "wrapper_summary_table",
    "write_baseline",
]
