"""Leaderboards, plots and the CI regression check, all computed from run records (`store.load_records`).

What a number means (DESIGN.md, "Protocol"): a leaderboard cell is the top-1 (%) of the *last* epoch on
the test split, mean ± sample std (ddof=1) over seeds, with n. Best-epoch accuracy is in every record but is
never shown next to it, and published numbers are separate rows marked "(published)", never averaged in.
Failed runs are never averaged either: they are listed in the notes with their error.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from tabulate import tabulate

from kdbench.store import atomic_write_bytes

FORMATS = ("terminal", "markdown", "csv", "latex", "html")
BASELINE_METHOD = "student"
METRIC_KEYS = ("last_top1", "last_top5", "best_top1", "best_top5", "best_epoch")
OVERHEAD_KEYS = (
    "extra_trainable_params",
    "train_flops_per_image",
    "teacher_flops_per_image",
    "epoch_seconds",
    "time_ratio_vs_student",
    "peak_memory_bytes",
    "deploy_params",
    "deploy_flops_per_image",
)
FRAME_COLUMNS = (
    ("run_id", "method", "label", "teacher", "student", "dataset", "seed", "vam", "epochs", "config")
    + ("status", "error")
    + METRIC_KEYS
    + ("wall_seconds", "throughput_img_s")
    + OVERHEAD_KEYS
)
STATS_COLUMNS = (
    "row",
    "method",
    "vam",
    "pair",
    "published",
    "mean",
    "std",
    "n",
    "configs",
    "delta",
    "vam_delta",
)
NUMERIC_COLUMNS = METRIC_KEYS + ("wall_seconds", "throughput_img_s") + OVERHEAD_KEYS


def _count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.2f}{suffix}"
    return f"{value:.0f}"


# (header, records_frame column, formatter): the overhead shown beside accuracy. Deploy params/FLOPs are
# measured on the exported student, so equal values with and without VAM show that its fold adds nothing.
OVERHEAD_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("extra params", "extra_trainable_params", _count),
    ("train GFLOPs/img", "train_flops_per_image", lambda v: f"{v / 1e9:.3g}"),
    ("time / student", "time_ratio_vs_student", lambda v: f"{v:.2f}"),
    ("peak MiB", "peak_memory_bytes", lambda v: f"{v / 2**20:.0f}"),
    ("deploy params", "deploy_params", _count),
    ("deploy GFLOPs/img", "deploy_flops_per_image", lambda v: f"{v / 1e9:.3g}"),
)


def row_label(method: str, vam: bool) -> str:
    return f"{method} +VAM" if vam else method


def pair_label(teacher: str | None, student: str) -> str:
    """A leaderboard column: "teacher→student", or the bare student where no teacher was run with it."""
    # pd.isna: records_frame holds a missing teacher as None or NaN depending on the column's dtype
    return student if pd.isna(teacher) else f"{teacher}→{student}"


def _config_key(spec: dict) -> str:
    # Seeds of one cell must share hp and recipe; this key lets the leaderboard say when they do not.
    return json.dumps({"hp": spec.get("hp"), "recipe": spec.get("recipe")}, sort_keys=True, default=str)


def records_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per record, flattened: the spec fields tables group by, status/error, metrics, overhead."""
    rows = []
    for record in records:
        spec = record["spec"]
        metrics = record.get("metrics") or {}
        overhead = record.get("overhead") or {}
        vam = bool(spec.get("vam"))
        rows.append(
            {
                "run_id": record.get("run_id"),
                "method": spec["method"],
                "label": row_label(spec["method"], vam),
                "teacher": spec.get("teacher"),
                "student": spec["student"],
                "dataset": spec["dataset"],
                "seed": spec["seed"],
                "vam": vam,
                "epochs": (spec.get("recipe") or {}).get("epochs"),
                "config": _config_key(spec),
                "status": record["status"],
                "error": record.get("error"),
                **{key: metrics.get(key) for key in METRIC_KEYS},
                "wall_seconds": record.get("wall_seconds"),
                "throughput_img_s": record.get("throughput_img_s"),
                **{key: overhead.get(key) for key in OVERHEAD_KEYS},
            }
        )
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    frame[list(NUMERIC_COLUMNS)] = frame[list(NUMERIC_COLUMNS)].apply(pd.to_numeric)
    return frame


