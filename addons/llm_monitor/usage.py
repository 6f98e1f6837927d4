"""What one request used, in one normalised meaning for every provider.

`input_tokens` counts every prompt token, cached ones included; `cached_input_tokens` and
`cache_write_tokens` are parts of it. `output_tokens` counts every generated token,
reasoning included; `reasoning_tokens` is part of it. `raw` keeps the provider's own usage
object so that a mapping later found wrong can be recomputed.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(slots=True)
class TokenUsage:
    """A response's usage, in the `usage` table's meaning. A value, never changed once made
    (`dataclasses.replace` makes another); not frozen, because a frozen dataclass costs
    five times as much to build (2.7 against 0.5 µs), and one is built for every response.
    """

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None  # the part of cache writes kept for an hour
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    # Parts of input_tokens and output_tokens with rates of their own.
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    # Server-side tools billed per call (or per grounded prompt: Gemini 2.x's search).
    web_search_requests: int | None = None
    code_executions: int | None = None
    file_searches: int | None = None  # OpenAI Responses `file_search_call` items
    maps_grounded_prompts: int | None = None  # Gemini answers grounded with Google Maps
    # OpenAI's web searches by the `web_search_preview` tool: a price of their own ($25 per
    # 1,000 on gpt-4o and gpt-4.1, $10 on reasoning models), not `web_search`'s.
    web_search_preview_calls: int | None = None
    service_tier: str | None = None  # as the response states it (default, flex, priority)
    reported_cost_usd: float | None = None  # the charge the provider states (OpenRouter)
    # Units the response says were used that no price of ours counts (the library's names:
    # `input_audio_hours` for Mistral's `prompt_audio_seconds`): the row stays unpriced.
    uncounted_units: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


MAX_COUNT = 2**63 - 1  # SQLite's INTEGER


_formatted_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def utc_timestamp(epoch: float) -> str:
    """`2026-11-23T20:15:45.542Z`: sortable, and understood by SQLite's date functions.

    Called for every request: a second is formatted once, then reused for the rest of it.
    """
    global _formatted_second
    seconds = int(epoch)
    milliseconds = int((epoch - seconds) * 1000)
    second, text = _formatted_second
    if second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _formatted_second = (seconds, text)
    return f"{text}.{milliseconds:03d}Z"


def json_bytes(value: Any, *, fast: bool = True) -> bytes:
    """JSON without spaces: orjson's (a tenth of `json.dumps`' time; this runs for every
    request), or the standard library's for what orjson refuses: an integer beyond 64
    bits, a lone surrogate ("\\ud83d", kept by its ASCII escapes), nesting past 254.
    `fast=False` for a value that may hold NaN or Infinity, which orjson writes as null."""
    if fast:
        try:
            return orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError
            pass
    return json.dumps(value, separators=(",", ":")).encode()


def compact_json(value: Any) -> str:
    """`json_bytes` as text (a column's value)."""
    return json_bytes(value).decode()


def as_count(value: Any) -> int | None:
    """A token count from untrusted JSON: a non-negative int (not a bool), else None
    (never a guess). One type test: this runs for every count of every response."""
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None


class UsageRecord(BaseModel):
    """One row of the `usage` table, validated: what comes from outside the proxy (a
    spooled row being imported, a stored row being repriced) is read through it.

    The proxy itself hands the recorder the same fields as a plain dict (`blank_row`): built
    from its own typed values, a row needs no validation on the event loop, and a dict is a
    fifth of a model's cost to build there. Cost is not here: the recorder prices the row
    with the price in force at `ts`.
    """

    model_config = ConfigDict(extra="forbid")

    ts: str
    org_id: int | None
    token_id: int | None
    provider: str
    method: str
    path: str
    model: str | None = None
    response_model: str | None = None
    status: int | None = None
    outcome: str = Field(
        description="ok, provider_error, client_disconnected, upstream_error or proxy_shutdown"
    )
    streamed: bool = False
    usage_injected: bool = False
    billable: bool = True
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    web_search_requests: int | None = None
    code_executions: int | None = None
    file_searches: int | None = None
    web_search_preview_calls: int | None = None
    maps_grounded_prompts: int | None = None
    service_tier: str | None = None
    reported_cost_usd: float | None = None
    uncounted_units: str | None = None  # see TokenUsage
    latency_ms: float | None = None
    ttft_ms: float | None = None
    request_id: str | None = None
    user: str | None = None
    tags: str | None = None
    error: str | None = None
    raw_usage: str | None = None
    # Why the proxy did not read a body it would have read (over a limit): usage or model
    # may then be unknown.
    unread_reason: str | None = None
    # The provider key as the provider itself displays it (`sk-...abcd`), never more.
    key_hint: str | None = None
    # BLAKE2b (8 bytes, signed) of the request body as sent, for telling runaway loops.
    body_digest: int | None = None

    @field_validator("ts")
    @classmethod
    def _utc_iso(cls, value: str) -> str:
        if not value.endswith("Z"):
            raise ValueError("ts must be UTC ISO-8601 ending in Z")
        dt.datetime.fromisoformat(value[:-1])  # raises ValueError for anything else
        return value

    @property
    def billed_model(self) -> str | None:
        return billed_model(self.__dict__)

    @property
    def has_usage(self) -> bool:
        return has_usage(self.__dict__)

    @staticmethod
    def usage_fields(usage: TokenUsage) -> dict[str, Any]:
        return {
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "total_tokens": usage.total_tokens,
            "input_audio_tokens": usage.input_audio_tokens,
            "output_audio_tokens": usage.output_audio_tokens,
            "input_image_tokens": usage.input_image_tokens,
            "output_image_tokens": usage.output_image_tokens,
            "web_search_requests": usage.web_search_requests,
            "code_executions": usage.code_executions,
            "file_searches": usage.file_searches,
            "web_search_preview_calls": usage.web_search_preview_calls,
            "maps_grounded_prompts": usage.maps_grounded_prompts,
            "service_tier": usage.service_tier,
            "reported_cost_usd": usage.reported_cost_usd,
            "uncounted_units": usage.uncounted_units,
            "raw_usage": compact_json(usage.raw) if usage.raw else None,
        }


UsageRow = dict[str, Any]  # a UsageRecord's fields, as a plain dict (see UsageRecord)


def blank_row() -> UsageRow:
    """Every field of a usage row at its default; the proxy copies it and fills it in."""
    return dict(
        UsageRecord.model_construct(
            ts="", org_id=None, token_id=None, provider="", method="", path="", outcome=""
        ).__dict__
    )


def fields_of(record: UsageRecord | UsageRow) -> UsageRow:
    """A record's fields as a dict, whichever form it comes in (not copied: read only).
    Every field is a plain value, so a model's `__dict__` is what `model_dump` returns."""
    return record if isinstance(record, dict) else record.__dict__


def billed_model(row: UsageRow) -> str | None:
    """The model to price: the one the provider says answered, else the one asked for."""
    return row["response_model"] or row["model"]


def has_usage(row: UsageRow) -> bool:
    """Whether the provider's usage was seen (else nothing can be priced)."""
    return row["input_tokens"] is not None or row["output_tokens"] is not None
