"""`llm-monitor proxy`, `up`, `dashboard`, `demo` and `import-spool`: running the proxy and the
dashboard, and recovering spooled rows."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import uvicorn

from llm_monitor.cli.common import get_db, handle_errors
from llm_monitor.dashboard import DEFAULT_PORT as DASHBOARD_PORT
from llm_monitor.dashboard import make_datasette
from llm_monitor.demo.setup import DEMO_ORGS, create_demo_db, wait_until_recording
from llm_monitor.demo.standin import StandinProvider
from llm_monitor.demo.traffic import PROVIDERS, send_traffic
from llm_monitor.errors import DomainError
from llm_monitor.proxy import master, tls, workers
from llm_monitor.proxy.launch import DEFAULT_LISTENERS, busy_ports, parse_listen, proxy_command
from llm_monitor.store.maintenance import import_spool as import_spool_file


def listen_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list:
    try:
        return [parse_listen(value) for value in values]
    except DomainError as e:
        raise click.BadParameter(str(e)) from None


notify_urls_option = click.option(
    "--notify-urls",
    is_flag=True,
    help="Let organisations' admins add, remove and test their notification URLs on the "
    "dashboard. The server then sends to any address an admin gives (an internal one too): "
    "allow it where admins are trusted. Without it, `llm-monitor notify` sets them.",
)


# Shared with `doctor`, which checks the ports `up` will take.
dashboard_port_option = click.option(
    "--dashboard-port",
    type=click.IntRange(1, 65535),
    default=DASHBOARD_PORT,
    show_default=True,
    help="Port of the dashboard (Datasette), on --host.",
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="NAME=UPSTREAM@PORT",
    callback=listen_option,
    help="Add a listener (repeatable), e.g. groq=https://api.groq.com@8084; "
    "a NAME of the defaults replaces that default.",
)
@click.option(
    "--no-defaults", is_flag=True, help="Do not start the four default provider listeners."
)
@click.option(
    "--log-requests/--no-log-requests",
    default=True,
    show_default=True,
    help="One log line per request (never with credentials).",
)
@click.option(
    "--workers",
    "worker_count",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Proxy processes behind HAProxy (apt-get install haproxy), for more than one core.",
)
@dashboard_port_option
@click.option("--no-dashboard", is_flag=True, help="Run the proxy without the dashboard.")
@click.option(
    "--allow-signup", is_flag=True, help="Let anyone create an organisation at /-/signup."
)
@notify_urls_option
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (every worker's, added up).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve the listeners and the dashboard over HTTPS (HAProxy terminates TLS): a PEM "
    "file with the certificate chain and its private key.",
)
@click.argument("proxy_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@handle_errors
def up(
    ctx: click.Context,
    host: str,
    listen: list[tuple[str, str, int]],
    no_defaults: bool,
    log_requests: bool,
    worker_count: int,
    dashboard_port: int,
    no_dashboard: bool,
    allow_signup: bool,
    notify_urls: bool,
    metrics_port: int | None,
    tls_cert: str | None,
    proxy_args: tuple[str, ...],
) -> None:
    """Run the proxy (`llm-monitor proxy`, one listener per provider) and the dashboard
    next to it (http://127.0.0.1:8001).

    By default: OpenAI on 8080, Anthropic on 8081, Gemini on 8082 and xAI on 8083.
    Names other than openai, anthropic, gemini and xai are read as OpenAI-compatible.
    Arguments after `--` go to `llm-monitor proxy`, e.g.
    `llm-monitor up -- --set tcp_timeout=900`. With --workers 2 or more, SIGHUP restarts
    the workers one at a time without dropping a call.
    """
    listeners = {} if no_defaults else dict(DEFAULT_LISTENERS)
    for name, upstream, port in listen:
        listeners[name] = (upstream, port)
    if not listeners:
        raise click.UsageError("no listener: give --listen or drop --no-defaults")
    ports = [port for _, port in listeners.values()]
    if len(set(ports)) != len(ports):
        raise click.BadParameter("two listeners on one port", param_hint="--listen")
    wanted = {name: port for name, (_, port) in listeners.items()}
    if not no_dashboard:
        wanted["dashboard"] = dashboard_port
    if metrics_port is not None:
        wanted["metrics"] = metrics_port
    if len(set(wanted.values())) != len(wanted):
        raise click.UsageError("two of the listeners, the dashboard and the metrics share a port")
    if tls_cert is not None:
        try:
            tls.check_pem(Path(tls_cert).read_bytes())
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="--tls-cert") from None
        tls_cert = str(Path(tls_cert).resolve())
    db_path = ctx.obj["db_path"]
    get_db(ctx).conn.close()  # it exists, and its schema is current before any worker starts
    if busy := busy_ports(host, wanted):
        raise click.ClickException(f"cannot start: {busy[0]}")
    scheme = "https" if tls_cert else "http"
    for name, (upstream, port) in listeners.items():
        click.echo(f"{name:>10}: {scheme}://{host}:{port} -> {upstream}", err=True)
    # Each option is set once: a second --set of it is refused.
    extra = ["--set", f"monitor_log_requests={str(log_requests).lower()}", *proxy_args]
    also = []
    behind = None  # with TLS: the dashboard's public port and its own, on 127.0.0.1
    if not no_dashboard:
        click.echo(f"{'dashboard':>10}: {scheme}://{host}:{dashboard_port}/", err=True)
        ports = {name: port for name, (_, port) in listeners.items()}
        if tls_cert:
            behind = (dashboard_port, workers.free_ports(1, avoid=wanted.values())[0])
            command = dashboard_command(
                db_path, "127.0.0.1", behind[1], allow_signup, ports, https_listeners=True
            )
        else:
            command = dashboard_command(db_path, host, dashboard_port, allow_signup, ports)
        if notify_urls:
            command.append("--notify-urls")
        also.append([*command, "--no-banner"])
    balanced = worker_count > 1 or tls_cert is not None
    if metrics_port is not None and balanced:  # one proxy says it itself
        click.echo(f"{'metrics':>10}: http://{host}:{metrics_port}/metrics", err=True)
    if balanced:
        click.echo(f"{worker_count} worker(s) behind HAProxy", err=True)
        found = [workers.Listener(n, u, p) for n, (u, p) in listeners.items()]
        try:
            status = workers.run(
                db_path,
                host,
                found,
                worker_count,
                extra,
                also,
                metrics_port=metrics_port,
                tls_cert=tls_cert,
                dashboard=behind,
            )
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        sys.exit(status)
    if metrics_port is not None:
        extra += ["--set", f"monitor_metrics_port={metrics_port}"]
        extra += ["--set", f"monitor_metrics_host={host}"]
    args = proxy_command(db_path, host, listeners)
    if not also:
        os.execv(args[0], [*args, *extra])
    sys.exit(workers.supervise([[*args, *extra], *also]))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--mode",
    "modes",
    multiple=True,
    metavar="MODE",
    help="A listener, as mitmdump's --mode (repeatable), e.g. "
    "reverse:https://api.openai.com@127.0.0.1:8080.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="An option, as mitmdump's --set (repeatable), e.g. monitor_providers=8084:groq.",
)
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option("-v", "--verbose", is_flag=True, help="Log everything, debug lines included.")
@click.pass_context
def proxy(
    ctx: click.Context,
    modes: tuple[str, ...],
    settings: tuple[str, ...],
    quiet: bool,
    verbose: bool,
) -> None:
    """Run one proxy process: mitmproxy's proxy core with only the addons a reverse proxy
    for LLM APIs needs, and the monitor addon (`up` runs this, once per worker).

    The same --mode and --set lines as `mitmdump -s addons/monitor.py` take, e.g.
    `llm-monitor proxy --mode reverse:https://api.openai.com@127.0.0.1:8080`. The database
    is --db's unless --set monitor_db=FILE says otherwise.
    """
    options = list(settings)
    if not any(s.startswith("monitor_db=") for s in options):
        options.insert(0, f"monitor_db={ctx.obj['db_path']}")
    if quiet or verbose:
        options.append(f"termlog_verbosity={'error' if quiet else 'debug'}")
    sys.exit(master.run(modes, options))


def dashboard_command(
    db_path: str,
    host: str,
    port: int,
    allow_signup: bool = False,
    listeners: dict[str, int] | None = None,
    *,
    https_listeners: bool = False,
) -> list[str]:
    """`llm-monitor dashboard` as a child process of `up`."""
    cli_args = ["--db", db_path, "dashboard", "--host", host, "--port", str(port)]
    if allow_signup:
        cli_args.append("--allow-signup")
    if https_listeners:
        cli_args.append("--https-listeners")
    for name, listener_port in (listeners or {}).items():
        cli_args += ["--listener", f"{name}={listener_port}"]
    return [sys.executable, "-m", "llm_monitor", *cli_args]


def listener_ports(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    found = {}
    for value in values:
        name, _, port = value.partition("=")
        if not name or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{value!r} is not NAME=PORT")
        found[name] = int(port)
    return found


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True)
@click.option(
    "--root", is_flag=True, help="Print a one-time login address for Datasette's root (an admin)."
)
@click.option(
    "--secret",
    envvar="DATASETTE_SECRET",
    help="Signs login cookies; give one to keep sessions across restarts (default: random).",
)
@click.option(
    "--allow-signup", is_flag=True, help="Let anyone create an organisation at /-/signup."
)
@click.option(
    "--listener",
    "listeners",
    multiple=True,
    metavar="NAME=PORT",
    callback=listener_ports,
    help="A proxy listener the token pages' SDK snippets point at (repeatable; default: "
    "openai=8080, anthropic=8081, gemini=8082, xai=8083).",
)
@click.option(
    "--https-listeners",
    is_flag=True,
    help="The listeners serve HTTPS (`up --tls-cert` does this): the snippets say https://.",
)
@notify_urls_option
@click.option("--no-banner", is_flag=True, hidden=True, help="`up` prints the address itself.")
@click.pass_context
@handle_errors
def dashboard(
    ctx: click.Context,
    host: str,
    port: int,
    root: bool,
    secret: str | None,
    allow_signup: bool,
    listeners: dict[str, int],
    https_listeners: bool,
    notify_urls: bool,
    no_banner: bool,
) -> None:
    """Serve the dashboard alone: Datasette over the usage database with the views,
    charts, logins, account pages and REST API configured in datasette_config/."""
    get_db(ctx).conn.close()  # it exists, and its schema is current
    serve_dashboard(
        ctx.obj["db_path"],
        host,
        port,
        root=root,
        secret=secret,
        allow_signup=allow_signup,
        listeners=listeners,
        https_listeners=https_listeners,
        notify_urls=notify_urls,
        banner=not no_banner,
    )


def serve_dashboard(
    db_path: str,
    host: str,
    port: int,
    *,
    root: bool,
    secret: str | None,
    allow_signup: bool = False,
    listeners: dict[str, int] | None = None,
    https_listeners: bool = False,
    notify_urls: bool = False,
    banner: bool = True,
) -> None:
    datasette = make_datasette(
        db_path,
        secret=secret,
        allow_signup=allow_signup,
        listeners=listeners,
        https_listeners=https_listeners,
        notify_urls=notify_urls,
    )
    asyncio.run(datasette.invoke_startup())
    if root:
        datasette._root_token = secrets.token_hex(32)  # what `datasette --root` does
        click.echo(
            f"admin (root) login: http://{host}:{port}/-/auth-token?token={datasette._root_token}",
            err=True,
        )
    if banner:
        click.echo(f"dashboard: http://{host}:{port}/", err=True)
    uvicorn.run(datasette.app(), host=host, port=port, log_level="warning")


@click.command()
@click.option(
    "--file",
    "demo_db",
    default="llm-monitor-demo.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The demo's own database, made anew each run.",
)
@click.option("--requests", default=400, show_default=True, help="Requests sent through the proxy.")
@click.option(
    "--history-days",
    type=click.IntRange(0, 90),
    default=14,
    show_default=True,
    help="Days of generated history written before the live traffic, so charts have a shape.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--dashboard-port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True
)
@click.option("--no-serve", is_flag=True, help="Fill the database, then exit.")
@handle_errors
def demo(
    demo_db: str,
    requests: int,
    history_days: int,
    host: str,
    dashboard_port: int,
    no_serve: bool,
) -> None:
    """See every view filled, without a provider key.

    Starts a local stand-in provider (synthetic OpenAI, Anthropic and Gemini answers, JSON
    and streams), the proxy in front of it, and two organisations' varied traffic through
    it; then serves the dashboard with the proxy still running, until Ctrl-C.
    """
    made = create_demo_db(demo_db, history_days)
    if history_days:
        click.echo(
            f"history: {made.history_rows:,} generated rows over {history_days} days", err=True
        )
    ports = workers.free_ports(3)
    with StandinProvider(host) as standin, tempfile.TemporaryDirectory() as tmp:
        listeners = {p: (standin.url, port) for p, port in zip(PROVIDERS, ports, strict=True)}
        log = Path(tmp) / "proxy.log"
        with log.open("wb") as out:
            command = proxy_command(demo_db, host, listeners)
            proxy = subprocess.Popen(
                [*command, "--set", "monitor_log_requests=false"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_recording(proxy, log)
            endpoints = {name: f"http://{host}:{port}" for name, (_, port) in listeners.items()}
            traffic = send_traffic(endpoints, made.tokens, requests=requests)
            click.echo(
                f"traffic: {traffic.sent} requests through the proxy, {traffic.ok} answered, "
                f"{traffic.errors} errors",
                err=True,
            )
            if no_serve:
                return
            for name, (_, port) in listeners.items():
                click.echo(f"{name:>10}: http://{host}:{port} (stand-in provider)", err=True)
            click.echo(f"monitor token (Acme Corp): {made.tokens[0]}", err=True)
            for name, (email, password, _) in DEMO_ORGS.items():
                click.echo(f"log in as {name}: {email} / {password}", err=True)
            serve_dashboard(demo_db, host, dashboard_port, root=True, secret=None)
        finally:
            proxy.terminate()  # it writes what it has queued before it exits
            proxy.wait(30)


@click.command("import-spool")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
@handle_errors
def import_spool(ctx: click.Context, file: str) -> None:
    """Load usage rows the proxy spooled to JSONL when the database could not be written."""
    count = import_spool_file(get_db(ctx), file)
    done = Path(file).with_suffix(".imported")
    Path(file).rename(done)
    click.echo(f"imported {count} rows from {file} (renamed to {done.name})")
