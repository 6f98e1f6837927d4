"""Alerts raised through running proxies and delivered to a local json:// receiver: a
budget threshold crossed by real requests, and a runaway loop (the same body sent 20
times from one token, through two proxy processes on one database, each evaluating
alerts every second), each delivered exactly once."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from llm_monitor.controls.loops import body_digest
from llm_monitor.store.database import open_db
from tests.conftest import API_KEY, invoke, new_org, set_budget
from tests.proxy import Proxy, running_proxy, wait_for_rows
from tests.replay import ReplayServer, Reply, load_recording
from tests.test_alerts import Receiver, receiver  # noqa: F401 (a fixture)

RECORDING = "openai/chat_json_text_gpt-4o.json"


def body(text: str) -> bytes:
    recording = load_recording(RECORDING)
    request = recording["request"]["body"]
    return json.dumps({**request, "messages": [{"role": "user", "content": text}]}).encode()


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_threshold_and_a_loop_are_each_delivered_once(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LLM_MONITOR_LOOP_REQUESTS", "LLM_MONITOR_LOOP_MINUTES"):
        monkeypatch.delenv(name, raising=False)  # the defaults: 20 within 10 minutes
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    token = new_org(db, "Acme")
    invoke(db, "notify", "add", "--org", "Acme", receiver.url)
    recording = load_recording(RECORDING)
    headers = {
        "X-Monitor-Token": token,
        "Authorization": f"Bearer {API_KEY}",
        "content-type": "application/json",
    }
    with (
        ReplayServer() as upstream,
        running_proxy(db, f"http://127.0.0.1:{upstream.port}", monitor_alerts_seconds=1) as a,
        running_proxy(db, f"http://127.0.0.1:{upstream.port}", monitor_alerts_seconds=1) as b,
    ):

        def send(proxy: Proxy, content: bytes) -> None:
            reply = upstream.reply(Reply.from_recording(recording))
            response = httpx.post(
                f"{proxy.base_url}/chat/completions", content=content, headers=headers
            )
            assert response.status_code == 200, response.text
            wait_for_rows(db, "request_id = ?", (reply.request_id,))

        # One request's cost tells what a soft budget of three requests is; the second
        # request crosses its 50%.
        send(a, body("first"))
        [cost] = open_db(db).execute("select cost_usd from usage").fetchone()
        assert cost > 0
        usd = math.ceil(3 * cost * 1e9) / 1e9
        set_budget(db, f"{usd:.9f}", "--soft", "--alert-at", "50")
        time.sleep(2.5)  # two evaluations at 33%: nothing
        assert receiver.received == []
        send(b, body("second"))
        wait_for(lambda: len(receiver.received) == 1)
        assert "reached 50%" in receiver.received[0]["message"]

        # A loop: the same body 20 times, half through each proxy.
        same = body("do it again")
        for i in range(20):
            send((a, b)[i % 2], same)
        wait_for(lambda: len(receiver.received) == 2)
        time.sleep(3)  # three more evaluations in each proxy: nothing more is sent
        titles = sorted(r["title"] for r in receiver.received)
        assert titles == ["LLM Monitor: budget", "LLM Monitor: runaway loop"]
        loop = next(r for r in receiver.received if r["title"].endswith("runaway loop"))
        assert "monitor token 1 sent the same request body 20 times" in loop["message"]

    store = open_db(db)
    digests = store.execute(
        "select body_digest, count(*) from usage group by 1 order by 2 desc"
    ).fetchall()
    assert digests[0] == (body_digest(same), 20)
    assert len(digests) == 3  # first, second, and the loop's
    alerts = store.execute(
        "select kind, threshold, delivered_at is not null, attempts from alerts order by id"
    ).fetchall()
    assert alerts == [("budget", "50%", 1, 1), ("runaway_loop", "20/10m", 1, 1)]
    assert store.execute("select count(*), sum(ok) from alert_deliveries").fetchone() == (2, 2)
