"""`kdbench site STORE [STORE ...] --out DIR`: a static leaderboard site of one or more results stores.

DIR/index.html lists every dataset the stores' records cover and each dataset's pairs; DIR/<dataset>/
index.html is the board of the dataset (all its pairs) and DIR/<dataset>/pair-<pair>.html the board of one
pair, both the board page of kdbench/reporting/html.py (sortable, filtered table; Vega-Lite charts that
follow the filters); DIR/<dataset>/cells/<cell>.html is a measured cell's page (site_cells.py: its runs,
learning curves, the published row it is compared with); DIR/records/<run_id>.json the records it shows,
as read and checked by the store (`store.load_records`: no link is followed out of a store). DIR/assets/
holds the vendored chart libraries (with their licenses) and the pages' own script and style: nothing is
fetched when the site is viewed, and a Content-Security-Policy forbids it. Every page carries its
provenance (html.provenance). Directory names are slugs of the dataset and pair plus a digest, so no name
from a record becomes a path of its own choosing.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from kdbench.core import store
from kdbench.core.errors import ConfigError
from kdbench.core.store import RunRecord
from kdbench.reporting.board import Leaderboard, leaderboard
from kdbench.reporting.frame import load_published
from kdbench.reporting.html import board_section, page, page_rows, provenance
from kdbench.reporting.renderers import SIGNIFICANT_MARK
from kdbench.reporting.site_cells import cell_page

MARKER = ".kdbench-site"  # in every DIR the command wrote: only such a folder (or an empty one) is rewritten
ASSET_FILES = (
    "vega.min.js",
    "vega-interpreter.min.js",
    "vega-lite.min.js",
    "board.js",
    "curves.js",
    "board.css",
    "LICENSE.vega",
    "LICENSE.vega-interpreter",
    "LICENSE.vega-lite",
    "README.md",
)


def slug(name: str) -> str:
    """A file name for a dataset or pair: its letters and digits, then six hex digits of its digest."""
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    return f"{readable or 'x'}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def read_stores(stores: Sequence[Path]) -> list[RunRecord]:
    """The distillation records of every store, each run once (the first store holding a run id wins)."""
    records: dict[str, RunRecord] = {}
    for folder in stores:
        if store.runs_dir(folder).is_symlink():  # its records would be read from outside the store
            raise ConfigError(f"STORE {folder}: runs/ is a symbolic link; give the folder it points to")
        if not store.runs_dir(folder).is_dir():
            raise ConfigError(
                f"STORE {folder}: no runs/ folder there; is it a results store (kdbench run --out)?"
            )
        for record in store.load_records(folder):
            records.setdefault(record["run_id"], record)
    if not records:
        raise ConfigError(f"no run records in {', '.join(map(str, stores))}; run `kdbench run` first")
    return list(records.values())


def _prepare(out: Path) -> None:
    """DIR empty or new, or a site written before (its marker; emptied): anything else is refused, not
    overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"--out {out}: a folder with files that kdbench site did not write; choose another")
    if (out / MARKER).is_file():  # the site written before: its pages of datasets no longer there go too
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by kdbench site; rewritten by the next run of it\n", encoding="utf-8")
    assets = out / "assets"
    assets.mkdir(exist_ok=True)
    source = resources.files("kdbench.reporting") / "site_assets"
    for name in ASSET_FILES:
        (assets / name).write_bytes((source / name).read_bytes())


def write_site(
    stores: Sequence[Path], out: Path, published: bool = True, command: Sequence[str] = ()
) -> Path:
    """Write the site of `stores` into `out`; its index page's path. `command` is how it was asked for."""
    records = read_stores(stores)
    _prepare(out)
    made_by = provenance(command) | {"stores": ", ".join(map(str, stores))}
    reference = load_published() if published else None
    datasets = sorted({record["spec"]["dataset"] for record in records})
    # each board from its dataset's records alone: the site has a board for every other dataset
    boards = [
        leaderboard([r for r in records if r["spec"]["dataset"] == dataset], reference, dataset=dataset)
        for dataset in datasets
    ]
    by_id = {record["run_id"]: record for record in records}
    (out / "records").mkdir()
    for run_id, record in by_id.items():  # read_record checked that a run id is 12 hex digits: a safe name
        (out / "records" / f"{run_id}.json").write_text(
            json.dumps(record, indent=1, sort_keys=True), encoding="utf-8"
        )
    summaries = [_write_board(out, board, records, by_id, reference, made_by) for board in boards]
    index = out / "index.html"
    index.write_text(_index(summaries, len(records), made_by), encoding="utf-8")
    return index


