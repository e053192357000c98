"""A student wrapper's findings across runs: the `summary` each record holds under the wrapper's name
({finding: number}, kdbench/wrappers/base.py), mean over seeds. For VAM (`kdbench report --vam-entropy`),
each wrapped layer's attention row entropy: does distillation make the attention more specialised?"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from kdbench.core.store import RunRecord
from kdbench.reporting.frame import BASELINE_METHOD


def wrapper_summary_table(records: Iterable[RunRecord], wrapper: str) -> pd.DataFrame:
    """Each finding of `wrapper`'s summary, mean over seeds, for each (dataset, pair, method) that applies it,
    and the mean of the findings; the student baseline's row (no KD) sits beside the KD methods' rows of the
    same student."""
    rows = []
    for record in records:
        spec = record["spec"]
        if record["status"] != "done" or not spec.get(wrapper) or not record.get(wrapper):
            continue
        rows.append(
            {
                "dataset": spec["dataset"],
                "student": spec["student"],
                "teacher": spec.get("teacher") or "—",
                "method": spec["method"],
                **record[wrapper],
            }
        )
    keys = ["dataset", "student", "teacher", "method"]
    if not rows:
        return pd.DataFrame(columns=[*keys, "n", "mean"])
    frame = pd.DataFrame(rows)
    findings = [column for column in frame.columns if column not in keys]
    grouped = frame.groupby(keys, sort=False)
    table = grouped[findings].mean()
    table.insert(0, "n", grouped.size())
    table["mean"] = table[findings].mean(axis=1)
    table = table.reset_index()
    order = table["method"].ne(BASELINE_METHOD)
    return (
        table.assign(_order=order)
        .sort_values(["dataset", "student", "_order", "teacher", "method"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )
