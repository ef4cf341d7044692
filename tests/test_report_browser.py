"""The cohort page in a real browser (headless Chromium, JavaScript on, opened from ``file://``): sorting by a
column reorders the rows, filtering by a flag hides the others, every image loads, the console stays clean.

Skipped only when Chromium is absent (CI installs it: ``.ci/run``). The screenshot is saved in the test's tmp
folder; ``python tests/browser.py OUT_DIR/report.html docs/images/report.png`` takes one of any report."""

from __future__ import annotations

import pytest
from browser import Browser, chromium
from report_cohort import write_case, write_cohort

from monai_xres.report import write_report
from monai_xres.report.flags import NEAR_COLUMN

pytestmark = pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium)")

COLUMN = 1 + 1 + 6  # case, map, then the table's 7th column: the share within 10 mm (see report.html.TABLE)
VALUES = f"Array.from(document.querySelectorAll('#cohort tbody tr')).map(r => r.cells[{COLUMN}].dataset.v)"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = write_cohort(tmp_path_factory.mktemp("run"))
    for k in range(6):  # more cases, so that an order is something to check
        write_case(root, f"case_n{k}", ("near", "far", "zero")[k % 3], predicted=k != 4)
    write_report(root)
    browser = Browser(tmp_path_factory.mktemp("profile"))
    browser.open((root / "report.html").as_uri())
    yield browser, root
    browser.close()


def _ordered(values: list[str], sign: int) -> bool:
    numbers = [float(v) for v in values if v != ""]
    blanks_last = all(v == "" for v in values[len(numbers):])
    return blanks_last and all(sign * (b - a) >= 0 for a, b in zip(numbers, numbers[1:]))


def test_sorting_by_a_column_reorders_the_rows(page):
    browser, _ = page
    assert browser.js(f"document.querySelectorAll('#cohort thead th')[{COLUMN}].textContent") == \
        "share within 10 mm" and NEAR_COLUMN == "share_within_10mm"
    before = browser.js(VALUES)
    assert not _ordered(before, 1)  # the rows come in case order, not sorted by this column
    browser.click(f"#cohort thead th:nth-child({COLUMN + 1})")
    ascending = browser.js(VALUES)
    assert _ordered(ascending, 1) and sorted(ascending) == sorted(before)
    browser.click(f"#cohort thead th:nth-child({COLUMN + 1})")
    assert _ordered(browser.js(VALUES), -1)


def test_filtering_by_a_flag_hides_the_others(page):
    browser, _ = page
    browser.js("(() => { const s = document.getElementById('flag'); s.value = 'zero_map'; "
               "s.dispatchEvent(new Event('change')); })()")
    shown = browser.js("Array.from(document.querySelectorAll('#cohort tbody tr')).filter(r => !r.hidden)"
                       ".map(r => r.dataset.flags)")
    hidden = browser.js("Array.from(document.querySelectorAll('#cohort tbody tr')).filter(r => r.hidden).length")
    assert shown and all("zero_map" in f.split() for f in shown) and hidden > 0
    assert browser.js("document.getElementById('count').textContent") == f"{len(shown)} of {len(shown) + hidden} rows"
    browser.js("(() => { const s = document.getElementById('flag'); s.value = ''; "
               "s.dispatchEvent(new Event('change')); })()")
    assert browser.js("document.querySelectorAll('#cohort tbody tr[hidden]').length") == 0


def test_every_image_loads_and_the_console_stays_clean(page, tmp_path):
    browser, root = page
    browser.js("(async () => { for (let y = 0; y <= document.body.scrollHeight; y += 600) { window.scrollTo(0, y); "
               "await new Promise(r => setTimeout(r, 30)); } })()")  # lazy images load when scrolled to
    widths = browser.js("Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth, "
                        "() => 0)))")
    thumbnails = browser.js("document.querySelectorAll('img.thumb').length")
    assert thumbnails == sum(1 for _ in root.glob("*/*.png")) and len(widths) > thumbnails
    assert all(w > 0 for w in widths)
    assert browser.errors == []
    browser.js("window.scrollTo(0, 0)")
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 10_000
