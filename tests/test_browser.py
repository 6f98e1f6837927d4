"""The dashboard in a real headless Chromium: login, landing page numbers, drawn charts.

Everything is local: a database filled through the real CLI and recorder, the real
`llm-monitor dashboard` server as a child process, and Debian's chromium + chromedriver.
Screenshots go to tests/artifacts/ whether the test passes or fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from llm_monitor.store.recorder import Recorder
from llm_monitor.usage import utc_timestamp
from tests.conftest import invoke, invoke_with_password, usage_record
from tests.proxy import running_dashboard

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

EMAIL = "acme@x.example"
PASSWORD = "pw-long-enough"
ROWS = 60  # one every 4 hours: the last 10 days
MODELS = ("gpt-4o-mini", "gpt-4o")  # both priced; two so "Cost by model" has two bars

# datasette-vega 0.6.2 renders with vega-embed into `div.vega-embed`: a `canvas.marks`
# (vega-embed's default renderer; an SVG if someone switches it). Axes, grid and background
# are grey, so coloured pixels are the marks themselves. Returns a description, or null.
CHART_DRAWN_JS = """
const embed = document.querySelector('.vega-embed');
if (!embed) return null;
const paths = [...embed.querySelectorAll('svg .mark-line path, svg .mark-rect path,'
  + ' svg .mark-symbol path')].filter(p => (p.getAttribute('d') || '').length > 0);
if (paths.length) return 'svg with ' + paths.length + ' mark paths';
const canvas = embed.querySelector('canvas');
if (!canvas || !canvas.width || !canvas.height) return null;
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let coloured = 0;
for (let i = 0; i < pixels.length; i += 4) {
  const [r, g, b] = [pixels[i], pixels[i + 1], pixels[i + 2]];
  if (pixels[i + 3] && Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;
}
return coloured > 20 ? 'canvas ' + canvas.width + 'x' + canvas.height + ' with '
  + coloured + ' coloured pixels' : null;
"""


def build_database(db: Path) -> None:
    """An organisation with a dashboard login and ROWS priced requests, via the real code."""
    invoke(db, "init")
    result = invoke_with_password(
        db, PASSWORD, "orgs", "create", "Acme", "--email", EMAIL, "--password", "--json"
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout.strip().splitlines()[-1])
    now = time.time()
    recorder = Recorder(db)
    recorder.start()
    for i in range(ROWS):
        recorder.submit(
            usage_record(
                ts=utc_timestamp(now - 60 - i * 4 * 3600),
                org_id=created["org_id"],
                token_id=created["token_id"],
                model=MODELS[i % 2],
                input_tokens=1000 + 10 * i,
                output_tokens=200 + i,
                total_tokens=1200 + 11 * i,
                latency_ms=300.0 + 5 * i,
            )
        )
    recorder.close()
    assert recorder.written == ROWS


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"needs {' and '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("LLM_MONITOR_REQUIRE_BROWSER"):  # set by .ci/run: never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(15)
    try:
        yield browser
    finally:
        browser.quit()


def screenshot(browser: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def wait_for_chart(browser: WebDriver) -> str:
    """Wait until datasette-vega has drawn marks; then bring the chart into the viewport."""
    try:
        drawn = WebDriverWait(browser, 15, poll_frequency=0.2).until(
            lambda b: b.execute_script(CHART_DRAWN_JS)
        )
    except TimeoutException:
        console = "\n".join(str(entry) for entry in browser.get_log("browser"))
        pytest.fail(f"no chart drawn on {browser.current_url}; browser console:\n{console}")
    browser.execute_script(
        "document.querySelector('.vega-embed').scrollIntoView({block: 'center'})"
    )
    return drawn


def cells(browser: WebDriver, selector: str) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, selector)
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def test_login_landing_page_and_charts(tmp_path: Path, driver: WebDriver) -> None:
    for old in ARTIFACTS.glob("dashboard-*"):  # no screenshot of an earlier run passes for this
        old.unlink()
    db = tmp_path / "llm-monitor.db"
    build_database(db)
    with sqlite3.connect(db) as conn:
        (cost,) = conn.execute("select sum(cost_usd) from usage where priced = 1").fetchone()
    log, page = tmp_path / "dashboard.log", "login"
    try:
        with running_dashboard(db, log) as base:
            # Anonymous: sent to the login page, which logs in and goes back to /.
            driver.get(f"{base}/")
            assert driver.current_url == f"{base}/-/login?next=%2F"
            driver.find_element(By.ID, "email").send_keys(EMAIL)
            driver.find_element(By.ID, "password").send_keys(PASSWORD)
            driver.find_element(By.CSS_SELECTOR, "form input[type=submit]").click()
            WebDriverWait(driver, 10).until(
                lambda b: b.current_url == f"{base}/", "login did not lead to the landing page"
            )

            page = "landing"
            screenshot(driver, page)
            assert driver.find_element(By.TAG_NAME, "h1").text == "LLM Monitor: Acme"
            overview = {row[0]: row[1:] for row in cells(driver, "table.overview tbody tr")}
            # Rows at now - 1 min, -4 h 1 min, ...: 6 in the last 24 hours, 42 in 7 days.
            assert {name: row[0] for name, row in overview.items()} == {
                "Last 24 hours": "6",
                "Last 7 days": "42",
                "Last 30 days": str(ROWS),
            }
            assert overview["Last 30 days"][3] == f"${cost:,.2f}"
            links = {a.text: a for a in driver.find_elements(By.CSS_SELECTOR, "ul.views a")}
            assert {"Summary", "Timeline", "Cost by model", "Recent requests"} <= set(links)

            page = "timeline"
            links["Timeline"].click()
            WebDriverWait(driver, 10).until(lambda b: "/llm-monitor/timeline#" in b.current_url)
            assert "g.mark=line" in driver.current_url  # the landing page links to its chart
            assert wait_for_chart(driver)
            screenshot(driver, page)
            timeline = cells(driver, "table.rows-and-columns tbody tr")
            assert len(timeline) == 30  # days, the empty ones included
            assert sum(int(row[1]) for row in timeline) == ROWS

            # Opened without a fragment: our plugin gives it the query's default chart.
            page = "by-model"
            driver.get(f"{base}/llm-monitor/by_model")
            WebDriverWait(driver, 10).until(lambda b: "#g.mark=bar" in b.current_url)
            assert wait_for_chart(driver)
            screenshot(driver, page)
            assert sorted(row[0] for row in cells(driver, "table.rows-and-columns tbody tr")) == [
                "gpt-4o",
                "gpt-4o-mini",
            ]
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
    except (Exception, pytest.fail.Exception):
        with contextlib.suppress(Exception):  # never hide the failure itself
            screenshot(driver, page)  # the page as it was when the test failed
            print(f"browser at {driver.current_url}; dashboard log:\n{log.read_text()}")
        raise
