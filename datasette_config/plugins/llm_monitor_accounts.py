"""Sign-up, the account pages and the REST API. The hooks only; what they do is
`llm_monitor.dashboard.pages` and `llm_monitor.dashboard.api`."""

from __future__ import annotations

from typing import Any

from datasette import hookimpl

from llm_monitor.dashboard import api, pages


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [*pages.register_routes(), *api.register_routes()]
