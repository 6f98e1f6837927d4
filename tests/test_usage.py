"""The usage record's timestamps: one second formatted once, the same text as formatting
each time."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from llm_monitor.usage import utc_timestamp


def formatted(epoch: float) -> str:
    seconds = int(epoch)
    when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{int((epoch - seconds) * 1000):03d}Z"


@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800), min_size=1, max_size=50))
def test_utc_timestamp_equals_formatting_each_time(epochs: list[float]) -> None:
    # Sorted and unsorted, repeated seconds and new ones: the cached second never leaks.
    for epoch in [*epochs, *sorted(epochs), *epochs]:
        assert utc_timestamp(epoch) == formatted(epoch)
