"""Anthropic, Gemini, xAI and OpenAI-compatible listeners of one real mitmdump.

Each provider is driven by its official SDK (google-genai for Gemini, the openai SDK for
xAI and OpenAI-compatible APIs) against replays of the recorded responses, split at
random byte boundaries. Costs are worked out by hand from `pricing/*.json`.
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from llm_monitor.proxy.addon import response_head
from llm_monitor.proxy.providers import KNOWN_HOSTS, READ_HEADERS, provider_named
from llm_monitor.proxy.providers.base import (
    RequestInfo,
    TopLevelFields,
    load_json,
    load_json_for_rewrite,
)
from llm_monitor.proxy.providers.openai import ask_for_usage, form_model
from llm_monitor.usage import json_bytes
from tests.conftest import API_KEY
from tests.proxy import Proxy, row_for, running_proxy
from tests.replay import ReplayServer, Reply, load_recording

LISTENERS = ("anthropic", "gemini", "xai", "groq", "vllm:noinject")
TOKEN_FIELDS = [
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
]


@pytest.fixture(scope="module")
def providers_proxy(shared_db: Path, upstream: ReplayServer, token: str) -> Iterator[Proxy]:
    with running_proxy(
        shared_db,
        f"http://127.0.0.1:{upstream.port}",
        providers=LISTENERS,
        monitor_log_requests=True,
    ) as proxy:
        yield proxy


def sdk_call(method: Callable[..., Any], body: dict) -> Any:
    """Call an SDK method with a recorded body; fields it does not know go in extra_body."""
    known = inspect.signature(method).parameters
    extra = {k: v for k, v in body.items() if k not in known}
    return method(**{k: v for k, v in body.items() if k in known}, extra_body=extra or None)


def tokens_of(row: dict) -> dict:
    return {f: row[f] for f in TOKEN_FIELDS}


# Anthropic ---------------------------------------------------------------------------


@pytest.fixture
def claude(providers_proxy: Proxy, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=providers_proxy.url("anthropic"),
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
    )


def anthropic_normalised(expected: dict) -> dict:
    """The table's meaning from Anthropic's figures: input is the sum of its three parts."""
    return {
        "input_tokens": expected["input_tokens"]
        + expected["cached_input_tokens"]
        + expected["cache_creation_input_tokens"],
        "cached_input_tokens": expected["cached_input_tokens"],
        "cache_write_tokens": expected["cache_creation_input_tokens"],
        "output_tokens": expected["output_tokens"],
        "reasoning_tokens": None,
    }


ANTHROPIC_COSTS = {
    # claude-sonnet-4: 3 x 3 + 4597 x 0.30 + 598 x 3.75 + 350 x 15 = 9 + 1379.1 + 2242.5 + 5250
    "messages_json_cache_read_and_write_claude-sonnet-4.json": "0.0088806",
    # claude-sonnet-4: 17 x 3 + 15 x 15
    "messages_json_text_claude-sonnet-4.json": "0.000276",
    # claude-sonnet-4: 147 x 3 + 4602 x 3.75 + 38 x 15 = 441 + 17257.5 + 570
    "messages_json_tool_use_cache_write_claude-sonnet-4.json": "0.0182685",
    # claude-sonnet-4: (17 x 3 + 16242 x 0.30 + 23258 x 3.75 + 515 x 15) / 1M
    #   = (51 + 4872.6 + 87217.5 + 7725) / 1M (message_delta's revised figures, not
    #   message_start's), + 2 web searches x $10 / 1,000 = 0.0998661 + 0.02
    "messages_stream_cache_read_and_write_claude-sonnet-4.json": "0.1198661",
    # claude-sonnet-4-5: 17 x 3 + 10 x 15
    "messages_stream_text_claude-sonnet-4-5.json": "0.000201",
    # claude-sonnet-4: 171 x 3 + 107 x 15 (thinking is part of output)
    "messages_stream_thinking_claude-sonnet-4.json": "0.002118",
    # claude-haiku-4-5: 542 x 1 + 62 x 5
    "messages_stream_tool_use_claude-haiku-4-5.json": "0.000852",
}


@pytest.mark.parametrize("name", sorted(ANTHROPIC_COSTS))
@pytest.mark.parametrize("seed", [1, 2])
def test_anthropic_messages(
    name: str,
    seed: int,
    claude: anthropic.Anthropic,
    upstream: ReplayServer,
    providers_proxy: Proxy,
) -> None:
    recording = load_recording(f"anthropic/{name}")
    streamed = recording["request"]["body"].get("stream") is True
    reply = upstream.reply(
        Reply.from_recording(
            recording, seed=seed if streamed else None, encoding="gzip" if seed == 2 else "identity"
        )
    )

    result = sdk_call(claude.messages.create, recording["request"]["body"])

    body = recording["response"]["body_text"]
    if streamed:
        events = [e.to_dict() for e in result]
        expected = [
            json.loads(line[6:])
            for line in body.splitlines()
            if line.startswith("data: ") and '"type": "ping"' not in line
        ]
        assert events == expected
    else:
        assert result.to_dict() == json.loads(body)
    received = upstream.take_received()  # the SDK's credentials went on untouched
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert tokens_of(row) == anthropic_normalised(recording["expected_usage"])
    assert row["response_model"] == recording["expected_usage"]["model"]
    assert row["cost_usd"] == float(Decimal(ANTHROPIC_COSTS[name]))
    assert (row["provider"], row["priced"], row["streamed"]) == ("anthropic", 1, int(streamed))
    assert (
        json.loads(row["raw_usage"])["output_tokens"]
        == recording["expected_usage"]["output_tokens"]
    )


@pytest.mark.parametrize(
    "name",
    [
        "error_400_invalid_request_error.json",
        "error_401_authentication_error.json",
        "error_404_not_found_error.json",
    ],
)
def test_anthropic_errors(
    name: str, token: str, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    recording = load_recording(f"anthropic/{name}")
    reply = upstream.reply(Reply.from_recording(recording))
    response = httpx.post(
        providers_proxy.url("anthropic") + recording["request"]["path"],
        json=recording["request"]["body"],
        headers={"x-api-key": API_KEY, "X-Monitor-Token": token, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == recording["response"]["status"]
    assert response.json() == json.loads(recording["response"]["body_text"])
    assert upstream.take_received().headers["x-api-key"] == API_KEY
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["outcome"], row["error"]) == (
        "provider_error",
        json.loads(recording["response"]["body_text"])["error"]["type"],
    )
    assert row["path"] == recording["request"]["path"]


def test_anthropic_count_tokens_is_not_billed(
    claude: anthropic.Anthropic, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    reply = upstream.reply(Reply(200, b'{"input_tokens": 14}'))
    counted = claude.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}]
    )
    assert counted.input_tokens == 14
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["billable"], row["input_tokens"], row["cost_usd"], row["priced"]) == (
        0,
        None,
        None,
        None,
    )


def test_anthropic_rejection_in_anthropic_shape(providers_proxy: Proxy) -> None:
    client = anthropic.Anthropic(
        base_url=providers_proxy.url("anthropic"), api_key=API_KEY, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "Missing X-Monitor-Token header" in str(raised.value)
    assert raised.value.body["error"]["type"] == "authentication_error"


# Gemini ------------------------------------------------------------------------------


@pytest.fixture
def gemini_client(providers_proxy: Proxy, token: str) -> genai.Client:
    return genai.Client(
        api_key=API_KEY,
        http_options=genai_types.HttpOptions(
            base_url=providers_proxy.url("gemini"),
            headers={"X-Monitor-Token": token},
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


def gemini_normalised(expected: dict) -> dict:
    """Output is candidates + thoughts (thinking is billed as output, counted apart)."""
    return {
        "input_tokens": expected["input_tokens"],
        "cached_input_tokens": expected["cached_input_tokens"],
        "cache_write_tokens": None,
        "output_tokens": (expected["output_tokens"] or 0) + (expected["reasoning_tokens"] or 0),
        "reasoning_tokens": expected["reasoning_tokens"],
    }


GEMINI_COSTS = {
    # gemini-2.5-flash: (3797 - 3055) x 0.30 + 3055 x 0.03 + (656 + 1549) x 2.50
    #   = 222.6 + 91.65 + 5512.5
    "generate_json_implicit_cache_gemini-2.5-flash.json": "0.00582675",
    # gemini-2.5-flash: 13 x 0.30 + (77 + 25) x 2.50 = 3.9 + 255
    "generate_json_text_gemini-2.5-flash.json": "0.0002589",
    # gemini-2.5-flash: 18 x 0.30 + (80 + 35) x 2.50 = 5.4 + 287.5 (the last usage, not a sum)
    "stream_sse_cumulative_usage_gemini-2.5-flash.json": "0.0002929",
    # gemini-2.5-flash: 70 x 0.30 + (40 + 61) x 2.50 = 21 + 252.5
    "stream_sse_function_call_gemini-2.5-flash.json": "0.0002735",
    # gemini-2.5-flash: 30 x 0.30 + (no candidates count + 1947) x 2.50 = 9 + 4867.5
    "stream_sse_thinking_no_candidates_count_gemini-2.5-flash.json": "0.0048765",
}


# Fields the SDK adds to a response of its own accord: not part of what the API sent.
SDK_OWN_FIELDS = {"sdk_http_response", "automatic_function_calling_history"}


def without_unknown(recorded: Any, sdk: Any) -> Any:
    """`recorded` with only the keys the SDK's model kept, recursively."""
    if isinstance(recorded, dict) and isinstance(sdk, dict):
        kept = {k: without_unknown(v, sdk[k]) for k, v in recorded.items() if k in sdk}
        if "thoughtSignature" in kept:  # bytes: the SDK writes them back URL-safe
            assert base64.urlsafe_b64decode(sdk["thoughtSignature"]) == base64.b64decode(
                recorded["thoughtSignature"]
            )
            kept["thoughtSignature"] = sdk["thoughtSignature"]
        return kept
    if isinstance(recorded, list) and isinstance(sdk, list) and len(recorded) == len(sdk):
        return [without_unknown(r, g) for r, g in zip(recorded, sdk, strict=True)]
    return recorded


