"""The dashboard in a real headless Chromium, as an organisation: every view and the overview at
1366x768 and 390x844 (a chart with marks above the fold, no sideways scrolling, a labelled
form, money as USD, no SQL), a bad parameter's message on the page, and the overview's
numbers refreshing in place.

Everything is local: a database filled through the real CLI and recorder, the real
`llm-monitor dashboard` server as a child process, and Debian's chromium + chromedriver.
Screenshots go to tests/artifacts/ whether the test passes or fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from llm_monitor.dashboard.formatting import usd
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
MODELS = ("gpt-4o-mini", "gpt-4o")  # both priced; two so that charts have two bars
SNAPSHOTS = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06")

# Our charts are SVG drawn by static/llm-monitor.js; every mark has the class lm-mark. The
# first mark whose top is inside the viewport, or null.
MARK_ABOVE_FOLD_JS = """
const marks = [...document.querySelectorAll('#lm-chart svg .lm-mark')];
const seen = marks.find(m => { const r = m.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && r.top >= 0 && r.top < window.innerHeight; });
return seen ? marks.length : null;
"""
NO_SIDEWAYS_SCROLL_JS = (
    "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
)
SIZES = [(1366, 768), (390, 844)]
# Each view, the parameters it is opened with, and whether its form has dates and selects.
VIEWS = {
    "timeline": ({}, True, True),
    "by_family": ({}, True, False),
    "by_model": ({}, True, False),
    "by_token": ({}, True, False),
    "by_user": ({}, True, False),
    "by_tag": ({}, True, True),
    "cost_series": ({"by": "model"}, True, True),
    "summary": ({}, False, True),
    "recent_requests": ({}, False, True),
    "recent_errors": ({}, False, True),
    "unpriced": ({}, True, False),
    "month_spend": ({}, False, False),
    "my_tokens": ({}, False, False),
}
USD = re.compile(r"(\$[\d,]+\.\d{2}|\$0\.0+\d{1,2}|—)")


def settle(driver: webdriver.Chrome, seconds: float = 10) -> WebDriverWait:
    """A wait that looks again when the overview's refresh has replaced what it looked at."""
    return WebDriverWait(driver, seconds, ignored_exceptions=[StaleElementReferenceException])


def build_database(db: Path) -> dict[str, int]:
    """An organisation with a dashboard login and ROWS requests, via the real code: priced,
    one in ten an error (recorded under the name asked for, as failures are), the others
    answered by a dated snapshot; and one of a model without a price."""
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
        error = i % 10 == 3
        recorder.submit(
            usage_record(
                ts=utc_timestamp(now - 60 - i * 4 * 3600),
                org_id=created["org_id"],
                token_id=created["token_id"],
                model=MODELS[i % 2],
                response_model=None if error else SNAPSHOTS[i % 2],
                status=429 if error else 200,
                outcome="provider_error" if error else "ok",
                input_tokens=None if error else 1000 + 10 * i,
                output_tokens=None if error else 200 + i,
                total_tokens=None if error else 1200 + 11 * i,
                latency_ms=300.0 + 5 * i,
                user=("alice", "bob")[i % 2],
                tags='{"team":"search"}' if i % 3 else '{"team":"ads"}',
            )
        )
    recorder.submit(
        usage_record(
            ts=utc_timestamp(now - 3600),
            org_id=created["org_id"],
            token_id=created["token_id"],
            model="mystery-model",
            input_tokens=10,
            output_tokens=5,
            latency_ms=100.0,
        )
    )
    recorder.close()
    assert recorder.written == ROWS + 1
    return created


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
        "--window-size=1366,768",
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


def set_viewport(browser: WebDriver, width: int, height: int) -> None:
    """The page's own size (window.innerWidth/innerHeight), not the window's."""
    browser.set_window_size(width, height)
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    browser.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    assert browser.execute_script("return [window.innerWidth, window.innerHeight]") == [
        width,
        height,
    ]