def _write_board(
    out: Path,
    board: Leaderboard,
    records: list[RunRecord],
    by_id: dict[str, RunRecord],
    reference: dict | None,
    made_by: dict[str, str],
) -> dict:
    """A dataset's board, its pair boards and its cell pages; what the index says of them."""
    folder = out / slug(board.dataset)
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    rows = page_rows([board], records, SIGNIFICANT_MARK)
    title = f"kdbench leaderboard: {board.dataset}"
    pairs = sorted({row["pair"] for row in rows})
    links = "".join(
        f'<li><a href="pair-{html.escape(slug(pair))}.html">{html.escape(pair)}</a></li>' for pair in pairs
    )
    nav = '<nav class="crumbs"><a href="../index.html">← all datasets</a></nav>\n'
    body = f"{nav}<h1>{html.escape(title)}</h1>\n<p>Boards of one pair:</p><ul>{links}</ul>\n"
    (folder / "index.html").write_text(
        page(title, body + board_section([board], rows, "cells/"), made_by, "../assets/"), encoding="utf-8"
    )
    for pair in pairs:
        pair_rows = [row for row in rows if row["pair"] == pair]
        pair_title = f"kdbench leaderboard: {board.dataset}, {pair}"
        pair_nav = f'<nav class="crumbs"><a href="index.html">← all pairs of {html.escape(board.dataset)}</a></nav>\n'
        pair_body = f"{pair_nav}<h1>{html.escape(pair_title)}</h1>\n" + board_section(
            [board], pair_rows, "cells/"
        )
        (folder / f"pair-{slug(pair)}.html").write_text(
            page(pair_title, pair_body, made_by, "../assets/"), encoding="utf-8"
        )
    for row in rows:
        if row["cell"]:
            compared = _compared(row, rows, by_id, reference)
            (folder / "cells" / f"{row['cell']}.html").write_text(
                cell_page(row, by_id, compared, made_by, "../index.html"), encoding="utf-8"
            )
    measured = [row for row in rows if row["measured"]]
    return {
        "dataset": board.dataset,
        "folder": folder.name,
        "pairs": pairs,
        "rows": len(measured),
        "runs": sum(len(row["runs"]) for row in measured),
    }


def _compared(
    row: dict, rows: list[dict], by_id: dict[str, RunRecord], reference: dict | None
) -> dict | None:
    """The published row `row` is compared with, and its source, where there is one."""
    other = next(
        (
            o
            for o in rows
            if o["published"] and o["pair"] == row["pair"] and o["label"] == row["published_row"]
        ),
        None,
    )
    if other is None or reference is None or not row["runs"]:
        return None
    spec = by_id[row["runs"][0]]["spec"]
    key = (spec["dataset"], spec.get("teacher"), spec["student"], row["method"])
    entry = next(
        (e for e in reference["entries"] if (e["dataset"], e["teacher"], e["student"], e["method"]) == key),
        None,
    )
    if entry is None:
        return None
    return {
        "top1": other["mean"],
        "delta": other["delta"],
        "source": entry["source"],
        "url": reference["sources"][entry["source"]]["url"],
    }


def _index(summaries: list[dict], records: int, made_by: dict[str, str]) -> str:
    escape = html.escape
    items = []
    for summary in summaries:
        pairs = ", ".join(
            f'<a href="{escape(summary["folder"])}/pair-{escape(slug(pair))}.html">{escape(pair)}</a>'
            for pair in summary["pairs"]
        )
        items.append(
            f'<tr><td><a href="{escape(summary["folder"])}/index.html">{escape(summary["dataset"])}</a></td>'
            f"<td>{pairs}</td><td>{summary['rows']}</td><td>{summary['runs']}</td></tr>"
        )
    body = (
        "<h1>kdbench leaderboards</h1>\n"
        f"<p>{records} run records. One board per dataset (all its pairs) and per pair; each row links to "
        "its runs, their records and learning curves, and the published row it is compared with.</p>\n"
        '<table class="plain"><thead><tr><th>dataset</th><th>pairs</th><th>configurations</th>'
        f"<th>runs</th></tr></thead><tbody>{''.join(items)}</tbody></table>"
    )
    return page("kdbench leaderboards", body, made_by, "assets/", scripts=())