def gemini_contents(recording: dict) -> list:
    return recording["request"]["body"]["contents"]


@pytest.mark.parametrize("name", sorted(GEMINI_COSTS))
@pytest.mark.parametrize("seed", [3, 4])
def test_gemini_generate(
    name: str,
    seed: int,
    gemini_client: genai.Client,
    upstream: ReplayServer,
    providers_proxy: Proxy,
) -> None:
    recording = load_recording(f"gemini/{name}")
    path = recording["request"]["path"]
    model = path.split("/models/")[1].split(":")[0]
    streamed = ":streamGenerateContent" in path
    reply = upstream.reply(
        Reply.from_recording(
            recording, seed=seed if streamed else None, encoding="gzip" if seed == 4 else "identity"
        )
    )

    call = (
        gemini_client.models.generate_content_stream
        if streamed
        else gemini_client.models.generate_content
    )
    result = call(model=model, contents=gemini_contents(recording))
    responses = list(result) if streamed else [result]

    body = recording["response"]["body_text"]
    expected = (
        [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
        if streamed
        else [json.loads(body)]
    )
    got = [
        r.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=SDK_OWN_FIELDS)
        for r in responses
    ]
    for sdk, recorded in zip(got, expected, strict=True):
        # The SDK keeps only the fields it models (it drops `serviceTier`, for one).
        assert sdk == without_unknown(recorded, sdk)
        assert (
            sdk["usageMetadata"]["promptTokenCount"]
            == recorded["usageMetadata"]["promptTokenCount"]
        )
        assert sdk["responseId"] == recorded["responseId"]
    received = upstream.take_received()
    assert received.headers["x-goog-api-key"] == API_KEY
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert tokens_of(row) == gemini_normalised(recording["expected_usage"])
    assert row["total_tokens"] == recording["expected_usage"]["total_tokens"]
    assert (row["model"], row["response_model"]) == (model, recording["expected_usage"]["model"])
    assert row["cost_usd"] == float(Decimal(GEMINI_COSTS[name]))
    assert (row["provider"], row["priced"], row["streamed"]) == ("gemini", 1, int(streamed))


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_gemini_json_array_stream_is_streamed_and_read(
    seed: int, token: str, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    """streamGenerateContent without alt=sse: one JSON array, arriving in pieces."""
    recording = load_recording("gemini/stream_json_array_thinking_gemini-flash-latest.json")
    reply = upstream.reply(Reply.from_recording(recording, seed=seed, hold_after=1))
    path = recording["request"]["path"]
    with httpx.stream(
        "POST",
        providers_proxy.url("gemini") + path + "?key=" + API_KEY,
        json=recording["request"]["body"],
        headers={"X-Monitor-Token": token},
    ) as response:
        pieces = response.iter_raw()
        first = next(pieces)  # arrives while the upstream holds back the rest: not buffered
        reply.release.set()
        received = first + b"".join(pieces)
    assert received == recording["response"]["body_text"].encode()
    assert upstream.take_received().path == path + "?key=" + API_KEY  # passed on untouched
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert row["path"] == path  # but never stored
    assert tokens_of(row) == gemini_normalised(recording["expected_usage"])
    # gemini-flash-latest answered as gemini-3.6-flash: 11 x 0.75 + (2 + 291) x 3.75 per 1M
    # = 8.25 + 1098.75; genai-prices doubles its price from 2027-01-01: 11 x 1.5 + 293 x 7.5
    expected = "0.001107" if row["ts"] < "2027-01-01" else "0.002214"
    assert (row["response_model"], row["cost_usd"], row["priced"]) == (
        "gemini-3.6-flash",
        float(Decimal(expected)),
        1,
    )


def test_gemini_embeddings_carry_no_usage(
    gemini_client: genai.Client, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    recording = load_recording("gemini/batch_embed_gemini-embedding-001.json")
    reply = upstream.reply(Reply.from_recording(recording))
    texts = [r["content"]["parts"][0]["text"] for r in recording["request"]["body"]["requests"]]
    result = gemini_client.models.embed_content(model="gemini-embedding-001", contents=texts)
    assert len(result.embeddings) == len(
        json.loads(recording["response"]["body_text"])["embeddings"]
    )
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["model"], row["input_tokens"], row["cost_usd"], row["priced"]) == (
        "gemini-embedding-001",
        None,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("error_400_api_key_invalid.json", "API_KEY_INVALID"),
        ("error_404_model_not_found_stream.json", "NOT_FOUND"),
    ],
)
def test_gemini_errors(
    name: str,
    code: str,
    gemini_client: genai.Client,
    upstream: ReplayServer,
    providers_proxy: Proxy,
) -> None:
    recording = load_recording(f"gemini/{name}")
    reply = upstream.reply(Reply.from_recording(recording))
    model = recording["request"]["path"].split("/models/")[1].split(":")[0]
    with pytest.raises(genai_errors.ClientError) as raised:
        if "stream" in name:
            list(gemini_client.models.generate_content_stream(model=model, contents="Hi"))
        else:
            gemini_client.models.generate_content(model=model, contents="Hi")
    assert raised.value.code == recording["response"]["status"]
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["status"], row["outcome"], row["error"]) == (
        recording["response"]["status"],
        "provider_error",
        code,
    )


