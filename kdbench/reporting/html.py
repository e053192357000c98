"""The leaderboard as HTML: the board page of `kdbench report --format html` (one self-contained file) and
of every board of `kdbench site` (kdbench/reporting/site.py), built by the same code.

A page holds a table with one row per (dataset, pair, configuration), its cells the board's own display
strings and marks (bold = best, † = significant gain, as in the markdown and LaTeX boards), the 95 %
interval ("n < 3" below three seeds, clipped to [0, 100]: kdbench/reporting/site_rows.py), the Holm p and
the overhead; columns that sort (a first click puts the best first: highest accuracy, lowest cost); filters
for dataset, pair, method, the student wrappers a row applies (VAM) and a text search; and Vega-Lite charts
of top-1 against training and deploy cost, the Pareto front of each pair marked, drawn from the rows the
filters leave. Every page ends with its provenance (kdbench version, commit, date, command, environment).

Nothing is fetched when a page is viewed: the report inlines the vendored chart libraries
(kdbench/reporting/site_assets/), the site ships them in DIR/assets/, and a Content-Security-Policy forbids
any other source. Every string from a record (labels, hyper-parameter values, errors in notes) is escaped.
"""

from __future__ import annotations

import html
import json
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources

from kdbench.core.environment import git_commit
from kdbench.core.spec import wrapper_label
from kdbench.reporting.board import OVERHEAD_COLUMNS, Leaderboard
from kdbench.reporting.site_rows import (
    CHART_COSTS,
    EVALUATION_SHOWN,
    NO_WRAPPER,
    board_rows,
    filter_values,
    published_anchor,
)

# the vendored libraries, in load order (vega-interpreter adds vega.expressionInterpreter to vega)
LIBRARIES = ("vega.min.js", "vega-interpreter.min.js", "vega-lite.min.js")
PAGE_SCRIPT, PAGE_STYLE = "board.js", "board.css"
INLINE_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
LINKED_CSP = "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; img-src data:"
_FILTERS = (("dataset", "dataset"), ("pair", "pair"), ("method", "method"), ("wrappers", "wrappers"))
_INTERVAL_NOTE = (
    "95 % CI: the t-interval of the mean over seeds, clipped to [0, 100]; 'n < 3' where a cell has fewer "
    "than three seeds (its interval would say nothing). The charts show the measured rows the filters "
    "leave: top-1 against each cost, the dashed line joining each pair's Pareto front (no row of the pair "
    "both more accurate and cheaper)."
)


def asset_text(name: str) -> str:
    """A vendored asset's text (kdbench/reporting/site_assets/)."""
    return (resources.files("kdbench.reporting") / "site_assets" / name).read_text(encoding="utf-8")


def provenance(command: Sequence[str] | None = None) -> dict[str, str]:
    """What made a page: kdbench's version and commit, the date, the command, the environment."""
    import kdbench

    argv = list(sys.argv[1:] if command is None else command)
    return {
        "kdbench": kdbench.__version__,
        "commit": git_commit() or "unknown (not a git checkout)",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(["kdbench", *argv]),
        "environment": f"Python {platform.python_version()} on {platform.platform()}",
    }


def footer(made_by: dict[str, str]) -> str:
    items = "".join(
        f"<dt>{html.escape(key)}</dt><dd>{html.escape(value)}</dd>" for key, value in made_by.items()
    )
    return f'<footer class="provenance"><dl>{items}</dl></footer>'


def script_json(data: object) -> str:
    """JSON for a <script> element: no `<`, `>` or `&` that could end it early."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


BOARD_SCRIPTS = (*LIBRARIES, PAGE_SCRIPT)


def page(
    title: str, body: str, made_by: dict[str, str], assets: str | None, scripts: Sequence[str] = BOARD_SCRIPTS
) -> str:
    """A whole document: `assets` None inlines the style and `scripts` (vendored assets), else is the
    relative folder of DIR/assets they are loaded from."""
    escape = html.escape
    if assets is None:
        head = f"<style>{asset_text(PAGE_STYLE)}</style>"
        tail = "".join(f"<script>{asset_text(name)}</script>\n" for name in scripts)
    else:
        head = f'<link rel="stylesheet" href="{escape(assets + PAGE_STYLE)}">'
        tail = "".join(f'<script src="{escape(assets + name)}"></script>\n' for name in scripts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{INLINE_CSP if assets is None else LINKED_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
{head}
</head>
<body>
{body}
{footer(made_by)}
{tail}</body>
</html>
"""


def leaderboard_page(
    boards: Sequence[Leaderboard],
    significant_mark: str = "†",
    records: Sequence[dict] = (),
    made_by: dict[str, str] | None = None,
) -> str:
    """One self-contained HTML page with the boards of one or more datasets (each from
    `report.leaderboard`); significant gains carry `significant_mark` (the renderers' SIGNIFICANT_MARK);
    `records` give each row its run ids."""
    if not boards:
        raise ValueError("leaderboard_page needs at least one board")
    rows = page_rows(boards, records, significant_mark)
    title = f"kdbench leaderboard: {', '.join(board.dataset for board in boards)}"
    body = f"<h1>{html.escape(title)}</h1>\n" + board_section(boards, rows, cell_links=None)
    return page(title, body, made_by or provenance(), assets=None)


