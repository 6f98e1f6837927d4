"""The stream tap and SSE splitting, for any way the network may cut a body into chunks."""

from __future__ import annotations

import gzip
import itertools
import json
import zlib

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llm_monitor.proxy.addon import StreamTap
from llm_monitor.proxy.providers import RequestInfo, provider_named
from llm_monitor.proxy.providers.openai import OpenAI, _worth_parsing
from llm_monitor.proxy.sse import EventSplitter, parse_event
from tests.replay import load_recording

STREAMS = [
    "chat_stream_parallel_tool_calls_include_usage_gpt-4o.json",
    "chat_stream_reasoning_length_gpt-5-mini.json",
    "chat_stream_text_include_usage_gpt-4o.json",
    "chat_stream_tool_call_include_usage_gpt-4o-mini.json",
    "responses_stream_function_call_gpt-5.5.json",
    "responses_stream_reasoning_gpt-5.json",
    "responses_stream_text_gpt-5.5.json",
]
BODIES = {
    name: load_recording(f"openai/{name}")["response"]["body_text"].encode() for name in STREAMS
}
ENCODE = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}
DECODE = {
    "identity": lambda b: b,
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def run_tap(tap: StreamTap, chunks: list[bytes]) -> bytes:
    """Feed chunks as mitmproxy does; check the tap never ends the response early."""
    out = []
    for chunk in chunks:
        result = tap(chunk)
        pieces = [result] if isinstance(result, bytes) else result
        assert b"" not in pieces, "b'' before the end would end the client's response"
        out.extend(pieces)
    end = tap(b"")
    out.append(end if isinstance(end, bytes) else b"".join(end))
    return b"".join(out)


def tap_for(encoding: str, injected: bool = False) -> StreamTap:
    reader = OpenAI().stream_reader(
        RequestInfo(streamed=True, usage_injected=injected), "text/event-stream"
    )
    return StreamTap(reader, encoding)


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("encoding", sorted(ENCODE))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0), max_size=60))
def test_any_split_passes_bytes_unchanged_and_finds_the_same_usage(
    name: str, encoding: str, points: list[int]
) -> None:
    body = BODIES[name]
    wire = ENCODE[encoding](body)
    whole = tap_for(encoding)
    run_tap(whole, [wire])

    tap = tap_for(encoding)
    assert run_tap(tap, cut(wire, points)) == wire
    assert whole.reader.usage is not None
    assert tap.reader.usage == whole.reader.usage
    assert tap.reader.response_model == whole.reader.response_model
    assert tap.reader.complete


@pytest.mark.parametrize("name", [n for n in STREAMS if n.startswith("chat_")])
@pytest.mark.parametrize("encoding", sorted(ENCODE))
@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.integers(min_value=0), max_size=60))
def test_injected_usage_is_removed_the_same_way_for_any_split(
    name: str, encoding: str, points: list[int]
) -> None:
    body = BODIES[name]
    wire = ENCODE[encoding](body)
    tap = tap_for(encoding, injected=True)
    out = DECODE[encoding](run_tap(tap, cut(wire, points)))
    assert b'"usage"' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"\n\ndata: ") == body.count(b"\n\ndata: ") - 1  # one event fewer
    assert tap.reader.usage is not None and tap.reader.usage.input_tokens > 0


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), points=st.lists(st.integers(min_value=0), max_size=20))
def test_garbage_never_raises_and_passes_unchanged(data: bytes, points: list[int]) -> None:
    for encoding in ("identity", "gzip"):
        assert run_tap(tap_for(encoding), cut(data, points)) == data


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), points=st.lists(st.integers(min_value=0), max_size=20))
def test_garbage_in_an_injected_stream_never_raises(data: bytes, points: list[int]) -> None:
    out = run_tap(tap_for("identity", injected=True), cut(data, points))
    assert out == data  # nothing in random bytes is a usage chunk to remove


