"""The `fabric` command line: run a hub or an endpoint, and look at them.

    fabric hub --port 50051
    fabric endpoint start laptop --hub 127.0.0.1:50051 --workers 4
    fabric endpoint configure cluster ; fabric endpoint start cluster --detach
    fabric endpoint list | restart NAME | delete NAME
    fabric endpoint simulate --hub 127.0.0.1:50051 --count 1000 --workers 10
    fabric endpoints | fabric tasks | fabric status
    fabric token create --user alice | fabric endpoint share laptop --with bob
    fabric bench durations --quick
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from fabric import __version__, config

from fabric.cli.access import checked_store, endpoint_share, function, token
from fabric.cli.manage import engine_options, register as _register_management
from fabric.cli.views import HUB_OPTION, endpoints, status, tasks


def _logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fabric")
def main() -> None:
    """Fabric: register a Python function once, run it on any endpoint."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=config.DEFAULT_PORT, show_default=True, type=int,
              help="port to listen on (0 = any free port)")
@click.option("--store", "store_path", default=None, callback=checked_store,
              help="SQLite file (or sqlite:///PATH)  [default: ~/.fabric/hub.db]")
@click.option("--max-payload", default=config.DEFAULT_MAX_PAYLOAD, show_default=True, type=int,
              help="largest argument or result in bytes (those over 1 MiB move in chunks "
                   "and are kept as files beside the store); function bodies stop at 32 MiB")
@click.option("--heartbeat", default=config.DEFAULT_HEARTBEAT_PERIOD_S, show_default=True,
              type=click.FloatRange(min=0.01), help="heartbeat period in seconds")
@click.option("--heartbeat-misses", default=config.DEFAULT_HEARTBEAT_MISSES, show_default=True,
              type=click.IntRange(min=1),
              help="a link silent for this many periods is lost and its tasks requeued")
@click.option("--retention", default=config.DEFAULT_RETENTION_S, show_default=True,
              type=click.FloatRange(min=0), help="seconds to keep results after a client got them")
@click.option("--max-age", default=config.DEFAULT_MAX_AGE_S, show_default=True,
              type=click.FloatRange(min=0), help="seconds to keep results nobody collected")
@click.option("--max-queued-per-user", default=config.DEFAULT_MAX_QUEUED_PER_USER,
              show_default=True, type=click.IntRange(min=1),
              help="unfinished tasks per user; more submissions wait (clients retry) until some finish")
@click.option("--max-stored-per-user", default=config.DEFAULT_MAX_STORED_PER_USER,
              show_default=True, type=click.IntRange(min=0),
              help="bytes of uploaded arguments per user (tasks not finished, uploads not "
                   "used yet); more uploads wait (clients retry) until some finish; 0 = no cap")
@click.option("--blob-ttl", default=config.DEFAULT_ORPHAN_BLOB_TTL_S, show_default=True,
              type=click.FloatRange(min=0),
              help="seconds an uploaded payload may wait for the task that uses it")
@click.option("--no-auth", is_flag=True,
              help="local experiments only: no tokens, everything belongs to one user; "
                   "loopback only")
@click.option("--tls-cert", default="", help="PEM certificate chain: serve TLS (with --tls-key)")
@click.option("--tls-key", default="", help="PEM private key of --tls-cert")
@click.option("--handshake-timeout", default=config.DEFAULT_HANDSHAKE_TIMEOUT_S,
              show_default=True, type=click.FloatRange(min=0.1),
              help="close a connection that has not finished its handshake in this many seconds")
