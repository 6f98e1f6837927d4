"""One HTTP client for the providers' admin APIs: retries on 429 and 5xx after the
`Retry-After` the provider asks for, JSON read with exact decimals, one-line errors.

The admin key goes into a header and nowhere else: no error message, log line or row
ever carries it (httpx logs URLs only).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx

from llm_monitor.errors import DomainError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


class ApiError(DomainError):
    """The provider's API refused or failed, said in one line (never with the key)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def retry_after_seconds(value: str | None, default: float) -> float:
    """`Retry-After` as seconds: a number of seconds or an HTTP date; `default` if absent."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


class ApiClient:
    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: dict[str, str],
        *,
        max_retries: int = 6,
        max_wait: float = 120.0,
        timeout: float = 60.0,
    ) -> None:
        self.provider = provider
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.requests = 0
        # Scrubbed from any message, should a provider ever echo a credential back.
        self._secrets = [v.removeprefix("Bearer ") for v in headers.values() if len(v) > 12]
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, follow_redirects=False
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def request(
        self, method: str, path: str, *, params: Any = None, body: Any = None
    ) -> dict[str, Any]:
        """The JSON object answered; numbers with a fraction as Decimal, never float."""
        backoff = 1.0
        for attempt in range(self.max_retries + 1):
            self.requests += 1
            try:
                response = self._client.request(method, path, params=params, json=body)
            except httpx.HTTPError as e:
                if attempt == self.max_retries:
                    raise ApiError(f"{self.provider}: {path}: {type(e).__name__}: {e}") from None
                time.sleep(min(backoff, self.max_wait))
                backoff *= 2
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                wait = retry_after_seconds(response.headers.get("retry-after"), backoff)
                time.sleep(min(wait, self.max_wait))
                backoff *= 2
                continue
            return self._json(path, response)
        raise AssertionError("unreachable")

    def get(self, path: str, params: Any = None) -> dict[str, Any]:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("POST", path, body=body)

    def _json(self, path: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            message = _error_message(response)
            for secret in self._secrets:
                message = message.replace(secret, "[key]")
            raise ApiError(
                f"{self.provider}: {path} answered {response.status_code}{message}"
                + (" (is the admin key right?)" if response.status_code in (401, 403) else ""),
                response.status_code,
            )
        try:
            data = json.loads(response.content, parse_float=Decimal)
        except (ValueError, RecursionError):
            raise ApiError(f"{self.provider}: {path} did not answer JSON") from None
        if not isinstance(data, dict):
            raise ApiError(f"{self.provider}: {path} answered {type(data).__name__}, not an object")
        return data


def _error_message(response: httpx.Response) -> str:
    """The provider's own error message, short; both OpenAI's and Anthropic's shapes."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    message = error.get("message") if isinstance(error, dict) else error
    return f": {str(message)[:200]}" if message else ""


def paged(client: ApiClient, path: str, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """Each page of `path`'s buckets, following `next_page` while `has_more` (the paging of
    both OpenAI's and Anthropic's admin APIs)."""
    page = None
    while True:
        data = client.get(path, {**params, **({"page": page} if page else {})})
        buckets = data.get("data")
        if not isinstance(buckets, list):
            raise ApiError(f"{client.provider}: {path} answered without a data list")
        yield [b for b in buckets if isinstance(b, dict)]
        page = data.get("next_page")
        if not data.get("has_more") or not page:
            return
