"""Prometheus metrics of the proxy (prometheus-client).

Per request the addon calls `Metrics.observe` once when it queues a row (which only keeps
the row) and `Metrics.rejected` when it refuses one. Once a second, on the event loop,
`Metrics.flush` counts the rows kept since: one counter update per distinct set of labels
rather than several per request (each takes a lock, and a file write in multiprocess
mode), so a scrape is at most a second behind. The cost is counted by the recorder thread
once it has priced a row (`Metrics.written`); the recorder's queue depth, write lag and
spool size are read once a second (`Metrics.sample`), never per request.

Labels stay few: provider, model family (at most `MAX_FAMILIES` distinct values per
process, then "other"), organisation id, status class and outcome. No user, token or tag.

Two ways to serve them:
- one process: `serve(port, host)` starts prometheus-client's HTTP server on a thread;
- `up --workers N`: every worker writes its series to files in `PROMETHEUS_MULTIPROC_DIR`
  (prometheus-client's multiprocess mode) and `up` serves one endpoint that adds them up
  (`serve_multiprocess`): each worker's traffic is counted, whichever worker served it.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from llm_monitor.usage import UsageRow, billed_model

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_FAMILIES = 64
MAX_MODEL_NAMES = 4096  # model names whose family is remembered
TOKEN_KINDS = (
    ("input_tokens", "input"),
    ("cached_input_tokens", "cached_input"),
    ("cache_write_tokens", "cache_write"),
    ("output_tokens", "output"),
    ("reasoning_tokens", "reasoning"),
)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_FAMILY_PART = re.compile(r"^[a-z0-9.]{1,32}$")


def model_family(model: str | None) -> str:
    """`gpt-4o-mini-2024-07-18` -> `gpt-4o`, `claude-sonnet-4-5` -> `claude-sonnet`,
    `models/gemini-2.5-flash` -> `gemini-2.5`: the first two dash-separated parts, lower
    case, without a routing prefix."""
    if not model:
        return "none"
    name = model.rsplit("/", 1)[-1].lower()
    parts = [p for p in name.split("-")[:2] if _FAMILY_PART.match(p)]
    return "-".join(parts) or "other"


def children(metric: Any) -> Callable[..., Any]:
    """`metric.labels(*values)`, remembered: prometheus-client checks and looks up the
    label values on every call, which would be most of the cost per request. As bounded as
    the labels themselves (see `Metrics.family`)."""
    known: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = known.get(values)
        if found is None:
            found = known[values] = metric.labels(*values)
        return found

    return child


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The metric objects of one proxy process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("provider", "model_family", "org", "status_class", "outcome")
        r = self.registry
        self.requests = Counter(
            "llm_monitor_requests", "Requests that reached the provider.", labels, registry=r
        )
        self.tokens = Counter(
            "llm_monitor_tokens",
            "Tokens by kind, as the provider reported them.",
            ("provider", "model_family", "org", "kind"),
            registry=r,
        )
        self.cost = Counter(
            "llm_monitor_cost_usd",
            "Cost of priced requests in USD (counted once the row is written).",
            ("provider", "model_family", "org"),
            registry=r,
        )
        self.unpriced = Counter(
            "llm_monitor_unpriced_requests",
            "Requests written without a cost (see unpriced_reason).",
            ("provider", "model_family"),
            registry=r,
        )
        self.latency = Histogram(
            "llm_monitor_request_duration_seconds",
            "From the request's first byte to the response's last.",
            ("provider", "model_family"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llm_monitor_time_to_first_token_seconds",
            "From the request's first byte to a stream's first chunk.",
            ("provider", "model_family"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "llm_monitor_upstream_errors",
            "Requests that failed between the proxy and the provider (unreachable, TLS, "
            "timeout, stream cut off).",
            ("provider",),
            registry=r,
        )
        self.rejections = Counter(
            "llm_monitor_rejected_requests",
            "Requests the proxy answered itself, by reason (the error code sent).",
            ("provider", "reason"),
            registry=r,
        )
        self.queue_depth = Gauge(
            "llm_monitor_recorder_queue_rows",
            "Rows waiting to be written to the database.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.write_lag = Gauge(
            "llm_monitor_recorder_write_lag_seconds",
            "How long the oldest row waiting to be written has waited.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.spool_bytes = Gauge(
            "llm_monitor_spool_bytes",
            "Size of the spool file (rows the database would not take; see import-spool).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.inflight = Gauge(
            "llm_monitor_inflight_requests",
            "Requests forwarded to the provider and not finished.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._pending: list[UsageRow] = []  # observed, not yet counted (see `flush`)
        self._families: set[str] = set()
        self._family_of: dict[str | None, str] = {}
        self._requests = children(self.requests)
        self._tokens = children(self.tokens)
        self._cost = children(self.cost)
        self._unpriced = children(self.unpriced)
        self._latency = children(self.latency)
        self._ttft = children(self.ttft)
        self._upstream_errors = children(self.upstream_errors)
        self._rejections = children(self.rejections)

    def family(self, model: str | None) -> str:
        family = self._family_of.get(model)
        if family is not None:
            return family
        family = model_family(model)
        if family not in self._families:
            if len(self._families) >= MAX_FAMILIES:
                family = "other"
            else:
                self._families.add(family)
        if len(self._family_of) < MAX_MODEL_NAMES:  # names come from clients: bounded
            self._family_of[model] = family
        return family

    def observe(self, row: UsageRow) -> None:
        """One queued usage row (a UsageRecord's fields), counted at the next `flush`."""
        self._pending.append(row)

    def flush(self) -> None:
        """Count the rows observed since the last flush: requests, tokens, latency, errors.
        Called on the event loop, as `observe` is: no lock between them."""
        rows, self._pending = self._pending, []
        requests: collections.Counter[tuple[str, str, str, str, str]] = collections.Counter()
        tokens: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        for row in rows:
            provider = row["provider"]
            family = self.family(billed_model(row))
            org = str(row["org_id"])
            status = row["status"]
            status_class = f"{status // 100}xx" if status else "none"
            requests[provider, family, org, status_class, row["outcome"]] += 1
            for field, kind in TOKEN_KINDS:
                if count := row[field]:
                    tokens[provider, family, org, kind] += count
            self._latency(provider, family).observe(row["latency_ms"] / 1000)
            if row["ttft_ms"] is not None:
                self._ttft(provider, family).observe(row["ttft_ms"] / 1000)
            if row["outcome"] == "upstream_error":
                errors[provider] += 1
        for labels, count in requests.items():
            self._requests(*labels).inc(count)
        for labels, count in tokens.items():
            self._tokens(*labels).inc(count)
        for provider, count in errors.items():
            self._upstream_errors(provider).inc(count)

    def rejected(self, provider: str, reason: str) -> None:
        self._rejections(provider, reason).inc()

    def written(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows the recorder has written (its thread): their cost."""
        for row in rows:
            family = self.family(row.get("response_model") or row.get("model"))
            if row.get("cost_usd") is not None:
                labels = (row["provider"], family, str(row["org_id"]))
                self._cost(*labels).inc(row["cost_usd"])
            elif row.get("unpriced_reason") not in (None, "usage_unseen"):
                self._unpriced(row["provider"], family).inc()

    def sample(self, queue_rows: int, write_lag: float, spool: Path | None, inflight: int) -> None:
        self.queue_depth.set(queue_rows)
        self.write_lag.set(write_lag)
        try:
            self.spool_bytes.set(spool.stat().st_size if spool is not None else 0)
        except OSError:
            self.spool_bytes.set(0)
        self.inflight.set(inflight)


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> Any:
    """This process's metrics at http://HOST:PORT/metrics, on a thread of their own.
    Returns the server (call `.shutdown()` to stop it)."""
    server, _thread = prometheus_client.start_http_server(port, host, registry=metrics.registry)
    return server


def serve_multiprocess(port: int, host: str, directory: str | Path) -> Any:
    """Every worker's series from `directory`, added up, at http://HOST:PORT/metrics."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    server, _thread = prometheus_client.start_http_server(port, host, registry=registry)
    return server


def worker_exited(pid: int, directory: str | Path) -> None:
    """Drop a stopped worker's live gauges (its counters stay in the sums)."""
    multiprocess.mark_process_dead(pid, str(directory))
