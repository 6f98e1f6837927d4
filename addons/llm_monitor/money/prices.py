"""Price tables: the files shipped in the repository's `pricing/` folder, and their validation.

A price file is JSON: ``{"prices": [entry, ...]}``. Every entry names its provider, model,
rates in USD per 1M tokens, the date from which it applies, and where the figures come from
(``source``, ``as_of``). Numbers are read as Decimal, so what is written is what is used.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlite_utils import Database

# As written in the source; the library has some computed rates (0.0833333333333333).
Rate = Annotated[Decimal, Field(ge=0, max_digits=30, decimal_places=20)]


# The rates a price may set, each USD per 1M tokens unless its name says per 1,000 (calls).
TOKEN_RATES = (
    "input",
    "cached_input",
    "cache_write",
    "cache_write_1h",
    "output",
    "reasoning",
    "input_audio",
    "output_audio",
    "input_image",
    "output_image",
)
CALL_RATES = (
    "web_search_per_1k",
    "code_execution_per_1k",
    "file_search_per_1k",
    "maps_grounding_per_1k",
    "web_search_preview_per_1k",
)
RATES = TOKEN_RATES + CALL_RATES
ORIGINS = ("local", "library")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")
_VARIANT = re.compile(r"^[a-z_]+=[A-Za-z0-9_./-]+(,[a-z_]+=[A-Za-z0-9_./-]+)*$")


class PriceEntry(BaseModel):
    """One model's rates from `effective_from` on (until `effective_until`, if set).

    A rate left unset is no rate at all: a request that uses that kind of token or call
    gets no cost (never another kind's rate). `origin` says who decided the figures: the
    price library (`library`, loaded by `init` and `pricing sync`) or this installation
    (`local`: shipped overrides, `pricing set`, `pricing import`); local prices in force
    always win over the library's. A `variant` (`service_tier=flex`, `processing=batch`)
    sets only the rates that differ from the standard price; a `window` (`00:30-16:30`,
    UTC) is a time of day the price applies in (DeepSeek's peak hours).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    input: Rate | None = None
    output: Rate | None = None
    cached_input: Rate | None = None
    cache_write: Rate | None = None
    cache_write_1h: Rate | None = None  # Anthropic's one-hour cache writes
    reasoning: Rate | None = None  # unset: reasoning tokens are billed as output
    input_audio: Rate | None = None
    output_audio: Rate | None = None
    input_image: Rate | None = None
    output_image: Rate | None = None
    web_search_per_1k: Rate | None = None  # USD per 1,000 web searches
    code_execution_per_1k: Rate | None = None  # USD per 1,000 code executions
    file_search_per_1k: Rate | None = None  # USD per 1,000 file search calls (OpenAI)
    # USD per 1,000 prompts grounded with Google Maps (Gemini); the library has no such rate.
    maps_grounding_per_1k: Rate | None = None
    # USD per 1,000 calls of OpenAI's `web_search_preview` tool; the library has no such
    # rate (it prices `web_search` only), so these calls are unpriced until one is set.
    web_search_preview_per_1k: Rate | None = None
    # A long-context tier: these rates apply to the whole request when the prompt has more
    # than this many input tokens (OpenAI's gpt-5.5 above 272K, Gemini above 200K).
    above_input_tokens: int = Field(default=0, ge=0, le=2**63 - 1)
    variant: str = ""
    window: str = ""
    effective_from: dt.date = dt.date(2000, 1, 1)
    effective_until: dt.date | None = None  # first day it no longer applies
    origin: Literal["local", "library"] = "local"
    source: str = Field(min_length=1)
    as_of: dt.date

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value and not _WINDOW.match(value):
            raise ValueError("window must be HH:MM-HH:MM (UTC)")
        return value

    @field_validator("variant")
    @classmethod
    def _variant(cls, value: str) -> str:
        if value and not _VARIANT.match(value):
            raise ValueError("variant must be key=value pairs separated by commas")
        return value

    @model_validator(mode="after")
    def _some_rate(self) -> PriceEntry:
        if all(getattr(self, r) is None for r in RATES):
            raise ValueError("a price needs at least one rate")
        if self.effective_until is not None and self.effective_until <= self.effective_from:
            raise ValueError("effective_until must be after effective_from")
        return self

    def rates(self) -> dict[str, Decimal]:
        """The rates it sets, by name."""
        return {r: v for r in RATES if (v := getattr(self, r)) is not None}

    @property
    def group(self) -> tuple[str, str, str, str, int, str]:
        """Entries of one group form one history, ordered by `effective_from`."""
        return (
            self.provider,
            self.model,
            self.origin,
            self.variant,
            self.above_input_tokens,
            self.window,
        )

    @property
    def key(self) -> tuple[Any, ...]:
        return (*self.group, self.effective_from)


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
    seen: set[tuple[Any, ...]] = set()
    for index, raw in enumerate(data["prices"]):
        entry = _validate_entry(raw, index, origin)
        key = entry.key
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
OUTPUT_LIMITS_FILE = "output_limits.json"  # not prices: see `money.output_limits`


def shipped_prices() -> list[PriceEntry]:
    """Every entry of the price files shipped with the package."""
    entries: list[PriceEntry] = []
    for item in sorted(SHIPPED_PRICES.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".json") and item.name != OUTPUT_LIMITS_FILE:
            entries.extend(parse_price_file(item.read_text(encoding="utf-8"), origin=item.name))
    return entries


# The `prices` table holds entries as `model_dump(mode="json")` rows: rates as strings.
PRICE_KEY = (
    "provider",
    "model",
    "origin",
    "variant",
    "above_input_tokens",
    "window",
    "effective_from",
)
PRICE_COLUMNS = tuple(PriceEntry.model_fields)


def _write(db: Database, entries: Iterable[PriceEntry], on_conflict: str) -> int:
    rows = [e.model_dump(mode="json") for e in entries]
    columns = ", ".join(f"[{c}]" for c in PRICE_COLUMNS)
    with db.atomic():
        db.conn.executemany(
            f"insert into prices ({columns}) values ({', '.join('?' * len(PRICE_COLUMNS))}) "
            f"on conflict ({', '.join(f'[{c}]' for c in PRICE_KEY)}) {on_conflict}",
            [tuple(row[c] for c in PRICE_COLUMNS) for row in rows],
        )
    return len(rows)


def upsert_prices(db: Database, entries: Iterable[PriceEntry]) -> int:
    """Add entries to the `prices` table; one with the same key replaces the old one."""
    update = ", ".join(f"[{c}] = excluded.[{c}]" for c in PRICE_COLUMNS if c not in PRICE_KEY)
    return _write(db, entries, f"do update set {update}")


def insert_missing_prices(db: Database, entries: Iterable[PriceEntry]) -> int:
    """Add the entries whose key the table does not have yet; returns how many were added."""
    before = db.execute("select count(*) from prices").fetchone()[0]
    _write(db, entries, "do nothing")
    return db.execute("select count(*) from prices").fetchone()[0] - before


def read_prices(db: Database, provider: str | None = None) -> list[PriceEntry]:
    """Every entry of the `prices` table (or one provider's), validated again."""
    rows = db["prices"].rows_where(
        "provider = ?" if provider else None,
        [provider] if provider else [],
        order_by="provider, model, origin, effective_from",
    )
    fields = set(PriceEntry.model_fields)
    return [
        PriceEntry.model_validate({k: v for k, v in row.items() if k in fields and v is not None})
        for row in rows
    ]


def prices_version(db: Database) -> int:
    """A number that changes whenever the `prices` table does (kept by triggers): the
    recorder rebuilds its price book only then, not on every other writer's commit."""
    row = db.execute("select version from prices_version").fetchone()
    return row[0] if row else 0


def dump_prices(entries: list[PriceEntry]) -> str:
    """The inverse of `parse_price_file`: decimals as strings, unset rates left out."""
    return json.dumps(
        {"prices": [e.model_dump(mode="json", exclude_defaults=True) for e in entries]},
        indent=2,
    )
