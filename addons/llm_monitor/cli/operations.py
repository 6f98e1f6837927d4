"""`llm-monitor doctor`, `backup` and `prune`: checking and keeping a deployment."""

from __future__ import annotations

import shutil
import sys

import click

from llm_monitor.cli.common import get_db, handle_errors
from llm_monitor.cli.run import dashboard_port_option, listen_option
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
    help="Check that the ports `up` will take are free (off while `up` runs).",
)
@click.option(
    "--listen",
    multiple=True,
    metavar="NAME=UPSTREAM@PORT",
    callback=listen_option,
    help="A listener `up` will have (repeatable), as `up --listen`.",
)
@click.option("--no-defaults", is_flag=True, help="`up` will run without the default listeners.")
@dashboard_port_option
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="As `up --metrics-port`.")
@click.option("--workers", is_flag=True, help="Check for what `up --workers N` needs too.")
@click.pass_context
@handle_errors
def doctor(
    ctx: click.Context,
    host: str,
    ports: bool,
    listen: list[tuple[str, str, int]],
    no_defaults: bool,
    dashboard_port: int,
    metrics_port: int | None,
    workers: bool,
) -> None:
    """Check a deployment: the database (there, migrated, writable), monitor tokens,
    prices (loaded, current with the installed genai-prices, not stale), spooled rows,
    free ports, HAProxy. Give it the port options you give `up`. Prints what to fix;
    exits 1 if anything needs it."""
    listeners = {} if no_defaults else dict(DEFAULT_LISTENERS)
    listeners.update({name: (upstream, port) for name, upstream, port in listen})
    wanted = {name: port for name, (_, port) in listeners.items()}
    wanted["dashboard"] = dashboard_port
    if metrics_port is not None:
        wanted["metrics"] = metrics_port
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
