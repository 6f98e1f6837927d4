"""Logins, bearer tokens and who may see what. The hooks only; what they do is
`llm_monitor.dashboard.auth`."""

from __future__ import annotations

from typing import Any

from datasette import hookimpl
from datasette.app import Datasette
from datasette.utils.asgi import Request, Response

from llm_monitor.dashboard import auth


@hookimpl
def permission_allowed(
    datasette: Datasette, actor: dict[str, Any] | None, action: str, resource: Any
) -> bool | None:
    return auth.permission_allowed(datasette, actor, action, resource)


@hookimpl
def actor_from_request(datasette: Datasette, request: Request) -> Any:
    return auth.actor_from_request(datasette, request)


@hookimpl
def forbidden(request: Request, message: str) -> Response | None:
    return auth.forbidden(request, message)


@hookimpl
def asgi_wrapper(datasette: Datasette) -> Any:
    return auth.asgi_wrapper(datasette)


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return auth.register_routes()
