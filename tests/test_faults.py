"""Nothing is lost: disconnects, a dead or broken upstream, a locked database, SIGTERM."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import Proxy, free_port, row_for, running_proxy, wait_for_rows
from tests.replay import ReplayServer, Reply, load_recording

CHAT = load_recording("openai/chat_json_text_gpt-4o.json")
STREAM = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")


@pytest.fixture
def own_db(tmp_path: Path) -> tuple[Path, str]:
    db_path = tmp_path / "llm-monitor.db"
    invoke(db_path, "init")
    return db_path, new_org(db_path, "Faults")


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "X-Monitor-Token": token}


def test_client_disconnect_mid_stream_still_gets_a_row(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    reply = upstream.reply(Reply.from_recording(STREAM, seed=11, delay=0.05))
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=STREAM["request"]["body"],
        headers=headers(token),
    ) as response:
        received = b""
        for piece in response.iter_raw():
            received += piece
            if b"\n\n" in received:
                break  # one whole event, then hang up

    row = row_for(proxy.db_path, reply.request_id)
    assert (row["outcome"], row["status"], row["streamed"]) == ("client_disconnected", 200, 1)
    assert row["response_model"] == "gpt-4o-2024-08-06"  # read from the part that passed
    assert (row["input_tokens"], row["cost_usd"], row["priced"]) == (None, None, 0)


def test_client_gives_up_before_the_response_still_gets_a_row(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """The provider did the work (and bills it) even if the client stopped waiting."""
    upstream.reply(Reply.from_recording(CHAT, header_delay=1.5))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{proxy.base_url}/chat/completions",
            json=CHAT["request"]["body"],
            headers={**headers(token), "X-Monitor-User": "impatient"},
            timeout=0.3,
        )
    [row] = wait_for_rows(proxy.db_path, "user = ?", ("impatient",))
    assert (row["outcome"], row["model"], row["status"]) == ("client_disconnected", "gpt-4o", None)
    assert (row["cost_usd"], row["priced"]) == (None, 0)


def test_upstream_reset_mid_stream(token: str, upstream: ReplayServer, proxy: Proxy) -> None:
    reply = upstream.reply(Reply.from_recording(STREAM, seed=12, cut_after=10))
    client = openai.OpenAI(
        base_url=proxy.base_url,
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
    )
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(client.chat.completions.create(**STREAM["request"]["body"]))
    row = row_for(proxy.db_path, reply.request_id)
    assert (row["outcome"], row["status"]) == ("upstream_error", 200)
    assert row["error"]


def test_upstream_down(own_db: tuple[Path, str]) -> None:
    db_path, token = own_db
    with running_proxy(db_path, f"http://127.0.0.1:{free_port()}") as proxy:
        response = httpx.post(
            f"{proxy.base_url}/chat/completions",
            json=CHAT["request"]["body"],
            headers=headers(token),
        )
        [row] = wait_for_rows(db_path, "1")
    assert response.status_code == 502
    assert (row["outcome"], row["status"], row["model"]) == ("upstream_error", None, "gpt-4o")
    assert "connect" in row["error"].lower()
    assert (row["cost_usd"], row["priced"]) == (None, None)


def test_upstream_stalls_past_the_timeout(own_db: tuple[Path, str], upstream: ReplayServer) -> None:
    db_path, token = own_db
    reply = upstream.reply(Reply.from_recording(CHAT, delay=4))  # headers, then 4 s of silence
    with running_proxy(db_path, f"http://127.0.0.1:{upstream.port}", tcp_timeout=1) as proxy:
        client = openai.OpenAI(
            base_url=proxy.base_url,
            api_key=API_KEY,
            max_retries=0,
            default_headers={"X-Monitor-Token": token},
        )
        with pytest.raises(openai.APIError):
            client.chat.completions.create(**CHAT["request"]["body"])
        row = row_for(db_path, reply.request_id)
    assert (row["outcome"], row["status"]) == ("upstream_error", 200)
    assert "upstream silent" in row["error"]


def test_sigterm_with_requests_in_flight_loses_no_row(
    own_db: tuple[Path, str], upstream: ReplayServer
) -> None:
    db_path, token = own_db
    with running_proxy(
        db_path,
        f"http://127.0.0.1:{upstream.port}",
        monitor_token_refresh_ms=500,
        monitor_drain_seconds=0,  # no grace: what is cut is recorded (the drain: test_production)
    ) as proxy:
        done = [upstream.reply(Reply.from_recording(CHAT)) for _ in range(5)]
        with httpx.Client(headers=headers(token)) as http:
            for _ in done:
                http.post(f"{proxy.base_url}/chat/completions", json=CHAT["request"]["body"])
        in_flight = [
            upstream.reply(Reply.from_recording(STREAM, seed=i, delay=0.2)) for i in range(5)
        ]

        def stream_one() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"{proxy.base_url}/chat/completions",
                    json=STREAM["request"]["body"],
                    headers=headers(token),
                    timeout=30,
                ) as response:
                    for _ in response.iter_raw():
                        pass
            except httpx.HTTPError:
                pass  # the proxy went away under us: expected

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(stream_one) for _ in in_flight]
            for _ in range(10):  # all ten requests reached the upstream
                upstream.take_received()
            time.sleep(0.3)
            assert proxy.terminate() == 0
            concurrent.futures.wait(futures)

    found = {r["request_id"]: r for r in wait_for_rows(db_path, "1", count=10, timeout=2)}
    assert {r.request_id for r in done} <= found.keys()
    assert all(found[r.request_id]["outcome"] == "ok" for r in done)
    print({r.request_id: found.get(r.request_id, {}).get("outcome") for r in in_flight})
    assert len(found) == 10
    assert {found.get(r.request_id, {}).get("outcome") for r in in_flight} <= {
        "ok",
        "client_disconnected",
        "upstream_error",
        "proxy_shutdown",
    }


@pytest.mark.parametrize(
    ("label", "reply", "outcome"),
    [
        ("malformed JSON", Reply(200, b'{"id": "x", "usage": {"prompt_tokens": 1'), "ok"),
        (
            "truncated SSE",
            Reply(200, STREAM["response"]["body_text"].encode()[:700], "text/event-stream", seed=3),
            "upstream_error",
        ),
        ("HTML error page", Reply(502, b"<html>Bad gateway</html>", "text/html"), "provider_error"),
    ],
)
def test_odd_upstream_bodies_pass_through_and_get_a_row(
    label: str, reply: Reply, outcome: str, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    upstream.reply(reply)
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json=STREAM["request"]["body"] if "SSE" in label else CHAT["request"]["body"],
        headers=headers(token),
    )
    assert response.status_code == reply.status
    assert response.content == reply.body  # passed on as it came, whatever it is
    row = row_for(proxy.db_path, reply.request_id)
    assert (row["status"], row["outcome"], row["input_tokens"]) == (reply.status, outcome, None)
    assert row["priced"] == (None if reply.status >= 300 else 0)  # 2xx: billable, unknown


def test_client_disconnect_while_sending_the_body(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """A request cut off mid-body never reaches the provider, and nothing breaks."""
    import socket

    connections = upstream.connections
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
            b"X-Monitor-Token: " + token.encode() + b'\r\n\r\n{"model": "gpt'
        )
    time.sleep(0.5)
    assert upstream.received.empty() and upstream.connections == connections
    reply = upstream.reply(Reply.from_recording(CHAT))  # and the proxy still serves
    assert (
        httpx.post(
            f"{proxy.base_url}/chat/completions",
            json=CHAT["request"]["body"],
            headers=headers(token),
        ).status_code
        == 200
    )
    row_for(proxy.db_path, reply.request_id)


def traffic_through_outage(
    proxy: Proxy, token: str, upstream: ReplayServer, count: int
) -> tuple[str, tuple[str, ...]]:
    """While the database cannot be written: every request is served, the outage is logged
    (anew), and no row has landed. Returns the rows' WHERE clause and parameters."""
    outages = proxy.log().count("cannot write usage")
    replies = [upstream.reply(Reply.from_recording(CHAT)) for _ in range(count)]
    with httpx.Client(headers=headers(token)) as http:
        statuses = [
            http.post(
                f"{proxy.base_url}/chat/completions", json=CHAT["request"]["body"]
            ).status_code
            for _ in replies
        ]
    assert statuses == [200] * count
    deadline = time.monotonic() + 10
    while proxy.log().count("cannot write usage") == outages:
        assert time.monotonic() < deadline, "the recorder never met the outage"
        time.sleep(0.05)
    ids = tuple(r.request_id for r in replies)
    where = f"request_id in ({','.join('?' * len(ids))})"
    assert wait_for_rows(proxy.db_path, where, ids, timeout=0) == []
    return where, ids


