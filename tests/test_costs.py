"""Price lookup and cost: snapshots, effective dates, overrides, tiers, service tiers, time of
day, every unit at its own rate, and refusals."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from llm_monitor.money.costs import (
    PriceBook,
    Unpriced,
    breakdown,
    cost_usd,
    family_of,
    price_row,
    tier_variant,
)
from llm_monitor.money.prices import PriceEntry, shipped_prices
from tests.conftest import usage_record as record


def price(model: str, **kw: object) -> PriceEntry:
    values = {
        "provider": "openai",
        "model": model,
        "input": "2",
        "output": "8",
        "source": "test",
        "as_of": "2026-01-01",
        **kw,
    }
    return PriceEntry.model_validate(values)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-5.5-2026-04-23", "gpt-5.5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("grok-4-latest", "grok-4"),
        ("gpt-4o", None),
        ("o3-mini", None),
        ("mistral-large-2411", None),  # a version, not a date
        ("gemini-2.5-flash-preview-09-2025", None),
    ],
)
def test_family_of(model: str, family: str | None) -> None:
    assert family_of(model) == family


DAY = dt.datetime(2026, 6, 1, 12)


def test_an_unknown_snapshot_takes_its_family_price_only_if_every_snapshot_does() -> None:
    book = PriceBook([price("gpt-4o"), price("gpt-4o-2024-05-13", input="5")])
    # gpt-4o-2024-05-13 has its own price: an unknown gpt-4o snapshot may be either.
    with pytest.raises(Unpriced, match="no_price"):
        book.quote("openai", "gpt-4o-2099-01-01", DAY)
    assert book.quote("openai", "gpt-4o-2024-05-13", DAY).rates["input"] == Decimal("5")
    book = PriceBook([price("gpt-4.1"), price("gpt-4.1-2025-04-14")])
    quote = book.quote("openai", "gpt-4.1-2099-01-01", DAY)
    assert quote.basis == "fallback:gpt-4.1 local:openai/gpt-4.1@2000-01-01"
    assert book.lookup("openai", "gpt-4o-mini", DAY.date()) is None
    assert book.lookup("groq", "gpt-4.1", DAY.date()) is None  # prices are per provider


def test_effective_dates() -> None:
    book = PriceBook(
        [
            price("o3", input="10", effective_from="2025-01-01"),
            price("o3", input="2", effective_from="2025-06-10"),
        ]
    )
    assert book.lookup("openai", "o3", dt.date(2024, 12, 31)) is None
    assert book.lookup("openai", "o3", dt.date(2025, 6, 9)).input == Decimal("10")
    assert book.lookup("openai", "o3", dt.date(2025, 6, 10)).input == Decimal("2")


def test_a_local_price_wins_over_the_library_while_in_force() -> None:
    book = PriceBook(
        [
            price("o3", input="10", cached_input="0.5", origin="library"),
            price(
                "o3", input="2", cached_input="0.5", effective_from="2025-06-10", origin="library"
            ),
            price(
                "o3",
                input="10",
                cached_input="2.5",
                effective_from="2025-04-16",
                effective_until="2025-06-10",
            ),
        ]
    )
    assert book.lookup("openai", "o3", dt.date(2025, 4, 15)).cached_input == Decimal("0.5")
    assert book.lookup("openai", "o3", dt.date(2025, 4, 16)).cached_input == Decimal("2.5")
    assert book.lookup("openai", "o3", dt.date(2025, 6, 9)).origin == "local"
    after = book.lookup("openai", "o3", dt.date(2025, 6, 10))
    assert (after.origin, after.input) == ("library", Decimal("2"))


def test_long_context_tier_applies_to_the_whole_request() -> None:
    book = PriceBook(
        [price("gpt-5.5", input="5"), price("gpt-5.5", input="10", above_input_tokens=272_000)]
    )
    day = dt.date(2026, 6, 1)
    assert book.lookup("openai", "gpt-5.5", day, 272_000).input == Decimal("5")
    assert book.lookup("openai", "gpt-5.5", day, 272_001).input == Decimal("10")
    assert book.lookup("openai", "gpt-5.5", day, None).input == Decimal("5")


def test_each_tier_has_its_own_history() -> None:
    """A new long-context rate alone changes neither the base rate nor older tiers."""
    book = PriceBook(
        [
            price("m", input="5", effective_from="2026-01-01"),
            price("m", input="10", above_input_tokens=200_000, effective_from="2026-01-01"),
            price("m", input="12", above_input_tokens=200_000, effective_from="2026-03-01"),
            price("m", input="4", effective_from="2026-05-01"),
        ]
    )
    assert book.lookup("openai", "m", dt.date(2026, 4, 1), 1_000).input == Decimal("5")
    assert book.lookup("openai", "m", dt.date(2026, 4, 1), 300_000).input == Decimal("12")
    assert book.lookup("openai", "m", dt.date(2026, 2, 1), 300_000).input == Decimal("10")
    assert book.lookup("openai", "m", dt.date(2026, 6, 1), 1_000).input == Decimal("4")
    assert book.lookup("openai", "m", dt.date(2026, 6, 1), 300_000).input == Decimal("12")
    only_tier = PriceBook([price("t", input="9", above_input_tokens=10)])
    assert only_tier.lookup("openai", "t", dt.date(2026, 6, 1), 50) is None  # no base: unpriced


def test_a_service_tier_is_priced_by_its_own_rates_or_not_at_all() -> None:
    book = PriceBook(
        [
            price("o3", input="2", cached_input="0.5", output="8"),
            price("o3", input="1", output="4", variant="service_tier=flex"),
        ]
    )
    flex = book.quote("openai", "o3", DAY, variant="service_tier=flex")
    # The variant sets input and output; cached input keeps the standard rate.
    assert {k: str(v) for k, v in flex.rates.items()} == {
        "input": "1",
        "cached_input": "0.5",
        "output": "4",
    }
    assert flex.basis == "local:openai/o3@2000-01-01 + service_tier=flex@2000-01-01"
    with pytest.raises(Unpriced, match="missing_rate:service_tier=priority"):
        book.quote("openai", "o3", DAY, variant="service_tier=priority")
    assert tier_variant("default") == tier_variant("standard") == tier_variant(None) == ""
    assert tier_variant("flex") == "service_tier=flex"
    assert tier_variant("batch") == "processing=batch"


def test_time_of_day_windows() -> None:
    """DeepSeek: the window's price from 00:30 to 16:30 UTC, the other one outside it."""
    book = PriceBook(
        [
            price("deepseek-chat", input="0.135"),
            price("deepseek-chat", input="0.27", window="00:30-16:30"),
        ]
    )
    at = {
        "00:29": "0.135",
        "00:30": "0.27",
        "16:29": "0.27",
        "16:30": "0.135",
    }
    for clock, rate in at.items():
        when = dt.datetime.fromisoformat(f"2026-06-01T{clock}")
        assert book.quote("openai", "deepseek-chat", when).rates["input"] == Decimal(rate)
    wrapping = PriceBook([price("m", input="1"), price("m", input="2", window="22:00-02:00")])
    for clock, rate in {"23:00": "2", "01:59": "2", "02:00": "1", "12:00": "1"}.items():
        when = dt.datetime.fromisoformat(f"2026-06-01T{clock}")
        assert wrapping.quote("openai", "m", when).rates["input"] == Decimal(rate)


