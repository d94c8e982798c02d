"""`fabric endpoint configure | list | delete | restart`, and how `start` combines
its flags with the endpoint's configuration file and runs detached.

Configuration files live in `$FABRIC_HOME/endpoints/NAME/config.toml`
(fabric/endpoint/settings.py). A flag given on the command line wins over the
file; a flag left at its default does not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from fabric import config, names
from fabric.errors import BadConfig, FabricError

#: `fabric endpoint start` option -> EndpointConfig field.
ENDPOINT_FLAGS = {
    "hub": "hub", "workers": "workers", "prefetch": "prefetch", "max_retries": "max_retries",
    "output_tail": "output_tail_bytes",
    "heartbeat_misses": "heartbeat_misses", "drain_timeout": "drain_timeout_s",
    "state_dir": "state_dir", "speed": "relative_speed", "cost": "cost_per_core_hour",
    "slowdown": "slowdown", "token": "token", "tls_ca": "tls_ca",
    "allow_functions": "allow_functions", "allow_owners": "allow_owners",
}
#: `fabric endpoint start` option -> EngineConfig field.
ENGINE_FLAGS = {
    "engine": "kind", "provider": "provider", "init_blocks": "init_blocks",
    "min_blocks": "min_blocks", "max_blocks": "max_blocks", "nodes_per_block": "nodes_per_block",
    "scheduler": "scheduler_address", "strategy_period": "strategy_period_s",
    "max_idletime": "max_idletime_s", "pin_gpus": "pin_gpus",
}
STARTED = re.compile(r"fabric endpoint \S+ started")
DETACH_TIMEOUT_S = 120.0

ENGINE_OPTIONS = [
    click.option("--engine", type=click.Choice(["local", "parsl", "dask"]), default="local",
                 show_default=True, help="what runs the tasks"),
    click.option("--provider", type=click.Choice(["local", "slurm", "pbspro", "kubernetes"]),
                 default="local", show_default=True, help="parsl: where blocks come from"),
    click.option("--init-blocks", type=click.IntRange(min=0), default=1, show_default=True,
                 help="parsl/dask: blocks started at once"),
    click.option("--min-blocks", type=click.IntRange(min=0), default=0, show_default=True,
                 help="parsl/dask autoscaling: fewest blocks"),
    click.option("--max-blocks", type=click.IntRange(min=1), default=1, show_default=True,
                 help="parsl/dask autoscaling: most blocks"),
    click.option("--nodes-per-block", type=click.IntRange(min=1), default=1, show_default=True,
                 help="parsl: nodes per batch job"),
    click.option("--scheduler", default="", help="dask: address of a running scheduler"),
    click.option("--strategy-period", type=click.FloatRange(min=0.01), default=5.0,
                 show_default=True, help="seconds between autoscaling decisions"),
    click.option("--max-idletime", type=click.FloatRange(min=0), default=120.0,
                 show_default=True, help="seconds a block may idle before it is released"),
    click.option("--pin-gpus", is_flag=True, help="one worker per GPU (CUDA_VISIBLE_DEVICES)"),
    click.option("--config", "config_path", default=None,
                 help="configuration file  [default: ~/.fabric/endpoints/NAME/config.toml]"),
    click.option("--detach", is_flag=True, help="run in the background, logging to "
                 "~/.fabric/endpoints/NAME/endpoint.log"),
]


def engine_options(fn: Any) -> Any:
    for option in reversed(ENGINE_OPTIONS):
        fn = option(fn)
    return fn


def build_config(name: str, ctx: click.Context) -> Any:
    """The EndpointConfig for `fabric endpoint start`: the file, then the flags given."""
    from fabric.endpoint import settings

    params = ctx.params
    path = params.get("config_path")
    if path is None and settings.config_file(name).exists():
        path = settings.config_file(name)
    values = settings.load(path) if path else {}

    def given(flag: str) -> bool:
        return ctx.get_parameter_source(flag) not in (ParameterSource.DEFAULT,
                                                      ParameterSource.DEFAULT_MAP)

    # A flag given wins over the file; the file wins over a flag's default.
    in_file = {field for key, (field, _) in settings.ENDPOINT_KEYS.items() if key in values}
    in_file_engine = set(values.get("engine", {}))
    overrides = {field: params[flag] for flag, field in ENDPOINT_FLAGS.items()
                 if flag in params and (given(flag) or field not in in_file)}
    engine = {field: params[flag] for flag, field in ENGINE_FLAGS.items()
              if flag in params and (given(flag) or field not in in_file_engine)}
    return settings.endpoint_config(name, values, overrides, engine)


def start_detached(name: str, argv: list[str], log_dir: Path) -> tuple[int, Path]:
    """Run `fabric ARGV` (minus --detach) in a new session, output to a log file;
    returns once it says it started (or raise with the log's tail)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "endpoint.log"
    args = [a for a in argv if a != "--detach"]
    with open(log, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen([sys.executable, "-m", "fabric", *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + DETACH_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_bytes()[start:].decode(errors="replace")
        if STARTED.search(text):
            return proc.pid, log
        if proc.poll() is not None:
            raise FabricError(f"endpoint {name} exited (code {proc.returncode}) while starting; "
                              f"{log}:\n{text[-2000:]}")
        time.sleep(0.1)
    raise FabricError(f"endpoint {name} (pid {proc.pid}) did not say it started within "
                      f"{DETACH_TIMEOUT_S:.0f}s; see {log}")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _fail(exc: FabricError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def register(endpoint: click.Group) -> None:
    """Add the management commands to the `fabric endpoint` group."""

    @endpoint.command("configure")
    @click.argument("name")
    @click.option("--hub", default=config.DEFAULT_HUB_ADDRESS, show_default=True)
    @click.option("--engine", type=click.Choice(["local", "parsl", "dask"]), default="local",
                  show_default=True)
    @click.option("--provider", type=click.Choice(["local", "slurm", "pbspro", "kubernetes"]),
                  default="local", show_default=True)
    @click.option("--workers", type=click.IntRange(min=1), default=None,
                  help="[default: the number of cores]")
    @click.option("--force", is_flag=True, help="overwrite an existing file")
    def configure(name: str, hub: str, engine: str, provider: str, workers: int | None,
                  force: bool) -> None:
        """Write a commented configuration file for endpoint NAME; edit it, then
        `fabric endpoint start NAME`."""
        from fabric.endpoint import settings

        try:
            path = settings.write_template(name, force, hub=hub, engine=engine,
                                           provider=provider, workers=workers)
        except FabricError as exc:
            _fail(exc)
        click.echo(f"wrote {path}")

    @endpoint.command("list")
    def list_endpoints() -> None:
        """The endpoints configured on this machine and whether each is running."""
        from rich.console import Console
        from rich.table import Table

        from fabric.endpoint import settings
        from fabric.endpoint.outbox import StateDir

        table = Table("name", "engine", "hub", "status", "folder")
        for name in settings.configured():
            path = settings.config_file(name)
            try:
                values = settings.load(path) if path.exists() else {}
                engine = values.get("engine", {}).get("kind", "local")
                hub = values.get("hub", "-")
            except BadConfig:
                engine, hub = "?", "(bad config file)"
            pid = StateDir(name).running_pid()
            table.add_row(name, engine if path.exists() else "-", hub,
                          f"running (pid {pid})" if pid else "stopped",
                          str(settings.endpoint_dir(name)))
        Console().print(table)

    @endpoint.command("delete")
    @click.argument("name")
    @click.option("--force", is_flag=True,
                  help="stop it if it runs, and drop results the hub never acknowledged")
    @click.option("--yes", "-y", is_flag=True, help="do not ask (required when not on a terminal)")
    def delete(name: str, force: bool, yes: bool) -> None:
        """Delete endpoint NAME's folder (configuration, outbox, logs) after asking."""
        from fabric.endpoint import stop_endpoint
        from fabric.endpoint.outbox import Outbox, StateDir

        try:
            folder = names.endpoint_dir(name)  # InvalidName for '..', '', '/x', links
            if not folder.is_dir():
                raise FabricError(f"no endpoint {name} here ({folder} does not exist)")
            state = StateDir(name)
            running = state.running_pid() is not None
            if running and not force:
                raise FabricError(f"endpoint {name} is running; `fabric endpoint stop "
                                  f"{name}` first (or --force)")
            if not force and state.outbox.exists():
                box = Outbox(state.outbox)
                try:
                    pending = len(box.pending())
                finally:
                    box.close()
                if pending:
                    raise FabricError(f"endpoint {name} holds {pending} results the hub never "
                                      "acknowledged; start it to deliver them, or --force")
            if not yes:
                if not sys.stdin.isatty():
                    raise FabricError(f"not deleting {folder} without --yes (there is no "
                                      "terminal to ask on)")
                what = " (stopping it first)" if running else ""
                if not click.confirm(f"delete {folder} and everything in it{what}?"):
                    raise FabricError("nothing deleted")
            if running:
                stop_endpoint(name)
        except FabricError as exc:
            _fail(exc)
        # rmtree unlinks links inside the folder and never follows them (fd-based on
        # Linux), so nothing outside the endpoint's own folder can go.
        shutil.rmtree(folder)
        click.echo(f"deleted {folder}")

    @endpoint.command("runtimes")
    @click.argument("name")
    @click.option("--state-dir", default=None, help="as given to `fabric endpoint start`")
    @click.option("--prune", is_flag=True, help="remove runtimes (the endpoint must be stopped)")
    @click.option("--older-than", default="0", show_default=True,
                  help="with --prune: only those unused this long (seconds, or 90m / 12h / 30d)")
    def runtimes(name: str, state_dir: str | None, prune: bool, older_than: str) -> None:
        """The runtimes endpoint NAME has built here: spec, Python, size, build time and
        last use, least recently used first; --prune removes them."""
        from rich.console import Console
        from rich.table import Table

        from fabric.cli.access import parse_ttl
        from fabric.endpoint import runtime_catalog
        from fabric.endpoint.outbox import StateDir

        try:
            state = StateDir(name, state_dir)  # InvalidName for a name that is not one
            root = state.path / "runtimes"
            if prune:
                if state.running_pid() is not None:
                    raise FabricError(f"endpoint {name} is running and may be using its "
                                      f"runtimes; `fabric endpoint stop {name}` first")
                gone = runtime_catalog.prune(root, parse_ttl(older_than))
                freed = sum(e.size_bytes for e in gone)
                click.echo(f"removed {len(gone)} runtimes ({freed / 2**20:.1f} MiB) from {root}")
                return
            listed = runtime_catalog.entries(root)
        except FabricError as exc:
            _fail(exc)
        table = Table("digest", "spec", "python", "size", "built", "build s", "last used",
                      title=f"runtimes of endpoint {name} ({root})")
        for e in listed:
            table.add_row(e.digest[:12], e.spec, e.python_version, f"{e.size_bytes / 2**20:.1f} MiB",
                          _when(e.built_at), f"{e.build_s:.1f}", _when(e.last_used))
        if not listed:
            click.echo(f"no runtimes built by endpoint {name} here ({root})")
            return
        Console(width=200 if not sys.stdout.isatty() else None).print(table)

    @endpoint.command("restart")
    @click.argument("name")
    @click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
                  help="seconds to wait for it to drain before killing it")
    def restart(name: str, timeout: float) -> None:
        """Stop endpoint NAME (if it runs) and start it again in the background from
        its configuration file."""
        from fabric.endpoint import settings, stop_endpoint
        from fabric.endpoint.outbox import StateDir

        try:
            if StateDir(name).running_pid() is not None:
                stop_endpoint(name, timeout)
            if not settings.config_file(name).exists():
                raise FabricError(f"endpoint {name} has no configuration file "
                                  f"({settings.config_file(name)}); `fabric endpoint configure "
                                  f"{name}` writes one")
            pid, log = start_detached(name, ["endpoint", "start", name],
                                      settings.endpoint_dir(name))
        except FabricError as exc:
            _fail(exc)
        click.echo(f"endpoint {name} started (pid {pid}); log: {log}")


__all__ = ["build_config", "engine_options", "register", "start_detached"]
