"""Simulated endpoints: many light endpoints in one process, for scaling studies.

A `SimulatedEndpoint` speaks the endpoint protocol exactly as the real agent
(fabric/endpoint/agent.py) does, over its own gRPC stream: Hello with
capabilities, credits for its free slots (plus a prefetch allowance), task
batches and function bodies in, results out in batches, acks, cancels,
heartbeats that answer the hub's with an echo, and on reconnect the tasks it
holds and a replay of unacknowledged results. It has no worker processes and
unpickles nothing: each task occupies one of `workers` simulated slots for
`runtime_s` and returns `pickle.dumps(None)`.

A `Simulation` runs many of them on one asyncio loop and keeps their cost per
task small, so that the hub, not the simulator, is what a benchmark measures:
one loop-wide `SimClock` completes simulated tasks (one loop timer per
millisecond tick, shared by every endpoint, never one per task) and runs one
ticker for every endpoint's heartbeat and hub-silence check (no timer per
endpoint, no `wait_for` per write).

Used by `fabric endpoint simulate` and benchmarks/scale.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import pickle
import random
import signal
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Sequence

import grpc

from fabric import __version__, config, credentials, errors
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.endpoint.protocol import Echoes, pack_outgoing, reconnect_forever
from fabric.endpoint.capabilities import load_per_core
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
    """The loop-wide timers of a simulation: task completions and heartbeats.

    `after()` files a completion under its millisecond tick; each tick that has
    any gets one `loop.call_at`, which completes the tick's tasks endpoint by
    endpoint (so results leave in batches). The ticker wakes every endpoint
    whose heartbeat is due and drops links whose hub has gone silent."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._due: dict[int, list[tuple[SimulatedEndpoint, str, int]]] = {}
        self._endpoints: set[SimulatedEndpoint] = set()
        self._ticker: asyncio.Task[None] | None = None

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

    def register(self, ep: "SimulatedEndpoint") -> None:
        self._endpoints.add(ep)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick_forever())

    def unregister(self, ep: "SimulatedEndpoint") -> None:
        self._endpoints.discard(ep)
        if not self._endpoints and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick_forever(self) -> None:
        while self._endpoints:
            # A quarter of the shortest period: beats are late by at most that much.
            shortest = min((ep.period for ep in self._endpoints), default=1.0)
            await asyncio.sleep(min(1.0, max(0.01, shortest / 4)))
            now = time.monotonic()
            for ep in list(self._endpoints):
                ep._tick(now)


