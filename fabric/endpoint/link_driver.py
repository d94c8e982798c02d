"""The one driver of the endpoint link: asyncio and gRPC around `LinkProtocol`.

The real endpoint (`fabric.endpoint.agent`) and every simulated one
(`fabric.endpoint.simulated_endpoint`) run a `LinkDriver`; what differs
between them is their `Runner`, the small adapter that runs tasks and keeps
results (an engine and an outbox, or simulated slots). The driver dials out,
reconnects with a jittered backoff, decodes what the hub sends into link
events, carries the link's instructions out through the runner, and writes
what the link composes, one message at a time: whatever gathers while a write
is in flight goes out together next, with no timers on the hot path.

Heartbeats and hub-silence checks run on a `Ticker`, which may be shared by
thousands of simulated endpoints on one loop (one timer for all of them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, Protocol, Sequence

import grpc

from fabric import credentials, errors
from fabric.endpoint import link_codec as codec
from fabric.endpoint.capabilities import load_per_core
from fabric.endpoint.link import LinkProtocol
from fabric.endpoint.link_events import (AddFunctions, Cancel, Disconnect, Drain, Dropped,
                                         Event, Forget, LinkDown, Result, Run, Store,
                                         Task, Tick, Upload, Welcome)
from fabric.models import Capabilities
from fabric.worker.trace import ON as _TON, trace as _trace

log = logging.getLogger("fabric.endpoint")

#: A hub that answers with these will not take the same endpoint next time either: its
#: token (UNAUTHENTICATED, PERMISSION_DENIED) or what it says of itself (INVALID_ARGUMENT:
#: a name or an allow-list the hub refuses) would be the same on every retry.
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.INVALID_ARGUMENT)


class Runner(Protocol):
    """What an endpoint does locally; the driver calls it, on the loop, never awaiting."""

    def capacity(self) -> int: ...  # tasks it can usefully hold now
    def load(self) -> tuple[int, int]: ...  # (free slots, queued), for heartbeats
    def run(self, tasks: list[Task]) -> None: ...
    def cancel(self, task_ids: Sequence[str]) -> list[str]: ...  # those that never end
    def add_functions(self, functions: Sequence[tuple[str, bytes]]) -> None: ...
    def store(self, results: list[Result]) -> None: ...
    def forget(self, task_ids: Sequence[str]) -> None: ...
    def upload(self, result: Result) -> None: ...  # then feed Uploaded


async def reconnect_forever(session: Callable[[], Awaitable[None]], *,
                            stopping: Callable[[], bool], backoff_s: tuple[float, float],
                            refused: Callable[[grpc.aio.AioRpcError], None],
                            failed: Callable[[BaseException], None]) -> None:
    """Run link sessions until `stopping()`: after each one that ends, wait a
    jittered, doubling backoff (so a thousand endpoints do not return in step) and
    dial again. A permanent refusal (`refused`: the token, the name) ends it for
    good; other failures are reported (`failed`) and retried."""
    low, high = backoff_s
    backoff = low
    while not stopping():
        try:
            await session()
            backoff = low
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() in REFUSED:
                refused(exc)
                return
            failed(exc)
        except Exception as exc:  # noqa: BLE001 - a broken link is retried, not fatal
            failed(exc)
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, high)


class Ticker:
    """One loop timer for the heartbeats and silence checks of many links: every
    quarter of the shortest heartbeat period it hands each driver the time."""

    def __init__(self) -> None:
        self._drivers: set[LinkDriver] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, driver: "LinkDriver") -> None:
        self._drivers.add(driver)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def discard(self, driver: "LinkDriver") -> None:
        self._drivers.discard(driver)
        if not self._drivers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while self._drivers:
            shortest = min((d.link.period for d in self._drivers), default=1.0)
            await asyncio.sleep(min(1.0, max(0.01, shortest / 4)))
            now = time.monotonic()
            for d in list(self._drivers):
                d.tick(now)


class LinkDriver:
    """Keeps one endpoint's link to the hub up until `stop()`.

    `channel`: a channel shared with other drivers (not ours to close); else each
    session opens its own with `channel_options` (and `tls_ca`)."""

    def __init__(self, link: LinkProtocol, runner: Runner, *, hub: str, metadata: Any,
                 capabilities: Callable[[], Awaitable[Capabilities]],
                 channel: grpc.aio.Channel | None = None,
                 channel_options: list[tuple[str, Any]] | None = None,
                 tls_ca: str | None = None, ticker: Ticker | None = None,
                 backoff_s: tuple[float, float] = (0.05, 2.0),
                 on_refused: Callable[[str], None] | None = None,
                 logger: logging.Logger = log) -> None:
        self.link, self.runner, self.hub = link, runner, hub
        self.name = link.settings.name
        self._metadata, self._capabilities = metadata, capabilities
        self._channel, self._channel_options, self._tls_ca = channel, channel_options, tls_ca
        self.ticker = ticker or Ticker()
        self._backoff_s = backoff_s
        self._on_refused = on_refused
        self._log = logger
        self.connected = asyncio.Event()
        self.refused: str | None = None  # why the hub refused us, if it did
        self._refused = asyncio.Event()
        self._wake = asyncio.Event()  # the writer has something to send
        self._changed = asyncio.Event()  # state moved (a drain waits on it)
        self._lost: str | None = None  # why this session must end (hub silent)
        self._main: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def endpoint_id(self) -> str | None:
        return self.link.endpoint_id or None

    # -------------------------------------------------------- events in, instructions out
    def feed(self, event: Event) -> None:
        """Hand the link an event and carry out what it says; wake the writer if it
        has something to send. The runner may feed more events from inside (a task
        that ends at once)."""
        link, runner = self.link, self.runner
        pending = [event]
        while pending:
            for ins in link.handle(pending.pop()):
                kind = type(ins)
                if kind is Run:
                    runner.run(ins.tasks)
                elif kind is Store:
                    runner.store(ins.results)
                elif kind is Forget:
                    runner.forget(ins.task_ids)
                elif kind is Cancel:
                    stopped = runner.cancel(ins.task_ids)
                    if stopped:
                        pending.append(Dropped(stopped))
                elif kind is AddFunctions:
                    runner.add_functions(ins.functions)
                elif kind is Upload:
                    runner.upload(ins.result)
                elif kind is Disconnect:
                    self._lost = ins.reason
                    self._wake.set()
        if link.wants_to_send(runner.capacity()):
            self._wake.set()
        if link.draining:
            self._changed.set()

    def poke(self) -> None:
        """Something the link reads changed outside an event (the runner's capacity)."""
        if self.link.wants_to_send(self.runner.capacity()):
            self._wake.set()

    def tick(self, now: float) -> None:
        if self.link.connected:
            self.feed(Tick(now))

    # -------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.ticker.add(self)
        self._main = asyncio.create_task(reconnect_forever(
            self._session, stopping=lambda: self._stopping, backoff_s=self._backoff_s,
            refused=self._refuse, failed=self._failed))

    async def stop(self) -> None:
        """Close the stream at once (the hub requeues what it held). Idempotent."""
        self._stopping = True
        self.ticker.discard(self)
        if self._main is not None:
            main, self._main = self._main, None
            main.cancel()
            try:
                await main
            except (asyncio.CancelledError, Exception):
                pass
        self.connected.clear()

    async def wait_connected(self, timeout: float) -> None:
        """Wait until connected; AuthError at once if the hub refused us."""
        waits = {asyncio.ensure_future(self.connected.wait()),
                 asyncio.ensure_future(self._refused.wait())}
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.refused is not None:
            raise errors.AuthError(f"the hub refused endpoint {self.name}: {self.refused}")
        if not done:
            raise asyncio.TimeoutError

    async def drain(self, unstarted: Sequence[str], timeout: float) -> None:
        """Tell the hub we drain, hand `unstarted` back, and wait (up to `timeout`)
        until what is held has finished and every result is acked. Results the hub
        cannot be told about now are safe where the runner keeps them."""
        self.feed(Drain(unstarted))
        deadline = time.monotonic() + timeout
        link = self.link
        while not link.settled:
            if not self.connected.is_set() and not link.held:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.clear()
            try:
                async with asyncio.timeout(min(left, 1.0)):  # (a link coming back up)
                    await self._changed.wait()
            except TimeoutError:
                pass

    # -------------------------------------------------------- sessions
    def _refuse(self, exc: grpc.aio.AioRpcError) -> None:
        self.refused = exc.details() or exc.code().name  # the same token fails next time too
        self._log.error("hub %s refused endpoint %s: %s", self.hub, self.name, self.refused)
        self._refused.set()
        if self._on_refused is not None:
            self._on_refused(self.refused)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            level = logging.WARNING if self.link.endpoint_id else logging.INFO
            self._log.log(level, "%s: hub %s: %s %s", self.name, self.hub, exc.code().name,
                          exc.details())
        elif isinstance(exc, (ConnectionError, OSError)):  # (a hub restart: a thousand of these)
            self._log.info("%s: link to hub %s lost: %s", self.name, self.hub, exc)
        else:
            self._log.error("%s: endpoint link failed", self.name, exc_info=exc)

    async def _session(self) -> None:
        if self._channel is not None:
            await self._stream(self._channel)
            return
        async with credentials.open_channel(self.hub, self._channel_options,
                                            tls_ca=self._tls_ca) as channel:
            await self._stream(channel)

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        call = codec.connect(channel, self._metadata)
        reader: asyncio.Task[None] | None = None
        try:
            caps = await self._capabilities()
            await call.write(codec.hello_message(self.link.hello(self.runner.capacity()),
                                                 self.name, caps))
            reply = await call.read()
            welcome = None if reply is grpc.aio.EOF else codec.welcome_of(reply)
            if welcome is None:
                raise ConnectionError("hub closed the stream before welcoming this endpoint")
            self._lost = None
            # A random phase, so endpoints that connected together do not beat together.
            self.feed(Welcome(welcome[0], welcome[1], time.monotonic(), random.random()))
            self._log.info("%s connected to hub %s as %s", self.name, self.hub, welcome[0])
            self.connected.set()
            self._changed.set()
            reader = asyncio.create_task(self._read_loop(call))
            reader.add_done_callback(lambda _: self._wake.set())
            await self._write_loop(call, reader)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self.connected.clear()
            call.cancel()
            self.feed(LinkDown())
            self._changed.set()

    async def _read_loop(self, call: Any) -> None:
        from_hub, feed = codec.from_hub, self.feed
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise ConnectionError("hub ended the stream")
            feed(from_hub(msg, time.monotonic()))

    async def _write_loop(self, call: Any, reader: asyncio.Task[None]) -> None:
        link, runner, wake = self.link, self.runner, self._wake
        while True:
            await wake.wait()
            wake.clear()
            if reader.done():
                reader.result()  # re-raise what ended the stream
                raise ConnectionError("hub ended the stream")
            if self._lost is not None:
                raise ConnectionError(self._lost)
            out = link.next_message(time.monotonic(), runner.capacity())
            if out is None:
                continue
            if out.heartbeat:
                free, queued = runner.load()
                msg = codec.outgoing_message(out, link.endpoint_id, load=load_per_core(),
                                             free_slots=free, queued=queued,
                                             sent_at=time.time())
            else:
                msg = codec.outgoing_message(out, link.endpoint_id)
            if _TON and out.results:
                _trace(out.results[0].task_id, 'e_write')
            await call.write(msg)
            if link.wants_to_send(runner.capacity()):  # (more than one message's worth)
                wake.set()


__all__ = ["LinkDriver", "REFUSED", "Runner", "Ticker", "reconnect_forever"]
