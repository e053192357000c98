"""The terminal board fits the terminal: no line wider than COLUMNS, every number still shown; the columns
split into tables one after the other where they must, a pair with its Δ columns."""

import statistics

import pytest
from test_report import KD, KD_VAM, STUDENT, make_record, seeds

from kdbench import reporting


def _board():
    """Three pairs, VAM on and off, kd at two temperatures (labelled rows) and a failed run with a long
    error: wider than 120 columns, however it is drawn."""
    records = seeds(STUDENT, method="student", teacher=None)
    records += seeds(STUDENT, method="student", teacher=None, vam=True, extra_params=96)
    for teacher in ("resnet56", "resnet110", "resnet32x4"):
        records += seeds(KD_VAM, teacher=teacher, vam=True, extra_params=96)
        for temperature in (4.0, 8.0):
            kd = seeds(KD, teacher=teacher)
            records += [
                {**record, "spec": {**record["spec"], "hp": {"temperature": temperature}}} for record in kd
            ]
    error = "RuntimeError: " + "a long traceback line " * 12
    return reporting.leaderboard([*records, make_record(method="crd", status="failed", error=error)])


def _single_pair():
    records = seeds(STUDENT, method="student", teacher=None) + seeds(KD)
    records += seeds(KD_VAM, vam=True, extra_params=96)
    return reporting.leaderboard(records + seeds(STUDENT, method="student", teacher=None, vam=True))


@pytest.mark.parametrize("width", [120, 160])
@pytest.mark.parametrize("make", [_board, _single_pair])
def test_no_line_is_wider_than_the_terminal(monkeypatch, width, make):
    monkeypatch.setenv("COLUMNS", str(width))
    board = make()
    text = reporting.render(board, "terminal")
    assert max(len(line) for line in text.splitlines()) <= width
    for number in (f"{statistics.mean(KD):.2f}", f"{statistics.stdev(KD_VAM):.2f}", "278.00K", "1.50"):
        assert number in text
    assert all(label in text for label in board.table.index)
    assert all(note.split()[0] in text for note in board.notes)


def test_a_pair_keeps_its_delta_columns_and_narrow_terminals_split_the_table(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    wide = reporting.render(_single_pair(), "terminal")
    (header,) = [line for line in wide.splitlines() if line.startswith("method  ")]
    assert header.split() == [
        "method",
        "resnet56→resnet20",
        "Δ",
        "ΔVAM",
        "extra",
        "train",
        "time",
        "peak",
    ] + [
        "deploy",
        "deploy",
    ]
    monkeypatch.setenv("COLUMNS", "80")
    narrow = reporting.render(_single_pair(), "terminal")
    headers = [line.split() for line in narrow.splitlines() if line.startswith("method  ")]
    assert len(headers) == 2 and headers[0][1:4] == ["resnet56→resnet20", "Δ", "ΔVAM"]
    assert max(len(line) for line in narrow.splitlines()) <= 80
