import csv
import io
import json
import re
import statistics

import pandas as pd
import pytest

from kdbench import reporting
from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe, RunSpec
from kdbench.wrappers.vam import VAMConfig

PAIR = "resnet56→resnet20"


def make_record(
    method="kd",
    teacher="resnet56",
    student="resnet20",
    dataset="cifar100",
    seed=0,
    vam=False,
    last_top1=70.0,
    status="done",
    error=None,
    epochs=3,
    extra_params=0,
    vam_entropy=None,
):
    """A schema-1 run record as the engine writes it (store.py docstring), with a made-up learning curve."""
    done = status == "done"
    spec = RunSpec(
        method=method,
        teacher=teacher,
        student=student,
        dataset=dataset,
        seed=seed,
        wrappers={"vam": VAMConfig()} if vam else {},
        recipe=Recipe(epochs=epochs),
    ).to_dict()
    history = [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "loss_terms": {},
            "test_top1": last_top1 - (epochs - epoch),
            "test_top5": 90.0,
            "epoch_seconds": 2.0,
            "lr": 0.05,
        }
        for epoch in range(1, epochs + 1)
    ]
    metrics = {
        "last_top1": last_top1,
        "last_top5": 90.0,
        "best_top1": last_top1 + 0.5,
        "best_top5": 91.0,
        "best_epoch": epochs - 1,
    }
    return {
        "schema": 1,
        "run_id": RunSpec.from_dict(spec).run_id,
        "kind": "distill",
        "spec": spec,
        "status": status,
        "error": error,
        "history": history if done else history[:1],
        "metrics": metrics if done else None,
        "wall_seconds": 6.0,
        "throughput_img_s": 1000.0,
        "overhead": {
            "extra_trainable_params": extra_params,
            "train_flops_per_image": 3e8,
            "teacher_flops_per_image": 1.2e8,
            "epoch_seconds": 2.0,
            "time_ratio_vs_student": 1.5,
            "peak_memory_bytes": 300 * 2**20,
            "peak_memory_method": "cuda",
            "deploy_params": 278_000,
            "deploy_flops_per_image": 4.1e7,
        },
        "vam": vam_entropy if vam else None,
        "environment": {},
        "created": "2024-01-01T00:00:00",
    }


def seeds(values, **fields):
    return [make_record(seed=seed, last_top1=value, **fields) for seed, value in enumerate(values)]


STUDENT = [69.0, 69.4, 68.8]
KD = [70.5, 70.9, 70.1]
STUDENT_VAM = [69.2, 69.6, 69.0]
KD_VAM = [71.0, 71.6, 71.2]


@pytest.fixture
def records():
    return (
        seeds(STUDENT, method="student", teacher=None)
        + seeds(KD)
        + seeds(
            STUDENT_VAM,
            method="student",
            teacher=None,
            vam=True,
            extra_params=96,
            vam_entropy={"layer3.2.conv1": 1.2, "layer3.2.conv2": 1.0},
        )
        + seeds(KD_VAM, vam=True, extra_params=96, vam_entropy={"layer3.2.conv1": 0.8, "layer3.2.conv2": 0.6})
        + [make_record(method="crd", seed=0, status="failed", error="non-finite loss at epoch 2 step 5")]
    )


def test_records_frame_flattens_one_row_per_record(records):
    frame = reporting.records_frame(records)
    assert len(frame) == len(records)
    assert {"method", "label", "teacher", "wrappers", "status", "last_top1", "deploy_params"} <= set(
        frame.columns
    )
    assert set(frame["label"]) == {"student", "kd", "student +VAM", "kd +VAM", "crd"}
    assert set(zip(frame["label"], frame["wrappers"], strict=True)) == {
        ("student", ""),
        ("kd", ""),
        ("student +VAM", "vam"),
        ("kd +VAM", "vam"),
        ("crd", ""),
    }
    assert frame.loc[frame["status"] == "failed", "last_top1"].isna().all()
    student_teacher = frame.loc[frame["method"] == "student", "teacher"].iloc[0]
    assert (
        reporting.pair_label(student_teacher, "resnet20") == "resnet20"
    )  # a missing teacher, whatever its dtype


