"""A local stand-in for the OpenAI, Anthropic and Gemini APIs, for `llm-monitor demo`.

The demo needs traffic the proxy reads exactly as it reads the real thing, without a
network or a provider key. So answers here have the field names and nesting of the real
recordings in `tests/corpus`, streams are sent event by event, and only the text is filler.
The figures follow from the request alone, so the same request always gets the same ones:

- input tokens: the characters of the prompt's strings / 4, rounded up (`prompt_tokens`);
- cached input (OpenAI, Gemini): three quarters of the prompt in 128-token blocks, once that
  is 1,024 tokens or more, as if a shared prefix had been seen before. Anthropic caches up
  to the last block marked `cache_control` when that prefix has 1,024 tokens or more:
  written on a conversation's first turn, read on later ones (three messages or more);
- output tokens: 16 to 255 of text, plus reasoning for the models that reason (OpenAI's o1,
  o3, o4 and gpt-5 families, Gemini 2.5 and 3 but not their lite models, Claude with
  `thinking` enabled), within the request's cap (`max_completion_tokens`, `max_tokens`,
  `max_output_tokens`, `maxOutputTokens`); a capped answer stops as the provider's does;
- latency: 20-80 ms to the first token and 2-6 ms between stream events, times
  `latency_scale` (0 for tests).

A request with the header `X-Standin-Status: 429` (any status from 400 to 599) gets that
status in the provider's own error shape. The server logs nothing and prints no tracebacks:
it runs inside `llm-monitor demo`, whose output is the demo's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import random
import re
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

STATUS_HEADER = "X-Standin-Status"
MAX_BODY = 32 * 1024 * 1024
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK = 128
MAX_TEXT_EVENTS = 16  # a stream carries its text in at most this many events
MAX_DIMENSIONS = 4096

# The answering model as each API names it: a dated snapshot of the alias asked for.
SNAPSHOTS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "gpt-5.1": "gpt-5.1-2025-11-13",
    "gpt-5.5": "gpt-5.5-2026-04-23",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-sonnet-4": "claude-sonnet-4-20250514",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}
_REASONING_EFFORT = {"none": 0.0, "minimal": 0.1, "low": 0.5, "medium": 1.0, "high": 2.0}
_NOT_TEXT = frozenset({"role", "type", "cache_control"})  # strings that are structure
_WORDS = (
    "the", "request", "was", "answered", "by", "a", "local", "stand-in", "with", "filler",
    "text", "whose", "length", "follows", "from", "prompt", "so", "that", "every", "figure",
    "in", "monitor", "looks", "like", "real", "traffic", "while", "no", "provider", "is",
    "called", "and", "key", "needed", "for", "demo", "of", "cost", "latency", "tokens",
)  # fmt: skip


class _ClientError(Exception):
    """A request answered with an error status, in the provider's error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# What an answer holds -------------------------------------------------------------------


def _text_chars(value: Any) -> int:
    """Characters of every string in a JSON value but structural ones (roles, types).

    Iterative: a deeply nested body must not exhaust the stack.
    """
    chars, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k not in _NOT_TEXT)
    return chars


def prompt_tokens(value: Any) -> int:
    """The stand-in's token count for a prompt: its text's characters / 4, rounded up."""
    return max(1, math.ceil(_text_chars(value) / 4))


def implicit_cache(input_tokens: int) -> int:
    """Cached tokens of an OpenAI or Gemini prompt (prefix caching, 128-token blocks)."""
    cached = input_tokens * 3 // 4 // CACHE_BLOCK * CACHE_BLOCK
    return cached if cached >= CACHE_MIN_TOKENS else 0


