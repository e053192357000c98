"""The tables of results/vam-study.md, from the store the study's sweep files trained:

    kdbench run --config results/vam-study/main-48.yaml --out STORE                # the converged schedule
    kdbench run --config results/vam-study/convergence-72.yaml --out STORE         # its check
    kdbench run --config results/vam-study/main-72.yaml --out STORE                # student, kd on 72
    kdbench run --config results/vam-study/ablation-last_stages-48.yaml --out STORE
    kdbench run --config results/vam-study/main.yaml --out STORE                   # 24 epochs (and 12:
    kdbench run --config results/vam-study/convergence.yaml --out STORE            #  --epochs 12)
    kdbench run --config results/vam-study/ablation-groups.yaml --out STORE        # and the other two
    python results/vam-study/tables.py STORE > tables.md

Welch's t-tests (scipy), 95 % t-intervals of each mean; p-values Holm-corrected within each table.
"""

from __future__ import annotations

import math
import statistics
import sys

from scipy import stats

import kdbench
from kdbench.reporting import holm

DEFAULT_VAM = {"groups": 4, "last_stages": 1, "entropy_weight": 0.01}


def _accuracies(records, method: str, vam: dict | None, epochs: int = 12) -> list[float]:
    """Last-epoch top-1 of the runs of one configuration, in seed order (None: VAM off)."""
    runs = [
        r
        for r in records
        if r["spec"]["method"] == method
        and r["status"] == "done"
        and r["spec"]["recipe"]["epochs"] == epochs
        and (
            r["spec"]["vam"] is None
            if vam is None
            else r["spec"]["vam"] and all(r["spec"]["vam"][k] == v for k, v in vam.items())
        )
    ]
    return [r["metrics"]["last_top1"] for r in sorted(runs, key=lambda r: r["spec"]["seed"])]


def _cell(values: list[float]) -> str:
    mean, std = statistics.mean(values), statistics.stdev(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=std / math.sqrt(len(values)))
    return f"{mean:.2f} ± {std:.2f} [{low:.2f}, {high:.2f}] (n={len(values)})"