def load_published(path: Path | None = None) -> dict:
    """The published reference numbers (registry/published.json unless `path`); sources must resolve."""
    source = Path(path) if path else resources.files("kdbench.registry") / "published.json"
    text = source.read_text()
    published = json.loads(text)
    for entry in published["entries"] + published.get("teachers", []):
        if entry["source"] not in published["sources"]:
            raise ValueError(f"published entry {entry} names an unknown source '{entry['source']}'")
    return published


@dataclass
class Leaderboard:
    """A rendered-format-independent leaderboard: display strings plus the numbers behind them."""

    table: pd.DataFrame  # display strings; index = row labels (measured first, then published); "" = no value
    caption: str
    notes: list[str]
    best: set[tuple[str, str]] = field(default_factory=set)  # (row, column): best measured mean of a pair
    published_rows: list[str] = field(default_factory=list)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (row, pair): mean, std, n, deltas
    # With several pairs, costs differ per pair: they go in a second table, one row per (method, pair).
    costs: Leaderboard | None = None


def _pick_dataset(frame: pd.DataFrame, dataset: str | None) -> str:
    datasets = sorted(frame["dataset"].unique())
    if not datasets:
        raise ValueError("no run records to report; run `kdbench run` first")
    if dataset is None:
        if len(datasets) > 1:
            raise ValueError(f"records span datasets {', '.join(datasets)}; choose one (dataset=...)")
        return datasets[0]
    if dataset not in datasets:
        raise ValueError(f"no run records for dataset '{dataset}'; records have {', '.join(datasets)}")
    return dataset


def _pairs(frame: pd.DataFrame) -> list[tuple[str | None, str]]:
    """Teacher/student pairs, plus bare students that no teacher was run with (a baseline-only column)."""
    taught = sorted(
        {(t, s) for t, s in zip(frame["teacher"], frame["student"], strict=True) if not pd.isna(t)}
    )
    students_with_teacher = {student for _, student in taught}
    alone = sorted(set(frame["student"][frame["teacher"].isna()]) - students_with_teacher)
    return taught + [(None, student) for student in alone]


def _pair_runs(frame: pd.DataFrame, teacher: str | None, student: str) -> pd.DataFrame:
    # The student baseline has no teacher, so it belongs to every pair with its student.
    in_pair = (
        frame["teacher"].isna()
        if teacher is None
        else frame["teacher"].isna() | (frame["teacher"] == teacher)
    )
    return frame[(frame["student"] == student) & in_pair]


def _measured_stats(done: pd.DataFrame, pairs: list[tuple[str | None, str]]) -> list[dict]:
    rows = []
    for teacher, student in pairs:
        runs = _pair_runs(done, teacher, student)
        cells = {
            (method, bool(vam)): group for (method, vam), group in runs.groupby(["method", "vam"], sort=False)
        }
        means = {key: group["last_top1"].mean() for key, group in cells.items()}
        for (method, vam), group in cells.items():
            mean = means[(method, vam)]
            baseline = means.get((BASELINE_METHOD, vam))
            vam_off = means.get((method, False))
            rows.append(
                {
                    "row": row_label(method, vam),
                    "method": method,
                    "vam": vam,
                    "pair": pair_label(teacher, student),
                    "published": False,
                    "mean": mean,
                    "std": group["last_top1"].std(ddof=1),
                    "n": len(group),
                    "configs": group["config"].nunique(),
                    "delta": mean - baseline
                    if baseline is not None and method != BASELINE_METHOD
                    else math.nan,
                    "vam_delta": mean - vam_off if vam and vam_off is not None else math.nan,
                }
            )
    return rows


