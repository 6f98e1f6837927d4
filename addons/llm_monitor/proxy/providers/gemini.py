"""Google's Gemini API (generativelanguage.googleapis.com).

Quirks that live here:
- the model is in the URL (`/v1beta/models/{model}:generateContent`), the answering model
  in the response's `modelVersion`;
- `usageMetadata.promptTokenCount` includes `cachedContentTokenCount`; thinking is billed as
  output but counted apart, in `thoughtsTokenCount`, and `candidatesTokenCount` may be
  missing; the table's `output_tokens` is candidates + thoughts; tool-use prompt tokens are
  billed as input;
- `streamGenerateContent?alt=sse` is SSE with CRLF line endings; without `alt=sse` it is
  one JSON array whose elements arrive in pieces (`JsonArrayReader`); every element carries
  cumulative usage, so the last one wins;
- `countTokens` is not billed; embeddings carry no usage;
- grounding is billed beside tokens, and only each candidate's `groundingMetadata` shows
  it (in a stream, in a late chunk): Google Search per grounded prompt on Gemini 1.x and
  2.x (one per request that searched), per search query on Gemini 3 and later (the
  distinct non-empty `webSearchQueries`; Google ignores empty ones); both are counted in
  `web_search_requests`, at the model's search rate. Google Maps grounding is billed per
  grounded prompt (`maps_grounded_prompts`). Free daily or monthly allowances are per
  Google account, so they are not deducted here.
- input is one rate for text, images and video, and another for audio: the AUDIO part of
  `promptTokensDetails` is counted apart (`input_audio_tokens`); generated images and
  audio (`candidatesTokensDetails`) have rates of their own;
- credentials may come as `?key=` in the query string (never stored: see `stored_path`);
- the output bound a hard budget reserves is `generationConfig.maxOutputTokens` (times
  `candidateCount`), plus `thinkingConfig.thinkingBudget` when one is set: thinking is
  billed as output, and whether the model counts it within `maxOutputTokens` differs
  between model generations.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from mitmproxy import http

from llm_monitor.proxy.budget import json_too_complex
from llm_monitor.proxy.content_coding import TooLarge
from llm_monitor.proxy.providers.base import (
    RequestInfo,
    SSEReader,
    TopLevelFields,
    count_field,
    load_json,
)
from llm_monitor.proxy.sse import parse_event
from llm_monitor.usage import TokenUsage, as_count

_MODEL_METHOD = re.compile(r"/(?:models|tunedModels)/([^/:]+):([A-Za-z]+)$")
_FREE_METHODS = frozenset({"countTokens"})
_GENERATING = frozenset({"generateContent", "streamGenerateContent"})
_STRUCTURAL = re.compile(rb'[\\"\[\]{}]')
# google.rpc codes Google's APIs send with these HTTP statuses (400 is INVALID_ARGUMENT).
_STATUS_NAMES = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def normalise_usage(usage: dict[str, Any]) -> TokenUsage:
    prompt = as_count(usage.get("promptTokenCount"))
    tool_prompt = as_count(usage.get("toolUsePromptTokenCount"))
    candidates = as_count(usage.get("candidatesTokenCount"))
    thoughts = as_count(usage.get("thoughtsTokenCount"))
    has_input = prompt is not None or tool_prompt is not None
    has_output = candidates is not None or thoughts is not None
    prompt_parts = _by_modality(usage.get("promptTokensDetails"))
    output_parts = _by_modality(usage.get("candidatesTokensDetails"))
    return TokenUsage(
        input_tokens=(prompt or 0) + (tool_prompt or 0) if has_input else None,
        cached_input_tokens=as_count(usage.get("cachedContentTokenCount")),
        output_tokens=(candidates or 0) + (thoughts or 0) if has_output else None,
        reasoning_tokens=thoughts,
        total_tokens=as_count(usage.get("totalTokenCount")),
        input_audio_tokens=prompt_parts.get("AUDIO"),
        output_audio_tokens=output_parts.get("AUDIO"),
        output_image_tokens=output_parts.get("IMAGE"),
        raw=usage,
    )


def _by_modality(details: Any) -> dict[str, int]:
    """`[{"modality": "AUDIO", "tokenCount": 120}, ...]` as {"AUDIO": 120}."""
    found: dict[str, int] = {}
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and isinstance(item.get("modality"), str):
            count = as_count(item.get("tokenCount"))
            if count is not None:
                found[item["modality"]] = found.get(item["modality"], 0) + count
    return found


_GENERATION = re.compile(r"gemini-(\d+)")


@dataclasses.dataclass(slots=True)
class Grounding:
    """What the candidates' `groundingMetadata` of one answer (all of a stream's chunks)
    say was searched."""

    queries: set[str] = dataclasses.field(default_factory=set)
    web: bool = False  # Google Search grounded the answer
    maps: bool = False  # Google Maps grounded the answer

    def add(self, obj: Any) -> None:
        candidates = obj.get("candidates") if isinstance(obj, dict) else None
        for candidate in candidates if isinstance(candidates, list) else []:
            metadata = candidate.get("groundingMetadata") if isinstance(candidate, dict) else None
            if not isinstance(metadata, dict):
                continue
            queries = metadata.get("webSearchQueries")
            for query in queries if isinstance(queries, list) else []:
                if isinstance(query, str) and query.strip():
                    self.queries.add(query)
                    self.web = True
            chunks = metadata.get("groundingChunks")
            for chunk in chunks if isinstance(chunks, list) else []:
                if isinstance(chunk, dict):
                    self.web = self.web or "web" in chunk
                    self.maps = self.maps or "maps" in chunk
            if metadata.get("googleMapsWidgetContextToken"):
                self.maps = True

    def billed(self, usage: TokenUsage, model: str | None) -> TokenUsage:
        """The usage with the grounding Google bills for this model's generation."""
        facts: dict[str, int] = {}
        generation = _GENERATION.search(model or "")
        if generation is not None and int(generation.group(1)) < 3:
            if self.web:
                facts["web_search_requests"] = 1  # per grounded prompt
        elif self.queries:
            facts["web_search_requests"] = len(self.queries)  # per search query
        if self.maps:
            facts["maps_grounded_prompts"] = 1
        return dataclasses.replace(usage, **facts) if facts else usage


