"""Anthropic's Messages API.

Quirks that live here:
- `usage.input_tokens` excludes cache reads and writes (they are added on top); the table's
  `input_tokens` is their sum. One-hour cache writes are billed at their own rate and
  reported in `usage.cache_creation.ephemeral_1h_input_tokens`.
- In a stream, `message_start` carries the input and cache figures and `message_delta`
  carries cumulative usage that may repeat or revise them: the latest value of each field
  wins, never a sum. `ping` events, and no `[DONE]`: `message_stop` ends the stream.
- Thinking tokens are billed as output and included in `output_tokens`; no separate count.
- `/v1/messages/count_tokens` answers with `input_tokens` but is not billed.
- Server tools are counted in `usage.server_tool_use`: `web_search_requests` are billed
  per 1,000 searches; `web_fetch_requests` cost tokens only (no per-call charge);
  `code_execution_requests` have no per-call rate (code execution is billed by container
  time), so a response that used it is unpriced rather than priced on tokens alone.
- `usage.service_tier` is `standard`, `priority` or `batch`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mitmproxy import http

from llm_monitor.proxy.providers.base import (
    RequestInfo,
    SSEReader,
    TopLevelFields,
    bearer_token,
    count_field,
    load_json,
)
from llm_monitor.proxy.sse import parse_event
from llm_monitor.usage import TokenUsage, as_count

_USAGE_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "error"})


def normalise_usage(usage: dict[str, Any]) -> TokenUsage:
    uncached = as_count(usage.get("input_tokens"))
    cache_read = as_count(usage.get("cache_read_input_tokens"))
    cache_write = as_count(usage.get("cache_creation_input_tokens"))
    split = usage.get("cache_creation")
    one_hour = as_count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else None
    parts = [uncached, cache_read, cache_write]
    tools = usage.get("server_tool_use")
    tools = tools if isinstance(tools, dict) else {}
    tier = usage.get("service_tier")
    return TokenUsage(
        input_tokens=sum(p or 0 for p in parts) if any(p is not None for p in parts) else None,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=one_hour,
        output_tokens=as_count(usage.get("output_tokens")),
        web_search_requests=as_count(tools.get("web_search_requests")),
        code_executions=as_count(tools.get("code_execution_requests")),
        service_tier=tier[:40] if isinstance(tier, str) and tier else None,
        raw=usage,
    )


# The error types Anthropic's API sends with these statuses (its "Errors" page); 400 and
# anything else is `invalid_request_error`.
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_code_of(obj: Any) -> str | None:
    """`error.type` of `{"type": "error", "error": {"type": ..., "message": ...}}`."""
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        return error["type"][:200]
    return None


class AnthropicStreamReader(SSEReader):
    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, Any] = {}

    def on_event(self, raw: bytes) -> bytes:
        # Content deltas and pings carry no usage: screened out before any parsing, since
        # this runs for every event of every stream.
        if b"message_" not in raw and b"error" not in raw:
            return raw
        event = parse_event(raw)
        if event is None or event.name not in _USAGE_EVENTS:
            return raw
        obj = load_json(event.data)
        if not isinstance(obj, dict):
            return raw
        if event.name == "message_start" and isinstance(obj.get("message"), dict):
            message = obj["message"]
            if isinstance(message.get("model"), str):
                self.response_model = message["model"]
            self._merge(message.get("usage"))
        elif event.name == "message_delta":
            self._merge(obj.get("usage"))
        elif event.name == "message_stop":
            self.complete = True
        elif event.name == "error":
            self.error = error_code_of(obj) or "stream error"
        return raw

    def _merge(self, usage: Any) -> None:
        """Cumulative figures: each field's latest value replaces the one before."""
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            self.usage = normalise_usage(dict(self._usage))


# What `inspect_request` reads of a request body; the rest (the conversation) is skipped.
_REQUEST_FIELDS = TopLevelFields("model", "stream", "max_tokens")


class Anthropic:
    name = "anthropic"

    def inspect_request(
        self, request: http.Request, headers: Mapping[str, str], *, inject_usage: bool
    ) -> RequestInfo:
        path = request.path.split("?")[0]
        body = _REQUEST_FIELDS(request.raw_content or b"")
        if body is None:
            return RequestInfo(billable=not path.endswith("/count_tokens"))
        model = body.get("model") if isinstance(body.get("model"), str) else None
        return RequestInfo(
            model=model,
            streamed=body.get("stream") is True,
            billable=not path.endswith("/count_tokens"),
            max_output=count_field(body, "max_tokens"),
        )

    def usage_from_body(
        self, body: bytes, info: RequestInfo
    ) -> tuple[TokenUsage | None, str | None]:
        obj = load_json(body)
        if not isinstance(obj, dict) or not info.billable:
            return None, None
        usage = obj.get("usage")
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        return (normalise_usage(usage) if isinstance(usage, dict) else None), model

    def error_code(self, body: bytes) -> str | None:
        return error_code_of(load_json(body))

    def stream_reader(self, info: RequestInfo, content_type: str) -> AnthropicStreamReader | None:
        return AnthropicStreamReader() if "text/event-stream" in content_type else None

    def rejection(self, status: int, message: str, code: str) -> bytes:
        error_type = _ERROR_TYPES.get(status, "invalid_request_error")
        if status >= 500 and status not in _ERROR_TYPES:
            error_type = "api_error"  # what Anthropic sends with its own 5xx
        return json.dumps(
            {"type": "error", "error": {"type": error_type, "message": message, "code": code}}
        ).encode()

    def key_hint(self, headers: Mapping[str, str]) -> str | None:
        """`sk-ant-api03-R2D...igAA`: the `partial_key_hint` Anthropic's console and Admin
        API show (the first 16 and the last 4 characters of a key of about 108). Recent SDKs
        send the key as a bearer token rather than in `x-api-key`."""
        key = headers.get("x-api-key", "").strip() or bearer_token(headers) or ""
        return f"{key[:16]}...{key[-4:]}" if len(key) >= 40 else None
