"""What the HTML tests share (test_report_html.py, test_site.py): whether a real headless Chromium can be
driven by playwright, its fixtures `browser` and `open_page` (pages opened from files in a 1,280-pixel
window, every request recorded and anything but a file refused, every console error and page error
kept; tests/conftest.py registers them), and readers of the board table and charts.

Skipped only where playwright or a chromium binary is missing (.ci/setup.sh installs both where it can);
KDBENCH_CHROMIUM names another binary."""

import os
import re
import shutil

import pytest

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
WINDOW = {"width": 1280, "height": 900}  # the layout must fit it
TABLE = "table.kdbench-leaderboard"


def chart_drawn(page):
    """Wait for the page's last chart update (board.js / curves.js `window.kdbenchChart.updated`)."""
    page.evaluate("window.kdbenchChart ? window.kdbenchChart.updated.then(() => true) : false")


def column(page, header):
    """The visible cells of a column of the board table, top to bottom."""
    headers = page.locator(f"{TABLE} thead th").all_inner_texts()
    index = [" ".join(text.rstrip(" ▲▼").split()) for text in headers].index(header)
    return page.locator(f"{TABLE} tbody tr:not([hidden]) > :nth-child({index + 1})").all_inner_texts()


def header(page, name):
    return page.locator(f"{TABLE} thead th").filter(has_text=re.compile(f"^{re.escape(name)}( [▲▼])?$"))


def labels(page):
    """The visible rows' labels (their header cells), without the links after them."""
    return [text.split(" [")[0] for text in column(page, "method")]


def chart_points(page):
    """The points the charts draw (every panel's), after the last update."""
    chart_drawn(page)
    return page.locator("#chart g.mark-symbol.role-mark path").count()


def mean(text):
    return float(text.split()[0].rstrip("†")) if text else None


def fits_the_window(page):
    """Nothing on the page reaches past the window's right edge, nor scrolls inside a box."""
    widest = page.evaluate(
        "Math.max(...Array.from(document.querySelectorAll('table, svg, #chart, .table-wrap, footer'),"
        " (element) => Math.max(element.getBoundingClientRect().right, element.scrollWidth)))"
    )
    return (
        page.evaluate("document.documentElement.scrollWidth") <= WINDOW["width"] and widest <= WINDOW["width"]
    )


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Open a page file in a 1,280-pixel window; every request the page makes is recorded and anything
    but a file is refused; console and page errors are kept. Waits until its charts are drawn."""
    context = browser.new_context(viewport=WINDOW)
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
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        chart_drawn(page)
        return page

    opened.requests, opened.errors = requests, errors
    yield opened
    context.close()
