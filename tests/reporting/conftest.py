"""The headless Chromium of the HTML tests (test_report_html.py, test_site.py; browser_pages.py says when
they are skipped): pages opened from files, every request recorded (anything but a file refused), every
console error and page error kept."""

import pytest
from browser_pages import CHROMIUM, WINDOW, chart_drawn, sync_playwright


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