def variants(body: bytes) -> dict[str, bytes]:
    return {
        "lf": body,
        "crlf": body.replace(b"\n", b"\r\n"),
        "cr": body.replace(b"\n", b"\r"),
        "comments": b": keep-alive\n\n" + body.replace(b"\n\ndata:", b"\n\n: ping\n\ndata:"),
    }


@pytest.mark.parametrize("variant", ["lf", "crlf", "cr", "comments"])
@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(min_value=0), max_size=80))
def test_splitter_gives_the_same_events_for_any_split(variant: str, points: list[int]) -> None:
    body = variants(BODIES["chat_stream_text_include_usage_gpt-4o.json"])[variant]
    reference = EventSplitter()
    # A lone CR at the end may be half a CRLF: only the end of the stream settles it.
    whole = [*reference.feed(body), reference.flush()]
    splitter = EventSplitter()
    pieces = [event for chunk in cut(body, points) for event in splitter.feed(chunk)]
    pieces.append(splitter.flush())
    assert pieces == whole
    assert b"".join(pieces) == body
    data = [e.data for e in map(parse_event, pieces) if e is not None]
    assert data[-1] == "[DONE]" and len(data) == body.count(b"data: ")


def split_line_by_line(chunks: list[bytes]) -> list[bytes]:
    """Events as the splitter finds them reading every chunk line by line (`_feed_lines`,
    what it did for every chunk before `_feed_lf`)."""
    splitter = EventSplitter()
    events = [event for chunk in chunks for event in splitter._feed_lines(chunk)]
    return [*events, splitter.flush()]


SSE_LINES = st.sampled_from(
    [b'data: {"a":1}', b"data: [DONE]", b"event: error", b": ping", b"data:", b"", b"", b""]
)
LINE_ENDS = st.sampled_from([b"\n", b"\n", b"\n", b"\n", b"\r\n", b"\r"])


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(SSE_LINES, LINE_ENDS)),
    points=st.lists(st.integers(min_value=0), max_size=20),
)
@example(lines=[(b"data: 1", b"\n"), (b"", b"\n"), (b"", b"\n"), (b"data: 2", b"\n")], points=[])
@example(lines=[(b"", b"\n"), (b"", b"\n"), (b"data: 1", b"\n"), (b"", b"\n")], points=[1])
def test_events_in_any_chunks_are_those_found_line_by_line(
    lines: list[tuple[bytes, bytes]], points: list[int]
) -> None:
    """Runs of blank lines, an event begun in one chunk, CR and CRLF among the LFs: a
    chunk read whole (`_feed_lf`) gives the events that reading it line by line gives."""
    body = b"".join(line + end for line, end in lines)
    chunks = cut(body, points)
    splitter = EventSplitter()
    pieces = [event for chunk in chunks for event in splitter.feed(chunk)]
    assert [*pieces, splitter.flush()] == split_line_by_line(chunks)


