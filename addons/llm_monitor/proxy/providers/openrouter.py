"""OpenRouter (openrouter.ai/api/v1): OpenAI-compatible, with one quirk that lives here.

- Every response states what it was charged: `usage.cost`, in USD (credits). That is the
  row's cost (`cost_basis` = `provider_reported`), whatever the route or the upstream
  provider's own price.
"""

from __future__ import annotations

from typing import Any

from llm_monitor.proxy.providers.openai import OpenAI


class OpenRouter(OpenAI):
    name = "openrouter"

    def reported_cost(self, usage: dict[str, Any]) -> float | None:
        """`usage.cost` when it is a plain non-negative number."""
        cost = usage.get("cost")
        if isinstance(cost, bool) or not isinstance(cost, int | float):
            return None
        return float(cost) if 0 <= cost < 1e9 else None