def test_cells_are_mean_std_n_with_delta_vs_same_vam_baseline(records):
    board = reporting.leaderboard(records)
    stats = board.stats.set_index("row")
    assert stats.loc["kd", "mean"] == pytest.approx(statistics.mean(KD))
    assert stats.loc["kd", "std"] == pytest.approx(statistics.stdev(KD))
    assert stats.loc["kd", "n"] == 3
    assert stats.loc["kd", "delta"] == pytest.approx(statistics.mean(KD) - statistics.mean(STUDENT))
    assert stats.loc["kd +VAM", "delta"] == pytest.approx(
        statistics.mean(KD_VAM) - statistics.mean(STUDENT_VAM)
    )
    assert stats.loc["kd +VAM", "vam_delta"] == pytest.approx(statistics.mean(KD_VAM) - statistics.mean(KD))
    cell = f"{statistics.mean(KD):.2f} ± {statistics.stdev(KD):.2f} (n=3)"
    assert board.table.loc["kd", PAIR] == cell
    assert board.table.loc["kd", f"{PAIR} Δ"] == f"{statistics.mean(KD) - statistics.mean(STUDENT):+.2f}"
    assert board.table.loc["kd", f"{PAIR} ΔVAM"] == ""
    assert (
        board.table.loc["kd +VAM", f"{PAIR} ΔVAM"] == f"{statistics.mean(KD_VAM) - statistics.mean(KD):+.2f}"
    )
    assert board.table.loc["student", f"{PAIR} Δ"] == ""


def test_student_baseline_belongs_to_every_pair_with_its_student():
    records = seeds(STUDENT, method="student", teacher=None) + seeds(KD) + seeds(KD, teacher="resnet110")
    board = reporting.leaderboard(records)
    assert {PAIR, "resnet110→resnet20"} <= set(board.table.columns)
    assert board.table.loc["student", "resnet110→resnet20"].startswith(f"{statistics.mean(STUDENT):.2f}")


def test_rows_order_and_overhead_columns(records):
    board = reporting.leaderboard(records)
    assert list(board.table.index) == ["student", "student +VAM", "kd", "kd +VAM"]
    assert board.table.loc["kd +VAM", "extra params"] == "96"
    assert board.table.loc["kd", "time / student"] == "1.50"
    assert board.table.loc["kd", "peak MiB"] == "300"
    assert board.table.loc["kd", "train GFLOPs/img"] == "0.3"
    # the fold: VAM and plain students deploy the same network
    assert board.table.loc["kd +VAM", "deploy params"] == board.table.loc["kd", "deploy params"] == "278.00K"


def test_best_measured_cell_is_marked_in_every_format(records):
    board = reporting.leaderboard(records)
    assert board.best == {("kd +VAM", PAIR)}
    best = board.table.loc["kd +VAM", PAIR]
    assert f"**{best}**" in reporting.render(board, "markdown")
    assert f"<b>{best}</b>" in reporting.render(board, "html")
    # LaTeX: the seed count goes to the caption when every cell has the same
    assert rf"\textbf{{{reporting.latex_escape(best.replace(' (n=3)', ''))}}}" in reporting.render(
        board, "latex"
    )
    assert f"{best} *" in reporting.render(board, "terminal")
    # csv is tidy now (one row per cell, numbers): "best" is a column, not a mark
    cells = pd.read_csv(io.StringIO(reporting.render(board, "csv")), comment="#")
    assert set(cells.loc[cells["best"], "row"]) == {"kd +VAM"}


def test_failed_runs_are_not_averaged_but_noted(records):
    board = reporting.leaderboard(records)
    assert "crd" not in board.table.index
    (failed,) = [note for note in board.notes if note.startswith("failed")]
    assert "crd" in failed and "non-finite loss at epoch 2 step 5" in failed
    # a failed run still makes its pair a column, so an all-failed pair is visible
    only_failed = reporting.leaderboard([make_record(status="failed", error="boom")])
    assert PAIR in only_failed.table.columns and "boom" in only_failed.notes[0]


def test_caption_states_the_protocol(records):
    caption = reporting.leaderboard(records).caption
    assert "top-1 (%) of the last epoch on the test split, mean ± std over 3 seeds" in caption
    assert "best-epoch accuracy recorded, not shown" in caption


