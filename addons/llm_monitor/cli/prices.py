"""`llm-monitor pricing`: the price table. Each command parses its arguments, calls
`llm_monitor.money` or `llm_monitor.store` and prints."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from pydantic import ValidationError

from llm_monitor.cli.common import emit, get_db, handle_errors, json_option
from llm_monitor.inert import check_name, printable
from llm_monitor.money.prices import (
    PriceEntry,
    dump_prices,
    load_price_file,
    read_prices,
    upsert_prices,
)
from llm_monitor.store.maintenance import reprice
from llm_monitor.store.reports import unpriced_models


@click.group()
def pricing() -> None:
    """Prices in USD per 1M tokens, effective-dated, by provider and model."""


@pricing.command("list")
@click.option("--provider", help="Only this provider's prices.")
@json_option
@click.pass_context
@handle_errors
def pricing_list(ctx: click.Context, provider: str | None, as_json: bool) -> None:
    """Every price with its effective date and source."""
    rows = [e.model_dump(mode="json") for e in read_prices(get_db(ctx), provider)]
    if not as_json:  # the terminal gets the figures; sources are in --json and `export`
        for row in rows:
            del row["source"]
    emit(rows, as_json)


def decimal_option(name: str, help: str, required: bool = False) -> Callable[..., Any]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
        if value is None:
            return None
        if not value.isascii():  # Decimal reads other scripts' digits too
            raise click.BadParameter(f"{printable(value)!r} is not a number")
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise click.BadParameter(f"{value!r} is not a number") from None
        if not number.is_finite() or number < 0:
            raise click.BadParameter(f"{value!r} must be a non-negative number")
        return number

    return click.option(name, required=required, callback=convert, help=help)


@pricing.command("set")
@click.argument("model")
@decimal_option("--input", "USD per 1M input tokens.", required=True)
@decimal_option("--output", "USD per 1M output tokens.", required=True)
@decimal_option("--cached-input", "USD per 1M cached (cache-read) input tokens.")
@decimal_option("--cache-write", "USD per 1M cache-write input tokens.")
@decimal_option("--reasoning", "USD per 1M reasoning tokens (default: the output rate).")
@click.option("--provider", default="openai", show_default=True)
@click.option(
    "--effective-from",
    type=click.DateTime(["%Y-%m-%d"]),
    help="First day (UTC) the price applies to. Default: today.",
)
@click.option(
    "--source", default="set by hand", show_default=True, help="Where the figures are from."
)
@click.pass_context
@handle_errors
def pricing_set(
    ctx: click.Context,
    model: str,
    input: Decimal,
    output: Decimal,
    cached_input: Decimal | None,
    cache_write: Decimal | None,
    reasoning: Decimal | None,
    provider: str,
    effective_from: dt.datetime | None,
    source: str,
) -> None:
    """Add or replace the price of MODEL from a date on. Past rows keep their cost.

    Use `pricing reprice --since DATE` to recompute rows already written.
    """
    today = dt.datetime.now(dt.UTC).date()
    model = check_name(model, "MODEL", max_length=200)
    provider = check_name(provider, "--provider", max_length=100)
    try:
        entry = PriceEntry(
            provider=provider,
            model=model,
            input=input,
            output=output,
            cached_input=cached_input,
            cache_write=cache_write,
            reasoning=reasoning,
            effective_from=effective_from.date() if effective_from else today,
            source=source,
            as_of=today,
        )
    except ValidationError as e:
        raise click.ClickException(
            "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        ) from None
    upsert_prices(get_db(ctx), [entry])
    click.echo(
        f"{provider}/{model}: from {entry.effective_from}, input {input}, output {output} "
        "USD per 1M tokens"
    )


@pricing.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
@handle_errors
def pricing_import(ctx: click.Context, file: str) -> None:
    """Load a price file (the format `pricing export` writes); entries replace same-dated ones."""
    entries = load_price_file(file)
    click.echo(f"imported {upsert_prices(get_db(ctx), entries)} prices from {file}")


@pricing.command("export")
@click.pass_context
@handle_errors
def pricing_export(ctx: click.Context) -> None:
    """Print every price as a price file (JSON), ready for `pricing import`."""
    click.echo(dump_prices(read_prices(get_db(ctx))))


@pricing.command("unpriced")
@json_option
@click.pass_context
@handle_errors
def pricing_unpriced(ctx: click.Context, as_json: bool) -> None:
    """Models seen in traffic whose cost could not be computed."""
    emit(unpriced_models(get_db(ctx)), as_json, empty="every request seen so far is priced")


@pricing.command("reprice")
@click.option(
    "--since",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="Recompute rows from this day (UTC) on.",
)
@click.pass_context
@handle_errors
def pricing_reprice(ctx: click.Context, since: dt.datetime) -> None:
    """Recompute cost_usd and priced of past rows with the prices now in the table."""
    result = reprice(get_db(ctx), since.date().isoformat())
    click.echo(f"repriced {result.rows} rows since {since.date()}; {result.changed} changed")
