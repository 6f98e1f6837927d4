"""The `llm-monitor` command line. Each command group lives in a module of its own and
only parses, calls the domain modules and prints."""

from __future__ import annotations

import datetime as dt

import click

from llm_monitor.accounts.orgs import find_org
from llm_monitor.cli.accounts import dashboard_token, members, orgs, tokens
from llm_monitor.cli.billing import billing
from llm_monitor.cli.common import (
    accept_db_everywhere,
    emit,
    get_db,
    handle_errors,
    json_option,
)
from llm_monitor.cli.controls import COMMANDS as CONTROL_COMMANDS
from llm_monitor.cli.operations import backup, doctor, prune
from llm_monitor.cli.prices import pricing
from llm_monitor.cli.run import dashboard, demo, import_spool, proxy, up
from llm_monitor.inert import printable
from llm_monitor.money.sync import install_defaults
from llm_monitor.store.reports import explain_row, usage_by_model

DEFAULT_DB = "llm-monitor.db"
PERIODS = {"day": 1, "week": 7, "month": 30}


@click.group()
@click.version_option(package_name="llm-monitor")
@click.option(
    "--db",
    "db_path",
    envvar="LLM_MONITOR_DB",
    default=DEFAULT_DB,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="SQLite database file (or set LLM_MONITOR_DB).",
)
@click.pass_context
def cli(ctx: click.Context, db_path: str) -> None:
    """LLM Monitor: record what every LLM API request costs.

    A pass-through proxy (mitmproxy) in front of the provider writes one row per request
    into a SQLite database; this command manages that database.
    """
    ctx.ensure_object(dict)
    ctx.obj["db_path"] = db_path


@cli.command()
@click.pass_context
@handle_errors
def init(ctx: click.Context) -> None:
    """Create the database (or upgrade its schema) and load the default prices.

    The defaults are genai-prices' (the installed, pinned version) plus the shipped local
    overrides; a price already in the table is never changed (see `pricing sync`).
    """
    db = get_db(ctx, create=True)
    installed = install_defaults(db)
    click.echo(
        f"{ctx.obj['db_path']}: schema ready; {installed.library} prices added from "
        f"{installed.source}, {installed.overrides} local overrides loaded"
    )


@cli.command()
@click.argument("row_id", type=click.IntRange(1, 2**63 - 1))
@click.pass_context
@handle_errors
def explain(ctx: click.Context, row_id: int) -> None:
    """How the cost of usage row ROW_ID was reached: each count at its rate, with the
    price's source; or why it has none."""
    for line in explain_row(get_db(ctx), row_id).lines:
        click.echo(line)


@cli.command()
@click.option(
    "--period",
    type=click.Choice(list(PERIODS)),
    default="day",
    show_default=True,
    help="The last day, week (7 days) or month (30 days).",
)
@click.option("--org", "org_name", help="Only this organisation.")
@json_option
@click.pass_context
@handle_errors
def stats(ctx: click.Context, period: str, org_name: str | None, as_json: bool) -> None:
    """Requests, tokens, cost and latency by model over the last period."""
    db = get_db(ctx)
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=PERIODS[period])).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    org_id = find_org(db, org_name) if org_name is not None else None
    rows = usage_by_model(db, since, org_id)
    if as_json:
        emit(rows, True)
        return
    scope = f" for {printable(org_name)}" if org_name else ""
    click.echo(f"Last {period}{scope} (since {since}Z):\n")
    emit(rows, False, empty="no requests in this period")
    if rows:
        total = sum(r["cost_usd"] or 0 for r in rows)
        unpriced = sum(r["unpriced"] or 0 for r in rows)
        click.echo(
            f"\n{sum(r['requests'] for r in rows)} requests, ${total:.6f}"
            + (f" ({unpriced} requests without a price not included)" if unpriced else "")
        )


COMMANDS = (
    orgs,
    members,
    tokens,
    dashboard_token,
    pricing,
    billing,
    proxy,
    up,
    dashboard,
    demo,
    import_spool,
    doctor,
    backup,
    prune,
    *CONTROL_COMMANDS,
)
for command in COMMANDS:
    cli.add_command(command)
accept_db_everywhere(cli)
