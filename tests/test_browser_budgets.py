"""Budgets and rate limits on the dashboard, in a real headless Chromium against a real
`llm-monitor dashboard`: an admin creates one (a bad amount is refused beside its field,
nothing stored), changes and removes it, sets a rate limit, and sees its status on the
overview; a viewer reads them and cannot change them; another organisation's admin
neither sees nor touches them. What is stored is read back with the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from llm_monitor.accounts.members import add_member, create_person
from llm_monitor.accounts.passwords import hash_password
from llm_monitor.money.costs import load_price_book, price_row
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import write_rows
from llm_monitor.usage import utc_timestamp
from tests.conftest import invoke, invoke_with_password, usage_record
from tests.proxy import running_dashboard
from tests.test_alerts import Receiver, receiver  # noqa: F401 (a fixture)
from tests.test_browser import cells, driver, screenshot  # noqa: F401 (a fixture)
from tests.test_browser_accounts import fill, wait_for

PASSWORD = "pw-long-enough"
ADMIN, VIEWER, OTHER = "admin@acme.example", "viewer@acme.example", "admin@globex.example"


def settled(browser: WebDriver) -> WebDriverWait:
    """A wait that reads the page again when it was replaced while being read (a form
    posted, the page reloading), or read before the new page drew the row (no cells yet:
    seen once in CI as an IndexError)."""
    return WebDriverWait(
        browser, 10, ignored_exceptions=(StaleElementReferenceException, IndexError)
    )


def create_org(db: Path, name: str, email: str) -> dict:
    result = invoke_with_password(
        db, PASSWORD, "orgs", "create", name, "--email", email, "--password", "--json"
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def log_in(browser: WebDriver, base: str, email: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{base}/-/login")
    fill(browser, {"email": email, "password": PASSWORD})
    browser.find_element(By.CSS_SELECTOR, "form input[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda b: b.current_url == f"{base}/")


def post(browser: WebDriver, fields: dict[str, str]) -> tuple[int, str]:
    """A form POST from the page, with the session's CSRF token: what a hand-made
    request could send."""
    return tuple(
        browser.execute_async_script(
            """const [fields, done] = arguments;
            const body = new URLSearchParams(fields);
            body.set('csrftoken', document.querySelector('input[name=csrftoken]').value);
            fetch('/-/account/budgets', {method: 'POST', body, redirect: 'manual'})
              .then(async r => done([r.status, await r.text()]));""",
            fields,
        )
    )


def budgets_of(db: Path, org: str) -> list[dict]:
    return json.loads(invoke(db, "budgets", "list", "--org", org, "--json"))


@pytest.mark.slow
def test_admins_manage_budgets_viewers_read_them_others_never_see_them(
    tmp_path: Path,
    driver: WebDriver,  # noqa: F811
) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    acme = create_org(db, "Acme", ADMIN)
    create_org(db, "Globex", OTHER)
    store = open_db(db)
    viewer = create_person(store, VIEWER, hash_password(PASSWORD))
    add_member(store, acme["org_id"], viewer, "viewer")
    book = load_price_book(store)
    spent = usage_record(  # about $2.50 this month
        ts=utc_timestamp(time.time() - 60),
        org_id=acme["org_id"],
        token_id=acme["token_id"],
        model="gpt-4o",
        input_tokens=1_000_000,
        output_tokens=0,
    )
    write_rows(store, [price_row(spent, book)])
    store.conn.close()
    invoke(db, "budgets", "set", "--org", "Globex", "--period", "week", "--usd", "7")
    [globex_budget] = budgets_of(db, "Globex")

    with running_dashboard(db, tmp_path / "dashboard.log") as base:
        log_in(driver, base, ADMIN)
        driver.get(f"{base}/-/account/budgets")
        assert cells(driver, "#lm-budgets tbody td") == ["No budgets yet."]

        # A bad amount: its error beside the field, the other values kept, nothing stored.
        fill(driver, {"usd": "-5", "alert_at": "50,90"})
        Select(driver.find_element(By.ID, "kind")).select_by_value("soft")
        driver.find_element(By.ID, "create-budget").click()
        error = wait_for(driver, "#usd-error")
        assert "more than 0" in error.text
        assert driver.find_element(By.ID, "usd").get_attribute("aria-invalid") == "true"
        assert driver.find_element(By.ID, "alert_at").get_attribute("value") == "50,90"
        assert not driver.find_elements(By.ID, "alert_at-error")
        assert budgets_of(db, "Acme") == []
        # An unknown token: beside the value field.
        Select(driver.find_element(By.ID, "scope")).select_by_value("token")
        fill(driver, {"value": "999", "usd": "10"})
        driver.find_element(By.ID, "create-budget").click()
        assert "No live monitor token 999" in wait_for(driver, "#value-error").text
        assert budgets_of(db, "Acme") == []

        # A good one.
        Select(driver.find_element(By.ID, "scope")).select_by_value("org")
        fill(driver, {"value": "", "usd": "10", "alert_at": ""})
        Select(driver.find_element(By.ID, "kind")).select_by_value("hard")
        driver.find_element(By.ID, "create-budget").click()
        row = wait_for(driver, "#lm-budgets tbody tr[data-budget-id]")
        [stored] = budgets_of(db, "Acme")
        assert (stored["limit_usd"], stored["kind"], stored["period"]) == (10.0, "hard", "month")
        budget_id = stored["id"]
        texts = cells(driver, f"tr[data-budget-id='{budget_id}'] td")
        assert texts[:3] == ["org, month (hard)", "$10.00", "$2.50"]
        assert texts[5] == stored["resets_at"][:16].replace("T", " ")
        assert "Globex" not in driver.page_source and "week (hard)" not in row.text
        # A second hard monthly budget on the organisation: refused, beside the period.
        fill(driver, {"usd": "20"})
        driver.find_element(By.ID, "create-budget").click()
        assert "exists already" in wait_for(driver, "#period-error").text
        assert len(budgets_of(db, "Acme")) == 1

        # Changed in place: a bad amount first, then a good one.
        fill(driver, {f"usd-{budget_id}": "lots"})
        driver.find_element(By.ID, f"save-{budget_id}").click()
        assert "Must be a number" in wait_for(driver, f"#budget-{budget_id}-usd-error").text
        assert budgets_of(db, "Acme")[0]["limit_usd"] == 10.0
        fill(driver, {f"usd-{budget_id}": "20", f"alert-at-{budget_id}": "25,100"})
        driver.find_element(By.ID, f"save-{budget_id}").click()
        settled(driver).until(
            lambda b: cells(b, f"tr[data-budget-id='{budget_id}'] td")[1] == "$20.00"
        )
        assert budgets_of(db, "Acme")[0]["limit_usd"] == 20.0
        assert open_db(db).execute(
            "select thresholds from budgets where id = ?", [budget_id]
        ).fetchone() == ("25,100",)

        # A rate limit.
        fill(driver, {"rpm": "600", "tpm": "x"})
        driver.find_element(By.ID, "set-limit").click()
        assert "whole number" in wait_for(driver, "#tpm-error").text
        fill(driver, {"tpm": ""})
        driver.find_element(By.ID, "set-limit").click()
        settled(driver).until(lambda b: cells(b, "#lm-limits tbody td")[:3] == ["org", "600", "—"])
        limits = json.loads(invoke(db, "limits", "list", "--json"))
        assert [(x["org"], x["rpm"], x["tpm"]) for x in limits] == [("Acme", 600, None)]

        # Another organisation's budget cannot be changed or removed from here.
        for action in ("remove", "edit"):
            status, body = post(
                driver, {"action": action, "id": str(globex_budget["id"]), "usd": "1"}
            )
            assert status == 400 and f"no budget {globex_budget['id']}" in body
        assert budgets_of(db, "Globex") == [globex_budget]
        screenshot(driver, "budgets-admin")

        # The overview shows the status, with its bar.
        driver.get(f"{base}/")
        overview = cells(driver, f"#lm-overview-budgets tr[data-budget-id='{budget_id}'] td")
        assert overview[:5] == ["org, month (hard)", "$20.00", "$2.50", "$0.00", "$17.50"]
        bar = driver.find_element(By.CSS_SELECTOR, "#lm-overview-budgets .lm-budget-spent")
        assert bar.get_attribute("style") == "width: 12.5%;"
        screenshot(driver, "budgets-overview")

        # A viewer reads them, and can change nothing.
        log_in(driver, base, VIEWER)
        driver.get(f"{base}/-/account/budgets")
        assert cells(driver, f"tr[data-budget-id='{budget_id}'] td")[1] == "$20.00"
        assert not driver.find_elements(By.ID, "create-budget")
        assert not driver.find_elements(By.ID, f"remove-{budget_id}")
        assert not driver.find_elements(By.ID, "set-limit")
        driver.get(f"{base}/")
        assert cells(driver, "#lm-overview-budgets tbody tr td")[1] == "$20.00"
        driver.get(f"{base}/-/account/members")  # a page with a CSRF token to post with
        status, body = post(driver, {"action": "remove", "id": str(budget_id)})
        assert status == 403 and "admin role" in body
        assert len(budgets_of(db, "Acme")) == 1

        # Globex's admin sees Globex's only, and cannot remove Acme's.
        log_in(driver, base, OTHER)
        driver.get(f"{base}/-/account/budgets")
        shown = [
            r.get_attribute("data-budget-id")
            for r in driver.find_elements(By.CSS_SELECTOR, "#lm-budgets tr[data-budget-id]")
        ]
        assert shown == [str(globex_budget["id"])]
        assert "Acme" not in driver.page_source and cells(driver, "#lm-limits tbody td") == [
            "No rate limits."
        ]
        status, body = post(driver, {"action": "remove", "id": str(budget_id)})
        assert status == 400 and f"no budget {budget_id}" in body
        status, _ = post(driver, {"action": "remove-limit", "id": str(limits[0]["id"])})
        assert status == 400
        assert len(budgets_of(db, "Acme")) == 1
        driver.get(f"{base}/")
        overview = cells(driver, "#lm-overview-budgets tbody tr td")
        assert overview[:2] == ["org, week (hard)", "$7.00"]

        # Acme's admin removes theirs.
        log_in(driver, base, ADMIN)
        driver.get(f"{base}/-/account/budgets")
        driver.find_element(By.ID, f"remove-{budget_id}").click()
        settled(driver).until(lambda b: cells(b, "#lm-budgets tbody td") == ["No budgets yet."])
        assert budgets_of(db, "Acme") == []
        driver.get(f"{base}/")
        assert not driver.find_elements(By.ID, "lm-overview-budgets")
    audit = (
        open_db(db)
        .execute(
            "select action from audit_log where org_id = ? "
            "and (action like 'budget.%' or action like 'limit.%') order by id",
            [acme["org_id"]],
        )
        .fetchall()
    )
    assert [a for (a,) in audit] == ["budget.set", "budget.change", "limit.set", "budget.remove"]


@pytest.mark.slow
def test_admins_manage_notification_urls_which_are_never_shown_in_full(
    tmp_path: Path,
    driver: WebDriver,  # noqa: F811
    receiver: Receiver,  # noqa: F811
) -> None:
    """With `dashboard --notify-urls`, an admin adds an organisation's notification URL
    from the budgets page (an invalid
    one is refused in one line beside the field, nothing stored, and not drawn again),
    sends a test to it and removes it; the URL is shown redacted only, to viewers too, and
    never reaches the page, the dashboard's log, the audit log or the database. Another
    organisation's admin neither sees nor removes it."""
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    acme = create_org(db, "Acme", ADMIN)
    create_org(db, "Globex", OTHER)
    store = open_db(db)
    add_member(
        store, acme["org_id"], create_person(store, VIEWER, hash_password(PASSWORD)), "viewer"
    )
    store.conn.close()
    port = receiver.server_address[1]
    secret_url = f"json://127.0.0.1:{port}/hook-s3cr3t-path"
    shown = f"json://127.0.0.1:{port}/…"
    log = tmp_path / "dashboard.log"

    def listed() -> list[dict]:
        return json.loads(invoke(db, "notify", "list", "--json"))

    # Without the operator's --notify-urls, admins only read them: the server would send
    # wherever an admin says (an internal address too).
    with running_dashboard(db, tmp_path / "plain.log") as base:
        log_in(driver, base, ADMIN)
        driver.get(f"{base}/-/account/budgets")
        assert "llm-monitor notify add" in driver.find_element(By.ID, "notify-by-operator").text
        assert not driver.find_elements(By.ID, "new-notify")
        for fields in (
            {"action": "notify-add", "notify_url": "json://127.0.0.1:9/x"},
            {"action": "notify-test"},
        ):
            status, body = post(driver, fields)
            assert status == 403 and "set by the operator" in body
        assert listed() == []

    with running_dashboard(db, log, extra=("--notify-urls",)) as base:
        log_in(driver, base, ADMIN)
        driver.get(f"{base}/-/account/budgets")
        assert cells(driver, "#lm-notify tbody td")[0].startswith("No notification URLs")

        # Invalid: one line beside the field, the field empty again, nothing stored.
        fill(driver, {"notify_url": "nonsense://what-s3cr3t"})
        driver.find_element(By.ID, "notify-add").click()
        error = wait_for(driver, "#notify_url-error")
        assert error.text == "Not a notification URL Apprise can use (see its list of services)"
        assert driver.find_element(By.ID, "notify_url").get_attribute("value") == ""
        assert "s3cr3t" not in driver.page_source
        assert listed() == []

        # Valid: listed redacted; a second time is refused.
        fill(driver, {"notify_url": secret_url})
        driver.find_element(By.ID, "notify-add").click()
        settled(driver).until(lambda b: cells(b, "#lm-notify tbody td")[0] == shown)
        assert [(t["org"], t["url"]) for t in listed()] == [("Acme", shown)]
        fill(driver, {"notify_url": secret_url})
        driver.find_element(By.ID, "notify-add").click()
        assert "already" in wait_for(driver, "#notify_url-error").text
        assert len(listed()) == 1
        target_id = listed()[0]["id"]

        # A test message, sent now to the receiver; the page says so, redacted.
        driver.find_element(By.ID, "notify-test").click()
        result = wait_for(driver, "#notify-results li")
        assert result.text == f"{target_id} {shown}: sent"
        assert [(m["title"], m["message"]) for m in receiver.received] == [
            ("LLM Monitor: test", "A test notification for Acme.")
        ]
        assert "s3cr3t" not in driver.page_source
        screenshot(driver, "budgets-notifications")

        # A viewer sees the redacted list, and can change nothing.
        log_in(driver, base, VIEWER)
        driver.get(f"{base}/-/account/budgets")
        assert cells(driver, "#lm-notify tbody td") == [shown]
        for control in ("notify-add", "notify-test", f"notify-remove-{target_id}"):
            assert not driver.find_elements(By.ID, control)
        for fields in (
            {"action": "notify-add", "notify_url": "json://127.0.0.1:9/x"},
            {"action": "notify-test"},
            {"action": "notify-remove", "id": str(target_id)},
        ):
            status, body = post(driver, fields)
            assert status == 403 and "admin role" in body
        assert len(listed()) == 1 and len(receiver.received) == 1

        # Globex's admin: none listed, and Acme's cannot be removed from there.
        log_in(driver, base, OTHER)
        driver.get(f"{base}/-/account/budgets")
        assert cells(driver, "#lm-notify tbody td")[0].startswith("No notification URLs")
        status, body = post(driver, {"action": "notify-remove", "id": str(target_id)})
        assert status == 400 and f"no notification URL {target_id}" in body
        assert len(listed()) == 1

        # Acme's admin removes it.
        log_in(driver, base, ADMIN)
        driver.get(f"{base}/-/account/budgets")
        driver.find_element(By.ID, f"notify-remove-{target_id}").click()
        settled(driver).until(
            lambda b: cells(b, "#lm-notify tbody td")[0].startswith("No notification URLs")
        )
        assert listed() == []
    audit = (
        open_db(db)
        .execute("select action, detail from audit_log where action like 'notify.%' order by id")
        .fetchall()
    )
    assert audit == [("notify.add", f"#{target_id}: {shown}"), ("notify.remove", f"#{target_id}")]
    # Stored nowhere but the private file, logged nowhere.
    assert b"s3cr3t" not in b"".join(
        p.read_bytes()
        for p in tmp_path.glob("llm-monitor.db*")
        if not p.name.endswith(".notify.json")
    )
    assert "s3cr3t" not in log.read_text()
