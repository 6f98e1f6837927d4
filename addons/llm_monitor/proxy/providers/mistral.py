"""Mistral's API (api.mistral.ai): OpenAI-compatible, with one quirk that lives here.

- It rejects unknown request fields, `stream_options` included (422 `extra_forbidden`),
  and puts usage on a stream's final chunk unasked: the proxy never injects
  `stream_options.include_usage` for it.
- Audio sent to a chat model (voxtral) is billed per audio hour beside the tokens, and the
  usage says how much: `prompt_audio_seconds`. No price of ours counts seconds, so such a
  row is unpriced (`uncounted_unit:input_audio_hours`), never priced on its tokens alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mitmproxy import http

from llm_monitor.proxy.providers.base import RequestInfo
from llm_monitor.proxy.providers.openai import OpenAI
from llm_monitor.usage import TokenUsage


class Mistral(OpenAI):
    name = "mistral"

    def inspect_request(
        self, request: http.Request, headers: Mapping[str, str], *, inject_usage: bool
    ) -> RequestInfo:
        return super().inspect_request(request, headers, inject_usage=False)

    def read_usage(self, usage: dict[str, Any], holder: dict[str, Any]) -> TokenUsage:
        result = super().read_usage(usage, holder)
        seconds = usage.get("prompt_audio_seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            return dataclasses.replace(result, uncounted_units="input_audio_hours")
        return result
