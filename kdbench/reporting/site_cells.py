"""A cell's page of the site (kdbench/reporting/site.py): one measured configuration on one pair, with its
figures as the board shows them, the published row it is compared with (and that row's source), its runs
(each linking to its record, copied into the site), their learning curves as a Vega-Lite chart (top-1 at
the evaluated epochs, the training loss of every epoch) and each run's own environment. Every string from
a record is escaped."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from kdbench.core.store import RunRecord
from kdbench.reporting.board import OVERHEAD_COLUMNS
from kdbench.reporting.html import LIBRARIES, page, script_json

CURVES_SCRIPT = "curves.js"


def cell_page(
    row: dict,
    records: dict[str, RunRecord],
    compared: dict | None,
    made_by: dict[str, str],
    board_link: str,
) -> str:
    """The page of `row` (a measured row of site_rows.board_rows); `records` by run id; `compared` the
    published row it is compared with ({"top1", "delta", "source", "url"}) or None."""
    escape = html.escape
    runs = sorted(
        (records[run_id] for run_id in row["runs"] if run_id in records),
        key=lambda r: str(r["spec"].get("seed")),
    )
    title = f"{row['label']} on {row['pair']} ({row['dataset']})"
    figures = [
        ("top-1 (%)", row["top1_text"]),
        ("95 % CI", row["ci_text"]),
        ("Δ vs the student", row["delta_text"]),
        *((header, row["costs"][column][1]) for header, column, _ in OVERHEAD_COLUMNS),
    ]
    body = [
        f'<nav class="crumbs"><a href="{escape(board_link)}">← the board of {escape(row["dataset"])}</a></nav>',
        f"<h1>{escape(title)}</h1>",
        _plain_table(("figure", "value"), figures),
        "<h2>Published row it is compared with</h2>",
        _published(compared),
        "<h2>Learning curves</h2>",
        '<div id="curves" role="img" aria-label="learning curves of the runs"></div>',
        f'<script type="application/json" data-chart="curves">{script_json(curves_spec(runs))}</script>',
        "<h2>Evaluation of the deployed student (last epoch, test split)</h2>",
        *evaluation_part(runs),
        "<h2>Runs</h2>",
        _plain_table(
            ("seed", "run", "last top-1", "best top-1 (epoch)", "epochs", "trained with"), _runs(runs)
        ),
        *(_record_block(record) for record in runs),
    ]
    return page(title, "\n".join(body), made_by, assets="../../assets/", scripts=(*LIBRARIES, CURVES_SCRIPT))


def _published(compared: dict | None) -> str:
    if compared is None:
        return "<p>No published number for this method and pair (registry/published.json).</p>"
    escape = html.escape
    delta = "" if compared["delta"] is None else f", Δ {compared['delta']:+.2f} vs the published student"
    return (
        f"<p>{compared['top1']:.2f} % top-1{delta}; source '{escape(compared['source'])}': "
        f"{escape(compared['url'])} (a number from the literature, never averaged with the runs here).</p>"
    )


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    escape = html.escape
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{cell if isinstance(cell, _Markup) else escape(str(cell))}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    return f'<table class="plain"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Markup(str):
    """A table cell that is already HTML (built here from escaped parts)."""


def _runs(runs: list[RunRecord]) -> list[list[str]]:
    escape = html.escape
    rows = []
    for record in runs:
        metrics = record.get("metrics") or {}
        environment = record.get("environment") or {}
        run_id = record["run_id"]
        link = _Markup(
            f'<a href="../../records/{escape(run_id)}.json">{escape(run_id)}</a> '
            f'(<a href="#record-{escape(run_id)}">shown below</a>)'
        )
        trained = ", ".join(
            f"{key} {environment[key]}"
            for key in ("kdbench", "git_commit", "device", "torch")
            if environment.get(key)
        )
        rows.append(
            [
                str(record["spec"].get("seed")),
                link,
                f"{metrics.get('last_top1', float('nan')):.2f}",
                f"{metrics.get('best_top1', float('nan')):.2f} ({metrics.get('best_epoch')})",
                str(len(record.get("history") or [])),
                trained,
            ]
        )
    return rows


def _record_block(record: RunRecord) -> str:
    """The record itself, as JSON text (escaped), folded."""
    run_id = html.escape(record["run_id"])
    text = html.escape(json.dumps(record, indent=1, sort_keys=True))
    return (
        f'<details id="record-{run_id}"><summary>record {run_id}</summary>'
        f'<pre class="record">{text}</pre></details>'
    )


def curves_spec(runs: list[RunRecord]) -> dict:
    """The learning curves' Vega-Lite spec, its points inline (one per run and epoch)."""
    points = [
        {
            "seed": f"seed {record['spec'].get('seed')}",
            "epoch": entry.get("epoch"),
            "train_loss": entry.get("train_loss"),
            "test_top1": entry.get("test_top1"),
        }
        for record in runs
        for entry in record.get("history") or []
    ]
    epoch = {
        "field": "epoch",
        "type": "quantitative",
        "title": "epoch",
        "axis": {"tickMinStep": 1, "format": "d"},
    }

    def panel(field: str, title: str) -> dict:
        return {
            "width": 420,
            "height": 240,
            "transform": [{"filter": f"isValid(datum.{field})"}],
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": epoch,
                "y": {"field": field, "type": "quantitative", "title": title, "scale": {"zero": False}},
                "color": {"field": "seed", "type": "nominal"},
                "tooltip": [{"field": "seed"}, {"field": "epoch"}, {"field": field}],
            },
        }

    return {
        "data": {"values": points},
        "hconcat": [
            panel("test_top1", "test top-1 (%) at evaluated epochs"),
            panel("train_loss", "train loss"),
        ],
    }


