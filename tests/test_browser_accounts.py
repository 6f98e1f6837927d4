"""Accounts in a real headless Chromium, end to end: sign up, see the monitor token once,
send a request through the real proxy with it, see it on the dashboard; invite a second
person, who accepts and, as a viewer, cannot create a token; revoke the token in the
browser and see the proxy refuse it within about a second.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import API_KEY, invoke
from tests.proxy import row_for, running_dashboard, running_proxy
from tests.replay import ReplayServer, Reply, load_recording
from tests.test_browser import driver, screenshot  # noqa: F401 (a fixture)

OWNER, VIEWER, PASSWORD = "owner@new.example", "viewer@new.example", "a-long-password"


def fill(browser: WebDriver, fields: dict[str, str]) -> None:
    for field, value in fields.items():
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)


def wait_for(browser: WebDriver, css: str, seconds: float = 10) -> object:
    return WebDriverWait(browser, seconds).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, css) and b.find_element(By.CSS_SELECTOR, css)
    )


@pytest.mark.slow
def test_sign_up_invite_and_revoke_in_the_browser(
    tmp_path: Path,
    driver: WebDriver,  # noqa: F811
    upstream: ReplayServer,
) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    with running_proxy(db, f"http://127.0.0.1:{upstream.port}") as proxy:
        extra = ("--allow-signup", "--listener", f"openai={proxy.port}")
        with running_dashboard(db, tmp_path / "dashboard.log", extra=extra) as base:
            # Sign up: the token is shown once, with a snippet for this proxy.
            driver.get(f"{base}/-/signup")
            fill(driver, {"name": "Newco", "email": OWNER, "password": PASSWORD})
            driver.find_element(By.ID, "signup").click()
            token = wait_for(driver, "#lm-new-token").text
            assert token.startswith("mon_")
            snippet = driver.find_element(By.CSS_SELECTOR, ".lm-snippet pre").text
            assert f"http://127.0.0.1:{proxy.port}/v1" in snippet and token in snippet
            screenshot(driver, "account-signup-token")

            # A request through the proxy with it, seen on the dashboard.
            recording = load_recording("openai/chat_json_text_gpt-4o.json")
            reply = upstream.reply(Reply.from_recording(recording))
            client = openai.OpenAI(
                base_url=proxy.base_url,
                api_key=API_KEY,
                max_retries=0,
                default_headers={"X-Monitor-Token": token},
            )
            # A new token works once the proxy's token index reloads (every second).
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.chat.completions.create(**recording["request"]["body"])
                    break
                except openai.AuthenticationError:
                    assert time.monotonic() < deadline, "the proxy never accepted the new token"
                    time.sleep(0.05)
            row = row_for(db, reply.request_id)
            driver.get(f"{base}/llm-monitor/request?id={row['id']}")
            assert (
                recording["request"]["body"]["model"]
                in driver.find_element(By.TAG_NAME, "main").text
            )
            driver.get(f"{base}/-/account/tokens")
            requests_cell = wait_for(driver, "#lm-tokens tbody tr td.num")
            assert requests_cell.text == "1"

            # Invite a viewer; the link is shown once.
            driver.get(f"{base}/-/account/members")
            driver.find_element(By.ID, "invite").click()
            link = wait_for(driver, "#lm-invite-link").text
            assert "/-/invite/inv_" in link

            # The second person accepts, and as a viewer cannot create a token.
            driver.delete_all_cookies()
            driver.get(link)
            fill(driver, {"email": VIEWER, "password": PASSWORD})
            driver.find_element(By.ID, "accept").click()
            WebDriverWait(driver, 10).until(lambda b: b.current_url == f"{base}/")
            driver.get(f"{base}/-/account/tokens")
            assert wait_for(driver, "#lm-role").text == "viewer"
            assert not driver.find_elements(By.ID, "create-token")
            assert not driver.find_elements(By.CSS_SELECTOR, "a.lm-revoke")
            refused = driver.execute_async_script(
                """const done = arguments[arguments.length - 1];
                const csrf = document.cookie.match(/ds_csrftoken=([^;]+)/)[1];
                fetch('/api/tokens', {method: 'POST', headers: {'content-type':
                  'application/json', 'x-csrftoken': csrf}, body: '{"name": "mine"}'})
                  .then(r => done(r.status));"""
            )
            assert refused == 403
            screenshot(driver, "account-viewer-tokens")

            # The owner revokes the token in the browser; the proxy refuses it at once.
            driver.delete_all_cookies()
            driver.get(f"{base}/-/login")
            fill(driver, {"email": OWNER, "password": PASSWORD})
            driver.find_element(By.CSS_SELECTOR, "form input[type=submit]").click()
            WebDriverWait(driver, 10).until(lambda b: b.current_url == f"{base}/")
            driver.get(f"{base}/-/account/tokens")
            driver.find_element(By.CSS_SELECTOR, "a.lm-revoke").click()
            wait_for(driver, "#confirm-revoke").click()
            revoked_at = time.monotonic()
            WebDriverWait(driver, 10).until(lambda b: "revoked" in b.page_source)
            headers = {"X-Monitor-Token": token, "Authorization": f"Bearer {API_KEY}"}
            body = recording["request"]["body"]
            while True:
                response = httpx.post(
                    f"{proxy.base_url}/chat/completions", json=body, headers=headers
                )
                if response.status_code == 401:
                    break
                assert time.monotonic() - revoked_at < 5, "the proxy still accepts the token"
                time.sleep(0.05)
            took = time.monotonic() - revoked_at
            print(f"proxy refused the revoked token {took:.2f} s after the click")
            screenshot(driver, "account-owner-revoked")
    audit = invoke(db, "members", "list", "--org", "Newco")
    assert OWNER in audit and VIEWER in audit