class SimulatedEndpoint:
    """One endpoint on the real protocol, with `workers` simulated slots.

    Lifecycle like the agent's: start() -> [drain()] -> shutdown(), or
    `async with`. It reconnects (jittered backoff) until shut down."""

    def __init__(self, name: str, hub: str, workers: int = 10, runtime_s: float = 0.0, *,
                 prefetch: int = 0, min_grant: int = 1, clock: SimClock | None = None,
                 capabilities: pb.Capabilities | None = None,
                 channel: grpc.aio.Channel | None = None,
                 heartbeat_misses: int = config.DEFAULT_HEARTBEAT_MISSES,
                 reconnect_min_s: float = 0.05, reconnect_max_s: float = 2.0,
                 token: str | None = None) -> None:
        if workers < 1:
            raise ValueError("a simulated endpoint needs at least one worker")
        self.name = name
        self.hub = hub
        self.workers = workers
        self.runtime_s = max(0.0, runtime_s)
        self.prefetch = prefetch
        # Credits go out once this many slots are free (or when idle). 1 is what the
        # agent does; more is an experiment against credits trickling back one by one.
        self.min_grant = max(1, min_grant)
        self.clock = clock or SimClock()
        self.capabilities = capabilities or Capabilities.detect(workers).to_proto()
        self._shared_channel = channel  # not ours to close
        self._metadata = credentials.metadata(credentials.endpoint_token(None, token))
        self.heartbeat_misses = heartbeat_misses
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.endpoint_id: str | None = None
        self.connected = asyncio.Event()
        self.refused: str | None = None  # why the hub refused our token; we stop trying
        self._refused = asyncio.Event()
        self.period = config.DEFAULT_HEARTBEAT_PERIOD_S
        # Tasks held: waiting for a slot (FIFO), and on a slot (id -> run number; a
        # cancelled task's number is gone, so its pending completion is ignored).
        self.waiting: OrderedDict[str, None] = OrderedDict()
        self.running: dict[str, int] = {}
        self.unacked: dict[str, pb.TaskResult] = {}  # results the hub has not acknowledged
        self.functions: set[str] = set()  # bodies received (kept as ids only)
        self.draining = False
        self.completed = 0  # tasks this endpoint ran to the end
        self.connects = 0
        # Traffic, for benchmarks: messages each way and the tasks they carried.
        self.messages_in = self.tasks_in = self.messages_out = self.results_out = 0
        self.task_messages = self.ack_only_messages = 0
        self._runs = 0
        self._to_send: list[pb.TaskResult] = []
        self._returned: list[str] = []
        self._granted = 0  # credits granted on this stream, tasks not yet received
        self._echoes = Echoes()
        self._beat_due = False
        self._silent = False
        self._last_heard = self._last_beat = 0.0
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> "SimulatedEndpoint":
        self.clock.register(self)
        self._main = asyncio.create_task(self._connect_forever())
        return self

    async def wait_connected(self, timeout: float) -> None:
        """Wait until connected; AuthError at once if the hub refused the token."""
        waits = {asyncio.ensure_future(self.connected.wait()),
                 asyncio.ensure_future(self._refused.wait())}
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.refused is not None:
            raise errors.AuthError(f"the hub refused endpoint {self.name}: {self.refused}")
        if not done:
            raise asyncio.TimeoutError

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop taking tasks, hand the waiting ones back, let running ones finish and
        their results be acknowledged (up to `timeout`), then shut down."""
        if not self._stopping and not self.draining:
            self.draining = True
            self._returned.extend(self.waiting)
            self.waiting.clear()
            self._wake.set()
            deadline = time.monotonic() + timeout
            while (self.running or self.unacked or self._returned) and \
                    time.monotonic() < deadline and (self.connected.is_set() or self.running):
                await asyncio.sleep(0.02)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close the stream at once (the hub requeues what it held). Idempotent."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        self.clock.unregister(self)
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except (asyncio.CancelledError, Exception):
                pass
        self.connected.clear()
        self._closed.set()

    async def __aenter__(self) -> "SimulatedEndpoint":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    # ------------------------------------------------------------ connection
    async def _connect_forever(self) -> None:
        await reconnect_forever(
            self._session, stopping=lambda: self._stopping,
            backoff_s=(self.reconnect_min_s, self.reconnect_max_s),
            refused=self._on_refused, failed=self._link_failed, down=self.connected.clear)

    def _on_refused(self, exc: grpc.aio.AioRpcError) -> None:
        self.refused = exc.details()  # the same token cannot do better next time
        self._refused.set()

    def _link_failed(self, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            log.log(logging.WARNING if self.endpoint_id else logging.DEBUG,
                    "%s: hub %s: %s %s", self.name, self.hub, exc.code().name, exc.details())
        else:
            log.info("%s: link failed: %r", self.name, exc)

    async def _session(self) -> None:
        if self._shared_channel is not None:
            await self._stream(self._shared_channel)
            return
        options = [*config.grpc_options(), OWN_CONNECTION]
        async with credentials.open_channel(self.hub, options) as channel:
            await self._stream(channel)

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        call = pb_grpc.EndpointServiceStub(channel).Connect(metadata=self._metadata)
        try:
            hello = pb.Hello(name=self.name, capabilities=self.capabilities,
                             held_task_ids=[*self.waiting, *self.running, *self.unacked],
                             fabric_version=__version__)
            self._granted = 0
            first = pb.EndpointMessage(hello=hello, credits=self._credits_wanted(),
                                       draining=self.draining)
            self._granted = first.credits
            await call.write(first)
            reply = await call.read()
            if reply is grpc.aio.EOF or not reply.HasField("welcome"):
                raise ConnectionError("hub closed the stream before welcoming this endpoint")
            self.endpoint_id = reply.welcome.endpoint_id
            self.period = reply.welcome.heartbeat_period_s or config.DEFAULT_HEARTBEAT_PERIOD_S
            now = time.monotonic()
            # A random phase, so that endpoints that connected together do not beat together.
            self._last_heard, self._last_beat = now, now - random.random() * self.period
            self._silent = False
            self._to_send = list(self.unacked.values())  # replay what the hub never confirmed
            self.connects += 1
            self.connected.set()
            reader = asyncio.create_task(self._read_loop(call))
            reader.add_done_callback(lambda _: self._wake.set())
            try:
                await self._write_loop(call, reader)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            self.connected.clear()
            call.cancel()

    def _tick(self, now: float) -> None:
        """Called by the clock's ticker: is a heartbeat due, has the hub gone quiet?"""
        if not self.connected.is_set():
            return
        if now - self._last_heard > self.period * self.heartbeat_misses:
            self._silent = True
            self._wake.set()
        elif now - self._last_beat >= self.period:
            self._beat_due = True
            self._wake.set()

    async def _read_loop(self, call: Any) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise ConnectionError("hub ended the stream")
            self._last_heard = time.monotonic()
            self.messages_in += 1
            if msg.functions:
                self.functions.update(fn.function_id for fn in msg.functions)
            if msg.tasks:
                self.task_messages += 1
                self._accept(msg.tasks)
            elif msg.acks and not (msg.functions or msg.cancel or msg.HasField("heartbeat")):
                self.ack_only_messages += 1
            if msg.acks:
                unacked = self.unacked
                for tid in msg.acks:
                    unacked.pop(tid, None)
            if self._echoes.heard(msg):
                self._wake.set()
            if msg.cancel:
                self._cancel(msg.cancel)

    async def _write_loop(self, call: Any, reader: asyncio.Task[None]) -> None:
        # Whatever gathers while a write is in flight goes out as one message next.
        while True:
            await self._wake.wait()
            self._wake.clear()
            if reader.done():
                reader.result()  # re-raise what ended the stream
                raise ConnectionError("hub ended the stream")
            if self._silent:
                raise ConnectionError(f"hub silent for {self.period * self.heartbeat_misses:.1f}s")
            msg = pb.EndpointMessage()
            if pack_outgoing(msg, self._to_send, config.MAX_TASKS_PER_BATCH, self.draining,
                             self._returned):
                self._wake.set()
            self._echoes.answer_batch(msg)
            want = self._credits_wanted()
            if want > 0:
                msg.credits = want
                self._granted += want
            if self._beat_due or self._echoes.heartbeat:
                hb = msg.heartbeat
                hb.load, hb.free_slots = load_per_core(), self.workers - len(self.running)
                hb.queued, hb.sent_at = len(self.waiting), time.time()
                hb.echo, self._beat_due = self._echoes.take_heartbeat(), False
                self._last_beat = time.monotonic()
            if (msg.results or msg.credits or msg.HasField("heartbeat") or msg.draining
                    or msg.batch_echo):
                self.messages_out += 1
                self.results_out += len(msg.results)
                await call.write(msg)

    def _credits_wanted(self) -> int:
        if self.draining:
            return 0
        held = len(self.waiting) + len(self.running)
        want = self.workers + self.prefetch - held - self._granted
        if want < self.min_grant and held:
            return 0
        return max(0, want)

    # ------------------------------------------------------------ simulated work
    def _accept(self, tasks: Sequence[pb.TaskSubmission]) -> None:
        self._granted -= len(tasks)
        self.tasks_in += len(tasks)
        waiting, running = self.waiting, self.running
        for t in tasks:
            tid = t.task_id
            if tid not in waiting and tid not in running:
                waiting[tid] = None
        self._fill()

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
        eid, runtime = self.endpoint_id or "", self.runtime_s
        for tid in task_ids:
            r = pb.TaskResult(task_id=tid, state=pb.SUCCESS, value=RESULT_VALUE,
                              endpoint_id=eid, runtime_s=runtime)
            self.unacked[tid] = r
            self._to_send.append(r)
        self.completed += len(task_ids)
        self._wake.set()

    def _cancel(self, task_ids: Iterable[str]) -> None:
        for tid in task_ids:
            if tid in self.waiting:
                del self.waiting[tid]
            else:  # on a slot: its pending completion is ignored
                self.running.pop(tid, None)
        self._fill()
        self._wake.set()  # room for more: grant credits


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
        self._caps = Capabilities.detect(workers).to_proto()  # once: same machine for all
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
        keys = ("completed", "connects", "messages_in", "tasks_in", "task_messages",
                "ack_only_messages", "messages_out", "results_out")
        return {k: sum(getattr(ep, k) for ep in self.endpoints) for k in keys}

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
