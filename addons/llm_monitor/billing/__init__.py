"""The providers' own figures next to the proxy's: usage and cost APIs, console exports, and
their reconciliation with what the proxy recorded.

`openai`, `anthropic`, `xai` read the providers' admin APIs, `csv_exports` their console
and billing exports; `ledger` holds what they share (the tables, the buckets, the cursors,
the keys and links); `reconcile` compares; `sources` remembers what `billing sync` runs.
"""
