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

# Cost by hand from pricing/openai.json (USD per 1M tokens), one line per file.
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
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_json_response(
    name: str, encoding: str, client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording(f"openai/{name}")
    reply = upstream.reply(Reply.from_recording(recording, gzip=encoding == "gzip"))

    result = call_sdk(client, recording)

    assert result.to_dict() == json.loads(recording["response"]["body_text"])
    row = row_for(proxy.db_path, reply.request_id)
    assert_tokens(row, recording["expected_usage"])
    assert row["cost_usd"] == float(Decimal(JSON_COSTS[name]))
    assert (row["priced"], row["status"], row["outcome"], row["streamed"]) == (1, 200, "ok", 0)
    assert row["model"] == recording["request"]["body"]["model"]
    assert row["path"] == recording["request"]["path"]
    assert row["latency_ms"] > 0 and row["ttft_ms"] is None


@pytest.mark.parametrize("name", sorted(STREAM_COSTS))
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_stream_through_sdk(
    name: str, seed: int, encoding: str, client: openai.OpenAI, upstream: ReplayServer, proxy: Proxy
) -> None:
    recording = load_recording(f"openai/{name}")
    reply = upstream.reply(Reply.from_recording(recording, seed=seed, gzip=encoding == "gzip"))

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
    upstream.reply(Reply.from_recording(recording, seed=seed, gzip=encoding == "gzip"))
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Monitor-Token": token}
    if name in NO_USAGE_STREAMS:  # a stream without usage: nothing to inject into the reply
        headers["Accept-Encoding"] = "identity"

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
    assert (httpx_decode(received, encoding)) == body


def httpx_decode(data: bytes, encoding: str) -> bytes:
    import gzip

    return gzip.decompress(data) if encoding == "gzip" else data
