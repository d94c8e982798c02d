"""The `fabric` command line: run a hub or an endpoint, and look at them.

    fabric hub --port 50051
    fabric endpoint start laptop --hub 127.0.0.1:50051 --workers 4
    fabric endpoints | fabric tasks | fabric status
"""

from __future__ import annotations

import logging
import os
import sys

import click

from fabric import __version__, config

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
@click.option("--store", "store_path", default=None, help="SQLite file  [default: ~/.fabric/hub.db]")
@click.option("--max-payload", default=config.DEFAULT_MAX_PAYLOAD, show_default=True, type=int,
              help="largest function body, argument or result in bytes")
@click.option("--heartbeat", default=config.DEFAULT_HEARTBEAT_PERIOD_S, show_default=True,
              type=float, help="heartbeat period in seconds")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def hub(host: str, port: int, store_path: str | None, max_payload: int, heartbeat: float,
        verbose: int) -> None:
    """Run a hub in the foreground (Ctrl-C stops it cleanly)."""
    from fabric.hub import HubConfig, run_hub

    _logging(verbose)
    cfg = HubConfig(host=host, port=port, max_payload=max_payload, heartbeat_period=heartbeat)
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
@click.option("--prefetch", default=0, show_default=True, type=int,
              help="tasks to hold beyond what keeps the workers busy")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
def endpoint_start(name: str, hub: str, workers: int, prefetch: int, verbose: int) -> None:
    """Start endpoint NAME in the foreground; it dials out to the hub and reconnects."""
    from fabric.endpoint import EndpointConfig, run_endpoint

    _logging(verbose)
    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    run_endpoint(EndpointConfig(name=name, hub=hub, workers=workers, prefetch=prefetch))


main.add_command(endpoints)
main.add_command(tasks)
main.add_command(status)
