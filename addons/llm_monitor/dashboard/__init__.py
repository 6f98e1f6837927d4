"""The dashboard: Datasette over the usage database, configured from `datasette_config/`.

`make_datasette` is what `llm-monitor dashboard` serves and what the tests drive: the usage
database always under the name `llm-monitor` (the metadata's canned queries are keyed by
it), with our plugins, templates and metadata. The plain `datasette` command line in the
README does the same for a database file named `llm-monitor.db`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # imported when a dashboard is made: the CLI starts faster without it
    from datasette.app import Datasette
    from datasette.database import Database

DATABASE = "llm-monitor"
# `datasette_config/` at the top of the repository, inside the package as package data.
CONFIG_DIR = Path(str(files("llm_monitor") / "shipped-data" / "datasette_config"))
DEFAULT_PORT = 8001


def is_admin(actor: dict[str, Any] | None) -> bool:
    """Datasette's root, or an organisation marked admin: may see every organisation."""
    return bool(actor) and (actor.get("id") == "root" or actor.get("admin") is True)


def usage_db(datasette: Datasette) -> Database:
    """The usage database: served as `llm-monitor`, or the only one given to `datasette`."""
    return datasette.databases.get(DATABASE) or datasette.get_database()


def metadata() -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / "metadata.yml").read_text())


def make_datasette(
    db_path: str | Path,
    *,
    secret: str | None = None,
    allow_signup: bool = False,
    listeners: dict[str, int] | None = None,
    https_listeners: bool = False,
    notify_urls: bool = False,
) -> Datasette:
    """A Datasette serving the usage database as `llm-monitor`, ready for `.app()`. With
    `allow_signup`, /-/signup creates organisations; `listeners` (provider name -> port)
    are what the token pages' SDK snippets point at, over HTTPS with `https_listeners`
    (`up --tls-cert`); with `notify_urls`, organisations' admins add, remove and test
    their notification URLs on the budgets page (the server then sends where they say)."""
    from datasette.app import Datasette
    from datasette.database import Database

    config = metadata()
    ours = config.setdefault("plugins", {}).setdefault("llm-monitor", {})
    ours["allow_signup"] = allow_signup
    ours["notify_urls"] = notify_urls
    if listeners:
        ours["listeners"] = listeners
    ours["listener_scheme"] = "https" if https_listeners else "http"
    datasette = Datasette(
        [],
        metadata=config,
        plugins_dir=str(CONFIG_DIR / "plugins"),
        template_dir=str(CONFIG_DIR / "templates"),
        secret=secret,
    )
    datasette.add_database(Database(datasette, path=str(db_path), is_mutable=True), DATABASE)
    return datasette