def test_one_hour_cache_writes_have_their_own_rate() -> None:
    entry = price(
        "c", input="3", cached_input="0.3", cache_write="3.75", cache_write_1h="6", output="15"
    )
    # (1000 - 100 - 300) x 3 + 100 x 0.3 + (300 - 200) x 3.75 + 200 x 6 + 10 x 15
    #   = 1800 + 30 + 375 + 1200 + 150
    assert cost_usd(
        entry,
        input_tokens=1000,
        cached_input_tokens=100,
        cache_write_tokens=300,
        cache_write_1h_tokens=200,
        output_tokens=10,
    ) == Decimal("0.003555")
    with pytest.raises(Unpriced, match="missing_rate:cache_write_1h"):
        cost_usd(
            price("c", cache_write="3.75"),
            input_tokens=10,
            cache_write_tokens=5,
            cache_write_1h_tokens=5,
        )


def test_cost_prices_each_kind_of_unit_at_its_own_rate() -> None:
    entry = price(
        "m",
        input="3",
        cached_input="0.3",
        cache_write="3.75",
        output="15",
        reasoning="20",
        input_audio="10",
        output_audio="40",
        input_image="5",
        output_image="30",
        web_search_per_1k="10",
        code_execution_per_1k="50",
    )
    lines = breakdown(
        entry.rates(),
        input_tokens=1000,
        cached_input_tokens=200,
        cache_write_tokens=100,
        input_audio_tokens=50,
        input_image_tokens=150,
        output_tokens=100,
        reasoning_tokens=20,
        output_audio_tokens=10,
        output_image_tokens=5,
        web_search_requests=3,
        code_executions=1,
    )
    assert [(line.kind, line.count) for line in lines] == [
        ("input", 1000 - 200 - 100 - 50 - 150),
        ("cached_input", 200),
        ("cache_write", 100),
        ("input_audio", 50),
        ("input_image", 150),
        ("output", 100 - 20 - 10 - 5),
        ("reasoning", 20),
        ("output_audio", 10),
        ("output_image", 5),
        ("web_search_per_1k", 3),
        ("code_execution_per_1k", 1),
    ]
    # (500 x 3 + 200 x 0.3 + 100 x 3.75 + 50 x 10 + 150 x 5 + 65 x 15 + 20 x 20 + 10 x 40
    #  + 5 x 30) / 1M + 3 x 10 / 1000 + 1 x 50 / 1000
    #  = (1500 + 60 + 375 + 500 + 750 + 975 + 400 + 400 + 150) / 1M + 0.03 + 0.05
    assert sum(line.amount for line in lines) == Decimal("0.08511")


@pytest.mark.parametrize(
    ("units", "reason"),
    [
        ({"cached_input_tokens": 5}, "missing_rate:cached_input"),
        ({"cache_write_tokens": 5}, "missing_rate:cache_write"),
        ({"input_audio_tokens": 5}, "missing_rate:input_audio"),
        ({"input_image_tokens": 5}, "missing_rate:input_image"),
        ({"output_audio_tokens": 1}, "missing_rate:output_audio"),
        ({"web_search_requests": 1}, "missing_rate:web_search"),
        ({"code_executions": 1}, "missing_rate:code_execution"),
        ({"cached_input_tokens": 50}, "inconsistent_usage"),
        ({"reasoning_tokens": 9}, "inconsistent_usage"),
    ],
)
def test_a_unit_without_a_rate_is_never_priced_at_another_rate(
    units: dict[str, int], reason: str
) -> None:
    with pytest.raises(Unpriced) as refused:
        cost_usd(price("m"), input_tokens=10, output_tokens=2, **units)
    assert refused.value.reason == reason


def test_priced_flag_basis_and_reason() -> None:
    book = PriceBook([price("gpt-4o")])
    priced = price_row(record(model="gpt-4o", input_tokens=10, output_tokens=1), book)
    assert (priced["cost_usd"], priced["priced"], priced["cost_basis"]) == (
        float(Decimal("0.000028")),
        1,
        "local:openai/gpt-4o@2000-01-01",
    )
    unpriced = price_row(record(model="mystery", input_tokens=10, output_tokens=1), book)
    assert (unpriced["cost_usd"], unpriced["priced"], unpriced["unpriced_reason"]) == (
        None,
        0,
        "no_price",
    )
    no_rate = price_row(record(model="gpt-4o", input_tokens=10, cached_input_tokens=5), book)
    assert (no_rate["cost_usd"], no_rate["priced"], no_rate["unpriced_reason"]) == (
        None,
        0,
        "missing_rate:cached_input",
    )
    no_usage = price_row(record(model="gpt-4o", outcome="client_disconnected"), book)
    assert (no_usage["cost_usd"], no_usage["priced"], no_usage["unpriced_reason"]) == (
        None,
        0,
        "usage_unseen",
    )
    error = price_row(record(model="gpt-4o", outcome="provider_error", status=400), book)
    assert (error["cost_usd"], error["priced"], error["unpriced_reason"]) == (None, None, None)
    listing = price_row(record(method="GET", path="/v1/models"), book)
    assert (listing["cost_usd"], listing["priced"]) == (None, None)
    reported = price_row(
        record(model="mystery", input_tokens=10, output_tokens=1, reported_cost_usd=0.0042), book
    )
    assert (reported["cost_usd"], reported["priced"], reported["cost_basis"]) == (
        0.0042,
        1,
        "provider_reported",
    )


def test_shipped_overrides_are_valid_and_sourced() -> None:
    entries = shipped_prices()
    assert entries and all(e.origin == "local" and e.source and e.as_of for e in entries)
    o3 = [e for e in entries if e.model == "o3"]
    assert [(e.cached_input, e.effective_from, e.effective_until) for e in o3] == [
        (Decimal("2.50"), dt.date(2025, 4, 16), dt.date(2025, 6, 10))
    ]


def test_large_body_usage_is_read_from_its_tail_only_when_unambiguous() -> None:
    from llm_monitor.proxy.providers.base import RequestInfo
    from llm_monitor.proxy.providers.openai import OpenAI

    padding = [{"embedding": "x" * 100_000}]
    top = json.dumps({"data": padding, "model": "m-1", "usage": {"prompt_tokens": 3}}).encode()
    usage, model = OpenAI().usage_from_body(top, RequestInfo())
    assert (usage.input_tokens, model) == (3, "m-1")
    # `usage` nested in the last value is not the response's: the whole body is parsed.
    nested = json.dumps({"data": padding, "meta": {"usage": {"prompt_tokens": 9}}}).encode()
    assert OpenAI().usage_from_body(nested, RequestInfo()) == (None, None)
    # usage first, then other keys: found by the whole parse all the same.
    early = json.dumps({"usage": {"prompt_tokens": 5}, "data": padding, "model": "m"}).encode()
    assert OpenAI().usage_from_body(early, RequestInfo())[0].input_tokens == 5


def test_a_priced_row_holds_every_field_of_the_record_as_model_dump_gives_it() -> None:
    """`price_row` copies the record's __dict__ rather than calling `model_dump`: the same
    only while every field is a plain value, which this keeps true."""
    usage = record(model="gpt-4o", input_tokens=10, output_tokens=5, tags='{"team":"a"}')
    row = price_row(usage, PriceBook([price("gpt-4o")]))
    assert {k: row[k] for k in usage.model_dump()} == usage.model_dump()
    assert set(row) == set(usage.model_dump()) | {
        "cost_usd",
        "priced",
        "cost_basis",
        "unpriced_reason",
    }
    assert row["priced"] == 1 and row["cost_usd"] > 0
