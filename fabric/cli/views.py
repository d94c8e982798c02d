"""Read-only CLI commands that show the hub's state as rich tables."""

from __future__ import annotations

import datetime as dt
import os
import time

import click
from rich.console import Console
from rich.table import Table

from fabric import config, errors
from fabric.states import TaskState

HUB_OPTION = click.option(
    "--hub", "hub", default=lambda: os.environ.get("FABRIC_HUB", config.DEFAULT_HUB_ADDRESS),
    show_default="$FABRIC_HUB or " + config.DEFAULT_HUB_ADDRESS, help="hub address host:port",
)
console = Console()


def _client(hub: str):  # noqa: ANN202 - imported lazily to keep `fabric --help` fast
    from fabric.client import Client

    return Client(hub, retry_timeout=3.0)


def _guard(fn):  # noqa: ANN001, ANN202
    """Print Fabric errors as one line and exit 1, instead of a traceback."""

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return fn(*args, **kwargs)
        except errors.FabricError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _ago(ts: float) -> str:
    if not ts:
        return "-"
    secs = max(0.0, time.time() - ts)
    if secs < 60:
        return f"{secs:.0f}s ago"
    if secs < 3600:
        return f"{secs / 60:.0f}m ago"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@click.command()
@HUB_OPTION
@_guard
def endpoints(hub: str) -> None:
    """Endpoints known to the hub: who is online, free slots, queue."""
    with _client(hub) as c:
        rows = c.endpoints()
    table = Table(title=f"endpoints at {hub}")
    numeric = ("workers", "free", "queued", "in flight", "done", "load", "latency", "bandwidth",
               "speed", "$/core-h")
    for col in ("name", "id", "online", "workers", "free", "queued", "in flight", "done",
                "load", "latency", "bandwidth", "speed", "$/core-h", "python", "gpus", "host", "last seen"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for e in rows:
        caps = e.capabilities
        table.add_row(
            e.name, e.endpoint_id, "[green]yes[/]" if e.online else "[red]no[/]",
            str(caps.workers if caps else "-"), str(e.free_slots), str(e.queued_at_hub),
            str(e.in_flight), str(e.completed), f"{e.load:.2f}",
            f"{e.latency_s * 1000:.1f} ms" if e.latency_s else "-",
            f"{e.bandwidth_Bps / 1e6:,.0f} MB/s" if e.bandwidth_Bps else "-",
            f"{caps.relative_speed:g}" if caps else "-",
            f"{caps.cost_per_core_hour:g}" if caps else "-",
            caps.python_version if caps else "-", str(caps.gpus if caps else 0),
            caps.hostname if caps else "-", "now" if e.online else _ago(e.last_seen),
        )
    console.print(table)


STATE_STYLE = {TaskState.SUCCESS: "green", TaskState.FAILED: "red", TaskState.CANCELLED: "yellow",
               TaskState.QUEUED: "cyan", TaskState.DISPATCHED: "blue", TaskState.PURGED: "dim"}


@click.command()
@HUB_OPTION
@click.option("--limit", default=20, show_default=True, help="newest N tasks")
@click.option("--state", type=click.Choice([s.name.lower() for s in TaskState]), default=None,
              help="only tasks in this state")
@click.option("--endpoint", default=None, help="only tasks on this endpoint (name or id)")
@_guard
def tasks(hub: str, limit: int, state: str | None, endpoint: str | None) -> None:
    """Recent tasks: state, where they ran and why."""
    with _client(hub) as c:
        rows = c.tasks(limit, TaskState[state.upper()] if state else None, endpoint)
    table = Table(title=f"newest {len(rows)} tasks at {hub}")
    for col in ("task", "function", "state", "endpoint", "routed because", "submitted",
                "runtime", "error"):
        table.add_column(col)
    for t in rows:
        style = STATE_STYLE.get(t.state, "")
        table.add_row(
            t.task_id[:12], t.function_name or t.function_id[:12],
            f"[{style}]{t.state.name.lower()}[/]", t.endpoint_name or "-", t.route_reason or "-",
            _ago(t.submitted_at), f"{t.runtime_s * 1000:.1f} ms" if t.runtime_s else "-",
            t.error_type or "",
        )
    console.print(table)


@click.command()
@HUB_OPTION
@_guard
def status(hub: str) -> None:
    """The hub at a glance: version, uptime, endpoints, tasks by state."""
    with _client(hub) as c:
        s = c.status()
    table = Table(title=f"hub {hub}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("version", s.version)
    table.add_row("uptime", f"{s.uptime_s:.0f} s")
    table.add_row("endpoints online", f"{s.endpoints_online} / {s.endpoints_total}")
    table.add_row("functions", str(s.functions))
    for state in TaskState:
        table.add_row(f"tasks {state.name.lower()}", str(s.tasks_by_state.get(state.name, 0)))
    table.add_row("big payloads stored", f"{s.blobs} ({s.blob_bytes / 2**20:,.1f} MiB)")
    table.add_row("store", s.store_path)
    console.print(table)
