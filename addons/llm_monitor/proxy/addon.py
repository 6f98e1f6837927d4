"""The Monitor addon: check the monitor token, pass everything on, record what it used.

Loaded by mitmdump through the script `addons/monitor.py`.
Nothing here blocks the event loop: tokens are checked against an in-memory index, stream
chunks are passed on as they arrive (read on the side), and rows go to the recorder's queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from mitmproxy import addonmanager, connection, ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from llm_monitor.accounts.tokens import TokenIndex, TokenOwner, display_prefix
from llm_monitor.controls.alerts import DEFAULT_K, Watcher, parse_k
from llm_monitor.controls.gate import Gate, Hold, Refusal
from llm_monitor.controls.loops import body_digest
from llm_monitor.inert import (
    install_log_filter,
    is_credential_param,
    is_our_name,
    printable,
    redact,
)
from llm_monitor.proxy import limits, logs, metrics
from llm_monitor.proxy.budget import json_too_complex
from llm_monitor.proxy.content_coding import TooLarge, decode_body, is_supported
from llm_monitor.proxy.limits import GUARD_KEY, Answered, BodyLimit
from llm_monitor.proxy.metrics import Metrics
from llm_monitor.proxy.providers import (
    KNOWN_HOSTS,
    READ_HEADERS,
    Provider,
    RequestInfo,
    provider_named,
)
from llm_monitor.proxy.reading import BodyCollector, MiB, StreamTap, whole_body_decode_limit
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import Recorder, spool_path_for
from llm_monitor.usage import (
    TokenUsage,
    UsageRecord,
    UsageRow,
    billed_model,
    blank_row,
    utc_timestamp,
)

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Monitor-Token"
USER_HEADER = "X-Monitor-User"
TAGS_HEADER = "X-Monitor-Tags"
MAX_USER_LENGTH = 256
MAX_TAGS_LENGTH = 1024
MAX_TAGS = 20
MAX_TAG_VALUE_LENGTH = 128
_TAG = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_METADATA_KEY = "llm_monitor"
_TOKEN_KEY, _USER_KEY, _TAGS_KEY = (
    h.lower().encode() for h in (TOKEN_HEADER, USER_HEADER, TAGS_HEADER)
)

__all__ = ["Monitor", "StreamTap", "parse_tags", "stored_path"]


class BadMonitorHeader(ValueError):
    pass


def parse_tags(value: str | None) -> str | None:
    """`k=v,k=v` as a JSON object (keys sorted), or BadMonitorHeader saying what is wrong."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TAGS_LENGTH:
        raise BadMonitorHeader(f"{TAGS_HEADER} is longer than {MAX_TAGS_LENGTH} characters")
    items = value.split(",")
    if len(items) > MAX_TAGS:
        raise BadMonitorHeader(f"{TAGS_HEADER} has {len(items)} tags; at most {MAX_TAGS}")
    tags: dict[str, str] = {}
    for item in items:
        key, sep, val = (part.strip() for part in item.partition("="))
        if not sep or not _TAG.match(key) or not val or not val.isprintable() or ";" in val:
            raise BadMonitorHeader(
                f"{TAGS_HEADER} must be key=value pairs separated by commas "
                f"(keys of letters, digits and _.:/-); got {printable(item.strip()[:40])!r}"
            )
        if len(val) > MAX_TAG_VALUE_LENGTH:
            raise BadMonitorHeader(
                f"{TAGS_HEADER}: the value of {key!r} is longer than "
                f"{MAX_TAG_VALUE_LENGTH} characters"
            )
        if key in tags:
            raise BadMonitorHeader(f"{TAGS_HEADER}: {key!r} is given twice")
        tags[key] = val
    return json.dumps(dict(sorted(tags.items())), ensure_ascii=False)


