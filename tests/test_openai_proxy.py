"""OpenAI through a real mitmdump: what the SDK gets equals the recording, the row is exact."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import API_KEY
from tests.proxy import Proxy, row_for
from tests.replay import ReplayServer, Reply, load_recording

# Cost by hand from the price in force (USD per 1M tokens), one line per file.
JSON_COSTS = {
    # gpt-4o: (3897-3840) x 2.50 + 3840 x 1.25 + 75 x 10.00 = 142.5 + 4800 + 750
    "chat_json_cached_prompt_gpt-4o.json": "0.0056925",
    # gpt-5: 15 x 1.25 + 75 x 10.00 (64 reasoning tokens are part of the 75 output)
    "chat_json_reasoning_gpt-5.json": "0.00076875",
    # o3-mini: 11 x 1.10 + 809 x 4.40 = 12.1 + 3559.6
    "chat_json_reasoning_o3-mini.json": "0.0035717",
    # gpt-4o: 16 x 2.50 + 12 x 10.00
    "chat_json_text_gpt-4o.json": "0.00016",
    # gpt-4o-mini: 92 x 0.15 + 17 x 0.60 = 13.8 + 10.2
    "chat_json_tool_call_gpt-4o-mini.json": "0.000024",
    # text-embedding-3-small: 4 x 0.02
    "embeddings_base64_text-embedding-3-small.json": "0.00000008",
    # text-embedding-3-small: 2 x 0.02
    "embeddings_documents_text-embedding-3-small.json": "0.00000004",
    # gpt-4o: (3763-3584) x 2.50 + 3584 x 1.25 + 44 x 10.00 = 447.5 + 4480 + 440
    "responses_json_cached_input_gpt-4o.json": "0.0053675",
    # gpt-5.5: 11 x 5.00 + 5 x 30.00
    "responses_json_text_gpt-5.5.json": "0.000205",
}
STREAM_COSTS = {
    # gpt-4o: 364 x 2.50 + 40 x 10.00
    "chat_stream_parallel_tool_calls_include_usage_gpt-4o.json": "0.00131",
    # gpt-5-mini: 13 x 0.25 + 50 x 2.00 (all 50 output tokens are reasoning)
    "chat_stream_reasoning_length_gpt-5-mini.json": "0.00010325",
    # gpt-4o: 16 x 2.50 + 10 x 10.00
    "chat_stream_text_include_usage_gpt-4o.json": "0.00014",
    # gpt-4o-mini: 54 x 0.15 + 20 x 0.60 = 8.1 + 12
    "chat_stream_tool_call_include_usage_gpt-4o-mini.json": "0.0000201",
    # gpt-5.5: 58 x 5.00 + 23 x 30.00
    "responses_stream_function_call_gpt-5.5.json": "0.00098",
    # gpt-5: 32 x 1.25 + 647 x 10.00 (640 reasoning tokens are part of the 647)
    "responses_stream_reasoning_gpt-5.json": "0.00651",
    # gpt-5.5: 11 x 5.00 + 5 x 30.00
    "responses_stream_text_gpt-5.5.json": "0.000205",
}
NO_USAGE_STREAMS = [
    "chat_stream_text_no_usage_gpt-4o.json",
    "chat_stream_tool_call_no_usage_gpt-4o.json",
]
ERRORS = {
    "error_400_model_not_found_responses.json": "model_not_found",
    "error_400_unsupported_parameter_chat.json": "unsupported_parameter",
    "error_401_invalid_api_key_chat.json": "invalid_api_key",
    "error_404_model_not_found_chat.json": "model_not_found",
    "error_404_model_not_found_embeddings.json": "model_not_found",
}
TOKEN_FIELDS = [
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
]


def call_sdk(client: openai.OpenAI, recording: dict, **overrides):
    """Send the recorded request through the SDK method its path belongs to."""
    path = recording["request"]["path"]
    body = {**recording["request"]["body"], **overrides}
    if path.endswith("/chat/completions"):
        return client.chat.completions.create(**body)
    if path.endswith("/responses"):
        return client.responses.create(**body)
    if path.endswith("/embeddings"):
        # Ask for the recorded encoding so the SDK hands back the body as it came.
        return client.embeddings.create(**body)
    raise AssertionError(f"no SDK call for {path}")


def data_events(body_text: str) -> list[dict]:
    """The JSON objects of an SSE body's data lines, as a client would parse them."""
    events = []
    for line in body_text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


