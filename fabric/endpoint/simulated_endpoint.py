"""A simulated endpoint: the real link (protocol and driver) in front of fake slots.

`SimulatedEndpoint` runs the same `LinkProtocol` and `LinkDriver` as the
real endpoint (`fabric.endpoint.agent`), so credits, batching, acks, replays,
heartbeats and draining are exactly what real endpoints do. Only its runner
differs: it has no worker processes and unpickles nothing; each task occupies
one of `workers` slots for `runtime_s` and returns `pickle.dumps(None)`, and
results live in the link's memory (no outbox).

One loop-wide `SimClock` completes simulated tasks (one loop timer per
millisecond tick, shared by every endpoint, never one per task), so that with
thousands of endpoints on one loop the hub, not the simulator, is what a
benchmark measures. Fleets of them: `fabric.endpoint.simulated`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import grpc

from fabric import config, credentials
from fabric.endpoint.link import LinkProtocol, LinkSettings
from fabric.endpoint.link_driver import LinkDriver, Ticker
from fabric.endpoint.link_events import Finished, Result, Task
from fabric.models import Capabilities

log = logging.getLogger("fabric.endpoint.simulated")

#: What every simulated task returns: a pickled None, built once.
RESULT_VALUE = pickle.dumps(None)
#: Completions due within one tick share one loop timer.
TICK_S = 0.001
#: Channel arg that gives a channel its own TCP connection: gRPC otherwise shares
#: one connection among channels with the same target and options, and real
#: endpoints each have their own.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


class SimClock:
    """Task completions for a whole simulation: `after()` files a completion under
    its millisecond tick; each tick that has any gets one `loop.call_at`, which
    completes the tick's tasks endpoint by endpoint (so results leave in batches).
    Its `ticker` times every endpoint's heartbeats with one loop timer."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self.ticker = Ticker()
        self._due: dict[int, list[tuple[SimulatedEndpoint, str, int]]] = {}

    def after(self, delay_s: float, ep: "SimulatedEndpoint", task_id: str, run: int) -> None:
        loop = asyncio.get_running_loop()
        tick = math.ceil((loop.time() + delay_s) / self.tick_s)
        bucket = self._due.get(tick)
        if bucket is None:
            self._due[tick] = bucket = []
            loop.call_at(tick * self.tick_s, self._fire, tick)
        bucket.append((ep, task_id, run))

    def _fire(self, tick: int) -> None:
        by_endpoint: dict[SimulatedEndpoint, list[tuple[str, int]]] = {}
        for ep, task_id, run in self._due.pop(tick, ()):
            by_endpoint.setdefault(ep, []).append((task_id, run))
        for ep, done in by_endpoint.items():
            ep._finished(done)


