"""How much JSON the event loop may parse at once.

`json.loads` holds the GIL for the whole parse, so a thread would not spare the event
loop: a body is parsed only when it is small enough in what costs, its number of values.
Counting commas is a cheap upper bound of that (C speed, no allocation); 200,000 values
parse in about 30 ms. A body shorter than that many bytes holds fewer commas, and is not
counted: counting a 50 KB prompt took 24 µs, as long as parsing it.
"""

from __future__ import annotations

MAX_JSON_ITEMS = 200_000


def json_too_complex(data: bytes | str) -> str | None:
    """Why `data` must not be parsed on the event loop, or None when it may be."""
    if len(data) <= MAX_JSON_ITEMS:
        return None
    items = data.count(b"," if isinstance(data, bytes) else ",")
    if items > MAX_JSON_ITEMS:
        return f"JSON with more than {MAX_JSON_ITEMS} values not parsed"
    return None