def test_published_rows_are_marked_separate_and_never_best():
    published = {
        "sources": {"paper": {"url": "https://example.org/paper"}},
        "teachers": [{"dataset": "cifar100", "model": "resnet56", "top1": 72.34, "source": "paper"}],
        "entries": [
            {
                "dataset": "cifar100",
                "teacher": "resnet56",
                "student": "resnet20",
                "method": m,
                "top1": v,
                "source": "paper",
            }
            for m, v in (("student", 69.06), ("kd", 80.0), ("crd", 71.16))
        ],
    }
    board = reporting.leaderboard(
        seeds(STUDENT, method="student", teacher=None) + seeds(KD), published=published
    )
    assert list(board.table.index) == [
        "student",
        "kd",
        "teacher (published)",
        "student (published)",
        "kd (published)",
    ]
    assert board.published_rows == ["teacher (published)", "student (published)", "kd (published)"]
    assert board.table.loc["kd (published)", PAIR] == "80.00"
    assert board.table.loc["kd (published)", f"{PAIR} Δ"] == "+10.94"  # vs the published student only
    assert board.table.loc["kd", f"{PAIR} Δ"] == f"{statistics.mean(KD) - statistics.mean(STUDENT):+.2f}"
    assert board.best == {("kd", PAIR)}  # 80.00 published is higher, yet never "best measured"
    assert board.table.loc["kd (published)", "extra params"] == ""
    assert any("https://example.org/paper" in note for note in board.notes)
    latex = reporting.render(board, "latex")
    assert latex.index(r"\midrule", latex.index("kd & ")) < latex.index("kd (published)")
    assert re.search(r'<tr[^>]* class="published"><th>kd \(published\)</th>', reporting.render(board, "html"))


@pytest.mark.parametrize("fmt", reporting.FORMATS)
def test_every_format_renders_the_numbers_caption_and_notes(records, fmt):
    board = reporting.leaderboard(records)
    text = reporting.render(board, fmt)
    vam_delta = statistics.mean(KD_VAM) - statistics.mean(KD)
    if fmt in ("csv", "json"):  # tidy formats hold the numbers themselves, in plain units
        cells = (
            pd.read_csv(io.StringIO(text)) if fmt == "csv" else pd.DataFrame(json.loads(text)["cells"])
        ).set_index("row")
        assert cells.loc["kd", "mean"] == pytest.approx(statistics.mean(KD))
        assert cells.loc["kd", "std"] == pytest.approx(statistics.stdev(KD))
        assert cells.loc["kd +VAM", "vam_delta"] == pytest.approx(vam_delta)
        assert cells.loc["kd", "deploy_params"] == 278_000
    else:
        for number in (
            f"{statistics.mean(KD):.2f}",
            f"{statistics.stdev(KD):.2f}",
            f"{vam_delta:+.2f}",
            "278K" if fmt == "latex" else "278.00K",  # a paper's column: three significant digits
        ):
            assert number in text
    if fmt == "csv":  # the cells alone: the caption and notes are the json's
        text = reporting.render(board, "json")
    assert "non-finite loss" in text
    assert "last epoch" in text


def test_latex_escapes_and_csv_reads_back(records):
    board = reporting.leaderboard(records)
    latex = reporting.render(board, "latex")
    assert (
        r"Top-1 accuracy (\%)" in latex
        and r"$\pm$" in latex
        and r"\toprule" in latex
        and r"\bottomrule" in latex
    )
    assert "resnet56$\\to$resnet20" in latex
    cells = pd.read_csv(io.StringIO(reporting.render(board, "csv")))
    assert sorted(cells["row"]) == sorted(
        board.stats["row"]
    )  # tidy: one line per cell, not the display table
    with pytest.raises(ValueError, match="Valid: terminal"):
        reporting.render(board, "pdf")


# A method (a plugin may register any name) and hyper-parameter values as a hostile user would write them.
HOSTILE_METHOD = "=cmd|' /C calc'!A0 <script>&_"
HOSTILE_HP = "-2+3|@x\nnew line <script>alert(1)</script> & a_b"


