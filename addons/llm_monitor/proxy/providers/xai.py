"""xAI (api.x.ai/v1): OpenAI-compatible (its count of reasoning tokens outside
`completion_tokens` is read in the OpenAI module), with one quirk that lives here.

- Every response states what it was charged: `usage.cost_in_usd_ticks`, in ticks of
  10^-10 USD, after discounts (cached prompts) and including server-side tool calls (web
  and X search, code execution, collections search), which are billed per call at rates of
  their own. That is the row's cost (`cost_basis` = `provider_reported`); without it, the
  price table's.
"""

from __future__ import annotations

from typing import Any

from llm_monitor.proxy.providers.openai import OpenAI

TICKS_PER_USD = 10**10


class XAI(OpenAI):
    name = "xai"

    def reported_cost(self, usage: dict[str, Any]) -> float | None:
        """`usage.cost_in_usd_ticks` in USD when it is a plain non-negative integer."""
        ticks = usage.get("cost_in_usd_ticks")
        if isinstance(ticks, bool) or not isinstance(ticks, int) or not 0 <= ticks < 10**19:
            return None
        return ticks / TICKS_PER_USD
