"""The pages in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it)
opens them from disk, draws their figures, logs no error, fetches nothing, and runs no script
that a run's strings hold. Skipped only where no Chromium is found, and never in CI."""

import os

import pytest
from headless_chromium import Browser, find_chromium
from report_inputs import NASTY

from resnets.report import write_page

pytestmark = pytest.mark.skipif(not find_chromium() and not os.environ.get("CI"),
                                reason="no Chromium here (CI installs it and runs this test)")


@pytest.fixture(scope="module")
def browser():
    with Browser.start() as started:
        yield started


FIGURE_SIZES = """Array.from(document.querySelectorAll('svg.figure')).map(svg => {
    const box = svg.getBoundingClientRect();
    return [box.width, box.height, svg.querySelectorAll('path, text, use').length];
})"""


def _open(browser, page_path):
    page = browser.open(page_path.resolve().as_uri())
    page.settle()
    return page


def test_the_harness_sees_dialogs_console_errors_and_fetches(browser, tmp_path):
    """So that the tests below can fail: a page that does all of it is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img src='https://example.invalid/x.png'>"
                   "<script>console.error('boom'); alert('hi')</script></body></html>")
    page = _open(browser, bad)
    assert page.dialogs == ["hi"]
    assert any("boom" in error for error in page.errors)
    assert "https://example.invalid/x.png" in page.requests


def test_study_page_renders_its_figures_with_no_errors(browser, tiny_study, tmp_path):
    from PIL import Image, ImageStat

    study_dir, _ = tiny_study
    path = write_page([study_dir], tmp_path / "study.html")
    page = _open(browser, path)
    assert page.errors == []
    assert page.dialogs == []
    assert page.requests == [path.resolve().as_uri()]  # the page itself, nothing else
    sizes = page.evaluate(FIGURE_SIZES)
    assert len(sizes) >= 1 + 2 * 2  # Figure 6, error and loss curves of each run
    for width, height, marks in sizes:
        assert width > 100 and height > 50 and marks > 10
    assert page.evaluate("document.querySelector('h1').textContent") == "Study tiny"
    screenshot = Image.open(page.screenshot(tmp_path / "study.png")).convert("L")
    assert ImageStat.Stat(screenshot).stddev[0] > 20  # text and lines on white, not blank
    # a click on a header sorts the table by that column (the page's own script runs)
    order = page.evaluate("""(() => {
        const table = Array.from(document.querySelectorAll('table.sortable'))
            .find(t => t.tHead.rows[0].cells[0].textContent === 'model');
        table.tHead.rows[0].cells[0].click(); table.tHead.rows[0].cells[0].click();
        return Array.from(table.tBodies[0].rows).map(r => r.cells[0].textContent);
    })()""")
    assert order == ["resnet8", "plain8"]
    assert page.errors == []


def test_run_with_html_in_its_strings_runs_no_script(browser, nasty_run, tmp_path):
    path = write_page([nasty_run], tmp_path / "nasty.html")
    page = _open(browser, path)
    assert page.dialogs == []
    assert page.errors == []
    assert page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert page.evaluate("document.scripts.length") == 2  # the data and the table sorter
    assert page.evaluate("""Array.from(document.querySelectorAll('*')).filter(
        e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length""") == 0
    shown = page.evaluate("document.body.innerText")
    for key in ("name", "data", "model", "lesion_unit", "platform", "class"):
        assert NASTY[key] in shown, key  # shown as the text it is
    svg_text = page.evaluate("Array.from(document.querySelectorAll('svg text'))"
                             ".map(t => t.textContent).join('\\n')")
    assert NASTY["lesion_run"] in svg_text and NASTY["landscape_run"] in svg_text
    assert page.requests == [path.resolve().as_uri()]
