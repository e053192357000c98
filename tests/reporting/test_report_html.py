"""`kdbench report --format html` (kdbench/reporting/html.py): one self-contained page, opened in a real
headless Chromium (tests/reporting/browser_pages.py): the first click on top-1 puts the best first and
sorts by the number behind the cell, the filters hide rows and the charts follow them, the page requests
nothing from any network and logs no error, user strings stay text, intervals stay honest, the layout fits
1,280 pixels and the page says what made it."""

import contextlib
import io
import re

import pytest
from browser_pages import (
    TABLE,
    chart_points,
    column,
    fits_the_window,
    header,
    labels,
    mean,
    needs_browser,
)
from test_report import make_record, seeds

import kdbench
from kdbench import cli, reporting
from kdbench.core import store
from kdbench.core.environment import git_commit
from kdbench.core.spec import RunSpec
from kdbench.reporting.html import leaderboard_page, provenance
from kdbench.reporting.site_rows import interval_text

HOSTILE = "<img src=x onerror=window.pwned=1>"
TOP1 = "top-1 (%)"


def with_hp(records, **hp):
    """The records as another configuration of their method: other hyper-parameters, other run ids."""
    specs = [{**record["spec"], "hp": hp} for record in records]
    return [
        dict(record, spec=spec, run_id=RunSpec.from_dict(spec).run_id)
        for record, spec in zip(records, specs, strict=True)
    ]


