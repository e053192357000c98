"""Tidy data out: one row per cell of the board with what identifies it (dataset, teacher, student, method,
wrappers, hyper-parameters), the mean of its runs' evaluation scalars, the caption and notes in JSON and in
the DataFrame's attrs, never as comment lines of the CSV."""

import io
import json
import math
import statistics

import pandas as pd
import pytest
from test_report import KD, PAIR, STUDENT, seeds

from kdbench import reporting


def _with(records, hp=None, evaluation=None):
    """The records with these hyper-parameters in their spec (a configuration of their own: a new run id is
    not needed, the board keys cells by configuration) and this evaluation part."""
    changed = []
    for index, record in enumerate(records):
        spec = {**record["spec"], "hp": hp} if hp is not None else record["spec"]
        scalars = evaluation[index] if evaluation else None
        changed.append({**record, "spec": spec, "evaluation": scalars})
    return changed


def _evaluation(ece, agreement=None, kl=None):
    return {"ece": ece, "agreement_top1": agreement, "teacher_kl": kl, "epoch": 3, "images": 100}


def _grid():
    """The student, and kd at two temperatures, three seeds each; kd's records carry an evaluation."""
    student = _with(seeds(STUDENT, method="student", teacher=None), hp={"temperature": 4.0})
    cold = _with(
        seeds(KD),
        hp={"temperature": 2.0, "kd_weight": 0.9},
        evaluation=[_evaluation(3.0, 80.0, 0.5), _evaluation(5.0, 84.0, 0.7), _evaluation(4.0, 82.0, 0.6)],
    )
    warm = _with(seeds([71.0, 71.4, 70.6]), hp={"temperature": 4.0, "kd_weight": 0.9})  # old records: none
    return student + cold + warm


def test_csv_rows_name_their_configuration_and_hold_no_comment_lines():
    board = reporting.leaderboard(_grid())
    text = reporting.render(board, "csv")
    assert not [line for line in text.splitlines() if line.startswith("#")]
    cells = pd.read_csv(io.StringIO(text)).set_index("row")
    assert list(cells.index) == [
        "student",
        "kd (temperature=2.0)",
        "kd (temperature=4.0)",
    ]  # one per configuration
    assert set(cells["dataset"]) == {"cifar100"} and set(cells["student"]) == {"resnet20"}
    assert set(cells["teacher"]) == {"resnet56"}  # the pair's: the student baseline is in the pair's column
    assert list(cells["method"]) == ["student", "kd", "kd"] and set(cells["epochs"]) == {3}
    assert cells["wrappers"].isna().all() and not cells["vam"].any()
    assert cells.loc["kd (temperature=2.0)", "hp.temperature"] == 2.0
    assert cells.loc["kd (temperature=4.0)", "hp.kd_weight"] == 0.9
    assert math.isnan(cells.loc["student", "hp.kd_weight"])
    assert cells.loc["kd (temperature=4.0)", "mean"] == pytest.approx(71.0)
    assert json.loads(cells.loc["kd (temperature=2.0)", "config"])["hp"] == {
        "temperature": 2.0,
        "kd_weight": 0.9,
    }


def test_the_evaluation_scalars_are_the_mean_of_the_cells_runs():
    cells = pd.read_csv(io.StringIO(reporting.render(reporting.leaderboard(_grid()), "csv"))).set_index("row")
    cold = cells.loc["kd (temperature=2.0)"]
    assert (cold["ece"], cold["agreement_top1"], cold["teacher_kl"]) == pytest.approx((4.0, 82.0, 0.6))
    assert (
        cells.loc[["student", "kd (temperature=4.0)"], ["ece", "agreement_top1", "teacher_kl"]]
        .isna()
        .all()
        .all()
    )


def test_json_holds_the_caption_notes_and_the_same_cells():
    board = reporting.leaderboard(_grid())
    document = json.loads(reporting.render(board, "json"))
    assert document["caption"] == board.caption and document["notes"] == board.notes
    csv_cells = pd.read_csv(io.StringIO(reporting.render(board, "csv")))
    assert [cell["row"] for cell in document["cells"]] == list(csv_cells["row"])
    assert list(document["cells"][0]) == list(csv_cells.columns)


def test_the_tidy_frame_is_the_boards_cells_with_caption_and_notes():
    board = reporting.leaderboard(_grid(), published=reporting.load_published())
    frame = reporting.tidy_frame(board)
    assert len(frame) == len(board.stats) and sorted(frame["row"]) == sorted(board.stats["row"])
    # the board's order, whatever the records' (sums in another order: equal to rounding)
    backwards = reporting.tidy_frame(reporting.leaderboard(_grid()[::-1], reporting.load_published()))
    pd.testing.assert_frame_equal(frame, backwards, check_exact=False)
    assert frame.attrs == {"caption": board.caption, "notes": board.notes}
    published = frame[frame["published"]]
    assert len(published) and set(published["pair"]) == {PAIR} and set(published["teacher"]) == {"resnet56"}
    assert frame.loc[frame["row"] == "student", "mean"].item() == pytest.approx(statistics.mean(STUDENT))