@pytest.mark.parametrize(
    ("event", "worth"),
    [
        (b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n', False),
        (b'data: {"choices": [{"delta": {"content": "a"}}], "usage": null}\n\n', False),
        (b'data: {"choices":[],"usage":{"prompt_tokens":9}}\n\n', True),
        (b'data: {"choices": [], "usage": {"prompt_tokens": 9}}\n\n', True),
        (b'data: {"choices":[{"delta":{"content":"the \\"usage\\": null"}}]}\n\n', False),
        (b'data: {"type":"usage"}\n\n', False),
        (b"data: [DONE]\n\n", True),
        (b'data: {"error":{"message":"overloaded"}}\n\n', True),
        (b'event: response.completed\ndata: {"type":"response.completed"}\n\n', True),
        (b'event: response.output_text.delta\ndata: {"delta":"a"}\n\n', False),
    ],
)
def test_an_event_is_parsed_when_it_may_hold_usage_an_error_or_the_end(
    event: bytes, worth: bool
) -> None:
    assert _worth_parsing(event) is worth


def test_event_parsing() -> None:
    event = parse_event(b'event: response.completed\r\ndata: {"a":\r\ndata: 1}\r\n\r\n')
    assert (event.name, event.data) == ("response.completed", '{"a":\n1}')
    assert parse_event(b": comment only\n\n") is None
    assert parse_event(b"data:no-space\n\n").data == "no-space"


def test_unicode_line_separators_inside_json_do_not_split_lines() -> None:
    """U+2028 is legal unescaped in JSON strings; only CR and LF end SSE lines."""
    event = 'data: {"text":"a\u2028b\u0085c","usage":{"prompt_tokens":1}}\n\n'.encode()
    assert parse_event(event).data == '{"text":"a\u2028b\u0085c","usage":{"prompt_tokens":1}}'


def test_a_multi_member_gzip_stream_is_read_to_the_end() -> None:
    body = BODIES["chat_stream_text_include_usage_gpt-4o.json"]
    half = body.index(b"\n\n", len(body) // 2) + 2
    wire = gzip.compress(body[:half]) + gzip.compress(body[half:])
    tap = tap_for("gzip", injected=True)
    out = gzip.decompress(run_tap(tap, cut(wire, list(range(0, len(wire), 7)))))
    assert out.endswith(b"data: [DONE]\n\n") and b'"usage"' not in out
    assert tap.reader.usage.input_tokens == 16


def test_a_utf8_character_split_across_chunks_survives() -> None:
    body = 'data: {"choices":[{"delta":{"content":"caf\u00e9 \u2603"}}],"model":"m"}\n\n'.encode()
    at = body.index("\u2603".encode()) + 1
    splitter = EventSplitter()
    events = splitter.feed(body[:at]) + splitter.feed(body[at:])
    assert events == [body]
    assert "\u2603" in parse_event(events[0]).data


# Every provider's recorded streams: (provider, file, the request info its path implies).
ALL_STREAMS = [
    *(("openai", f"openai/{name}") for name in STREAMS),
    ("anthropic", "anthropic/messages_stream_cache_read_and_write_claude-sonnet-4.json"),
    ("anthropic", "anthropic/messages_stream_text_claude-sonnet-4-5.json"),
    ("anthropic", "anthropic/messages_stream_thinking_claude-sonnet-4.json"),
    ("anthropic", "anthropic/messages_stream_tool_use_claude-haiku-4-5.json"),
    ("gemini", "gemini/stream_json_array_thinking_gemini-flash-latest.json"),
    ("gemini", "gemini/stream_sse_cumulative_usage_gemini-2.5-flash.json"),
    ("gemini", "gemini/stream_sse_function_call_gemini-2.5-flash.json"),
    ("gemini", "gemini/stream_sse_thinking_no_candidates_count_gemini-2.5-flash.json"),
]


def provider_tap(provider: str, recording: dict, encoding: str) -> StreamTap:
    response = recording["response"]
    info = RequestInfo(streamed=True)
    reader = provider_named(provider).stream_reader(info, response["headers"]["content-type"])
    assert reader is not None
    return StreamTap(reader, encoding)


@pytest.mark.parametrize(("provider", "name"), ALL_STREAMS)
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0), max_size=80))
def test_every_provider_stream_any_split(
    provider: str, name: str, encoding: str, points: list[int]
) -> None:
    """For any split, the bytes passed on are the input and the usage found is the same."""
    recording = load_recording(name)
    wire = ENCODE[encoding](recording["response"]["body_text"].encode())
    whole = provider_tap(provider, recording, encoding)
    assert run_tap(whole, [wire]) == wire
    tap = provider_tap(provider, recording, encoding)
    assert run_tap(tap, cut(wire, points)) == wire
    assert whole.reader.usage is not None
    assert tap.reader.usage == whole.reader.usage
    assert tap.reader.usage.raw == whole.reader.usage.raw
    assert tap.reader.response_model == recording["expected_usage"]["model"]
    assert tap.reader.complete