def costly(records, flops):
    """The records with another training cost (train GFLOPs/image)."""
    return [
        dict(record, overhead={**record["overhead"], "train_flops_per_image": flops}) for record in records
    ]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A results store of real record files: two pairs on cifar100 (± VAM, a 9 % method so that a string sort
    of the top-1 column is not a numeric one, a failed run whose error is markup, a configuration labelled by a
    hyper-parameter value that is markup, a two-seed cell, a cell whose t-interval leaves [0, 100]) and one
    pair on cifar10."""
    records = (
        seeds([69.0, 69.4, 68.8], method="student", teacher=None)
        + seeds([69.2, 69.6, 69.0], method="student", teacher=None, vam=True, extra_params=96)
        + costly(seeds([70.5, 70.9, 70.1]), 5e8)
        + costly(seeds([71.0, 71.6, 71.2], vam=True, extra_params=96), 6e8)
        + seeds([9.5, 9.9, 9.1], method="at")
        + with_hp(seeds([70.0, 70.2, 69.9], method="fitnet"), note=HOSTILE)
        + with_hp(seeds([70.1, 70.3], method="fitnet"), note="plain")
        + seeds([5.0, 95.0, 50.0], method="crd", teacher="resnet110")
        + seeds([72.5, 72.1, 72.9], teacher="resnet110")
        + seeds([10.2, 10.8, 10.4], method="at", teacher="resnet110")
        + [make_record(method="crd", status="failed", error="<script>window.pwned=2</script>")]
        + seeds([91.0, 91.2, 90.9], method="student", teacher=None, dataset="cifar10")
        + seeds([92.0, 92.4, 91.8], dataset="cifar10")
    )
    folder = tmp_path_factory.mktemp("store")
    for record in records:
        store.write_record(folder, record)
    return folder


@pytest.fixture(scope="module")
def cli_page(out):
    """What `kdbench report --format html` prints for cifar100 (published rows included), saved as a file."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(["report", "--out", str(out), "--format", "html", "--dataset", "cifar100"]) == 0
    path = out / "cifar100.html"
    path.write_text(stdout.getvalue(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_dataset_page(out):
    records = store.load_records(out)
    boards = [reporting.leaderboard(records, dataset=dataset) for dataset in ("cifar100", "cifar10")]
    path = out / "both.html"
    path.write_text(leaderboard_page(boards, records=records), encoding="utf-8")
    return path


def test_the_page_is_one_document_with_the_boards_marks_and_its_provenance(out, cli_page):
    text = cli_page.read_text(encoding="utf-8")
    board = reporting.leaderboard(store.load_records(out), reporting.load_published(), dataset="cifar100")
    assert text.startswith("<!DOCTYPE html>") and text.count("</html>") == 1
    for row, pair in board.best:
        assert f"<b>{board.table.loc[row, pair]}</b>" in text
    for row, column_name in board.significant:
        assert f"{board.table.loc[row, column_name]}{reporting.renderers.SIGNIFICANT_MARK}</td>" in text
    assert "(published)" in text
    # nothing to fetch: no external script, style sheet, image or font; links are in-document
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", text)
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', text))
    assert HOSTILE not in text and "<script>window.pwned" not in text  # escaped, in cells and notes
    for value in (kdbench.__version__, git_commit(), "Python "):
        assert value and value in text
    assert re.search(r"<dt>date</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</dd>", text)


def test_provenance_names_the_command_as_typed():
    assert (
        provenance(["site", "my store", "--out", "a;b"])["command"] == "kdbench site 'my store' --out 'a;b'"
    )


def test_an_interval_below_three_seeds_says_so_and_none_leaves_0_to_100():
    assert interval_text(60.0, 80.0, 2, False) == "n < 3"
    assert interval_text(float("nan"), float("nan"), 1, False) == "n < 3"
    assert interval_text(-113.31, 159.24, 3, False) == "0.00–100.00"
    assert interval_text(69.1, 69.3, 3, False) == "69.10–69.30"
    assert interval_text(float("nan"), float("nan"), float("nan"), True) == ""  # a published number


@needs_browser
def test_no_request_leaves_the_page_and_its_script_runs_clean(cli_page, open_page):
    page = open_page(cli_page)
    assert open_page.requests == [cli_page.as_uri()]
    assert open_page.errors == []
    assert page.evaluate("window.pwned") is None  # the markup in labels and notes stayed text
    assert page.locator(f"{TABLE} tbody img").count() == 0
    assert HOSTILE in page.locator(f"{TABLE} tbody").inner_text()
    assert "<script>window.pwned=2</script>" in page.locator("ul.notes").inner_text()


@needs_browser
def test_the_first_click_on_top1_puts_the_best_first_by_number_and_a_second_reverses(cli_page, open_page):
    page = open_page(cli_page)
    before = [mean(text) for text in column(page, TOP1)]
    header(page, TOP1).click()
    best_first = [mean(text) for text in column(page, TOP1)]
    assert best_first == sorted(before, reverse=True) != before
    assert sorted(before) != sorted(before, key=lambda v: f"{v:.2f}")  # 9.50 vs 69.07: a number, not text
    header(page, TOP1).click()
    assert [mean(text) for text in column(page, TOP1)] == sorted(before)

    # Δ: best first too, and rows without one (the baselines, the teacher) stay last either way
    header(page, "Δ").click()
    deltas = column(page, "Δ")
    filled = [float(text.rstrip("†")) for text in deltas if text]
    assert filled == sorted(filled, reverse=True) and deltas[len(filled) :] == [""] * (
        len(deltas) - len(filled)
    )
    assert filled[-1] < -50  # at's −60 last, not "+0.xx" by its string

    # a cost: the cheapest first
    header(page, "train GFLOPs/img").click()
    costs = [float(text) for text in column(page, "train GFLOPs/img") if text]
    assert costs == sorted(costs) and costs[0] < costs[-1]


@needs_browser
def test_intervals_on_the_page_are_honest(cli_page, open_page):
    page = open_page(cli_page)
    shown = dict(zip(labels(page), column(page, "95 % CI"), strict=True))
    assert shown["fitnet (note=plain)"] == "n < 3"
    for text in shown.values():
        if "–" in text:
            low, high = map(float, text.split("–"))
            assert 0 <= low <= high <= 100
    assert "0.00–100.00" in shown.values()  # crd's 5, 95, 50: its t-interval is clipped


@needs_browser
def test_filters_hide_the_rows_that_do_not_match_and_the_charts_follow(two_dataset_page, open_page):
    page = open_page(two_dataset_page)
    rows = page.locator(f"{TABLE} tbody tr")
    total = rows.count()
    assert page.locator("#shown").inner_text() == f"{total} of {total} rows"
    everything = chart_points(page)
    assert everything > 0

    page.select_option("#filter-dataset", "cifar10")
    assert set(column(page, "dataset")) == {"cifar10"}
    assert len(column(page, "dataset")) == 2 < total  # student, kd
    assert chart_points(page) == 2 * 2  # student and kd, in each of the two charts

    page.select_option("#filter-dataset", "")
    page.select_option("#filter-pair", "resnet110→resnet20")
    assert set(column(page, "pair")) == {"resnet110→resnet20"}
    page.select_option("#filter-method", "kd")
    assert labels(page) == ["kd"]
    assert chart_points(page) == 2
    page.select_option("#filter-pair", "")
    page.select_option("#filter-wrappers", "VAM")
    assert set(labels(page)) == {"kd +VAM"}
    visible = len(labels(page))
    assert page.locator("#shown").inner_text() == f"{visible} of {total} rows"
    assert page.locator(f"{TABLE} tbody tr[hidden]").count() == total - visible

    page.select_option("#filter-method", "")
    page.select_option("#filter-wrappers", "")
    page.fill("#filter-text", "NOTE=PLAIN")
    assert labels(page) == ["fitnet (note=plain)"]
    assert chart_points(page) == 2
    page.fill("#filter-text", "")
    assert chart_points(page) == everything


@needs_browser
def test_the_pareto_front_is_drawn_and_the_page_fits_1280_pixels(cli_page, open_page):
    page = open_page(cli_page)
    assert (
        page.locator("#chart g.mark-line.role-mark path").count() >= 1
    )  # the fronts, one line per pair and chart
    assert fits_the_window(page)
