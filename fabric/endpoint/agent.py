"""The endpoint agent: dials out to the hub, keeps one stream, feeds its engine of workers.

It never accepts connections. While the hub is away it keeps running the
tasks it holds and keeps their results on disk (the outbox) until the hub
acknowledges them; on reconnect, or after a restart, it says which tasks it
still holds and replays unacknowledged results, so nothing finished is lost
and nothing is sent twice on purpose.

The link's rules (credits, batching, replay, heartbeats, draining) are
`fabric.endpoint.link`, carried out by `fabric.endpoint.link_driver`, the
same code the simulated endpoints run. What is the real endpoint's own is
its runner, `EngineRunner`: an engine of workers, the outbox, and the
transfers of payloads too big for a message.

Lifecycle: start() -> [drain()] -> shutdown(). drain() is the graceful stop
(`fabric endpoint stop`, SIGTERM): no new tasks, unstarted ones handed back,
running ones finish (up to a deadline), results acknowledged, then shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fabric import config, credentials
from fabric.blobs import is_big
from fabric.endpoint import link_codec as codec
from fabric.endpoint.capabilities import detect, gpu_ids
from fabric.endpoint.engines import Engine, EngineConfig, EngineContext, make_engine
from fabric.endpoint.link import LinkProtocol, LinkSettings
from fabric.endpoint.link_driver import LinkDriver
from fabric.endpoint.link_events import (Dropped, Event, Finished, Restored, Result, Task,
                                         Uploaded)
from fabric.endpoint.outbox import Outbox, StateDir
from fabric.endpoint.transfers import Transfers
from fabric.models import Capabilities
from fabric.worker.runtime import WorkItem, WorkResult
from fabric.worker.trace import ON as _TON, trace as _trace

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
        env = {**os.environ, "FABRIC_SLOWDOWN": str(cfg.slowdown)} if cfg.slowdown != 1.0 else None
        self.state = StateDir(cfg.name, cfg.state_dir)
        metadata = credentials.metadata(credentials.endpoint_token(self.state.path, cfg.token))
        self.transfers = Transfers(cfg.hub, cfg.tls_ca, metadata)
        self.link = LinkProtocol(LinkSettings(
            cfg.name, prefetch=cfg.prefetch, heartbeat_misses=cfg.heartbeat_misses,
            allow_functions=tuple(cfg.allow_functions), allow_owners=tuple(cfg.allow_owners)))
        # The agent speaks to its engine only through fabric.endpoint.engines.Engine.
        self.runner = EngineRunner(self.link, self.transfers)
        self.engine = make_engine(cfg.engine, EngineContext(
            workers=cfg.workers, on_results=self.runner.on_results,
            max_result_bytes=cfg.max_result_bytes, max_retries=cfg.max_retries,
            run_dir=self.state.path, env=env,
            gpus=gpu_ids() if cfg.engine.pin_gpus else (),
            output_tail_bytes=cfg.output_tail_bytes))
        self.runner.engine = self.engine
        self.driver = LinkDriver(
            self.link, self.runner, hub=cfg.hub, metadata=metadata,
            capabilities=self._capabilities, tls_ca=cfg.tls_ca,
            backoff_s=(cfg.reconnect_min_s, cfg.reconnect_max_s), on_refused=self._on_refused)
        self.runner.feed = self.driver.feed
        # Workers joined or left (autoscaling): grant (or stop granting) credits now.
        self.engine.on_capacity = self.driver.poke
        self._stopping = False
        self._stop_job: asyncio.Task[None] | None = None  # a shutdown the hub's refusal began
        self._closed = asyncio.Event()

    @property
    def endpoint_id(self) -> str | None:
        return self.driver.endpoint_id

    @property
    def connected(self) -> asyncio.Event:
        return self.driver.connected

    @property
    def refused(self) -> str | None:
        return self.driver.refused  # why the hub refused our token, if it did

    @property
    def draining(self) -> bool:
        return self.link.draining

    @property
    def completed(self) -> int:
        return self.link.stats.completed

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> "Endpoint":
        self.state.lock()  # EndpointBusy if this name already runs here
        try:
            restored = self.runner.open_outbox(self.state.outbox)
            if restored:
                log.info("%d results from before the restart will be replayed", len(restored))
                self.driver.feed(Restored(restored))
            await self.engine.start()
        except BaseException:
            self._release()
            raise
        self.driver.start()
        return self

    def _release(self) -> None:
        self.runner.close_outbox()
        self.state.unlock()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking tasks, hand back the unstarted ones, let running ones finish
        and their results be acknowledged (up to `timeout`), then shut down."""
        if self._stopping or self.link.draining:
            await self.shutdown()
            return
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        unstarted = self.runner.take_unstarted()
        log.info("draining: %d unstarted tasks handed back, %d running", len(unstarted),
                 len(self.link.held) - len(unstarted))
        await self.driver.drain(unstarted, timeout)
        if self.link.held:
            log.warning("drain deadline: %d tasks still running are abandoned; the hub "
                        "requeues them", len(self.link.held))
        await self.shutdown()

    async def wait_connected(self, timeout: float) -> None:
        await self.driver.wait_connected(timeout)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self) -> None:
        """Stop talking to the hub and stop the workers. Idempotent.

        Tasks still held are requeued by the hub when the link drops."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        await self.driver.stop()
        await self.runner.stop()
        await self.engine.shutdown()
        await self.transfers.close()
        self._release()
        self._closed.set()

    async def __aenter__(self) -> "Endpoint":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    def _on_refused(self, details: str) -> None:
        # Retrying the same token cannot help: stop (the driver said why).
        self._stop_job = asyncio.ensure_future(self.shutdown())

    async def _capabilities(self) -> Capabilities:
        cfg = self.config  # (off the loop: it may run nvidia-smi)
        return await asyncio.to_thread(detect, max(1, self.engine.worker_count),
                                       cfg.relative_speed, cfg.cost_per_core_hour)


class EngineRunner:
    """The real endpoint's runner for the link driver: tasks go to the engine (after
    their big arguments are fetched), results to the outbox (big values to files
    of their own, and up to the hub as blobs before their result is sent)."""

    def __init__(self, link: LinkProtocol, transfers: Transfers) -> None:
        self.link = link
        self.transfers = transfers
        self.engine: Engine = None  # type: ignore[assignment]  # set by Endpoint
        self.feed: Callable[[Event], None] = lambda event: None  # set by Endpoint
        self.outbox: Outbox | None = None
        # Held tasks whose arguments are still being fetched (not in the engine yet),
        # and results whose values are being uploaded (not sendable yet).
        self._staging: dict[str, asyncio.Task[None]] = {}
        self._uploading: dict[str, asyncio.Task[None]] = {}
        self._saving: set[asyncio.Task[None]] = set()  # big values being written
        # Values too big for a message, kept apart: reading a bytes field of a
        # protobuf message copies it, and these may be hundreds of megabytes.
        self._values: dict[str, bytes] = {}

    def _endpoint_id(self) -> str | None:
        return self.link.endpoint_id or None

    # ------------------------------------------------------------ the Runner interface
    def capacity(self) -> int:
        return self.engine.capacity()

    def load(self) -> tuple[int, int]:
        return self.engine.free_slots, self.engine.queued

    def run(self, tasks: list[Task]) -> None:
        if _TON:
            _trace(tasks[0].task_id, 'e_task_in')
        ready = []
        for t in tasks:
            item = WorkItem(t.task_id, t.function_id, t.args, walltime_s=t.walltime_s,
                            max_retries=t.max_retries, runtime=t.runtime)
            if t.args_blob:
                self._staging[t.task_id] = asyncio.create_task(
                    self._fetch_then_run(item, t.args_blob))
            else:
                ready.append(item)
        if ready:
            self.engine.submit(ready)

    def cancel(self, task_ids: Sequence[str]) -> list[str]:
        return [*self.engine.cancel(task_ids), *self._stop_staging(task_ids)]

    def add_functions(self, functions: Sequence[tuple[str, bytes]]) -> None:
        for function_id, body in functions:
            self.engine.add_function(function_id, body)

    def store(self, results: list[Result]) -> None:
        if self.outbox is not None:
            # On disk in this same loop turn, just after the writer (woken by the link,
            # so scheduled first) has handed the results to gRPC: the disk write overlaps
            # the send instead of delaying it. A crash in between loses nothing the
            # hub would not recover: it has the result, or requeues the task.
            asyncio.get_running_loop().call_soon(self._save, results)

    def forget(self, task_ids: Sequence[str]) -> None:
        for tid in task_ids:
            self._values.pop(tid, None)
        if self.outbox is not None:
            self.outbox.ack(task_ids)

    def upload(self, result: Result) -> None:
        """A value too big for the result message goes to the hub as a blob first."""
        tid, value = result.task_id, self._values[result.task_id]

        async def upload() -> None:
            try:
                wire = await self.transfers.upload_value(result, value, self._endpoint_id)
            finally:
                self._uploading.pop(tid, None)
            if wire is not None and not wire.value_blob:  # refused: the failure replaces it
                self._values.pop(tid, None)
            self.feed(Uploaded(tid, wire))

        self._uploading[tid] = asyncio.create_task(upload())

    # ------------------------------------------------------------ what the engine finished
    def on_results(self, results: list[WorkResult]) -> None:
        fresh = []
        for r in results:
            big = is_big(r.value)
            if big:
                self._values[r.task_id] = r.value
            fresh.append(Result(r.task_id, r.ok, b"" if big else r.value, r.error, r.runtime_s,
                                r.cold, big=big))
        if _TON:
            _trace(fresh[0].task_id, 'e_result_in')
        self.feed(Finished(fresh))

    def take_unstarted(self) -> list[str]:
        """Tasks not yet on a worker, taken back (a draining endpoint returns them)."""
        return [*(item.task_id for item in self.engine.take_unstarted()),
                *self._stop_staging(list(self._staging))]

    # ------------------------------------------------------------ the outbox
    def open_outbox(self, path: Any) -> list[Result]:
        """Open the outbox; returns the results finished before a restart, never acked."""
        self.outbox = Outbox(path)
        restored = []
        for m in self.outbox.pending():
            r = codec.result_from_proto(m)
            if is_big(r.value):
                self._values[r.task_id], r.value, r.big = r.value, b"", True
            restored.append(r)
        return restored

    def close_outbox(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    def _save(self, results: list[Result]) -> None:
        outbox = self.outbox
        if outbox is None:
            return
        eid, unacked = self.link.endpoint_id, self.link.unacked
        small = [codec.result_to_proto(r, eid) for r in results
                 if r.task_id in unacked and r.task_id not in self._values]
        if small:
            outbox.put(small)
        for r in results:
            if r.task_id in self._values:
                job = asyncio.create_task(self._save_big(r))
                self._saving.add(job)
                job.add_done_callback(self._saving.discard)
        if _TON:
            _trace(results[0].task_id, 'e_outboxed')

    async def _save_big(self, r: Result) -> None:
        # Hundreds of megabytes take a while to write: not on the loop, which meanwhile
        # uploads the same value and keeps the link's heartbeats going.
        outbox, value = self.outbox, self._values.get(r.task_id)
        if outbox is None or value is None:
            return
        await asyncio.to_thread(outbox.save_value, r.task_id, value)
        if outbox is self.outbox:
            # The row, without the value: pending() reads the file back.
            outbox.put([codec.result_to_proto(r, self.link.endpoint_id)])
            if r.task_id not in self.link.unacked:  # acknowledged while it was being written
                outbox.ack([r.task_id])

    # ------------------------------------------------------------ big arguments
    async def _fetch_then_run(self, item: WorkItem, blob_id: str) -> None:
        """Fetch a task's arguments (too big to come with it), then hand it to the engine."""
        try:
            outcome = await self.transfers.fetch_args(item, blob_id, self._endpoint_id)
        finally:
            self._staging.pop(item.task_id, None)
        if outcome is None:  # the hub no longer has it out here: a failure would be false
            self.feed(Dropped([item.task_id]))
        elif isinstance(outcome, WorkResult):  # gone or damaged: it cannot run anywhere
            self.on_results([outcome])
        elif item.task_id in self.link.held:  # not cancelled or handed back meanwhile
            self.engine.submit([item])

    def _stop_staging(self, task_ids: Sequence[str]) -> list[str]:
        """Stop fetching these tasks' arguments; returns the ids that were being fetched."""
        stopped = []
        for tid in task_ids:
            job = self._staging.pop(tid, None)
            if job is not None:
                job.cancel()
                stopped.append(tid)
        return stopped

    async def stop(self) -> None:
        """Stop fetching and uploading; let big values being written finish (the
        outbox must not close under them)."""
        self._stop_staging(list(self._staging))
        for job in list(self._uploading.values()):
            job.cancel()
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)


__all__ = ["Endpoint", "EndpointConfig", "EngineRunner"]