def _published_stats(
    published: dict, dataset: str, pairs: list[tuple[str | None, str]], methods: set[str]
) -> tuple[list[dict], set[str]]:
    """Published rows for the measured pairs and methods (plus teacher and student), and the sources used."""
    teacher_top1 = {t["model"]: t for t in published.get("teachers", []) if t["dataset"] == dataset}
    rows, sources = [], set()

    def add(method: str, pair: str, top1: float, delta: float, source: str) -> None:
        rows.append(
            {
                "row": f"{method} (published)",
                "method": method,
                "vam": False,
                "pair": pair,
                "published": True,
                "mean": top1,
                "std": math.nan,
                "n": math.nan,
                "configs": 1,
                "delta": delta,
                "vam_delta": math.nan,
            }
        )
        sources.add(source)

    for teacher, student in pairs:
        if teacher is None:
            continue
        pair = pair_label(teacher, student)
        if teacher in teacher_top1:
            add("teacher", pair, teacher_top1[teacher]["top1"], math.nan, teacher_top1[teacher]["source"])
        entries = {
            e["method"]: e
            for e in published["entries"]
            if (e["dataset"], e["teacher"], e["student"]) == (dataset, teacher, student)
        }
        student_entry = entries.get(BASELINE_METHOD)
        for method, entry in entries.items():
            if method in methods or method == BASELINE_METHOD:
                # Δ of a published row is against the *published* student: the two kinds never mix.
                delta = (
                    entry["top1"] - student_entry["top1"]
                    if student_entry and method != BASELINE_METHOD
                    else math.nan
                )
                add(method, pair, entry["top1"], delta, entry["source"])
    return rows, sources


def _cell_text(mean: float, std: float, n: float, published: bool) -> str:
    if published:
        return f"{mean:.2f}"
    spread = f" ± {std:.2f}" if not math.isnan(std) else ""
    return f"{mean:.2f}{spread} (n={int(n)})"


def _row_order(stats: pd.DataFrame) -> list[str]:
    rows = stats.drop_duplicates("row").to_dict("records")
    # measured before published; teacher, then the student baseline, then methods by name; +VAM after off
    rows.sort(
        key=lambda r: (
            r["published"],
            r["method"] != "teacher",
            r["method"] != BASELINE_METHOD,
            r["method"],
            r["vam"],
        )
    )
    return [r["row"] for r in rows]


def _seed_count_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high} (n per cell)"


