"""A leaderboard as text: terminal, markdown or LaTeX (booktabs) tables with caption and notes, an HTML page
(html.py), or tidy CSV / JSON with one row per cell and numeric columns (tidy.py), for pandas and scripts:
the CSV holds the cells alone, the JSON the caption and notes beside them."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import pandas as pd
from tabulate import tabulate

from kdbench.core.errors import ConfigError
from kdbench.core.spec import wrapper_label
from kdbench.reporting.board import OVERHEAD_COLUMNS, Leaderboard
from kdbench.reporting.html import leaderboard_page
from kdbench.reporting.stats import ALPHA
from kdbench.reporting.terminal import terminal_table, terminal_width, wrapped
from kdbench.reporting.tidy import tidy_frame

FORMATS = ("terminal", "markdown", "csv", "latex", "html", "json")


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


def _one_line(text: object) -> str:
    """A user string (a name, a hyper-parameter value, an error) kept on its line: a line break in it would
    end a table row, a comment or a list item and let the rest be read as markup."""
    return re.sub(r"[\r\n\v\f\x85\u2028\u2029]+", " ", str(text))


def _markdown_cell(text: object) -> str:
    r"""A GitHub-markdown table cell: a '|' would end the cell, so it is written '\|' (a backslash before
    it doubled first, so that it cannot escape the escape)."""
    return _one_line(text).replace("\\", "\\\\").replace("|", "\\|")


def _tabulated(
    board: Leaderboard, tablefmt: str, mark: Callable[[str], str], cell: Callable[[object], str] | None = None
) -> str:
    table = _marked(board, mark).reset_index()
    return tabulate(
        table.map(cell).rename(columns=cell) if cell else table,
        headers="keys",
        tablefmt=tablefmt,
        showindex=False,
        disable_numparse=True,
    )


def _render_terminal(board: Leaderboard) -> str:
    width = terminal_width()
    notes = "".join("\n" + wrapped(f"- {note}", width, "  ") for note in board.notes)
    table = terminal_table(_marked(board, lambda text: f"{text} *"), width)
    return f"{wrapped(f'{board.caption} (* = best)', width)}\n\n{table}\n{notes}\n"


def _render_markdown(board: Leaderboard) -> str:
    notes = "".join(f"\n- {_one_line(note)}" for note in board.notes)
    table = _tabulated(board, "github", lambda text: f"**{text}**", _markdown_cell)
    return f"{_one_line(board.caption)} (**bold** = best)\n\n{table}\n{notes}\n"


# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection"): a text cell that starts with one
# is written with a leading "'" so that it stays text; numbers (a negative Δ) stay numbers.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def _render_csv(board: Leaderboard) -> str:
    """The tidy cells alone, a header line then one line per cell: no comment lines, so that any CSV reader
    reads it as written. The caption and notes are in `--format json` ("caption", "notes")."""
    return tidy_frame(board).map(_csv_cell).to_csv(index=False, lineterminator="\n")


def _json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _render_json(board: Leaderboard) -> str:
    cells = [
        {column: _json_value(value) for column, value in row.items()}
        for row in tidy_frame(board).to_dict("records")
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
    # in LaTeX's default (OT1) font encoding these print as other glyphs
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "→": r"$\to$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": "--",
    "≥": r"$\geq$",
    "α": r"$\alpha$",
    "×": r"$\times$",
    SIGNIFICANT_MARK: r"$^\dagger$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in _one_line(text))


_SEEDS = re.compile(r" \(n=(\d+)\)")
_NEGATIVE = re.compile(r"(?<![\w.])-(?=\d)")  # a minus sign, not a hyphen: 1 column of a paper reads $-$


def _latex_cell(text: str, bold: bool, uniform_seeds: bool) -> str:
    text = _SEEDS.sub("" if uniform_seeds else r"\\,{\\scriptsize ($n$=\1)}", latex_escape(text))
    text = _NEGATIVE.sub(r"$-$", text)
    return rf"\textbf{{{text}}}" if bold and text else text


def _latex_columns(columns: list[str], wrappers: list[str]) -> pd.MultiIndex:
    """(pair, top-1 | Δ | ΔVAM) headers, the pair spanning its columns: narrower than 'pair Δ' each."""
    deltas = (" Δ", *(f" Δ{wrapper_label(wrapper)}" for wrapper in wrappers))
    pairs = []
    for column in columns:
        pair, _, kind = column.rpartition(" ") if column.endswith(deltas) else (column, "", "top-1")
        pairs.append((latex_escape(pair), latex_escape(kind)))
    return pd.MultiIndex.from_tuples(pairs)


def _latex_table(
    table: pd.DataFrame,
    label: str,
    caption: str,
    size: str = "small",
    colsep: int = 4,
    label_column: str = "l",
) -> str:
    """One booktabs table through pandas' Styler, cells already LaTeX."""
    styler = table.style
    return styler.to_latex(
        hrules=True,
        label=label,
        caption=caption,
        position="t",
        position_float="centering",
        column_format=label_column + "r" * len(table.columns),
        multicol_align="c",
        environment="table*" if len(table.columns) > 6 else "table",  # more than a column's width
    ).replace("\\centering\n", f"\\centering\n\\{size}\n\\setlength{{\\tabcolsep}}{{{colsep}pt}}\n", 1)


