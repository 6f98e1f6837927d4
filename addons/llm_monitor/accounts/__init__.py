"""Accounts: organisations, their dashboard logins, monitor and dashboard tokens."""