def usage_and_model(obj: Any) -> tuple[TokenUsage | None, str | None]:
    if not isinstance(obj, dict):
        return None, None
    usage = obj.get("usageMetadata")
    model = obj.get("modelVersion")
    return (
        normalise_usage(usage) if isinstance(usage, dict) else None,
        model if isinstance(model, str) else None,
    )


def has_finished(obj: Any) -> bool:
    candidates = obj.get("candidates") if isinstance(obj, dict) else None
    return isinstance(candidates, list) and any(
        isinstance(c, dict) and c.get("finishReason") for c in candidates
    )


def error_code_of(obj: Any) -> str | None:
    """The ErrorInfo `reason` (API_KEY_INVALID), else the `status` (INVALID_ARGUMENT)."""
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict):
        return None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
            return detail["reason"][:200]
    status = error.get("status")
    return status[:200] if isinstance(status, str) else None


class _ResponseReader:
    """What both stream shapes do with each whole response object they find."""

    usage: TokenUsage | None
    response_model: str | None
    error: str | None
    complete: bool
    requested_model: str | None = None  # from the URL: the generation, if none answers
    _tokens: TokenUsage | None = None  # the latest usageMetadata, before grounding
    _grounding: Grounding | None = None

    def take(self, obj: Any) -> None:
        usage, model = usage_and_model(obj)
        if usage is not None:
            self._tokens = usage
        if model is not None:
            self.response_model = model
        if self._grounding is None:
            self._grounding = Grounding()
        self._grounding.add(obj)
        if self._tokens is not None:
            self.usage = self._grounding.billed(
                self._tokens, self.response_model or self.requested_model
            )
        if isinstance(obj, dict) and "error" in obj:
            self.error = error_code_of(obj) or "stream error"
        if has_finished(obj):
            self.complete = True


class GeminiSSEReader(SSEReader, _ResponseReader):
    def __init__(self, requested_model: str | None = None) -> None:
        super().__init__()
        self.requested_model = requested_model

    def on_event(self, raw: bytes) -> bytes:
        event = parse_event(raw)
        if event is not None:
            self.take(load_json(event.data))
        return raw


