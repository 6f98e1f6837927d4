"""The dashboard's pages: overview, designed views, their scripts and styles, a SQL function
for model families and parameter checks. The hooks only; what they do is
`llm_monitor.dashboard.views`."""

from __future__ import annotations

import sqlite3
from typing import Any

from datasette import hookimpl
from datasette.app import Datasette
from datasette.utils.asgi import Request

from llm_monitor.dashboard import views


@hookimpl
def prepare_connection(conn: sqlite3.Connection) -> None:
    views.prepare_connection(conn)


@hookimpl
def prepare_jinja2_environment(env: Any) -> None:
    views.prepare_jinja2_environment(env)


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return views.register_routes()


@hookimpl
def extra_css_urls(template: str) -> list[str]:
    return views.extra_css_urls(template)


@hookimpl
def extra_js_urls(template: str) -> list[dict[str, Any]]:
    return views.extra_js_urls(template)


@hookimpl
def extra_template_vars(template: str, request: Request, datasette: Datasette) -> Any:
    return views.extra_template_vars(template, request, datasette)


@hookimpl
def asgi_wrapper(datasette: Datasette) -> Any:
    return views.asgi_wrapper(datasette)
