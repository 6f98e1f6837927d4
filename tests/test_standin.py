"""The demo's stand-in provider and traffic, through a real mitmdump with the addon.

The official openai and anthropic SDKs (and httpx for Gemini) talk to the stand-in through
the proxy; what lands in SQLite must be the usage the stand-in reported, priced. Then the
demo's traffic, over two organisations, must give one row per request.
"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llm_monitor.demo.standin import StandinProvider, implicit_cache, prompt_tokens
from llm_monitor.demo.traffic import UNPRICED_MODEL, plan_traffic, send_traffic
from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import Proxy, row_for, running_proxy, wait_for_rows

PROVIDERS = ("openai", "anthropic", "gemini")
QUESTION = "What is 4200 + 42?"  # 18 characters: 5 tokens
LONG_PROMPT = "Summarise the ticket. " * 400  # 8,800 characters: 2,200 tokens, 1,536 cached
TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinProvider]:
    with StandinProvider(latency_scale=0) as server:
        yield server


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db_path = tmp_path_factory.mktemp("standin") / "llm-monitor.db"
    invoke(db_path, "init")
    return db_path


@pytest.fixture(scope="module")
def tokens(db_path: Path) -> dict[str, str]:
    """Created before the proxy starts, so that it knows them from its first request."""
    return {name: new_org(db_path, name) for name in ("Acme", "Globex", "Initech")}


@pytest.fixture(scope="module")
def proxy(db_path: Path, standin: StandinProvider, tokens: dict[str, str]) -> Iterator[Proxy]:
    with running_proxy(db_path, standin.url, providers=PROVIDERS) as running:
        yield running


@pytest.fixture
def gpt(proxy: Proxy, tokens: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.url('openai')}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": tokens["Acme"]},
    )


@pytest.fixture
def claude(proxy: Proxy, tokens: dict[str, str]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.url("anthropic"),
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": tokens["Acme"]},
    )


def tokens_of(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in TOKEN_FIELDS}


def cost(*terms: tuple[int, str]) -> float:
    """USD for (tokens, USD per 1M tokens) pairs, as the recorder computes it."""
    return float(sum(Decimal(n) * Decimal(rate) for n, rate in terms) / 1_000_000)


def org_id(db_path: Path, name: str) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("select id from orgs where name = ?", (name,)).fetchone()[0]


# OpenAI ----------------------------------------------------------------------------------


def test_openai_chat_json_is_recorded_priced(gpt: openai.OpenAI, proxy: Proxy) -> None:
    raw = gpt.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": QUESTION}]
    )
    usage = raw.parse().usage
    assert usage.prompt_tokens == prompt_tokens(QUESTION) == 5
    assert usage.completion_tokens_details.reasoning_tokens == 0

    row = row_for(proxy.db_path, raw.headers["x-request-id"])
    assert tokens_of(row) == {
        "input_tokens": 5,
        "cached_input_tokens": 0,
        "cache_write_tokens": None,
        "output_tokens": usage.completion_tokens,
        "reasoning_tokens": 0,
        "total_tokens": 5 + usage.completion_tokens,
    }
    assert (row["model"], row["response_model"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert (row["outcome"], row["priced"]) == ("ok", 1)
    assert row["cost_usd"] == pytest.approx(cost((5, "2.50"), (usage.completion_tokens, "10.00")))


def test_openai_reasoning_and_cached_prompt(gpt: openai.OpenAI, proxy: Proxy) -> None:
    raw = gpt.chat.completions.with_raw_response.create(
        model="gpt-5", messages=[{"role": "user", "content": LONG_PROMPT}]
    )
    usage = raw.parse().usage
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0

    row = row_for(proxy.db_path, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["cached_input_tokens"]) == (2200, 1536)
    assert implicit_cache(2200) == 1536
    assert (row["output_tokens"], row["reasoning_tokens"]) == (usage.completion_tokens, reasoning)
    assert row["priced"] == 1
    expected = cost((2200 - 1536, "1.25"), (1536, "0.125"), (usage.completion_tokens, "10.00"))
    assert row["cost_usd"] == pytest.approx(expected)


def test_openai_streams_with_and_without_include_usage(gpt: openai.OpenAI, proxy: Proxy) -> None:
    """The same request, whole and streamed, gets the same figures; a stream that did not ask
    for usage still has its row's usage, and the client never sees the injected chunk."""
    messages = [{"role": "user", "content": "Name three primes."}]
    whole = gpt.chat.completions.with_raw_response.create(model="o4-mini", messages=messages)
    whole_row = row_for(proxy.db_path, whole.headers["x-request-id"])
    text = whole.parse().choices[0].message.content

    injected = gpt.chat.completions.create(model="o4-mini", messages=messages, stream=True)
    chunks = list(injected)
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    row = row_for(proxy.db_path, injected.response.headers["x-request-id"])
    assert (row["streamed"], row["usage_injected"], row["outcome"]) == (1, 1, "ok")
    assert tokens_of(row) == tokens_of(whole_row)
    assert row["reasoning_tokens"] > 0

    asked = gpt.chat.completions.create(
        model="o4-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    last = list(asked)[-1]
    assert last.choices == []
    row = row_for(proxy.db_path, asked.response.headers["x-request-id"])
    assert row["usage_injected"] == 0
    assert tokens_of(row) == tokens_of(whole_row)
    assert row["output_tokens"] == last.usage.completion_tokens
    assert row["priced"] == 1


def test_openai_length_cap_embeddings_and_responses(gpt: openai.OpenAI, proxy: Proxy) -> None:
    capped = gpt.chat.completions.with_raw_response.create(
        model="gpt-5-mini", messages=[{"role": "user", "content": QUESTION}], max_tokens=20
    )
    assert capped.parse().choices[0].finish_reason == "length"
    assert row_for(proxy.db_path, capped.headers["x-request-id"])["output_tokens"] == 20

    texts = ["hello", "a longer sentence to embed"]  # 5 and 26 characters: 2 + 7 tokens
    embedded = gpt.embeddings.with_raw_response.create(model="text-embedding-3-small", input=texts)
    assert len(embedded.parse().data[1].embedding) == 1536
    row = row_for(proxy.db_path, embedded.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["priced"]) == (9, None, 1)

    answered = gpt.responses.with_raw_response.create(model="gpt-5.5", input=QUESTION)
    usage = answered.parse().usage
    row = row_for(proxy.db_path, answered.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (5, usage.output_tokens)
    assert row["reasoning_tokens"] == usage.output_tokens_details.reasoning_tokens > 0
    assert (row["response_model"], row["priced"]) == ("gpt-5.5-2026-04-23", 1)

    stream = gpt.responses.create(model="gpt-5.5", input=QUESTION, stream=True)
    final = list(stream)[-1]
    assert final.type == "response.completed"
    row = row_for(proxy.db_path, stream.response.headers["x-request-id"])
    assert (row["streamed"], row["output_tokens"]) == (1, usage.output_tokens)


# Anthropic -------------------------------------------------------------------------------


def test_anthropic_cache_write_then_read(claude: anthropic.Anthropic, proxy: Proxy) -> None:
    system = [{"type": "text", "text": LONG_PROMPT, "cache_control": {"type": "ephemeral"}}]
    first = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        system=system,
        messages=[{"role": "user", "content": QUESTION}],
    )
    usage = first.parse().usage
    assert (usage.cache_creation_input_tokens, usage.input_tokens) == (2200, 5)
    row = row_for(proxy.db_path, first.headers["request-id"])
    assert tokens_of(row) == {
        "input_tokens": 2205,
        "cached_input_tokens": 0,
        "cache_write_tokens": 2200,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": None,
        "total_tokens": None,
    }
    expected = cost((5, "3"), (2200, "3.75"), (usage.output_tokens, "15"))
    assert (row["priced"], row["cost_usd"]) == (1, pytest.approx(expected))

    later_turn = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "4242"},
        {"role": "user", "content": "And doubled?"},
    ]
    stream = claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=2048,
        system=system,
        messages=later_turn,
        thinking={"type": "enabled", "budget_tokens": 1024},
        stream=True,
    )
    events = list(stream)
    assert (events[0].type, events[-1].type) == ("message_start", "message_stop")
    assert events[1].content_block.type == "thinking"
    output_tokens = next(e for e in events if e.type == "message_delta").usage.output_tokens
    row = row_for(proxy.db_path, stream.response.headers["request-id"])
    assert (row["cached_input_tokens"], row["cache_write_tokens"]) == (2200, 0)
    assert row["input_tokens"] == 2200 + prompt_tokens([QUESTION, "4242", "And doubled?"])
    assert (row["output_tokens"], row["streamed"], row["priced"]) == (output_tokens, 1, 1)