def wait_for_marks(browser: WebDriver) -> int:
    """Wait until the page's chart has marks in the viewport; how many marks it has."""
    try:
        return WebDriverWait(browser, 15, poll_frequency=0.2).until(
            lambda b: b.execute_script(MARK_ABOVE_FOLD_JS)
        )
    except TimeoutException:
        console = "\n".join(str(entry) for entry in browser.get_log("browser"))
        pytest.fail(f"no chart marks above the fold on {browser.current_url}; console:\n{console}")


def cells(browser: WebDriver, selector: str) -> list[str]:
    return [
        cell.get_attribute("textContent").strip()
        for cell in browser.find_elements(By.CSS_SELECTOR, selector)
    ]


def assert_reads_well(browser: WebDriver, size: tuple[int, int]) -> None:
    scroll_width, client_width = browser.execute_script(NO_SIDEWAYS_SCROLL_JS)
    assert scroll_width <= client_width, f"scrolls sideways at {size}: {browser.current_url}"
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Custom SQL" not in text and "Run SQL" not in text and "Charting options" not in text
    money = cells(browser, "td.lm-usd")
    assert all(USD.fullmatch(value) for value in money), [v for v in money if not USD.fullmatch(v)]


def log_in(browser: WebDriver, base: str) -> None:
    # Anonymous: sent to the login page, which logs in and goes back to /.
    browser.get(f"{base}/")
    assert browser.current_url == f"{base}/-/login?next=%2F"
    browser.find_element(By.ID, "email").send_keys(EMAIL)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form input[type=submit]").click()
    WebDriverWait(browser, 10).until(
        lambda b: b.current_url == f"{base}/", "login did not lead to the overview"
    )


@pytest.mark.slow
def test_every_view_reads_well_at_desktop_and_phone_sizes(
    tmp_path: Path, driver: WebDriver
) -> None:
    for old in ARTIFACTS.glob("dashboard-*"):  # no screenshot of an earlier run passes for this
        old.unlink()
    db = tmp_path / "llm-monitor.db"
    build_database(db)
    log, page = tmp_path / "dashboard.log", "login"
    try:
        with running_dashboard(db, log) as base:
            log_in(driver, base)
            for width, height in SIZES:
                set_viewport(driver, width, height)
                page = f"overview-{width}"
                driver.get(f"{base}/")
                wait_for_marks(driver)
                settle(driver).until(
                    lambda b: b.find_elements(By.CSS_SELECTOR, "#lm-recent tbody tr td a")
                )
                assert_reads_well(driver, (width, height))
                assert driver.find_element(By.TAG_NAME, "h1").text == "LLM Monitor: Acme"
                screenshot(driver, page)
                for view, (params, dates, selects) in VIEWS.items():
                    page = f"{view}-{width}"
                    query = "&".join(f"{k}={v}" for k, v in params.items())
                    driver.get(f"{base}/llm-monitor/{view}?{query}")
                    assert wait_for_marks(driver) > 0
                    assert_reads_well(driver, (width, height))
                    form = driver.find_elements(By.CSS_SELECTOR, "form.lm-form")
                    date_inputs = driver.find_elements(By.CSS_SELECTOR, "form input[type=date]")
                    select_inputs = driver.find_elements(By.CSS_SELECTOR, "form.lm-form select")
                    assert (len(date_inputs) == 2) == dates, view
                    assert bool(select_inputs) == selects, view
                    assert bool(form) == (dates or selects), view
                    for control in date_inputs + select_inputs:  # every control has a label
                        label = driver.find_elements(
                            By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']"
                        )
                        assert label and label[0].text, (view, control.get_attribute("id"))
                    screenshot(driver, page)
                errors = [
                    e
                    for e in driver.get_log("browser")
                    if e["level"] == "SEVERE" and "favicon" not in e["message"]
                ]
                assert not errors, errors
                # A bad parameter: the page again, with the message beside the field.
                page = f"bad-parameter-{width}"
                driver.get(f"{base}/llm-monitor/summary?period=year")
                field = driver.find_element(By.CSS_SELECTOR, ".lm-field.lm-invalid")
                assert "period must be one of day, week, month; got 'year'" in field.text
                assert field.find_element(By.TAG_NAME, "select").get_attribute("aria-invalid")
                assert driver.find_elements(By.CSS_SELECTOR, "nav.lm-nav a")  # a way on
                screenshot(driver, page)
                driver.get_log("browser")  # the 400 itself is logged as an error: not ours
    except (Exception, pytest.fail.Exception):
        with contextlib.suppress(Exception):  # never hide the failure itself
            screenshot(driver, page)  # the page as it was when the test failed
            print(f"browser at {driver.current_url}; dashboard log:\n{log.read_text()}")
        raise


