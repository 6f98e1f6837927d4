"""Pricing through a real proxy (`llm-monitor proxy`, and `mitmdump` with the addon):
each provider's current models from genai-prices' figures, snapshots, server tools (web
and file searches, Chat Completions search models, Gemini's Google Search and Maps
grounding), modalities, service tiers, provider-reported cost, local overrides, Mistral's
streams and a rejected usage injection. Every expected cost is computed by hand from the
pinned genai-prices 0.2.3 rates (USD per 1M tokens)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import Proxy, row_for, rows, running_proxy, wait_for_log
from tests.replay import ReplayServer, Reply

LISTENERS = (
    "openai",
    "anthropic",
    "gemini",
    "xai",
    "groq",
    "mistral",
    "deepseek",
    "openrouter",
    "together",
    "fireworks",
)


@pytest.fixture(scope="module", params=["proxy", "mitmdump"])
def launcher(request: pytest.FixtureRequest) -> str:
    """Each behaviour through `llm-monitor proxy` and through the documented `mitmdump -s
    addons/monitor.py` line alike, each with a database of its own."""
    return request.param


@pytest.fixture(scope="module")
def priced_db(tmp_path_factory: pytest.TempPathFactory, launcher: str) -> Path:
    db_path = tmp_path_factory.mktemp(f"pricing-{launcher}") / "llm-monitor.db"
    invoke(db_path, "init")
    return db_path


@pytest.fixture(scope="module")
def pricing_token(priced_db: Path) -> str:
    return new_org(priced_db, "Pricing")


@pytest.fixture(scope="module")
def pricing_proxy(
    launcher: str, priced_db: Path, upstream: ReplayServer, pricing_token: str
) -> Iterator[Proxy]:
    with running_proxy(
        priced_db, f"http://127.0.0.1:{upstream.port}", providers=LISTENERS, launcher=launcher
    ) as proxy:
        yield proxy


def cost(text: str) -> float:
    return float(Decimal(text))


def chat(model: str, prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    """An OpenAI-shaped chat completion with this usage."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    usage.update(extra.pop("usage", {}))
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        "usage": usage,
        **extra,
    }