def hostile_records():
    """The student, and two configurations of HOSTILE_METHOD (labelled by their hp value), the one with a
    hostile value far below the student: a negative Δ."""
    hostile = [
        dict(record, spec={**record["spec"], "hp": {"note": note}})
        for note, values in ((HOSTILE_HP, [60.0, 60.4, 60.1]), ("plain", [70.5, 70.9, 70.1]))
        for record in seeds(values, method=HOSTILE_METHOD)
    ]
    failed = make_record(
        method="@crd", status="failed", error='x,=HYPERLINK("http://e")\n\\input{/etc/passwd}'
    )
    return seeds(STUDENT, method="student", teacher=None) + hostile + [failed]


def test_csv_writes_no_formula_and_keeps_numbers_numbers():
    """OWASP CSV injection: a text cell starting with = + - @ tab or CR (a method, a hyper-parameter's value,
    the row label and configuration holding them) gets a leading "'"; a negative Δ is a number and stays one.
    No comment lines: the first line is the header."""
    text = reporting.render(reporting.leaderboard(hostile_records()), "csv")
    fields = [field for row in csv.reader(io.StringIO(text)) for field in row]
    cells = pd.read_csv(io.StringIO(text))
    formulas = [f for f in fields if f.startswith(("=", "+", "@", "\t", "\r")) or re.match(r"-(?![\d.])", f)]
    assert not formulas
    assert text.startswith("dataset,teacher,student,method,")
    assert f"'{HOSTILE_METHOD}" in set(cells["method"]) and f"'{HOSTILE_HP}" in set(cells["hp.note"])
    assert cells["delta"].dtype == float and cells["delta"].min() < -8


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


def test_markdown_keeps_a_pipe_or_line_break_inside_its_cell():
    text = reporting.render(reporting.leaderboard(hostile_records()), "markdown")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({_unescaped_pipes(line) for line in table}) == 1  # every row has the header's columns
    assert len(table) == 2 + 3  # header, rule, student and the method's two configurations
    assert r"=cmd\|' /C calc'!A0" in text and "new line" in text
    assert not any(line.startswith("new line") for line in text.splitlines())


def test_latex_and_html_escape_a_hostile_name_and_value():
    board = reporting.leaderboard(hostile_records())
    latex = reporting.render(board, "latex")
    assert r"=cmd\textbar{}' /C calc'!A0 \textless{}script\textgreater{}\&\_" in latex
    body = [line for line in latex.splitlines() if not line.startswith("%")]
    assert any(r"\textless{}script\textgreater{}alert(1)" in line and r"\& a\_b" in line for line in body)
    assert not any("<script>" in line for line in body)
    assert not any(line.startswith("\\input") for line in latex.splitlines())  # a note stays a comment
    page = reporting.render(board, "html")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; a_b" in page
    assert "=cmd|&#x27; /C calc&#x27;!A0 &lt;script&gt;&amp;_" in page


def test_a_board_is_of_one_dataset_by_default_the_one_with_most_runs(records):
    other = seeds(KD, dataset="fashion-mnist")
    board = reporting.leaderboard(records + other)
    assert board.dataset == "cifar100" and "kd +VAM" in board.table.index
    assert any("also hold fashion-mnist" in note for note in board.notes)
    assert list(reporting.leaderboard(records + other, dataset="fashion-mnist").table.index) == ["kd"]
    assert (
        reporting.leaderboard(seeds(KD, dataset="b") + seeds(KD, dataset="a")).dataset == "a"
    )  # a tie: by name
    with pytest.raises(ValueError, match="records have cifar100, fashion-mnist"):
        reporting.leaderboard(records + other, dataset="mnist")


def test_mixed_recipes_and_few_seeds_are_noted():
    board = reporting.leaderboard([make_record(seed=0), make_record(seed=1, epochs=5)])
    # two recipes are two configurations: a row each, never averaged (they used to share one noted cell)
    assert list(board.table.index) == ["kd (epochs=3)", "kd (epochs=5)"]
    assert any("kd: 2 configurations" in note and "recipe.epochs" in note for note in board.notes)
    assert any("fewer than 3 seeds" in note for note in board.notes)
    assert any("no student baseline" in note for note in board.notes)