def leaderboard(
    records: Iterable[dict], published: dict | None = None, dataset: str | None = None
) -> Leaderboard:
    """Rows = methods (±VAM), columns = teacher→student pairs (+ Δ, ΔVAM) and overhead, for one dataset."""
    frame = records_frame(records)
    dataset = _pick_dataset(frame, dataset)
    frame = frame[frame["dataset"] == dataset]
    done = frame[frame["status"] == "done"]
    failed = frame[frame["status"] != "done"]
    pairs = _pairs(frame)

    rows = _measured_stats(done, pairs)
    sources: set[str] = set()
    if published:
        published_rows, sources = _published_stats(published, dataset, pairs, set(done["method"]))
        rows += published_rows
    # explicit dtypes: an empty object column would make `stats[~stats["published"]]` select columns
    stats = pd.DataFrame(rows, columns=list(STATS_COLUMNS)).astype({"vam": bool, "published": bool})
    labels = _row_order(stats)
    published_labels = [label for label in labels if label.endswith("(published)")]

    columns = []
    for teacher, student in pairs:
        pair = pair_label(teacher, student)
        in_pair = stats[stats["pair"] == pair]
        columns.append(pair)
        if in_pair["delta"].notna().any():
            columns.append(f"{pair} Δ")
        if in_pair["vam_delta"].notna().any():
            columns.append(f"{pair} ΔVAM")
    several_pairs = len(pairs) > 1
    if not done.empty and not several_pairs:
        columns += [header for header, _, _ in OVERHEAD_COLUMNS]
    table = pd.DataFrame("", index=pd.Index(labels, name="method"), columns=columns)

    for cell in stats.itertuples():
        table.loc[cell.row, cell.pair] = _cell_text(cell.mean, cell.std, cell.n, cell.published)
        if not math.isnan(cell.delta):
            table.loc[cell.row, f"{cell.pair} Δ"] = f"{cell.delta:+.2f}"
        if not math.isnan(cell.vam_delta):
            table.loc[cell.row, f"{cell.pair} ΔVAM"] = f"{cell.vam_delta:+.2f}"
    costs = None
    if several_pairs and not done.empty:
        costs = Leaderboard(
            _cost_table(done, ["label", "pair"]),
            f"{dataset}: costs per pair, mean over the runs of each (method, pair).",
            [],
        )
    elif not done.empty:
        cost = _cost_table(done, ["label"])
        table.loc[cost.index, cost.columns] = cost

    measured = stats[~stats["published"]]
    best = set()
    for pair, group in measured.groupby("pair"):
        top = group["mean"].max()
        best |= {(row, pair) for row in group["row"][group["mean"] >= top - 1e-9]}

    seeds = _seed_count_text(measured["n"]) if not measured.empty else "0"
    caption = (
        f"{dataset}: top-1 (%) of the last epoch on the test split, mean ± std over {seeds} seeds; "
        "best-epoch accuracy recorded, not shown. Δ: vs the student baseline of the same pair and VAM "
        "setting; ΔVAM: VAM on − off; best measured mean per pair marked. Overhead: mean over the row's "
        "runs; deploy params/FLOPs are those of the exported student (after VAM's fold)."
    )
    if published_labels:
        caption += " '(published)': reference numbers from the literature, never averaged with measured runs."

    notes = []
    for run in failed.itertuples():
        notes.append(
            f"failed, not averaged: {run.label} on {pair_label(run.teacher, run.student)} seed {run.seed} "
            f"({run.run_id}): {run.error}"
        )
    for cell in measured.itertuples():
        if cell.configs > 1:
            notes.append(f"{cell.row} on {cell.pair} averages runs of {cell.configs} different hp/recipes")
    for pair in measured["pair"].unique():
        in_pair = measured[measured["pair"] == pair]
        for vam in sorted(set(in_pair["vam"])):
            setting = in_pair[in_pair["vam"] == vam]
            if BASELINE_METHOD not in set(setting["method"]):
                notes.append(f"{pair}: no {row_label(BASELINE_METHOD, vam)} baseline, so no Δ for it")
    if not measured.empty and measured["n"].min() < 3:
        notes.append("cells with fewer than 3 seeds are not committable results (protocol: N ≥ 3)")
    for source in sorted(sources):
        notes.append(f"published source '{source}': {published['sources'][source]['url']}")

    return Leaderboard(table, caption, notes, best, published_labels, stats, costs)