# Gemini ----------------------------------------------------------------------------------


def test_gemini_json_sse_and_json_array(proxy: Proxy, tokens: dict[str, str]) -> None:
    base = f"{proxy.url('gemini')}/v1beta/models/gemini-2.5-flash"
    body = {"contents": [{"role": "user", "parts": [{"text": LONG_PROMPT}]}]}
    headers = {"X-Monitor-Token": tokens["Acme"], "x-goog-api-key": API_KEY}
    with httpx.Client(headers=headers, timeout=10) as client:
        whole = client.post(
            f"{base}:generateContent", json=body, headers={"X-Monitor-User": "gemini-json"}
        ).json()["usageMetadata"]
        with client.stream(
            "POST",
            f"{base}:streamGenerateContent?alt=sse",
            json=body,
            headers={"X-Monitor-User": "gemini-sse"},
        ) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line]
        array = client.post(
            f"{base}:streamGenerateContent", json=body, headers={"X-Monitor-User": "gemini-array"}
        ).json()
    assert events[-1]["usageMetadata"] == array[-1]["usageMetadata"] == whole
    assert whole["cachedContentTokenCount"] == 1536 and whole["thoughtsTokenCount"] > 0
    expected = {
        "input_tokens": 2200,
        "cached_input_tokens": 1536,
        "cache_write_tokens": None,
        "output_tokens": whole["candidatesTokenCount"] + whole["thoughtsTokenCount"],
        "reasoning_tokens": whole["thoughtsTokenCount"],
        "total_tokens": whole["totalTokenCount"],
    }
    for user, streamed in (("gemini-json", 0), ("gemini-sse", 1), ("gemini-array", 1)):
        [row] = wait_for_rows(proxy.db_path, "user = ?", (user,))
        assert tokens_of(row) == expected
        assert (row["streamed"], row["outcome"], row["priced"]) == (streamed, "ok", 1)