def test_plots_write_png_files(records, tmp_path):
    for plot, name in (
        (reporting.plot_accuracy_vs_overhead, "acc.png"),
        (reporting.plot_learning_curves, "lc.png"),
    ):
        path = plot(records, tmp_path / "plots" / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vam_entropy_table_compares_kd_with_no_kd(records):
    table = reporting.wrapper_summary_table(records, "vam")
    assert list(table["method"]) == ["student", "kd"]
    kd = table.set_index("method").loc["kd"]
    assert kd["n"] == 3 and kd["layer3.2.conv1"] == pytest.approx(0.8) and kd["mean"] == pytest.approx(0.7)
    assert reporting.wrapper_summary_table(seeds(KD), "vam").empty


def test_regression_gate_flags_significant_drops_only(records, tmp_path):
    """The gate of issue 10: per cell (one configuration), a one-sided Welch test at alpha 0.01."""
    baseline = reporting.write_baseline(records, tmp_path / "baseline.json")
    assert reporting.read_baseline(tmp_path / "baseline.json") == baseline
    assert len(baseline["cells"]) == 4  # the failed crd run makes no cell
    assert reporting.check_regression(records, baseline) == []

    kd_cell = next(c for c in baseline["cells"] if c["config"]["method"] == "kd" and not c["config"]["vam"])
    assert kd_cell["config"]["teacher"] == "resnet56" and kd_cell["mean"] == pytest.approx(
        statistics.mean(KD)
    )
    assert kd_cell["n"] == 3 and kd_cell["std"] == pytest.approx(statistics.stdev(KD), abs=1e-4)
    others = [r for r in records if r["spec"]["method"] != "kd" or r["spec"]["vam"]]
    within = others + seeds([v - 0.4 for v in KD])  # a shift inside the seeds' noise (std 0.4)
    assert reporting.check_regression(within, baseline) == []
    dropped = others + seeds([v - 2.0 for v in KD])
    (message,) = reporting.check_regression(dropped, baseline)
    assert message.startswith("kd on cifar100 resnet56→resnet20") and "significantly lower" in message
    assert reporting.check_regression(dropped, baseline, alpha=1e-6) == []


def test_regression_gate_uses_the_floor_where_seeds_are_too_few(records, tmp_path):
    baseline = reporting.write_baseline(records, tmp_path / "baseline.json", floor_pts=0.5)
    others = [r for r in records if r["spec"]["method"] != "kd" or r["spec"]["vam"]]
    one_seed = others + seeds([statistics.mean(KD) - 0.6])
    (message,) = reporting.check_regression(one_seed, baseline)
    assert "0.60 pts below, more than the floor 0.5" in message
    assert reporting.check_regression(one_seed, baseline, floor_pts=1.0) == []


def test_regression_gate_flags_cells_whose_runs_failed(records, tmp_path):
    baseline = reporting.write_baseline(records, tmp_path / "baseline.json")
    others = [r for r in records if r["spec"]["method"] != "kd" or r["spec"]["vam"]]
    failed = others + [make_record(method="kd", status="failed", error="non-finite loss at epoch 1 step 3")]
    (message,) = reporting.check_regression(failed, baseline)
    assert "kd on cifar100" in message and "no finished run" in message and "non-finite loss" in message


def test_a_cell_is_one_configuration(records, tmp_path):
    """Another teacher (its SHA-256) or another hyper-parameter is another cell, never averaged in."""
    from kdbench.core.errors import ConfigError

    other_teacher = [dict(r, spec={**r["spec"], "teacher_sha256": "3f2a1c"}) for r in seeds(KD)]
    baseline = reporting.write_baseline(records + other_teacher, tmp_path / "baseline.json")
    assert len(baseline["cells"]) == 5
    with pytest.raises(ConfigError, match="has no run of its configuration in the store"):
        reporting.check_regression(records, baseline)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("[]", "is not a kdbench-baseline/2 file"), ("{}", "is not a kdbench-baseline/2 file"),
     ('{"format": "kdbench-baseline/2", "cells": []}', "has no cells"),
     ('{"format": "kdbench-baseline/2", "cells": [{"label": "x"}]}', "cell 0 lacks config, mean, std, n"),
     ("{not json", "is not readable JSON")],
)  # fmt: skip
def test_a_malformed_baseline_is_refused_naming_the_file(tmp_path, content, fragment):
    from kdbench.core.errors import ConfigError

    path = tmp_path / "baseline.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        reporting.read_baseline(path)