@click.option("--idle-timeout", default=config.DEFAULT_IDLE_CONNECTION_S, show_default=True,
              type=click.FloatRange(min=0.1),
              help="close a connection with no call for this many seconds (clients reconnect)")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def hub(host: str, port: int, store_path: str | None, max_payload: int, heartbeat: float,
        heartbeat_misses: int, retention: float, max_age: float, max_queued_per_user: int,
        max_stored_per_user: int, blob_ttl: float, no_auth: bool, tls_cert: str,
        tls_key: str, handshake_timeout: float, idle_timeout: float, verbose: int) -> None:
    """Run a hub in the foreground (Ctrl-C or SIGTERM stops it cleanly).

    Every call needs a token (`fabric token create`), unless --no-auth."""
    from fabric.credentials import is_loopback
    from fabric.hub import HubConfig, run_hub

    _logging(verbose)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if no_auth and not is_loopback(host):
        raise click.UsageError(f"--no-auth binds loopback only, not {host}")
    if no_auth:
        logging.getLogger("fabric.hub").warning(
            "--no-auth: ANY local process can run code as this hub's single user; "
            "for local experiments only")
    if not tls_cert and not is_loopback(host):
        logging.getLogger("fabric.hub").warning(
            "!!! listening on %s WITHOUT TLS: tokens, functions and results cross the network "
            "in the clear. Use --tls-cert/--tls-key. !!!", host)
    cfg = HubConfig(host=host, port=port, max_payload=max_payload, heartbeat_period=heartbeat,
                    heartbeat_misses=heartbeat_misses, retention_s=retention, max_age_s=max_age,
                    max_queued_per_user=max_queued_per_user, orphan_blob_ttl_s=blob_ttl,
                    max_stored_per_user=max_stored_per_user,
                    auth=not no_auth, tls_cert=tls_cert, tls_key=tls_key,
                    handshake_timeout_s=handshake_timeout, idle_connection_s=idle_timeout)
    if store_path:
        cfg.store_path = store_path
    run_hub(cfg)


@main.group()
def endpoint() -> None:
    """Run and manage endpoints."""


@endpoint.command("start")
@click.argument("name")
@HUB_OPTION
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, type=int,
              help="worker processes")
@click.option("--prefetch", default=0, show_default=True, type=click.IntRange(min=0),
              help="tasks to hold beyond what keeps the workers busy")
@click.option("--max-retries", default=config.DEFAULT_MAX_RETRIES, show_default=True,
              type=click.IntRange(0, 100),
              help="reruns of a task whose worker died, unless the task sets its own")
@click.option("--output-tail", default=config.DEFAULT_OUTPUT_TAIL_BYTES, show_default=True,
              type=click.IntRange(min=0),
              help="bytes of each task's output (stdout, stderr) kept with it: the last ones; "
                   "the rest is dropped, never logged")
@click.option("--heartbeat-misses", default=config.DEFAULT_HEARTBEAT_MISSES, show_default=True,
              type=click.IntRange(min=1), help="reconnect after the hub is silent this many periods")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="on SIGTERM / `fabric endpoint stop`: seconds to let running tasks finish")
@click.option("--state-dir", default=None,
              help="outbox and pid file  [default: ~/.fabric/endpoints/NAME]")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="relative speed, for routing until runtimes here are measured")
@click.option("--cost", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="cost of a core-hour here (any currency), for the cheapest policy")
@click.option("--slowdown", default=1.0, show_default=True, type=click.FloatRange(min=1),
              help="testing: every task takes this many times as long (a slower machine)")
@click.option("--token", default=None,
              help="endpoint token  [default: $FABRIC_ENDPOINT_TOKEN, else STATE_DIR/token, "
                   "else ~/.fabric/endpoint-token]")
@click.option("--tls-ca", default=None, help="CA certificate (PEM) to verify a TLS hub "
                                             "[default: $FABRIC_TLS_CA]")
@click.option("--allow-function", "allow_functions", multiple=True,
              help="run only this function id (repeatable; with --allow-owner: either)")
@click.option("--allow-owner", "allow_owners", multiple=True,
              help="run only functions registered by this user (repeatable)")
@engine_options
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def endpoint_start(name: str, hub: str, workers: int, prefetch: int, max_retries: int,
                   output_tail: int, heartbeat_misses: int, drain_timeout: float,
                   state_dir: str | None,
                   speed: float, cost: float, slowdown: float, token: str | None,
                   tls_ca: str | None, allow_functions: tuple[str, ...],
                   allow_owners: tuple[str, ...], verbose: int,
                   detach: bool, **engine: Any) -> None:
    """Start endpoint NAME in the foreground; it dials out to the hub and reconnects.

    Settings come from ~/.fabric/endpoints/NAME/config.toml when it exists
    (`fabric endpoint configure NAME`); flags given here override the file.
    SIGTERM (or `fabric endpoint stop NAME`) drains it: no new tasks, unstarted
    ones handed back to the hub, running ones finish; a second signal stops it now."""
    from fabric.cli.manage import build_config, start_detached
    from fabric.endpoint import run_endpoint

    _logging(verbose)
    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    cfg = _exit_on_error(build_config, name, click.get_current_context())
    if detach:
        from fabric.endpoint.outbox import StateDir

        pid, log = _exit_on_error(start_detached, name, sys.argv[1:],
                                  StateDir(name, cfg.state_dir).path)
        click.echo(f"endpoint {name} started (pid {pid}); log: {log}")
        return
    _exit_on_error(run_endpoint, cfg)


