"""Fleets of simulated endpoints: many light endpoints in one process, for scaling studies.

A `Simulation` runs `count` `SimulatedEndpoint`s (fabric/endpoint/simulated_endpoint.py:
the real link protocol and driver in front of fake slots) on one asyncio loop,
sharing one `SimClock` for task completions and heartbeats. `run_simulated` and
`simulate` (`fabric endpoint simulate`) run one until told to stop, then drain it.

Used by `fabric endpoint simulate` and benchmarks/scale.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any, Callable

import grpc

from fabric import config, credentials, errors
from fabric.endpoint.link import LinkStats
from fabric.endpoint.simulated_endpoint import (OWN_CONNECTION, RESULT_VALUE, SimClock,
                                                SimulatedEndpoint)
from fabric.models import Capabilities


class Simulation:
    """`count` simulated endpoints named PREFIX-00000... on this loop, one stream each.

    `channels=0` (the default) gives every endpoint its own channel and TCP
    connection, as real endpoints have; `channels=K` multiplexes the streams
    over K shared connections (lighter for the simulator, less realistic)."""

    def __init__(self, hub: str, count: int, workers: int = 10, runtime_s: float = 0.0, *,
                 prefetch: int = 0, min_grant: int = 1, prefix: str = "sim", channels: int = 0,
                 heartbeat_misses: int = config.DEFAULT_HEARTBEAT_MISSES,
                 token: str | None = None) -> None:
        self.hub = hub
        self.count = count
        self.clock = SimClock()
        self.channels = channels
        self._channels: list[grpc.aio.Channel] = []
        self._caps = Capabilities.detect(workers)  # once: same machine for all
        self.endpoints: list[SimulatedEndpoint] = []
        self._spec = dict(workers=workers, runtime_s=runtime_s, prefetch=prefetch,
                          min_grant=min_grant, heartbeat_misses=heartbeat_misses,
                          token=token)
        self._prefix = prefix
        self._closed = False

    async def start(self) -> "Simulation":
        width = max(5, len(str(self.count - 1)))
        for k in range(self.channels):
            options = [*config.grpc_options(), OWN_CONNECTION, ("fabric.sim.channel", k)]
            self._channels.append(credentials.open_channel(self.hub, options))
        for i in range(self.count):
            channel = self._channels[i % self.channels] if self.channels else None
            ep = SimulatedEndpoint(f"{self._prefix}-{i:0{width}d}", self.hub, clock=self.clock,
                                   capabilities=self._caps, channel=channel,
                                   **self._spec)  # type: ignore[arg-type]
            self.endpoints.append(ep)
            await ep.start()
        return self

    @property
    def online(self) -> int:
        return sum(1 for ep in self.endpoints if ep.connected.is_set())

    @property
    def completed(self) -> int:
        return sum(ep.completed for ep in self.endpoints)

    def traffic(self) -> dict[str, int]:
        """Totals over all endpoints: messages each way and what they carried."""
        return {k: sum(getattr(ep.link.stats, k) for ep in self.endpoints)
                for k in LinkStats.__dataclass_fields__}

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(ep.wait_connected(timeout)
                                                for ep in self.endpoints)), timeout)

    async def drain(self, timeout: float = 10.0) -> None:
        await asyncio.gather(*(ep.drain(timeout) for ep in self.endpoints))
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close every stream at once. Idempotent."""
        await asyncio.gather(*(ep.shutdown() for ep in self.endpoints))
        if not self._closed:
            self._closed = True
            for ch in self._channels:
                await ch.close()

    async def __aenter__(self) -> "Simulation":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()


async def run_simulated(hub: str, count: int, workers: int = 10, runtime_s: float = 0.0, *,
                        prefetch: int = 0, min_grant: int = 1, prefix: str = "sim",
                        channels: int = 0, connect_timeout: float = 120.0,
                        drain_timeout: float = 10.0,
                        stop: asyncio.Event | None = None,
                        on_ready: Callable[[Simulation], None] | None = None,
                        token: str | None = None) -> Simulation:
    """Run `count` simulated endpoints until `stop` is set (forever without one), then
    drain them. `on_ready` is called once all are connected. Returns the simulation
    (stopped), whose endpoints hold the counts."""
    sim = Simulation(hub, count, workers, runtime_s, prefetch=prefetch, min_grant=min_grant,
                     prefix=prefix, channels=channels, token=token)
    stop = stop or asyncio.Event()
    try:
        await sim.start()
        ready = asyncio.create_task(sim.wait_connected(connect_timeout))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            if isinstance(ready.exception(), errors.AuthError):
                raise ready.exception()  # type: ignore[misc]
            if ready.exception() is not None:
                raise TimeoutError(f"{sim.online} of {count} simulated endpoints connected to "
                                   f"{hub} within {connect_timeout:.0f}s")
            if on_ready is not None:
                on_ready(sim)
            await stopping
        else:
            ready.cancel()
        await sim.drain(drain_timeout)
    finally:
        await sim.shutdown()
    return sim


def simulate(hub: str, count: int, workers: int = 10, runtime_s: float = 0.0, *,
             prefetch: int = 0, min_grant: int = 1, prefix: str = "sim", channels: int = 0,
             connect_timeout: float = 120.0, token: str | None = None) -> int:
    """`fabric endpoint simulate`: run until SIGTERM/SIGINT, then drain and exit.

    Prints "N simulated endpoints connected" once all are; returns the number of
    tasks they completed."""
    raise_fd_limit(count)
    from fabric.loop import run

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        t0 = time.monotonic()

        def ready(sim: Simulation) -> None:
            print(f"{count} simulated endpoints connected to {hub} in "
                  f"{time.monotonic() - t0:.2f}s ({workers} workers each, runtime {runtime_s}s, "
                  f"pid {os.getpid()})", flush=True)
            # SIGUSR1: print the traffic so far (benchmarks diff two of these).
            loop.add_signal_handler(signal.SIGUSR1, lambda: print(
                "traffic " + json.dumps(sim.traffic(), sort_keys=True), flush=True))

        sim = await run_simulated(hub, count, workers, runtime_s, prefetch=prefetch,
                                  min_grant=min_grant, prefix=prefix, channels=channels,
                                  connect_timeout=connect_timeout, stop=stop, on_ready=ready,
                                  token=token)
        t = sim.traffic()
        print(f"{count} simulated endpoints stopped: {t['completed']} tasks completed, "
              f"{t['connects']} connects; hub sent {t['messages_in']} messages "
              f"({t['tasks_in']} tasks), endpoints sent {t['messages_out']} "
              f"({t['results_out']} results)", flush=True)
        return sim.completed

    return run(main())


def raise_fd_limit(count: int) -> None:
    """One socket per endpoint stream (plus gRPC's own), here and in a hub started from
    here (it inherits the limit): lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 4 * count + 256)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


__all__ = ["RESULT_VALUE", "SimClock", "SimulatedEndpoint", "Simulation", "raise_fd_limit",
           "run_simulated", "simulate"]
