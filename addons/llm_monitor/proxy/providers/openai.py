"""OpenAI and OpenAI-compatible APIs: chat completions, completions, embeddings, Responses.

Quirks that live here:
- usage is `prompt_tokens`/`completion_tokens` (chat, completions, embeddings) or
  `input_tokens`/`output_tokens` (Responses); cached and reasoning figures sit in `*_details`
  and are parts of the prompt and completion counts, not additions;
- a chat or completions stream reports usage only when asked for with
  `stream_options.include_usage`, in an extra chunk with empty `choices`; the proxy can ask
  on the client's behalf and take that chunk (and the `"usage":null` it adds to every other
  chunk) out again;
- a Responses stream carries usage in `response.completed` (or `.incomplete`/`.failed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from mitmproxy import http

from llm_monitor.proxy.providers.base import (
    FieldAdder,
    RequestInfo,
    SSEReader,
    TopLevelFields,
    bearer_token,
    count_field,
    load_json,
    load_json_for_rewrite,
)
from llm_monitor.proxy.sse import parse_event
from llm_monitor.usage import TokenUsage, as_count, json_bytes

# Endpoints whose streams accept `stream_options.include_usage`.
INJECTABLE_SUFFIXES = ("/chat/completions", "/completions")
_USAGE_NULL = (b',"usage":null', b', "usage": null')
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# What makes an event worth parsing once the model is known: a usage object that is not
# null, an error, or the stream's end. One scan of the event: a test for each (seven
# substring scans, this ran for every event of every stream) took 2.4 µs an event in a
# loop, this 1.0.
_WORTH_PARSING = re.compile(
    rb'"usage"\s*:\s*+(?!null)|\[DONE\]|"error"|response\.(?:completed|incomplete|failed)'
)


def _worth_parsing(raw: bytes) -> bool:
    """Once the model is known, only a usage object, an error or the stream's end matter;
    everything else is content, passed on as it came."""
    return _WORTH_PARSING.search(raw) is not None


_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})  # shared: read-only


def _details(usage: dict[str, Any], key: str) -> Mapping[str, Any]:
    """A `*_tokens_details` object ({} when absent or not an object): read once for its
    several counts, on every response."""
    details = usage.get(key)
    return details if isinstance(details, dict) else _NO_DETAILS


def normalise_usage(usage: dict[str, Any]) -> TokenUsage:
    """OpenAI's usage object in the table's meaning (already the same: parts, not sums).

    Some OpenAI-compatible APIs (xAI's) count reasoning outside `completion_tokens`; their
    `total_tokens` then equals prompt + completion + reasoning, and output gets the sum.
    """
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt_details = _details(usage, "prompt_tokens_details")
        completion_details = _details(usage, "completion_tokens_details")
        prompt = as_count(usage.get("prompt_tokens"))
        completion = as_count(usage.get("completion_tokens"))
        reasoning = as_count(completion_details.get("reasoning_tokens"))
        total = as_count(usage.get("total_tokens"))
        if (
            reasoning
            and None not in (prompt, completion)
            and total == prompt + completion + reasoning
        ):
            completion += reasoning
        return TokenUsage(
            input_tokens=prompt,
            cached_input_tokens=as_count(prompt_details.get("cached_tokens")),
            output_tokens=completion,
            reasoning_tokens=reasoning,
            total_tokens=total,
            input_audio_tokens=as_count(prompt_details.get("audio_tokens")),
            output_audio_tokens=as_count(completion_details.get("audio_tokens")),
            raw=usage,
        )
    if usage.get("type") == "duration":  # whisper-1's transcriptions: seconds of audio
        return TokenUsage(uncounted_units="input_audio_hours", raw=usage)
    input_details = _details(usage, "input_tokens_details")
    output_details = _details(usage, "output_tokens_details")
    audio = as_count(input_details.get("audio_tokens"))
    if audio is None:  # transcriptions spell it `input_token_details`
        audio = as_count(_details(usage, "input_token_details").get("audio_tokens"))
    return TokenUsage(
        input_tokens=as_count(usage.get("input_tokens")),
        cached_input_tokens=as_count(input_details.get("cached_tokens")),
        output_tokens=as_count(usage.get("output_tokens")),
        reasoning_tokens=as_count(output_details.get("reasoning_tokens")),
        total_tokens=as_count(usage.get("total_tokens")),
        input_audio_tokens=audio,
        input_image_tokens=as_count(input_details.get("image_tokens")),
        output_image_tokens=as_count(output_details.get("image_tokens")),
        raw=usage,
    )


# Responses output items billed per call, each at its own rate: web searches, file
# searches ($2.50 per 1,000 calls); code interpreter sessions have no per-call rate, so a
# response that used one is unpriced.
_TOOL_CALLS = {
    "web_search_call": "web_search_requests",
    "file_search_call": "file_searches",
    "code_interpreter_call": "code_executions",
}
# Chat Completions' search models (gpt-4o-search-preview, gpt-4o-mini-search-preview,
# gpt-5-search-api and their snapshots) search the web before every answer: each request
# is one search call, billed beside its tokens. The response says nothing more about it.
_SEARCH_MODEL = re.compile(r"-search-(?:preview|api)(?:-\d{4}-\d{2}-\d{2})?$")


# A multipart form's boundary, from its Content-Type (RFC 2046: at most 70 characters).
_BOUNDARY = re.compile(r'boundary="?([0-9A-Za-z\'()+_,./:=?-]{1,70})"?')
# A part's headers naming it `model` (not `filename="model"`), in a bounded head.
_MODEL_PART = re.compile(rb'(?im)^content-disposition:[^\r\n]*;\s*name="model"\s*(?:;|$)')
_PART_HEAD_MAX = 1024
_FORM_PARTS = 64


def form_model(body: bytes, content_type: str) -> str | None:
    """The `model` field of a multipart form (`/v1/audio/transcriptions`), found as the
    provider finds it: part by part, at the boundaries the Content-Type names, so that
    no file's bytes are read as a field. One `find` hops over each part, and at most
    `_FORM_PARTS` parts are looked at (a form of thousands of tiny parts is no request
    to transcribe, and must not hold the event loop)."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    delimiter = b"--" + found.group(1).encode()
    # The first delimiter may open the body; every other follows a line break.
    at = 0 if body.startswith(delimiter) else body.find(b"\r\n" + delimiter)
    if at > 0:
        at += 2
    for _ in range(_FORM_PARTS):
        if at < 0:
            return None
        head_start = at + len(delimiter) + 2  # past the delimiter's own line break
        head_end = body.find(b"\r\n\r\n", head_start, head_start + _PART_HEAD_MAX)
        if head_end < 0:
            return None
        if _MODEL_PART.search(body, head_start, head_end + 2):
            value_end = body.find(b"\r\n", head_end + 4, head_end + 4 + 202)
            if value_end < 0:
                return None
            return body[head_end + 4 : value_end].decode("utf-8", errors="replace") or None
        at = body.find(b"\r\n" + delimiter, head_end)
        if at >= 0:
            at += 2
    return None


def with_response_facts(usage: TokenUsage, holder: dict[str, Any]) -> TokenUsage:
    """What the response says beside `usage` that the bill depends on: its service tier
    (`default`, `flex`, `priority`), the tool calls in a Responses `output`, and the search
    a Chat Completions search model always makes."""
    facts: dict[str, Any] = {}
    tier = holder.get("service_tier")
    if isinstance(tier, str) and tier:
        facts["service_tier"] = tier[:40]
    output = holder.get("output")
    if isinstance(output, list):
        for item in output:
            field = _TOOL_CALLS.get(item.get("type")) if isinstance(item, dict) else None
            if field:
                facts[field] = facts.get(field, 0) + 1
    model = holder.get("model")
    if (
        isinstance(model, str)
        and "-search-" in model  # a substring test first: this runs for every response
        and str(holder.get("object", "")).startswith("chat.completion")
        and _SEARCH_MODEL.search(model)
    ):
        facts["web_search_requests"] = 1
    return dataclasses.replace(usage, **facts) if facts else usage


# What `inspect_request` reads of a request body; the rest (the conversation) is skipped.
_REQUEST_FIELDS = TopLevelFields(
    "model",
    "stream",
    "stream_options",
    "tools",
    "max_completion_tokens",
    "max_tokens",
    "max_output_tokens",
    "n",
)


def asks_for_usage(stream_options: Any) -> bool:
    """Whether a stream's `stream_options` ask for usage already."""
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


_WITH_USAGE = FieldAdder("stream_options", {"include_usage": True})


def ask_for_usage(request: http.Request, info: RequestInfo) -> None:
    """Add `stream_options.include_usage` to a stream's body (the client's own is kept in
    `info.unchanged_body`, to send again if the provider refuses the changed one). Most
    bodies have no `stream_options` (the SDKs' default): the member is added before the
    others, every other byte as sent. One with options of its own is parsed whole and
    written again; one no whole parse reads is left as it is."""
    raw = request.raw_content or b""
    changed = _WITH_USAGE(raw)
    if changed is None:
        body, read_by_orjson = load_json_for_rewrite(raw)
        if not isinstance(body, dict):
            return
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        body["stream_options"] = {**options, "include_usage": True}
        changed = json_bytes(body, fast=read_by_orjson)
    info.unchanged_body = raw
    request.content = changed
    info.usage_injected = True


def offers_web_search_preview(tools: Any) -> bool:
    """Whether a request's `tools` include OpenAI's `web_search_preview` (or a dated
    `web_search_preview_2025_03_11`): its calls come back as `web_search_call` items like
    `web_search`'s, but are billed at another rate."""
    return isinstance(tools, list) and any(
        isinstance(tool, dict)
        and isinstance(tool.get("type"), str)
        and tool["type"].startswith("web_search_preview")
        for tool in tools
    )


def as_requested(usage: TokenUsage, info: RequestInfo) -> TokenUsage:
    """The web searches of a request that offered `web_search_preview` counted as such
    (with both tools offered, which one searched is not said: all count as preview, which
    no cost is guessed for)."""
    if info.web_search_preview and usage.web_search_requests:
        return dataclasses.replace(
            usage, web_search_requests=None, web_search_preview_calls=usage.web_search_requests
        )
    return usage


def _usage_and_model(obj: Any) -> tuple[dict[str, Any] | None, str | None, dict[str, Any]]:
    """The usage object, model and enclosing object of a response body or stream event,
    wherever they sit: top level, in a Responses event's `response`, or under Groq's
    `x_groq`."""
    if not isinstance(obj, dict):
        return None, None, {}
    holder = obj.get("response") if isinstance(obj.get("response"), dict) else obj
    usage = holder.get("usage")
    vendor = holder.get("x_groq")
    if usage is None and isinstance(vendor, dict):
        usage = vendor.get("usage")
    model = holder.get("model")
    return (
        (usage if isinstance(usage, dict) else None),
        (model if isinstance(model, str) else None),
        holder,
    )


# A float embeddings response can be 40 MB; parsing it whole holds the GIL, and so the
# proxy's event loop, for about a second. OpenAI ends such bodies with `"model": ...,
# "usage": {...}}`: read just that tail.
LARGE_BODY = 64 * 1024
_RESPONSE_OBJECT = re.compile(rb'"object"\s*:\s*"response"')
_DECODER = json.JSONDecoder()


def _usage_at_the_end(body: bytes) -> tuple[dict[str, Any], str | None] | None:
    """The usage object (and model) when they are the body's last top-level keys, else
    None."""
    tail = body[-4096:].decode("utf-8", errors="replace")
    start = tail.rfind('"usage"')
    if start < 0:
        return None
    try:
        colon = tail.index(":", start)
        usage, end = _DECODER.raw_decode(tail, tail.index("{", colon))
    except ValueError:
        return None
    # Only the closing brace of the whole body may follow: then `usage` is at the top level.
    if tail[end:].strip() != "}" or not isinstance(usage, dict):
        return None
    model = None
    head = tail[:start].rstrip()
    key = head.rfind('"model"')
    if head.endswith(",") and key >= 0:
        with contextlib.suppress(ValueError):
            value, value_end = _DECODER.raw_decode(head, head.index('"', head.index(":", key)))
            if isinstance(value, str) and head[value_end:].strip() == ",":
                model = value
    return usage, model


def error_code_of(obj: Any) -> str | None:
    """`error.code`, else `error.type`, of an OpenAI-shaped error."""
    if not isinstance(obj, dict):
        return None
    error = obj.get("error")
    if isinstance(error, dict):
        for key in ("code", "type", "message"):
            if isinstance(error.get(key), str) and error[key]:
                return error[key][:200]
    elif isinstance(error, str) and error:
        return error[:200]
    return None


UsageReader = Callable[[dict[str, Any], dict[str, Any]], TokenUsage]


def rate_limit_type(message: str, code: str) -> str:
    """The `type` OpenAI gives a 429 of this kind: a rate limit is `requests` or `tokens`
    (per minute) with code `rate_limit_exceeded`; a spending limit is `insufficient_quota`
    (its code says which limit), which clients do not retry."""
    if code.startswith("budget_") and code != "budget_not_ready":  # that one: retry now
        return "insufficient_quota"
    return "tokens" if " tokens this minute" in message else "requests"


class OpenAIStreamReader(SSEReader):
    def __init__(self, *, usage_injected: bool, read_usage: UsageReader) -> None:
        super().__init__()
        self.usage_injected = usage_injected
        self.rewrites = usage_injected
        self.read_usage = read_usage

    def on_event(self, raw: bytes) -> bytes:
        if self.response_model is not None and not _worth_parsing(raw):
            # The common case, a content delta: passed on unparsed.
            return _without_usage_null(raw) if self.usage_injected else raw
        event = parse_event(raw)
        if event is None:
            return raw
        if event.data == "[DONE]" or event.name in _RESPONSES_FINAL:
            self.complete = True
        if event.data == "[DONE]":
            return raw
        obj = load_json(event.data)
        usage, model, holder = _usage_and_model(obj)
        if model and self.response_model is None:
            self.response_model = model
        if usage is not None:
            self.usage = self.read_usage(usage, holder)
        if event.name == "error" or (isinstance(obj, dict) and "error" in obj):
            self.error = error_code_of(obj) or "stream error"
        if not self.usage_injected or not isinstance(obj, dict):
            return raw
        if usage is not None and obj.get("choices") == []:
            return b""  # the usage-only chunk the client did not ask for
        if "usage" in obj and obj["usage"] is None:
            return _without_usage_null(raw)
        return raw


def _without_usage_null(raw: bytes) -> bytes:
    """The event as it would have been without include_usage: no `"usage":null` key."""
    for needle in _USAGE_NULL:
        if raw.count(needle) == 1:
            return raw.replace(needle, b"", 1)
    return raw


class OpenAI:
    name = "openai"

    def read_usage(self, usage: dict[str, Any], holder: dict[str, Any]) -> TokenUsage:
        """A usage object and the object around it (for subclasses' vendor fields)."""
        result = with_response_facts(normalise_usage(usage), holder)
        cost = self.reported_cost(usage)
        return dataclasses.replace(result, reported_cost_usd=cost) if cost is not None else result

    def reported_cost(self, usage: dict[str, Any]) -> float | None:
        """The charge the response itself states, in USD, for the APIs that state one
        (OpenRouter, xAI); None, never a guess, for the others and for a malformed one."""
        return None

    def inspect_request(
        self, request: http.Request, headers: Mapping[str, str], *, inject_usage: bool
    ) -> RequestInfo:
        content_type = headers.get("content-type", "").lower()
        if request.method != "POST":
            return RequestInfo()
        if content_type.startswith("multipart/form-data"):  # audio transcriptions
            return RequestInfo(model=form_model(request.raw_content or b"", content_type))
        if "json" not in content_type:
            return RequestInfo()
        body = _REQUEST_FIELDS(request.raw_content or b"")
        if body is None:
            return RequestInfo()
        model = body.get("model") if isinstance(body.get("model"), str) else None
        info = RequestInfo(model=model, streamed=body.get("stream") is True)
        info.web_search_preview = offers_web_search_preview(body.get("tools"))
        limit = count_field(body, "max_completion_tokens", "max_tokens", "max_output_tokens")
        if limit is not None:
            info.max_output = limit * max(count_field(body, "n") or 1, 1)
        if (
            inject_usage
            and info.streamed
            and not asks_for_usage(body.get("stream_options"))
            and request.path.split("?")[0].endswith(INJECTABLE_SUFFIXES)
        ):
            ask_for_usage(request, info)
        return info

    def usage_from_body(
        self, body: bytes, info: RequestInfo
    ) -> tuple[TokenUsage | None, str | None]:
        if (
            len(body) > LARGE_BODY
            and not _RESPONSE_OBJECT.search(body[:512])  # its output items count too
            and (found := _usage_at_the_end(body)) is not None
        ):
            # The provider's own reading of it (OpenRouter's and xAI's stated cost), as for
            # a body read whole; nothing else of the body is there to read.
            usage = self.usage_as_requested(info, found[0], {})
            model = found[1]
            if _SEARCH_MODEL.search(model or info.model or ""):
                usage = dataclasses.replace(usage, web_search_requests=1)
            return usage, model
        usage, model, holder = _usage_and_model(load_json(body))
        if usage is None:
            return None, model
        return self.usage_as_requested(info, usage, holder), model

    def error_code(self, body: bytes) -> str | None:
        return error_code_of(load_json(body))

    def stream_reader(self, info: RequestInfo, content_type: str) -> OpenAIStreamReader | None:
        if "text/event-stream" not in content_type:
            return None
        return OpenAIStreamReader(
            usage_injected=info.usage_injected,
            read_usage=functools.partial(self.usage_as_requested, info),
        )

    def usage_as_requested(
        self, info: RequestInfo, usage: dict[str, Any], holder: dict[str, Any]
    ) -> TokenUsage:
        """`read_usage`, with what the request said about its tools (`as_requested`): one
        path for a JSON answer and a stream alike."""
        return as_requested(self.read_usage(usage, holder), info)

    def rejection(self, status: int, message: str, code: str) -> bytes:
        error_type = "invalid_request_error"
        if status == 429:
            error_type = rate_limit_type(message, code)
        elif status >= 500:
            error_type = "server_error"
        return json.dumps(
            {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        ).encode()

    def key_hint(self, headers: Mapping[str, str]) -> str | None:
        """`sk-...abcd`, as OpenAI's console lists keys: the type prefix and the last four
        characters. Other OpenAI-compatible keys keep their prefix up to the first dash."""
        key = bearer_token(headers)
        if key is None or len(key) < 20:
            return None
        dash = key.find("-", 0, 8)
        prefix = "sk-" if key.startswith("sk-") else key[: dash + 1]
        return f"{prefix}...{key[-4:]}"
