"""Price tables: the files shipped in the repository's `pricing/` folder, and their validation.

A price file is JSON: ``{"prices": [entry, ...]}``. Every entry names its provider, model,
rates in USD per 1M tokens, the date from which it applies, and where the figures come from
(``source``, ``as_of``). Numbers are read as Decimal, so what is written is what is used.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlite_utils import Database

Rate = Annotated[Decimal, Field(ge=0, max_digits=16, decimal_places=8)]


class PriceEntry(BaseModel):
    """One model's rates, in USD per 1M tokens, from `effective_from` on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    input: Rate
    output: Rate
    cached_input: Rate | None = None
    cache_write: Rate | None = None
    cache_write_1h: Rate | None = None  # Anthropic's one-hour cache writes
    reasoning: Rate | None = None  # unset: reasoning tokens are billed as output
    # A long-context tier: these rates apply to the whole request when the prompt has more
    # than this many input tokens (OpenAI's gpt-5.5 above 272K, Gemini above 200K).
    above_input_tokens: int = Field(default=0, ge=0, le=2**63 - 1)
    effective_from: dt.date = dt.date(2000, 1, 1)
    source: str = Field(min_length=1)
    as_of: dt.date


class PriceFileError(ValueError):
    """A price file that cannot be used, with the entry and field at fault."""


def parse_price_file(text: str, *, origin: str = "price file") -> list[PriceEntry]:
    """Validate a price file's text; the error names the entry and field at fault."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise PriceFileError(f"{origin}: not valid JSON: {e}") from None
    except RecursionError:
        raise PriceFileError(f"{origin}: not valid JSON: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("prices"), list):
        raise PriceFileError(f'{origin}: expected an object with a "prices" list')
    entries = []
    seen: set[tuple[str, str, dt.date, int]] = set()
    for index, raw in enumerate(data["prices"]):
        entry = _validate_entry(raw, index, origin)
        key = (entry.provider, entry.model, entry.effective_from, entry.above_input_tokens)
        if key in seen:
            raise PriceFileError(
                f"{origin}: entry {index} ({entry.model}): duplicate of an earlier entry "
                f"for {entry.provider} effective {entry.effective_from}"
            )
        seen.add(key)
        entries.append(entry)
    return entries


def _validate_entry(raw: Any, index: int, origin: str) -> PriceEntry:
    name = raw.get("model", "?") if isinstance(raw, dict) else "?"
    try:
        return PriceEntry.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '(entry)'}': {err['msg']}"
            for err in e.errors()
        )
        raise PriceFileError(f"{origin}: entry {index} ({name}): {problems}") from None


MAX_PRICE_FILE = 16 * 1024 * 1024  # the shipped files are a few KB; /dev/zero is endless


def load_price_file(path: str | Path) -> list[PriceEntry]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PRICE_FILE + 1)
        if len(data) > MAX_PRICE_FILE:
            raise PriceFileError(f"{path}: larger than {MAX_PRICE_FILE // 1024 // 1024} MB")
        text = data.decode("utf-8")
    except OSError as e:
        raise PriceFileError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise PriceFileError(f"{path}: not a UTF-8 text file") from None
    return parse_price_file(text, origin=str(path))


# `pricing/` at the top of the repository, inside the package as package data.
SHIPPED_PRICES = resources.files("llm_monitor") / "shipped-data" / "pricing"


def shipped_prices() -> list[PriceEntry]:
    """Every entry of the price files shipped with the package."""
    entries: list[PriceEntry] = []
    for item in sorted(SHIPPED_PRICES.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".json"):
            entries.extend(parse_price_file(item.read_text(encoding="utf-8"), origin=item.name))
    return entries


# The `prices` table holds entries as `model_dump(mode="json")` rows: rates as strings.
PRICE_KEY = ("provider", "model", "effective_from", "above_input_tokens")


def upsert_prices(db: Database, entries: Iterable[PriceEntry]) -> int:
    """Add entries to the `prices` table; one with the same key replaces the old one."""
    rows = [e.model_dump(mode="json") for e in entries]
    with db.atomic():
        db["prices"].upsert_all(rows, pk=PRICE_KEY, alter=False)
    return len(rows)


def read_prices(db: Database, provider: str | None = None) -> list[PriceEntry]:
    """Every entry of the `prices` table (or one provider's), validated again."""
    rows = db["prices"].rows_where(
        "provider = ?" if provider else None,
        [provider] if provider else [],
        order_by="provider, model, effective_from",
    )
    fields = set(PriceEntry.model_fields)
    return [
        PriceEntry.model_validate({k: v for k, v in row.items() if k in fields and v is not None})
        for row in rows
    ]


def dump_prices(entries: list[PriceEntry]) -> str:
    """The inverse of `parse_price_file`: decimals as strings, unset rates left out."""
    return json.dumps(
        {"prices": [e.model_dump(mode="json", exclude_defaults=True) for e in entries]},
        indent=2,
    )