def test_a_baseline_that_would_be_empty_or_thin_is_not_written(records, tmp_path):
    from kdbench.core.errors import ConfigError

    with pytest.raises(ConfigError, match="would be empty"):
        reporting.write_baseline([], tmp_path / "empty.json")
    with pytest.raises(ConfigError, match="needs >= 3 seeds per cell: kd on cifar100"):
        reporting.write_baseline(seeds(KD[:2]), tmp_path / "thin.json")
    assert not list(tmp_path.iterdir())


# RepDistiller's model zoo names (kdbench keeps them); a cited method is a registered one or a composition.
# fmt: off
KNOWN_MODELS = {
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "ResNet18", "ResNet34", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8",
    "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "mobile_half", "ShuffleV1", "ShuffleV2",
}
# fmt: on


def test_published_registry_is_valid():
    import kdbench.methods  # noqa: F401  (registers every method)

    published = reporting.load_published()
    assert all(source["url"].startswith("https://") for source in published["sources"].values())
    keys = set()
    for entry in published["entries"]:
        assert entry["dataset"] == "cifar100"
        assert entry["teacher"] in KNOWN_MODELS and entry["student"] in KNOWN_MODELS, entry
        assert all(name in METHODS.module_dict for name in entry["method"].split("+")), entry
        assert 0 < entry["top1"] < 100
        key = (entry["dataset"], entry["teacher"], entry["student"], entry["method"])
        assert key not in keys, f"duplicate published entry {key}"
        keys.add(key)
    pairs = {(teacher, student) for _, teacher, student, _ in keys}
    assert len(pairs) == 13
    for teacher, student in pairs:
        assert ("cifar100", teacher, student, "student") in keys and (
            "cifar100",
            teacher,
            student,
            "kd",
        ) in keys
    assert {t["model"] for t in published["teachers"]} == {teacher for teacher, _ in pairs}
    spot_checks = {
        ("resnet32x4", "resnet8x4", "crd"): 75.51,
        ("vgg13", "mobile_half", "kd"): 67.37,
        ("wrn_40_2", "ShuffleV1", "dkd"): 76.70,
        ("resnet56", "resnet20", "ctkd"): 71.19,
        ("resnet32x4", "resnet8x4", "simkd"): 78.08,
        ("resnet32x4", "ShuffleV2", "sdd"): 78.05,
        ("resnet56", "resnet20", "ttm"): 71.83,
        ("resnet32x4", "resnet8x4", "wkd"): 76.53,
        ("vgg13", "vgg8", "itrd"): 74.93,
        ("resnet32x4", "resnet8x4", "kdpp"): 75.54,
    }
    for (teacher, student, method), top1 in spot_checks.items():
        assert published["entries"][_index(published, teacher, student, method)]["top1"] == top1


def _index(published, teacher, student, method):
    return next(
        i
        for i, e in enumerate(published["entries"])
        if (e["teacher"], e["student"], e["method"]) == (teacher, student, method)
    )


def test_published_numbers_show_on_a_matching_leaderboard():
    records = seeds(STUDENT, method="student", teacher=None, student="resnet8x4") + seeds(
        KD, teacher="resnet32x4", student="resnet8x4"
    )
    board = reporting.leaderboard(records, published=reporting.load_published())
    pair = "resnet32x4→resnet8x4"
    assert board.table.loc["teacher (published)", pair] == "79.42"
    assert board.table.loc["student (published)", pair] == "72.50"
    assert board.table.loc["kd (published)", pair] == "73.33"
    assert "crd (published)" not in board.table.index  # only methods that were measured


def test_holm_adjusts_like_the_textbook():
    from kdbench.reporting.check import holm

    # Holm (1979): sorted p 0.01, 0.02, 0.03, 0.04 x (4, 3, 2, 1), kept monotone
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