def _render_latex(board: Leaderboard) -> str:
    r"""A paper's table (booktabs, `\label{tab:kdbench-<dataset>}`, $\pm$, $-$, the teacher row first):
    accuracy and Δ columns, a one-sentence caption (the full one and the notes as % comments above),
    and the costs as a second table, so that each fits one column of a two-column paper."""
    dataset = board.dataset or "results"
    display = _display(board)
    cost_headers = [header for header, _, _ in OVERHEAD_COLUMNS if header in display.columns]
    accuracy = display.drop(columns=cost_headers)
    measured = board.stats[~board.stats["published"] & (board.stats["method"] != "teacher")]
    counts = sorted({int(n) for n in measured["n"].dropna()}) if "n" in measured else []
    uniform = len(counts) <= 1
    seeds = f"over {counts[0]} seed{'s' * (counts[0] != 1)}" if len(counts) == 1 else "($n$ seeds per cell)"
    cells = pd.DataFrame(
        [
            [
                _latex_cell(display.loc[row, column], (row, column) in board.best, uniform)
                for column in accuracy
            ]
            for row in accuracy.index
        ],
        index=pd.Index([latex_escape(row) for row in accuracy.index], name=None),
        columns=_latex_columns(list(accuracy.columns), board.wrappers),
    )
    caption = (
        rf"Top-1 accuracy (\%) on {latex_escape(dataset)}, mean $\pm$ std {seeds}. "
        r"$\Delta$: vs.\ the student; $^\dagger$: significant gain (Welch's $t$-test, Holm-corrected, "
        rf"$\alpha={ALPHA}$); bold: not significantly below the best."
    )
    comments = "".join(f"% {_one_line(line)}\n" for line in [board.caption, *board.notes] if line)
    text = "% needs \\usepackage{booktabs}\n" + comments
    table = _latex_table(cells, f"tab:kdbench-{_label_slug(dataset)}", caption)
    if board.published_rows:  # a rule between measured and published rows
        first = latex_escape(board.published_rows[0]) + " & "
        table = table.replace("\n" + first, "\n\\midrule\n" + first, 1)
    text += table
    if cost_headers:
        costs = display[cost_headers].rename(index=latex_escape)
        # published rows carry no costs, nor does the teacher (it is not trained here)
        empty = [row for row in costs.index if not "".join(costs.loc[row])]
        costs = costs.drop(index=empty)
        costs = costs.map(lambda text: _NEGATIVE.sub(r"$-$", latex_escape(_compact_count(text))))
        costs.index.name = None
        # two-line headers ("deploy" spanning params and GFLOPs): a column's width
        costs.columns = pd.MultiIndex.from_tuples([_LATEX_COST_HEADERS[header] for header in cost_headers])
        text += _latex_table(
            costs,
            f"tab:kdbench-{_label_slug(dataset)}-costs",
            rf"What each method costs on {latex_escape(dataset)}, mean over the row's runs: extra trainable "
            r"parameters, training GFLOPs per image, training time relative to the student, peak memory, "
            r"and the deployed student's parameters and GFLOPs per image.",
            size="footnotesize",
            colsep=2,
            label_column="p{5em}",  # a configuration's label wraps: the six cost columns keep their width
        )
    return text


def _compact_count(text: str) -> str:
    """'278.00K' as '278K', '3.30M' as '3.3M': three significant digits, a column's width."""
    match = re.fullmatch(r"(\d+\.\d+)([KMG])", text)
    return f"{float(match.group(1)):.3g}{match.group(2)}" if match else text


_LATEX_COST_HEADERS = {
    "extra params": ("extra", "params"),
    "train GFLOPs/img": ("train", "GFLOPs"),
    "time / student": ("time", r"$\times$"),
    "peak MiB": ("peak", "MiB"),
    "deploy params": ("deploy", "params"),
    "deploy GFLOPs/img": ("deploy", "GFLOPs"),
}


def _label_slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


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
