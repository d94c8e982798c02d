"""The endpoint: dials out to a hub and runs tasks on a pool of worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil

from fabric.endpoint.agent import Endpoint, EndpointConfig
from fabric.endpoint.outbox import StateDir
from fabric.errors import FabricError


def run_endpoint(cfg: EndpointConfig) -> None:
    """Run an endpoint in this process (used by `fabric endpoint start`).

    SIGTERM or SIGINT drains it (the graceful stop); a second one stops it at once."""
    from fabric.loop import run

    async def main() -> int:
        ep = Endpoint(cfg)
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if ep.draining:
                asyncio.ensure_future(ep.shutdown())
            else:
                asyncio.ensure_future(ep.drain())

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await ep.start()
        print(f"fabric endpoint {cfg.name} started: {cfg.engine.kind} engine, "
              f"{ep.engine.worker_count} workers, hub {cfg.hub}, "
              f"pid {os.getpid()}, state {ep.state.path}", flush=True)
        await ep.wait_closed()
        if ep.refused:
            print(f"fabric endpoint {cfg.name} stopped: the hub refused it: {ep.refused}",
                  flush=True)
            return 1
        print(f"fabric endpoint {cfg.name} stopped", flush=True)
        return 0

    if run(main()):
        raise SystemExit(1)


def stop_endpoint(name: str, timeout: float = 60.0, state_dir: str | None = None) -> int:
    """Ask the endpoint NAME running on this machine to drain and stop; returns its pid.

    Waits up to `timeout` seconds for it to exit, then kills it (the hub requeues
    whatever it still held)."""
    state = StateDir(name, state_dir)
    pid = state.running_pid()
    if pid is None:
        raise FabricError(f"endpoint {name} is not running here (no live pid in {state.pid_file})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise FabricError(f"endpoint {name} (pid {pid}) did not stop within {timeout:.0f}s; killed it")


def _alive(pid: int) -> bool:
    # An exited process its parent has not reaped yet (a zombie) has stopped too.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


__all__ = ["Endpoint", "EndpointConfig", "run_endpoint", "stop_endpoint"]
