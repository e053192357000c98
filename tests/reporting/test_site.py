"""`kdbench site STORE... --out DIR` (kdbench/reporting/site.py): a static site of two stores, one of them
made by a tiny real `kdbench run` on synthetic data, the other of written records on two datasets (a
hyper-parameter value and an error that are markup), opened in a real headless Chromium
(tests/reporting/conftest.py): one site for every dataset, nothing requested outside the site's folder, no
console error, the table sorts best first and filters, the charts follow the filters, each row links to
its runs' records, learning curves and the published row, provenance on every page, markup stays text.

KDBENCH_SITE_SCREENSHOT=docs/site-screenshot.png makes the screenshot test write the README's picture."""

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
from browser_pages import (
    TABLE,
    chart_drawn,
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
from kdbench import cli
from kdbench.core import store
from kdbench.core.environment import git_commit
from kdbench.core.spec import RunSpec
from kdbench.reporting.site import write_site

HOSTILE = "<img src=x onerror=window.pwned=1>"
TINY_RUN = [
    "--dataset",
    "synthetic",
    "--pairs",
    "resnet14:resnet8",
    "--methods",
    "student,kd,at",
    "--seeds",
    "2",
]
TINY_RUN += [
    "--epochs",
    "2",
    "--teacher-epochs",
    "1",
    "--train-subset",
    "128",
    "--test-subset",
    "64",
    "--vam",
    "off",
]


def _main(*argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(argv))
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A store of real runs (synthetic) and a store of written records (cifar100 and cifar10)."""
    real = tmp_path_factory.mktemp("real")
    code, stderr = _main("run", *TINY_RUN, "--out", str(real))
    assert code == 0, stderr
    written = tmp_path_factory.mktemp("written")
    hostile = [  # two configurations of fitnet: each row is labelled by its note
        dict(record, spec=spec, run_id=RunSpec.from_dict(spec).run_id)
        for note in (HOSTILE, "plain")
        for record in seeds([70.0, 70.2, 69.9], method="fitnet")
        for spec in [{**record["spec"], "hp": {"note": note}}]
    ]
    for record in (
        seeds([69.0, 69.4, 68.8], method="student", teacher=None)
        + seeds([70.5, 70.9, 70.1])
        + hostile
        + [make_record(method="crd", status="failed", error="<script>window.pwned=2</script>")]
        + seeds([91.0, 91.2, 90.9], method="student", teacher=None, dataset="cifar10")
        + seeds([92.0, 92.4, 91.8], dataset="cifar10")
    ):
        store.write_record(written, record)
    return real, written


@pytest.fixture(scope="module")
def site(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    code, stderr = _main("site", *map(str, stores), "--out", str(out))
    assert code == 0, stderr
    return out


def _board(site, dataset):
    """The board page of a dataset, found from the index as a reader would."""
    text = (site / "index.html").read_text(encoding="utf-8")
    folder = re.search(rf'<a href="([^"/]+)/index.html">{re.escape(dataset)}</a>', text).group(1)
    return site / folder / "index.html"


def test_stores_with_several_datasets_give_one_site_with_every_record(stores, site):
    index = (site / "index.html").read_text(encoding="utf-8")
    records = [record for folder in stores for record in store.load_records(folder)]
    for dataset in ("synthetic", "cifar100", "cifar10"):
        board = _board(site, dataset)
        assert board.is_file() and list(board.parent.glob("pair-*.html"))
        assert f">{dataset}</a>" in index
    for record in records:  # each copied as the store's reader read it
        copied = json.loads((site / "records" / f"{record['run_id']}.json").read_text(encoding="utf-8"))
        assert copied == record
    assert {path.name for path in (site / "assets").iterdir()} >= {
        "vega.min.js",
        "LICENSE.vega",
        "LICENSE.vega-lite",
    }


def test_every_page_says_what_made_it(stores, site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 8  # index, 3 boards, their pair boards, the cell pages
    command = f"kdbench site {stores[0]} {stores[1]} --out {site}"
    for path in pages:
        text = path.read_text(encoding="utf-8")
        assert '<footer class="provenance">' in text, path
        for value in (kdbench.__version__, git_commit(), command, "Python "):
            assert value in text, (path, value)


def test_markup_from_records_stays_escaped_in_every_page(site):
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert HOSTILE not in text and "<script>window.pwned" not in text, path


def test_a_folder_the_command_did_not_write_is_refused_and_a_store_must_be_one(stores, site, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    code, stderr = _main("site", str(stores[0]), "--out", str(tmp_path))
    assert code == 2 and stderr.count("\n") == 1 and str(tmp_path) in stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    code, stderr = _main("site", str(tmp_path), "--out", str(tmp_path / "new"))
    assert code == 2 and f"STORE {tmp_path}" in stderr and stderr.count("\n") == 1
    assert _main("site", *map(str, stores), "--out", str(site))[0] == 0  # its own site is rewritten


@needs_browser
def test_no_request_leaves_the_site_and_no_page_logs_an_error(site, open_page):
    for path in [site / "index.html", *site.glob("*/index.html"), *site.glob("*/pair-*.html")]:
        page = open_page(path)
        assert page.evaluate("window.pwned") is None
    cells = list(site.glob("*/cells/*.html"))
    for path in cells:
        open_page(path)
    assert open_page.errors == []
    assert all(url.startswith(site.as_uri() + "/") for url in open_page.requests), open_page.requests


@needs_browser
def test_the_board_sorts_best_first_filters_and_its_charts_follow(site, open_page):
    page = open_page(_board(site, "synthetic"))
    before = [mean(text) for text in column(page, "top-1 (%)")]
    header(page, "top-1 (%)").click()
    assert [mean(text) for text in column(page, "top-1 (%)")] == sorted(before, reverse=True)
    measured = len([label for label in labels(page) if label != "teacher"])
    assert chart_points(page) == 2 * measured  # each measured row in each of the two charts
    page.select_option("#filter-method", "kd")
    assert labels(page) == ["kd"]
    assert chart_points(page) == 2
    page.select_option("#filter-method", "")
    page.fill("#filter-text", "stud")
    assert labels(page) == ["student"] and chart_points(page) == 2
    assert fits_the_window(page)


@needs_browser
def test_a_row_links_to_its_runs_records_curves_and_published_row(site, open_page):
    page = open_page(_board(site, "cifar100"))
    assert HOSTILE in page.locator(f"{TABLE} tbody").inner_text()  # shown as text, not run
    kd = page.locator(f"{TABLE} tbody tr").filter(has=page.locator("th", has_text=re.compile(r"^kd \[")))
    published = kd.locator("a", has_text="published").get_attribute("href")
    assert page.locator(f"{TABLE} tbody tr{published} th").inner_text() == "kd (published)"

    page = open_page(_board(site, "synthetic"))
    page.locator(f"{TABLE} tbody tr").filter(has=page.locator("th", has_text=re.compile(r"^kd \["))).locator(
        "a", has_text="runs, curves"
    ).click()
    page.wait_for_load_state("load")
    chart_drawn(page)
    runs = page.locator("table.plain tbody tr").filter(has=page.locator("a[href$='.json']"))
    assert runs.count() == 2  # two seeds
    for index in range(runs.count()):
        href = runs.nth(index).locator("a[href$='.json']").get_attribute("href")
        record = json.loads((Path(page.url.removeprefix("file://")).parent / href).resolve().read_text())
        assert record["spec"]["method"] == "kd"
    # the curves: a point per run and evaluated epoch (top-1) and per run and epoch (loss)
    assert page.locator("#curves g.mark-symbol.role-mark path").count() >= 2 * 2
    # the evaluation: each run's ECE and agreement, a point per run and class, the summed confusion matrix
    evaluation = record["evaluation"]
    rows = page.locator("table.plain").nth(1).locator("tbody tr")  # figures, evaluation, runs
    assert rows.count() == 2
    cells = rows.nth(1).locator("td").all_inner_texts()
    assert cells[1:3] == [f"{evaluation['ece']:.2f}", f"{evaluation['agreement_top1']:.2f}"]
    classes = evaluation["classes"]
    assert page.locator("#evaluation g.mark-symbol.role-mark path").count() == 2 * classes
    assert page.locator("#evaluation g.mark-rect.role-mark path").count() == classes * classes
    assert open_page.errors == []


@needs_browser
def test_a_cell_of_records_without_evaluation_says_so(site, open_page):
    page = open_page(_board(site, "cifar10"))
    page.locator(f"{TABLE} a", has_text="runs, curves").first.click()
    page.wait_for_load_state("load")
    assert "None in these records" in page.locator("body").inner_text()
    assert open_page.errors == []


@needs_browser
def test_screenshot_of_a_board(site, open_page, tmp_path):
    """The README's picture (KDBENCH_SITE_SCREENSHOT=docs/site-screenshot.png), from the tiny real store."""
    page = open_page(_board(site, "synthetic"))
    target = Path(os.environ.get("KDBENCH_SITE_SCREENSHOT") or tmp_path / "site.png")
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 20_000  # a drawn page, not a blank one


def test_a_hostile_dataset_name_stays_inside_the_site_and_is_text(tmp_path):
    name = "../../<b>evil</b>"
    for record in seeds([50.0, 51.0, 52.0], dataset=name, method="student", teacher=None) + seeds(
        [55.0, 56.0, 54.0], dataset=name
    ):
        store.write_record(tmp_path / "store", record)
    write_site([tmp_path / "store"], tmp_path / "site")
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert all(
        path.is_relative_to(tmp_path / "store") or path.is_relative_to(tmp_path / "site") for path in written
    )
    pages = list((tmp_path / "site").rglob("*.html"))
    assert len(pages) == 1 + 2 + 2  # the index, the board and its pair's, two cells
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "<b>evil" not in text and "&lt;b&gt;evil&lt;/b&gt;" in text


def test_a_store_whose_runs_folder_is_a_link_is_refused(stores, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "runs").symlink_to(stores[1] / "runs")
    code, stderr = _main("site", str(tmp_path / "store"), "--out", str(tmp_path / "site"))
    assert code == 2 and "symbolic link" in stderr and stderr.count("\n") == 1


@needs_browser
def test_the_board_shows_the_runs_evaluation_where_records_have_it(stores, site, open_page):
    kd = [record for record in store.load_records(stores[0]) if record["spec"]["method"] == "kd"]
    page = open_page(_board(site, "synthetic"))
    shown = dict(zip(labels(page), column(page, "ECE (%)"), strict=True))
    assert shown["kd"] == f"{sum(record['evaluation']['ece'] for record in kd) / len(kd):.2f}"
    agreement = dict(zip(labels(page), column(page, "agrees with teacher (%)"), strict=True))
    assert agreement["student"] == ""  # no teacher, no agreement
    header(page, "ECE (%)").click()  # the best calibrated first
    eces = [float(text) for text in column(page, "ECE (%)") if text]
    assert eces == sorted(eces)
    page = open_page(_board(site, "cifar10"))  # records written before the evaluation: no column
    assert "ECE (%)" not in page.locator(f"{TABLE} thead").inner_text()
