"""The dashboard's pages: the landing page's numbers, default charts and parameter checks.
The hooks only; what they do is `llm_monitor.dashboard.views`."""

from __future__ import annotations

from typing import Any

from datasette import hookimpl
from datasette.app import Datasette
from datasette.utils.asgi import Request

from llm_monitor.dashboard import views


@hookimpl
def extra_template_vars(template: str, request: Request, datasette: Datasette) -> Any:
    return views.extra_template_vars(template, request, datasette)


@hookimpl
def extra_body_script(
    template: str, database: str | None, request: Request, datasette: Datasette
) -> Any:
    return views.extra_body_script(template, database, request, datasette)


@hookimpl
def asgi_wrapper(datasette: Datasette) -> Any:
    return views.asgi_wrapper(datasette)