def _cost_table(done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Overhead display strings, mean over the runs of each group of `keys`."""
    done = done.assign(pair=[pair_label(t, s) for t, s in zip(done["teacher"], done["student"], strict=True)])
    rows = {}
    for key, group in done.groupby(keys):
        label = " on ".join(key)
        rows[label] = {
            header: "" if math.isnan(value := group[column].mean()) else fmt(value)
            for header, column, fmt in OVERHEAD_COLUMNS
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def _marked(board: Leaderboard, mark: Callable[[str], str]) -> pd.DataFrame:
    table = board.table.copy()
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


def _render_csv(board: Leaderboard) -> str:
    # Caption and notes as leading '#' lines: pandas.read_csv(comment="#") reads the table back.
    header = "".join(f"# {line}\n" for line in [f"{board.caption} (* = best)", *board.notes])
    return header + _marked(board, lambda text: f"{text} *").to_csv(lineterminator="\n")


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
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in str(text))


def _render_latex(board: Leaderboard) -> str:
    table = board.table
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
    table = board.table
    escape = html.escape

    def row_html(label: str) -> str:
        css = ' class="published"' if label in board.published_rows else ""
        cells = [f"<th>{escape(label)}</th>"]
        for column in table.columns:
            text = escape(table.loc[label, column])
            cells.append(f"<td><b>{text}</b></td>" if (label, column) in board.best else f"<td>{text}</td>")
        return f"<tr{css}>{''.join(cells)}</tr>"

    header = "".join(f"<th>{escape(h)}</th>" for h in [table.index.name, *table.columns])
    lines = [
        '<table class="kdbench-leaderboard">',
        f"<caption>{escape(board.caption)} Best in bold.</caption>",
        f"<thead><tr>{header}</tr></thead>",
        "<tbody>",
        *(row_html(label) for label in table.index),
        "</tbody>",
        "</table>",
    ]
    if board.notes:
        lines += ['<ul class="notes">', *(f"<li>{escape(note)}</li>" for note in board.notes), "</ul>"]
    return "\n".join(lines) + "\n"


_RENDERERS: dict[str, Callable[[Leaderboard], str]] = {
    "terminal": _render_terminal,
    "markdown": _render_markdown,
    "csv": _render_csv,
    "latex": _render_latex,
    "html": _render_html,
}


def render(board: Leaderboard, fmt: str) -> str:
    """The leaderboard as text in one of FORMATS, caption and notes included."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown report format '{fmt}'. Valid: {', '.join(FORMATS)}")
    text = _RENDERERS[fmt](board)
    if board.costs is not None:
        text += "\n" + _RENDERERS[fmt](board.costs)
    return text


def _done_frame(records: Iterable[dict]) -> pd.DataFrame:
    frame = records_frame(records)
    done = frame[frame["status"] == "done"]
    if done.empty:
        raise ValueError("no finished runs to plot")
    return done


