"""Spend controls: budgets, rate limits, the leases that let several workers share them,
alerts and their notifications.

The proxy asks `gate.Gate` per request, in memory; everything that touches the database
runs on background threads (`gate`, `alerts`) or in the CLI.
"""