@endpoint.command("stop")
@click.argument("name")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds to wait for it to drain before killing it")
@click.option("--state-dir", default=None, help="as given to `fabric endpoint start`")
def endpoint_stop(name: str, timeout: float, state_dir: str | None) -> None:
    """Drain and stop endpoint NAME running on this machine."""
    from fabric.endpoint import stop_endpoint

    pid = _exit_on_error(stop_endpoint, name, timeout, state_dir)
    click.echo(f"endpoint {name} (pid {pid}) stopped")


@endpoint.command("simulate")
@HUB_OPTION
@click.option("--count", default=100, show_default=True, type=click.IntRange(min=1),
              help="simulated endpoints, one stream (and connection) each")
@click.option("--workers", default=10, show_default=True, type=click.IntRange(min=1),
              help="simulated worker slots per endpoint")
@click.option("--runtime", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds each task occupies a slot")
@click.option("--prefetch", default=0, show_default=True, type=click.IntRange(min=0),
              help="tasks to hold beyond the free slots")
@click.option("--min-grant", default=1, show_default=True, type=click.IntRange(min=1),
              help="grant credits only once this many slots are free (1: as the agent does)")
@click.option("--prefix", default="sim", show_default=True, help="endpoint names: PREFIX-00000...")
@click.option("--channels", default=0, show_default=True, type=click.IntRange(min=0),
              help="share K connections among all streams (0: one connection per endpoint)")
@click.option("--connect-timeout", default=120.0, show_default=True,
              type=click.FloatRange(min=1), help="seconds for all of them to connect")
@click.option("--token", default=None,
              help="endpoint token for PREFIX-* [default: $FABRIC_ENDPOINT_TOKEN, else "
                   "~/.fabric/endpoint-token]")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def endpoint_simulate(hub: str, count: int, workers: int, runtime: float, prefetch: int,
                      min_grant: int, prefix: str, channels: int, connect_timeout: float,
                      token: str | None, verbose: int) -> None:
    """Run --count simulated endpoints in this process, for benchmarks: the real
    protocol, one stream each, no worker processes; each task takes --runtime seconds
    on one of --workers slots and returns None. SIGTERM/SIGINT drains them."""
    from fabric.endpoint.simulated import simulate
    from fabric.errors import FabricError

    if verbose:
        _logging(verbose)
    else:  # a thousand reconnecting endpoints would flood the terminal at INFO
        _logging(0)
        logging.getLogger("fabric").setLevel(logging.WARNING)
    try:
        from fabric.names import endpoint_name

        endpoint_name(f"{prefix}-{count - 1:05d}")  # the names the hub will be asked for
        simulate(hub, count, workers, runtime, prefetch=prefetch, min_grant=min_grant,
                 prefix=prefix, channels=channels, connect_timeout=connect_timeout, token=token)
    except (TimeoutError, FabricError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})  # --help goes to the harness
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run a benchmark scenario: `fabric bench SCENARIO [options]` is
    `python -m benchmarks SCENARIO [options]` (`fabric bench --help` lists them)."""
    try:
        from benchmarks.__main__ import main as run_benchmarks
    except ImportError as exc:  # an install without the source tree or the bench extra
        raise click.ClickException(f"the benchmark harness is not importable ({exc}); from a "
                                   "source checkout: pip install -e '.[bench,peers]'") from exc
    run_benchmarks(list(args), prog="fabric bench")


def _exit_on_error(fn: Any, *args: Any) -> Any:
    from fabric.errors import FabricError

    try:
        return fn(*args)
    except FabricError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


endpoint.add_command(endpoint_share)
main.add_command(token)
main.add_command(function)
_register_management(endpoint)
main.add_command(endpoints)
main.add_command(tasks)
main.add_command(status)
