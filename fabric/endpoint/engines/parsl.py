"""The Parsl engine: Parsl's HighThroughputExecutor on any Parsl provider.

Blocks come from the provider: `local` runs them on this machine (tests,
laptops); `slurm`, `pbspro` and `kubernetes` submit batch jobs / pods whose
workers dial back to the interchange started here. Parsl's own strategy
(`htex_auto_scale`) scales blocks out while tasks wait and back in after
`max_idletime_s` idle, within min/max blocks. Each task runs
`fabric.worker.engine_task.run_engine_task` on a Parsl worker, so functions
stay warm there as on local workers.

Needs the `parsl` extra: pip install 'fabric-fx[parsl]'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from parsl.app.app import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

from fabric.endpoint.engines import EngineConfig, EngineContext
from fabric.endpoint.engines.futures import FutureEngine
from fabric.errors import EngineUnavailable
from fabric.worker.engine_task import run_engine_task
from fabric.worker.runtime import WorkItem

log = logging.getLogger("fabric.endpoint.engines.parsl")

LABEL = "fabric"


def make_provider(cfg: EngineConfig) -> Any:
    """The Parsl provider the configuration names, with its options passed through.

    Remote workers must import fabric and parsl: activate an environment that
    has them with the provider's `worker_init` option."""
    opts = dict(cfg.provider_options)
    common = dict(init_blocks=cfg.init_blocks, min_blocks=cfg.min_blocks,
                  max_blocks=cfg.max_blocks, nodes_per_block=cfg.nodes_per_block)
    try:
        if cfg.provider == "local":
            from parsl.providers import LocalProvider

            return LocalProvider(**common, **opts)
        if cfg.provider == "slurm":
            from parsl.providers import SlurmProvider

            return SlurmProvider(**common, **opts)
        if cfg.provider == "pbspro":
            from parsl.providers import PBSProProvider

            return PBSProProvider(**common, **opts)
        if cfg.provider == "kubernetes":
            from parsl.providers import KubernetesProvider

            common.pop("nodes_per_block")  # a pod is one node
            return KubernetesProvider(**common, **opts)
    except (TypeError, ImportError) as exc:
        raise EngineUnavailable(f"parsl {cfg.provider} provider: {exc}") from exc
    raise EngineUnavailable(f"unknown parsl provider {cfg.provider!r}")


class ParslEngine(FutureEngine):
    kind = "parsl"

    def __init__(self, cfg: EngineConfig, ctx: EngineContext) -> None:
        super().__init__(cfg, ctx)
        self._dfk: DataFlowKernel | None = None
        self._executor: HighThroughputExecutor | None = None
        self._app: Any = None

    async def _start_engine(self) -> None:
        cfg, ctx = self.config, self.ctx
        if not logging.getLogger("parsl").isEnabledFor(logging.DEBUG):
            # Its INFO lines are per task: too many for an endpoint's log.
            logging.getLogger("parsl").setLevel(logging.WARNING)
        # Parsl starts its interchange and local workers by their script names
        # (interchange.py, process_worker_pool.py): find those of this installation.
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
        local = cfg.provider == "local"
        self._executor = HighThroughputExecutor(
            label=LABEL,
            provider=make_provider(cfg),
            address="127.0.0.1" if local else None,
            max_workers_per_node=ctx.workers,
            cores_per_worker=1e-6 if local else 1.0,  # local: exactly `workers`, whatever the cores
            available_accelerators=list(ctx.gpus) if cfg.pin_gpus else (),
            # Local: notice a dead worker or manager within seconds. Batch clusters keep
            # Parsl's defaults, which tolerate busy nodes and slow networks.
            **(dict(heartbeat_period=2, heartbeat_threshold=10, poll_period=1) if local else {}),
            worker_logdir_root=str(ctx.run_dir / "parsl-workers"),
            encrypted=not local)
        config = Config(executors=[self._executor], run_dir=str(ctx.run_dir / "parsl"),
                        strategy="htex_auto_scale", strategy_period=cfg.strategy_period_s,
                        max_idletime=cfg.max_idletime_s, retries=0, initialize_logging=False)
        # Starting the interchange and the first blocks blocks for a while: off the loop.
        self._dfk = await asyncio.to_thread(DataFlowKernel, config)
        self._app = python_app(run_engine_task, data_flow_kernel=self._dfk, executors=[LABEL])

    async def _stop_engine(self) -> None:
        if self._dfk is not None:
            dfk, self._dfk = self._dfk, None
            await asyncio.to_thread(dfk.cleanup)

    async def _call(self, item: WorkItem, body: bytes, attempt: int) -> tuple[Any, ...]:
        future = self._app(item.task_id, item.function_id, body, item.args,
                           self.ctx.max_result_bytes)
        return await asyncio.wrap_future(future)

    async def _probe(self) -> tuple[int, bool]:
        ex = self._executor
        assert ex is not None
        managers = await asyncio.to_thread(ex.connected_managers)
        slots = sum(int(m.get("worker_count", 0)) for m in managers if m.get("active", True))
        # Blocks asked for and not finished (pending ones count: they are coming).
        blocks = sum(1 for st in ex.status_facade.values() if not st.terminal)
        return slots, self.config.autoscaled and blocks < self.config.max_blocks

    def _is_worker_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, (WorkerLost, ManagerLost))
