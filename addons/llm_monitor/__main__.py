"""`python -m llm_monitor`: the command line, for child processes of `llm-monitor up`."""

from llm_monitor.cli import cli

cli(prog_name="llm-monitor")