def _page_wrappers(boards: Sequence[Leaderboard]) -> list[str]:
    """Every wrapper the boards' records name: a row's `wrapper_deltas`, in this order."""
    return sorted({wrapper for board in boards for wrapper in board.wrappers})


def _has_delta(rows: list[dict], index: int) -> bool:
    return any(row["wrapper_deltas"][index][1] is not None for row in rows)


def page_rows(boards: Sequence[Leaderboard], records: Sequence[dict], significant_mark: str) -> list[dict]:
    wrappers = _page_wrappers(boards)
    return [row for board in boards for row in board_rows(board, records, significant_mark, wrappers)]


def board_section(boards: Sequence[Leaderboard], rows: list[dict], cell_links: str | None) -> str:
    """Captions, filters, table, notes and charts of `rows` (of `boards`); `cell_links` is the relative
    folder of the cell pages (a site), None where there are none (the report's single page)."""
    escape = html.escape
    several = len({row["dataset"] for row in rows}) > 1
    wrappers = _page_wrappers(boards)
    shown = [wrapper for index, wrapper in enumerate(wrappers) if _has_delta(rows, index)]
    evaluation = [
        shown for shown in EVALUATION_SHOWN if any(row["evaluation"][shown[0]] is not None for row in rows)
    ]
    columns = _columns(several, wrappers, shown, evaluation)
    captions = "".join(f'<p class="caption">{escape(board.caption)} Best in bold.</p>\n' for board in boards)
    notes = [
        escape(f"{board.dataset}: {note}" if several else note) for board in boards for note in board.notes
    ]
    notes.append(escape(_INTERVAL_NOTE))
    data = {
        "columns": [{"numeric": False, "first": "ascending"}]  # the method column, the rows' header cells
        + [{"numeric": numeric, "first": first} for _, _, numeric, first in columns],
        "rows": [_row_data(row, columns) for row in rows],
        "chart": chart_spec(),
    }
    filters = "".join(_select(key, label, rows) for key, label in _FILTERS if several or key != "dataset")
    return (
        f'{captions}<form id="filters">\n{filters}'
        '<label>text <input type="search" id="filter-text" placeholder="method, setting"></label>\n'
        f'<output id="shown">{len(rows)} of {len(rows)} rows</output>\n</form>\n'
        f'<div class="table-wrap">{_table(rows, columns, cell_links)}</div>\n'
        '<div id="chart" role="img" aria-label="top-1 against training and deploy cost"></div>\n'
        f'<ul class="notes">{"".join(f"<li>{note}</li>" for note in notes)}</ul>\n'
        f'<script type="application/json" id="kdbench-data">{script_json(data)}</script>\n'
    )


def _columns(
    several: bool, wrappers: Sequence[str], shown: Sequence[str], evaluation: Sequence[tuple]
) -> list[tuple]:
    """(header, cell of a row -> (text, sort value, css), numeric, first sort order) of each column; a Δ
    column for each wrapper of `shown` (those of `wrappers`, the rows' `wrapper_deltas`, that some row has)
    and one for each figure of `evaluation` (site_rows.EVALUATION_SHOWN)."""
    columns = [
        ("pair", lambda row: (row["pair"], row["pair"], "text"), False, "ascending"),
        ("top-1 (%)", _top1_cell, True, "descending"),
        ("95 % CI", lambda row: (row["ci_text"], row["ci_low"], ""), True, "descending"),
        ("Δ", lambda row: (row["delta_text"], row["delta"], "significant" if row["significant"] else ""))
        + (True, "descending"),
        ("p (Holm)", lambda row: (_p_text(row["p_value"]), row["p_value"], ""), True, "ascending"),
    ]
    if several:
        columns.insert(
            0, ("dataset", lambda row: (row["dataset"], row["dataset"], "text"), False, "ascending")
        )
    for index, wrapper in enumerate(wrappers):
        if wrapper not in shown:
            continue
        columns.append(
            (
                f"Δ{wrapper_label(wrapper)}",
                lambda row, i=index: (*row["wrapper_deltas"][i], ""),
                True,
                "descending",
            )
        )
    for key, title, first in evaluation:
        columns.append((title, lambda row, k=key: _evaluation_cell(row, k), True, first))
    for header, column, _ in OVERHEAD_COLUMNS:
        columns.append(
            (header, lambda row, c=column: (row["costs"][c][1], row["costs"][c][0], ""), True, "ascending")
        )
    return columns


def _evaluation_cell(row: dict, key: str) -> tuple[str, float | None, str]:
    value = row["evaluation"][key]
    return ("" if value is None else f"{value:.2f}"), value, ""


def _top1_cell(row: dict) -> tuple[str, float | None, str]:
    return row["top1_text"], row["mean"], "best" if row["best"] else ""