def _welch(a: list[float], b: list[float]) -> float:
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def main_table(records, epochs: int) -> str:
    rows, p_raw = [], []
    for method in ("student", "kd", "fitnet", "crd"):
        off, on = (
            _accuracies(records, method, None, epochs),
            _accuracies(records, method, DEFAULT_VAM, epochs),
        )
        if off and on:  # main-72.yaml trains student and kd only
            p_raw.append(_welch(on, off))
            rows.append((method, off, on))
    lines = [
        "| method | VAM off | VAM on | ΔVAM | p (Welch) | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for (method, off, on), raw, adjusted in zip(rows, p_raw, holm(p_raw), strict=True):
        delta = statistics.mean(on) - statistics.mean(off)
        lines.append(f"| {method} | {_cell(off)} | {_cell(on)} | {delta:+.2f} | {raw:.3f} | {adjusted:.3f} |")
    return "\n".join(lines)


def gain_table(records, epochs: int) -> str:
    """Each distillation method against the student, VAM off and on (the teacher is the same)."""
    lines = ["| method | VAM | top-1 | Δ vs student | p (Holm) |", "|---|---|---|---|---|"]
    for vam, label in ((None, "off"), (DEFAULT_VAM, "on")):
        student = _accuracies(records, "student", vam, epochs)
        measured = [(m, _accuracies(records, m, vam, epochs)) for m in ("kd", "fitnet", "crd")]
        adjusted = holm([_welch(values, student) for _, values in measured])
        for (method, values), p_value in zip(measured, adjusted, strict=True):
            delta = statistics.mean(values) - statistics.mean(student)
            lines.append(f"| {method} | {label} | {_cell(values)} | {delta:+.2f} | {p_value:.3f} |")
    return "\n".join(lines)


def ablation_table(records, epochs: int) -> str:
    """kd + VAM with one setting varied from the default, on `epochs`: Holm within each column."""
    kd_off = _accuracies(records, "kd", None, epochs)
    default = _accuracies(records, "kd", DEFAULT_VAM, epochs)
    variants = [("default: G 4, last stage, γ 0.01", DEFAULT_VAM)]
    variants += [(f"G {g}", {**DEFAULT_VAM, "groups": g}) for g in (2, 8)]
    variants += [("every stage (3)", {**DEFAULT_VAM, "last_stages": 3})]
    variants += [(f"γ {gamma}", {**DEFAULT_VAM, "entropy_weight": gamma}) for gamma in (0.0, 0.1)]
    measured = [(label, _accuracies(records, "kd", vam, epochs)) for label, vam in variants]
    measured = [(label, values) for label, values in measured if values]
    p_off = [_welch(values, kd_off) for _, values in measured]
    p_default = [_welch(values, default) if i else math.nan for i, (_, values) in enumerate(measured)]
    lines = [
        f"kd with VAM off: {_cell(kd_off)}",
        "",
        "| kd + VAM | top-1 | Δ vs VAM off | p (Holm) | Δ vs default VAM | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    rows = zip(measured, holm(p_off), holm(p_default), strict=True)
    for (label, values), p_vs_off, p_vs_default in rows:
        versus_default = (
            f"{statistics.mean(values) - statistics.mean(default):+.2f} | {p_vs_default:.3f}"
            if not math.isnan(p_vs_default)
            else "| "
        )
        lines.append(
            f"| {label} | {_cell(values)} | {statistics.mean(values) - statistics.mean(kd_off):+.2f} | "
            f"{p_vs_off:.3f} | {versus_default} |"
        )
    return "\n".join(lines)


def convergence_table(records) -> str:
    """Mean test top-1 of the student (VAM off) over seeds every 6 epochs, on 12, 24, 36, 48 and 72
    epochs, and each schedule's last epoch against the next longer one's."""
    lengths = (12, 24, 36, 48, 72)
    epochs = tuple(range(6, 73, 6))
    lines = ["| student | " + " | ".join(f"ep {e}" for e in epochs) + " |", "|---" * (len(epochs) + 1) + "|"]
    for length in lengths:
        runs = [
            r
            for r in records
            if r["spec"]["method"] == "student"
            and r["spec"]["vam"] is None
            and r["spec"]["recipe"]["epochs"] == length
        ]
        if not runs:
            continue
        means = [
            statistics.mean(h["test_top1"] for r in runs for h in r["history"] if h["epoch"] == epoch)
            if epoch <= length
            else None
            for epoch in epochs
        ]
        cells = " | ".join("" if m is None else f"{m:.2f}" for m in means)
        lines.append(f"| {length} epochs (n={len(runs)}) | {cells} |")
    lines.append("")
    for short_length, long_length in zip(lengths, lengths[1:], strict=False):
        short = _accuracies(records, "student", None, short_length)
        long = _accuracies(records, "student", None, long_length)
        if len(short) > 1 and len(long) > 1:
            lines.append(
                f"- {long_length} epochs {_cell(long)} vs {short_length} epochs {_cell(short)}: "
                f"{statistics.mean(long) - statistics.mean(short):+.2f}, Welch p {_welch(long, short):.3f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    store = sys.argv[1]
    records = kdbench.load_records(store)
    print("## Main (48 epochs)\n\n" + main_table(records, 48) + "\n")
    print("## Student and kd on 72 epochs\n\n" + main_table(records, 72) + "\n")
    print("## Distillation vs the student (48 epochs)\n\n" + gain_table(records, 48) + "\n")
    print("## Ablation on the 48-epoch schedule\n\n" + ablation_table(records, 48) + "\n")
    print("## Ablation (12 epochs)\n\n" + ablation_table(records, 12) + "\n")
    print("## Main on the 24-epoch schedule (12-epoch teacher)\n\n" + main_table(records, 24) + "\n")
    print("## Main on the 12-epoch schedule (12-epoch teacher)\n\n" + main_table(records, 12) + "\n")
    print("## Convergence\n\n" + convergence_table(records))
