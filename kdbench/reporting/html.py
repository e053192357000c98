"""The leaderboard as one self-contained HTML page: `kdbench report --format html > board.html`.

One file, no network (inline CSS, JS and SVG; a Content-Security-Policy forbids any fetch): a table with one
row per (dataset, pair, configuration), its cells the board's own display strings and marks (bold = best,
† = significant gain, as in the markdown and LaTeX boards) plus the board's p-values, t-intervals and
overhead; sortable columns (numbers sort by value, empty cells last); filters for dataset, pair, method and
the student wrappers a row applies (VAM); and the accuracy-vs-overhead chart of each board as inline SVG. Nothing is recomputed: every number is
a `Leaderboard.stats` cell. The table is plain HTML, not pandas' Styler: a row's label is its header cell and
published rows have the class "published", as in the HTML table before it. Sort keys and filter fields
travel beside it as JSON. Every user string (labels, hyper-parameter values, errors in notes) is escaped.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from kdbench.core.spec import wrapper_label
from kdbench.reporting.board import OVERHEAD_COLUMNS, Leaderboard
from kdbench.reporting.stats import wrapper_columns

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
# Columns that sort as text; the others sort by the stats number behind the cell (empty cells last).
_TEXT_COLUMNS = ("method", "dataset", "pair", "wrappers")
_FILTERS = (("dataset", "dataset"), ("pair", "pair"), ("method", "method"), ("wrappers", "wrappers"))
_NO_WRAPPER = "none"  # the wrappers cell of a row that applies none


def leaderboard_page(boards: Sequence[Leaderboard], significant_mark: str = "†") -> str:
    """One HTML page with the boards of one or more datasets (each from `report.leaderboard`); significant
    gains carry `significant_mark` (the renderers' SIGNIFICANT_MARK)."""
    if not boards:
        raise ValueError("leaderboard_page needs at least one board")
    names = [_dataset(board) for board in boards]
    wrappers = sorted({wrapper for board in boards for wrapper in board.wrappers})
    rows = [
        row
        for board, name in zip(boards, names, strict=True)
        for row in _rows(board, name, significant_mark, wrappers)
    ]
    deltas = [f"Δ{wrapper_label(wrapper)}" for wrapper in wrappers]
    headers = [*_TEXT_COLUMNS, "top-1 (%)", "Δ", "p (Holm)", *deltas, "95 % CI"]
    headers += [header for header, _, _ in OVERHEAD_COLUMNS]
    escape = html.escape
    several = len(boards) > 1

    captions = "".join(f'<p class="caption">{escape(board.caption)} Best in bold.</p>\n' for board in boards)
    notes = [
        f"<li>{escape(f'{name}: {note}' if several else note)}</li>"
        for board, name in zip(boards, names, strict=True)
        for note in board.notes
    ]
    charts = "".join(
        _chart(board, name, index) for index, (board, name) in enumerate(zip(boards, names, strict=True))
    )
    data = {
        "numeric": [header not in _TEXT_COLUMNS for header in headers],
        "rows": [
            {key: row[key] for key in ("dataset", "pair", "method", "wrappers", "values")} for row in rows
        ],
    }
    title = escape(f"kdbench leaderboard: {', '.join(names)}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{title}</h1>
{captions}<form id="filters" onsubmit="return false">
{"".join(_select(key, label, rows) for key, label in _FILTERS)}<output id="shown">{len(rows)} of {len(rows)} rows</output>
</form>
{_table(rows, headers)}
{'<ul class="notes">' + "".join(notes) + "</ul>" if notes else ""}
{charts}
<script type="application/json" id="kdbench-data">{_script_json(data)}</script>
<script>{_JS}</script>
</body>
</html>
"""


def _dataset(board: Leaderboard) -> str:
    """The board's dataset: from a measured cell's configuration, else the caption's leading `dataset:`."""
    for config in board.stats.get("config", []):
        if config:
            return str(json.loads(config).get("dataset"))
    return board.caption.split(": ", 1)[0]


def _number(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _rows(board: Leaderboard, dataset: str, significant_mark: str, wrappers: list[str]) -> list[dict]:
    """One dict per (row, pair) cell of the board, in the board's row order: its cells as (escaped HTML, CSS
    class), its sort keys (text, or the stats number; None where empty) and its filter fields; a Δ column for
    each of `wrappers` (those of every board on the page)."""
    display = board.table.copy()  # the board's strings, marked as the text formats mark them
    for row, column in board.significant:
        display.loc[row, column] = f"{display.loc[row, column]}{significant_mark}"
    order = {label: index for index, label in enumerate(board.table.index)}
    stats = board.stats.assign(_order=board.stats["row"].map(order)).sort_values("_order", kind="stable")
    escape = html.escape
    rows = []
    for cell in stats.to_dict("records"):
        label, pair = cell["row"], cell["pair"]
        applied = " ".join(wrapper_label(name) for name in cell["wrappers"].split("+") if name) or _NO_WRAPPER
        best = (label, pair) in board.best
        significant = (label, f"{pair} Δ") in board.significant
        interval = "" if pd.isna(cell["ci_low"]) else f"{cell['ci_low']:.2f}–{cell['ci_high']:.2f}"
        top1 = escape(_shown(display, label, pair))
        deltas = [wrapper_columns(wrapper)[1] for wrapper in wrappers]
        cells = [(escape(text), "text") for text in (label, dataset, pair, applied)] + [
            (f"<b>{top1}</b>" if best else top1, "best" if best else ""),
            (escape(_shown(display, label, f"{pair} Δ")), "significant" if significant else ""),
            ("" if pd.isna(cell["p_value"]) else f"{cell['p_value']:.3g}", ""),
            *((escape(_shown(display, label, f"{pair} Δ{wrapper_label(w)}")), "") for w in wrappers),
            (interval, ""),
        ]
        values = [label, dataset, pair, applied] + [
            _number(cell.get(key)) for key in ("mean", "delta", "p_value", *deltas, "ci_low")
        ]
        for _, column, fmt in OVERHEAD_COLUMNS:  # the board's overhead means, formatted as its table does
            value = _number(cell[column])
            cells.append(("" if value is None else escape(fmt(value)), ""))
            values.append(value)
        fields = {"dataset": dataset, "pair": pair, "method": cell["method"], "wrappers": applied}
        rows.append({**fields, "values": values, "cells": cells, "published": bool(cell["published"])})
    return rows


def _shown(display: pd.DataFrame, label: str, column: str) -> str:
    return str(display.loc[label, column]) if column in display.columns else ""


def _table(rows: list[dict], headers: list[str]) -> str:
    """The table: a row's label is its header cell; published rows have the class "published"."""
    head = "".join(
        f'<th class="text">{html.escape(h)}</th>' if h in _TEXT_COLUMNS else f"<th>{html.escape(h)}</th>"
        for h in headers
    )
    lines = ['<table class="kdbench-leaderboard">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for row in rows:
        (label, _), *cells = row["cells"]
        tds = "".join(
            f'<td class="{css}">{fragment}</td>' if css else f"<td>{fragment}</td>" for fragment, css in cells
        )
        css = ' class="published"' if row["published"] else ""
        lines.append(f"<tr{css}><th>{label}</th>{tds}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _select(key: str, label: str, rows: list[dict]) -> str:
    escape = html.escape
    options = "".join(
        f'<option value="{escape(value)}">{escape(value)}</option>'
        for value in sorted({row[key] for row in rows})
    )
    return (
        f'<label>{escape(label)} <select id="filter-{key}" data-field="{key}">'
        f'<option value="">all</option>{options}</select></label>\n'
    )


def _script_json(data: dict) -> str:
    """JSON for a <script> element: no `<`, `>` or `&` that could end it early."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _chart(board: Leaderboard, dataset: str, index: int) -> str:
    """The board's accuracy vs overhead (plots.plot_accuracy_vs_overhead, drawn from the board's cells) as
    inline SVG: mean ± std of each measured cell against train GFLOPs/image and seconds/epoch."""
    stats = board.stats
    measured = stats[~stats["published"]] if not stats.empty else stats
    points = measured.dropna(subset=["mean"])
    if points.empty:
        return f'<p class="chart">{html.escape(dataset)}: no finished runs to plot.</p>\n'
    several_pairs = points["pair"].nunique() > 1
    # text as paths and a per-chart salt: no font is fetched and two charts' ids never collide
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": f"kdbench-{index}"}):
        figure = Figure(figsize=(11, 4.5), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        for axis, x_column, scale, x_title in (
            (axes[0], "train_flops_per_image", 1e9, "train GFLOPs / image"),
            (axes[1], "epoch_seconds", 1.0, "seconds / epoch"),
        ):
            for cell in points.itertuples():
                x = getattr(cell, x_column)
                if pd.isna(x):
                    continue
                spread = 0 if math.isnan(cell.std) else cell.std
                axis.errorbar(x / scale, cell.mean, yerr=spread, fmt="^" if cell.wrappers else "o", capsize=3)
                axis.annotate(
                    f"{cell.row} ({cell.pair})" if several_pairs else cell.row,
                    (x / scale, cell.mean),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                    parse_math=False,  # a label is text: a `$` in a hyper-parameter value is no TeX
                )
            axis.set_xlabel(x_title)
            axis.grid(alpha=0.3)
        axes[0].set_ylabel("last-epoch top-1 (%)")
        figure.suptitle(
            f"{dataset}: accuracy vs overhead (mean ± std over seeds; ▲ = with a student wrapper)",
            parse_math=False,
        )
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and DOCTYPE: the SVG is inline
    caption = html.escape(f"{dataset}: accuracy vs overhead, one point per measured cell")
    return f'<figure class="chart">\n{svg}<figcaption>{caption}</figcaption>\n</figure>\n'


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
.caption { max-width: 70em; color: #444; font-size: 0.9em; }
#filters { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin: 1em 0; }
#shown { color: #666; }
table.kdbench-leaderboard { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.kdbench-leaderboard th, table.kdbench-leaderboard td { padding: 0.25em 0.6em;
  border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
table.kdbench-leaderboard th.text, table.kdbench-leaderboard td.text { text-align: left; }
table.kdbench-leaderboard tbody th { text-align: left; font-weight: normal; }
table.kdbench-leaderboard thead th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer;
  user-select: none; }
table.kdbench-leaderboard thead th[aria-sort="ascending"]::after { content: " ▲"; }
table.kdbench-leaderboard thead th[aria-sort="descending"]::after { content: " ▼"; }
table.kdbench-leaderboard tbody tr:hover td { background: #f8f8e8; }
tr.published th, tr.published td { color: #666; font-style: italic; }
td.best { background: #eaf5ea; }
td.significant { color: #1a7f37; }
.notes { font-size: 0.9em; color: #444; max-width: 70em; }
figure.chart svg { max-width: 100%; height: auto; }
"""

_JS = """
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("kdbench-data").textContent);
  const table = document.querySelector("table.kdbench-leaderboard");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.forEach((row, index) => { row.dataset.index = index; });
  const headers = Array.from(table.tHead.rows[0].cells);
  const selects = Array.from(document.querySelectorAll("#filters select"));
  const shown = document.getElementById("shown");
  let sorted = { column: -1, ascending: true };

  const key = (row, column) => data.rows[row.dataset.index].values[column];
  function compare(a, b, column, ascending) {
    const x = key(a, column), y = key(b, column);
    if (x === null || y === null || x === "" || y === "") {
      return (x === null || x === "") - (y === null || y === "");  // empty cells last, either way
    }
    const order = data.numeric[column]
      ? x - y
      : String(x).localeCompare(String(y), undefined, { numeric: true });
    return ascending ? order : -order;
  }
  function sortBy(column) {
    const ascending = sorted.column === column ? !sorted.ascending : true;
    sorted = { column, ascending };
    const order = rows.slice().sort((a, b) => compare(a, b, column, ascending) || a.dataset.index - b.dataset.index);
    body.append(...order);
    headers.forEach((th, index) => {
      if (index === column) th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
  }
  headers.forEach((th, column) => {
    th.tabIndex = 0;
    th.title = "sort";
    th.addEventListener("click", () => sortBy(column));
    th.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(column); }
    });
  });
  function filter() {
    let visible = 0;
    rows.forEach((row) => {
      const fields = data.rows[row.dataset.index];
      row.hidden = !selects.every((select) => select.value === "" || fields[select.dataset.field] === select.value);
      visible += row.hidden ? 0 : 1;
    });
    shown.textContent = visible + " of " + rows.length + " rows";
  }
  selects.forEach((select) => select.addEventListener("change", filter));
  filter();
})();
"""