@pytest.mark.slow
def test_the_overview_shows_the_numbers_and_refreshes_itself(
    tmp_path: Path, driver: WebDriver
) -> None:
    db = tmp_path / "llm-monitor.db"
    created = build_database(db)
    with sqlite3.connect(db) as conn:
        month = time.strftime("%Y-%m", time.gmtime())
        (month_cost,) = conn.execute(
            "select sum(cost_usd) from usage where priced = 1 and ts >= ?", [month]
        ).fetchone()
    log, page = tmp_path / "dashboard.log", "overview-refresh"
    try:
        with running_dashboard(db, log) as base:
            log_in(driver, base)
            wait_for_marks(driver)
            figure = driver.find_element(By.CSS_SELECTOR, "[data-figure='month to date'] p")
            assert figure.text == usd(month_cost or 0)
            cards = {
                c.get_attribute("data-card"): c.text
                for c in driver.find_elements(By.CSS_SELECTOR, ".lm-card")
            }
            assert set(cards) == {"requests", "tokens", "cost", "latency", "errors"}
            # Rows at now - 1 min, -4 h 1 min, ... and the unpriced one: 43 in 7 days.
            assert "\n43\n" in cards["requests"] + "\n"
            models = cells(driver, "#lm-top-models .lm-top-name")
            assert set(models) == {"gpt-4o-mini", "gpt-4o", "mystery-model"}  # families
            assert "mystery-model" in driver.find_element(By.ID, "lm-unpriced").text
            assert "no price for this model" in driver.find_element(By.ID, "lm-unpriced").text
            Select(driver.find_element(By.ID, "lm-split")).select_by_value("model")
            settle(driver).until(
                lambda b: "gpt-4o-mini" in b.find_element(By.CSS_SELECTOR, ".lm-legend").text
            )
            # A request lands: the overview shows it within one refresh, without reloading.
            driver.execute_script("window.lmSamePage = true")
            loaded = int(driver.find_element(By.ID, "lm-overview").get_attribute("data-loaded"))
            recorder = Recorder(db)
            recorder.start()
            recorder.submit(
                usage_record(
                    ts=utc_timestamp(time.time()),
                    org_id=created["org_id"],
                    token_id=created["token_id"],
                    model="gpt-4o",
                    response_model="gpt-4o-2024-11-20",
                    input_tokens=5,
                    output_tokens=5,
                    latency_ms=42.0,
                )
            )
            recorder.close()
            settle(driver, 25).until(
                lambda b: (
                    "gpt-4o-2024-11-20"
                    in b.find_element(By.CSS_SELECTOR, "#lm-recent tbody tr:first-child").text
                )
            )
            assert driver.execute_script("return window.lmSamePage") is True
            assert (
                int(driver.find_element(By.ID, "lm-overview").get_attribute("data-loaded")) > loaded
            )
            assert driver.find_elements(By.CSS_SELECTOR, "#lm-recent tr.lm-new")
            screenshot(driver, page)
            # Each of the latest requests opens its page.
            # The refresh can replace the row between finding and clicking it: look again.
            settle(driver).until(
                lambda b: (
                    b.find_element(By.CSS_SELECTOR, "#lm-recent tbody tr:first-child a").click()
                    or True
                )
            )
            settle(driver).until(lambda b: "/llm-monitor/request?id=" in b.current_url)
            assert "gpt-4o-2024-11-20" in driver.find_element(By.TAG_NAME, "h2").text
            assert driver.find_element(By.ID, "cost").text.startswith("Cost\n$")
            screenshot(driver, "request")
    except (Exception, pytest.fail.Exception):
        with contextlib.suppress(Exception):
            screenshot(driver, page)
            print(f"browser at {driver.current_url}; dashboard log:\n{log.read_text()}")
        raise
