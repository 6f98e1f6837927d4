"""One module per provider: how its requests and responses carry usage.

The proxy knows a listener's provider from its upstream host, or from the
`monitor_providers` option; a name without a module of its own is read as OpenAI-compatible.
"""

from __future__ import annotations

from llm_monitor.proxy.providers.anthropic import Anthropic
from llm_monitor.proxy.providers.base import READ_HEADERS, Provider, RequestInfo, StreamReader
from llm_monitor.proxy.providers.gemini import Gemini
from llm_monitor.proxy.providers.mistral import Mistral
from llm_monitor.proxy.providers.openai import OpenAI
from llm_monitor.proxy.providers.openrouter import OpenRouter
from llm_monitor.proxy.providers.xai import XAI

__all__ = [
    "KNOWN_HOSTS",
    "READ_HEADERS",
    "Provider",
    "RequestInfo",
    "StreamReader",
    "provider_named",
]

KNOWN_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
    "api.x.ai": "xai",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "api.deepseek.com": "deepseek",
    "openrouter.ai": "openrouter",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
}

_PARSERS: dict[str, Provider] = {
    "openai": OpenAI(),
    "anthropic": Anthropic(),
    "gemini": Gemini(),
    "xai": XAI(),
    "mistral": Mistral(),
    "openrouter": OpenRouter(),
}


def provider_named(name: str) -> Provider:
    """The parser for a provider name; OpenAI-compatible for names without their own."""
    return _PARSERS.get(name, _PARSERS["openai"])
