"""`llm-monitor budgets`, `limits`, `notify` and `alerts`: spend controls. Each command
parses its arguments, calls `llm_monitor.controls` and prints."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from llm_monitor.accounts.orgs import find_org
from llm_monitor.cli.common import emit, get_db, json_option
from llm_monitor.cli.common import handle_errors as _handle_errors
from llm_monitor.controls.alerts import deliver_due, evaluate, list_alerts
from llm_monitor.controls.budgets import (
    budget_status,
    list_limits,
    remove_budget,
    remove_limit,
    set_budget,
    set_limit,
)
from llm_monitor.controls.notify import NotifyFile, Target, notify_path, send
from llm_monitor.errors import Invalid


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """As everywhere, and a bad value is one line too (not a usage screen)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Invalid as e:
            raise click.ClickException(str(e)) from None

    return _handle_errors(wrapper)


def _scope(token: str | None, user: str | None, tag: str | None) -> tuple[str, str | None]:
    given = [(name, value) for name, value in (("token", token), ("user", user), ("tag", tag))]
    given = [(name, value) for name, value in given if value is not None]
    if len(given) > 1:
        raise Invalid("give at most one of --token, --user and --tag")
    return given[0] if given else ("org", None)


def _org_of_token(db, token: str) -> int:  # type: ignore[no-untyped-def]
    if not (token.isascii() and token.isdigit()):
        raise Invalid(f"--token takes a monitor token id (a number); got {token!r}")
    row = next(db.query("select org_id from monitor_tokens where id = ?", [int(token)]), None)
    if row is None:
        raise Invalid(f"no monitor token {token} (see `llm-monitor tokens list`)")
    return row["org_id"]


def _org_id(db, org: str | None, token: str | None) -> int:  # type: ignore[no-untyped-def]
    if org is not None:
        return find_org(db, org)
    if token is not None:
        return _org_of_token(db, token)
    raise Invalid("give --org NAME (or --token ID for a token's own budget)")


@click.group()
def budgets() -> None:
    """Budgets: hard ones refuse requests past them, soft ones only alert."""


@budgets.command("set")
@click.option("--org", help="The organisation (its whole spend, unless narrowed below).")
@click.option("--token", help="A monitor token's id: its spend only.")
@click.option("--user", help="An X-Monitor-User value: that user's spend only.")
@click.option("--tag", help="KEY=VALUE of X-Monitor-Tags: that tag's spend only.")
@click.option(
    "--period",
    required=True,
    help="day, week or month (calendar, UTC), or FIRST..LAST dates (both included).",
)
@click.option("--usd", required=True, help="The amount in US dollars.")
@click.option("--soft", is_flag=True, help="Alert only; never refuse a request.")
@click.option(
    "--alert-at",
    help="Percentages of the budget that raise an alert (default 50,80,100).",
)
@click.option(
    "--unpriced",
    type=click.Choice(["refuse", "allow"]),
    default="refuse",
    show_default=True,
    help="A hard budget and a model without a price: refuse it, or let it through flagged.",
)
@click.option("--replace", is_flag=True, help="Change the budget of this scope, period and kind.")
@click.pass_context
@handle_errors
def budgets_set(
    ctx: click.Context,
    org: str | None,
    token: str | None,
    user: str | None,
    tag: str | None,
    period: str,
    usd: str,
    soft: bool,
    alert_at: str | None,
    unpriced: str,
    replace: bool,
) -> None:
    """Set a budget. It applies to running proxies within a second."""
    db = get_db(ctx)
    scope, value = _scope(token, user, tag)
    org_id = _org_id(db, org, token)
    if ".." in period:
        period = f"range:{period}"
    budget_id = set_budget(
        db,
        org_id,
        scope=scope,
        scope_value=value,
        period=period,
        usd=usd,
        hard=not soft,
        thresholds=alert_at,
        on_unpriced=unpriced,
        replace=replace,
    )
    click.echo(f"budget {budget_id} set")


@budgets.command("list")
@click.option("--org", help="Only this organisation's budgets.")
@json_option
@click.pass_context
@handle_errors
def budgets_list(ctx: click.Context, org: str | None, as_json: bool) -> None:
    """Budgets with their limit, spent, reserved, left and when they reset."""
    db = get_db(ctx)
    emit(budget_status(db, find_org(db, org) if org else None), as_json)


@budgets.command("remove")
@click.argument("budget_id", type=int)
@click.pass_context
@handle_errors
def budgets_remove(ctx: click.Context, budget_id: int) -> None:
    """Remove a budget; running proxies stop applying it within a second."""
    remove_budget(get_db(ctx), budget_id)
    click.echo(f"budget {budget_id} removed")


@click.group()
def limits() -> None:
    """Rate limits: requests and tokens per minute of an organisation or a token."""


