"""`llm-monitor billing`: the providers' own figures, and how they compare with the proxy's."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
from tabulate import tabulate

from llm_monitor.accounts.orgs import find_org
from llm_monitor.billing import csv_exports, ledger, reconcile, sources
from llm_monitor.billing.feeds import ImportReport, Progress, ProgressFactory
from llm_monitor.cli.common import emit, get_db, handle_errors, json_option

day_type = click.DateTime(formats=["%Y-%m-%d"])


def progress_bar(label: str) -> ProgressFactory:
    """A click progress bar on standard error, counting days imported."""

    @contextlib.contextmanager
    def factory(total: int) -> Iterator[Progress]:
        with click.progressbar(
            length=max(total, 1), label=label, file=sys.stderr, show_pos=True
        ) as bar:
            yield bar.update

    return factory


def print_report(report: ImportReport) -> None:
    if report.keys:
        click.echo(f"{report.provider}: {report.keys} API keys in the key list")
    for feed in report.feeds:
        last = feed.end - dt.timedelta(days=1)
        if feed.skipped:
            click.echo(f"{feed.feed}: skipped ({feed.skipped})")
            continue
        click.echo(
            f"{feed.feed}: {feed.start} to {last}{' (resumed)' if feed.resumed else ''}: "
            f"{feed.days} days, {feed.usage_rows} usage rows, {feed.cost_rows} cost rows"
        )
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)


@click.group()
def billing() -> None:
    """The providers' usage and cost figures, and their reconciliation with the proxy's.

    Admin keys are read from OPENAI_ADMIN_KEY, ANTHROPIC_ADMIN_KEY, XAI_MANAGEMENT_KEY or
    --key-file; they are never stored or logged.
    """


def import_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--since",
                type=day_type,
                help="First day (UTC) to import. Default: resume where the last import got "
                f"to, re-pulling the last {ledger.TRAILING_DAYS} days (a first import: "
                f"{ledger.DEFAULT_DAYS} days).",
            ),
            click.option("--base-url", help="The API's address (a stand-in, a gateway)."),
            click.option(
                "--key-file",
                type=click.Path(dir_okay=False, exists=True),
                help="Read the admin key from this file instead of the environment.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _import(
    ctx: click.Context,
    provider: str,
    since: dt.datetime | None,
    base_url: str | None,
    key_file: str | None,
    team_id: str | None = None,
) -> None:
    key = sources.read_key(provider, key_file)
    db = get_db(ctx)
    report = sources.run_import(
        db,
        provider,
        key,
        team_id=team_id,
        base_url=base_url,
        since=since.date() if since else None,
        progress=progress_bar(f"{provider}: importing days"),
    )
    sources.remember(db, provider, team_id=team_id, base_url=base_url, key_file=key_file)
    print_report(report)


@billing.group("import")
def import_group() -> None:
    """Import a provider's usage and cost API (resumable; re-run to update)."""


@import_group.command("openai")
@import_options
@click.pass_context
@handle_errors
def import_openai(
    ctx: click.Context, since: dt.datetime | None, base_url: str | None, key_file: str | None
) -> None:
    """OpenAI's organisation Usage and Costs APIs, and its projects' key lists."""
    _import(ctx, "openai", since, base_url, key_file)


@import_group.command("anthropic")
@import_options
@click.pass_context
@handle_errors
def import_anthropic(
    ctx: click.Context, since: dt.datetime | None, base_url: str | None, key_file: str | None
) -> None:
    """Anthropic's Admin API: usage_report/messages, cost_report and the key list."""
    _import(ctx, "anthropic", since, base_url, key_file)


@import_group.command("xai")
@click.option("--team", "team_id", required=True, help="The xAI team id.")
@import_options
@click.pass_context
@handle_errors
def import_xai(
    ctx: click.Context,
    team_id: str,
    since: dt.datetime | None,
    base_url: str | None,
    key_file: str | None,
) -> None:
    """xAI's management API: the team's daily spend in USD, per model."""
    _import(ctx, "xai", since, base_url, key_file, team_id)


@billing.command("import-csv")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--provider",
    type=click.Choice(csv_exports.PROVIDERS),
    help="Only this provider's rows (and refuse a file of another provider's).",
)
@click.pass_context
@handle_errors
def import_csv(ctx: click.Context, file: str, provider: str | None) -> None:
    """A console or billing export; the format is known from its header."""
    report = csv_exports.import_csv(get_db(ctx), file, provider=provider)
    skipped = f", {report.skipped} rows of other services skipped" if report.skipped else ""
    click.echo(f"{file}: {report.format}: {report.rows} rows over {report.days} days{skipped}")


