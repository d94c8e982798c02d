"""Engines: what runs an endpoint's tasks.

    local   pools of worker processes on this machine, one per runtime (the default;
            fabric/endpoint/runtime_pools.py over fabric/endpoint/pool.py)
    parsl   Parsl's HighThroughputExecutor on any Parsl provider: local, slurm, pbspro,
            kubernetes (blocks of nodes from a batch scheduler, autoscaled by Parsl's strategy)
    dask    a Dask cluster: a running scheduler's address, or a LocalCluster started here
            (autoscaled by Dask's adaptive deployment)

`make_engine` builds one from an `EngineConfig`; the agent sees only the
`Engine` interface (base.py). Parsl and Dask are optional extras: choosing
one that is not installed raises EngineUnavailable naming the extra.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric import config
from fabric.endpoint.engines.base import Engine, ResultsCallback
from fabric.errors import EngineUnavailable

KINDS = ("local", "parsl", "dask")
PROVIDERS = ("local", "slurm", "pbspro", "kubernetes")
#: engine -> (module it needs, the extra that installs it)
_EXTRAS = {"parsl": ("parsl", "parsl"), "dask": ("distributed", "dask")}

log = logging.getLogger("fabric.endpoint.engines")


@dataclass
class EngineConfig:
    """Which engine runs the tasks, and how it finds and scales its workers.

    A *block* is the unit an engine scales by: for Parsl, one batch job of
    `nodes_per_block` nodes running `workers` workers each; for Dask, `workers`
    worker processes. The local engine ignores blocks."""

    kind: str = "local"
    provider: str = "local"  # parsl only
    #: Extra keyword arguments for the Parsl provider (partition, account, walltime,
    #: scheduler_options, worker_init, image, namespace, ...), passed through as given.
    provider_options: dict[str, Any] = field(default_factory=dict)
    init_blocks: int = 1
    min_blocks: int = 0
    max_blocks: int = 1
    nodes_per_block: int = 1
    scheduler_address: str = ""  # dask: connect to this scheduler instead of starting one
    #: How often the engine's autoscaler looks at the load, and how long a block
    #: may sit idle before it is released (down to min_blocks).
    strategy_period_s: float = 5.0
    max_idletime_s: float = 120.0
    pin_gpus: bool = False  # one worker per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES)

    def validate(self) -> "EngineConfig":
        if self.kind not in KINDS:
            raise EngineUnavailable(f"unknown engine {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.provider not in PROVIDERS:
            raise EngineUnavailable(f"unknown provider {self.provider!r}; choose one of "
                                    f"{', '.join(PROVIDERS)}")
        if not 0 <= self.min_blocks <= self.max_blocks or self.max_blocks < 1:
            raise EngineUnavailable(f"blocks: need 0 <= min_blocks ({self.min_blocks}) <= "
                                    f"max_blocks ({self.max_blocks}) and max_blocks >= 1")
        if not self.min_blocks <= self.init_blocks <= self.max_blocks:
            raise EngineUnavailable(f"init_blocks ({self.init_blocks}) must lie within "
                                    f"min_blocks..max_blocks ({self.min_blocks}..{self.max_blocks})")
        if self.nodes_per_block < 1:
            raise EngineUnavailable("nodes_per_block must be at least 1")
        if self.strategy_period_s <= 0 or self.max_idletime_s < 0:
            raise EngineUnavailable("strategy_period_s must be > 0 and max_idletime_s >= 0")
        return self

    @property
    def autoscaled(self) -> bool:
        return self.min_blocks < self.max_blocks


@dataclass
class EngineContext:
    """What every engine gets from the endpoint besides its own settings."""

    workers: int  # local: pool size; parsl/dask: workers per node (block)
    on_results: ResultsCallback
    max_result_bytes: int
    max_retries: int
    run_dir: Path  # logs and scratch files of the engine (the endpoint's state folder)
    env: dict[str, str] | None = None
    gpus: tuple[str, ...] = ()  # device ids to pin workers to, when pin_gpus
    #: Bytes of each task's output kept with its result (local engine; Parsl and
    #: Dask workers log output their own way).
    output_tail_bytes: int = config.DEFAULT_OUTPUT_TAIL_BYTES


def require(kind: str) -> None:
    """Raise EngineUnavailable unless the extra that `kind` needs is importable."""
    if kind not in _EXTRAS:
        return
    module, extra = _EXTRAS[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: not usable
        found = False
    if not found:
        raise EngineUnavailable(f"the {kind} engine needs {module}, which is not installed "
                                f"here: pip install 'fabric-fx[{extra}]'")


def make_engine(cfg: EngineConfig, ctx: EngineContext) -> Engine:
    cfg.validate()
    require(cfg.kind)
    if cfg.pin_gpus and not ctx.gpus:
        log.warning("pin_gpus: no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi); "
                    "running %d unpinned workers", ctx.workers)
    if cfg.kind == "parsl":
        from fabric.endpoint.engines.parsl import ParslEngine

        return ParslEngine(cfg, ctx)
    if cfg.kind == "dask":
        from fabric.endpoint.engines.dask import DaskEngine

        return DaskEngine(cfg, ctx)
    from fabric.endpoint.runtime_pools import RuntimePools

    workers = len(ctx.gpus) if cfg.pin_gpus and ctx.gpus else ctx.workers
    # A WorkerPool per runtime (the endpoint's own Python first), sharing `workers`.
    return RuntimePools(workers, ctx.on_results, run_dir=ctx.run_dir,
                        max_result_bytes=ctx.max_result_bytes, max_retries=ctx.max_retries,
                        env=ctx.env, gpus=ctx.gpus if cfg.pin_gpus else (),
                        output_tail_bytes=ctx.output_tail_bytes)


__all__ = ["Engine", "EngineConfig", "EngineContext", "KINDS", "PROVIDERS", "make_engine",
           "require"]