def assert_tokens(row: dict, expected: dict) -> None:
    assert {f: row[f] for f in TOKEN_FIELDS} == {f: expected[f] for f in TOKEN_FIELDS}
    assert row["response_model"] == expected["model"]


@pytest.mark.parametrize("name", sorted(JSON_COSTS))
@pytest.mark.parametrize("encoding", ["identity", "gzip", "br"])
def test_json_response(
    name: str, encoding: str, client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording(f"openai/{name}")
    reply = upstream.reply(Reply.from_recording(recording, encoding=encoding))

    result = call_sdk(client, recording)

    assert result.to_dict() == json.loads(recording["response"]["body_text"])
    row = row_for(proxy.db_path, reply.request_id)
    assert_tokens(row, recording["expected_usage"])
    assert row["cost_usd"] == float(Decimal(JSON_COSTS[name]))
    assert (row["priced"], row["status"], row["outcome"], row["streamed"]) == (1, 200, "ok", 0)
    assert row["model"] == recording["request"]["body"]["model"]
    assert row["path"] == recording["request"]["path"]
    assert row["latency_ms"] > 0 and row["ttft_ms"] is None


def test_zstd_json_body_is_decoded_for_usage_and_passed_on_as_is(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """The SDK does not ask for zstd, so this one is read with httpx."""
    recording = load_recording("openai/responses_json_cached_input_gpt-4o.json")
    reply = upstream.reply(Reply.from_recording(recording, encoding="zstd"))
    response = httpx.post(
        f"{proxy.base_url}/responses",
        json=recording["request"]["body"],
        headers={
            "Authorization": f"Bearer {API_KEY}",
            "X-Monitor-Token": token,
            "Accept-Encoding": "zstd",
        },
    )
    assert response.headers["content-encoding"] == "zstd"
    assert response.content == recording["response"]["body_text"].encode()  # httpx decoded it
    row = row_for(proxy.db_path, reply.request_id)
    assert_tokens(row, recording["expected_usage"])
    assert row["cost_usd"] == float(Decimal(JSON_COSTS["responses_json_cached_input_gpt-4o.json"]))


@pytest.mark.parametrize("name", sorted(STREAM_COSTS))
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_stream_through_sdk(
    name: str, seed: int, encoding: str, client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording(f"openai/{name}")
    reply = upstream.reply(Reply.from_recording(recording, seed=seed, encoding=encoding))

    events = [event.to_dict() for event in call_sdk(client, recording)]

    assert events == data_events(recording["response"]["body_text"])
    row = row_for(proxy.db_path, reply.request_id)
    assert_tokens(row, recording["expected_usage"])
    assert row["cost_usd"] == float(Decimal(STREAM_COSTS[name]))
    assert (row["priced"], row["streamed"], row["outcome"], row["usage_injected"]) == (
        1,
        1,
        "ok",
        0,
    )
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


@pytest.mark.parametrize("name", sorted(STREAM_COSTS) + NO_USAGE_STREAMS)
@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_stream_bytes_pass_through_unchanged(
    name: str, seed: int, encoding: str, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording(f"openai/{name}")
    reply = upstream.reply(Reply.from_recording(recording, seed=seed, encoding=encoding))
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Monitor-Token": token}

    with httpx.stream(
        "POST",
        f"{proxy.base_url}{recording['request']['path'][3:]}",
        json=recording["request"]["body"],
        headers=headers,
    ) as response:
        received = b"".join(response.iter_raw())
        wire_encoding = response.headers.get("content-encoding", "identity")

    body = recording["response"]["body_text"].encode()
    assert wire_encoding == encoding
    assert httpx_decode(received, encoding) == body
    if name not in NO_USAGE_STREAMS:  # not rewritten: the very bytes the upstream sent
        assert received == reply.sent


def httpx_decode(data: bytes, encoding: str) -> bytes:
    import gzip

    return gzip.decompress(data) if encoding == "gzip" else data


INJECTABLE = [
    "chat_stream_text_include_usage_gpt-4o.json",
    "chat_stream_tool_call_include_usage_gpt-4o-mini.json",
    "chat_stream_reasoning_length_gpt-5-mini.json",
    "chat_stream_parallel_tool_calls_include_usage_gpt-4o.json",
]


def without_include_usage(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "stream_options"}


def stream_as_asked_without_usage(body_text: str) -> list[dict]:
    """What the client would have got without include_usage: no usage chunk, no usage key."""
    return [
        {k: v for k, v in event.items() if k != "usage"}
        for event in data_events(body_text)
        if event["choices"] or event.get("usage") is None
    ]


@pytest.mark.parametrize("name", INJECTABLE)
@pytest.mark.parametrize("seed", [None, 5, 6])  # None: one piece, Content-Length framed
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_usage_is_injected_and_hidden(
    name: str, seed: int, encoding: str, client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    """A stream asked for without include_usage still gets exact usage; the client sees none."""
    recording = load_recording(f"openai/{name}")
    # The upstream answers as OpenAI does when include_usage is set: the recording.
    reply = upstream.reply(Reply.from_recording(recording, seed=seed, encoding=encoding))
    asked = without_include_usage(recording["request"]["body"])

    chunks = list(client.chat.completions.create(**asked))

    forwarded = upstream.take_received().json()
    assert forwarded == {**asked, "stream_options": {"include_usage": True}}
    assert [c.to_dict() for c in chunks] == stream_as_asked_without_usage(
        recording["response"]["body_text"]
    )
    row = row_for(proxy.db_path, reply.request_id)
    assert_tokens(row, recording["expected_usage"])
    assert row["cost_usd"] == float(Decimal(STREAM_COSTS[name]))
    assert (row["usage_injected"], row["priced"]) == (1, 1)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_injected_stream_keeps_its_bytes_and_order(
    encoding: str, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """Beyond the SDK's view: key order, blank lines and `[DONE]` are as the provider sent."""
    recording = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")
    upstream.reply(Reply.from_recording(recording, seed=7, encoding=encoding))
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=without_include_usage(recording["request"]["body"]),
        headers={"Authorization": f"Bearer {API_KEY}", "X-Monitor-Token": token},
    ) as response:
        assert response.headers.get("content-encoding", "identity") == encoding
        text = b"".join(response.iter_bytes()).decode()

    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    parsed = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    expected = stream_as_asked_without_usage(recording["response"]["body_text"])
    assert parsed == expected
    assert [list(p) for p in parsed] == [list(e) for e in expected]  # key order too


def test_stream_without_usage_is_unpriced_never_zero(
    tmp_path: Path, token: str, upstream: ReplayServer
) -> None:
    """With injection off, a stream without usage records NULL cost and priced = 0."""
    from tests.conftest import invoke, new_org
    from tests.proxy import running_proxy

    db_path = tmp_path / "monitor.db"
    invoke(db_path, "init")
    own_token = new_org(db_path, "NoInject")
    recording = load_recording("openai/chat_stream_text_no_usage_gpt-4o.json")
    with running_proxy(
        db_path, f"http://127.0.0.1:{upstream.port}", monitor_inject_usage=False
    ) as p:
        client = openai.OpenAI(
            base_url=p.base_url,
            api_key=API_KEY,
            max_retries=0,
            default_headers={"X-Monitor-Token": own_token},
        )
        reply = upstream.reply(Reply.from_recording(recording, seed=8))
        chunks = list(client.chat.completions.create(**recording["request"]["body"]))
        assert upstream.take_received().json() == recording["request"]["body"]
        row = row_for(db_path, reply.request_id)
    assert [c.to_dict() for c in chunks] == data_events(recording["response"]["body_text"])
    assert (row["input_tokens"], row["cost_usd"], row["priced"]) == (None, None, 0)
    assert (row["usage_injected"], row["response_model"]) == (0, "gpt-4o-2024-08-06")


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_provider_error(
    name: str, client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording(f"openai/{name}")
    reply = upstream.reply(Reply.from_recording(recording))

    with pytest.raises(openai.APIStatusError) as raised:
        call_sdk(client, recording)

    assert raised.value.status_code == recording["response"]["status"]
    assert raised.value.body == json.loads(recording["response"]["body_text"])["error"]
    row = row_for(proxy.db_path, reply.request_id)
    assert (row["status"], row["outcome"], row["error"]) == (
        recording["response"]["status"],
        "provider_error",
        ERRORS[name],
    )
    assert (row["cost_usd"], row["priced"], row["input_tokens"]) == (None, None, None)


def test_unknown_model_is_flagged_not_free(
    client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording("openai/chat_json_text_gpt-4o.json")
    body = json.loads(recording["response"]["body_text"])
    body["model"] = "gpt-9-imaginary-2031-01-01"
    reply = upstream.reply(Reply(200, json.dumps(body).encode()))

    client.chat.completions.create(**{**recording["request"]["body"], "model": "gpt-9-imaginary"})

    row = row_for(proxy.db_path, reply.request_id)
    assert (row["cost_usd"], row["priced"], row["input_tokens"]) == (None, 0, 16)
    assert row["unpriced_reason"] == "no_price"
    assert proxy_log_mentions(
        proxy, "cannot price openai model 'gpt-9-imaginary-2031-01-01' (no_price)"
    )


def proxy_log_mentions(proxy: Proxy, text: str, timeout: float = 5) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proxy.log():
            return True
        time.sleep(0.05)
    return False


def test_stream_is_passed_on_before_the_upstream_has_finished(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """The first event reaches the client while the upstream still holds back the rest."""
    recording = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")
    body = recording["response"]["body_text"].encode()
    first_event = body[: body.index(b"\n\n") + 2]
    reply = upstream.reply(
        Reply(
            200,
            body,
            "text/event-stream",
            hold_after=1,
            pieces=[first_event, body[len(first_event) :]],
        )
    )

    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=recording["request"]["body"],
        headers={"Authorization": f"Bearer {API_KEY}", "X-Monitor-Token": token},
    ) as response:
        pieces = response.iter_raw()
        received = next(pieces)
        assert received == first_event
        assert not reply.release.is_set()  # the upstream has not sent the rest yet
        reply.release.set()
        received += b"".join(pieces)
    assert received == body
    row = row_for(proxy.db_path, reply.request_id)
    assert row["ttft_ms"] < row["latency_ms"]


def test_other_endpoints_pass_through_with_a_row_without_tokens(
    client: openai.OpenAI, token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    models = {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"}],
    }
    listing = upstream.reply(Reply(200, json.dumps(models).encode()))
    assert [m.id for m in client.models.list()] == ["gpt-4o"]
    row = row_for(proxy.db_path, listing.request_id)
    assert (row["method"], row["path"], row["status"], row["outcome"]) == (
        "GET",
        "/v1/models",
        200,
        "ok",
    )
    assert (row["input_tokens"], row["cost_usd"], row["priced"]) == (None, None, None)

    audio = bytes(range(256)) * 4000  # a binary body, streamed through untouched
    speech = upstream.reply(
        Reply(
            200,
            audio,
            "audio/mpeg",
            pieces=[audio[i : i + 16384] for i in range(0, len(audio), 16384)],
        )
    )
    response = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi")
    assert response.content == audio
    row = row_for(proxy.db_path, speech.request_id)
    assert (row["path"], row["model"], row["status"], row["input_tokens"]) == (
        "/v1/audio/speech",
        "gpt-4o-mini-tts",
        200,
        None,
    )
    assert row["priced"] == 0  # billed by the provider, but no usage to price: flagged


def test_legacy_completions_stream_gets_usage_injected(
    client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    """/v1/completions takes include_usage too (a hand-made body in OpenAI's shape)."""
    chunk = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    usage = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    body = "".join(f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in (chunk, usage))
    reply = upstream.reply(
        Reply(200, (body + "data: [DONE]\n\n").encode(), "text/event-stream", seed=10)
    )

    events = list(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True)
    )

    assert upstream.take_received().json()["stream_options"] == {"include_usage": True}
    assert [e.to_dict() for e in events] == [{k: v for k, v in chunk.items() if k != "usage"}]
    row = row_for(proxy.db_path, reply.request_id)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (5, 1, 6)
    # gpt-3.5-turbo-instruct, from genai-prices: 5 x 1.50 + 1 x 2.00 per 1M
    assert (row["cost_usd"], row["priced"]) == (float(Decimal("0.0000095")), 1)


def test_lone_surrogate_in_the_prompt_still_gets_usage_injected(
    token: str, upstream: ReplayServer, proxy: Proxy
) -> None:
    """JavaScript clients can send "\\ud83d" alone; the rewritten body must keep it as is."""
    recording = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")
    reply = upstream.reply(Reply.from_recording(recording, seed=12))
    raw = (
        b'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "\\ud83d"}]}'
    )
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        content=raw,
        headers={
            "Authorization": f"Bearer {API_KEY}",
            "X-Monitor-Token": token,
            "Content-Type": "application/json",
        },
    ) as response:
        b"".join(response.iter_bytes())
    forwarded = upstream.take_received()
    assert forwarded.json()["stream_options"] == {"include_usage": True}
    assert b'"\\ud83d"' in forwarded.body
    row = row_for(proxy.db_path, reply.request_id)
    assert (row["model"], row["usage_injected"], row["input_tokens"]) == ("gpt-4o", 1, 16)


def test_large_json_body_is_read(
    client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    """Over 64 KB only the body's tail is parsed (a whole parse holds the event loop)."""
    body = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.0123456789] * 1536}
            for i in range(40)
        ],
        "usage": {"prompt_tokens": 400, "total_tokens": 400},
    }
    reply = upstream.reply(Reply(200, json.dumps(body).encode(), encoding="gzip"))
    result = client.embeddings.create(
        model="text-embedding-3-small", input=["x"] * 40, encoding_format="float"
    )
    assert len(result.data) == 40
    assert len(reply.body) > 64 * 1024
    row = row_for(proxy.db_path, reply.request_id)
    assert (row["input_tokens"], row["output_tokens"], row["priced"]) == (400, None, 1)
    assert row["cost_usd"] == float(Decimal("0.000008"))  # 400 x 0.02 per 1M


def test_the_mitmdump_line_still_works(tmp_path: Path, upstream: ReplayServer) -> None:
    """The README's `mitmdump -s addons/monitor.py` (all of mitmproxy's default addons)
    records the same as `llm-monitor proxy`: a JSON answer, a stream, a 401."""
    from tests.conftest import invoke, new_org
    from tests.proxy import running_proxy

    db_path = tmp_path / "monitor.db"
    invoke(db_path, "init")
    own_token = new_org(db_path, "Dump")
    json_recording = load_recording("openai/chat_json_text_gpt-4o.json")
    stream_name = "chat_stream_text_include_usage_gpt-4o.json"
    stream_recording = load_recording(f"openai/{stream_name}")
    target = f"http://127.0.0.1:{upstream.port}"
    with running_proxy(db_path, target, launcher="mitmdump") as p:
        assert "addons/monitor.py" in " ".join(p.process.args)
        client = openai.OpenAI(
            base_url=p.base_url,
            api_key=API_KEY,
            max_retries=0,
            default_headers={"X-Monitor-Token": own_token},
        )
        reply = upstream.reply(Reply.from_recording(json_recording, seed=3))
        call_sdk(client, json_recording)
        json_row = row_for(db_path, reply.request_id)
        reply = upstream.reply(Reply.from_recording(stream_recording, seed=4))
        chunks = list(client.chat.completions.create(**stream_recording["request"]["body"]))
        stream_row = row_for(db_path, reply.request_id)
        refused = httpx.post(f"{p.base_url}/chat/completions", json={"model": "gpt-4o"})
    assert Decimal(str(json_row["cost_usd"])) == Decimal(JSON_COSTS["chat_json_text_gpt-4o.json"])
    assert [c.to_dict() for c in chunks] == data_events(stream_recording["response"]["body_text"])
    assert Decimal(str(stream_row["cost_usd"])) == Decimal(STREAM_COSTS[stream_name])
    assert refused.status_code == 401
    assert upstream.received.qsize() == 2  # the refused request never reached it
