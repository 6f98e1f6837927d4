"""`llm-monitor doctor`, `backup` and `prune`: checking and keeping a deployment."""

from __future__ import annotations

import shutil
import sys

import click

from llm_monitor.cli.common import get_db, handle_errors
from llm_monitor.dashboard import DEFAULT_PORT as DASHBOARD_PORT
from llm_monitor.inert import printable
from llm_monitor.proxy.launch import DEFAULT_LISTENERS, busy_ports
from llm_monitor.store.operations import Check, database_checks
from llm_monitor.store.operations import backup as backup_db
from llm_monitor.store.operations import prune as prune_db


def system_checks(host: str, ports: dict[str, int], workers: bool) -> list[Check]:
    checks = []
    busy = busy_ports(host, ports)
    checks += [Check(False, f"{b}", "stop what uses it, or give `up` other ports") for b in busy]
    if ports and not busy:
        checks.append(Check(True, f"ports {', '.join(map(str, ports.values()))} free on {host}"))
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy:
        checks.append(Check(True, f"HAProxy at {haproxy} (for --workers)"))
    elif workers:
        checks.append(
            Check(False, "no HAProxy: `up --workers N` needs it", "apt-get install haproxy")
        )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    checks.append(
        Check(True, f"Chromium at {chromium} (dashboard screenshots and browser tests)")
        if chromium
        else Check(True, "no Chromium (only the browser tests and screenshots need it)")
    )
    return checks


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where `up` will listen.")
@click.option(
    "--ports/--no-ports",
    default=True,
    show_default=True,
    help="Check that the default listener and dashboard ports are free (off while `up` runs).",
)
@click.option("--workers", is_flag=True, help="Check for what `up --workers N` needs too.")
@click.pass_context
@handle_errors
def doctor(ctx: click.Context, host: str, ports: bool, workers: bool) -> None:
    """Check a deployment: the database (there, migrated, writable), monitor tokens,
    prices, spooled rows, free ports, HAProxy. Prints what to fix; exits 1 if anything
    needs it."""
    wanted = {name: port for name, (_, port) in DEFAULT_LISTENERS.items()}
    wanted["dashboard"] = DASHBOARD_PORT
    checks = database_checks(ctx.obj["db_path"])
    checks += system_checks(host, wanted if ports else {}, workers)
    for check in checks:
        if check.ok:
            click.echo(f"ok       {printable(check.what)}")
        else:
            click.echo(f"PROBLEM  {printable(check.what)}\n         fix: {check.fix}")
    if not all(c.ok for c in checks):
        sys.exit(1)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
@handle_errors
def backup(ctx: click.Context, file: str) -> None:
    """Copy the database to FILE, consistent even while the proxy writes (SQLite's online
    backup). FILE must not exist."""
    get_db(ctx).conn.close()
    made = backup_db(ctx.obj["db_path"], file)
    click.echo(f"{made.path}: {made.usage_rows} usage rows, {made.bytes:,} bytes")


@click.command()
@click.option("--before", required=True, metavar="YYYY-MM-DD", help="First day to keep (UTC).")
@click.option("--dry-run", is_flag=True, help="Count the rows, delete nothing.")
@click.pass_context
@handle_errors
def prune(ctx: click.Context, before: str, dry_run: bool) -> None:
    """Delete raw usage rows of the days before --before. The rollups keep those days'
    requests, tokens and cost, so the dashboard's totals and charts do not change; the
    per-request pages of those days are gone. Take a `backup` first."""
    result = prune_db(get_db(ctx), before, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {result.rows} usage rows from before {result.before}")
