"""A leaderboard as text: terminal, markdown or LaTeX (booktabs) tables with caption and notes, an HTML page
(html.py), or tidy CSV / JSON with one row per cell and numeric columns (`TIDY_COLUMNS`), for pandas and scripts."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pandas as pd
from tabulate import tabulate

from kdbench.errors import ConfigError
from kdbench.reporting.board import Leaderboard
from kdbench.reporting.frame import OVERHEAD_KEYS
from kdbench.reporting.html import leaderboard_page

FORMATS = ("terminal", "markdown", "csv", "latex", "html", "json")
# One row per (row, pair) cell of a tidy export; numbers are plain (percent points, counts, FLOPs, seconds,
# bytes), NaN/empty where a cell has none; booleans are True/False.
TIDY_COLUMNS = (
    ("method", "vam", "pair", "row", "config", "mean", "std", "n", "ci_low", "ci_high", "delta")
    + ("p_raw", "p_value", "significant", "best", "vam_delta", "published")
    + OVERHEAD_KEYS
)
SIGNIFICANT_MARK = "†"


def _display(board: Leaderboard) -> pd.DataFrame:
    """The table's strings with significant gains marked (the best cells are marked per format)."""
    table = board.table.copy()
    for row, column in board.significant:
        table.loc[row, column] = f"{table.loc[row, column]}{SIGNIFICANT_MARK}"
    return table


def _marked(board: Leaderboard, mark: Callable[[str], str]) -> pd.DataFrame:
    table = _display(board)
    for row, column in board.best:
        table.loc[row, column] = mark(table.loc[row, column])
    return table


def _tabulated(board: Leaderboard, tablefmt: str, mark: Callable[[str], str]) -> str:
    return tabulate(
        _marked(board, mark).reset_index(),
        headers="keys",
        tablefmt=tablefmt,
        showindex=False,
        disable_numparse=True,
    )


def _render_terminal(board: Leaderboard) -> str:
    notes = "".join(f"\n- {note}" for note in board.notes)
    table = _tabulated(board, "simple", lambda text: f"{text} *")
    return f"{board.caption} (* = best)\n\n{table}\n{notes}\n"


def _render_markdown(board: Leaderboard) -> str:
    notes = "".join(f"\n- {note}" for note in board.notes)
    table = _tabulated(board, "github", lambda text: f"**{text}**")
    return f"{board.caption} (**bold** = best)\n\n{table}\n{notes}\n"


def _tidy(board: Leaderboard) -> pd.DataFrame:
    return board.stats.reindex(columns=list(TIDY_COLUMNS))


def _render_csv(board: Leaderboard) -> str:
    # Caption and notes as leading '#' lines: pandas.read_csv(comment="#") reads the cells back. A '#' or a
    # line break inside them would end the comment or the line, so none is written.
    lines = [board.caption, *board.notes]
    header = "".join("# " + line.replace("#", "no.").replace("\n", " ") + "\n" for line in lines)
    return header + _tidy(board).to_csv(index=False, lineterminator="\n")


def _json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _render_json(board: Leaderboard) -> str:
    cells = [
        {column: _json_value(value) for column, value in row.items()}
        for row in _tidy(board).to_dict("records")
    ]
    document = {"caption": board.caption, "notes": board.notes, "cells": cells}
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "→": r"$\to$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": "--",
    "≥": r"$\geq$",
    "×": r"$\times$",
    SIGNIFICANT_MARK: r"$^\dagger$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in str(text))


def _render_latex(board: Leaderboard) -> str:
    table = _display(board)
    best = set(board.best)

    def row_line(label: str) -> str:
        cells = [latex_escape(label)]
        for column in table.columns:
            text = latex_escape(table.loc[label, column])
            cells.append(rf"\textbf{{{text}}}" if (label, column) in best else text)
        return " & ".join(cells) + r" \\"

    measured = [label for label in table.index if label not in board.published_rows]
    lines = [
        "% needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(board.caption)} Best in bold.}}",
        rf"\begin{{tabular}}{{l{'r' * len(table.columns)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in [table.index.name, *table.columns]) + r" \\",
        r"\midrule",
        *(row_line(label) for label in measured),
    ]
    if board.published_rows:
        lines += [r"\midrule", *(row_line(label) for label in board.published_rows)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if board.notes:
        lines += [r"\par\smallskip\footnotesize", *(latex_escape(note) + r"\\" for note in board.notes)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _render_html(board: Leaderboard) -> str:
    return leaderboard_page([board], significant_mark=SIGNIFICANT_MARK)


_RENDERERS: dict[str, Callable[[Leaderboard], str]] = {
    "terminal": _render_terminal,
    "markdown": _render_markdown,
    "csv": _render_csv,
    "latex": _render_latex,
    "html": _render_html,
    "json": _render_json,
}
# Formats whose cells already carry the overhead columns: a several-pair board's costs table is not added.
_TIDY_FORMATS = ("csv", "json", "html")


def render(board: Leaderboard, fmt: str) -> str:
    """The leaderboard as text in one of FORMATS, caption and notes included."""
    if fmt not in _RENDERERS:
        raise ConfigError(f"unknown report format '{fmt}'. Valid: {', '.join(FORMATS)}")
    text = _RENDERERS[fmt](board)
    if board.costs is not None and fmt not in _TIDY_FORMATS:
        text += "\n" + _RENDERERS[fmt](board.costs)
    return text
