"""The Dask engine: a running Dask cluster, or a LocalCluster started here.

With `scheduler_address` the endpoint is a client of an existing cluster
(dask-jobqueue, dask-kubernetes, a hand-started `dask scheduler`): that
cluster's owner scales it. Without one it starts a LocalCluster of worker
processes (one thread each, so `fabric.worker.state()` is never shared by
two tasks at once) and, when max_blocks > min_blocks, lets Dask's adaptive
deployment scale it between min and max blocks of `workers` processes.

A worker that dies is noticed by the Dask scheduler; this engine's cluster
allows no silent reruns (allowed-failures 0), so the task's KilledWorker
comes back here and the per-task `max_retries` decides, as on the local pool.

Needs the `dask` extra: pip install 'fabric-fx[dask]'.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from fabric.endpoint.engines import EngineConfig, EngineContext
from fabric.endpoint.engines.futures import FutureEngine
from fabric.errors import EngineUnavailable
from fabric.worker.engine_task import run_engine_task
from fabric.worker.runtime import WorkItem

log = logging.getLogger("fabric.endpoint.engines.dask")


class DaskEngine(FutureEngine):
    kind = "dask"

    def __init__(self, cfg: EngineConfig, ctx: EngineContext) -> None:
        super().__init__(cfg, ctx)
        self._cluster: LocalCluster | None = None
        self._client: Client | None = None

    async def _start_engine(self) -> None:
        cfg, ctx = self.config, self.ctx
        if not logging.getLogger("distributed").isEnabledFor(logging.DEBUG):
            # Its INFO lines are per task: too many for an endpoint's log.
            logging.getLogger("distributed").setLevel(logging.WARNING)
        if cfg.pin_gpus:
            raise EngineUnavailable(
                "the dask engine does not pin GPUs itself; start a dask-cuda cluster "
                "(LocalCUDACluster) and give its --scheduler, or use the local or parsl engine")
        try:
            if cfg.scheduler_address:
                self._client = await Client(cfg.scheduler_address, asynchronous=True,
                                            timeout=30)
                return
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = await LocalCluster(
                    n_workers=cfg.init_blocks * ctx.workers, threads_per_worker=1,
                    processes=True, host="127.0.0.1", scheduler_port=0,
                    dashboard_address="127.0.0.1:0", asynchronous=True,
                    env=dict(ctx.env or {}), local_directory=str(ctx.run_dir / "dask"))
            if cfg.autoscaled:
                self._cluster.adapt(minimum=cfg.min_blocks * ctx.workers,
                                    maximum=cfg.max_blocks * ctx.workers,
                                    interval=f"{cfg.strategy_period_s}s",
                                    # releases idle workers after about max_idletime_s
                                    wait_count=max(1, round(cfg.max_idletime_s
                                                            / cfg.strategy_period_s)),
                                    target_duration="1s")
            self._client = await Client(self._cluster, asynchronous=True)
        except OSError as exc:
            raise EngineUnavailable(f"dask: could not reach or start a cluster: {exc}") from exc

    async def _stop_engine(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await cluster.close()

    async def _call(self, item: WorkItem, body: bytes, attempt: int) -> tuple[Any, ...]:
        assert self._client is not None
        future = self._client.submit(run_engine_task, item.task_id, item.function_id, body,
                                     item.args, self.ctx.max_result_bytes,
                                     key=f"fabric-{item.task_id}-{attempt}", pure=False)
        try:
            return await future
        except asyncio.CancelledError:
            if self._client is not None:
                asyncio.ensure_future(self._client.cancel([future]))
            raise

    async def _probe(self) -> tuple[int, bool]:
        assert self._client is not None
        nthreads = await self._client.nthreads()
        workers, slots = len(nthreads), sum(nthreads.values())
        can_grow = (self._cluster is not None and self.config.autoscaled
                    and workers < self.config.max_blocks * self.ctx.workers)
        return slots, can_grow

    def _is_worker_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, KilledWorker)