class JsonArrayReader(_ResponseReader):
    """Finds the elements of a streamed top-level JSON array, whatever the chunk boundaries.

    Only the current element is kept; structure is tracked at the few characters that
    matter (quotes, backslashes, brackets), found with a regex rather than byte by byte.
    """

    rewrites: ClassVar[bool] = False
    max_element = 16 * 1024 * 1024  # one element kept at most (StreamTap caps it)

    def cap(self, max_read: int) -> None:
        self.max_element = max_read

    def __init__(self, requested_model: str | None = None) -> None:
        self.requested_model = requested_model
        self.unread: str | None = None
        self.usage = None
        self.response_model = None
        self.error = None
        self.complete = False
        self._depth = 0
        self._in_string = False
        self._escaped = False  # a backslash ended the last chunk: skip the next byte
        self._element = bytearray()
        self._collecting = False

    def feed(self, data: bytes) -> bytes:
        i, start = 0, 0
        if self._escaped and data:
            self._escaped, i = False, 1
        while (match := _STRUCTURAL.search(data, i)) is not None:
            j, char = match.start(), data[match.start()]
            i = j + 1
            if self._in_string:
                if char == 0x5C:  # backslash: the next byte is escaped
                    if j + 1 >= len(data):
                        self._escaped = True
                    i = j + 2
                elif char == 0x22:
                    self._in_string = False
            elif char == 0x22:
                self._in_string = True
            elif char in b"[{":
                self._depth += 1
                if self._depth == 2 and not self._collecting:
                    self._collecting, start = True, j
            elif char in b"]}":
                self._depth -= 1
                if self._depth == 1 and self._collecting:
                    self._element += data[start : j + 1]
                    element = bytes(self._element)
                    if (reason := json_too_complex(element)) is None:
                        self.take(load_json(element))
                    else:
                        self.unread = reason
                    self._element.clear()
                    self._collecting = False
                elif self._depth == 0:
                    self.complete = True
        if self._collecting:
            self._element += data[start:]
            if len(self._element) > self.max_element:
                raise TooLarge(f"a streamed JSON element longer than {self.max_element} bytes")
        return data

    def finish(self) -> bytes:
        return b""


def max_output(body: Any) -> int | None:
    """The most output tokens a generateContent body allows, or None when it sets no
    `maxOutputTokens`. The REST API takes camelCase and snake_case field names alike."""
    if not isinstance(body, dict):
        return None
    config = _field(body, "generationConfig", "generation_config")
    if not isinstance(config, dict):
        return None
    limit = count_field(config, "maxOutputTokens", "max_output_tokens")
    if limit is None:
        return None
    candidates = max(count_field(config, "candidateCount", "candidate_count") or 1, 1)
    thinking = _field(config, "thinkingConfig", "thinking_config")
    budget = None
    if isinstance(thinking, dict):
        budget = count_field(thinking, "thinkingBudget", "thinking_budget")
    return (limit + (budget or 0)) * candidates


def _field(body: dict[str, Any], *names: str) -> Any:
    """The first of a field's spellings that is set (not absent, not null)."""
    return next((body[name] for name in names if body.get(name) is not None), None)


# What `inspect_request` reads of a request body; the rest (the conversation) is skipped.
_REQUEST_FIELDS = TopLevelFields("generationConfig", "generation_config")


class Gemini:
    name = "gemini"

    def inspect_request(
        self, request: http.Request, headers: Mapping[str, str], *, inject_usage: bool
    ) -> RequestInfo:
        match = _MODEL_METHOD.search(request.path.split("?")[0])
        if match is None:
            return RequestInfo()
        model, method = match.groups()
        info = RequestInfo(
            model=model,
            streamed=method == "streamGenerateContent",
            billable=method not in _FREE_METHODS,
        )
        if method in _GENERATING and request.method == "POST":
            info.max_output = max_output(_REQUEST_FIELDS(request.raw_content or b""))
        return info

    def usage_from_body(
        self, body: bytes, info: RequestInfo
    ) -> tuple[TokenUsage | None, str | None]:
        if not info.billable:
            return None, None
        obj = load_json(body)
        if isinstance(obj, list):  # a streamGenerateContent answer that was not streamed
            reader = JsonArrayReader(info.model)
            reader.feed(body)
            return reader.usage, reader.response_model
        usage, model = usage_and_model(obj)
        if usage is not None:
            grounding = Grounding()
            grounding.add(obj)
            usage = grounding.billed(usage, model or info.model)
        return usage, model

    def error_code(self, body: bytes) -> str | None:
        obj = load_json(body)
        if isinstance(obj, list) and obj:
            obj = obj[0]
        return error_code_of(obj)

    def stream_reader(
        self, info: RequestInfo, content_type: str
    ) -> SSEReader | JsonArrayReader | None:
        if "text/event-stream" in content_type:
            return GeminiSSEReader(info.model)
        if info.streamed and "json" in content_type:
            return JsonArrayReader(info.model)
        return None

    def rejection(self, status: int, message: str, code: str) -> bytes:
        return json.dumps(
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": _STATUS_NAMES.get(status, "INVALID_ARGUMENT"),
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": code.upper(),
                            "domain": "llm-monitor",
                        }
                    ],
                }
            }
        ).encode()

    def key_hint(self, headers: Mapping[str, str]) -> str | None:
        """None: Google's billing data has no per-key dimension to compare with."""
        return None