# Errors ----------------------------------------------------------------------------------


def test_errors_on_demand_in_each_providers_shape(
    gpt: openai.OpenAI, claude: anthropic.Anthropic, proxy: Proxy, tokens: dict[str, str]
) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        gpt.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": QUESTION}],
            extra_headers={"X-Standin-Status": "429"},
        )
    row = row_for(proxy.db_path, raised.value.response.headers["x-request-id"])
    assert (row["status"], row["outcome"]) == (429, "provider_error")
    assert row["error"] == "rate_limit_exceeded"
    assert (row["priced"], row["cost_usd"]) == (None, None)

    with pytest.raises(anthropic.InternalServerError) as raised:
        claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            extra_headers={"X-Standin-Status": "529"},
        )
    row = row_for(proxy.db_path, raised.value.response.headers["request-id"])
    assert (row["status"], row["error"]) == (529, "overloaded_error")

    response = httpx.post(
        f"{proxy.url('gemini')}/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"parts": [{"text": QUESTION}]}]},
        headers={
            "X-Monitor-Token": tokens["Acme"],
            "X-Monitor-User": "gemini-500",
            "X-Standin-Status": "500",
        },
    )
    assert response.status_code == 500
    assert response.json()["error"]["status"] == "INTERNAL"
    [row] = wait_for_rows(proxy.db_path, "user = ?", ("gemini-500",))
    assert (row["status"], row["outcome"], row["error"]) == (500, "provider_error", "INTERNAL")


# The stand-in alone ----------------------------------------------------------------------


