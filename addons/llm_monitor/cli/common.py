"""What every command group shares: the database option's value, one-line errors, output
as a table or JSON, and reading a password."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlite_utils import Database
from tabulate import tabulate

from llm_monitor.accounts.passwords import check_strength, hash_password
from llm_monitor.errors import DomainError, Invalid
from llm_monitor.inert import printable
from llm_monitor.money.prices import PriceFileError
from llm_monitor.store.database import open_db

CLI_BUSY_TIMEOUT_MS = 5000
json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON.")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one-line errors instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            raise click.ClickException(f"database error: {e}") from None
        except Invalid as e:
            raise click.UsageError(str(e)) from None
        except (DomainError, PriceFileError) as e:
            raise click.ClickException(printable(str(e))) from None
        except OSError as e:
            raise click.ClickException(f"{e.filename or 'file'}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise click.ClickException("input is not UTF-8 text") from None
        except (OverflowError, RecursionError, ValueError) as e:
            raise click.ClickException(f"bad input: {e}") from None

    return wrapper


def _set_db(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["db_path"] = value


def accept_db_everywhere(group: click.Group) -> None:
    """Give every command under `group` a `--db` of its own, so that `llm-monitor stats
    --db x.db` works as `llm-monitor --db x.db stats` does (the later one wins)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_db_everywhere(command)
        if not any("--db" in getattr(p, "opts", ()) for p in command.params):
            command.params.append(
                click.Option(
                    ["--db"],
                    type=click.Path(dir_okay=False),
                    expose_value=False,
                    is_eager=True,
                    callback=_set_db,
                    help="SQLite database file (as `llm-monitor --db`).",
                )
            )


def get_db(ctx: click.Context, *, create: bool = False) -> Database:
    """The database named by --db (migrated on open); it must exist unless `create`, and
    its directory must exist."""
    path = Path(ctx.obj["db_path"])
    if not path.parent.is_dir():
        raise click.ClickException(f"no directory {printable(path.parent)} for the database")
    if not create and not path.exists():
        raise click.ClickException(f"no database at {path}: run `llm-monitor init` first")
    # A person at a terminal can wait for the recorder's or the dashboard's write to end.
    return open_db(path, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS)


def emit(rows: list[dict[str, Any]], as_json: bool, empty: str = "(none)") -> None:
    """Rows as JSON (which escapes control characters itself) or as a table whose text
    cells are escaped: names and models come from clients and providers."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    elif rows:
        safe = [{k: printable(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]
        click.echo(tabulate(safe, headers="keys", floatfmt=".6g"))
    else:
        click.echo(empty)


def prompt_password_hash() -> str:
    """A new password, prompted twice at a terminal; otherwise the first line of standard
    input (a second line, if given, must repeat it). Returned as its scrypt hash."""
    stdin = sys.stdin
    if stdin.isatty():
        password = click.prompt(
            "Dashboard password", hide_input=True, confirmation_prompt=True, err=True
        )
    else:  # getpass would warn that it cannot hide the input, and read the same line
        password = stdin.readline().rstrip("\r\n")
        again = stdin.readline()
        if again and again.rstrip("\r\n") != password:
            raise click.BadParameter("the two passwords differ", param_hint="password")
    try:
        check_strength(password)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="password") from None
    return hash_password(password)