class SimulatedEndpoint:
    """One endpoint on the real link, with `workers` simulated slots.

    Lifecycle like the agent's: start() -> [drain()] -> shutdown(), or
    `async with`. It reconnects (jittered backoff) until shut down."""

    def __init__(self, name: str, hub: str, workers: int = 10, runtime_s: float = 0.0, *,
                 prefetch: int = 0, min_grant: int = 1, clock: SimClock | None = None,
                 capabilities: Capabilities | None = None,
                 channel: grpc.aio.Channel | None = None,
                 heartbeat_misses: int = config.DEFAULT_HEARTBEAT_MISSES,
                 reconnect_min_s: float = 0.05, reconnect_max_s: float = 2.0,
                 token: str | None = None) -> None:
        if workers < 1:
            raise ValueError("a simulated endpoint needs at least one worker")
        self.name, self.hub, self.workers = name, hub, workers
        self.runtime_s = max(0.0, runtime_s)
        self.clock = clock or SimClock()
        caps = capabilities or Capabilities.detect(workers)
        self.link = LinkProtocol(LinkSettings(name, prefetch=prefetch, min_grant=max(1, min_grant),
                                              heartbeat_misses=heartbeat_misses))

        async def capabilities_now() -> Capabilities:
            return caps

        self.driver = LinkDriver(
            self.link, self, hub=hub,
            metadata=credentials.metadata(credentials.endpoint_token(None, token)),
            capabilities=capabilities_now, channel=channel,
            channel_options=[*config.grpc_options(), OWN_CONNECTION], ticker=self.clock.ticker,
            backoff_s=(reconnect_min_s, reconnect_max_s), logger=log)
        # Tasks held: waiting for a slot (FIFO), and on a slot (id -> run number; a
        # cancelled task's number is gone, so its pending completion is ignored).
        self.waiting: OrderedDict[str, None] = OrderedDict()
        self.running: dict[str, int] = {}
        self.functions: set[str] = set()  # bodies received (kept as ids only)
        self._runs = 0

    # ------------------------------------------------------------ what tests and benchmarks read
    @property
    def connected(self) -> asyncio.Event:
        return self.driver.connected

    @property
    def endpoint_id(self) -> str | None:
        return self.driver.endpoint_id

    @property
    def refused(self) -> str | None:
        return self.driver.refused

    @property
    def draining(self) -> bool:
        return self.link.draining

    @property
    def unacked(self) -> dict[str, Result]:
        return self.link.unacked

    @property
    def completed(self) -> int:
        return self.link.stats.completed

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> "SimulatedEndpoint":
        self.driver.start()
        return self

    async def wait_connected(self, timeout: float) -> None:
        """Wait until connected; AuthError at once if the hub refused the token."""
        await self.driver.wait_connected(timeout)

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking tasks, hand the waiting ones back, let running ones finish and
        their results be acknowledged (up to `timeout`), then shut down."""
        if not self.link.draining and not self.driver._stopping:
            unstarted = list(self.waiting)
            self.waiting.clear()
            await self.driver.drain(unstarted, timeout)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close the stream at once (the hub requeues what it held). Idempotent."""
        await self.driver.stop()

    async def __aenter__(self) -> "SimulatedEndpoint":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    # ------------------------------------------------------------ the runner (simulated slots)
    def capacity(self) -> int:
        return self.workers

    def load(self) -> tuple[int, int]:
        return self.workers - len(self.running), len(self.waiting)

    def run(self, tasks: list[Task]) -> None:
        waiting, running = self.waiting, self.running
        for t in tasks:
            if t.task_id not in running:
                waiting[t.task_id] = None
        self._fill()

    def cancel(self, task_ids: Sequence[str]) -> list[str]:
        stopped = []
        for tid in task_ids:
            if tid in self.waiting:
                del self.waiting[tid]
                stopped.append(tid)
            elif self.running.pop(tid, None) is not None:  # its pending completion is ignored
                stopped.append(tid)
        self._fill()
        return stopped

    def add_functions(self, functions: Sequence[tuple[str, bytes]]) -> None:
        self.functions.update(fid for fid, _ in functions)

    def store(self, results: list[Result]) -> None:
        pass  # the link keeps them until acked; a simulator has no disk to survive

    def forget(self, task_ids: Sequence[str]) -> None:
        pass

    def upload(self, result: Result) -> None:
        raise AssertionError("simulated results are never big")

    def _fill(self) -> None:
        """Start waiting tasks on free slots. A zero runtime completes them at once."""
        waiting, running = self.waiting, self.running
        if self.runtime_s <= 0:
            if waiting:
                done = list(waiting)
                waiting.clear()
                self._results(done)
            return
        while waiting and len(running) < self.workers:
            tid, _ = waiting.popitem(last=False)
            self._runs += 1
            running[tid] = self._runs
            self.clock.after(self.runtime_s, self, tid, self._runs)

    def _finished(self, done: Iterable[tuple[str, int]]) -> None:
        """Called by the clock: these runs reached their end (unless cancelled meanwhile)."""
        running = self.running
        ended = []
        for tid, run in done:
            if running.get(tid) == run:
                del running[tid]
                ended.append(tid)
        self._fill()
        if ended:
            self._results(ended)

    def _results(self, task_ids: list[str]) -> None:
        runtime = self.runtime_s
        self.driver.feed(Finished([Result(tid, True, RESULT_VALUE, runtime_s=runtime)
                                   for tid in task_ids]))


__all__ = ["OWN_CONNECTION", "RESULT_VALUE", "SimClock", "SimulatedEndpoint"]