def test_bad_requests_get_json_errors_and_nothing_reaches_stderr(
    standin: StandinProvider, capfd: pytest.CaptureFixture[str]
) -> None:
    with httpx.Client(base_url=standin.url) as client:
        missing = client.post("/v1/nothing-here", json={})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
        openai_400 = client.post("/v1/chat/completions", content=b"{not json")
        assert openai_400.status_code == 400
        assert openai_400.json()["error"]["type"] == "invalid_request_error"
        anthropic_400 = client.post("/v1/messages", json={"model": "claude-haiku-4-5"})
        assert anthropic_400.json()["type"] == "error"
        assert anthropic_400.json()["error"]["type"] == "invalid_request_error"
        gemini_400 = client.post("/v1beta/models/gemini-2.5-flash:generateContent", json=[1])
        assert gemini_400.json()["error"]["status"] == "INVALID_ARGUMENT"
        bad_status = client.post("/v1/messages", headers={"X-Standin-Status": "200"}, json={})
        assert bad_status.status_code == 400
        nested = client.post("/v1/chat/completions", content=b"[" * 100_000)
        assert nested.status_code == 400
    for raw in (
        b"NONSENSE\r\n\r\n",  # read as HTTP/0.9: a body without a status line
        b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",  # then hangs up
    ):
        with socket.create_connection(("127.0.0.1", standin.port), timeout=5) as sock:
            sock.sendall(raw)
            if b"100" not in raw:  # answered, and the connection closed
                answer = b"".join(iter(lambda: sock.recv(65536), b""))
                assert json.loads(answer.split(b"\r\n\r\n", 1)[-1])["error"]["message"]
    assert capfd.readouterr().err == ""


def test_keep_alive_and_a_clean_stop() -> None:
    with StandinProvider(latency_scale=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        sockets = []
        for stream in (False, True):
            payload = json.loads(body) | {"stream": stream}
            conn.request("POST", "/v1/chat/completions", json.dumps(payload))
            response = conn.getresponse()
            text = response.read()
            sockets.append(conn.sock)
            assert response.status == 200
        assert sockets[0] is sockets[1]  # one connection for both
        assert response.headers["transfer-encoding"] == "chunked"
        assert text.endswith(b"data: [DONE]\n\n")
        port = server.port
    assert conn.sock.recv(1) == b""  # the idle keep-alive connection was closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


# The demo's traffic ----------------------------------------------------------------------


def test_send_traffic_gives_one_row_per_request(
    proxy: Proxy, tokens: dict[str, str], db_path: Path
) -> None:
    endpoints = {name: proxy.url(name) for name in PROVIDERS}
    demo_tokens = [tokens["Globex"], tokens["Initech"]]
    assert plan_traffic(endpoints, demo_tokens, requests=60, seed=7) == plan_traffic(
        endpoints, demo_tokens, requests=60, seed=7
    )

    report = send_traffic(endpoints, demo_tokens, requests=60, seed=7, concurrency=4)

    assert (report.sent, report.failed) == (60, 0)
    assert report.ok + report.errors == 60 and report.errors >= 1
    assert set(report.by_provider) == set(PROVIDERS)
    orgs = (org_id(db_path, "Globex"), org_id(db_path, "Initech"))
    rows = wait_for_rows(db_path, "org_id in (?, ?)", orgs, count=60)
    assert len(rows) == 60
    per_org = Counter(row["org_id"] for row in rows)
    assert per_org[orgs[0]] > per_org[orgs[1]] > 0  # unevenly spread
    failed = [row for row in rows if row["outcome"] != "ok"]
    assert len(failed) == report.errors
    assert all(row["status"] >= 400 and row["priced"] is None for row in failed)
    unpriced = [row for row in rows if row["model"] == UNPRICED_MODEL]
    assert unpriced and all(row["outcome"] == "ok" for row in unpriced)
    assert all(row["priced"] == 0 and row["cost_usd"] is None for row in unpriced)
    priced = [row for row in rows if row["outcome"] == "ok" and row["model"] != UNPRICED_MODEL]
    assert all(row["priced"] == 1 and row["cost_usd"] > 0 for row in priced)
    assert all(row["input_tokens"] for row in priced)
    assert {row["provider"] for row in rows} == set(PROVIDERS)
    assert any(row["streamed"] for row in rows) and not all(row["streamed"] for row in rows)
    assert len({row["user"] for row in rows} - {None}) >= 3
    tags = [json.loads(row["tags"]) for row in rows if row["tags"]]
    assert tags and all(set(t) == {"feature", "env"} for t in tags)
