"""Making values from clients and providers inert before they reach a log, a terminal or
the database: escaped control characters, redacted credentials, checked names and ids."""

from __future__ import annotations

import logging
import re

from llm_monitor.errors import Invalid

# Key-like strings a provider may quote back in an error message, or a client may put in
# a URL: OpenAI/Anthropic/xAI/Groq keys, Google API keys, bearer values, our own tokens.
_SECRETS = re.compile(
    r"(?i)\b(?:sk|xai|gsk|mon|dash)[-_][A-Za-z0-9_\-]{8,}"
    r"|\bAIza[0-9A-Za-z_\-]{8,}"
    r"|(?<=bearer )[^\s\"',;]+"
)
# Query parameters that carry credentials; any x-monitor-* one is ours.
CREDENTIAL_PARAMS = frozenset({"key", "api-key", "api_key", "access_token", "token"})
_CREDENTIAL_QUERY = re.compile(
    r"(?i)([?&;](?:key|api[-_]key|access[-_]token|token|x[-_]monitor[-_][^=&\s]*)=)[^&\s#'\"]*"
)
REDACTED = "[redacted]"


def is_our_name(name: str) -> bool:
    """`X-Monitor-*` in any case, and the `X_Monitor_*` spelling: headers and query
    parameters that are ours and never go to the provider."""
    return name.lower().replace("_", "-").startswith("x-monitor-")


def is_credential_param(name: str) -> bool:
    return name.lower() in CREDENTIAL_PARAMS or is_our_name(name)


def redact(text: str) -> str:
    """`text` with key-like strings and credential query values replaced."""
    return _CREDENTIAL_QUERY.sub(r"\1" + REDACTED, _SECRETS.sub(REDACTED, text))


def printable(value: object) -> str:
    """`value` as text with every non-printable character escaped (`\\x1b`, `\\n`), so
    that it can neither forge a line nor drive a terminal."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def check_name(value: str, what: str, max_length: int = 100) -> str:
    """A name given on the command line: stripped, printable, not empty, not too long."""
    name = value.strip()
    if not name or len(name) > max_length or not name.isprintable():
        raise Invalid(f"{what} must be 1 to {max_length} printable characters")
    return name


def ascii_int(value: str) -> int | None:
    """The int written with ASCII digits only (not Arabic-Indic ones), else None."""
    return int(value) if value.isascii() and value.isdigit() else None


# mitmproxy says so for every streamed body; the proxy streams every response.
_NOISE = ("Streaming response from ", "Streaming request to ")


class InertLogFilter(logging.Filter):
    """On a handler: every record leaves as one line, credentials redacted (and
    mitmproxy's line per streamed body is dropped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_NOISE):
            return False
        clean = printable(redact(message))
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Add the filter to every handler of the root logger (what reaches the terminal) and
    to mitmproxy's connection logger, whose lines quote request lines and heads (a filter
    on a logger covers that logger's records in every handler); once each."""
    holders: list[logging.Filterer] = [logging.getLogger("mitmproxy.proxy.server")]
    holders += logging.getLogger().handlers
    for holder in holders:
        if not any(isinstance(f, InertLogFilter) for f in holder.filters):
            holder.addFilter(InertLogFilter())
