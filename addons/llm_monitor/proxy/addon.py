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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from mitmproxy import addonmanager, ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from llm_monitor.accounts.tokens import TokenIndex, TokenOwner
from llm_monitor.proxy.content_coding import decoder_for, encoder_for, is_supported
from llm_monitor.proxy.providers import (
    KNOWN_HOSTS,
    Provider,
    RequestInfo,
    StreamReader,
    provider_named,
)
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import Recorder
from llm_monitor.usage import TokenUsage, UsageRecord, utc_timestamp

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Monitor-Token"
USER_HEADER = "X-Monitor-User"
TAGS_HEADER = "X-Monitor-Tags"
MAX_USER_LENGTH = 256
MAX_TAGS_LENGTH = 1024
_TAG = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_METADATA_KEY = "llm_monitor"
# Query parameters that carry credentials (Gemini's `?key=`): never stored.
SECRET_QUERY_PARAMS = frozenset({"key", "api-key", "api_key"})


class BadMonitorHeader(ValueError):
    pass


def parse_tags(value: str | None) -> str | None:
    """`k=v,k=v` as a JSON object (keys sorted), or BadMonitorHeader saying what is wrong."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TAGS_LENGTH:
        raise BadMonitorHeader(f"{TAGS_HEADER} is longer than {MAX_TAGS_LENGTH} characters")
    tags = {}
    for item in value.split(","):
        key, sep, val = (part.strip() for part in item.partition("="))
        if not sep or not _TAG.match(key) or not val or not val.isprintable():
            raise BadMonitorHeader(
                f"{TAGS_HEADER} must be key=value pairs separated by commas "
                f"(keys of letters, digits and _.:/-); got {item.strip()[:40]!r}"
            )
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
                not port.isdigit()
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
    """The request path as stored: credentials in the query string removed."""
    path, _, query = request.path.partition("?")
    if not query:
        return path
    kept = [
        (k, v) for k, v in request.query.items(multi=True) if k.lower() not in SECRET_QUERY_PARAMS
    ]
    return f"{path}?{urlencode(kept)}" if kept else path


def is_json(content_type: str) -> bool:
    """application/json or a +json type; not NDJSON/JSON Lines, which stream."""
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def read_body(
    provider: Provider, info: RequestInfo, response: http.Response
) -> tuple[TokenUsage | None, str | None, str | None]:
    """Usage, answering model and error code of a whole buffered response."""
    body = response.get_content(strict=False) or b""
    content_type = response.headers.get("content-type", "").lower()
    reader = provider.stream_reader(info, content_type) if response.status_code < 400 else None
    if reader is not None:  # a stream that came buffered (sent again unchanged: see Monitor)
        reader.feed(body)
        reader.finish()
        usage, model = reader.usage, reader.response_model
    else:
        usage, model = provider.usage_from_body(body, info)
    error = None
    if response.status_code >= 400:
        error = provider.error_code(body) or f"HTTP {response.status_code}"
    return usage, model, error


class StreamTap:
    """`flow.response.stream`: pass each chunk on as it arrives and read usage on the side.

    Never raises and never returns b"" before the end (that would end the client's
    response). When the reader rewrites (injected usage to hide), chunks are decoded,
    rewritten and encoded again with the response's own Content-Encoding.
    """

    def __init__(self, reader: StreamReader, content_encoding: str) -> None:
        self.reader = reader
        self.first_chunk_at: float | None = None
        self.last_chunk_at: float | None = None
        self.rewrites = reader.rewrites
        self.broken = False
        self._decoder = decoder_for(content_encoding)
        self._encoder = encoder_for(content_encoding) if self.rewrites else None

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if not chunk:
            return self._end()
        self.last_chunk_at = time.time()
        if self.first_chunk_at is None:
            self.first_chunk_at = self.last_chunk_at
        if self.broken:
            return chunk
        try:
            kept = self.reader.feed(self._decoder.decode(chunk))
            if self._encoder is None:
                return chunk
            return self._encoder.encode(kept) or []
        except Exception as e:  # a corrupt encoding upstream: stop reading, keep passing on
            self.broken = True
            logger.warning("llm-monitor: cannot read stream body (%s); passing it on unread", e)
            return chunk

    def _end(self) -> bytes:
        if self.broken:
            return b""
        try:
            rest = self.reader.finish()
            if self._encoder is None:
                return b""
            return self._encoder.encode(rest) + self._encoder.finish()
        except Exception as e:
            self.broken = True
            logger.warning("llm-monitor: cannot finish reading stream (%s)", e)
            return b""


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
    recorded: bool = False


class Monitor:
    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.tokens: TokenIndex | None = None
        self.listeners: dict[int, Listener] = {}
        self._inflight: dict[str, http.HTTPFlow] = {}
        self._running = False
        self._listener_by_spec: dict[str, Listener] = {}
        self.inject_usage = True
        self.log_requests = False

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
            "monitor_token_refresh_ms",
            int,
            1000,
            "Milliseconds between reloads of the monitor tokens (a revoked token stops within it).",
        )

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
        if "flow_detail" in updated and ctx.options.flow_detail > 0:
            # mitmdump's flow lines print URLs (Gemini's ?key=) and, above 1, headers
            # (Authorization): keys must never reach a log. The addon logs its own line.
            ctx.options.flow_detail = 0
        refresh_ms = ctx.options.monitor_token_refresh_ms
        if "monitor_token_refresh_ms" in updated and not 10 <= refresh_ms <= 60_000:
            raise exceptions.OptionsError("monitor_token_refresh_ms must be from 10 to 60000")
        if "monitor_flush_ms" in updated and not 1 <= ctx.options.monitor_flush_ms <= 10_000:
            raise exceptions.OptionsError("monitor_flush_ms must be from 1 to 10000")
        # mitmproxy applies a script's --set options after its first configure: opening the
        # database now would open the default file. It is opened in `running`, once.
        if self._running and {"monitor_db", "monitor_token_refresh_ms", "monitor_flush_ms"} & (
            updated
        ):
            self._open()

    def running(self) -> None:
        self._running = True
        try:
            self._open()
        except exceptions.OptionsError as e:
            logger.error("llm-monitor: %s", e)
            ctx.master.shutdown()

    def _open(self) -> None:
        db_path = ctx.options.monitor_db
        refresh = ctx.options.monitor_token_refresh_ms / 1000
        flush_ms = ctx.options.monitor_flush_ms
        try:
            open_db(db_path).conn.close()  # creates or upgrades the schema before any traffic
        except Exception as e:
            raise exceptions.OptionsError(f"monitor_db: cannot open {db_path}: {e}") from None
        self._close()
        self.recorder = Recorder(db_path, max_delay=flush_ms / 1000)
        self.recorder.start()
        self.tokens = TokenIndex(db_path, refresh_seconds=refresh)
        self.tokens.start()
        if not len(self.tokens):
            logger.warning(
                "llm-monitor: %s has no monitor tokens yet; every request will get "
                "401 (create one with `llm-monitor orgs create`)",
                db_path,
            )
        logger.info("llm-monitor: recording usage in %s", db_path)

    def _close(self) -> None:
        if self.tokens is not None:
            self.tokens.stop()
            self.tokens = None
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    # Hooks, in the order a flow meets them.

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        mode = flow.client_conn.proxy_mode
        if flow.is_replay or not isinstance(mode, ReverseMode):  # a replay: not a client's
            return
        listener = self._listener(mode)
        provider = provider_named(listener.provider)
        if self.tokens is None:  # not running yet, or the database failed: nothing passes
            self._reject(flow, provider, 503, "LLM Monitor is not ready.", "monitor_not_ready")
            return
        headers = flow.request.headers
        token, user, tags = (headers.pop(h, None) for h in (TOKEN_HEADER, USER_HEADER, TAGS_HEADER))
        owner = self.tokens.owner(token)
        if owner is None:
            message = (
                f"Missing {TOKEN_HEADER} header"
                if not token
                else f"Invalid or revoked {TOKEN_HEADER}"
            )
            self._reject(flow, provider, 401, f"{message} (LLM Monitor).", "invalid_monitor_token")
            return
        try:
            state = FlowState(
                listener.provider,
                provider,
                listener.inject_usage and self.inject_usage,
                owner,
                parse_user(user),
                parse_tags(tags),
            )
        except BadMonitorHeader as e:
            self._reject(flow, provider, 400, f"{e} (LLM Monitor).", "invalid_monitor_header")
            return
        flow.metadata[_METADATA_KEY] = state
        self._inflight[flow.id] = flow

    def request(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None:
            return
        try:
            state.info = state.provider.inspect_request(
                flow.request, inject_usage=state.inject_usage
            )
        except Exception as e:  # an odd body is the provider's to judge, not ours
            logger.warning("llm-monitor: could not read request body (%s)", e)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or flow.response is None or flow.response.status_code >= 400:
            return  # error bodies are small: buffered, so the error code can be read
        content_type = flow.response.headers.get("content-type", "").lower()
        encoding = flow.response.headers.get("content-encoding", "")
        reader = None
        if is_supported(encoding):
            reader = state.provider.stream_reader(state.info, content_type)
        if reader is not None:
            state.tap = StreamTap(reader, encoding)
            flow.response.stream = state.tap
            if reader.rewrites and "content-length" in flow.response.headers:
                del flow.response.headers["content-length"]  # the length changes
                if flow.response.http_version == "HTTP/1.1":
                    flow.response.headers["transfer-encoding"] = "chunked"
        elif not is_json(content_type):
            flow.response.stream = True  # files, audio, images: no usage to read, don't buffer

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self._state(flow)
        if state is None or state.recorded or flow.response is None:
            return None
        if (
            state.info.unchanged_body is not None
            and 400 <= flow.response.status_code < 500
            and state.tap is None
        ):
            # mitmproxy awaits what a hook returns: only this flow waits for the answer.
            return self._send_unchanged(flow, state)
        self._record_response(flow, state)
        return None

    async def _send_unchanged(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """The provider refused a body the proxy changed (usage injection): send the
        client's own body once more, and stop changing bodies on this listener. The client
        gets the answer it would have had without the proxy."""
        mode = flow.client_conn.proxy_mode
        listener = self._listener_by_spec.get(mode.full_spec)
        if listener is not None and listener.inject_usage:
            self._listener_by_spec[mode.full_spec] = dataclasses.replace(
                listener, inject_usage=False
            )
            logger.warning(
                "llm-monitor: %s answered %d (%s) to a stream the proxy had asked for usage "
                "(stream_options.include_usage); sent it again unchanged and stopped asking "
                "on this listener (to make it permanent: --set monitor_providers=PORT:%s:noinject)",
                state.provider_name,
                flow.response.status_code,
                read_body(state.provider, state.info, flow.response)[2],
                state.provider_name,
            )
        retry = http.HTTPFlow(flow.client_conn, flow.server_conn)
        retry.request = flow.request.copy()
        retry.request.raw_content = state.info.unchanged_body
        if "content-length" in retry.request.headers:
            retry.request.headers["content-length"] = str(len(state.info.unchanged_body or b""))
        retry.is_replay = "request"  # passes this addon's hooks untouched
        # mitmproxy's own replay machinery: the upstream connection, TLS and options as for
        # any flow, without needing the client-playback addon (a lean master has none).
        # Imported here: `mitmproxy.addons` is loaded in any running proxy already, and the
        # command line need not load it.
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
        if not state.recorded:  # the client may have hung up meanwhile (recorded by `error`)
            self._record_response(flow, state)

    def _record_response(self, flow: http.HTTPFlow, state: FlowState) -> None:
        response = flow.response
        assert response is not None
        if state.tap is not None:
            reader = state.tap.reader
            if reader.error or response.status_code >= 400:
                self._record(flow, state, outcome="provider_error", error=reader.error)
            elif not reader.complete and not state.tap.broken:
                error = "stream ended before its final event"
                self._record(flow, state, outcome="upstream_error", error=error)
            else:
                self._record(flow, state, outcome="ok", error=None)
            return
        usage, response_model, error = None, None, None
        if response.stream is not True and response.raw_content is not None:
            usage, response_model, error = read_body(state.provider, state.info, response)
        outcome = "provider_error" if response.status_code >= 400 else "ok"
        self._record(
            flow, state, outcome=outcome, error=error, usage=usage, response_model=response_model
        )

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or state.recorded:
            return
        message = flow.error.msg if flow.error else "unknown error"
        if state.tap is not None and state.tap.reader.complete:
            # The whole answer had passed (an SDK may hang up on `[DONE]` before the
            # stream's last bytes): nothing was lost.
            self._record(flow, state, outcome="ok", error=None)
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
            if state is not None and not state.recorded:
                self._record(
                    flow,
                    state,
                    outcome="proxy_shutdown",
                    error="proxy shut down before the response ended",
                )
        self._close()

    # Helpers.

    def _state(self, flow: http.HTTPFlow) -> FlowState | None:
        return flow.metadata.get(_METADATA_KEY)

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

    def _reject(
        self, flow: http.HTTPFlow, provider: Provider, status: int, message: str, code: str
    ) -> None:
        flow.response = http.Response.make(
            status, provider.rejection(status, message, code), {"content-type": "application/json"}
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
        if state.tap is not None:
            usage, response_model = state.tap.reader.usage, state.tap.reader.response_model
        state.recorded = True
        self._inflight.pop(flow.id, None)
        if self.recorder is None:
            return
        request, response = flow.request, flow.response
        started = request.timestamp_start
        ended = (response.timestamp_end if response is not None else None) or time.time()
        first = state.tap.first_chunk_at if state.tap else None
        # Built from this module's own typed values: constructed without re-validating them
        # on the event loop (a spooled row is validated when it is imported).
        record = UsageRecord.model_construct(
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
            streamed=state.tap is not None,
            usage_injected=state.info.usage_injected,
            billable=state.info.billable,
            latency_ms=round((ended - started) * 1000, 3),
            ttft_ms=round((first - started) * 1000, 3) if first else None,
            request_id=_request_id(response),
            user=state.user,
            tags=state.tags,
            error=error,
            **UsageRecord.usage_fields(usage),
        )
        self.recorder.submit(record)
        if self.log_requests:
            self._log(record)

    @staticmethod
    def _log(record: UsageRecord) -> None:
        logger.info(
            "%s %s %s %s -> %s %s: %s in, %s out tokens, %.0f ms",
            record.provider,
            record.method,
            record.path,
            record.billed_model or "-",
            record.status if record.status is not None else "-",
            record.outcome,
            record.input_tokens if record.input_tokens is not None else "-",
            record.output_tokens if record.output_tokens is not None else "-",
            record.latency_ms,
        )


def _request_id(response: http.Response | None) -> str | None:
    if response is None:
        return None
    return response.headers.get("x-request-id") or response.headers.get("request-id")