def _p_text(p_value: float | None) -> str:
    return "" if p_value is None else f"{p_value:.3g}"


def _chart_point(row: dict) -> dict | None:
    """What the chart reads of a measured row (None for the others: they are no point)."""
    if not row["measured"] or row["mean"] is None:
        return None
    keys = ("label", "method", "pair", "dataset", "mean", "ci_text", "time_ratio")
    costs = [key for field, _, pareto in CHART_COSTS for key in (field, pareto)]
    return {key: row[key] for key in (*keys, *costs)}


def _row_data(row: dict, columns: list[tuple]) -> dict:
    return {
        **{key: row[key] for key in ("dataset", "pair", "method", "wrappers")},
        "text": row["label"].lower(),
        "values": [row["label"], *(cell(row)[1] for _, cell, _, _ in columns)],
        "chart": _chart_point(row),
    }


def _table(rows: list[dict], columns: list[tuple], cell_links: str | None) -> str:
    """The table: a row's label is its header cell (with links to its cell page and the published row it
    is compared with); published rows have the class "published"."""
    escape = html.escape
    head = '<th class="text">method</th>' + "".join(
        f'<th class="text">{escape(h)}</th>' if not numeric else f"<th>{escape(h)}</th>"
        for h, _, numeric, _ in columns
    )
    lines = ['<table class="kdbench-leaderboard">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for row in rows:
        cells = []
        for _, cell, _, _ in columns:
            text, _, css = cell(row)
            fragment = escape(text).replace("→", "→<wbr>")  # a pair breaks after its arrow, if at all
            fragment = f"<b>{fragment}</b>" if css == "best" else fragment
            cells.append(f'<td class="{css}">{fragment}</td>' if css else f"<td>{fragment}</td>")
        css = ' class="published"' if row["published"] else ""
        label = escape(row["label"]) + _links(rows, row, cell_links)
        lines.append(f'<tr id="{escape(row["id"])}"{css}><th>{label}</th>{"".join(cells)}</tr>')
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _links(rows: list[dict], row: dict, cell_links: str | None) -> str:
    links = []
    if cell_links is not None and row["cell"]:
        links.append(f'<a href="{html.escape(cell_links + row["cell"])}.html">runs, curves</a>')
    anchor = published_anchor(rows, row)
    if anchor:
        links.append(f'<a href="#{html.escape(anchor)}">published</a>')
    return f' <span class="links">[{" · ".join(links)}]</span>' if links else ""


def _select(key: str, label: str, rows: list[dict]) -> str:
    escape = html.escape
    values = filter_values(rows, key)
    if key == "wrappers" and NO_WRAPPER in values:  # "none" last: the wrappers first
        values = [value for value in values if value != NO_WRAPPER] + [NO_WRAPPER]
    options = "".join(f'<option value="{escape(value)}">{escape(value)}</option>' for value in values)
    return (
        f'<label>{escape(label)} <select id="filter-{key}" data-field="{key}">'
        f'<option value="">all</option>{options}</select></label>\n'
    )


def chart_spec() -> dict:
    """The Vega-Lite charts: top-1 against each cost (CHART_COSTS) of the points in the data named "rows"
    (the page script inserts those of the rows the filters leave), each pair's Pareto front dashed."""
    y = {"field": "mean", "type": "quantitative", "title": "last-epoch top-1 (%)", "scale": {"zero": False}}
    tooltip = [
        {"field": "label", "title": "row"},
        {"field": "pair"},
        {"field": "mean", "title": "top-1 (%)", "format": ".2f"},
        {"field": "ci_text", "title": "95 % CI"},
        {"field": "train_gflops", "title": "train GFLOPs/img", "format": ".3g"},
        {"field": "deploy_gflops", "title": "deploy GFLOPs/img", "format": ".3g"},
        {"field": "time_ratio", "title": "time / student", "format": ".2f"},
    ]
    panels = []
    for field, title, pareto in CHART_COSTS:
        x = {
            "field": field,
            "type": "quantitative",
            "title": title,
            "scale": {"zero": False},
            "axis": {"format": ".3~g", "tickCount": 6},
        }
        panels.append(
            {
                "width": 400,
                "height": 280,
                "transform": [{"filter": f"isValid(datum.{field}) && isValid(datum.mean)"}],
                "layer": [
                    {
                        "transform": [{"filter": f"datum.{pareto}"}],
                        "mark": {"type": "line", "strokeDash": [5, 3], "color": "#666", "strokeWidth": 1},
                        "encoding": {"x": x, "y": y, "detail": {"field": "pair"}, "order": {"field": field}},
                    },
                    {
                        "mark": {"type": "point", "filled": True, "size": 60, "opacity": 0.85},
                        "encoding": {
                            "x": x,
                            "y": y,
                            "color": {"field": "method", "type": "nominal", "legend": {"columns": 2}},
                            "shape": {"field": "pair", "type": "nominal"},
                            "tooltip": tooltip,
                        },
                    },
                ],
            }
        )
    return {"data": {"name": "rows"}, "hconcat": panels, "config": {"legend": {"labelLimit": 140}}}
