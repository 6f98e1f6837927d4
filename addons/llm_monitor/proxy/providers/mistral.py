"""Mistral's API (api.mistral.ai): OpenAI-compatible, with one quirk that lives here.

- It rejects unknown request fields, `stream_options` included (422 `extra_forbidden`),
  and puts usage on a stream's final chunk unasked: the proxy never injects
  `stream_options.include_usage` for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy import http

from llm_monitor.proxy.providers.base import RequestInfo
from llm_monitor.proxy.providers.openai import OpenAI


class Mistral(OpenAI):
    name = "mistral"

    def inspect_request(
        self, request: http.Request, headers: Mapping[str, str], *, inject_usage: bool
    ) -> RequestInfo:
        return super().inspect_request(request, headers, inject_usage=False)
