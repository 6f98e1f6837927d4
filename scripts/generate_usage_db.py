"""Write a large synthetic usage database, to time dashboard queries on realistic data.

\b
    .venv/bin/python scripts/generate_usage_db.py /tmp/llm-monitor-5m.db
    .venv/bin/python scripts/generate_usage_db.py small.db --rows 20000 --orgs 5 --days 10

Creates the schema and loads the shipped prices (as `llm-monitor init` does), then ORGS
organisations with 1-5 monitor tokens each and ROWS usage rows over the DAYS up to now,
priced with the real price book (llm_monitor.demo.synthetic), then rebuilds the rollups and
runs ANALYZE. The rows end at the time of the run; the same --seed gives the same
mix of organisations, models and habits.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import click

from llm_monitor.demo.synthetic import generate
from llm_monitor.store.database import open_db


@click.command(help=__doc__)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rows", default=5_000_000, show_default=True, help="Usage rows to write.")
@click.option("--orgs", default=50, show_default=True, help="Organisations to create.")
@click.option("--days", default=90, show_default=True, help="Days of history, up to now.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random choice.")
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
def main(path: Path, rows: int, orgs: int, days: int, seed: int, force: bool) -> None:
    if path.exists() and not force:
        raise click.ClickException(f"{path} already exists (pass --force to replace it)")
    for stale in (path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    bar = click.progressbar(length=rows, label="Writing usage rows", file=sys.stderr)

    def progress(written: int) -> None:
        bar.update(written)
        if bar.pos >= rows:
            bar.render_finish()
            click.echo("Rebuilding the rollups and running ANALYZE...", err=True)

    try:
        db = open_db(path)
        report = generate(db, orgs=orgs, days=days, rows=rows, seed=seed, progress=progress)
        db.conn.close()
    except (ValueError, sqlite3.Error, OSError) as e:
        raise click.ClickException(str(e)) from None
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    click.echo(
        f"{report.rows:,} usage rows for {report.orgs} organisations ({report.tokens} monitor "
        f"tokens), {report.first_ts} to {report.last_ts}\n"
        f"{path}: {human_size(size)}, written in {time.perf_counter() - started:.1f} s"
    )


def human_size(size: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


if __name__ == "__main__":
    main()