def plot_accuracy_vs_overhead(records: Iterable[dict], path: Path) -> Path:
    """Last-epoch top-1 (mean ± std over seeds) against train GFLOPs/image and epoch time; one point per
    (dataset, pair, method ±VAM); triangles are VAM runs."""
    done = _done_frame(records)
    several_datasets = done["dataset"].nunique() > 1
    several_pairs = done[["dataset", "teacher", "student"]].astype(str).drop_duplicates().shape[0] > 1
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    points = done.assign(
        pair=[pair_label(t, s) for t, s in zip(done["teacher"], done["student"], strict=True)],
        train_gflops=done["train_flops_per_image"] / 1e9,
    ).groupby(["dataset", "pair", "label", "vam"])
    for axis, x_column, x_title in (
        (axes[0], "train_gflops", "train GFLOPs / image"),
        (axes[1], "epoch_seconds", "seconds / epoch"),
    ):
        for (dataset, pair, label, vam), group in points:
            x, y, spread = group[x_column].mean(), group["last_top1"].mean(), group["last_top1"].std(ddof=1)
            axis.errorbar(x, y, yerr=0 if math.isnan(spread) else spread, fmt="^" if vam else "o", capsize=3)
            where = f"{dataset}: {pair}" if several_datasets else pair
            axis.annotate(
                f"{label} ({where})" if several_pairs else label,
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        axis.set_xlabel(x_title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("last-epoch top-1 (%)")
    figure.suptitle("accuracy vs overhead (mean ± std over seeds; ▲ = VAM)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_learning_curves(records: Iterable[dict], path: Path) -> Path:
    """Test top-1 per epoch, mean over seeds; one panel per (dataset, pair), its student baseline included."""
    records = list(records)
    done = _done_frame(records)
    curves_by_run = {
        record.get("run_id"): pd.DataFrame(record["history"]).set_index("epoch")["test_top1"]
        for record in records
        if record.get("history")
    }
    panels = [
        (dataset, teacher, student)
        for dataset in sorted(done["dataset"].unique())
        for teacher, student in _pairs(done[done["dataset"] == dataset])
    ]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (dataset, teacher, student) in zip(axes, panels, strict=False):
        runs = _pair_runs(done[done["dataset"] == dataset], teacher, student)
        for label, group in runs.groupby("label"):
            curves = [curves_by_run[run_id] for run_id in group["run_id"] if run_id in curves_by_run]
            if not curves:
                continue
            mean_curve = pd.concat(curves, axis=1).mean(axis=1)
            axis.plot(
                mean_curve.index,
                mean_curve.values,
                label=f"{label} (n={len(curves)})",
                linestyle="--" if label.endswith("+VAM") else "-",
            )
        axis.set_title(f"{dataset}: {pair_label(teacher, student)}")
        axis.set_xlabel("epoch")
        axis.set_ylabel("test top-1 (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def vam_entropy_table(records: Iterable[dict]) -> pd.DataFrame:
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


def _baseline_key_mask(frame: pd.DataFrame, entry: dict) -> pd.Series:
    teacher = frame["teacher"].isna() if entry["teacher"] is None else frame["teacher"] == entry["teacher"]
    return (
        (frame["method"] == entry["method"])
        & teacher
        & (frame["student"] == entry["student"])
        & (frame["dataset"] == entry["dataset"])
        & (frame["vam"] == bool(entry["vam"]))
    )


def _baseline_entry_label(entry: dict) -> str:
    pair = pair_label(entry["teacher"], entry["student"])
    return f"{row_label(entry['method'], entry['vam'])} on {entry['dataset']} {pair}"


def check_regression(
    records: Iterable[dict], baseline: dict, tolerance_pts: float | None = None
) -> list[str]:
    """One message per regression: a measured last-top-1 mean below the baseline mean − tolerance, or a
    baseline entry with no finished run. `tolerance_pts` defaults to the baseline file's own."""
    tolerance = baseline["tolerance_pts"] if tolerance_pts is None else tolerance_pts
    frame = records_frame(records)
    messages = []
    for entry in baseline["entries"]:
        runs = frame[_baseline_key_mask(frame, entry)]
        done = runs[runs["status"] == "done"]
        label = _baseline_entry_label(entry)
        expected = entry["last_top1_mean"]
        if done.empty:
            failed = runs[runs["status"] != "done"]
            why = f"; {len(failed)} failed, e.g. {failed['error'].iloc[0]}" if not failed.empty else ""
            messages.append(f"{label}: no finished run (baseline {expected:.2f}){why}")
            continue
        mean = done["last_top1"].mean()
        if mean < expected - tolerance:
            messages.append(
                f"{label}: top-1 {mean:.2f} (n={len(done)}) is {expected - mean:.2f} pts below the baseline "
                f"{expected:.2f} (tolerance {tolerance:.2f})"
            )
    return messages


def write_baseline(records: Iterable[dict], path: Path, tolerance_pts: float) -> dict:
    """Write the regression baseline (the mean of every finished cell) that `check_regression` reads."""
    frame = records_frame(records)
    done = frame[frame["status"] == "done"]
    entries = []
    for (method, teacher, student, dataset, vam), group in done.groupby(
        ["method", "teacher", "student", "dataset", "vam"], dropna=False
    ):
        entries.append(
            {
                "method": method,
                "teacher": None if pd.isna(teacher) else teacher,
                "student": student,
                "dataset": dataset,
                "vam": bool(vam),
                "last_top1_mean": round(float(group["last_top1"].mean()), 4),
                "n_seeds": len(group),
            }
        )
    baseline = {"tolerance_pts": tolerance_pts, "entries": entries}
    atomic_write_bytes(Path(path), (json.dumps(baseline, indent=1) + "\n").encode())
    return baseline