MAX_CONFUSION_CLASSES = 100  # a bigger confusion matrix is in the record, not drawn


def _figure(value: object, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt)


def evaluation_part(runs: list[RunRecord]) -> list[str]:
    """Each run's calibration and agreement with its teacher (the record's `evaluation`), and a chart of
    the per-class top-1 (each run) and the confusion matrix (summed over the runs)."""
    evaluated = [(record, record["evaluation"]) for record in runs if record.get("evaluation")]
    if not evaluated:
        return ["<p>None in these records (written before kdbench recorded it).</p>"]
    headers = ("seed", "ECE (%)", "top-1 agreement with the teacher (%)", "KL(teacher ‖ student), nats")
    table = _plain_table(
        (*headers, "test images", "epoch"),
        [
            [
                str(record["spec"].get("seed")),
                _figure(evaluation.get("ece")),
                _figure(evaluation.get("agreement_top1")),
                _figure(evaluation.get("teacher_kl"), ".4f"),
                str(evaluation.get("images")),
                str(evaluation.get("epoch")),
            ]
            for record, evaluation in evaluated
        ],
    )
    per_class = [
        {"seed": f"seed {record['spec'].get('seed')}", "class": index, "top1": value}
        for record, evaluation in evaluated
        for index, value in enumerate(evaluation.get("per_class_top1") or [])
        if value is not None
    ]
    panels = [
        {
            "width": 420,
            "height": 220,
            "data": {"values": per_class},
            "mark": {"type": "point", "filled": True},
            "encoding": {
                "x": {"field": "class", "type": "ordinal", "title": "class index"},
                "y": {"field": "top1", "type": "quantitative", "title": "per-class top-1 (%)"},
                "color": {"field": "seed", "type": "nominal"},
                "tooltip": [{"field": "seed"}, {"field": "class"}, {"field": "top1", "format": ".2f"}],
            },
        }
    ]
    confusion = _confusion(evaluation for _, evaluation in evaluated)
    if confusion:
        panels.append(
            {
                "width": 300,
                "height": 300,
                "data": {"values": confusion},
                "mark": "rect",
                "encoding": {
                    "x": {"field": "predicted", "type": "ordinal"},
                    "y": {"field": "true", "type": "ordinal"},
                    "color": {"field": "count", "type": "quantitative", "scale": {"type": "symlog"}},
                    "tooltip": [{"field": "true"}, {"field": "predicted"}, {"field": "count"}],
                },
            }
        )
    spec = {"hconcat": panels}
    return [
        table,
        '<div id="evaluation" role="img" aria-label="per-class top-1 and confusion matrix"></div>',
        f'<script type="application/json" data-chart="evaluation">{script_json(spec)}</script>',
    ]


def _confusion(evaluations) -> list[dict]:
    """The confusion matrices of the runs summed, as points; none where a run lacks one, their sizes
    differ or there are more than MAX_CONFUSION_CLASSES classes."""
    matrices = [evaluation.get("confusion") for evaluation in evaluations]
    if not matrices or any(m is None for m in matrices) or len({len(m) for m in matrices}) != 1:
        return []
    size = len(matrices[0])
    if size > MAX_CONFUSION_CLASSES:
        return []
    return [
        {"true": i, "predicted": j, "count": sum(m[i][j] for m in matrices)}
        for i in range(size)
        for j in range(size)
    ]