def assert_rows_land(proxy: Proxy, where: str, ids: tuple[str, ...]) -> None:
    found = wait_for_rows(proxy.db_path, where, ids, count=len(ids))
    assert {r["request_id"] for r in found} == set(ids)


@pytest.mark.parametrize("seconds", [2.0, 5.0])
def test_database_locked_under_traffic_loses_no_row(
    seconds: float, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """Traffic flows while another writer holds the lock; the rows land once it lets go."""
    locker = sqlite3.connect(proxy.db_path, timeout=5, isolation_level=None)
    locker.execute("begin exclusive")
    locked_at = time.monotonic()
    try:
        where, ids = traffic_through_outage(proxy, token, upstream, 40)
        time.sleep(max(0.0, seconds - (time.monotonic() - locked_at)))
    finally:
        locker.execute("rollback")
        locker.close()
    assert_rows_land(proxy, where, ids)


def test_full_disk_holds_rows_until_space_returns(
    own_db: tuple[Path, str], upstream: ReplayServer
) -> None:
    """The proxy's file-size limit is lowered below the database's size (writes fail as on
    a full disk: EFBIG, SQLITE_FULL); traffic goes on; the rows land once it is lifted."""
    db_path, token = own_db
    with running_proxy(db_path, f"http://127.0.0.1:{upstream.port}") as proxy:
        pid = str(proxy.process.pid)
        subprocess.run(["prlimit", "--pid", pid, "--fsize=4096:unlimited"], check=True)
        try:
            where, ids = traffic_through_outage(proxy, token, upstream, 30)
        finally:
            subprocess.run(["prlimit", "--pid", pid, "--fsize=unlimited"], check=True)
        assert_rows_land(proxy, where, ids)


def test_read_only_database_holds_rows_until_writable(
    own_db: tuple[Path, str], upstream: ReplayServer
) -> None:
    """The database made immutable (chattr +i: read-only even for root) under traffic."""
    db_path, token = own_db
    with running_proxy(db_path, f"http://127.0.0.1:{upstream.port}") as proxy:
        files = [str(db_path), f"{db_path}-wal"]
        if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        try:
            where, ids = traffic_through_outage(proxy, token, upstream, 20)
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
        assert_rows_land(proxy, where, ids)
