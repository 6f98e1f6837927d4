"""Running a feed: one paginated report of one provider API (OpenAI's completions usage,
Anthropic's cost report, ...), day buckets in ascending order, page by page.

Each page is written in one transaction together with the cursor, so an import killed
at any moment has written whole days and knows the last one; run again, it resumes with
the next day. Days in the trailing window are re-pulled by every run and stored as
provisional until they are older than it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlite_utils import Database

from llm_monitor.billing import ledger
from llm_monitor.billing.http import ApiClient, ApiError
from llm_monitor.errors import Invalid

Progress = Callable[[int], None]
# Given the number of days to import, a context that yields the function told each day done
# (the CLI's progress bar).
ProgressFactory = Callable[[int], AbstractContextManager[Progress]]


class Feed(Protocol):
    name: str  # the cursor's key and the rows' `source`, e.g. "openai:usage/completions"

    def pages(
        self, client: ApiClient, start: dt.date, end: dt.date
    ) -> Iterator[list[ledger.Bucket]]:
        """Day buckets from `start` to `end` (excluded), ascending, a page at a time."""
        ...


@dataclass(frozen=True, slots=True)
class FeedResult:
    feed: str
    start: dt.date
    end: dt.date
    resumed: bool
    days: int
    usage_rows: int
    cost_rows: int
    skipped: str | None = None  # why nothing was imported (an endpoint the API lacks)


@dataclass(frozen=True, slots=True)
class ImportReport:
    provider: str
    keys: int  # keys in the provider's key list, stored for naming rows
    feeds: list[FeedResult]
    warnings: tuple[str, ...] = ()


def run_feeds(
    db: Database,
    client: ApiClient,
    feeds: Sequence[Feed],
    *,
    since: dt.date | None,
    today: dt.date,
    trailing_days: int = ledger.TRAILING_DAYS,
    progress: ProgressFactory | None = None,
) -> list[FeedResult]:
    """Every feed in turn, each from where its cursor says, under one progress count."""
    if since is not None and since > today:
        raise Invalid(f"--since {since} is in the future (today is {today}, UTC)")
    end = today + dt.timedelta(days=1)
    plans = [
        (feed, *ledger.first_day(ledger.load_cursor(db, feed.name), since, today, trailing_days))
        for feed in feeds
    ]
    total = sum(max((end - start).days, 0) for _, start, _ in plans)
    keys = ledger.KeyBook(db)
    results = []
    with progress(total) if progress else contextlib.nullcontext(None) as advance:
        for feed, start, resumed in plans:
            results.append(
                run_feed(db, client, feed, start, resumed, end, today, trailing_days, keys, advance)
            )
    return results


def run_feed(
    db: Database,
    client: ApiClient,
    feed: Feed,
    start: dt.date,
    resumed: bool,
    end: dt.date,
    today: dt.date,
    trailing_days: int,
    keys: ledger.KeyBook,
    progress: Progress | None,
) -> FeedResult:
    with db.atomic():
        ledger.begin_run(db, feed.name, start, end, resumed)
    provisional_from = today - dt.timedelta(days=trailing_days)
    imported_at = ledger.now_timestamp()
    days = usage_rows = cost_rows = 0
    try:
        pages = iter(feed.pages(client, start, end))
        first = next(pages, None)
    except ApiError as e:
        if e.status != 404:
            raise
        # An endpoint this API (or its version) does not have: nothing to import.
        return FeedResult(feed.name, start, end, resumed, 0, 0, 0, skipped=str(e))
    for buckets in itertools.chain([first] if first is not None else [], pages):
        buckets = [b for b in buckets if start <= b.day < end]
        if not buckets:
            continue
        with db.atomic():
            for bucket in buckets:
                ledger.write_bucket(
                    db,
                    feed.name,
                    bucket,
                    provisional=bucket.day >= provisional_from,
                    imported_at=imported_at,
                    keys=keys,
                )
                usage_rows += len(bucket.usage)
                cost_rows += len(bucket.costs)
            ledger.advance(db, feed.name, max(b.day for b in buckets))
        days += len(buckets)
        if progress is not None:
            progress(len(buckets))
    with db.atomic():
        ledger.finish_run(db, feed.name, end - dt.timedelta(days=1))
    return FeedResult(feed.name, start, end, resumed, days, usage_rows, cost_rows)
