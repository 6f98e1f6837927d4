"""The `llm-monitor` command line: organisations, monitor tokens, prices, stats, the proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
import uvicorn
from mitmproxy.net import server_spec
from pydantic import ValidationError
from sqlite_utils import Database
from tabulate import tabulate

from llm_monitor import monitor as monitor_script
from llm_monitor import rollups, synthetic
from llm_monitor import workers as workers_module
from llm_monitor.dashboard import DEFAULT_PORT as DASHBOARD_PORT
from llm_monitor.dashboard import make_datasette
from llm_monitor.database import open_db
from llm_monitor.demo import PROVIDERS, send_traffic
from llm_monitor.passwords import check_strength, hash_password
from llm_monitor.pricing import (
    PriceEntry,
    PriceFileError,
    dump_prices,
    load_price_file,
    read_prices,
    shipped_prices,
    upsert_prices,
)
from llm_monitor.recorder import load_price_book, price_row, write_rows
from llm_monitor.standin import StandinProvider
from llm_monitor.tokens import DASHBOARD_PREFIX, PREFIX, display_prefix, hash_token, new_token
from llm_monitor.usage import UsageRecord, utc_timestamp

DEFAULT_DB = "llm-monitor.db"
DEFAULT_PORT = 8080
PERIODS = {"day": 1, "week": 7, "month": 30}


def now_utc() -> str:
    return utc_timestamp(time.time())


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one-line errors instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            raise click.ClickException(f"database error: {e}") from None
        except PriceFileError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(f"{e.filename or 'file'}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise click.ClickException("input is not UTF-8 text") from None
        except (OverflowError, RecursionError, ValueError) as e:
            raise click.ClickException(f"bad input: {e}") from None

    return wrapper


def get_db(ctx: click.Context, *, create: bool = False) -> Database:
    path = Path(ctx.obj["db_path"])
    if not create and not path.exists():
        raise click.ClickException(f"no database at {path}: run `llm-monitor init` first")
    return open_db(path)


def emit(rows: list[dict[str, Any]], as_json: bool, empty: str = "(none)") -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    elif rows:
        click.echo(tabulate(rows, headers="keys", floatfmt=".6g"))
    else:
        click.echo(empty)


json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON.")


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
    """Create the database (or upgrade its schema) and load the shipped price table."""
    db = get_db(ctx, create=True)
    entries = shipped_prices()
    upsert_prices(db, entries)
    click.echo(f"{ctx.obj['db_path']}: schema ready, {len(entries)} shipped prices loaded")


# Organisations.


@cli.group()
def orgs() -> None:
    """Organisations: each has its own monitor tokens and sees only its own usage."""


@orgs.command("create")
@click.argument("name")
@click.option("--email", required=True, help="Contact and dashboard login of the organisation.")
@click.option("--token-name", default="default", show_default=True, help="Label of the token.")
@click.option(
    "--password", "with_password", is_flag=True, help="Set a dashboard password (prompted)."
)
@click.option("--admin", is_flag=True, help="Its login sees every organisation and can run SQL.")
@json_option
@click.pass_context
@handle_errors
def orgs_create(
    ctx: click.Context,
    name: str,
    email: str,
    token_name: str,
    with_password: bool,
    admin: bool,
    as_json: bool,
) -> None:
    """Create an organisation and print its first monitor token (shown only this once).

    With --password, its dashboard login (the email and that password) works at once;
    otherwise set one later with `llm-monitor orgs set-password`.
    """
    name, email = name.strip(), email.strip()
    if not name:
        raise click.BadParameter("must not be empty", param_hint="NAME")
    if "@" not in email:
        raise click.BadParameter(f"{email!r} is not an email address", param_hint="--email")
    db = get_db(ctx)
    password_hash = prompt_password_hash() if with_password else None
    with db.atomic():
        if db["orgs"].count_where("name = ?", [name]):
            raise click.ClickException(f"organisation {name!r} already exists")
        if password_hash:
            check_login_email_free(db, email, None)
        org_id = (
            db["orgs"]
            .insert(
                {
                    "name": name,
                    "email": email,
                    "created_at": now_utc(),
                    "password_hash": password_hash,
                    "is_admin": int(admin),
                }
            )
            .last_pk
        )
        token_id, token = create_token(db, "monitor_tokens", org_id, token_name)
    if as_json:
        click.echo(
            json.dumps({"org_id": org_id, "name": name, "token_id": token_id, "token": token})
        )
    else:
        click.echo(
            f"Created organisation {name!r} (id {org_id}). Its monitor token, shown "
            "only this once:\n"
        )
        click.echo(token)


@orgs.command("list")
@json_option
@click.pass_context
@handle_errors
def orgs_list(ctx: click.Context, as_json: bool) -> None:
    """Organisations with their number of live tokens and requests."""
    rows = list(
        get_db(ctx).query("""
        select orgs.id, orgs.name, orgs.email, orgs.created_at,
          orgs.password_hash is not null as login, orgs.is_admin as admin,
          (select count(*) from monitor_tokens t
            where t.org_id = orgs.id and t.revoked_at is null) as live_tokens,
          (select count(*) from usage where usage.org_id = orgs.id) as requests
        from orgs order by orgs.name
    """)
    )
    emit(rows, as_json)


@orgs.command("set-password")
@click.argument("name")
@click.option(
    "--admin/--no-admin",
    default=None,
    help="Also make the organisation an admin (sees every organisation), or no longer one.",
)
@click.pass_context
@handle_errors
def orgs_set_password(ctx: click.Context, name: str, admin: bool | None) -> None:
    """Set the password an organisation logs in to the dashboard with (prompted twice).

    It logs in with its email (see `orgs list`). The password is stored as a salted scrypt
    hash. Reads the password from standard input when that is not a terminal.
    """
    db = get_db(ctx)
    org_id = find_org(db, name)
    password_hash = prompt_password_hash()
    with db.atomic():
        email = db["orgs"].get(org_id)["email"]
        check_login_email_free(db, email, org_id)
        changes: dict[str, Any] = {"password_hash": password_hash}
        if admin is not None:
            changes["is_admin"] = int(admin)
        db["orgs"].update(org_id, changes)
    click.echo(f"password set for {name!r}: log in to the dashboard as {email}")


def prompt_password_hash() -> str:
    password = click.prompt(
        "Dashboard password", hide_input=True, confirmation_prompt=True, err=True
    )
    try:
        check_strength(password)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="password") from None
    return hash_password(password)


def check_login_email_free(db: Database, email: str, org_id: int | None) -> None:
    """A login email names one organisation: refuse a second one with a password."""
    other = next(
        db.query(
            "select name from orgs where email = ? collate nocase and password_hash is not null "
            "and id is not ?",
            [email, org_id],
        ),
        None,
    )
    if other is not None:
        raise click.ClickException(
            f"{email} is already the dashboard login of {other['name']!r}; "
            "give this organisation another email"
        )


def find_org(db: Database, name: str) -> int:
    row = next(db.query("select id from orgs where name = ?", [name]), None)
    if row is None:
        raise click.ClickException(f"no organisation named {name!r} (see `llm-monitor orgs list`)")
    return row["id"]


# Monitor tokens.


# Token table: (prefix of its tokens, the command that lists them).
TOKEN_TABLES = {
    "monitor_tokens": (PREFIX, "llm-monitor tokens list"),
    "dashboard_tokens": (DASHBOARD_PREFIX, "llm-monitor dashboard-token list"),
}


def create_token(db: Database, table: str, org_id: int, label: str | None) -> tuple[int, str]:
    """A new token in `table`: only its hash and a display prefix are stored."""
    token = new_token(TOKEN_TABLES[table][0])
    token_id = (
        db[table]
        .insert(
            {
                "org_id": org_id,
                "token_hash": hash_token(token),
                "prefix": display_prefix(token),
                "label": label,
                "created_at": now_utc(),
            }
        )
        .last_pk
    )
    return token_id, token


def create_and_print_token(
    db: Database, table: str, org_name: str, label: str | None, as_json: bool
) -> None:
    with db.atomic():
        token_id, token = create_token(db, table, find_org(db, org_name), label)
    if as_json:
        click.echo(json.dumps({"token_id": token_id, "org": org_name, "token": token}))
    else:
        click.echo(token)


def list_tokens(db: Database, table: str, org_name: str | None) -> list[dict[str, Any]]:
    where, params = "", []
    if org_name is not None:
        where, params = "where t.org_id = ?", [find_org(db, org_name)]
    sql = f"""
        select t.id, t.prefix, t.label, orgs.name as org, t.created_at, t.last_used_at,
          t.revoked_at
        from {table} t join orgs on orgs.id = t.org_id {where} order by t.id
    """
    return list(db.query(sql, params))


def revoke_token(db: Database, table: str, id_or_token: str) -> str:
    """Revoke by id or by the full token; say what happened."""
    prefix, list_command = TOKEN_TABLES[table]
    if id_or_token.isdigit():
        where, params = "id = ?", [int(id_or_token)]
    elif id_or_token.startswith(prefix):
        where, params = "token_hash = ?", [hash_token(id_or_token)]
    else:
        raise click.BadParameter(
            f"give a token id (a number) or a full {prefix} token", param_hint="ID_OR_TOKEN"
        )
    row = next(db.query(f"select id, revoked_at from {table} where {where}", params), None)
    if row is None:
        raise click.ClickException(f"no such token (see `{list_command}`)")
    if row["revoked_at"]:
        return f"token {row['id']} was already revoked at {row['revoked_at']}"
    with db.atomic():
        db[table].update(row["id"], {"revoked_at": now_utc()})
    return f"revoked token {row['id']}"


@cli.group()
def tokens() -> None:
    """Monitor tokens: what services send in the X-Monitor-Token header."""


@tokens.command("create")
@click.option("--org", "org_name", required=True, help="Organisation the token belongs to.")
@click.option("--name", "label", help="A label, e.g. the service that will use it.")
@json_option
@click.pass_context
@handle_errors
def tokens_create(ctx: click.Context, org_name: str, label: str | None, as_json: bool) -> None:
    """Create a monitor token and print it (shown only this once; stored as SHA-256)."""
    create_and_print_token(get_db(ctx), "monitor_tokens", org_name, label, as_json)


@tokens.command("list")
@click.option("--org", "org_name", help="Only this organisation's tokens.")
@json_option
@click.pass_context
@handle_errors
def tokens_list(ctx: click.Context, org_name: str | None, as_json: bool) -> None:
    """Tokens with their prefix, label, organisation, creation, last use and revocation."""
    emit(list_tokens(get_db(ctx), "monitor_tokens", org_name), as_json)


@tokens.command("revoke")
@click.argument("id_or_token")
@click.pass_context
@handle_errors
def tokens_revoke(ctx: click.Context, id_or_token: str) -> None:
    """Revoke a token, by its id (see `tokens list`) or the full token.

    A running proxy stops accepting it within its refresh interval (1 s by default).
    """
    click.echo(revoke_token(get_db(ctx), "monitor_tokens", id_or_token))


# Dashboard tokens.


@cli.group("dashboard-token")
def dashboard_token() -> None:
    """Bearer tokens for the dashboard's JSON API (one organisation's views, read-only)."""


@dashboard_token.command("create")
@click.option("--org", "org_name", required=True, help="Organisation whose views it reads.")
@click.option("--name", "label", help="A label, e.g. the script that will use it.")
@json_option
@click.pass_context
@handle_errors
def dashboard_token_create(
    ctx: click.Context, org_name: str, label: str | None, as_json: bool
) -> None:
    """Create a dashboard token and print it (shown only this once; stored as SHA-256).

    Send it as `Authorization: Bearer dash_...` to the JSON views, e.g.
    /llm-monitor/summary.json?period=week.
    """
    create_and_print_token(get_db(ctx), "dashboard_tokens", org_name, label, as_json)


@dashboard_token.command("list")
@click.option("--org", "org_name", help="Only this organisation's tokens.")
@json_option
@click.pass_context
@handle_errors
def dashboard_token_list(ctx: click.Context, org_name: str | None, as_json: bool) -> None:
    """Dashboard tokens with their prefix, label, organisation, creation, last use and
    revocation (never the token)."""
    emit(list_tokens(get_db(ctx), "dashboard_tokens", org_name), as_json)


@dashboard_token.command("revoke")
@click.argument("id_or_token")
@click.pass_context
@handle_errors
def dashboard_token_revoke(ctx: click.Context, id_or_token: str) -> None:
    """Revoke a dashboard token, by its id (see `dashboard-token list`) or the full token.
    It stops working at once."""
    click.echo(revoke_token(get_db(ctx), "dashboard_tokens", id_or_token))


# Prices.


@cli.group()
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
    rows = list(
        get_db(ctx).query("""
        select provider, coalesce(response_model, model) as model, count(*) as requests,
          sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
          min(ts) as first_seen, max(ts) as last_seen
        from usage where priced = 0 group by 1, 2 order by requests desc
    """)
    )
    emit(rows, as_json, empty="every request seen so far is priced")


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
    db = get_db(ctx)
    book = load_price_book(db)
    fields = set(UsageRecord.model_fields)
    changed = 0
    updates = []
    for row in db.query("select * from usage where ts >= ?", [since.date().isoformat()]):
        priced = price_row(UsageRecord.model_validate({k: row[k] for k in fields}), book)
        if (priced["cost_usd"], priced["priced"]) != (row["cost_usd"], row["priced"]):
            changed += 1
        updates.append((priced["cost_usd"], priced["priced"], row["id"]))
    with db.atomic():
        db.conn.executemany("update usage set cost_usd = ?, priced = ? where id = ?", updates)
        rollups.rebuild(db, since.date().isoformat())
    click.echo(f"repriced {len(updates)} rows since {since.date()}; {changed} changed")


# Stats.


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
    where, params = "ts >= ?", [since]
    if org_name is not None:
        where += " and org_id = ?"
        params.append(find_org(db, org_name))
    rows = list(
        db.query(
            f"""
        select coalesce(response_model, model, '(none)') as model, count(*) as requests,
          sum(outcome != 'ok') as errors, sum(input_tokens) as input_tokens,
          sum(cached_input_tokens) as cached_tokens, sum(output_tokens) as output_tokens,
          sum(reasoning_tokens) as reasoning_tokens, round(sum(cost_usd), 6) as cost_usd,
          sum(priced = 0) as unpriced, round(avg(latency_ms), 1) as avg_latency_ms,
          round(avg(ttft_ms), 1) as avg_ttft_ms
        from usage where {where} group by 1 order by cost_usd desc nulls last, requests desc
    """,
            params,
        )
    )
    if as_json:
        emit(rows, True)
        return
    scope = f" for {org_name}" if org_name else ""
    click.echo(f"Last {period}{scope} (since {since}Z):\n")
    emit(rows, False, empty="no requests in this period")
    if rows:
        total = sum(r["cost_usd"] or 0 for r in rows)
        unpriced = sum(r["unpriced"] or 0 for r in rows)
        click.echo(
            f"\n{sum(r['requests'] for r in rows)} requests, ${total:.6f}"
            + (f" ({unpriced} requests without a price not included)" if unpriced else "")
        )


# Running and recovering.


DEFAULT_LISTENERS = {
    "openai": ("https://api.openai.com", 8080),
    "anthropic": ("https://api.anthropic.com", 8081),
    "gemini": ("https://generativelanguage.googleapis.com", 8082),
    "xai": ("https://api.x.ai", 8083),
}


def parse_listen(value: str) -> tuple[str, str, int]:
    """`NAME=UPSTREAM@PORT`, e.g. `groq=https://api.groq.com@8084`."""
    name, sep, rest = value.partition("=")
    upstream, at, port = rest.rpartition("@")
    if not sep or not at or not port.isdigit() or not name.strip() or not upstream:
        raise click.BadParameter(
            f"{value!r} is not NAME=UPSTREAM@PORT (e.g. groq=https://api.groq.com@8084)",
            param_hint="--listen",
        )
    try:
        server_spec.parse(upstream, default_scheme="https")
    except ValueError:
        raise click.BadParameter(
            f"{upstream!r}: an upstream is scheme://host[:port], without a path (put the "
            "path, e.g. /openai/v1, in the client's base URL)",
            param_hint="--listen",
        ) from None
    return name.strip().lower(), upstream, int(port)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="NAME=UPSTREAM@PORT",
    help="Add a listener (repeatable), e.g. groq=https://api.groq.com@8084; "
    "a NAME of the defaults replaces that default.",
)
@click.option(
    "--no-defaults", is_flag=True, help="Do not start the four default provider listeners."
)
@click.option(
    "--log-requests/--no-log-requests",
    default=True,
    show_default=True,
    help="One log line per request (never with credentials).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="mitmdump processes behind HAProxy (apt-get install haproxy), for more than one core.",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(1, 65535),
    default=DASHBOARD_PORT,
    show_default=True,
    help="Port of the dashboard (Datasette), on --host.",
)
@click.option("--no-dashboard", is_flag=True, help="Run the proxy without the dashboard.")
@click.argument("mitmdump_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def up(
    ctx: click.Context,
    host: str,
    listen: tuple[str, ...],
    no_defaults: bool,
    log_requests: bool,
    workers: int,
    dashboard_port: int,
    no_dashboard: bool,
    mitmdump_args: tuple[str, ...],
) -> None:
    """Run the proxy: mitmdump with the monitor addon, one listener per provider, and
    the dashboard next to it (http://127.0.0.1:8001).

    By default: OpenAI on 8080, Anthropic on 8081, Gemini on 8082 and xAI on 8083.
    Names other than openai, anthropic, gemini and xai are read as OpenAI-compatible.
    Arguments after `--` go to mitmdump, e.g. `llm-monitor up -- --set tcp_timeout=900`.
    """
    listeners = {} if no_defaults else dict(DEFAULT_LISTENERS)
    for value in listen:
        name, upstream, port = parse_listen(value)
        listeners[name] = (upstream, port)
    if not listeners:
        raise click.UsageError("no listener: give --listen or drop --no-defaults")
    ports = [port for _, port in listeners.values()]
    if len(set(ports)) != len(ports):
        raise click.BadParameter("two listeners on one port", param_hint="--listen")
    if not no_dashboard and dashboard_port in ports:
        raise click.BadParameter(
            f"port {dashboard_port} is also a listener's", param_hint="--dashboard-port"
        )
    mitmdump = find_mitmdump()
    db_path = ctx.obj["db_path"]
    get_db(ctx).conn.close()  # it exists, and its schema is current before any worker starts
    for name, (upstream, port) in listeners.items():
        click.echo(f"{name:>10}: http://{host}:{port} -> {upstream}", err=True)
    # mitmdump takes each option once: a second --set of it disables the addon silently.
    extra = ["--set", f"monitor_log_requests={str(log_requests).lower()}", *mitmdump_args]
    also = []
    if not no_dashboard:
        click.echo(f"{'dashboard':>10}: http://{host}:{dashboard_port}/", err=True)
        also.append(dashboard_command(db_path, host, dashboard_port))
    if workers > 1:
        click.echo(f"{workers} workers behind HAProxy", err=True)
        found = [workers_module.Listener(n, u, p) for n, (u, p) in listeners.items()]
        try:
            status = workers_module.run(
                mitmdump, monitor_script.__file__, db_path, host, found, workers, extra, also
            )
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        sys.exit(status)
    args = proxy_command(mitmdump, db_path, host, listeners)
    if not also:
        os.execv(mitmdump, [*args, *extra])
    sys.exit(workers_module.supervise([[*args, *extra], *also]))


def find_mitmdump() -> str:
    search_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    mitmdump = shutil.which("mitmdump", path=search_path)
    if mitmdump is None:
        raise click.ClickException("mitmdump not found: is llm-monitor installed with pip?")
    return mitmdump


def proxy_command(
    mitmdump: str, db_path: str, host: str, listeners: dict[str, tuple[str, int]]
) -> list[str]:
    """mitmdump with the monitor addon and one reverse-proxy listener per provider."""
    args = [mitmdump, "-s", monitor_script.__file__]
    for upstream, port in listeners.values():
        args += ["--mode", f"reverse:{upstream}@{host}:{port}"]
    names = ",".join(f"{port}:{name}" for name, (_, port) in listeners.items())
    return [*args, "--set", f"monitor_db={db_path}", "--set", f"monitor_providers={names}"]


def dashboard_command(db_path: str, host: str, port: int) -> list[str]:
    """`llm-monitor dashboard` as a child process of `up`."""
    cli_args = ["--db", db_path, "dashboard", "--host", host, "--port", str(port)]
    return [sys.executable, "-m", "llm_monitor", *cli_args]


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True)
@click.option(
    "--root", is_flag=True, help="Print a one-time login address for Datasette's root (an admin)."
)
@click.option(
    "--secret",
    envvar="DATASETTE_SECRET",
    help="Signs login cookies; give one to keep sessions across restarts (default: random).",
)
@click.pass_context
@handle_errors
def dashboard(ctx: click.Context, host: str, port: int, root: bool, secret: str | None) -> None:
    """Serve the dashboard alone: Datasette over the usage database with the views,
    charts, logins and JSON API configured in datasette_config/."""
    get_db(ctx).conn.close()  # it exists, and its schema is current
    serve_dashboard(ctx.obj["db_path"], host, port, root=root, secret=secret)


def serve_dashboard(db_path: str, host: str, port: int, *, root: bool, secret: str | None) -> None:
    datasette = make_datasette(db_path, secret=secret)
    asyncio.run(datasette.invoke_startup())
    if root:
        datasette._root_token = secrets.token_hex(32)  # what `datasette --root` does
        click.echo(
            f"admin (root) login: http://{host}:{port}/-/auth-token?token={datasette._root_token}",
            err=True,
        )
    click.echo(f"dashboard: http://{host}:{port}/", err=True)
    uvicorn.run(datasette.app(), host=host, port=port, log_level="warning")


# The demo.

DEMO_ORGS = {  # name: (login email, password, monitor token labels)
    "Acme Corp": ("acme@demo.example", "acme-demo-password", ("web-app", "batch-jobs")),
    "Globex": ("globex@demo.example", "globex-demo-password", ("support-bot",)),
}


@cli.command()
@click.option(
    "--file",
    "demo_db",
    default="llm-monitor-demo.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The demo's own database, made anew each run.",
)
@click.option("--requests", default=400, show_default=True, help="Requests sent through the proxy.")
@click.option(
    "--history-days",
    type=click.IntRange(0, 90),
    default=14,
    show_default=True,
    help="Days of generated history written before the live traffic, so charts have a shape.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--dashboard-port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True
)
@click.option("--no-serve", is_flag=True, help="Fill the database, then exit.")
@handle_errors
def demo(
    demo_db: str,
    requests: int,
    history_days: int,
    host: str,
    dashboard_port: int,
    no_serve: bool,
) -> None:
    """See every view filled, without a provider key.

    Starts a local stand-in provider (synthetic OpenAI, Anthropic and Gemini answers, JSON
    and streams), the proxy in front of it, and two organisations' varied traffic through
    it; then serves the dashboard with the proxy still running, until Ctrl-C.
    """
    for suffix in ("", "-wal", "-shm", ".spool.jsonl"):
        Path(demo_db + suffix).unlink(missing_ok=True)
    db = open_db(demo_db)
    upsert_prices(db, shipped_prices())
    tokens: list[str] = []
    org_ids = []
    with db.atomic():
        for name, (email, password, labels) in DEMO_ORGS.items():
            org = {"name": name, "email": email, "created_at": now_utc()}
            org_id = db["orgs"].insert({**org, "password_hash": hash_password(password)}).last_pk
            org_ids.append(org_id)
            tokens += [create_token(db, "monitor_tokens", org_id, label)[1] for label in labels]
    if history_days:
        end = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        report = synthetic.generate(
            db, org_ids=org_ids, days=history_days, rows=history_days * 1500, end=end
        )
        click.echo(f"history: {report.rows:,} generated rows over {history_days} days", err=True)
    db.conn.close()
    ports = workers_module.free_ports(3)
    with StandinProvider(host) as standin, tempfile.TemporaryDirectory() as tmp:
        listeners = {p: (standin.url, port) for p, port in zip(PROVIDERS, ports, strict=True)}
        log = Path(tmp) / "proxy.log"
        with log.open("wb") as out:
            command = proxy_command(find_mitmdump(), demo_db, host, listeners)
            proxy = subprocess.Popen(
                [*command, "--set", "monitor_log_requests=false"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_recording(proxy, log)
            endpoints = {name: f"http://{host}:{port}" for name, (_, port) in listeners.items()}
            traffic = send_traffic(endpoints, tokens, requests=requests)
            click.echo(
                f"traffic: {traffic.sent} requests through the proxy, {traffic.ok} answered, "
                f"{traffic.errors} errors",
                err=True,
            )
            if no_serve:
                return
            for name, (_, port) in listeners.items():
                click.echo(f"{name:>10}: http://{host}:{port} (stand-in provider)", err=True)
            click.echo(f"monitor token (Acme Corp): {tokens[0]}", err=True)
            for name, (email, password, _) in DEMO_ORGS.items():
                click.echo(f"log in as {name}: {email} / {password}", err=True)
            serve_dashboard(demo_db, host, dashboard_port, root=True, secret=None)
        finally:
            proxy.terminate()  # it writes what it has queued before it exits
            proxy.wait(30)


def wait_until_recording(proxy: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until the addon runs, requests get a 503: wait for its start line."""
    deadline = time.monotonic() + timeout
    while "llm-monitor: recording usage in" not in log.read_text(errors="replace"):
        if proxy.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"the proxy did not start:\n{log.read_text()}")
        time.sleep(0.05)


@cli.command("import-spool")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
@handle_errors
def import_spool(ctx: click.Context, file: str) -> None:
    """Load usage rows the proxy spooled to JSONL when the database could not be written."""
    db = get_db(ctx)
    book = load_price_book(db)
    rows = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = UsageRecord.model_validate_json(line)
            except ValidationError as e:
                raise click.ClickException(
                    f"{file}:{number}: not a usage row: {e.errors()[0]['msg']}"
                ) from None
            rows.append(price_row(record, book))
    write_rows(db, rows)
    done = Path(file).with_suffix(".imported")
    Path(file).rename(done)
    click.echo(f"imported {len(rows)} rows from {file} (renamed to {done.name})")