def _rng(*parts: Any) -> random.Random:
    """A generator seeded by the request's content, not its bytes: a request rewritten on
    the way (the proxy adds `stream_options`) gets the same answer."""
    canonical = json.dumps(parts, sort_keys=True, default=str).encode()
    return random.Random(int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big"))


def _object_at(obj: dict[str, Any], key: str) -> dict[str, Any]:
    """`obj[key]` when it is an object, else an empty one: optional settings read safely."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _cap(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True, slots=True)
class _Answer:
    model: str  # the answering model, as the provider names it
    text_tokens: int
    reasoning_tokens: int
    truncated: bool  # the cap stopped it
    pieces: tuple[str, ...]  # the text as stream events carry it
    tokens_per_piece: int
    first_token_delay: float
    event_gap: float

    @property
    def output_tokens(self) -> int:
        return self.text_tokens + self.reasoning_tokens

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def whole_delay(self) -> float:
        """What a non-streamed answer takes: the same time as its stream."""
        return self.first_token_delay + self.event_gap * len(self.pieces)

    def tokens_through(self, index: int) -> int:
        """Text tokens sent with piece `index` and those before it (Gemini's running count)."""
        return min(self.text_tokens, (index + 1) * self.tokens_per_piece)


def _answer(
    model: str,
    prompt: Any,
    *,
    cap: int | None,
    reasoning: float,
    latency_scale: float,
    reasoning_cap: int | None = None,
) -> _Answer:
    rng = _rng(model, prompt)
    text_tokens = rng.randint(16, 255)
    thought = round(rng.randint(32, 512) * reasoning)
    if reasoning_cap is not None:
        thought = min(thought, reasoning_cap)
    first_token_delay = rng.uniform(0.020, 0.080) * latency_scale
    event_gap = rng.uniform(0.002, 0.006) * latency_scale
    truncated = cap is not None and thought + text_tokens > cap
    if cap is not None and truncated:
        thought = min(thought, cap)  # reasoning comes first and uses the budget first
        text_tokens = cap - thought
    words = [rng.choice(_WORDS) for _ in range(text_tokens)]
    tokens = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    per_piece = max(1, math.ceil(text_tokens / MAX_TEXT_EVENTS))
    pieces = tuple("".join(tokens[i : i + per_piece]) for i in range(0, text_tokens, per_piece))
    return _Answer(
        SNAPSHOTS.get(model, model),
        text_tokens,
        thought,
        truncated,
        pieces,
        per_piece,
        first_token_delay,
        event_gap,
    )


# Replies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    body: dict[str, Any]
    query: dict[str, list[str]]
    path_model: str | None  # Gemini's model and method, from the URL
    path_method: str | None
    latency_scale: float


@dataclass(frozen=True, slots=True)
class _Reply:
    """A whole JSON body, or a stream of events sent one by one."""

    body: bytes | None = None
    events: Iterable[bytes] = ()
    content_type: str = "application/json"
    delay: float = 0.0  # before the first byte
    gap: float = 0.0  # between stream events


def _json(obj: Any, *, indent: int | None = None) -> bytes:
    """Compact, as every stream and Anthropic's bodies are; OpenAI and Gemini indent bodies."""
    if indent is not None:
        return json.dumps(obj, indent=indent).encode() + b"\n"
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(data: Any, event: str | None = None, *, line_end: str = "\n") -> bytes:
    payload = data if isinstance(data, bytes) else _json(data)
    head = f"event: {event}{line_end}".encode() if event else b""
    end = line_end.encode()
    return head + b"data: " + payload + end + end


def _whole(obj: Any, answer: _Answer | None, request: _Request, indent: int | None) -> _Reply:
    delay = answer.whole_delay if answer else 0.03 * request.latency_scale
    return _Reply(body=_json(obj, indent=indent), delay=delay)


def _require_model(body: dict[str, Any], message: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ClientError(400, message)
    return model


# OpenAI ----------------------------------------------------------------------------------


def _openai_reasoning(model: str, effort: Any) -> float:
    reasons = re.match(r"o\d", model) or (model.startswith("gpt-5") and "chat" not in model)
    if not reasons:
        return 0.0
    return _REASONING_EFFORT.get(effort, 1.0) if isinstance(effort, str) else 1.0


def _chat_usage(input_tokens: int, answer: _Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": implicit_cache(input_tokens), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": answer.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_completions(request: _Request) -> _Reply:
    body = request.body
    model = _require_model(body, "you must provide a model parameter")
    if not isinstance(body.get("messages"), list):
        raise _ClientError(400, "Missing required parameter: 'messages'.")
    prompt = [body["messages"], body.get("tools")]
    input_tokens = prompt_tokens(prompt)
    answer = _answer(
        model,
        prompt,
        cap=_cap(body.get("max_completion_tokens")) or _cap(body.get("max_tokens")),
        reasoning=_openai_reasoning(model, body.get("reasoning_effort")),
        latency_scale=request.latency_scale,
    )
    finish_reason = "length" if answer.truncated else "stop"
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:29]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
    }
    tail = {"service_tier": "default", "system_fingerprint": None}
    usage = _chat_usage(input_tokens, answer)
    if body.get("stream") is not True:
        choice = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": answer.text,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return _whole({**head, "choices": [choice], "usage": usage, **tail}, answer, request, 2)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = {**head, "object": "chat.completion.chunk", **tail}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        # With include_usage, every chunk carries "usage":null, the last one the figures.
        return _sse({**head, "choices": [choice], **({"usage": None} if include_usage else {})})

    def events() -> Iterator[bytes]:
        yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
        for piece in answer.pieces:
            yield chunk({"content": piece}, None)
        yield chunk({}, finish_reason)
        if include_usage:
            yield _sse({**head, "choices": [], "usage": usage})
        yield _sse(b"[DONE]")

    return _stream(events(), answer, "text/event-stream; charset=utf-8")


def _embeddings(request: _Request) -> _Reply:
    body = request.body
    model = _require_model(body, "you must provide a model parameter")
    given = body.get("input")
    if isinstance(given, str) or (isinstance(given, list) and given and isinstance(given[0], int)):
        given = [given]
    if not isinstance(given, list) or not given:
        raise _ClientError(400, "'input' is a required property")
    default = 3072 if model == "text-embedding-3-large" else 1536
    dimensions = body.get("dimensions", default)
    if _cap(dimensions) is None or dimensions > MAX_DIMENSIONS:
        raise _ClientError(400, f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}")
    encoding = body.get("encoding_format", "float")
    data, used = [], 0
    for index, item in enumerate(given):
        # A string costs its characters / 4; a list of token ids costs its length.
        used += len(item) if isinstance(item, list) else prompt_tokens(item)
        rng = _rng(model, item)
        vector = [rng.uniform(-0.1, 0.1) for _ in range(dimensions)]
        embedding: list[float] | str = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    # `model` then `usage` last, as OpenAI orders them (the proxy reads a long body's tail).
    reply = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
    return _whole(reply, None, request, 2)


def _responses(request: _Request) -> _Reply:
    body = request.body
    model = _require_model(body, "Missing required parameter: 'model'.")
    if "input" not in body:
        raise _ClientError(400, "Missing required parameter: 'input'.")
    prompt = [body.get("instructions"), body["input"], body.get("tools")]
    input_tokens = prompt_tokens(prompt)
    effort = _object_at(body, "reasoning").get("effort")
    cap = _cap(body.get("max_output_tokens"))
    answer = _answer(
        model,
        prompt,
        cap=cap,
        reasoning=_openai_reasoning(model, effort),
        latency_scale=request.latency_scale,
    )
    hex_id = uuid.uuid4().hex * 2
    reasoning_item = {"id": f"rs_{hex_id[:50]}", "type": "reasoning", "summary": []}
    message_id = f"msg_{hex_id[14:64]}"
    done_status = "incomplete" if answer.truncated else "completed"
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": answer.text}
    message = {
        "id": message_id,
        "type": "message",
        "status": done_status,
        "content": [part],
        "role": "assistant",
    }
    output = ([reasoning_item] if answer.reasoning_tokens else []) + (
        [message] if answer.text_tokens else []
    )
    created = int(time.time())

    def response(status: str, items: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        finished = status in ("completed", "incomplete")
        return {
            "id": f"resp_{hex_id[:50]}",
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if finished else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if answer.truncated else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": cap,
            "model": answer.model,
            "output": items,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": effort if isinstance(effort, str) else None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": implicit_cache(input_tokens)},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        "total_tokens": input_tokens + answer.output_tokens,
    }
    if body.get("stream") is not True:
        return _whole(response(done_status, output, usage), answer, request, 2)

    def events() -> Iterator[bytes]:
        sequence = iter(range(1_000_000))

        def event(name: str, **fields: Any) -> bytes:
            return _sse({"type": name, **fields, "sequence_number": next(sequence)}, name)

        yield event("response.created", response=response("in_progress", [], None))
        yield event("response.in_progress", response=response("in_progress", [], None))
        index = 0
        if answer.reasoning_tokens:
            yield event("response.output_item.added", item=reasoning_item, output_index=index)
            yield event("response.output_item.done", item=reasoning_item, output_index=index)
            index += 1
        if answer.text_tokens:
            where = {"item_id": message_id, "output_index": index, "content_index": 0}
            started = {**message, "status": "in_progress", "content": []}
            yield event("response.output_item.added", item=started, output_index=index)
            yield event("response.content_part.added", **where, part={**part, "text": ""})
            for piece in answer.pieces:
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
            yield event("response.output_text.done", **where, text=answer.text, logprobs=[])
            yield event("response.content_part.done", **where, part=part)
            yield event("response.output_item.done", item=message, output_index=index)
        final = response(done_status, output, usage)
        yield event(f"response.{done_status}", response=final)

    return _stream(events(), answer, "text/event-stream; charset=utf-8")


# Anthropic -------------------------------------------------------------------------------


def _anthropic_blocks(body: dict[str, Any]) -> Iterator[Any]:
    """The prompt's blocks in cache order: tools, system, then each message's content."""
    tools, system, messages = body.get("tools"), body.get("system"), body.get("messages")
    yield from tools if isinstance(tools, list) else [tools]
    yield from system if isinstance(system, list) else [system]
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else message
        yield from content if isinstance(content, list) else [content]


def _anthropic_usage(body: dict[str, Any]) -> dict[str, Any]:
    """Input split as Anthropic splits it: uncached, read from cache, written to cache."""
    chars = cached_chars = 0
    for block in _anthropic_blocks(body):
        chars += _text_chars(block)
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            cached_chars = chars  # the cached prefix ends with the last marked block
    total = max(1, math.ceil(chars / 4))
    prefix = cached_chars // 4 if cached_chars // 4 >= CACHE_MIN_TOKENS else 0
    follow_up = len(body["messages"]) >= 3
    read, write = (prefix, 0) if follow_up else (0, prefix)
    return {
        "input_tokens": total - prefix,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": write, "ephemeral_1h_input_tokens": 0},
    }


def _anthropic_request(body: dict[str, Any]) -> str:
    model = _require_model(body, "model: Field required")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise _ClientError(400, "messages: Field required")
    return model


def _messages(request: _Request) -> _Reply:
    body = request.body
    model = _anthropic_request(body)
    if _cap(body.get("max_tokens")) is None:
        raise _ClientError(400, "max_tokens: Field required")
    thinking = _object_at(body, "thinking")
    thinks = thinking.get("type") == "enabled"
    usage = _anthropic_usage(body)
    answer = _answer(
        model,
        list(_anthropic_blocks(body)),
        cap=body["max_tokens"],
        reasoning=1.0 if thinks else 0.0,
        reasoning_cap=_cap(thinking.get("budget_tokens")),
        latency_scale=request.latency_scale,
    )
    # Claude 4 returns a summary of its thinking; the whole of it is billed as output.
    thought = {"type": "thinking", "thinking": "Working out a reply.", "signature": "c3RhbmRpbg=="}
    text_block = {"type": "text", "text": answer.text}
    blocks = [thought, text_block] if answer.reasoning_tokens else [text_block]
    stop_reason = "max_tokens" if answer.truncated else "end_turn"
    message = {
        "model": answer.model,
        "id": f"msg_01{uuid.uuid4().hex[:22]}",
        "type": "message",
        "role": "assistant",
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": answer.output_tokens, "service_tier": "standard"},
    }
    if body.get("stream") is not True:
        return _whole(message, answer, request, None)

    def events() -> Iterator[bytes]:
        def event(name: str, **fields: Any) -> bytes:
            return _sse({"type": name, **fields}, name)

        start_usage = {**usage, "output_tokens": 1, "service_tier": "standard"}
        started = {**message, "content": [], "stop_reason": None, "usage": start_usage}
        yield event("message_start", message=started)
        index = 0
        if answer.reasoning_tokens:
            yield event("content_block_start", index=0, content_block={**thought, "thinking": ""})
            delta = {"type": "thinking_delta", "thinking": thought["thinking"]}
            yield event("content_block_delta", index=0, delta=delta)
            signature = {"type": "signature_delta", "signature": thought["signature"]}
            yield event("content_block_delta", index=0, delta=signature)
            yield event("content_block_stop", index=0)
            index = 1
        yield event("content_block_start", index=index, content_block={**text_block, "text": ""})
        yield _sse(b'{"type": "ping"}', "ping")
        for piece in answer.pieces:
            delta = {"type": "text_delta", "text": piece}
            yield event("content_block_delta", index=index, delta=delta)
        yield event("content_block_stop", index=index)
        final_usage = {k: v for k, v in usage.items() if k != "cache_creation"}
        yield event(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={**final_usage, "output_tokens": answer.output_tokens},
        )
        yield event("message_stop")

    return _stream(events(), answer, "text/event-stream; charset=utf-8")


def _count_tokens(request: _Request) -> _Reply:
    _anthropic_request(request.body)
    input_tokens = prompt_tokens(list(_anthropic_blocks(request.body)))
    return _whole({"input_tokens": input_tokens}, None, request, None)


# Gemini ----------------------------------------------------------------------------------


def _gemini_prompt(request: _Request) -> list[Any]:
    body = request.body
    if not isinstance(body.get("contents"), list) or not body["contents"]:
        raise _ClientError(400, "* GenerateContentRequest.contents: contents is not specified")
    return [body.get("systemInstruction"), body["contents"], body.get("tools")]


def _generate_content(request: _Request) -> _Reply:
    model = request.path_model or ""
    prompt = _gemini_prompt(request)
    config = _object_at(request.body, "generationConfig")
    budget = _object_at(config, "thinkingConfig").get("thinkingBudget")
    thinks = ("2.5" in model or model.startswith("gemini-3")) and "lite" not in model
    if budget == 0:
        thinks = False
    input_tokens = prompt_tokens(prompt)
    cached = implicit_cache(input_tokens)
    answer = _answer(
        model,
        prompt,
        cap=_cap(config.get("maxOutputTokens")),  # thinking counts towards it
        reasoning=1.0 if thinks else 0.0,
        reasoning_cap=_cap(budget),
        latency_scale=request.latency_scale,
    )
    response_id = uuid.uuid4().hex[:23]

    def usage(text_tokens: int) -> dict[str, Any]:
        """Gemini leaves out the counts that are zero."""
        metadata: dict[str, Any] = {"promptTokenCount": input_tokens}
        if text_tokens:
            metadata["candidatesTokenCount"] = text_tokens
        metadata["totalTokenCount"] = input_tokens + text_tokens + answer.reasoning_tokens
        if cached:
            metadata["cachedContentTokenCount"] = cached
        metadata["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": input_tokens}]
        if cached:
            metadata["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        if answer.reasoning_tokens:
            metadata["thoughtsTokenCount"] = answer.reasoning_tokens
        return metadata

    def response(text: str, text_tokens: int, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if last:
            candidate["finishReason"] = "MAX_TOKENS" if answer.truncated else "STOP"
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": usage(text_tokens),
            "modelVersion": answer.model,
            "responseId": response_id,
        }

    if request.path_method != "streamGenerateContent":
        return _whole(response(answer.text, answer.text_tokens, True), answer, request, 2)
    pieces = answer.pieces or ("",)
    chunks = [
        response(piece, answer.tokens_through(i), i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]
    if request.query.get("alt") == ["sse"]:
        # `": "` after keys and CRLF line ends, as Gemini's SSE has them.
        events = (
            _sse(json.dumps(c, separators=(",", ": ")).encode(), line_end="\r\n") for c in chunks
        )
        return _stream(events, answer, "text/event-stream")
    # Without alt=sse: one JSON array whose elements arrive one by one.
    elements = (
        (b"[" if i == 0 else b",\r\n") + _json(c, indent=2).rstrip() for i, c in enumerate(chunks)
    )
    return _stream([*elements, b"]"], answer, "application/json; charset=UTF-8")


def _gemini_count_tokens(request: _Request) -> _Reply:
    total = prompt_tokens(_gemini_prompt(request))
    reply = {
        "totalTokens": total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
    }
    return _whole(reply, None, request, 2)


def _stream(events: Iterable[bytes], answer: _Answer, content_type: str) -> _Reply:
    return _Reply(
        events=events,
        content_type=content_type,
        delay=answer.first_token_delay,
        gap=answer.event_gap,
    )


# Errors, in each provider's shape ---------------------------------------------------------

_OPENAI_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(provider: str, status: int, message: str, request_id: str) -> dict[str, Any]:
    """`message` as `provider` words an error of this status, so its SDK raises the right one."""
    if provider == "anthropic":
        default = "api_error" if status >= 500 else "invalid_request_error"
        error = {"type": _ANTHROPIC_ERRORS.get(status, default), "message": message}
        return {"type": "error", "error": error, "request_id": request_id}
    if provider == "gemini":
        code = _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": message, "status": code}}
    default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    error_type, code = _OPENAI_ERRORS.get(status, default)
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


# The server ------------------------------------------------------------------------------

_GEMINI_PATH = re.compile(
    r"/v1(?:beta|alpha)?/(?:models|tunedModels)/([^/:]+):"
    r"(generateContent|streamGenerateContent|countTokens)"
)
_ROUTES: tuple[tuple[str, str, Callable[[_Request], _Reply]], ...] = (
    ("/chat/completions", "openai", _chat_completions),
    ("/embeddings", "openai", _embeddings),
    ("/responses", "openai", _responses),
    ("/messages/count_tokens", "anthropic", _count_tokens),
    ("/messages", "anthropic", _messages),
)
_GEMINI_METHODS: dict[str, Callable[[_Request], _Reply]] = {
    "generateContent": _generate_content,
    "streamGenerateContent": _generate_content,
    "countTokens": _gemini_count_tokens,
}


@dataclass(frozen=True, slots=True)
class _Route:
    provider: str
    endpoint: Callable[[_Request], _Reply]
    path_model: str | None = None  # Gemini's model and method, from the URL
    path_method: str | None = None


def _route(method: str, path: str) -> _Route | None:
    if method != "POST":
        return None
    if match := _GEMINI_PATH.fullmatch(path):
        model, gemini_method = match.groups()
        return _Route("gemini", _GEMINI_METHODS[gemini_method], model, gemini_method)
    for suffix, provider, endpoint in _ROUTES:
        if path.endswith(suffix):
            return _Route(provider, endpoint)
    return None


def _request_id_header(provider: str) -> tuple[str, str] | None:
    """OpenAI's `x-request-id`, Anthropic's `request-id`; Gemini sends none."""
    if provider == "openai":
        return "x-request-id", f"req_{uuid.uuid4().hex}"
    if provider == "anthropic":
        return "request-id", f"req_011C{uuid.uuid4().hex[:20]}"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams
    server_version = "llm-monitor-standin"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo's output is the demo's

    def setup(self) -> None:
        super().setup()
        # Headers and events leave in separate writes: without this, Nagle's algorithm and
        # delayed ACKs hold each back by up to 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.opened(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.closed(self.connection)

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the client hung up, or the server is stopping
            super().handle()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request too malformed to route (bad request line, huge headers): plain JSON too."""
        self.close_connection = True
        error = {"message": message or _phrase(code), "type": "bad_request"}
        self._send(code, _json({"error": error}), "application/json", None)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        route = _route(self.command, url.path)
        provider = route.provider if route else "openai"
        id_header = _request_id_header(provider)
        self._sent_headers = False
        try:
            raw = self._read_body()
        except _ClientError as e:
            self.close_connection = True  # where the next request starts is unknown
            self._send_error(provider, id_header, e.status, e.message)
            return
        if route is None:
            error = {"message": f"No route for {self.command} {url.path}", "type": "not_found"}
            self._send(404, _json({"error": error}), "application/json", None)
            return
        try:
            status = self._forced_status()
            if status is not None:
                time.sleep(0.03 * self.server.latency_scale)
                raise _ClientError(status, f"{_phrase(status)} (asked for with {STATUS_HEADER})")
            body = _parse(raw)
            request = _Request(
                body,
                parse_qs(url.query),
                route.path_model,
                route.path_method,
                self.server.latency_scale,
            )
            reply = route.endpoint(request)
            self._send_reply(reply, id_header)
        except _ClientError as e:
            self._send_error(provider, id_header, e.status, e.message)
        except OSError:
            raise
        except Exception:  # a bug here: answer 500 rather than print a traceback
            if self._sent_headers:
                self.close_connection = True
            else:
                self._send_error(provider, id_header, 500, "The stand-in failed to answer.")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("content-length", "0").strip() or "0"
        if not length.isdigit():
            raise _ClientError(400, "Content-Length is not a number")
        if int(length) > MAX_BODY:
            raise _ClientError(413, f"The body is larger than {MAX_BODY} bytes")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _ClientError(400, "Malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise _ClientError(413, f"The body is larger than {MAX_BODY} bytes")
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    def _forced_status(self) -> int | None:
        value = self.headers.get(STATUS_HEADER)
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or not 400 <= int(value) <= 599:
            raise _ClientError(400, f"{STATUS_HEADER} must be an error status from 400 to 599")
        return int(value)

    def _send_error(
        self, provider: str, id_header: tuple[str, str] | None, status: int, message: str
    ) -> None:
        request_id = id_header[1] if id_header else f"req_{uuid.uuid4().hex}"
        body = _json(error_body(provider, status, message, request_id))
        self._send(status, body, "application/json", id_header)

    def _send(
        self, status: int, body: bytes, content_type: str, id_header: tuple[str, str] | None
    ) -> None:
        self._start(status, content_type, id_header, length=len(body))
        self.wfile.write(body)

    def _start(
        self,
        status: int,
        content_type: str,
        id_header: tuple[str, str] | None,
        *,
        length: int | None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if id_header is not None:
            self.send_header(*id_header)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._sent_headers = True
        self.end_headers()

    def _send_reply(self, reply: _Reply, id_header: tuple[str, str] | None) -> None:
        time.sleep(reply.delay)
        if reply.body is not None:
            self._send(200, reply.body, reply.content_type, id_header)
            return
        self._start(200, reply.content_type, id_header, length=None)
        for index, event in enumerate(reply.events):
            if index:
                time.sleep(reply.gap)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))  # one event, one chunk
        self.wfile.write(b"0\r\n\r\n")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _ClientError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _ClientError(400, "The request body must be a JSON object")
    return body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's backlog of 5 drops a burst's connections: their SYNs are retried 1 s later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], latency_scale: float) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.latency_scale = latency_scale
        self._connections: set[socket.socket] = set()
        self._lock = threading.Condition()

    def server_bind(self) -> None:
        # HTTPServer's would look the host's name up in DNS, which can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._lock.notify_all()

    def close_connections(self, timeout: float) -> None:
        """End keep-alive connections (their threads wait for a next request otherwise)."""
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._lock.wait_for(lambda: not self._connections, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # socketserver would print a traceback to stderr


class StandinProvider:
    """OpenAI, Anthropic and Gemini on one local port, served from a background thread.

    Use it as a context manager; it stops serving and closes every connection on exit.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, latency_scale: float = 1.0
    ) -> None:
        if latency_scale < 0:
            raise ValueError("latency_scale must be 0 or more")
        self.host = host
        self.latency_scale = latency_scale
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (chosen by the system when asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL to give a proxy as its upstream, e.g. `http://127.0.0.1:51234`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> StandinProvider:
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        self._server = _Server((self.host, self._requested_port), self.latency_scale)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="llm-monitor-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections(timeout=2)
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> StandinProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
