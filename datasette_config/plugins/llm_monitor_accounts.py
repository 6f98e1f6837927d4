"""Sign-up, the account pages (budgets among them) and the REST API. The hooks only; what they do is
`llm_monitor.dashboard.pages` and `llm_monitor.dashboard.api`."""

from __future__ import annotations

from typing import Any

from datasette import hookimpl
from datasette.app import Datasette
from datasette.utils.asgi import Request

from llm_monitor.dashboard import api, budgets, pages


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [*pages.register_routes(), *budgets.register_routes(), *api.register_routes()]


@hookimpl
def extra_template_vars(template: str, request: Request, datasette: Datasette) -> Any:
    return budgets.extra_template_vars(template, request, datasette)
