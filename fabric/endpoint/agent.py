"""The endpoint agent: dials out to the hub, keeps one stream, feeds its engine of workers.

It never accepts connections. While the hub is away it keeps running the
tasks it holds and keeps their results on disk (the outbox) until the hub
acknowledges them; on reconnect, or after a restart, it says which tasks it
still holds and replays unacknowledged results, so nothing finished is lost
and nothing is sent twice on purpose.

Lifecycle: start() -> [drain()] -> shutdown(). drain() is the graceful stop
(`fabric endpoint stop`, SIGTERM): no new tasks, unstarted ones handed back,
running ones finish (up to a deadline), results acknowledged, then shutdown.

Credits: the endpoint grants the hub as many tasks as it can usefully hold
(the engine's capacity plus a prefetch allowance), counting what it already
holds and what it granted but has not yet received.
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from fabric import __version__, config, credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.endpoint.capabilities import detect, gpu_ids, load_per_core
from fabric.endpoint.engines import EngineConfig, EngineContext, make_engine
from fabric.blobs import is_big
from fabric.endpoint.outbox import Outbox, StateDir
from fabric.endpoint.protocol import Echoes, fit, pack_outgoing, reconnect_forever
from fabric.endpoint.transfers import Transfers
from fabric.models import error_to_proto
from fabric.serialize import ErrorInfo
from fabric.worker.runtime import WorkItem, WorkResult

log = logging.getLogger("fabric.endpoint")


@dataclass
class EndpointConfig:
    name: str
    hub: str = config.DEFAULT_HUB_ADDRESS
    workers: int = os.cpu_count() or 1  # local engine: the pool; parsl/dask: per node (block)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prefetch: int = 0  # extra tasks held beyond what keeps the workers busy
    max_result_bytes: int = config.DEFAULT_MAX_PAYLOAD
    heartbeat_misses: int = config.DEFAULT_HEARTBEAT_MISSES
    max_retries: int = config.DEFAULT_MAX_RETRIES  # per task, unless the task says otherwise
    output_tail_bytes: int = config.DEFAULT_OUTPUT_TAIL_BYTES  # of each task's output, kept
    state_dir: str | None = None  # default: $FABRIC_HOME/endpoints/NAME
    drain_timeout_s: float = 30.0
    relative_speed: float = 1.0  # declared to the scheduler until it has measured this endpoint
    cost_per_core_hour: float = 0.0
    slowdown: float = 1.0  # benchmarks/tests: make every task take this many times as long
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 2.0  # jittered, so a thousand endpoints do not return in step
    token: str | None = None  # default: see fabric.credentials.endpoint_token
    tls_ca: str | None = None  # CA file to verify a TLS hub (default: $FABRIC_TLS_CA)
    # Allow-list: when either is set, the hub sends only these function ids, or
    # functions registered by these users; anything else fails before a worker sees it.
    allow_functions: tuple[str, ...] = ()
    allow_owners: tuple[str, ...] = ()


class Endpoint:
    def __init__(self, cfg: EndpointConfig) -> None:
        self.config = cfg
        self.endpoint_id: str | None = None
        self.connected = asyncio.Event()
        env = {**os.environ, "FABRIC_SLOWDOWN": str(cfg.slowdown)} if cfg.slowdown != 1.0 else None
        self.state = StateDir(cfg.name, cfg.state_dir)
        self._metadata = credentials.metadata(credentials.endpoint_token(self.state.path, cfg.token))
        self.refused: str | None = None  # why the hub refused our token, if it did
        self.transfers = Transfers(cfg.hub, cfg.tls_ca, self._metadata)
        # Held tasks whose arguments are still being fetched (not in the engine yet),
        # and results whose values are being uploaded (not sendable yet).
        self._staging: dict[str, asyncio.Task[None]] = {}
        self._uploading: dict[str, asyncio.Task[None]] = {}
        # The agent speaks to its engine only through fabric.endpoint.engines.Engine.
        self.engine = make_engine(cfg.engine, EngineContext(
            workers=cfg.workers, on_results=self._on_results,
            max_result_bytes=cfg.max_result_bytes, max_retries=cfg.max_retries,
            run_dir=self.state.path, env=env,
            gpus=gpu_ids() if cfg.engine.pin_gpus else (),
            output_tail_bytes=cfg.output_tail_bytes))
        self.engine.on_capacity = self._on_capacity
        self.outbox: Outbox | None = None
        self.held: dict[str, WorkItem] = {}  # received, no result yet
        self.unacked: dict[str, pb.TaskResult] = {}  # results the hub has not acknowledged
        # Their values too big for a message, kept apart: reading a bytes field of a
        # protobuf message copies it, and these may be hundreds of megabytes.
        self._values: dict[str, bytes] = {}
        self.draining = False
        self._returned: list[str] = []  # unstarted tasks handed back while draining
        self._to_send: list[pb.TaskResult] = []
        self._last_heard = time.monotonic()
        self._echoes = Echoes()
        self._granted = 0  # credits granted on the current stream, tasks not yet received
        self._wake = asyncio.Event()
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.completed = 0

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> "Endpoint":
        self.state.lock()  # EndpointBusy if this name already runs here
        try:
            self.outbox = Outbox(self.state.outbox)
            for r in self.outbox.pending():  # finished before a restart, never acknowledged
                value = r.value
                if is_big(value):
                    self._values[r.task_id] = value
                    r.ClearField("value")
                self.unacked[r.task_id] = r
            if self.unacked:
                log.info("%d results from before the restart will be replayed", len(self.unacked))
            await self.engine.start()
        except BaseException:
            self._release()
            raise
        self._main = asyncio.create_task(self._connect_forever())
        return self

    def _release(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        self.state.unlock()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking tasks, hand back the unstarted ones, let running ones finish
        and their results be acknowledged (up to `timeout`), then shut down."""
        if self._stopping or self.draining:
            await self.shutdown()
            return
        self.draining = True
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        unstarted = [item.task_id for item in self.engine.take_unstarted()]
        unstarted += self._stop_staging(list(self._staging))
        for tid in unstarted:
            self.held.pop(tid, None)
        self._returned.extend(unstarted)
        log.info("draining: %d unstarted tasks handed back, %d running", len(unstarted),
                 len(self.held))
        self._wake.set()
        deadline = time.monotonic() + timeout
        while (self.held or self.unacked or self._returned) and time.monotonic() < deadline:
            if not self.connected.is_set() and not self.held:
                break  # results are safe in the outbox; the hub gets them after a restart
            await asyncio.sleep(0.02)
        if self.held:
            log.warning("drain deadline: %d tasks still running are abandoned; the hub "
                        "requeues them", len(self.held))
        await self.shutdown()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self) -> None:
        """Stop talking to the hub and stop the workers. Idempotent.

        Tasks still held are requeued by the hub when the link drops."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except (asyncio.CancelledError, Exception):
                pass
        self._stop_staging(list(self._staging))
        for job in list(self._uploading.values()):
            job.cancel()
        await self.engine.shutdown()
        await self.transfers.close()
        self._release()
        self._closed.set()

    async def __aenter__(self) -> "Endpoint":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    # ------------------------------------------------------------ connection
    async def _connect_forever(self) -> None:
        cfg = self.config
        await reconnect_forever(
            self._session, stopping=lambda: self._stopping,
            backoff_s=(cfg.reconnect_min_s, cfg.reconnect_max_s),
            refused=self._on_refused, failed=self._link_failed, down=self.connected.clear)

    def _on_refused(self, exc: grpc.aio.AioRpcError) -> None:
        # Retrying the same token cannot help: stop, and say why.
        log.error("hub %s refused this endpoint: %s", self.config.hub, exc.details())
        self.refused = exc.details()
        asyncio.ensure_future(self.shutdown())

    def _link_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, grpc.aio.AioRpcError):
            log.error("endpoint link failed", exc_info=exc)
            return
        level = logging.WARNING if self.endpoint_id else logging.INFO
        log.log(level, "hub %s: %s %s", self.config.hub, exc.code().name, exc.details())

    async def _session(self) -> None:
        cfg = self.config
        async with credentials.open_channel(cfg.hub, tls_ca=cfg.tls_ca) as channel:
            call = pb_grpc.EndpointServiceStub(channel).Connect(metadata=self._metadata)
            # Finished-but-unacknowledged tasks count as held too: the hub must not
            # send them again before their replayed results arrive.
            caps = detect(max(1, self.engine.worker_count), cfg.relative_speed,
                          cfg.cost_per_core_hour)
            hello = pb.Hello(name=cfg.name, capabilities=caps.to_proto(),
                             held_task_ids=[*self.held, *self.unacked],
                             fabric_version=__version__,
                             allow_functions=cfg.allow_functions, allow_owners=cfg.allow_owners)
            self._granted = 0
            first = pb.EndpointMessage(hello=hello, credits=self._credits_wanted(),
                                       draining=self.draining)
            self._granted = first.credits
            await call.write(first)
            reply = await call.read()
            if reply is grpc.aio.EOF or not reply.HasField("welcome"):
                raise ConnectionError("hub closed the stream before welcoming this endpoint")
            self.endpoint_id = reply.welcome.endpoint_id
            self._last_heard = time.monotonic()
            period = reply.welcome.heartbeat_period_s or config.DEFAULT_HEARTBEAT_PERIOD_S
            # Replay what the hub never confirmed. Big values are uploaded again: the
            # blob ids of an earlier session may name blobs this hub never saw.
            self._to_send = [m for m in self.unacked.values() if m.task_id not in self._values]
            for m in self.unacked.values():
                if m.task_id in self._values and m.task_id not in self._uploading:
                    self._upload_then_send(m)
            self.connected.set()
            log.info("connected to hub %s as %s (%s)", cfg.hub, cfg.name, self.endpoint_id)
            self._wake.set()
            reader = asyncio.create_task(self._read_loop(call))
            writer = asyncio.create_task(self._write_loop(call, period))
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()  # re-raise what ended the session
            finally:
                reader.cancel()
                writer.cancel()
                call.cancel()
                self.connected.clear()
                # Collect both loops' endings (a write racing the cancel raises), so
                # none is reported as "exception never retrieved".
                await asyncio.gather(reader, writer, return_exceptions=True)

    async def _read_loop(self, call: Any) -> None:
        while True:
            msg = await call.read()
            self._last_heard = time.monotonic()
            if msg is grpc.aio.EOF:
                raise ConnectionError("hub ended the stream")
            if msg.functions:
                for fn in msg.functions:
                    self.engine.add_function(fn.function_id, fn.body)
            if msg.tasks:
                if _TON:
                    _trace(msg.tasks[0].task_id, 'e_task_in')
                items = [WorkItem(t.task_id, t.function_id, t.args, walltime_s=t.walltime_s,
                                  max_retries=t.max_retries if t.HasField("max_retries") else None,
                                  runtime=t.runtime)
                         for t in msg.tasks if t.task_id not in self.held]
                self._granted -= len(msg.tasks)
                items = self._allowed(items)
                for item in items:
                    self.held[item.task_id] = item
                blob_of = {t.task_id: t.args_blob for t in msg.tasks if t.args_blob}
                for item in items:
                    if item.task_id in blob_of:
                        self._staging[item.task_id] = asyncio.create_task(
                            self._fetch_then_run(item, blob_of[item.task_id]))
                self.engine.submit([i for i in items if i.task_id not in blob_of])
            if msg.acks:
                self._forget(list(msg.acks))
            if self._echoes.heard(msg):
                self._wake.set()
            if msg.cancel:
                for tid in [*self.engine.cancel(msg.cancel), *self._stop_staging(msg.cancel)]:
                    self.held.pop(tid, None)
                self._wake.set()  # room for more: grant credits

    async def _write_loop(self, call: Any, period: float) -> None:
        last_beat = 0.0
        silent_after = period * self.config.heartbeat_misses
        while True:
            if time.monotonic() - self._last_heard > silent_after:
                raise ConnectionError(f"hub silent for {silent_after:.1f}s")
            try:
                async with asyncio.timeout(period):  # not wait_for: no extra task per wake
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            msg = pb.EndpointMessage()
            if pack_outgoing(msg, self._to_send, fit(self._to_send, config.MAX_BATCH_BYTES),
                             self.draining, self._returned):
                self._wake.set()
            self._echoes.answer_batch(msg)
            want = self._credits_wanted()
            if want > 0:
                msg.credits = want
                self._granted += want
            now = time.monotonic()
            if now - last_beat >= period or self._echoes.heartbeat:
                msg.heartbeat.CopyFrom(pb.Heartbeat(
                    load=load_per_core(), free_slots=self.engine.free_slots,
                    queued=self.engine.queued, sent_at=time.time(),
                    echo=self._echoes.take_heartbeat()))
                last_beat = now
            if (msg.results or msg.credits or msg.HasField("heartbeat") or msg.draining
                    or msg.batch_echo):
                if _TON and msg.results:
                    _trace(msg.results[0].task_id, 'e_write')
                await call.write(msg)

    def _credits_wanted(self) -> int:
        if self.draining:
            return 0
        target = self.engine.capacity() + self.config.prefetch
        return max(0, target - len(self.held) - self._granted)

    def _allowed(self, items: list[WorkItem]) -> list[WorkItem]:
        """Defence in depth for the function-id allow-list (the hub enforces it first):
        a task for another function fails here, before any worker sees it."""
        allow = self.config.allow_functions
        if not allow or self.config.allow_owners:  # owners are known to the hub only
            return items
        refused = [i for i in items if i.function_id not in allow]
        if refused:
            self._on_results([WorkResult(i.task_id, False, error=ErrorInfo(
                "PermissionDenied", f"endpoint {self.config.name} does not run function "
                f"{i.function_id} (not on its allow-list)", "", b"", "system")) for i in refused])
        return [i for i in items if i.function_id in allow]

    def _on_capacity(self) -> None:
        # Workers joined or left (autoscaling): grant (or stop granting) credits now.
        self._wake.set()

    # ------------------------------------------------------------ big payloads
    async def _fetch_then_run(self, item: WorkItem, blob_id: str) -> None:
        """Fetch a task's arguments (too big to come with it), then hand it to the engine."""
        try:
            outcome = await self.transfers.fetch_args(item, blob_id, lambda: self.endpoint_id)
        finally:
            self._staging.pop(item.task_id, None)
        if outcome is None:  # the hub no longer has it out here: a failure would be false
            self.held.pop(item.task_id, None)
            self._wake.set()  # room for another: grant a credit
        elif isinstance(outcome, WorkResult):  # gone or damaged: it cannot run anywhere
            self._on_results([outcome])
        elif item.task_id in self.held:  # not cancelled or handed back meanwhile
            self.engine.submit([item])

    def _stop_staging(self, task_ids: list[str]) -> list[str]:
        """Stop fetching these tasks' arguments; returns the ids that were being fetched."""
        stopped = []
        for tid in task_ids:
            job = self._staging.pop(tid, None)
            if job is not None:
                job.cancel()
                stopped.append(tid)
        return stopped

    def _upload_then_send(self, m: pb.TaskResult) -> None:
        """A value too big for the result message goes to the hub as a blob first."""
        value = self._values[m.task_id]  # (now: an ack may forget it before the job starts)

        async def upload() -> None:
            try:
                wire = await self.transfers.upload_value(m, value, lambda: self.endpoint_id)
            finally:
                self._uploading.pop(m.task_id, None)
            if wire is None:  # the hub no longer has the task out here: nobody waits
                self._forget([m.task_id])
                return
            if not wire.value_blob:  # refused: the failure replaces the result
                self.unacked[m.task_id] = wire
                self._values.pop(m.task_id, None)
            self._to_send.append(wire)
            self._wake.set()

        self._uploading[m.task_id] = asyncio.create_task(upload())

    def _forget(self, task_ids: list[str]) -> None:
        for tid in task_ids:
            self.unacked.pop(tid, None)
            self._values.pop(tid, None)
        if self.outbox is not None:
            self.outbox.ack(task_ids)

    # ------------------------------------------------------------ results
    def _on_results(self, results: list[WorkResult]) -> None:
        fresh = []
        for r in results:
            self.held.pop(r.task_id, None)
            big = is_big(r.value)
            if big:
                self._values[r.task_id] = r.value
            m = pb.TaskResult(task_id=r.task_id, state=pb.SUCCESS if r.ok else pb.FAILED,
                              value=b"" if big else r.value, runtime_s=r.runtime_s,
                              cold=r.cold, endpoint_id=self.endpoint_id or "")
            if r.error is not None:
                m.error.CopyFrom(error_to_proto(r.error))
            fresh.append(m)
        if _TON:
            _trace(fresh[0].task_id, 'e_result_in')
        for m in fresh:
            self.unacked[m.task_id] = m
            if m.task_id in self._values:
                self._upload_then_send(m)
            else:
                self._to_send.append(m)
        self.completed += len(results)
        self._wake.set()
        if self.outbox is not None:
            # On disk in this same loop turn, just after the writer (woken above, so
            # scheduled first) has handed the results to gRPC: the disk write overlaps
            # the send instead of delaying it. A crash in between loses nothing the
            # hub would not recover: it has the result, or requeues the task.
            asyncio.get_running_loop().call_soon(self._save, fresh)

    def _save(self, results: list[pb.TaskResult]) -> None:
        if self.outbox is not None:
            small = [r for r in results
                     if r.task_id in self.unacked and r.task_id not in self._values]
            if small:
                self.outbox.put(small)
            for r in results:
                if r.task_id in self._values:
                    asyncio.create_task(self._save_big(r))
            if _TON:
                _trace(results[0].task_id, 'e_outboxed')

    async def _save_big(self, r: pb.TaskResult) -> None:
        # Hundreds of megabytes take a while to write: not on the loop, which meanwhile
        # uploads the same value and keeps the link's heartbeats going.
        outbox, value = self.outbox, self._values.get(r.task_id)
        if outbox is None or value is None:
            return
        await asyncio.to_thread(outbox.save_value, r.task_id, value)
        if outbox is self.outbox:
            outbox.put([r])  # the row, without the value: pending() reads the file back
            if r.task_id not in self.unacked:  # acknowledged while it was being written
                outbox.ack([r.task_id])
