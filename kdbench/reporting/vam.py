"""VAM's attention row entropies per layer: does distillation make the attention more specialised?"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from kdbench.core.store import RunRecord
from kdbench.reporting.frame import BASELINE_METHOD


def vam_entropy_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    """Mean attention row entropy (nats) per VAM layer, mean over seeds, for each (dataset, pair, method) with
    VAM on; the student baseline's row (no KD) sits beside the KD methods' rows of the same student."""
    rows = []
    for record in records:
        spec = record["spec"]
        if record["status"] != "done" or not spec.get("vam") or not record.get("vam"):
            continue
        rows.append(
            {
                "dataset": spec["dataset"],
                "student": spec["student"],
                "teacher": spec.get("teacher") or "—",
                "method": spec["method"],
                **record["vam"],
            }
        )
    keys = ["dataset", "student", "teacher", "method"]
    if not rows:
        return pd.DataFrame(columns=[*keys, "n", "mean"])
    frame = pd.DataFrame(rows)
    layers = [column for column in frame.columns if column not in keys]
    grouped = frame.groupby(keys, sort=False)
    table = grouped[layers].mean()
    table.insert(0, "n", grouped.size())
    table["mean"] = table[layers].mean(axis=1)
    table = table.reset_index()
    order = table["method"].ne(BASELINE_METHOD)
    return (
        table.assign(_order=order)
        .sort_values(["dataset", "student", "_order", "teacher", "method"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )
