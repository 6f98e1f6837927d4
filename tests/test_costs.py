"""Price lookup and cost: snapshots, effective dates, long-context tiers, missing rates."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from llm_monitor.money.costs import MissingRate, PriceBook, cost_usd, family_of
from llm_monitor.money.prices import PriceEntry, shipped_prices
from llm_monitor.store.recorder import price_row
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
        ("gpt-4o", None),
        ("o3-mini", None),
    ],
)
def test_family_of(model: str, family: str | None) -> None:
    assert family_of(model) == family


def test_snapshot_takes_its_family_price_unless_it_has_its_own() -> None:
    book = PriceBook([price("gpt-4o"), price("gpt-4o-2024-05-13", input="5")])
    day = dt.date(2026, 6, 1)
    assert book.lookup("openai", "gpt-4o-2024-08-06", day).model == "gpt-4o"
    assert book.lookup("openai", "gpt-4o-2024-05-13", day).input == Decimal("5")
    assert book.lookup("openai", "gpt-4o-mini", day) is None
    assert book.lookup("groq", "gpt-4o", day) is None  # prices are per provider


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
    with pytest.raises(MissingRate, match="one-hour"):
        cost_usd(
            price("c", cache_write="3.75"),
            input_tokens=10,
            cache_write_tokens=5,
            cache_write_1h_tokens=5,
        )


def test_cost_prices_each_kind_of_token_at_its_own_rate() -> None:
    entry = price(
        "m", input="3", cached_input="0.3", cache_write="3.75", output="15", reasoning="20"
    )
    # (1000 - 200 - 100) x 3 + 200 x 0.3 + 100 x 3.75 + (50 - 20) x 15 + 20 x 20
    assert cost_usd(
        entry,
        input_tokens=1000,
        cached_input_tokens=200,
        cache_write_tokens=100,
        output_tokens=50,
        reasoning_tokens=20,
    ) == Decimal("0.003385")


def test_a_missing_rate_is_never_guessed() -> None:
    with pytest.raises(MissingRate, match="cached-input"):
        cost_usd(price("m"), input_tokens=10, cached_input_tokens=5)
    with pytest.raises(MissingRate, match="cache-write"):
        cost_usd(price("m"), input_tokens=10, cache_write_tokens=5)
    with pytest.raises(MissingRate, match="inconsistent"):
        cost_usd(price("m"), input_tokens=10, cached_input_tokens=50)


def test_priced_flag() -> None:
    book = PriceBook([price("gpt-4o")])
    priced = price_row(record(model="gpt-4o", input_tokens=10, output_tokens=1), book)
    assert (priced["cost_usd"], priced["priced"]) == (float(Decimal("0.000028")), 1)
    unpriced = price_row(record(model="mystery", input_tokens=10, output_tokens=1), book)
    assert (unpriced["cost_usd"], unpriced["priced"]) == (None, 0)
    no_rate = price_row(record(model="gpt-4o", input_tokens=10, cached_input_tokens=5), book)
    assert (no_rate["cost_usd"], no_rate["priced"]) == (None, 0)
    no_usage = price_row(record(model="gpt-4o", outcome="client_disconnected"), book)
    assert (no_usage["cost_usd"], no_usage["priced"]) == (None, 0)
    error = price_row(record(model="gpt-4o", outcome="provider_error", status=400), book)
    assert (error["cost_usd"], error["priced"]) == (None, None)
    listing = price_row(record(method="GET", path="/v1/models"), book)
    assert (listing["cost_usd"], listing["priced"]) == (None, None)


def test_shipped_prices_are_valid_and_sourced() -> None:
    entries = shipped_prices()
    assert len(entries) >= 15
    assert all(e.source and e.as_of for e in entries)
    models = {e.model for e in entries}
    assert {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-5",
        "gpt-5-mini",
        "o3-mini",
        "text-embedding-3-small",
    } <= models


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
