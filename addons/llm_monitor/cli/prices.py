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
from llm_monitor.money.costs import PriceBook
from llm_monitor.money.prices import (
    PriceEntry,
    dump_prices,
    load_price_file,
    read_prices,
    upsert_prices,
)
from llm_monitor.money.sync import apply_sync, plan_sync
from llm_monitor.store.maintenance import reprice
from llm_monitor.store.reports import pricing_gaps, unpriced_models


@click.group()
def pricing() -> None:
    """Prices in USD per 1M tokens (per 1,000 calls for tools), effective-dated, by
    provider and model: genai-prices' figures and local overrides, which always win."""


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@pricing.command("list")
@click.option("--provider", help="Only this provider's prices.")
@json_option
@click.pass_context
@handle_errors
def pricing_list(ctx: click.Context, provider: str | None, as_json: bool) -> None:
    """Every price in force today, whichever source it comes from, with that source."""
    entries = PriceBook(read_prices(get_db(ctx), provider)).in_force(_today())
    if as_json:
        emit([e.model_dump(mode="json") for e in entries], True)
        return
    rows = []
    for e in entries:
        rates = e.rates()
        rows.append(
            {
                "provider": e.provider,
                "model": e.model,
                "input": rates.pop("input", None),
                "cached_input": rates.pop("cached_input", None),
                "output": rates.pop("output", None),
                "other rates": ", ".join(f"{k}={v}" for k, v in rates.items()),
                "applies": " ".join(
                    x
                    for x in (
                        f"above {e.above_input_tokens:,} input" if e.above_input_tokens else "",
                        e.variant,
                        f"{e.window} UTC" if e.window else "",
                    )
                    if x
                ),
                "from": e.effective_from,
                "source": e.source if e.origin == "library" else f"local: {e.source}"[:60],
            }
        )
    emit(rows, False, empty="no prices: run `llm-monitor init`")


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
@decimal_option("--web-search-per-1k", "USD per 1,000 web searches.")
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
    web_search_per_1k: Decimal | None,
    provider: str,
    effective_from: dt.datetime | None,
    source: str,
) -> None:
    """Add or replace a local price of MODEL from a date on; it wins over the library's.
    Past rows keep their cost.

    Use `pricing reprice --since DATE` to recompute rows already written. For audio, image
    or tier rates, import a price file (`pricing export` shows the format).
    """
    today = _today()
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
            web_search_per_1k=web_search_per_1k,
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
        "USD per 1M tokens (local: wins over the library)"
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
@click.option("--local", "local_only", is_flag=True, help="Only local prices (overrides).")
@click.pass_context
@handle_errors
def pricing_export(ctx: click.Context, local_only: bool) -> None:
    """Print every price (history included) as a price file, ready for `pricing import`."""
    entries = read_prices(get_db(ctx))
    if local_only:
        entries = [e for e in entries if e.origin == "local"]
    click.echo(dump_prices(entries))


@pricing.command("sync")
@click.option("--yes", is_flag=True, help="Apply without asking.")
@click.pass_context
@handle_errors
def pricing_sync(ctx: click.Context, yes: bool) -> None:
    """Compare the installed genai-prices with the table; add what is new or changed as
    new effective-dated entries. Nothing is deleted; past rows keep their cost."""
    db = get_db(ctx)
    plan = plan_sync(db)
    click.echo(f"installed: {plan.source}")
    if plan.empty:
        click.echo("the table has every price of the installed library")
        return
    if plan.new_models:
        click.echo(f"\n{len(plan.new_models)} new models:")
        for provider, model in plan.new_models:
            click.echo(f"  {provider}/{model}")
    dated = [e for e in plan.added if (e.provider, e.model) not in set(plan.new_models)]
    if dated:
        click.echo(f"\n{len(dated)} new prices of known models:")
        for e in dated:
            click.echo(f"  {_label(e)} from {e.effective_from}")
    if plan.changed:
        flagged = sum(c.flagged for c in plan.changed)
        click.echo(
            f"\n{len(plan.changed)} changed rates ({flagged} changed by more than 20%: '!'), "
            f"effective {plan.today}:"
        )
        for change in plan.changed:
            mark = "!" if change.flagged else " "
            click.echo(f" {mark}{_label(change.new)}: {change.describe()}")
    total = len(plan.added) + len(plan.changed)
    if not yes and not click.confirm(f"\nadd these {total} price entries?", default=False):
        click.echo("nothing changed")
        return
    click.echo(
        f"added {apply_sync(db, plan)} price entries; rows already written keep their cost "
        "(`llm-monitor pricing reprice --since DATE` recomputes them)"
    )


def _label(e: PriceEntry) -> str:
    extra = " ".join(
        x
        for x in (
            f">{e.above_input_tokens}" if e.above_input_tokens else "",
            f"[{e.variant}]" if e.variant else "",
            f"[{e.window} UTC]" if e.window else "",
        )
        if x
    )
    return f"{e.provider}/{e.model}" + (f" {extra}" if extra else "")


@pricing.command("unpriced")
@json_option
@click.pass_context
@handle_errors
def pricing_unpriced(ctx: click.Context, as_json: bool) -> None:
    """Models seen in traffic that have no price at all."""
    emit(unpriced_models(get_db(ctx)), as_json, empty="every model seen so far has a price")


@pricing.command("check")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 36500))
@json_option
@click.pass_context
@handle_errors
def pricing_check(ctx: click.Context, days: int, as_json: bool) -> None:
    """Models seen in the last DAYS without a price of their own (no price, a missing
    rate, priced by fallback to their family), with the requests and tokens at stake."""
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S")
    emit(
        pricing_gaps(get_db(ctx), since),
        as_json,
        empty=f"every request of the last {days} days was priced from its own model's price",
    )


@pricing.command("reprice")
@click.option(
    "--since",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="Recompute rows from this day (UTC) on.",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@json_option
@click.pass_context
@handle_errors
def pricing_reprice(ctx: click.Context, since: dt.datetime, dry_run: bool, as_json: bool) -> None:
    """Recompute the cost of past rows with the prices now in the table."""
    result = reprice(get_db(ctx), since.date().isoformat(), dry_run=dry_run)
    if as_json:
        emit(result.by_model, True)
        return
    if dry_run:
        emit(result.by_model, False, empty="no rows")
        before = sum(m["cost_before"] for m in result.by_model)
        after = sum(m["cost_after"] for m in result.by_model)
        click.echo(
            f"\ndry run: {result.changed} of {result.rows} rows since {since.date()} would "
            f"change; cost ${before:.6f} -> ${after:.6f}; nothing written"
        )
        return
    click.echo(f"repriced {result.rows} rows since {since.date()}; {result.changed} changed")
