"""Console and billing exports, for what no API gives (or for a past the API no longer
reaches). The format is known from the header row:

- Anthropic console usage (`usage_date_utc,model_version,api_key,workspace,...,
  usage_input_tokens_no_cache,usage_input_tokens_cache_write_5m,...`); older exports have
  one `usage_input_tokens_cache_write` column, or none of the later ones.
- Anthropic console cost (`usage_date_utc,model,workspace,api_key,...,token_type,cost_usd,
  list_price_usd`): the model as a display name (`Claude Sonnet 4`), cost in USD.
- OpenAI dashboard cost export (`start_time,...,amount_value,amount_currency,...,line_item`).
- Google Cloud billing export rows (`service.description,sku.description,
  usage_start_time,project.id,cost,currency,usage.amount,credits`): those of the Generative
  Language API (provider `gemini`) and Vertex AI (`vertex-ai`); other services are skipped.

A file is read whole before anything is written: a malformed line refuses the file with its
line number, and nothing of it is imported. A file replaces what an earlier import of the
same format held for the days it covers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from sqlite_utils import Database

from llm_monitor.billing import ledger
from llm_monitor.billing.openai import split_line_item
from llm_monitor.errors import DomainError, Invalid

Row = dict[str, str]
Parsed = tuple[dt.date, ledger.UsageRow | ledger.CostRow | None]


class CsvError(DomainError):
    """A file that cannot be imported, with the line at fault."""


def _text(row: Row, column: str) -> str | None:
    value = (row.get(column) or "").strip()
    return value or None


def _count(row: Row, column: str) -> int | None:
    value = _text(row, column)
    if value is None:
        return None
    try:
        number = Decimal(value.replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"{column}: {value!r} is not a number") from None
    if number < 0 or number != number.to_integral_value():
        raise ValueError(f"{column}: {value!r} is not a count")
    return int(number)


def _decimal(row: Row, column: str) -> Decimal:
    value = _text(row, column)
    try:
        number = Decimal(value or "")
    except InvalidOperation:
        raise ValueError(f"{column}: {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{column}: {value!r} is not a number")
    return number


def _day(row: Row, column: str) -> dt.date:
    value = _text(row, column) or ""
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise ValueError(f"{column}: {value!r} is not a date") from None


def _add(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def anthropic_usage(row: Row) -> Parsed:
    uncached = _count(row, "usage_input_tokens_no_cache")
    read = _count(row, "usage_input_tokens_cache_read")
    five, hour = (
        _count(row, "usage_input_tokens_cache_write_5m"),
        _count(row, "usage_input_tokens_cache_write_1h"),
    )
    writes = _add(five, hour, _count(row, "usage_input_tokens_cache_write"))
    return _day(row, "usage_date_utc"), ledger.UsageRow(
        provider="anthropic",
        model_raw=_text(row, "model_version"),
        kind=_text(row, "usage_type"),
        api_key_name=_text(row, "api_key"),
        project_id=_text(row, "workspace"),
        input_tokens=_add(uncached, read, writes),
        cached_input_tokens=read,
        cache_write_tokens=writes,
        cache_write_1h_tokens=hour,
        output_tokens=_count(row, "usage_output_tokens"),
        web_search_requests=_count(row, "web_search_count"),
        raw=row,
    )


def anthropic_cost(row: Row) -> Parsed:
    return _day(row, "usage_date_utc"), ledger.CostRow(
        provider="anthropic",
        model_raw=_text(row, "model"),
        amount_usd=_decimal(row, "cost_usd"),
        line_item=_text(row, "usage_type"),
        token_type=_text(row, "token_type"),
        api_key_name=_text(row, "api_key"),
        project_id=_text(row, "workspace"),
        raw=row,
    )


def openai_cost(row: Row) -> Parsed:
    currency = (_text(row, "amount_currency") or "usd").lower()
    if currency != "usd":
        raise ValueError(f"amount_currency: {currency!r}, only USD is read")
    if _text(row, "start_time_iso"):
        day = _day(row, "start_time_iso")
    else:
        start = _count(row, "start_time")
        if start is None:
            raise ValueError("start_time: empty")
        day = dt.datetime.fromtimestamp(start, dt.UTC).date()
    model, token_type = split_line_item(_text(row, "line_item"))
    return day, ledger.CostRow(
        provider="openai",
        model_raw=model,
        amount_usd=_decimal(row, "amount_value"),
        line_item=_text(row, "line_item"),
        token_type=token_type,
        api_key_id=_text(row, "api_key_id"),
        project_id=_text(row, "project_id"),
        raw=row,
    )


GCP_SERVICES = {"Generative Language API": "gemini", "Vertex AI": "vertex-ai"}
_GEMINI_SKU = re.compile(r"\b(Gemini\s+\d+(?:\.\d+)?\s+(?:Flash[- ]Lite|Flash|Pro|Ultra))\b", re.I)


def gcp_billing(row: Row) -> Parsed:
    day = _day(row, "usage_start_time")
    provider = GCP_SERVICES.get(_text(row, "service.description") or "")
    if provider is None:
        return day, None  # another Google Cloud service
    cost = _decimal(row, "cost")
    currency = (_text(row, "currency") or "USD").upper()
    if currency != "USD":
        if not _text(row, "currency_conversion_rate"):
            raise ValueError(f"currency: {currency} without a currency_conversion_rate")
        rate = _decimal(row, "currency_conversion_rate")
        if rate <= 0:
            raise ValueError("currency_conversion_rate: must be above 0")
        cost = cost / rate
    sku = _text(row, "sku.description") or ""
    match = _GEMINI_SKU.search(sku)
    model = match.group(1).replace("Flash Lite", "Flash-Lite") if match else None
    return day, ledger.CostRow(
        provider=provider,
        model_raw=model,
        amount_usd=cost,
        line_item=sku or None,
        project_id=_text(row, "project.id"),
        raw=row,
    )


@dataclass(frozen=True)
class CsvFormat:
    source: str  # the `source` its rows are stored under
    providers: tuple[str, ...]
    required: frozenset[str]
    parse: Callable[[Row], Parsed]
    description: str


FORMATS = (
    CsvFormat(
        "anthropic-console:usage-csv",
        ("anthropic",),
        frozenset(
            {
                "usage_date_utc",
                "model_version",
                "usage_input_tokens_no_cache",
                "usage_input_tokens_cache_read",
                "usage_output_tokens",
            }
        ),
        anthropic_usage,
        "Anthropic console usage export",
    ),
    CsvFormat(
        "anthropic-console:cost-csv",
        ("anthropic",),
        frozenset({"usage_date_utc", "model", "cost_usd"}),
        anthropic_cost,
        "Anthropic console cost export",
    ),
    CsvFormat(
        "openai-dashboard:costs-csv",
        ("openai",),
        frozenset({"amount_value", "line_item", "start_time"}),
        openai_cost,
        "OpenAI dashboard cost export",
    ),
    CsvFormat(
        "gcp-billing-export",
        ("gemini", "vertex-ai"),
        frozenset({"service.description", "sku.description", "usage_start_time", "cost"}),
        gcp_billing,
        "Google Cloud billing export",
    ),
)
PROVIDERS = sorted({p for f in FORMATS for p in f.providers})


def detect(header: list[str]) -> CsvFormat:
    columns = {h.strip() for h in header}
    for fmt in FORMATS:
        if fmt.required <= columns:
            return fmt
    raise CsvError(
        "not a known export: the header matches none of "
        + ", ".join(f.description for f in FORMATS)
        + f" (it has {', '.join(sorted(columns))[:300]})"
    )


@dataclass(frozen=True)
class CsvReport:
    file: str
    format: str
    source: str
    rows: int
    days: int
    skipped: int  # lines of other services (a Google Cloud export's Compute Engine, ...)


def source_of(fmt: CsvFormat, provider: str) -> str:
    """A bucket's source: the format's, and the provider's too where a format holds several
    (so that importing only Gemini's rows replaces only Gemini's)."""
    return fmt.source if len(fmt.providers) == 1 else f"{fmt.source}:{provider}"


def read_export(
    text: str, name: str, provider: str | None = None
) -> tuple[CsvFormat, dict[tuple[str, dt.date], ledger.Bucket], int]:
    """Parse a whole export; CsvError naming the line for anything malformed."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError(f"{name}: empty file") from None
    except csv.Error as e:
        raise CsvError(f"{name} line 1: {e}") from None
    header = [h.strip() for h in header]
    fmt = detect(header)
    if provider is not None and provider not in fmt.providers:
        raise Invalid(
            f"{name} is a {fmt.description}, not {provider}'s "
            f"(it holds {', '.join(fmt.providers)} figures)"
        )
    buckets: dict[tuple[str, dt.date], ledger.Bucket] = {}
    skipped = 0
    line = 1
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(f"expected {len(header)} fields, found {len(values)}")
            day, parsed = fmt.parse(dict(zip(header, values, strict=True)))
            if parsed is None or (provider is not None and parsed.provider != provider):
                skipped += 1
                continue
            bucket = buckets.setdefault((source_of(fmt, parsed.provider), day), ledger.Bucket(day))
            (bucket.usage if isinstance(parsed, ledger.UsageRow) else bucket.costs).append(parsed)
    except (ValueError, csv.Error) as e:
        raise CsvError(
            f"{name} line {reader.line_num or line}: {e}; nothing was imported"
        ) from None
    return fmt, buckets, skipped


def import_csv(
    db: Database,
    path: str | Path,
    *,
    provider: str | None = None,
    today: dt.date | None = None,
    trailing_days: int = ledger.TRAILING_DAYS,
) -> CsvReport:
    """Import one export file, all or nothing."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CsvError(f"{path}: not UTF-8 text") from None
    fmt, buckets, skipped = read_export(text, str(path), provider)
    provisional_from = (today or ledger.utc_today()) - dt.timedelta(days=trailing_days)
    keys = ledger.KeyBook(db)
    imported_at = ledger.now_timestamp()
    with db.atomic():
        for (source, _), bucket in buckets.items():
            ledger.write_bucket(
                db,
                source,
                bucket,
                provisional=bucket.day >= provisional_from,
                imported_at=imported_at,
                keys=keys,
            )
    rows = sum(len(b.usage) + len(b.costs) for b in buckets.values())
    days = len({day for _, day in buckets})
    return CsvReport(str(path), fmt.description, fmt.source, rows, days, skipped)
