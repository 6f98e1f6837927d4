"""Monitor tokens, attribution headers, and keys that must never leave a trace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import Proxy, row_for, rows
from tests.replay import ReplayServer, Reply, load_recording

CHAT = load_recording("openai/chat_json_text_gpt-4o.json")


def post_chat(proxy: Proxy, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{proxy.base_url}/chat/completions",
        json=CHAT["request"]["body"],
        headers={"Authorization": f"Bearer {API_KEY}", **headers},
    )


@pytest.mark.parametrize(
    "bad_token",
    [
        None,
        "",
        "mon_" + "x" * 43,
        "sk-not-a-monitor-token",
        "mon_" + "a" * 5000,
        "mon_\u00e9\u00e9",
    ],
    ids=["missing", "empty", "unknown", "wrong-prefix", "oversized", "non-ascii"],
)
def test_bad_token_is_401_and_never_reaches_the_provider(
    bad_token: str | None, upstream: ReplayServer, proxy: Proxy
) -> None:
    connections = upstream.connections
    headers = {} if bad_token is None else {"X-Monitor-Token": bad_token}

    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json=CHAT["request"]["body"],
        headers={
            "Authorization": f"Bearer {API_KEY}",
            **{k: v.encode() for k, v in headers.items()},
        },
    )

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_monitor_token" and "X-Monitor-Token" in error["message"]
    assert error["type"] == "invalid_request_error"
    time.sleep(0.2)
    assert upstream.connections == connections  # not even a TCP connect
    assert upstream.received.empty()


def test_sdk_shows_the_rejection_cleanly(proxy: Proxy) -> None:
    client = openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(**CHAT["request"]["body"])
    assert "Missing X-Monitor-Token header" in str(raised.value)


def test_revoked_token_stops_within_five_seconds(
    shared_db: Path, upstream: ReplayServer, proxy: Proxy
) -> None:
    token = json.loads(
        invoke(shared_db, "tokens", "create", "--org", "Acme", "--name", "short-lived", "--json")
    )
    deadline = time.monotonic() + 5
    while True:  # a new token is picked up within the refresh interval too
        upstream.reply(Reply.from_recording(CHAT))
        status = post_chat(proxy, {"X-Monitor-Token": token["token"]}).status_code
        if status == 200 or time.monotonic() > deadline:
            break
        upstream.reset()
        time.sleep(0.1)
    assert status == 200

    invoke(shared_db, "tokens", "revoke", str(token["token_id"]))
    revoked_at = time.monotonic()
    upstream.reset()
    while post_chat(proxy, {"X-Monitor-Token": token["token"]}).status_code != 401:
        assert time.monotonic() - revoked_at < 5, "revoked token still accepted after 5 s"
        upstream.reset()
        upstream.reply(Reply.from_recording(CHAT))
        time.sleep(0.1)


def test_monitor_headers_are_removed_and_provider_headers_kept(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    reply = upstream.reply(Reply.from_recording(CHAT))
    response = post_chat(
        proxy,
        {
            "X-Monitor-Token": token,
            "X-Monitor-User": "alice@acme",
            "X-Monitor-Tags": "team=search, env=prod",
            "OpenAI-Organization": "org-123",
        },
    )
    assert response.status_code == 200

    received = upstream.take_received()
    assert not [h for h in received.headers if h.startswith("x-monitor")]
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.headers["openai-organization"] == "org-123"
    assert received.path == "/v1/chat/completions"
    assert received.json() == CHAT["request"]["body"]
    row = row_for(proxy.db_path, reply.request_id)
    assert row["user"] == "alice@acme"
    assert json.loads(row["tags"]) == {"env": "prod", "team": "search"}


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Monitor-Tags", "no-equals-sign"),
        ("X-Monitor-Tags", "k=v," * 300),
        ("X-Monitor-Tags", "bad key=v"),
        ("X-Monitor-User", "u" * 300),
    ],
)
def test_bad_attribution_header_is_a_clear_400(
    header: str, value: str, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    response = post_chat(proxy, {"X-Monitor-Token": token, header: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_monitor_header" and header in error["message"]
    assert upstream.received.empty()


def test_sql_looking_attribution_is_stored_inertly(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    user = "x'); drop table usage; --"
    reply = upstream.reply(Reply.from_recording(CHAT))
    post_chat(
        proxy,
        {"X-Monitor-Token": token, "X-Monitor-User": user, "X-Monitor-Tags": "q=1' or '1'='1"},
    )
    row = row_for(proxy.db_path, reply.request_id)
    assert row["user"] == user
    assert json.loads(row["tags"]) == {"q": "1' or '1'='1"}


def test_provider_key_never_stored_or_logged(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    stream = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")
    replies = [
        upstream.reply(Reply.from_recording(CHAT)),
        upstream.reply(Reply.from_recording(stream, seed=1)),
    ]
    client = openai.OpenAI(
        base_url=proxy.base_url,
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token, "api-key": API_KEY},
    )
    client.chat.completions.create(**CHAT["request"]["body"])
    list(client.chat.completions.create(**stream["request"]["body"]))
    for reply in replies:
        row_for(proxy.db_path, reply.request_id)

    files = [p for p in proxy.db_path.parent.iterdir() if p.name.startswith(proxy.db_path.name)]
    assert {p.name for p in files} >= {"llm-monitor.db", "llm-monitor.db-wal"}
    for path in [*files, proxy.log_path]:
        assert API_KEY.encode() not in path.read_bytes(), f"API key found in {path.name}"
    assert token.encode() not in proxy.db_path.read_bytes()  # tokens only as hashes


def test_rows_belong_to_the_token_s_organisation(
    shared_db: Path, upstream: ReplayServer, proxy: Proxy
) -> None:
    other = new_org(shared_db, "Globex")
    time.sleep(1.5)  # the proxy picks up new tokens within its 1 s refresh
    reply = upstream.reply(Reply.from_recording(CHAT))
    assert post_chat(proxy, {"X-Monitor-Token": other}).status_code == 200
    row = row_for(shared_db, reply.request_id)
    [org] = [
        r for r in json.loads(invoke(shared_db, "orgs", "list", "--json")) if r["name"] == "Globex"
    ]
    assert row["org_id"] == org["id"]
    assert rows(shared_db, "org_id = ?", (org["id"],)) == [row]


@pytest.mark.parametrize(
    "header_line",
    [
        b"X-Monitor-User: evil\x1b[2J\x07",
        b"X-Monitor-Tags: a=b\x00c",
        b"X-Monitor-User: \xff\xfe",
        b"X-Monitor-Tags: team=x\r\n X-Folded: y",
    ],
    ids=["escape-codes", "nul", "not-utf8", "folded-line"],
)
def test_header_injection_attempts_never_reach_the_provider_or_a_500(
    header_line: bytes, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """Raw bytes no HTTP library would send: refused (400) by the addon or by mitmproxy."""
    import socket

    body = json.dumps(CHAT["request"]["body"]).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Monitor-Token: " + token.encode() + b"\r\n" + header_line + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request)
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"400", status_line
    assert upstream.received.empty()