@limits.command("set")
@click.option("--org", help="The organisation.")
@click.option("--token", help="A monitor token's id.")
# Taken as text and checked by set_limit: a bad number gets one line, as --usd does.
@click.option("--rpm", help="Requests per minute.")
@click.option("--tpm", help="Tokens (input and output) per minute.")
@click.pass_context
@handle_errors
def limits_set(
    ctx: click.Context, org: str | None, token: str | None, rpm: str | None, tpm: str | None
) -> None:
    """Set (or change) a rate limit. It applies to running proxies within a second."""
    db = get_db(ctx)
    scope = "token" if token is not None else "org"
    limit_id = set_limit(
        db, _org_id(db, org, token), scope=scope, scope_value=token, rpm=rpm, tpm=tpm
    )
    click.echo(f"rate limit {limit_id} set")


@limits.command("list")
@click.option("--org", help="Only this organisation's limits.")
@json_option
@click.pass_context
@handle_errors
def limits_list(ctx: click.Context, org: str | None, as_json: bool) -> None:
    """Rate limits."""
    db = get_db(ctx)
    emit(list_limits(db, find_org(db, org) if org else None), as_json)


@limits.command("remove")
@click.argument("limit_id", type=int)
@click.pass_context
@handle_errors
def limits_remove(ctx: click.Context, limit_id: int) -> None:
    """Remove a rate limit."""
    remove_limit(get_db(ctx), limit_id)
    click.echo(f"rate limit {limit_id} removed")


def _notify_file(ctx: click.Context) -> NotifyFile:
    return NotifyFile(notify_path(ctx.obj["db_path"]))


@click.group()
def notify() -> None:
    """Where an organisation's alerts go: any Apprise URL (Slack, Teams, email, Discord,
    ntfy, json:// webhooks). The URLs are kept in DB.notify.json, readable by its owner
    only, and shown redacted."""


@notify.command("add")
@click.option("--org", required=True, help="The organisation.")
@click.argument("url")
@click.pass_context
@handle_errors
def notify_add(ctx: click.Context, org: str, url: str) -> None:
    """Add a notification URL (checked by Apprise, not contacted)."""
    org_id = find_org(get_db(ctx), org)
    target_id = _notify_file(ctx).add(org_id, url)
    click.echo(f"notification URL {target_id} added")


@notify.command("list")
@click.option("--org", help="Only this organisation's URLs.")
@json_option
@click.pass_context
@handle_errors
def notify_list(ctx: click.Context, org: str | None, as_json: bool) -> None:
    """Notification URLs, redacted."""
    db = get_db(ctx)
    names = {row["id"]: row["name"] for row in db.query("select id, name from orgs")}
    emit(_notify_file(ctx).listing(names, find_org(db, org) if org else None), as_json)


@notify.command("remove")
@click.argument("target_id", type=int)
@click.pass_context
@handle_errors
def notify_remove(ctx: click.Context, target_id: int) -> None:
    """Remove a notification URL."""
    _notify_file(ctx).remove(target_id)
    click.echo(f"notification URL {target_id} removed")


@notify.command("test")
@click.option("--org", required=True, help="The organisation.")
@click.pass_context
@handle_errors
def notify_test(ctx: click.Context, org: str) -> None:
    """Send a test message to each of the organisation's URLs, now."""
    org_id = find_org(get_db(ctx), org)
    targets: list[Target] = _notify_file(ctx).targets(org_id)
    if not targets:
        raise click.ClickException(f"{org} has no notification URLs (`llm-monitor notify add`)")
    failed = 0
    for target in targets:
        error = send(target, "LLM Monitor: test", f"A test notification for {org}.")
        click.echo(f"{target.id} {target.shown}: {'sent' if error is None else error}")
        failed += error is not None
    if failed:
        raise click.ClickException(f"{failed} of {len(targets)} could not be sent")


@click.group()
def alerts() -> None:
    """Alerts: budget thresholds, spend anomalies, error spikes, unpriced models."""


@alerts.command("list")
@click.option("--org", help="Only this organisation's alerts.")
@json_option
@click.pass_context
@handle_errors
def alerts_list(ctx: click.Context, org: str | None, as_json: bool) -> None:
    """The latest alerts and whether they were delivered."""
    db = get_db(ctx)
    emit(list_alerts(db, find_org(db, org) if org else None), as_json)


@alerts.command("check")
@click.pass_context
@handle_errors
def alerts_check(ctx: click.Context) -> None:
    """Evaluate and deliver once, now (the proxy does it every 15 s by itself)."""
    db = get_db(ctx)
    raised = evaluate(db)
    delivered = deliver_due(db, _notify_file(ctx))
    click.echo(f"{len(raised)} new alerts, {delivered} delivered")


COMMANDS = (budgets, limits, notify, alerts)