def test_anthropic_takes_the_latest_figures_never_a_sum() -> None:
    recording = load_recording(
        "anthropic/messages_stream_cache_read_and_write_claude-sonnet-4.json"
    )
    tap = provider_tap("anthropic", recording, "identity")
    run_tap(tap, [recording["response"]["body_text"].encode()])
    usage = tap.reader.usage
    # message_start said 3 / 2399 / 0; message_delta revised them to 17 / 23258 / 16242.
    assert (usage.cache_write_tokens, usage.cached_input_tokens) == (23258, 16242)
    assert usage.input_tokens == 17 + 23258 + 16242
    assert usage.output_tokens == 515


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), points=st.lists(st.integers(min_value=0), max_size=20))
def test_json_array_reader_never_raises_on_garbage(data: bytes, points: list[int]) -> None:
    reader = provider_named("gemini").stream_reader(RequestInfo(streamed=True), "application/json")
    out = run_tap(StreamTap(reader, "identity"), cut(data, points))
    assert out == data


@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=5),
    points=st.lists(st.integers(min_value=0), max_size=40),
)
def test_json_array_reader_copes_with_any_string_content(
    texts: list[str], points: list[int]
) -> None:
    """Quotes, backslashes and brackets inside strings never confuse the element finder."""
    elements = [
        {
            "candidates": [{"content": {"parts": [{"text": t}]}}],
            "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": i},
            "modelVersion": "m",
        }
        for i, t in enumerate(texts)
    ]
    body = ("[" + ",\r\n".join(json.dumps(e, indent=2) for e in elements) + "]").encode()
    reader = provider_named("gemini").stream_reader(RequestInfo(streamed=True), "application/json")
    assert run_tap(StreamTap(reader, "identity"), cut(body, points)) == body
    assert reader.usage.output_tokens == len(texts) - 1
    assert reader.complete


RECORDED_JSON = [
    (name.split("/")[0], load_recording(name)["response"]["body_text"].encode())
    for name in [
        "openai/chat_json_cached_prompt_gpt-4o.json",
        "openai/responses_json_cached_input_gpt-4o.json",
        "openai/error_404_model_not_found_chat.json",
        "anthropic/messages_json_cache_read_and_write_claude-sonnet-4.json",
        "anthropic/error_401_authentication_error.json",
        "gemini/generate_json_implicit_cache_gemini-2.5-flash.json",
        "gemini/error_400_api_key_invalid.json",
    ]
]


def mutate(body: bytes, edits: list[tuple[int, int]]) -> bytes:
    """Overwrite, delete or duplicate bytes at the given places."""
    data = bytearray(body)
    for position, value in edits:
        if not data:
            break
        i = position % len(data)
        match value % 3:
            case 0:
                data[i] = value % 256
            case 1:
                del data[i]
            case 2:
                data[i:i] = data[i : i + 8]
    return bytes(data)


@pytest.mark.parametrize(("provider", "body"), RECORDED_JSON, ids=lambda v: str(v)[:30])
@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 10**6)), max_size=12))
def test_json_parsers_never_raise_on_mutated_bodies(
    provider: str, body: bytes, edits: list[tuple[int, int]]
) -> None:
    parser = provider_named(provider)
    mutated = mutate(body, edits)
    for info in (RequestInfo(), RequestInfo(streamed=True)):
        usage, model = parser.usage_from_body(mutated, info)
        assert usage is None or all(
            v is None or (isinstance(v, int) and v >= 0)
            for v in (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
        )
        assert model is None or isinstance(model, str)
    code = parser.error_code(mutated)
    assert code is None or isinstance(code, str)


@pytest.mark.parametrize(("provider", "name"), ALL_STREAMS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 10**6)), max_size=12),
    points=st.lists(st.integers(min_value=0), max_size=30),
)
def test_mutated_streams_pass_unchanged_and_never_raise(
    provider: str, name: str, edits: list[tuple[int, int]], points: list[int]
) -> None:
    recording = load_recording(name)
    wire = mutate(recording["response"]["body_text"].encode(), edits)
    tap = provider_tap(provider, recording, "identity")
    assert run_tap(tap, cut(wire, points)) == wire
