"""The leaderboard on a terminal: a table no wider than the terminal (`COLUMNS`, else 160 characters),
the caption and notes wrapped to it.

A pair's Δ columns sit under their pair (headed `Δ`, `ΔVAM`), the costs under two-line headers; where the
columns still do not fit, they are split into several tables one after the other, each with the row labels,
a pair never split from its Δ columns."""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd
from tabulate import tabulate

from kdbench.reporting.board import OVERHEAD_COLUMNS

DEFAULT_WIDTH = 160  # where the output is no terminal and COLUMNS is unset
_GAP = 2  # tabulate's "simple" format: two spaces between columns
_COST_HEADERS = {
    "extra params": "extra\nparams",
    "train GFLOPs/img": "train\nGFLOPs/img",
    "time / student": "time\n/ student",
    "peak MiB": "peak\nMiB",
    "deploy params": "deploy\nparams",
    "deploy GFLOPs/img": "deploy\nGFLOPs/img",
}


def terminal_width() -> int:
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def _header(column: str, pairs: list[str]) -> str:
    """A column's header on the terminal: a Δ column's without its pair (the column left of it names it)."""
    for pair in pairs:
        if column.startswith(pair + " Δ"):
            return column[len(pair) + 1 :]
    return _COST_HEADERS.get(column, column)


def _groups(columns: list[str]) -> list[list[str]]:
    """The columns in groups that stay together: a pair with its Δ columns; each other column alone."""
    costs = {header for header, _, _ in OVERHEAD_COLUMNS}
    groups: list[list[str]] = []
    for column in columns:
        joins = groups and column not in costs and column.startswith(groups[-1][0] + " Δ")
        if joins:
            groups[-1].append(column)
        else:
            groups.append([column])
    return groups


def _width(table: pd.DataFrame, column: str, header: str) -> int:
    """The characters a column takes: tabulate pads its header by two (`tabulate.MIN_PADDING`), then a gap."""
    cells = [len(str(cell)) for cell in table[column]]
    return max([*cells, *(len(line) + 2 for line in header.split("\n"))]) + _GAP


def _chunks(table: pd.DataFrame, headers: dict[str, str], width: int) -> list[list[str]]:
    """The columns packed into tables of at most `width` characters, the row labels leading each."""
    labels = max([len(str(label)) for label in table.index] + [len("method")]) + _GAP
    chunks: list[list[str]] = [[]]
    used = labels
    for group in _groups(list(table.columns)):
        needed = sum(_width(table, column, headers[column]) for column in group)
        if chunks[-1] and used + needed > width:
            chunks.append([])
            used = labels
        chunks[-1] += group
        used += needed
    return chunks


def terminal_table(table: pd.DataFrame, width: int) -> str:
    """`table` (display strings, index = row labels) as one or more plain tables of at most `width`
    characters where its columns allow; a row empty in a later table is left out of it."""
    pairs = [column for column in table.columns if " Δ" not in column]
    headers = {column: _header(column, pairs) for column in table.columns}
    parts = []
    for index, chunk in enumerate(_chunks(table, headers, width)):
        part = table[chunk]
        if index:
            part = part[(part != "").any(axis=1)]
        part = part.rename(columns=headers).reset_index()
        parts.append(
            tabulate(part, headers="keys", tablefmt="simple", showindex=False, disable_numparse=True)
        )
    return "\n\n".join(parts)


def wrapped(text: str, width: int, indent: str = "") -> str:
    """`text` broken into lines of at most `width` characters (a later line indented by `indent`)."""
    return textwrap.fill(text, width, subsequent_indent=indent, break_on_hyphens=False)