@billing.command("sync")
@click.pass_context
@handle_errors
def sync(ctx: click.Context) -> None:
    """Run every source imported before (keys from the environment or their key files),
    then reconcile the last 30 days for the dashboard. For cron."""
    db = get_db(ctx)
    if not sources.configured(db):
        click.echo("no sources yet: run `llm-monitor billing import PROVIDER` once first")
        return
    failed = False
    for result in sources.sync(
        db, progress_for=lambda name: progress_bar(f"{name}: importing days")
    ):
        if result.report is not None:
            print_report(result.report)
        else:
            failed = True
            click.echo(f"{result.source}: skipped: {result.skipped}", err=True)
    click.echo("reconciliation of the last 30 days updated")
    if failed:
        ctx.exit(1)


_SHORT = ("bypass", "price", "tokens", "missing", "unpriced", "keys", "provisional")


def _money(value: Any) -> str:
    return "" if value is None else f"{value}"


def _pair(ours: int | None, theirs: int | None) -> str:
    return f"{'' if ours is None else ours}/{'' if theirs is None else theirs}"


def table(rows: list[reconcile.ReconRow]) -> str:
    lines = []
    for r in rows:
        label = {"day": "(all models)", "model": r.model or "(not a model)", "key": ""}[r.level]
        lines.append(
            {
                "day": r.day if r.level == "day" else "",
                "provider": r.provider if r.level == "day" else "",
                "model": label,
                "key": r.key or "",
                "requests proxy/provider": _pair(r.proxy_requests, r.provider_requests),
                "input proxy/provider": _pair(r.proxy_input_tokens, r.provider_input_tokens),
                "output proxy/provider": _pair(r.proxy_output_tokens, r.provider_output_tokens),
                "proxy $": _money(r.proxy_cost_usd),
                "provider $": _money(r.provider_cost_usd),
                "difference $": _money(r.difference_usd),
                "capture %": _money(r.capture_pct),
                "flags": ",".join(f.split(":")[0] for f in r.flags if f.split(":")[0] in _SHORT),
            }
        )
    return tabulate(lines, headers="keys", disable_numparse=True)


@billing.command("reconcile")
@click.option("--from", "start", type=day_type, required=True, help="First day, UTC.")
@click.option("--to", "end", type=day_type, required=True, help="Last day, UTC (included).")
@click.option("--org", "org_name", help="Only this organisation's (linked) figures.")
@json_option
@click.pass_context
@handle_errors
def reconcile_command(
    ctx: click.Context,
    start: dt.datetime,
    end: dt.datetime,
    org_name: str | None,
    as_json: bool,
) -> None:
    """The proxy's tokens and cost against the provider's, per day, provider, model and
    key: the difference, the capture rate (proxy spend / provider spend) and flags
    (bypass, price, tokens, missing, provisional). Also kept for the dashboard."""
    db = get_db(ctx)
    org_id = find_org(db, org_name) if org_name is not None else None
    rows = reconcile.reconcile(db, start.date(), end.date(), org_id)
    reconcile.refresh(db, start.date(), end.date())
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("nothing to reconcile: no provider figures for these days (billing import)")
        return
    click.echo(table(rows))
    flagged = [(r, f) for r in rows if r.level != "key" for f in r.flags if f != "provisional"]
    if flagged:
        click.echo("\nFlags:")
        for r, flag in flagged:
            where = " ".join(filter(None, (r.day, r.provider, r.model)))
            click.echo(f"  {where}: {flag}")


@billing.command("link")
@click.option("--org", "org_name", required=True, help="The organisation.")
@click.option(
    "--provider",
    type=click.Choice(sorted({*sources.PROVIDERS, *csv_exports.PROVIDERS})),
    required=True,
)
@click.option(
    "--project", "project_id", help="A project (OpenAI, Google) or workspace (Anthropic) id."
)
@click.option("--api-key", "api_key_id", help="A provider API key id (key_..., apikey_...).")
@click.pass_context
@handle_errors
def link(
    ctx: click.Context,
    org_name: str,
    provider: str,
    project_id: str | None,
    api_key_id: str | None,
) -> None:
    """Give a provider project, workspace or API key's spend to an organisation."""
    db = get_db(ctx)
    ledger.link(db, find_org(db, org_name), provider, project_id=project_id, api_key_id=api_key_id)
    click.echo(f"{provider} {project_id or api_key_id} -> {org_name}")


@billing.command("unlink")
@click.option("--provider", required=True)
@click.option("--project", "project_id")
@click.option("--api-key", "api_key_id")
@click.pass_context
@handle_errors
def unlink(
    ctx: click.Context, provider: str, project_id: str | None, api_key_id: str | None
) -> None:
    """Remove a link: that spend is the instance admin's alone again."""
    ledger.unlink(get_db(ctx), provider, project_id=project_id, api_key_id=api_key_id)
    click.echo(f"{provider} {project_id or api_key_id}: unlinked")


@billing.command("links")
@json_option
@click.pass_context
@handle_errors
def list_links(ctx: click.Context, as_json: bool) -> None:
    """Which provider projects and keys belong to which organisation."""
    rows = [
        {"org": li.org, "provider": li.provider, "project": li.project_id, "api_key": li.api_key_id}
        for li in ledger.links(get_db(ctx))
    ]
    emit(rows, as_json, empty="no links: all imported spend is the instance admin's")