def parse_user(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > MAX_USER_LENGTH or not value.isprintable():
        raise BadMonitorHeader(
            f"{USER_HEADER} must be printable and at most {MAX_USER_LENGTH} characters"
        )
    return value.strip()


@dataclass(frozen=True, slots=True)
class Listener:
    """What `monitor_providers` says about one listener."""

    provider: str
    inject_usage: bool = True


def parse_listeners(values: Sequence[str]) -> dict[int, Listener]:
    """`monitor_providers`: PORT:NAME[:noinject], repeated or separated by commas."""
    listeners: dict[int, Listener] = {}
    for value in values:
        for item in filter(None, (p.strip() for p in value.split(","))):
            port, _, rest = item.partition(":")
            name, _, flag = rest.partition(":")
            if (
                not (port.isascii() and port.isdigit())
                or not re.fullmatch(r"[a-z0-9_.-]+", name)
                or flag not in ("", "noinject")
            ):
                raise exceptions.OptionsError(
                    f"monitor_providers: {item!r} is not PORT:NAME or PORT:NAME:noinject "
                    "(e.g. 8084:groq)"
                )
            listeners[int(port)] = Listener(name, inject_usage=flag != "noinject")
    return listeners


def stored_path(request: http.Request) -> str:
    """The request path as stored and logged: credential and `x-monitor-*` query
    parameters removed."""
    path, _, query = request.path.partition("?")
    if not query:
        return path
    kept = [(k, v) for k, v in request.query.items(multi=True) if not is_credential_param(k)]
    return f"{path}?{urlencode(kept)}" if kept else path


# `x-monitor-` as a lower-case header name may spell it (`_` for either `-`).
_OUR_PREFIXES = tuple(f"x{a}monitor{b}".encode() for a in "-_" for b in "-_")
_READ_NAMES = frozenset(name.encode() for name in READ_HEADERS)


def take_our_headers(request: http.Request) -> tuple[dict[bytes, str], dict[str, str], int]:
    """Remove every `x-monitor-*` header (`x_monitor_*` too) and query parameter: they are
    ours, never the provider's. Returns our headers (lower-case name: value), the headers
    that go on and are read (`READ_HEADERS`, in the same form: repeated ones joined by
    ", " as mitmproxy joins them) and the size of the head that goes on.

    One pass over the raw header fields: this runs for every request, and each of
    mitmproxy's case-insensitive header look-ups walks them all again.
    """
    ours: dict[bytes, str] = {}
    forwarded: dict[str, str] = {}
    kept = []
    size = 0
    for header in request.headers.fields:
        raw_name, raw_value = header
        name = raw_name.lower()
        if name.startswith(_OUR_PREFIXES):
            value = raw_value.decode("utf-8", "surrogateescape")
            ours[name] = f"{ours[name]}, {value}" if name in ours else value
        else:
            kept.append(header)  # mitmproxy's own pair: no new one to live with the flow
            size += len(name) + len(raw_value) + 4
            if name in _READ_NAMES:
                value = raw_value.decode("utf-8", "surrogateescape")
                key = name.decode("latin-1")
                forwarded[key] = f"{forwarded[key]}, {value}" if key in forwarded else value
    if ours:
        request.headers.fields = tuple(kept)
    path = request.data.path
    if b"?" in path and any(is_our_name(k) for k in request.query):
        query = request.query
        for name in {k for k in query if is_our_name(k)}:
            del query[name]
        path = request.data.path
    return ours, forwarded, len(request.data.method) + len(path) + 12 + size


def body_limit(max_request: int, too_large: Callable[[http.HTTPFlow], http.Response]) -> BodyLimit:
    """At most `max_request` bytes of a request's body are kept; twice that are read and
    dropped after an answer, before the client is cut off."""
    return BodyLimit(limit=max_request, drain=2 * max_request, too_large=too_large)


def is_json(content_type: str) -> bool:
    """application/json or a +json type; not NDJSON/JSON Lines, which stream."""
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


# A JSON answer up to this size (as its Content-Length declares it) is kept whole by
# mitmproxy and read once complete: passing it on chunk by chunk through a tap would cost
# about a fifth of the proxy's throughput (`scripts/benchmark.py`) for nothing at this size.
# A larger or undeclared one passes on as it arrives, read on the side.
MAX_KEPT_WHOLE = 256 * 1024


def kept_whole(response: http.Response, declared: str) -> bool:
    """Whether a JSON body (or an error) may be kept whole rather than streamed: its
    declared length is small, and mitmproxy has not chosen to stream it already."""
    if response.stream:
        return False
    return declared.isascii() and declared.isdigit() and int(declared) <= MAX_KEPT_WHOLE


_BODY_HEADERS = frozenset((b"content-encoding", b"content-type", b"content-length"))


def response_head(headers: http.Headers) -> tuple[str, str, str, str | None]:
    """Content-Encoding, Content-Type and Content-Length ('' when absent; repeated ones
    joined by ", " as mitmproxy joins them) and the provider's request id, in one pass over
    the raw fields: each of mitmproxy's case-insensitive look-ups walks them all, a
    provider answers with twenty or so, and this runs per response.

    The request id is `x-request-id` (OpenAI), else `request-id` (Anthropic)."""
    found: dict[bytes, str] = {}
    openai_id = anthropic_id = None
    for raw_name, raw_value in headers.fields:
        name = raw_name.lower()
        if name in _BODY_HEADERS:
            value = raw_value.decode("utf-8", "surrogateescape")
            found[name] = f"{found[name]}, {value}" if name in found else value
        elif name == b"x-request-id":
            openai_id = openai_id or raw_value
        elif name == b"request-id":
            anthropic_id = anthropic_id or raw_value
    get = found.get
    request_id = openai_id or anthropic_id
    return (
        get(b"content-encoding", ""),
        get(b"content-type", ""),
        get(b"content-length", ""),
        request_id.decode("utf-8", "surrogateescape") if request_id else None,
    )


# What APIs answer to a body with a field they do not take (OpenAI and Groq 400; vLLM,
# Together and Mistral, FastAPI's 422).
BODY_REFUSED = frozenset({400, 422})


def refused_changed_body(state: FlowState, response: http.Response) -> bool:
    """The provider refused a body the proxy changed as invalid: to be sent again
    unchanged. Other answers (a bad key's 401, a rate limit's 429) are not about the body
    and reach the client as they are, sent once."""
    return state.info.unchanged_body is not None and response.status_code in BODY_REFUSED


@dataclass(slots=True)
class FlowState:
    """What the addon keeps about one flow between its hooks."""

    provider_name: str
    provider: Provider
    inject_usage: bool
    owner: TokenOwner
    user: str | None
    tags: str | None
    info: RequestInfo = field(default_factory=RequestInfo)
    tap: StreamTap | None = None
    # The JSON answer is kept whole by mitmproxy and read in `response`: its
    # Content-Encoding ('' for none); None when it is not.
    whole: str | None = None
    # The request's headers as forwarded (lower-case names; see `take_our_headers`).
    request_headers: dict[str, str] = field(default_factory=dict)
    forwarded: bool = False  # the whole request was read and is going to the provider
    unread: str | None = None  # why the proxy did not read a body it would have read
    recorded: bool = False
    key_hint: str | None = None
    accept_encoding: str | None = None  # the client's, when the proxy changed it
    hold: Hold | None = None  # what hard budgets and rate limits reserved for it
    token: str | None = None  # the monitor token, for a refusal's log line (its prefix)
    # The provider's request id, read with the head of the response (`head_read`).
    request_id: str | None = None
    head_read: bool = False

    @property
    def stream(self) -> StreamTap | None:
        """The tap of a streamed answer (SSE, Gemini's JSON array), else None."""
        tap = self.tap
        return tap if tap is not None and not isinstance(tap.reader, BodyCollector) else None


_BLANK_ROW = blank_row()

# Seconds after its last request that a keep-alive connection counts as idle when draining.
DRAIN_IDLE = 1.0


class Monitor:
    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.tokens: TokenIndex | None = None
        self.gate: Gate | None = None
        self.watcher: Watcher | None = None
        self.anomaly_factor = DEFAULT_K  # monitor_anomaly_factor
        self.listeners: dict[int, Listener] = {}
        self._inflight: dict[str, http.HTTPFlow] = {}
        self._running = False
        self._listener_by_spec: dict[str, Listener] = {}
        self.inject_usage = True
        self.log_requests = False
        self.max_request = 32 * MiB
        self.body_limit = body_limit(self.max_request, self._too_large_answer)
        self.max_read = 16 * MiB
        self.max_header = 64 * 1024
        self.key_hints = True
        self.metrics: Metrics | None = None
        self._refusal_log = logs.Throttle()
        self._metrics_server: object | None = None
        self._sampler: asyncio.Task | None = None
        self.draining = False
        # Open client connections: when each last finished a request (or connected).
        self._last_active: dict[str, float] = {}

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option("monitor_db", str, "llm-monitor.db", "SQLite file to record usage in.")
        loader.add_option(
            "monitor_inject_usage",
            bool,
            True,
            "Ask for usage in chat/completions streams that did not (stream_options."
            "include_usage) and take the extra usage chunk out of what the client gets.",
        )
        loader.add_option(
            "monitor_providers",
            Sequence[str],
            [],
            "PORT:NAME pairs naming the provider behind a listener, e.g. 8084:groq,8085:vllm; "
            "needed for upstreams that are not a known provider host. PORT:NAME:noinject "
            "turns usage injection off for that listener (for APIs without include_usage).",
        )
        loader.add_option(
            "monitor_log_requests",
            bool,
            False,
            "Log one line per request (provider, path, model, status, tokens, latency; never "
            "credentials). mitmdump's own flow lines are off, since they would print keys.",
        )
        loader.add_option(
            "monitor_flush_ms",
            int,
            200,
            "Milliseconds the recorder gathers rows into one transaction before writing them.",
        )
        loader.add_option(
            "monitor_key_hints",
            bool,
            True,
            "Record which provider key a request used, in the provider's own display form "
            "(OpenAI sk-...abcd, Anthropic's partial hint), for `llm-monitor billing reconcile`.",
        )
        loader.add_option(
            "monitor_token_refresh_ms",
            int,
            1000,
            "Milliseconds between reloads of the monitor tokens (a revoked token stops within it).",
        )
        loader.add_option(
            "monitor_max_request_mb",
            int,
            32,
            "Largest request body, as sent, in MB: a larger one gets 413 in the provider's "
            "shape and is never buffered.",
        )
        loader.add_option(
            "monitor_max_header_kb",
            int,
            64,
            "Largest request line and headers, in KB: a larger head gets 431.",
        )
        loader.add_option(
            "monitor_max_read_mb",
            int,
            16,
            "Most decoded MB of one request body, response body or stream event the proxy "
            "reads for model and usage; a larger one passes on unread, and its row says why.",
        )
        loader.add_option(
            "monitor_listen_backlog",
            int,
            4096,
            "Length of each listener's queue of connections not yet accepted (asyncio's "
            "default is 100; Linux caps it at net.core.somaxconn).",
        )
        loader.add_option(
            "monitor_metrics_port",
            int,
            0,
            "Serve Prometheus metrics at http://HOST:PORT/metrics (0: off; HOST is "
            "monitor_metrics_host).",
        )
        loader.add_option(
            "monitor_metrics_host", str, "127.0.0.1", "Address of the metrics endpoint."
        )
        loader.add_option(
            "monitor_drain_seconds",
            int,
            30,
            "On SIGTERM (`llm-monitor proxy`): stop accepting connections and give requests "
            "and streams in flight this many seconds to finish before shutting down.",
        )
        loader.add_option(
            "monitor_log_json", bool, False, "Log lines as JSON objects, one per line."
        )
        loader.add_option(
            "monitor_default_max_output",
            int,
            32768,
            "Output tokens a hard budget reserves for a request that sets no max_tokens, "
            "when its model's output limit is not in pricing/output_limits.json (the price "
            "library's context window instead, when that is smaller).",
        )
        loader.add_option(
            "monitor_reclaim_seconds",
            int,
            900,
            "Seconds after which a worker not heard of (killed, or stalled) loses the unused "
            "part of its budget and rate-limit slices to the others; longer than the longest "
            "request. A worker spends from a slice for a third of it (at most 60 s) after "
            "its last renewal. Give every worker sharing a database the same value.",
        )
        loader.add_option(
            "monitor_anomaly_factor",
            str,
            "5",
            "Anomaly alerts: an hour's spend, or a minute's requests, of a token, user or "
            "model above this many times its median for the same hour of the week (a number "
            "above 1, e.g. 5 or 7.5).",
        )
        loader.add_option(
            "monitor_alerts_seconds",
            int,
            15,
            "Seconds between evaluations of budget thresholds and anomalies, and deliveries "
            "of their alerts (on a thread of its own); 0 turns it off in this process.",
        )
        limits.install()
        install_log_filter()

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # A rejected request must not even open a connection to the provider.
            ctx.options.connection_strategy = "lazy"
        if "monitor_providers" in updated:
            self.listeners = parse_listeners(ctx.options.monitor_providers)
            self._listener_by_spec.clear()
        # Read per request: kept as attributes, since option look-ups are not free.
        self.inject_usage = ctx.options.monitor_inject_usage
        self.log_requests = ctx.options.monitor_log_requests
        self.key_hints = ctx.options.monitor_key_hints
        if "flow_detail" in updated and ctx.options.flow_detail > 0:
            # mitmdump's flow lines print URLs (Gemini's ?key=) and, above 1, headers
            # (Authorization): keys must never reach a log. The addon logs its own line.
            ctx.options.flow_detail = 0
        refresh_ms = ctx.options.monitor_token_refresh_ms
        if "monitor_token_refresh_ms" in updated and not 10 <= refresh_ms <= 60_000:
            raise exceptions.OptionsError("monitor_token_refresh_ms must be from 10 to 60000")
        if "monitor_flush_ms" in updated and not 1 <= ctx.options.monitor_flush_ms <= 10_000:
            raise exceptions.OptionsError("monitor_flush_ms must be from 1 to 10000")
        for name, low, high in (
            ("monitor_max_request_mb", 1, 4096),
            ("monitor_max_header_kb", 1, 1024),
            ("monitor_max_read_mb", 1, 1024),
            ("monitor_listen_backlog", 1, 65535),
            ("monitor_metrics_port", 0, 65535),
            ("monitor_drain_seconds", 0, 3600),
            ("monitor_default_max_output", 1, 10_000_000),
            ("monitor_reclaim_seconds", 3, 86_400),
            ("monitor_alerts_seconds", 0, 3600),
        ):
            if name in updated and not low <= getattr(ctx.options, name) <= high:
                raise exceptions.OptionsError(f"{name} must be from {low} to {high}")
        self.max_request = ctx.options.monitor_max_request_mb * MiB
        self.body_limit = body_limit(self.max_request, self._too_large_answer)
        self.max_read = ctx.options.monitor_max_read_mb * MiB
        self.max_header = ctx.options.monitor_max_header_kb * 1024
        limits.settings.max_header_bytes = self.max_header
        limits.settings.head_refusal = self._head_refusal
        limits.settings.error_response = self._error_response
        limits.settings.timeout_response = self._timeout_response
        if "monitor_log_json" in updated:
            logs.use_json(ctx.options.monitor_log_json)
        if "monitor_anomaly_factor" in updated:
            try:
                self.anomaly_factor = parse_k(ctx.options.monitor_anomaly_factor)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if self._running and "monitor_listen_backlog" in updated:
            self._raise_backlog()
        # mitmproxy applies a script's --set options after its first configure: opening the
        # database now would open the default file. It is opened in `running`, once.
        if self._running and {
            "monitor_db",
            "monitor_token_refresh_ms",
            "monitor_flush_ms",
            "monitor_default_max_output",
            "monitor_reclaim_seconds",
            "monitor_anomaly_factor",
        } & (updated):
            self._open()

    def running(self) -> None:
        self._running = True
        install_log_filter()  # handlers added since `load` (mitmdump's own) get it too
        self._raise_backlog()
        if ctx.options.monitor_log_json:
            logs.use_json(True)  # mitmdump's handlers exist now
        try:
            self._open()
            self._start_metrics()
        except exceptions.OptionsError as e:
            logger.error("llm-monitor: %s", e)
            ctx.master.shutdown()

    def started(self) -> bool:
        """Whether its start-up work is done: `running` has opened everything and the
        recorder's thread has built its price book (or failed to)."""
        recorder = self.recorder
        return self._running and (recorder is None or recorder.warmed.is_set())

    def _start_metrics(self) -> None:
        """Metrics when a port is given, or as a worker of `up --workers N` (multiprocess
        mode: `up` serves them all); started once per process."""
        port, shared = ctx.options.monitor_metrics_port, metrics.multiprocess_dir()
        if self.metrics is not None or not (port or shared):
            return
        self.metrics = metrics.Metrics()
        if self.recorder is not None:
            self.recorder.on_written = self.metrics.written
        if port:
            host = ctx.options.monitor_metrics_host
            try:
                if shared:
                    self._metrics_server = metrics.serve_multiprocess(port, host, shared)
                else:
                    self._metrics_server = metrics.serve(self.metrics, port, host)
            except OSError as e:
                raise exceptions.OptionsError(
                    f"monitor_metrics_port: cannot listen on {host}:{port}: {e.strerror}"
                ) from None
            logger.info("llm-monitor: metrics at http://%s:%d/metrics", host, port)
        self._sampler = asyncio.get_running_loop().create_task(self._sample_metrics())

    async def _sample_metrics(self) -> None:
        """The requests observed since, and the recorder's gauges, once a second (never
        per request)."""
        while self.metrics is not None:
            try:
                self.metrics.flush()
            except Exception:  # never lose the sampler (and with it, every later count)
                logger.exception("llm-monitor: metrics not counted")
            recorder = self.recorder
            if recorder is not None:
                self.metrics.sample(
                    recorder.queue_rows,
                    recorder.write_lag,
                    spool_path_for(recorder.db_path),
                    len(self._inflight),
                )
            await asyncio.sleep(1)

    def _open(self) -> None:
        db_path = ctx.options.monitor_db
        refresh = ctx.options.monitor_token_refresh_ms / 1000
        flush_ms = ctx.options.monitor_flush_ms
        try:
            open_db(db_path).conn.close()  # creates or upgrades the schema before any traffic
        except Exception as e:
            raise exceptions.OptionsError(f"monitor_db: cannot open {db_path}: {e}") from None
        self._close()
        on_written = self.metrics.written if self.metrics is not None else None
        self.recorder = Recorder(db_path, max_delay=flush_ms / 1000, on_written=on_written)
        self.recorder.start()
        self.tokens = TokenIndex(db_path, refresh_seconds=refresh)
        self.tokens.start()
        self.gate = Gate(
            db_path,
            default_max_output=ctx.options.monitor_default_max_output,
            reclaim_seconds=ctx.options.monitor_reclaim_seconds,
        )
        self.gate.start()
        if ctx.options.monitor_alerts_seconds:
            self.watcher = Watcher(
                db_path, interval=ctx.options.monitor_alerts_seconds, k=self.anomaly_factor
            )
            self.watcher.start()
        if not len(self.tokens):
            logger.warning(
                "llm-monitor: %s has no monitor tokens yet; every request will get "
                "401 (create one with `llm-monitor orgs create`)",
                db_path,
            )
        logger.info("llm-monitor: recording usage in %s", db_path)

    def _raise_backlog(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None:
            limits.raise_backlog(proxyserver.servers, ctx.options.monitor_listen_backlog)

    def client_connected(self, client: connection.Client) -> None:
        self._last_active[client.id] = time.monotonic()

    def client_disconnected(self, client: object) -> None:
        """Work around a mitmproxy 12 leak: when it closes a connection whose client is
        still sending (a cut-off body, an overlong head), the socket can stay open and the
        client hang. Abort whatever transport is left (internal API, looked up defensively)."""
        proxyserver = ctx.master.addons.get("proxyserver")
        self._last_active.pop(getattr(client, "id", None), None)
        handler = getattr(proxyserver, "connections", {}).get(getattr(client, "id", None))
        io = getattr(handler, "transports", {}).get(client) if handler is not None else None
        writer = getattr(io, "writer", None)
        if writer is not None and not writer.transport.is_closing():
            writer.transport.abort()

    def _close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.tokens is not None:
            self.tokens.stop()
            self.tokens = None
        if self.recorder is not None:
            self.recorder.close()  # settles what it prices, before the gate gives back
            self.recorder = None
        if self.gate is not None:
            self.gate.stop()
            self.gate = None

    # Hooks, in the order a flow meets them.

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.error is not None:
            return  # refused by mitmproxy itself (smuggling checks): never forwarded, no row
        mode = flow.client_conn.proxy_mode
        if flow.is_replay or not isinstance(mode, ReverseMode):  # a replay: not a client's
            return
        listener = self._listener(mode)
        provider = provider_named(listener.provider)
        request = flow.request
        if request.data.authority:  # an absolute-form target goes upstream in origin form
            request.authority = ""
        flow.metadata[GUARD_KEY] = self.body_limit
        ours, headers, head_bytes = take_our_headers(request)
        token = ours.get(_TOKEN_KEY)
        if head_bytes > self.max_header:
            message = f"Request headers larger than {self.max_header // 1024} KB (LLM Monitor)."
            self._reject(flow, provider, 431, message, "request_headers_too_large", token)
            return
        if self.tokens is None:  # not running yet, or the database failed: nothing passes
            message = "LLM Monitor is not ready."
            self._reject(flow, provider, 503, message, "monitor_not_ready", token)
            return
        owner = self.tokens.owner(token)
        if owner is None:
            message = (
                f"Missing {TOKEN_HEADER} header"
                if not token
                else f"Invalid or revoked {TOKEN_HEADER}"
            )
            self._reject(
                flow,
                provider,
                401,
                f"{message} (LLM Monitor).",
                "invalid_monitor_token",
                token,
            )
            return
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_request:
            self._reject(flow, provider, *self._too_large(), token)
            return
        try:
            state = FlowState(
                listener.provider,
                provider,
                listener.inject_usage and self.inject_usage,
                owner,
                parse_user(ours.get(_USER_KEY)),
                parse_tags(ours.get(_TAGS_KEY)),
            )
        except BadMonitorHeader as e:
            message = f"{e} (LLM Monitor)."
            self._reject(flow, provider, 400, message, "invalid_monitor_header", token)
            return
        state.request_headers = headers
        state.token = token
        if self.key_hints:
            state.key_hint = provider.key_hint(headers)
        flow.metadata[_METADATA_KEY] = state
        self._inflight[flow.id] = flow

    def request(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or flow.response is not None:
            return  # answered by the proxy (e.g. a body over the limit): not forwarded
        state.forwarded = True
        request = flow.request
        readable = self._readable_request(request, state)
        if not readable:
            # Unread, passed on untouched; what the path alone tells is still known.
            probe = request.copy()
            probe.raw_content = b""
            request = probe
        try:
            state.info = state.provider.inspect_request(
                request, state.request_headers, inject_usage=state.inject_usage
            )
        except Exception as e:  # an odd body is the provider's to judge, not ours
            logger.warning("llm-monitor: could not read request body (%s)", e)
        if self.gate is not None and self.gate.active(state.owner.org_id):
            verdict = self.gate.admit(
                org_id=state.owner.org_id,
                token_id=state.owner.token_id,
                user=state.user,
                tags=state.tags,
                provider=state.provider_name,
                model=state.info.model,
                billable=state.info.billable,
                prompt_bytes=len(flow.request.raw_content or b""),
                max_output=state.info.max_output,
            )
            if isinstance(verdict, Refusal):  # refused before the provider hears of it
                flow.response = self._response(
                    flow, state.provider, 429, verdict.message, verdict.code
                )
                flow.response.headers["retry-after"] = str(verdict.retry_after)
                state.forwarded = False
                self._log_rejection(flow, state.provider_name, 429, verdict.code, state.token)
                self._forget(flow, state)
                return
            state.hold = verdict
        if state.info.usage_injected:
            # A stream the proxy rewrites is best not compressed: re-encoding costs, and a
            # re-encoded stream cannot fall back to passing the upstream's bytes on.
            state.accept_encoding = flow.request.headers.get("accept-encoding")
            flow.request.headers["accept-encoding"] = "identity"

    def _readable_request(self, request: http.Request, state: FlowState) -> bool:
        """Whether the body may be read here; a compressed one is decoded (at most
        `max_read` bytes) and forwarded decoded, so that no decoded copy is cached."""
        raw = request.raw_content or b""
        encoding = state.request_headers.get("content-encoding", "").strip()
        limit_mb = self.max_read // MiB
        if encoding and encoding.lower() != "identity":
            limit = whole_body_decode_limit(len(raw), self.max_read)
            try:
                body = decode_body(raw, encoding, limit)
            except TooLarge:
                state.unread = (
                    f"request body over {limit_mb} MB decoded: not read"
                    if limit == self.max_read
                    else "request body expands over 32 times when decoded: not read"
                )
                return False
            except ValueError as e:
                state.unread = f"request body not read: {e}"[:200]
                return False
            del request.headers["content-encoding"]
            del state.request_headers["content-encoding"]
            request.content = body
        elif len(raw) > self.max_read:
            state.unread = f"request body over {limit_mb} MB: not read"
            return False
        if (reason := json_too_complex(request.raw_content or b"")) is not None:
            state.unread = f"request body: {reason}"
            return False
        return True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        response = flow.response
        if state is None or response is None or not state.forwarded:
            return
        if self.draining and response.http_version.startswith("HTTP/1"):
            response.headers["connection"] = "close"  # the client goes elsewhere next time
        if refused_changed_body(state, response):
            return  # kept whole (an error is small) until `response` sends the body again
        state.tap = self._tap_for(state, response)
        if state.tap is not None:
            response.stream = state.tap
            if state.tap.rewrites and "content-length" in response.headers:
                del response.headers["content-length"]  # the length changes
                if response.http_version == "HTTP/1.1":
                    response.headers["transfer-encoding"] = "chunked"

    def _tap_for(self, state: FlowState, response: http.Response) -> StreamTap | None:
        """What reads `response` on the side as it passes (its stream or its JSON body);
        None, with `response.stream` set to pass it on untouched, for what is not read."""
        encoding, content_type, declared, state.request_id = response_head(response.headers)
        state.head_read = True
        content_type = content_type.lower()
        if not is_supported(encoding):
            response.stream = True
            state.unread = f"response content-encoding {encoding[:40]!r} not read"
            return None
        reader = None
        if response.status_code < 400:
            reader = state.provider.stream_reader(state.info, content_type)
        if reader is None:
            if response.status_code < 400 and not is_json(content_type):
                response.stream = True  # files, audio, images: no usage to read
                return None
            if kept_whole(response, declared):
                state.whole = encoding
                return None
            reader = BodyCollector(self.max_read)  # JSON and errors: read on the side
        return StreamTap(reader, encoding, max_read=self.max_read)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        self._last_active[flow.client_conn.id] = time.monotonic()
        state = self._state(flow)
        if state is None or state.recorded or flow.response is None:
            return None
        if not state.forwarded:
            self._forget(flow, state)
            return None
        if refused_changed_body(state, flow.response):
            # mitmproxy awaits what a hook returns: only this flow waits for the answer.
            return self._send_unchanged(flow, state)
        self._record_response(flow, state)
        return None

    async def _send_unchanged(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """The provider refused a body the proxy changed (usage injection): send the
        client's own request once more. The client gets the answer it would have had
        without the proxy. When the provider takes the unchanged body, the change was what
        it refused: stop changing bodies on this listener. When it refuses that too, the
        body was wrong as the client sent it, and the listener goes on asking."""
        refused = flow.response.status_code
        retry = http.HTTPFlow(flow.client_conn, flow.server_conn)
        retry.request = flow.request.copy()
        retry.request.raw_content = state.info.unchanged_body
        if "content-length" in retry.request.headers:
            retry.request.headers["content-length"] = str(len(state.info.unchanged_body or b""))
        if state.accept_encoding is None:
            retry.request.headers.pop("accept-encoding", None)
        else:
            retry.request.headers["accept-encoding"] = state.accept_encoding
        retry.is_replay = "request"  # passes this addon's hooks untouched
        # mitmproxy's own replay machinery: the upstream connection, TLS and options as for
        # any flow, without the client-playback addon (the lean master has none). Imported
        # here: a running proxy has loaded `mitmproxy.addons` already.
        from mitmproxy.addons.clientplayback import ReplayHandler

        try:
            await asyncio.wait_for(
                ReplayHandler(retry, ctx.options).replay(), ctx.options.tcp_timeout
            )
        except TimeoutError:
            retry.response = None
        if retry.response is not None:
            flow.response = retry.response
            state.info.usage_injected = False
            state.info.unchanged_body = None
            if retry.response.status_code < 400:
                self._stop_injecting(flow.client_conn.proxy_mode, state.provider_name, refused)
        if state.recorded:  # the client hung up meanwhile (recorded by `error`)
            return
        # The answer came whole: read it as if it had passed, within the same limits.
        state.whole = None
        state.tap = self._tap_for(state, flow.response)
        if state.tap is not None:
            state.tap(flow.response.raw_content or b"")
            state.tap(b"")
        self._record_response(flow, state)

    def _stop_injecting(self, mode: ReverseMode, provider: str, refused: int) -> None:
        listener = self._listener_by_spec.get(mode.full_spec)
        if listener is None or not listener.inject_usage:
            return
        self._listener_by_spec[mode.full_spec] = dataclasses.replace(listener, inject_usage=False)
        logger.warning(
            "llm-monitor: %s answered %d to a stream the proxy had asked for usage "
            "(stream_options.include_usage); sent it again unchanged and stopped asking "
            "on this listener (to make it permanent: --set monitor_providers=PORT:%s:noinject)",
            printable(provider),
            refused,
            printable(provider),
        )

    def _record_response(self, flow: http.HTTPFlow, state: FlowState) -> None:
        response = flow.response
        assert response is not None
        if (stream := state.stream) is not None:
            reader = stream.reader
            if reader.error or response.status_code >= 400:
                self._record(flow, state, outcome="provider_error", error=reader.error)
            elif not reader.complete and not stream.broken and stream.unread is None:
                error = "stream ended before its final event"
                self._record(flow, state, outcome="upstream_error", error=error)
            else:
                self._record(flow, state, outcome="ok", error=None)
            return
        usage, response_model, error = None, None, None
        if state.tap is not None or state.whole is not None:
            usage, response_model, error = self._read_body(state, response)
        outcome = "provider_error" if response.status_code >= 400 else "ok"
        self._record(
            flow, state, outcome=outcome, error=error, usage=usage, response_model=response_model
        )

    def _read_body(
        self, state: FlowState, response: http.Response
    ) -> tuple[TokenUsage | None, str | None, str | None]:
        """Usage, answering model and error code of a JSON body: parsed whole when within
        the limits, else from its tail (OpenAI's usage comes last)."""
        provider, status = state.provider, response.status_code
        body, tail, reason = (
            self._whole_body(response, state.whole)
            if state.whole is not None
            else self._collected_body(state)
        )
        if body is not None and (too_complex := json_too_complex(body)) is not None:
            body, reason = None, f"response body: {too_complex}"
        if body is not None:
            usage, model = provider.usage_from_body(body, state.info)
            error = provider.error_code(body) if status >= 400 else None
        else:
            usage, model = provider.usage_from_body(tail, state.info)
            error = None
            if usage is None and reason is not None:
                state.unread = f"{state.unread}; {reason}" if state.unread else reason
        if status >= 400:
            error = error or f"HTTP {status}"
        return usage, model, error

    def _collected_body(self, state: FlowState) -> tuple[bytes | None, bytes, str | None]:
        """The body a `BodyCollector` read on the side: (whole body or None, its tail,
        why it is not whole)."""
        assert state.tap is not None and isinstance(state.tap.reader, BodyCollector)
        collector = state.tap.reader
        body, reason = None, collector.unread  # a body read in part is not read
        if state.tap.broken:
            reason = "response body could not be decoded"
        elif reason is None and (body := collector.body) is None:
            reason = f"response body over {self.max_read // MiB} MB decoded: usage not read"
        return body, collector.tail, reason

    def _whole_body(
        self, response: http.Response, encoding: str
    ) -> tuple[bytes | None, bytes, str | None]:
        """A body mitmproxy kept whole, decoded within the same limits as a streamed one."""
        raw = response.raw_content
        if raw is None:  # streamed after all (mitmproxy's stream_large_bodies)
            return None, b"", "response body streamed by mitmproxy: usage not read"
        encoding = encoding.strip()
        if not encoding or encoding.lower() == "identity":
            return raw, b"", None
        try:
            return (
                decode_body(raw, encoding, whole_body_decode_limit(len(raw), self.max_read)),
                b"",
                None,
            )
        except TooLarge as e:  # a bomb, or more than max_read: as a streamed one says
            return None, b"", str(e)
        except ValueError:
            return None, b"", "response body could not be decoded"

    def error(self, flow: http.HTTPFlow) -> None:
        self._last_active[flow.client_conn.id] = time.monotonic()
        state = self._state(flow)
        if state is None or state.recorded:
            return
        message = flow.error.msg if flow.error else "unknown error"
        if not state.forwarded:
            # Refused or abandoned before the whole request was read: nothing reached
            # the provider, so there is nothing to record.
            self._forget(flow, state)
            return
        if state.tap is not None and state.tap.reader.complete:
            # The whole answer had passed (an SDK may hang up on `[DONE]` before the
            # stream's last bytes): nothing was lost.
            self._record(flow, state, outcome="ok", error=None)
        elif state.tap is not None and state.tap.reader.error:
            # The stream's error event came first; an SDK raises on it and hangs up.
            self._record(flow, state, outcome="provider_error", error=state.tap.reader.error)
        elif (silence := self._upstream_silence(flow, state)) >= ctx.options.tcp_timeout * 0.95:
            # mitmproxy closes idle connections and reports it as the client's doing.
            error = f"upstream silent for {silence:.0f} s (tcp_timeout={ctx.options.tcp_timeout})"
            self._record(flow, state, outcome="upstream_error", error=error)
        elif "client disconnected" in message.lower():
            self._record(flow, state, outcome="client_disconnected", error=message)
        else:
            self._record(flow, state, outcome="upstream_error", error=message)

    def done(self) -> None:
        """mitmdump is stopping (SIGTERM): record flows still open, then flush the recorder."""
        for flow in list(self._inflight.values()):
            state = self._state(flow)
            if state is not None and not state.recorded and state.forwarded:
                self._record(
                    flow,
                    state,
                    outcome="proxy_shutdown",
                    error="proxy shut down before the response ended",
                )
        self._close()
        if self._sampler is not None:
            self._sampler.cancel()
        if self.metrics is not None:
            self.metrics.flush()  # a worker's last second counts too (multiprocess files)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
            self._metrics_server = None

    # Helpers.

    def _state(self, flow: http.HTTPFlow) -> FlowState | None:
        return flow.metadata.get(_METADATA_KEY)

    def _forget(self, flow: http.HTTPFlow, state: FlowState, *, release: bool = True) -> None:
        """The flow is done with (recorded, or never forwarded): later hooks pass it by.

        Its state and body guard leave its metadata: mitmproxy's flows are freed only by
        the garbage collector (they hold cycles), and what hung from them until then was
        walked by every collection meanwhile (about 6 µs of collection a request)."""
        state.recorded = True
        self._inflight.pop(flow.id, None)
        metadata = flow.metadata
        metadata.pop(_METADATA_KEY, None)
        metadata.pop(GUARD_KEY, None)
        if release and state.hold is not None and self.gate is not None:
            self.gate.release(state.hold)  # never forwarded: nothing of it was spent

    @staticmethod
    def _upstream_silence(flow: http.HTTPFlow, state: FlowState) -> float:
        """Seconds since the upstream last sent anything (or since the request went out)."""
        last = state.tap.last_chunk_at if state.tap else None
        if last is None and flow.response is not None:
            last = flow.response.timestamp_start
        return time.time() - (last or flow.request.timestamp_end or flow.request.timestamp_start)

    def _listener(self, mode: ReverseMode) -> Listener:
        """The listener's provider, worked out once per listener (this runs per request)."""
        listener = self._listener_by_spec.get(mode.full_spec)
        if listener is None:
            listener = self._listener_by_spec[mode.full_spec] = self._find_listener(mode)
        return listener

    def _find_listener(self, mode: ReverseMode) -> Listener:
        port = mode.listen_port(ctx.options.listen_port or None)
        if port in self.listeners:
            return self.listeners[port]
        host = mode.address[0]
        if host in KNOWN_HOSTS:
            return Listener(KNOWN_HOSTS[host])
        logger.warning(
            "llm-monitor: listener for %s is not a known provider; reading it as "
            "OpenAI-compatible under the name %r (name it with --set monitor_providers=%s:NAME)",
            mode.data,
            host,
            port,
        )
        return Listener(host)

    def _too_large_answer(self, flow: http.HTTPFlow) -> http.Response:
        """The 413 for a body past `monitor_max_request_mb` that declared no length (or a
        false one), in the listener's provider's shape; logged and counted as such."""
        name = self._listener(flow.client_conn.proxy_mode).provider
        status, message, code = self._too_large()
        state = self._state(flow)
        self._log_rejection(flow, name, status, code, state.token if state else None)
        return self._response(flow, provider_named(name), status, message, code)

    def _too_large(self) -> tuple[int, str, str]:
        message = f"Request body larger than {self.max_request // MiB} MB (LLM Monitor)."
        return 413, message, "request_too_large"

    @staticmethod
    def _response(
        flow: http.HTTPFlow, provider: Provider, status: int, message: str, code: str
    ) -> http.Response:
        headers = {"content-type": "application/json"}
        if flow.request.http_version.startswith("HTTP/1"):
            headers["connection"] = "close"  # the body, if any, is dropped: start afresh
        return http.Response.make(status, provider.rejection(status, message, code), headers)

    def _reject(
        self,
        flow: http.HTTPFlow,
        provider: Provider,
        status: int,
        message: str,
        code: str,
        token: str | None = None,
    ) -> None:
        """Answer from the headers; the body, if any, is dropped as it arrives."""
        flow.response = self._response(flow, provider, status, message, code)
        flow.request.headers.pop("expect", None)  # no "100 Continue" for a refused body
        flow.metadata[GUARD_KEY] = Answered(self.body_limit.drain)
        name = self._listener(flow.client_conn.proxy_mode).provider
        self._log_rejection(flow, name, status, code, token)

    def _log_rejection(
        self, flow: http.HTTPFlow, provider: str, status: int, code: str, token: str | None
    ) -> None:
        """One line per refused request: who (address, token prefix, X-Monitor-User),
        what and why; never a whole token or a key. Counted always; logged at most
        `logs.Throttle`'s lines a second."""
        if self.metrics is not None:
            self.metrics.rejected(provider, code)
        if not self._may_log_refusal():
            return
        peer = flow.client_conn.peername
        fields = {
            "event": "rejected",
            "client": peer[0] if peer else None,
            "provider": provider,
            "method": printable(flow.request.method[:16]),
            "path": printable(stored_path(flow.request)[:200]),
            "status": status,
            "reason": code,
            "token_prefix": printable(display_prefix(token)[:12]) if token else None,
        }
        logger.warning(
            "llm-monitor: refused %s %s from %s on %s: %d %s (token %s)",
            fields["method"],
            fields["path"],
            fields["client"] or "?",
            provider,
            status,
            code,
            fields["token_prefix"] or "none",
            extra={logs.FIELDS: fields},
        )

    def _error_response(self, client: object, status: int, message: str) -> http.Response | None:
        """What the client gets instead of mitmproxy's HTML error page (see `limits`): the
        listener's provider's JSON error. 502 when the provider could not be reached (504
        when that timed out); a request mitmproxy refused as malformed (request smuggling
        checks) is a 400 `malformed_request`, logged and counted; other refusals keep
        their status."""
        mode = getattr(client, "proxy_mode", None)
        if not isinstance(mode, ReverseMode):
            return None
        name = self._listener(mode).provider
        detail = printable(redact(message))[:300]
        if status == 502:
            if "timed out" in message.lower() or "timeout" in message.lower():
                status, code = 504, "upstream_timeout"
                text = f"LLM Monitor could not reach the provider in time: {detail}"
            else:
                code = "upstream_unreachable"
                text = f"LLM Monitor could not reach the provider: {detail}"
        elif status == 400:
            self._log_head_refusal(client, name, status, "malformed_request")
            # mitmproxy's advice to turn the check off is for the operator, not the client.
            detail = detail.split(" Disable the validate_inbound_headers option")[0]
            code, text = "malformed_request", f"Malformed request: {detail} (LLM Monitor)"
        elif status == 413:  # a client that kept sending past its 413 (see `limits`)
            code, text = "request_too_large", detail
        else:
            code, text = "proxy_error", f"LLM Monitor could not pass the request on: {detail}"
        headers = {"content-type": "application/json"}
        return http.Response.make(
            status, provider_named(name).rejection(status, text, code), headers
        )

    def _timeout_response(self, client: object) -> http.Response | None:
        """A 504 for the request on `client`'s connection that the provider left without
        an answer for `tcp_timeout` seconds, just before mitmproxy closes it."""
        for flow in self._inflight.values():
            state = self._state(flow)
            if flow.client_conn is client and state and state.forwarded and flow.response is None:
                if not flow.request.http_version.startswith("HTTP/1"):
                    return None
                seconds = ctx.options.tcp_timeout
                text = f"LLM Monitor: the provider did not answer within {seconds} s."
                body = state.provider.rejection(504, text, "upstream_timeout")
                return http.Response.make(504, body, {"content-type": "application/json"})
        return None

    async def drain(self, seconds: float) -> int:
        """Stop accepting connections and wait up to `seconds` for the requests in flight
        to finish (answers meanwhile ask HTTP/1 clients to close their connection).
        A keep-alive connection that was busy within the last `DRAIN_IDLE` seconds is
        waited for too: its client's next request gets its answer (and `Connection: close`)
        instead of a cut connection. Returns how many requests are left."""
        self.draining = True
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None:
            await proxyserver.servers.update([])  # closes the listening sockets only
        logger.info(
            "llm-monitor: draining: %d requests in flight, up to %g s", len(self._inflight), seconds
        )
        deadline = time.monotonic() + seconds
        while (self._inflight or self._recently_active()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._inflight:
            logger.warning(
                "llm-monitor: %d requests still in flight after %g s", len(self._inflight), seconds
            )
        return len(self._inflight)

    def _recently_active(self) -> bool:
        since = time.monotonic() - DRAIN_IDLE
        return any(at > since for at in self._last_active.values())

    def _head_refusal(
        self, client: connection.Client, status: int, code: str, detail: str
    ) -> http.Response:
        """The answer to a request head refused before it makes a flow (see `limits`): too
        long (431) or not parseable (400), logged and counted like any refusal."""
        mode = client.proxy_mode
        name = self._listener(mode).provider if isinstance(mode, ReverseMode) else "openai"
        self._log_head_refusal(client, name, status, code)
        detail = printable(redact(detail))[:300]
        text = f"Malformed request: {detail}" if status == 400 else detail
        text = f"{text} (LLM Monitor)."
        body = provider_named(name).rejection(status, text, code)
        return http.Response.make(status, body, {"content-type": "application/json"})

    def _may_log_refusal(self) -> bool:
        if not self._refusal_log.allow():
            return False
        if held := self._refusal_log.take_held():
            logger.warning(
                "llm-monitor: %d more refused requests were not logged (over %d a second; "
                "the metrics count every one)",
                held,
                self._refusal_log.per_second,
            )
        return True

    def _log_head_refusal(self, client: object, provider: str, status: int, code: str) -> None:
        """`_log_rejection` for a request that has no flow (or a half-read one)."""
        if self.metrics is not None:
            self.metrics.rejected(provider, code)
        if not self._may_log_refusal():
            return
        peer = getattr(client, "peername", None)
        fields = {
            "event": "rejected",
            "client": peer[0] if peer else None,
            "provider": provider,
            "status": status,
            "reason": code,
        }
        logger.warning(
            "llm-monitor: refused a request from %s on %s: %d %s",
            fields["client"] or "?",
            provider,
            status,
            code,
            extra={logs.FIELDS: fields},
        )

    def _record(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        *,
        outcome: str,
        error: str | None,
        usage: TokenUsage | None = None,
        response_model: str | None = None,
    ) -> None:
        """Queue the flow's row; a stream's usage is whatever its reader has seen so far."""
        stream = state.stream
        if stream is not None:
            usage, response_model = stream.reader.usage, stream.reader.response_model
        unread = state.unread
        if state.tap is not None and not isinstance(state.tap.reader, BodyCollector):
            stream_unread = state.tap.unread or getattr(state.tap.reader, "unread", None)
            if stream_unread is not None:
                unread = f"{unread}; {stream_unread}" if unread else stream_unread
        self._forget(flow, state, release=False)
        if self.recorder is None:
            return
        request, response = flow.request, flow.response
        started = request.timestamp_start
        ended = (response.timestamp_end if response is not None else None) or time.time()
        first = stream.first_chunk_at if stream else None
        # A plain row (see UsageRecord) from this module's own typed values, copied from a
        # blank one: a third of a model's `model_copy`, and fewer objects to collect.
        record = _BLANK_ROW.copy()
        record.update(
            ts=utc_timestamp(started),
            org_id=state.owner.org_id,
            token_id=state.owner.token_id,
            provider=state.provider_name,
            method=request.method,
            path=stored_path(request),
            model=state.info.model,
            response_model=response_model,
            status=response.status_code if response is not None else None,
            outcome=outcome,
            streamed=stream is not None,
            usage_injected=state.info.usage_injected,
            billable=state.info.billable,
            latency_ms=round((ended - started) * 1000, 3),
            ttft_ms=round((first - started) * 1000, 3) if first else None,
            request_id=state.request_id if state.head_read else _request_id(response),
            user=state.user,
            tags=state.tags,
            error=redact(error)[:500] if error else None,
            unread_reason=unread,
            key_hint=state.key_hint,
            body_digest=body_digest(request.raw_content),
        )
        if usage is not None:
            record.update(UsageRecord.usage_fields(usage))
        if state.hold is not None and self.gate is not None:
            gate, hold = self.gate, state.hold
            tokens = None
            if usage is not None and (usage.input_tokens or usage.output_tokens):
                tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
            gate.settle_tokens(hold, tokens)
            self.recorder.submit(record, lambda row: gate.settle_cost(hold, row["cost_usd"]))
        else:
            self.recorder.submit(record)
        if self.metrics is not None:
            self.metrics.observe(record)
        if self.log_requests:
            self._log(record)

    @staticmethod
    def _log(row: UsageRow) -> None:
        logger.info(
            "%s %s %s %s -> %s %s: %s in, %s out tokens, %.0f ms",
            row["provider"],
            row["method"],
            printable(row["path"]),
            printable(billed_model(row) or "-"),
            row["status"] if row["status"] is not None else "-",
            row["outcome"],
            row["input_tokens"] if row["input_tokens"] is not None else "-",
            row["output_tokens"] if row["output_tokens"] is not None else "-",
            row["latency_ms"],
        )


def _request_id(response: http.Response | None) -> str | None:
    """The provider's request id of a response whose head `response_head` did not read."""
    return None if response is None else response_head(response.headers)[3]