def test_gemini_rejection_in_gemini_shape(providers_proxy: Proxy) -> None:
    client = genai.Client(
        api_key=API_KEY,
        http_options=genai_types.HttpOptions(
            base_url=providers_proxy.url("gemini"),
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert raised.value.code == 401
    assert "Missing X-Monitor-Token header" in raised.value.message


# xAI and OpenAI-compatible APIs --------------------------------------------------------


def openai_client(proxy: Proxy, provider: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url(provider) + "/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
    )


def test_xai_reasoning_outside_completion_tokens(
    token: str, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    """xAI counts reasoning outside completion_tokens (total = prompt + completion +
    reasoning). A hand-made body in xAI's documented shape; no recording of xAI exists."""
    body = {
        "id": "x1",
        "object": "chat.completion",
        "created": 1,
        "model": "grok-3-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 32,
            "completion_tokens": 9,
            "total_tokens": 135,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 94},
        },
    }
    reply = upstream.reply(Reply(200, json.dumps(body).encode()))
    result = openai_client(providers_proxy, "xai", token).chat.completions.create(
        model="grok-3-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert result.to_dict() == body
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (
        row["provider"],
        row["input_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    ) == ("xai", 32, 103, 94)
    # grok-3-mini: 32 x 0.30 + (9 + 94) x 0.50 = 9.6 + 51.5
    assert row["cost_usd"] == float(Decimal("0.0000611"))


def compatible_stream(
    events: list[dict], *, prefix: str = "", end: str = "data: [DONE]\n\n"
) -> bytes:
    body = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
    return (prefix + body + end).encode()


def chunk(content: str | None, *, finish: str | None = None, **extra: object) -> dict:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama-3.3-70b",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


@pytest.mark.parametrize(
    ("label", "body"),
    [
        (
            "usage on the finish chunk",
            compatible_stream([chunk("Hi"), chunk(None, finish="stop", usage=USAGE)]),
        ),
        (
            "usage in an extra chunk",
            compatible_stream(
                [
                    chunk("Hi"),
                    chunk(None, finish="stop"),
                    {**chunk(None), "choices": [], "usage": USAGE},
                ]
            ),
        ),
        (
            "usage under x_groq, comments first",
            compatible_stream(
                [chunk("Hi"), chunk(None, finish="stop", x_groq={"id": "r", "usage": USAGE})],
                prefix=": OPENROUTER PROCESSING\n\n: keep-alive\n\n",
            ),
        ),
    ],
)
@pytest.mark.parametrize("seed", [8, 9])
def test_openai_compatible_usage_wherever_it_sits(
    label: str, body: bytes, seed: int, token: str, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    reply = upstream.reply(Reply(200, body, "text/event-stream", seed=seed))
    client = openai_client(providers_proxy, "vllm", token)
    with client.chat.completions.with_streaming_response.create(
        model="llama-3.3-70b", messages=[{"role": "user", "content": "Hi"}], stream=True
    ) as response:
        received = b"".join(response.iter_bytes())
    assert received == body
    assert "stream_options" not in upstream.take_received().json()  # vllm:noinject
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["provider"], row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        "vllm",
        12,
        3,
        15,
    )
    assert (row["cost_usd"], row["priced"], row["usage_injected"]) == (None, 0, 0)


def test_openai_compatible_stream_ending_in_an_error_event(
    token: str, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    error = {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}}
    body = compatible_stream([chunk("Hi")], end=f"event: error\ndata: {json.dumps(error)}\n\n")
    reply = upstream.reply(Reply(200, body, "text/event-stream", seed=10))
    client = openai_client(providers_proxy, "groq", token)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="llama-3.3-70b", stream=True, messages=[{"role": "user", "content": "Hi"}]
            )
        )
    forwarded = upstream.take_received().json()
    assert forwarded["stream_options"] == {"include_usage": True}  # groq injects (default)
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["provider"], row["status"], row["outcome"], row["error"]) == (
        "groq",
        200,
        "provider_error",
        "overloaded",
    )


def test_openai_corpus_through_an_openai_compatible_listener(
    token: str, upstream: ReplayServer, providers_proxy: Proxy
) -> None:
    recording = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")
    reply = upstream.reply(Reply.from_recording(recording, seed=11))
    chunks = list(
        openai_client(providers_proxy, "groq", token).chat.completions.create(
            **recording["request"]["body"]
        )
    )
    assert chunks[-1].usage.prompt_tokens == 16
    row = row_for(providers_proxy.db_path, reply.request_id)
    assert (row["provider"], row["input_tokens"], row["output_tokens"]) == ("groq", 16, 10)
    assert (row["cost_usd"], row["priced"]) == (None, 0)  # no groq price: flagged, not $0


def test_no_provider_credential_in_the_log_or_the_database(providers_proxy: Proxy) -> None:
    """Runs last in this module: after Authorization, x-api-key, x-goog-api-key and ?key=."""
    log = providers_proxy.log()
    assert "anthropic POST /v1/messages" in log and "gemini POST /v1beta/models/" in log
    files = [
        p
        for p in providers_proxy.db_path.parent.iterdir()
        if p.name.startswith(providers_proxy.db_path.name)
    ]
    for path in [*files, providers_proxy.log_path]:
        assert API_KEY.encode() not in path.read_bytes(), f"API key found in {path.name}"


def json_documents(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Small JSON documents: `leaves` in lists and objects."""
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=20,
    )


JSON_VALUES = json_documents(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


@given(JSON_VALUES, st.booleans())
def test_load_json_reads_what_json_loads_reads(value: Any, ascii_only: bool) -> None:
    """The fast parser reads every document as the standard library does."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(body)
    except ValueError:
        expected = None
    assert load_json(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"NaN", b'{"a": Infinity}', b'"\\ud83d"', b"[" * 1100 + b"]" * 1100, b"", b"\xff", b"{"],
)
def test_load_json_falls_back_to_the_standard_library(body: bytes) -> None:
    try:
        expected = json.loads(body)
    except (ValueError, RecursionError):
        expected = None
    got = load_json(body)
    assert got == expected or (got != got and expected != expected)  # NaN is not NaN


NAMED = ("model", "stream", "n")
REQUEST_FIELDS = TopLevelFields(*NAMED)


def fields_of_whole(body: bytes) -> dict[str, Any] | None:
    """The named fields as a whole parse by the standard library finds them."""
    try:
        whole = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return {k: whole.get(k) for k in NAMED} if isinstance(whole, dict) else None


@given(
    st.dictionaries(st.sampled_from([*NAMED, "messages", ""]), JSON_VALUES, max_size=5)
    | JSON_VALUES,
    st.booleans(),
)
def test_top_level_fields_are_what_a_whole_parse_reads(value: Any, ascii_only: bool) -> None:
    """A request's fields read with the rest stepped over are those a whole parse finds,
    integers beyond 64 bits included; a body that is not an object has none."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert REQUEST_FIELDS(body) == fields_of_whole(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [NaN]}',  # what msgspec refuses: read by load_json
        b'{"model": Infinity}',
        b'{"model": "m", "messages": ["\\ud83d"]}',
        b'{"model": "m", "messages": ' + b"[" * 1100 + b"]" * 1100 + b"}",
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "tools": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "a", "model": "b"}',  # the last one, as every parser here reads it
        b'{"mod\\u0065l": "m", "n": null}',
        b'["model", "m"]',
        b'{"model": "m"} trailing',
        b"",
    ],
)
def test_top_level_fields_of_odd_bodies(body: bytes) -> None:
    got = REQUEST_FIELDS(body)
    expected = fields_of_whole(body)
    assert json.dumps(got) == json.dumps(expected)  # NaN is not NaN


def test_a_message_that_is_not_utf8_does_not_hide_the_model() -> None:
    """A string stepped over is not checked for UTF-8 (TopLevelFields): the model is read
    where a whole parse reads nothing. The provider refuses such a body."""
    body = b'{"model": "m", "messages": [{"content": "\xff"}]}'
    assert fields_of_whole(body) is None
    assert REQUEST_FIELDS(body) == {"model": "m", "stream": None, "n": None}


def asked_for_usage(body: bytes) -> tuple[bytes, RequestInfo]:
    request = http.Request.make("POST", "http://127.0.0.1/v1/chat/completions", body)
    info = RequestInfo(streamed=True)
    ask_for_usage(request, info)
    return request.raw_content or b"", info


@given(
    st.dictionaries(st.sampled_from(["model", "messages", "stream_options", "é"]), JSON_VALUES)
    | JSON_VALUES,
    st.booleans(),
)
def test_usage_is_asked_for_and_nothing_else_changes(value: Any, ascii_only: bool) -> None:
    """A stream's body with `stream_options.include_usage` added reads as the client's
    with that one change; one without `stream_options` (the SDKs' default) keeps every
    byte it had, the member added before the others."""
    body = json.dumps(value, ensure_ascii=ascii_only, indent=None).encode()
    sent, info = asked_for_usage(body)
    if not isinstance(value, dict):
        assert (sent, info.usage_injected, info.unchanged_body) == (body, False, None)
        return
    options = value.get("stream_options")
    expected = {**value, "stream_options": {**(options if isinstance(options, dict) else {})}}
    expected["stream_options"]["include_usage"] = True
    assert json.loads(sent) == expected
    assert (info.usage_injected, info.unchanged_body) == (True, body)
    if "stream_options" not in value:
        member = b'"stream_options":{"include_usage":true}' + (b"," if value else b"")
        assert sent == b"{" + member + body[1:]


@pytest.mark.parametrize(
    "body",
    [
        b'{"stream": true, "n": 123456789012345678901234567890, "x": 1.10}',
        b' {"stream": true, "x": "\\ud83d \\u00e9"}\n',
        b'{"stream": true, "x": NaN}',  # msgspec refuses NaN: parsed and written whole
        b'{"stream": true, "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
        b'{"stream": true, "stream_options": {"other": 1}}',
        b'{"stream": true, "stream\\u005foptions": null}',  # present, in another spelling
    ],
)
def test_usage_is_asked_for_in_odd_bodies(body: bytes) -> None:
    sent, info = asked_for_usage(body)
    expected = json.loads(body)
    options = expected.get("stream_options") or {}
    expected["stream_options"] = {**options, "include_usage": True}
    assert json.dumps(json.loads(sent), sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert info.usage_injected


def test_numbers_go_on_as_the_client_wrote_them() -> None:
    """An integer beyond 64 bits and a float's trailing zero: orjson would have made the
    first a float and dropped the second when the body was written again."""
    body = b'{"stream": true, "n": 123456789012345678901234567890, "x": 1.10}'
    assert asked_for_usage(body)[0] == b'{"stream_options":{"include_usage":true},' + body[1:]


@pytest.mark.parametrize(
    "body",
    [
        b'{"stream": true, "messages": [{"content": "\xff"}]}',
        b'{"stream": true, "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["not UTF-8", "nested too deep for any parser here"],
)
def test_a_body_no_parser_reads_is_not_changed(body: bytes) -> None:
    assert asked_for_usage(body) == (body, RequestInfo(streamed=True))


# What a client may send that orjson cannot write back as it was read.
ODD_JSON_VALUES = json_documents(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()  # NaN and Infinity too
    | st.text()
    | st.sampled_from(["\ud83d", "a\udc00b", "NaN", "-Infinity"])  # lone surrogates
)


@given(ODD_JSON_VALUES)
def test_a_rewritten_body_forwards_what_was_read(value: Any) -> None:
    """A body changed by the proxy (usage injection) is written back with every value as
    the client sent it: NaN stays NaN, a lone surrogate stays one."""
    raw = json.dumps(value).encode()
    read, read_by_orjson = load_json_for_rewrite(raw)
    assert json.dumps(read) == json.dumps(load_json(raw))
    written = json_bytes(read, fast=read_by_orjson)
    assert json.dumps(json.loads(written)) == json.dumps(read)


def test_json_bytes_is_orjsons_unless_it_cannot_be() -> None:
    assert json_bytes({"a": "é", "b": [1.5]}) == '{"a":"é","b":[1.5]}'.encode()
    deep: Any = []
    for _ in range(300):  # orjson writes 254 levels at most
        deep = [deep]
    assert json.loads(json_bytes(deep)) == deep
    assert json_bytes(float("nan"), fast=False) == b"NaN"


def test_a_forms_model_is_read_part_by_part() -> None:
    """The transcription form's `model` is its own part's value: a file whose bytes look
    like a `model` field is not read as one, whichever part comes first; a form of
    thousands of tiny parts is given up on, not walked."""
    content_type = "multipart/form-data; boundary=xYz123"

    def part(headers: str, value: bytes) -> bytes:
        return b"--xYz123\r\n" + headers.encode() + b"\r\n\r\n" + value + b"\r\n"

    spoof = b'RIFF\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    audio = part('Content-Disposition: form-data; name="file"; filename="model"', spoof)
    model = part('Content-Disposition: form-data; name="model"', b"gpt-4o-transcribe")
    for body in (audio + model, model + audio):
        assert form_model(body + b"--xYz123--\r\n", content_type) == "gpt-4o-transcribe"
    assert form_model(audio + b"--xYz123--\r\n", content_type) is None
    assert form_model(model, "multipart/form-data") is None  # no boundary named
    many = part('Content-Disposition: form-data; name="x"', b"v") * 100 + model
    assert form_model(many, content_type) is None


class AskedFor(dict):
    """Request headers that remember every name looked up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


@pytest.mark.parametrize("name", sorted({*KNOWN_HOSTS.values(), "vllm"}))
def test_providers_read_only_the_headers_the_proxy_decodes(name: str) -> None:
    """The proxy decodes only `READ_HEADERS` for the providers (a request carries a dozen
    more): a provider that looked up another would find it missing."""
    provider = provider_named(name)
    asked: set[str] = set()
    for path, content_type, body in [
        ("/v1/chat/completions", "application/json", b'{"model": "m", "stream": true}'),
        ("/v1/messages", "application/json", b'{"model": "m", "max_tokens": 5}'),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "application/json", b"{}"),
        ("/v1/audio/transcriptions", "multipart/form-data; boundary=b", b"--b--"),
    ]:
        request = http.Request.make("POST", f"http://127.0.0.1{path}", body)
        headers = AskedFor({"content-type": content_type, "authorization": "Bearer sk-" + "x" * 40})
        provider.inspect_request(request, headers, inject_usage=True)
        provider.key_hint(headers)
        provider.key_hint(AskedFor({"x-api-key": "sk-ant-" + "x" * 40}))
        asked |= headers.asked
    assert asked or name == "gemini", "no header was looked up: the probe is broken"
    assert asked <= READ_HEADERS, asked - READ_HEADERS


def test_the_head_of_an_answer_is_read_in_one_pass() -> None:
    """The request id is OpenAI's `x-request-id` wherever it stands, else Anthropic's
    `request-id`; a repeated header is joined as mitmproxy joins it."""
    head = http.Headers(
        [
            (b"Request-Id", b"req_anthropic"),
            (b"Content-Type", b"application/json"),
            (b"X-Ratelimit-Remaining-Requests", b"9999"),
            (b"X-Request-Id", b"req_openai"),
            (b"content-type", b"charset=utf-8"),
            (b"Content-Length", b"367"),
        ]
    )
    assert response_head(head) == ("", "application/json, charset=utf-8", "367", "req_openai")
    anthropic = http.Headers([(b"request-id", b"req_011"), (b"content-encoding", b"gzip")])
    assert response_head(anthropic) == ("gzip", "", "", "req_011")
    assert response_head(http.Headers([])) == ("", "", "", None)
