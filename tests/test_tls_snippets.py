"""The token pages' SDK snippets point at the listeners as clients must reach them:
https:// with `up --tls-cert`, http:// without. And what `up --tls-cert` speaks: HTTP/1.1
only (HAProxy offers no ALPN, so an HTTP/2 client falls back; the proxy behind it would
refuse HTTP/2 in clear text)."""

from __future__ import annotations

import html
import re
import ssl
from pathlib import Path

import httpx
import pytest

from tests.conftest import invoke
from tests.proxy import running_dashboard, wait_for_port
from tests.replay import ReplayServer
from tests.test_production_errors import h2_client
from tests.test_up import HAPROXY, start_up
from tests.test_up_rolling_tls import self_signed


def sign_up(browser: httpx.Client) -> str:
    """Sign up through the form; the page that shows the new token, unescaped."""
    page = browser.get("/-/signup")
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
    form = {
        "name": "Initech",
        "email": "owner@i.example",
        "password": "correct horse battery staple",
        "csrftoken": csrf,
    }
    made = browser.post("/-/signup", data=form)
    assert made.status_code == 201, made.text
    return html.unescape(made.text)


def test_dashboard_snippets_say_https_when_the_listeners_serve_it(tmp_path: Path) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    extra = ("--allow-signup", "--https-listeners", "--listener", "openai=9443")
    with (
        running_dashboard(db, tmp_path / "d.log", extra=extra) as base,
        httpx.Client(base_url=base) as browser,
    ):
        shown = sign_up(browser)
    assert 'base_url="https://127.0.0.1:9443/v1"' in shown
    assert "http://127.0.0.1:9443" not in shown


@pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed")
def test_up_with_tls_cert_shows_https_snippets(tmp_path: Path, upstream: ReplayServer) -> None:
    server_pem, ca = self_signed(tmp_path)
    up = start_up(tmp_path, upstream, "--tls-cert", str(server_pem), "--allow-signup")
    trusted = ssl.create_default_context(cafile=str(ca))
    try:
        wait_for_port(up.dashboard_port, up.process, up.log)
        base = f"https://127.0.0.1:{up.dashboard_port}"
        with httpx.Client(base_url=base, verify=trusted) as browser:
            shown = sign_up(browser)
        with h2_client() as client:  # prefers h2, as curl and Go clients do
            answer = client.get(
                f"https://127.0.0.1:{up.port}/v1/models",
                headers={"X-Monitor-Token": "mon_not-a-token"},
            )
    finally:
        assert up.stop() == 0
    assert f'base_url="https://127.0.0.1:{up.port}/v1"' in shown
    assert f"http://127.0.0.1:{up.port}" not in shown
    assert (answer.http_version, answer.status_code) == ("HTTP/1.1", 401)
