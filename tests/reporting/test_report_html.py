"""`kdbench report --format html` (kdbench/reporting/html.py): one self-contained page, opened in a real headless
Chromium driven by playwright: clicking a header sorts the rows by the number behind the cell, the filters
hide rows, the page requests nothing from any network, the chart is there and user strings stay text.

Skipped only where playwright or a chromium binary is missing (.ci/setup.sh installs both where it can);
KDBENCH_CHROMIUM names another binary."""

import contextlib
import io
import os
import re
import shutil

import pytest
from test_report import make_record, seeds

from kdbench import cli, reporting
from kdbench.core import store
from kdbench.core.spec import RunSpec
from kdbench.reporting.html import leaderboard_page

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip below says why
    sync_playwright = None

CHROMIUM = os.environ.get("KDBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    sync_playwright is None or CHROMIUM is None,
    reason="needs playwright (pip install 'kdbench[test]') and a chromium binary (apt-get install chromium)"
    if sync_playwright is None
    else "needs a chromium binary: apt-get install chromium (or set KDBENCH_CHROMIUM)",
)

HOSTILE = "<img src=x onerror=window.pwned=1>"
TOP1_HEADER = "top-1 (%)"


def with_hp(records, **hp):
    """The records as another configuration of their method: other hyper-parameters, other run ids."""
    specs = [{**record["spec"], "hp": hp} for record in records]
    return [
        dict(record, spec=spec, run_id=RunSpec.from_dict(spec).run_id)
        for record, spec in zip(records, specs, strict=True)
    ]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A results store of real record files: two pairs on cifar100 (± VAM, a 9 % method so that a string sort
    of the top-1 column is not a numeric one, a failed run whose error is markup, a configuration labelled by a
    hyper-parameter value that is markup) and one pair on cifar10."""
    records = (
        seeds([69.0, 69.4, 68.8], method="student", teacher=None)
        + seeds([69.2, 69.6, 69.0], method="student", teacher=None, vam=True, extra_params=96)
        + seeds([70.5, 70.9, 70.1])
        + seeds([71.0, 71.6, 71.2], vam=True, extra_params=96)
        + seeds([9.5, 9.9, 9.1], method="at")
        + with_hp(seeds([70.0, 70.2, 69.9], method="fitnet"), note=HOSTILE)
        + with_hp(seeds([70.1, 70.3, 69.8], method="fitnet"), note="plain")
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
    path.write_text(leaderboard_page(boards), encoding="utf-8")
    return path


def test_the_page_is_one_document_with_the_boards_marks_and_an_inline_chart(out, cli_page):
    text = cli_page.read_text(encoding="utf-8")
    board = reporting.leaderboard(store.load_records(out), reporting.load_published(), dataset="cifar100")
    assert text.startswith("<!DOCTYPE html>") and text.count("</html>") == 1  # costs are in its rows
    for row, pair in board.best:
        assert f"<b>{board.table.loc[row, pair]}</b>" in text
    for row, column in board.significant:
        assert f"{board.table.loc[row, column]}{reporting.renderers.SIGNIFICANT_MARK}</td>" in text
    assert "(published)" in text and "<svg" in text
    # nothing to fetch: no external script, style sheet, image or font; SVG links are in-document
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", text)
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', text))
    assert HOSTILE not in text and "<script>window.pwned" not in text  # escaped, in cells and notes


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Open a page file; every request the page makes is recorded and anything but the file is refused."""
    context = browser.new_context()
    requests, errors = [], []

    def route(route):
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", route)

    def opened(path):
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        return page

    opened.requests, opened.errors = requests, errors
    yield opened
    context.close()


def _column(page, header):
    """The visible cells of a column, top to bottom."""
    headers = page.locator("table.kdbench-leaderboard thead th").all_inner_texts()
    index = [text.rstrip(" ▲▼") for text in headers].index(header)
    return page.locator(
        f"table.kdbench-leaderboard tbody tr:not([hidden]) > :nth-child({index + 1})"
    ).all_inner_texts()


def _header(page, name):
    return page.locator("table.kdbench-leaderboard thead th").filter(
        has_text=re.compile(f"^{re.escape(name)}$")
    )


def _mean(text):
    return float(text.split()[0].rstrip("†")) if text else None


@needs_browser
def test_no_request_leaves_the_page_and_its_script_runs_clean(cli_page, open_page):
    page = open_page(cli_page)
    assert open_page.requests == [cli_page.as_uri()]
    assert open_page.errors == []
    assert page.evaluate("window.pwned") is None  # the markup in labels and notes stayed text
    assert page.locator("table.kdbench-leaderboard tbody img").count() == 0
    assert HOSTILE in page.locator("table.kdbench-leaderboard tbody").inner_text()
    assert "<script>window.pwned=2</script>" in page.locator("ul.notes").inner_text()


@needs_browser
def test_a_header_click_sorts_by_the_number_and_a_second_click_reverses(cli_page, open_page):
    page = open_page(cli_page)
    before = [_mean(text) for text in _column(page, TOP1_HEADER)]
    _header(page, TOP1_HEADER).click()
    ascending = [_mean(text) for text in _column(page, TOP1_HEADER)]
    assert ascending != before
    assert ascending == sorted(before)  # numeric: 9.50 before 69.07, which a string sort would not give
    assert sorted(before) != sorted(before, key=lambda v: f"{v:.2f}")
    _header(page, TOP1_HEADER).click()
    assert [_mean(text) for text in _column(page, TOP1_HEADER)] == sorted(before, reverse=True)

    # Δ: signed numbers, and rows without one (the baselines, the teacher) stay last either way
    _header(page, "Δ").click()
    deltas = _column(page, "Δ")
    filled = [float(text.rstrip("†")) for text in deltas if text]
    assert filled == sorted(filled) and deltas[len(filled) :] == [""] * (len(deltas) - len(filled))
    assert filled[0] < -50  # at's −60 first, not "+0.xx" by its string


@needs_browser
def test_filters_hide_the_rows_that_do_not_match(two_dataset_page, open_page):
    page = open_page(two_dataset_page)
    rows = page.locator("table.kdbench-leaderboard tbody tr")
    total = rows.count()
    assert page.locator("#shown").inner_text() == f"{total} of {total} rows"

    page.select_option("#filter-dataset", "cifar10")
    assert set(_column(page, "dataset")) == {"cifar10"}
    assert len(_column(page, "dataset")) == 2 < total

    page.select_option("#filter-dataset", "")
    page.select_option("#filter-pair", "resnet110→resnet20")
    assert set(_column(page, "pair")) == {"resnet110→resnet20"}
    page.select_option("#filter-method", "kd")
    assert _column(page, "method") == ["kd"]
    page.select_option("#filter-pair", "")
    page.select_option("#filter-wrappers", "VAM")
    assert set(_column(page, "method")) == {"kd +VAM"} and set(_column(page, "wrappers")) == {"VAM"}
    visible = len(_column(page, "method"))
    assert page.locator("#shown").inner_text() == f"{visible} of {total} rows"
    assert page.locator("table.kdbench-leaderboard tbody tr[hidden]").count() == total - visible


@needs_browser
def test_each_dataset_has_its_chart_drawn(two_dataset_page, open_page):
    page = open_page(two_dataset_page)
    charts = page.locator("figure.chart svg")
    assert charts.count() == 2
    for index in range(2):
        box = charts.nth(index).bounding_box()
        assert box["width"] > 300 and box["height"] > 100
    assert open_page.requests == [two_dataset_page.as_uri()]