def send(
    proxy: Proxy,
    upstream: ReplayServer,
    token: str,
    listener: str,
    path: str,
    request: dict[str, Any],
    answer: dict[str, Any],
) -> dict[str, Any]:
    """One request through the proxy to a queued JSON answer; the row it left."""
    reply = upstream.reply(Reply(200, json.dumps(answer).encode()))
    response = httpx.post(
        proxy.url(listener) + path,
        json=request,
        headers={"X-Monitor-Token": token, "Authorization": f"Bearer {API_KEY}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return row_for(proxy.db_path, reply.request_id)


def send_chat(
    proxy: Proxy, upstream: ReplayServer, token: str, listener: str, answer: dict[str, Any]
) -> dict[str, Any]:
    request = {"model": answer["model"], "messages": [{"role": "user", "content": "Hi"}]}
    return send(proxy, upstream, token, listener, "/v1/chat/completions", request, answer)


def priced(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["cost_usd"], row["priced"], row["cost_basis"], row["unpriced_reason"]


LIBRARY = "genai-prices 0.2.3"


@pytest.mark.parametrize(
    ("listener", "answer", "expected", "basis"),
    [
        # gpt-5.4-mini: 1000 x 0.75 + 1000 cached x 0.075 + 500 x 4.5 = 750 + 75 + 2250
        (
            "openai",
            chat(
                "gpt-5.4-mini", 2000, 500, usage={"prompt_tokens_details": {"cached_tokens": 1000}}
            ),
            "0.003075",
            "openai/gpt-5.4-mini@2000-01-01",
        ),
        # grok-4.3: 800 x 1.25 + 200 cached x 0.2 + 100 x 2.5 = 1000 + 40 + 250
        (
            "xai",
            chat("grok-4.3", 1000, 100, usage={"prompt_tokens_details": {"cached_tokens": 200}}),
            "0.00129",
            "xai/grok-4.3@2000-01-01",
        ),
        # Groq's llama-3.3-70b-versatile, found under the listener's name: 1000 x 0.59 + 100 x 0.79
        (
            "groq",
            chat("llama-3.3-70b-versatile", 1000, 100),
            "0.000669",
            "groq/llama-3.3-70b-versatile@2000-01-01",
        ),
        # mistral-large-latest is mistral-large: 1000 x 2 + 100 x 6
        (
            "mistral",
            chat("mistral-large-latest", 1000, 100),
            "0.0026",
            "mistral/mistral-large@2000-01-01",
        ),
        # Together: 1000 x 0.88 + 100 x 0.88
        (
            "together",
            chat("meta-llama/Llama-3.3-70B-Instruct-Turbo", 1000, 100),
            "0.000968",
            "together/meta-llama/Llama-3.3-70B-Instruct-Turbo@2000-01-01",
        ),
        # Fireworks' long name for gpt-oss-120b: 1000 x 0.15 + 100 x 0.6
        (
            "fireworks",
            chat("accounts/fireworks/models/gpt-oss-120b", 1000, 100),
            "0.00021",
            "fireworks/gpt-oss-120b@2026-10-19",
        ),
        # gpt-4o-2024-05-13 has its own price, $5/$15 (gpt-4o is $2.50/$10): 5000 + 1500
        (
            "openai",
            chat("gpt-4o-2024-05-13", 1000, 100),
            "0.0065",
            "openai/gpt-4o-2024-05-13@2000-01-01",
        ),
        # gpt-4o-2024-08-06 is listed as gpt-4o: 2500 + 1000
        ("openai", chat("gpt-4o-2024-08-06", 1000, 100), "0.0035", "openai/gpt-4o@2000-01-01"),
    ],
)
def test_current_models_are_priced_from_the_library(
    pricing_proxy: Proxy,
    upstream: ReplayServer,
    pricing_token: str,
    listener: str,
    answer: dict[str, Any],
    expected: str,
    basis: str,
) -> None:
    row = send_chat(pricing_proxy, upstream, pricing_token, listener, answer)
    assert priced(row) == (cost(expected), 1, f"{LIBRARY}:{basis}", None)


def test_deepseek_follows_the_time_of_day(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    row = send_chat(
        pricing_proxy, upstream, pricing_token, "deepseek", chat("deepseek-chat", 1000, 100)
    )
    clock = dt.time.fromisoformat(row["ts"][11:19])
    if dt.time(0, 30) <= clock < dt.time(16, 30):  # peak: 1000 x 0.27 + 100 x 1.1
        expected, window = "0.00038", " 00:30-16:30Z"
    else:  # off-peak: 1000 x 0.135 + 100 x 0.55
        expected, window = "0.00019", ""
    assert priced(row) == (
        cost(expected),
        1,
        f"{LIBRARY}:deepseek/deepseek-chat@2000-01-01{window}",
        None,
    )


def test_claude_opus_4_7_with_cache_writes_of_both_lengths(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-7",
        "content": [{"type": "text", "text": "Hi"}],
        "usage": {
            "input_tokens": 100,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 2000,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 1000,
                "ephemeral_1h_input_tokens": 1000,
            },
            "output_tokens": 300,
            "service_tier": "standard",
        },
    }
    request = {
        "model": "claude-opus-4-7",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    row = send(pricing_proxy, upstream, pricing_token, "anthropic", "/v1/messages", request, answer)
    # 100 x 5 + 1000 x 0.5 + 1000 x 6.25 + 1000 x 10 + 300 x 25 = 500 + 500 + 6250 + 10000 + 7500
    assert priced(row) == (
        cost("0.02475"),
        1,
        f"{LIBRARY}:anthropic/claude-opus-4-7@2000-01-01",
        None,
    )
    assert row["service_tier"] == "standard"


def anthropic_answer(model: str, **tools: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hi"}],
        "usage": {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": tools},
    }


def test_web_searches_are_billed_and_code_execution_refused(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    answer = anthropic_answer("claude-sonnet-4-5", web_search_requests=3, web_fetch_requests=2)
    row = send(pricing_proxy, upstream, pricing_token, "anthropic", "/v1/messages", request, answer)
    # 1000 x 3 + 100 x 15 = 4500 per 1M, + 3 searches x $10 / 1,000 (web fetches: tokens only)
    assert priced(row) == (
        cost("0.0345"),
        1,
        f"{LIBRARY}:anthropic/claude-sonnet-4-5@2000-01-01",
        None,
    )
    assert row["web_search_requests"] == 3
    # Code execution is billed by container time, not per call: no rate, so no cost.
    answer = anthropic_answer("claude-sonnet-4-5", code_execution_requests=1)
    row = send(pricing_proxy, upstream, pricing_token, "anthropic", "/v1/messages", request, answer)
    assert priced(row) == (None, 0, None, "missing_rate:code_execution")


def test_openai_web_search_calls_are_billed(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    answer = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-4.1-2025-04-14",
        "output": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "web_search_call", "id": "ws_2", "status": "completed"},
            {"type": "message", "role": "assistant", "content": []},
        ],
        "usage": {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100},
        "service_tier": "default",
    }
    request = {"model": "gpt-4.1", "input": "Hi", "tools": [{"type": "web_search"}]}
    row = send(pricing_proxy, upstream, pricing_token, "openai", "/v1/responses", request, answer)
    # 1000 x 2 + 100 x 8 = 2800 per 1M, + 2 searches x $10 / 1,000
    assert priced(row) == (cost("0.0228"), 1, f"{LIBRARY}:openai/gpt-4.1@2000-01-01", None)
    assert (row["web_search_requests"], row["service_tier"]) == (2, "default")


def test_audio_tokens_have_their_own_rate_or_no_cost(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    answer = {
        "candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 1000,
            "candidatesTokenCount": 200,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 600},
                {"modality": "AUDIO", "tokenCount": 400},
            ],
        },
        "modelVersion": "gemini-2.5-flash",
    }
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    row = send(pricing_proxy, upstream, pricing_token, "gemini", path, {"contents": []}, answer)
    # 600 text x 0.30 + 400 audio x 1.00 + 200 x 2.50 = 180 + 400 + 500
    assert priced(row) == (
        cost("0.00108"),
        1,
        f"{LIBRARY}:gemini/gemini-2.5-flash@2000-01-01",
        None,
    )
    assert row["input_audio_tokens"] == 400
    # gpt-4o has no audio rate: audio input is not billed at the text rate.
    audio = chat("gpt-4o", 1000, 10, usage={"prompt_tokens_details": {"audio_tokens": 300}})
    row = send_chat(pricing_proxy, upstream, pricing_token, "openai", audio)
    assert priced(row) == (None, 0, None, "missing_rate:input_audio")


def test_unknown_snapshots_fall_back_only_when_the_family_agrees(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    # Every gpt-4.1 snapshot costs gpt-4.1's price: 1000 x 2 + 100 x 8, and the row says so.
    row = send_chat(
        pricing_proxy, upstream, pricing_token, "openai", chat("gpt-4.1-2099-01-01", 1000, 100)
    )
    assert priced(row) == (
        cost("0.0028"),
        1,
        f"fallback:gpt-4.1 {LIBRARY}:openai/gpt-4.1@2000-01-01",
        None,
    )
    # A date no snapshot can have yet, which the library's prefix rule would take as
    # claude-sonnet-4-5 itself: a fallback, said so (1000 x 3 + 100 x 15).
    model = "claude-sonnet-4-5-20991231"
    request = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    answer = anthropic_answer(model)
    row = send(pricing_proxy, upstream, pricing_token, "anthropic", "/v1/messages", request, answer)
    assert priced(row) == (
        cost("0.0045"),
        1,
        f"fallback:claude-sonnet-4-5 {LIBRARY}:anthropic/claude-sonnet-4-5@2000-01-01",
        None,
    )
    # gpt-4o-2024-05-13 costs more than gpt-4o: an unknown gpt-4o snapshot is not guessed.
    row = send_chat(
        pricing_proxy, upstream, pricing_token, "openai", chat("gpt-4o-2099-01-01", 1000, 100)
    )
    assert priced(row) == (None, 0, None, "no_price")
    checked = json.loads(invoke(priced_db, "pricing", "check", "--json"))
    problems = {(c["model"], c["problem"]) for c in checked}
    assert {
        ("gpt-4.1-2099-01-01", "fallback:gpt-4.1"),
        ("claude-sonnet-4-5-20991231", "fallback:claude-sonnet-4-5"),
        ("gpt-4o-2099-01-01", "no_price"),
    } <= problems
    unpriced = json.loads(invoke(priced_db, "pricing", "unpriced", "--json"))
    assert "gpt-4o-2099-01-01" in {u["model"] for u in unpriced}
    assert "gpt-4.1-2099-01-01" not in {u["model"] for u in unpriced}


def test_a_model_priced_only_in_units_the_proxy_does_not_count(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    """tts-1 is priced per million characters of input, and its answer is audio: it has a
    price, so it is not "no price", and it is not "usage unseen" either."""
    reply = upstream.reply(Reply(200, b"ID3\x03audio", content_type="audio/mpeg"))
    response = httpx.post(
        pricing_proxy.url("openai") + "/v1/audio/speech",
        json={"model": "tts-1", "input": "Hello there", "voice": "alloy"},
        headers={"X-Monitor-Token": pricing_token, "Authorization": f"Bearer {API_KEY}"},
        timeout=20,
    )
    assert (response.status_code, response.content) == (200, b"ID3\x03audio")
    row = row_for(priced_db, reply.request_id)
    assert priced(row) == (None, 0, None, "uncounted_unit:input_mchars")
    explained = invoke(priced_db, "explain", str(row["id"]))
    assert "priced by input_mchars, which the proxy does not count" in explained
    checked = json.loads(invoke(priced_db, "pricing", "check", "--json"))
    assert ("tts-1", "uncounted_unit:input_mchars") in {(c["model"], c["problem"]) for c in checked}
    unpriced = json.loads(invoke(priced_db, "pricing", "unpriced", "--json"))
    assert "tts-1" not in {u["model"] for u in unpriced}


def test_transcriptions_find_their_model_in_the_form(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    """The openai SDK sends a transcription as a multipart form: the model is read from it,
    audio tokens (`input_token_details`, as transcriptions spell it) at the audio rate;
    whisper-1's answer counts seconds, which no price of ours counts."""
    client = openai.OpenAI(
        base_url=pricing_proxy.url("openai") + "/v1",
        api_key=API_KEY,
        default_headers={"X-Monitor-Token": pricing_token},
        max_retries=0,
    )
    usage = {
        "type": "tokens",
        "input_tokens": 1000,
        "input_token_details": {"text_tokens": 200, "audio_tokens": 800},
        "output_tokens": 100,
        "total_tokens": 1100,
    }
    reply = upstream.reply(Reply(200, json.dumps({"text": "Hi", "usage": usage}).encode()))
    client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", b"RIFF" * 64))
    row = row_for(pricing_proxy.db_path, reply.request_id)
    # 200 text x 2.5 + 800 audio x 6 + 100 x 10 per 1M = 500 + 4800 + 1000
    assert (row["model"], row["input_audio_tokens"]) == ("gpt-4o-transcribe", 800)
    assert priced(row) == (
        cost("0.0063"),
        1,
        f"{LIBRARY}:openai/gpt-4o-transcribe@2000-01-01",
        None,
    )
    answer = {"text": "Hi", "usage": {"type": "duration", "seconds": 12}}
    reply = upstream.reply(Reply(200, json.dumps(answer).encode()))
    client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF" * 64))
    row = row_for(pricing_proxy.db_path, reply.request_id)
    assert row["model"] == "whisper-1"
    assert priced(row) == (None, 0, None, "uncounted_unit:audio_hours,input_audio_hours")


def test_mistral_audio_in_a_chat_is_not_priced_on_tokens_alone(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    """Voxtral bills audio per hour beside the tokens; Mistral's usage states the seconds.
    With audio, no cost (not the tokens' alone); without, the tokens' price."""
    audio = chat("voxtral-small-latest", 1000, 100, usage={"prompt_audio_seconds": 42})
    row = send_chat(pricing_proxy, upstream, pricing_token, "mistral", audio)
    assert priced(row) == (None, 0, None, "uncounted_unit:input_audio_hours")
    assert row["uncounted_units"] == "input_audio_hours"
    # A reprice leaves it so: the reason is kept with the row.
    invoke(priced_db, "pricing", "reprice", "--since", row["ts"][:10])
    assert priced(row_for(priced_db, row["request_id"])) == priced(row)
    text = chat("voxtral-small-latest", 1000, 100, usage={"prompt_audio_seconds": 0})
    row = send_chat(pricing_proxy, upstream, pricing_token, "mistral", text)
    assert (row["priced"], row["uncounted_units"]) == (1, None)


def test_openrouter_reported_cost_is_the_cost(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    answer = chat("openai/gpt-4o", 1000, 100, usage={"cost": 0.00412, "is_byok": False})
    row = send_chat(pricing_proxy, upstream, pricing_token, "openrouter", answer)
    assert priced(row) == (0.00412, 1, "provider_reported", None)
    assert row["reported_cost_usd"] == 0.00412
    assert "as stated by the provider" in invoke(priced_db, "explain", str(row["id"]))
    # Without usage.cost, OpenRouter's own list price: 1000 x 2.5 + 100 x 10
    row = send_chat(
        pricing_proxy, upstream, pricing_token, "openrouter", chat("openai/gpt-4o", 1000, 100)
    )
    assert row["cost_basis"].startswith(f"{LIBRARY}:openrouter/openai/gpt-4o@")
    assert row["cost_usd"] == cost("0.0035")
    # Over 64 KB, with usage last, the tail alone is read: the stated cost still counts.
    answer = chat("openai/gpt-4o", 1000, 100, usage={"cost": 0.00412})
    answer["choices"][0]["message"]["content"] = "x" * 100_000
    answer["usage"] = answer.pop("usage")
    row = send_chat(pricing_proxy, upstream, pricing_token, "openrouter", answer)
    assert priced(row) == (0.00412, 1, "provider_reported", None)


def test_xai_reported_cost_is_the_cost(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    """xAI states each response's charge in `usage.cost_in_usd_ticks` (10^-10 USD), server-
    side tools (X search, ...) included: that is the cost, whatever the table says."""
    ticks = 37_756_000  # docs.x.ai's example: $0.0038
    answer = chat("grok-4", 1000, 100, usage={"cost_in_usd_ticks": ticks})
    row = send_chat(pricing_proxy, upstream, pricing_token, "xai", answer)
    assert priced(row) == (ticks / 10**10, 1, "provider_reported", None)
    assert row["reported_cost_usd"] == 0.0037756
    assert "as stated by the provider" in invoke(priced_db, "explain", str(row["id"]))
    # A value that is not a whole number of ticks is no cost: the table's price instead.
    odd = chat("grok-4", 1000, 100, usage={"cost_in_usd_ticks": "37756000"})
    row = send_chat(pricing_proxy, upstream, pricing_token, "xai", odd)
    assert row["reported_cost_usd"] is None and row["cost_basis"] != "provider_reported"


def test_service_tiers_are_priced_by_their_own_rates(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    flex = chat("gpt-5.4-mini", 1000, 100, service_tier="flex")
    row = send_chat(pricing_proxy, upstream, pricing_token, "openai", flex)
    # flex: 1000 x 0.375 + 100 x 2.25 = 375 + 225
    assert priced(row) == (
        cost("0.0006"),
        1,
        f"{LIBRARY}:openai/gpt-5.4-mini@2000-01-01 + service_tier=flex@2026-10-12",
        None,
    )
    assert row["service_tier"] == "flex"
    scale = chat("gpt-5.4-mini", 1000, 100, service_tier="scale")
    row = send_chat(pricing_proxy, upstream, pricing_token, "openai", scale)
    assert priced(row) == (None, 0, None, "missing_rate:service_tier=scale")


def test_a_local_override_wins_over_the_library_at_once(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    before = send_chat(
        pricing_proxy, upstream, pricing_token, "groq", chat("llama-3.1-8b-instant", 1000, 100)
    )
    assert before["cost_basis"] == f"{LIBRARY}:groq/llama-3.1-8b-instant@2000-01-01"
    invoke(
        priced_db, "pricing", "set", "llama-3.1-8b-instant", "--provider", "groq",
        "--input", "1", "--output", "2", "--source", "our Groq contract",
    )  # fmt: skip
    # The running proxy's recorder sees the new price before its next batch.
    row = send_chat(
        pricing_proxy, upstream, pricing_token, "groq", chat("llama-3.1-8b-instant", 1000, 100)
    )
    today = row["ts"][:10]
    # 1000 x 1 + 100 x 2
    assert priced(row) == (cost("0.0012"), 1, f"local:groq/llama-3.1-8b-instant@{today}", None)
    explained = invoke(priced_db, "explain", str(row["id"]))
    assert "source: our Groq contract" in explained
    assert "input (uncached)" in explained and "1,000 x $1 / 1M = $0.001" in explained
    assert "total" in explained and "$0.0012" in explained
    # The earlier row keeps its cost until someone reprices.
    dry = json.loads(
        invoke(priced_db, "pricing", "reprice", "--since", today, "--dry-run", "--json")
    )
    llama = next(m for m in dry if m["model"] == "llama-3.1-8b-instant")
    assert (llama["requests"], llama["changed"]) == (2, 1)


def sse(*events: dict[str, Any]) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


def chunk(
    model: str, content: str | None = None, usage: dict | None = None, finish: str | None = None
) -> dict:
    delta = {"content": content} if content is not None else {}
    event: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        event["usage"] = usage
    return event


def bonjour(model: str) -> bytes:
    """A chat stream from `model` saying "Bonjour", usage (1000 in, 100 out) on its last
    chunk as Mistral sends it unasked."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    return sse(
        chunk(model, "Bon"), chunk(model, "jour"), chunk(model, "", usage=usage, finish="stop")
    )


MISTRAL_STREAM = bonjour("mistral-small-latest")


def test_mistral_streams_are_not_injected(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    reply = upstream.reply(Reply(200, MISTRAL_STREAM, content_type="text/event-stream", seed=3))
    client = sdk_client(pricing_proxy, pricing_token, "mistral")
    stream = client.chat.completions.create(
        model="mistral-small-latest", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Bonjour"
    assert "stream_options" not in upstream.take_received().json()
    row = row_for(pricing_proxy.db_path, reply.request_id)
    assert (row["usage_injected"], row["input_tokens"], row["output_tokens"]) == (0, 1000, 100)
    # mistral-small-latest (from 2026-03-16): 1000 x 0.15 + 100 x 0.6
    assert priced(row) == (
        cost("0.00021"),
        1,
        f"{LIBRARY}:mistral/mistral-small-latest@2026-03-16",
        None,
    )


# A Together model the library prices: $0.30 in, $1.20 out per 1M tokens.
TOGETHER_STREAM = bonjour("MiniMaxAI/MiniMax-M3")


def test_a_rejected_injection_is_sent_again_unchanged(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    db_path = tmp_path / "retry.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Retry")
    rejection = {
        "detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", "stream_options"],
                "msg": "Extra inputs are not permitted",
            }
        ]
    }
    with running_proxy(
        db_path, f"http://127.0.0.1:{upstream.port}", providers=("together",)
    ) as proxy:
        refused = upstream.reply(Reply(422, json.dumps(rejection).encode()))
        answered = upstream.reply(
            Reply(200, TOGETHER_STREAM, content_type="text/event-stream", seed=5)
        )
        body = (
            b'{"model": "MiniMaxAI/MiniMax-M3", "stream": true,\n'
            b' "messages": [{"role": "user", "content": "Hi \\u00e9"}]}'
        )
        with httpx.stream(
            "POST",
            proxy.url("together") + "/v1/chat/completions",
            content=body,
            headers={
                "X-Monitor-Token": token,
                "Authorization": f"Bearer {API_KEY}",
                "Content-Type": "application/json",
            },
            timeout=20,
        ) as response:
            received = response.read()
        # The client gets the answer it would have had without the proxy.
        assert response.status_code == 200
        assert received == TOGETHER_STREAM
        first, second = upstream.take_received(), upstream.take_received()
        assert first.json()["stream_options"] == {"include_usage": True}
        assert second.body == body  # byte for byte what the client sent
        assert "x-monitor-token" not in second.headers
        wait_for_log(proxy, "sent it again unchanged and stopped asking on this listener")
        row = row_for(db_path, answered.request_id)
        assert (row["status"], row["outcome"], row["usage_injected"]) == (200, "ok", 0)
        assert (row["input_tokens"], row["output_tokens"]) == (1000, 100)
        # 1000 x 0.30 + 100 x 1.20 per 1M tokens
        assert priced(row) == (
            cost("0.00042"),
            1,
            f"{LIBRARY}:together/MiniMaxAI/MiniMax-M3@2000-01-01",
            None,
        )
        # The listener no longer changes bodies.
        again = upstream.reply(Reply(200, TOGETHER_STREAM, content_type="text/event-stream"))
        httpx.post(
            proxy.url("together") + "/v1/chat/completions",
            content=body,
            headers={"X-Monitor-Token": token, "Content-Type": "application/json"},
            timeout=20,
        )
        assert upstream.take_received().body == body
        row_for(db_path, again.request_id)
        # One row per request the client sent: the refused attempt is not a row of its own.
        assert len(rows(db_path)) == 2
        assert not rows(db_path, "request_id = ?", (refused.request_id,))


@pytest.mark.parametrize(
    "refusals",
    [
        pytest.param((429,), id="a rate limit: not about the body, sent once"),
        pytest.param((401,), id="a bad key: not about the body, sent once"),
        pytest.param((400, 400), id="refused unchanged too: the body was wrong as sent"),
    ],
)
def test_a_refusal_that_is_not_of_the_change_keeps_usage_asked_for(
    tmp_path: Path, upstream: ReplayServer, refusals: tuple[int, ...]
) -> None:
    """Only a refusal the unchanged body escapes stops usage injection on a listener: a
    rate limit, a bad key or a body the provider refuses either way leaves it on, and the
    client gets the answer it would have had without the proxy."""
    db_path = tmp_path / "refused.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Refused")
    body = b'{"model": "MiniMaxAI/MiniMax-M3", "stream": true, "messages": []}'
    headers = {"X-Monitor-Token": token, "Content-Type": "application/json"}
    with running_proxy(
        db_path, f"http://127.0.0.1:{upstream.port}", providers=("together",)
    ) as proxy:
        url = proxy.url("together") + "/v1/chat/completions"
        for status in refusals:
            error = {"error": {"message": f"refused ({status})", "code": str(status)}}
            last = upstream.reply(Reply(status, json.dumps(error).encode()))
        answer = httpx.post(url, content=body, headers=headers, timeout=20)
        assert (answer.status_code, answer.json()) == (status, error)
        sent = [upstream.take_received() for _ in refusals]
        assert "stream_options" in sent[0].json()
        assert [r.body for r in sent[1:]] == [body] * (len(refusals) - 1)
        row = row_for(db_path, last.request_id)
        assert (row["status"], row["outcome"], row["usage_injected"]) == (
            status,
            "provider_error",
            0 if len(refusals) > 1 else 1,
        )
        # The next stream is still asked for usage.
        streamed = upstream.reply(
            Reply(200, TOGETHER_STREAM, content_type="text/event-stream", seed=3)
        )
        with httpx.stream("POST", url, content=body, headers=headers, timeout=20) as response:
            assert response.read() == TOGETHER_STREAM
        assert upstream.take_received().json()["stream_options"] == {"include_usage": True}
        row = row_for(db_path, streamed.request_id)
        assert (row["usage_injected"], row["input_tokens"], row["output_tokens"]) == (1, 1000, 100)
        assert "stopped asking" not in proxy.log_path.read_text()
        assert len(rows(db_path)) == 2


# Units billed per call beside tokens: each counted, priced at its own rate, explained on a
# line of its own, or the row unpriced with `missing_rate:<kind>` (never $0 for it).


def responses_answer(model: str, *calls: str) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "model": model,
        "output": [
            *(
                {"type": call, "id": f"call_{i}", "status": "completed"}
                for i, call in enumerate(calls)
            ),
            {"type": "message", "role": "assistant", "content": []},
        ],
        "usage": {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100},
    }


def responses_stream(final: dict[str, Any], *deltas: str) -> bytes:
    """A Responses API stream: created, a text delta each, then `final` completed."""
    created = {**final, "output": [], "usage": None, "status": "in_progress"}
    events = [
        ("response.created", {"type": "response.created", "response": created}),
        *(
            ("response.output_text.delta", {"type": "response.output_text.delta", "delta": d})
            for d in deltas
        ),
        ("response.completed", {"type": "response.completed", "response": final}),
    ]
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())
        for name, data in events
    )


def sdk_client(proxy: Proxy, token: str, provider: str = "openai") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url(provider) + "/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
    )


def import_prices(db: Path, *entries: dict[str, Any]) -> None:
    """Local prices, as a user imports them with `llm-monitor pricing import`."""
    prices = db.parent / "imported-prices.json"
    prices.write_text(json.dumps({"prices": list(entries)}))
    invoke(db, "pricing", "import", str(prices))


def test_openai_file_search_calls_are_billed_and_explained(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    answer = responses_answer(
        "gpt-4.1-2025-04-14", "file_search_call", "web_search_call", "file_search_call"
    )
    request = {"model": "gpt-4.1", "input": "Hi", "tools": [{"type": "file_search"}]}
    row = send(pricing_proxy, upstream, pricing_token, "openai", "/v1/responses", request, answer)
    # 1000 x 2 + 100 x 8 = 2800 per 1M, + 1 web search x $10 + 2 file searches x $2.50 per 1,000
    assert priced(row) == (cost("0.0178"), 1, f"{LIBRARY}:openai/gpt-4.1@2000-01-01", None)
    assert (row["file_searches"], row["web_search_requests"]) == (2, 1)
    explained = invoke(priced_db, "explain", str(row["id"]))
    for line in ("2 x $2.5 / 1,000 = $0.005", "1 x $10 / 1,000 = $0.01", "$0.0178"):
        assert line in explained
    assert "file searches" in explained


def test_openai_file_search_calls_in_a_responses_stream(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    body = responses_stream(responses_answer("gpt-5.4-mini", "file_search_call"), "Hi")
    reply = upstream.reply(Reply(200, body, content_type="text/event-stream", seed=11))
    client = sdk_client(pricing_proxy, pricing_token)
    events = list(client.responses.create(model="gpt-5.4-mini", input="Hi", stream=True))
    assert events[-1].type == "response.completed"
    row = row_for(pricing_proxy.db_path, reply.request_id)
    # gpt-5.4-mini: 1000 x 0.75 + 100 x 4.5 = 1200 per 1M, + 1 file search x $2.50 / 1,000
    assert priced(row) == (cost("0.0037"), 1, f"{LIBRARY}:openai/gpt-5.4-mini@2000-01-01", None)
    assert row["file_searches"] == 1


def test_a_file_search_without_a_rate_leaves_the_row_unpriced(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    # gpt-4.1-nano has no file search rate in genai-prices 0.2.3: no cost, never $0 for it.
    answer = responses_answer("gpt-4.1-nano", "file_search_call")
    request = {"model": "gpt-4.1-nano", "input": "Hi"}
    row = send(pricing_proxy, upstream, pricing_token, "openai", "/v1/responses", request, answer)
    assert priced(row) == (None, 0, None, "missing_rate:file_search")
    assert row["file_searches"] == 1


def test_web_search_preview_calls_are_counted_apart_and_never_priced_as_web_search(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    """`web_search_preview` costs $25 per 1,000 calls on gpt-4.1, not `web_search`'s $10,
    and its calls come back as the same `web_search_call` items: the request's tools
    tell them apart. No library rate: unpriced with the reason, never $10 instead."""
    answer = responses_answer("gpt-4.1-2025-04-14", "web_search_call", "web_search_call")
    request = {"model": "gpt-4.1", "input": "Hi", "tools": [{"type": "web_search_preview"}]}
    row = send(pricing_proxy, upstream, pricing_token, "openai", "/v1/responses", request, answer)
    assert (row["web_search_preview_calls"], row["web_search_requests"]) == (2, None)
    assert priced(row) == (None, 0, None, "missing_rate:web_search_preview")
    explained = invoke(priced_db, "explain", str(row["id"]))
    assert "web_search_preview" in explained
    # The same answer to a request that offered `web_search`: priced at its rate.
    request = {"model": "gpt-4.1", "input": "Hi", "tools": [{"type": "web_search"}]}
    row = send(pricing_proxy, upstream, pricing_token, "openai", "/v1/responses", request, answer)
    assert (row["web_search_preview_calls"], row["web_search_requests"]) == (None, 2)
    # 1000 x 2 + 100 x 8 = 2800 per 1M, + 2 web searches x $10 per 1,000
    assert priced(row) == (cost("0.0228"), 1, f"{LIBRARY}:openai/gpt-4.1@2000-01-01", None)
    # With a local price that has the preview rate, in a stream too.
    entry = {
        "provider": "openai",
        "model": "gpt-4o-2024-11-20",
        "input": "2.5",
        "output": "10",
        "web_search_preview_per_1k": "25",
        "source": "test: OpenAI's pricing page, web_search_preview on non-reasoning models",
        "as_of": "2026-12-01",
    }
    import_prices(priced_db, entry)
    body = responses_stream(responses_answer("gpt-4o-2024-11-20", "web_search_call"))
    client = sdk_client(pricing_proxy, pricing_token)
    for _ in range(50):  # the recorder rebuilds its price book when the table changes
        reply = upstream.reply(Reply(200, body, content_type="text/event-stream", seed=12))
        events = list(
            client.responses.create(
                model="gpt-4o-2024-11-20",
                input="Hi",
                stream=True,
                tools=[{"type": "web_search_preview"}],
            )
        )
        assert events[-1].type == "response.completed"
        row = row_for(pricing_proxy.db_path, reply.request_id)
        if row["priced"]:
            break
    # 1000 x 2.5 + 100 x 10 = 3500 per 1M, + 1 preview search x $25 per 1,000
    assert row["web_search_preview_calls"] == 1
    assert priced(row) == (cost("0.0285"), 1, "local:openai/gpt-4o-2024-11-20@2000-01-01", None)


def test_chat_search_models_pay_a_search_on_every_request(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    # genai-prices 0.2.3 prices gpt-4o-search-preview's tokens but not its search: no cost.
    answer = chat("gpt-4o-search-preview-2025-03-11", 1000, 100)
    row = send_chat(pricing_proxy, upstream, pricing_token, "openai", answer)
    assert row["web_search_requests"] == 1
    assert priced(row) == (None, 0, None, "missing_rate:web_search")
    assert "the price has no rate for web_search" in invoke(priced_db, "explain", str(row["id"]))
    # With a local price that has the search rate, the search is billed beside the tokens.
    entry = {
        "provider": "openai",
        "model": "gpt-4o-mini-search-preview",
        "input": "0.15",
        "output": "0.6",
        "web_search_per_1k": "27.5",
        "source": "test: a contract price",
        "as_of": "2026-12-01",
    }
    import_prices(priced_db, entry)
    answer = chat("gpt-4o-mini-search-preview", 1000, 100)
    for _ in range(50):  # the recorder rebuilds its price book when the table changes
        row = send_chat(pricing_proxy, upstream, pricing_token, "openai", answer)
        if row["priced"]:
            break
    # 1000 x 0.15 + 100 x 0.6 = 210 per 1M, + 1 search x $27.50 / 1,000
    assert priced(row) == (
        cost("0.02771"),
        1,
        "local:openai/gpt-4o-mini-search-preview@2000-01-01",
        None,
    )
    # A stream: the proxy asks for its usage, and the search is counted there too.
    stream = sse(
        chunk("gpt-4o-mini-search-preview", "Hi", finish="stop"),
        {**chunk("gpt-4o-mini-search-preview"), "choices": [], "usage": answer["usage"]},
    )
    reply = upstream.reply(Reply(200, stream, content_type="text/event-stream", seed=2))
    client = sdk_client(pricing_proxy, pricing_token)
    chunks = client.chat.completions.create(
        model="gpt-4o-mini-search-preview",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    row = row_for(pricing_proxy.db_path, reply.request_id)
    assert (row["usage_injected"], row["web_search_requests"]) == (1, 1)
    assert priced(row)[:2] == (cost("0.02771"), 1)


def gemini_answer(model: str, **metadata: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": "Spain won."}], "role": "model"},
        "finishReason": "STOP",
        "index": 0,
    }
    if metadata:
        candidate["groundingMetadata"] = metadata
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": 1000,
            "candidatesTokenCount": 100,
            "totalTokenCount": 1100,
        },
        "modelVersion": model,
    }


WEB_CHUNKS = [{"web": {"uri": "https://vertexaisearch.cloud.google.com/x", "title": "uefa.com"}}]


def gemini_path(model: str, method: str = "generateContent") -> str:
    return f"/v1beta/models/{model}:{method}"


def test_gemini_2_search_grounding_is_billed_per_grounded_prompt(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    answer = gemini_answer(
        "gemini-2.5-flash",
        webSearchQueries=["euro 2024 winner", "euro 2024 final score"],
        groundingChunks=WEB_CHUNKS,
        searchEntryPoint={"renderedContent": "<div></div>"},
    )
    request = {
        "contents": [{"parts": [{"text": "Who won euro 2024?"}]}],
        "tools": [{"google_search": {}}],
    }
    path = gemini_path("gemini-2.5-flash")
    row = send(pricing_proxy, upstream, pricing_token, "gemini", path, request, answer)
    # 1000 x 0.30 + 100 x 2.50 = 550 per 1M, + 1 grounded prompt (two queries) x $35 / 1,000
    assert priced(row) == (
        cost("0.03555"),
        1,
        f"{LIBRARY}:gemini/gemini-2.5-flash@2000-01-01",
        None,
    )
    assert row["web_search_requests"] == 1
    assert "1 x $35 / 1,000 = $0.035" in invoke(priced_db, "explain", str(row["id"]))
    # The model chose not to search: no grounding metadata, tokens only.
    row = send(
        pricing_proxy,
        upstream,
        pricing_token,
        "gemini",
        path,
        request,
        gemini_answer("gemini-2.5-flash"),
    )
    assert (row["web_search_requests"], priced(row)[:2]) == (None, (cost("0.00055"), 1))


def test_gemini_3_search_grounding_is_billed_per_distinct_query(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    answer = gemini_answer(
        "gemini-3-flash-preview",
        webSearchQueries=["", "euro 2024 winner", "", "euro 2024 final", "euro 2024 winner"],
        groundingChunks=WEB_CHUNKS,
    )
    request = {"contents": [{"parts": [{"text": "Who won?"}]}], "tools": [{"google_search": {}}]}
    path = gemini_path("gemini-3-flash-preview")
    row = send(pricing_proxy, upstream, pricing_token, "gemini", path, request, answer)
    # 1000 x 0.50 + 100 x 3 = 800 per 1M, + 2 distinct non-empty queries x $14 / 1,000
    assert row["web_search_requests"] == 2
    assert priced(row) == (
        cost("0.0288"),
        1,
        f"{LIBRARY}:gemini/gemini-3-flash-preview@2026-01-05",
        None,
    )


def test_gemini_grounding_in_the_last_chunk_of_a_stream(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    first = gemini_answer("gemini-3-flash-preview")
    first["candidates"][0].pop("finishReason")
    first["usageMetadata"] = {"promptTokenCount": 1000, "candidatesTokenCount": 40}
    last = gemini_answer(
        "gemini-3-flash-preview",
        webSearchQueries=["a", "b", "c"],
        groundingChunks=WEB_CHUNKS,
    )
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in (first, last))
    reply = upstream.reply(Reply(200, body, content_type="text/event-stream", seed=4))
    with httpx.stream(
        "POST",
        pricing_proxy.url("gemini")
        + gemini_path("gemini-3-flash-preview", "streamGenerateContent")
        + "?alt=sse",
        json={"contents": [{"parts": [{"text": "Hi"}]}], "tools": [{"google_search": {}}]},
        headers={"X-Monitor-Token": pricing_token, "x-goog-api-key": API_KEY},
        timeout=20,
    ) as response:
        assert response.read() == body
    row = row_for(pricing_proxy.db_path, reply.request_id)
    # 1000 x 0.50 + 100 x 3 = 800 per 1M, + 3 queries x $14 / 1,000
    assert (row["streamed"], row["web_search_requests"]) == (1, 3)
    assert priced(row)[:2] == (cost("0.0428"), 1)
    # The same answer as the JSON array streamGenerateContent sends without alt=sse.
    array = b"[" + json.dumps(first).encode() + b",\r\n" + json.dumps(last).encode() + b"]"
    reply = upstream.reply(Reply(200, array, seed=6))
    response = httpx.post(
        pricing_proxy.url("gemini")
        + gemini_path("gemini-3-flash-preview", "streamGenerateContent"),
        json={"contents": [{"parts": [{"text": "Hi"}]}]},
        headers={"X-Monitor-Token": pricing_token, "x-goog-api-key": API_KEY},
        timeout=20,
    )
    assert response.status_code == 200
    row = row_for(pricing_proxy.db_path, reply.request_id)
    assert (row["web_search_requests"], priced(row)[:2]) == (3, (cost("0.0428"), 1))


def test_gemini_maps_grounding_has_no_rate_so_no_cost(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str, priced_db: Path
) -> None:
    answer = gemini_answer(
        "gemini-2.5-flash",
        groundingChunks=[{"maps": {"uri": "https://maps.google.com/?cid=1", "title": "Cafe"}}],
        googleMapsWidgetContextToken="widgetcontent/abc",
    )
    request = {"contents": [{"parts": [{"text": "Coffee nearby?"}]}], "tools": [{"googleMaps": {}}]}
    path = gemini_path("gemini-2.5-flash")
    row = send(pricing_proxy, upstream, pricing_token, "gemini", path, request, answer)
    assert (row["maps_grounded_prompts"], row["web_search_requests"]) == (1, None)
    assert priced(row) == (None, 0, None, "missing_rate:maps_grounding")
    assert "no cost: missing_rate:maps_grounding" in invoke(priced_db, "explain", str(row["id"]))


def test_per_call_units_are_counted_in_large_bodies_too(
    pricing_proxy: Proxy, upstream: ReplayServer, pricing_token: str
) -> None:
    """Over 64 KB the proxy reads a chat completion's usage from the body's tail only: a
    search model's search, and a Responses body's output items, must still be counted."""
    padding = "x" * 100_000
    answer = responses_answer("gpt-4.1", "file_search_call", "file_search_call")
    answer["output"][-1]["content"] = [{"type": "output_text", "text": padding}]
    assert list(answer)[-1] == "usage"  # usage last: the tail alone would have it
    request = {"model": "gpt-4.1", "input": "Hi"}
    row = send(pricing_proxy, upstream, pricing_token, "openai", "/v1/responses", request, answer)
    assert (row["file_searches"], priced(row)[:2]) == (2, (cost("0.0078"), 1))
    answer = chat("gpt-5-search-api-2025-10-14", 1000, 100)
    answer["choices"][0]["message"]["content"] = padding
    answer["usage"] = answer.pop("usage")
    row = send_chat(pricing_proxy, upstream, pricing_token, "openai", answer)
    assert (row["web_search_requests"], row["input_tokens"]) == (1, 1000)
    assert priced(row) == (None, 0, None, "missing_rate:web_search")
