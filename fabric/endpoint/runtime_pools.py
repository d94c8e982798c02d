"""The local engine: one WorkerPool per runtime, all sharing the endpoint's worker budget.

`make_engine` builds this for `--engine local`. Tasks that ask for no runtime
go straight to the pool of the endpoint's own Python (the only pool at start,
with the whole budget: the common case costs one dict lookup more than a bare
WorkerPool). A task with a runtime waits while `RuntimeCache` builds it (off
the loop, once per digest), then runs on a pool started with the runtime's
interpreter and environment; that pool stays warm for the runtime's next tasks.

Sharing the budget (the simplest policy that cannot starve anyone): a pool
takes workers from the unused budget; when a runtime has work and no room,
idle pools are stopped to make room, and busy pools get no new tasks until
the waiting runtime has its pool (so they drain and become idle). A failed
build fails exactly the tasks that need it (RuntimeBuildFailed); every other
pool keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

from fabric.config import DEFAULT_OUTPUT_TAIL_BYTES
from fabric.endpoint.engines.base import Engine
from fabric.endpoint.pool import INITIAL_CAP, WorkerPool
from fabric.endpoint.runtimes import BuildError, BuiltRuntime, RuntimeCache
from fabric.errors import InvalidRuntime
from fabric.jobs import Jobs
from fabric.runtime_spec import Runtime, parse
from fabric.serialize import ErrorInfo
from fabric.worker.runtime import WorkItem, WorkResult

log = logging.getLogger("fabric.endpoint.runtimes")

OWN = ""  # the pool key of the endpoint's own Python (no runtime)


def runtime_of(spec: bytes) -> Runtime | None:
    """The runtime a task's spec asks for; None for the endpoint's own environment."""
    rt = parse(spec)
    return None if rt.is_default else rt


def runtime_failure(item: WorkItem, type_name: str, message: str) -> WorkResult:
    """The task's outcome when its runtime cannot be provided (RuntimeBuildFailed)."""
    return WorkResult(item.task_id, False, error=ErrorInfo(type_name, message, "", b"", "runtime"))


class RuntimePools(Engine):
    kind = "local"

    def __init__(self, workers: int, on_results: Callable[[list[WorkResult]], None], *,
                 run_dir: Path, max_result_bytes: int, max_retries: int,
                 env: dict[str, str] | None = None, gpus: tuple[str, ...] = (),
                 cache: RuntimeCache | None = None,
                 output_tail_bytes: int = DEFAULT_OUTPUT_TAIL_BYTES) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = workers  # the budget, shared by all pools
        self._on_results = on_results
        self._pool_args = {"max_result_bytes": max_result_bytes, "max_retries": max_retries,
                           "output_tail_bytes": output_tail_bytes}
        self._env = env
        self._gpus = tuple(gpus)
        self.cache = cache or RuntimeCache(Path(run_dir) / "runtimes")
        self._pools: dict[str, WorkerPool] = {}  # ready to take tasks
        self._starting: dict[str, WorkerPool] = {}
        self._sizes: dict[str, int] = {}  # budget held by ready and starting pools
        self._stopping = 0  # workers of pools being stopped (still alive)
        self._waiting: dict[str, deque[WorkItem]] = {}  # runnable, no pool (room) yet
        self._building: dict[str, list[WorkItem]] = {}  # digest -> tasks awaiting its build
        self._built: dict[str, tuple[Runtime, BuiltRuntime]] = {}
        self._bodies: dict[str, bytes] = {}
        self._jobs = Jobs("local engine")  # builds, pool starts and stops
        self._started = False
        self._closing = False

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.cache.sweep()  # half-built runtimes of a killed endpoint
        self._sizes[OWN] = self.workers
        pool = self._new_pool(OWN, self.workers)
        await pool.start()  # raises as a bare WorkerPool would: the endpoint cannot run
        self._pools[OWN] = pool

    async def shutdown(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._jobs.stop()
        await self.cache.close()
        pools = [*self._pools.values(), *self._starting.values()]
        await asyncio.gather(*(p.shutdown() for p in pools), return_exceptions=True)
        self._pools.clear()
        self._starting.clear()

    # ------------------------------------------------------------ the agent's API
    def add_function(self, function_id: str, body: bytes) -> None:
        self._bodies[function_id] = body
        for pool in (*self._pools.values(), *self._starting.values()):
            pool.add_function(function_id, body)

    def submit(self, items: list[WorkItem]) -> None:
        if not any(i.runtime for i in items):  # the common case: the endpoint's own Python
            self._offer(OWN, items)
            return
        by_key: dict[str, list[WorkItem]] = {}
        specs: dict[str, Runtime] = {}
        failed = []
        for item in items:
            try:
                rt = runtime_of(item.runtime) if item.runtime else None
            except InvalidRuntime as exc:
                failed.append(runtime_failure(item, "InvalidRuntime", str(exc)))
                continue
            key = OWN if rt is None else rt.digest
            if rt is not None:
                specs[key] = rt
            by_key.setdefault(key, []).append(item)
        if failed:
            self._deliver(failed)
        for key, group in by_key.items():
            if key == OWN or key in self._built:
                self._offer(key, group)
            elif key in self._building:
                self._building[key].extend(group)
            else:
                self._building[key] = group
                self._jobs.start(self._provide(specs[key]))

    def cancel(self, task_ids: Iterable[str]) -> list[str]:
        wanted = set(task_ids)
        cancelled = []
        for held in (*self._waiting.values(), *self._building.values()):
            keep = [i for i in held if i.task_id not in wanted]
            if len(keep) < len(held):
                cancelled += [i.task_id for i in held if i.task_id in wanted]
                held.clear()
                held.extend(keep)
        for pool in self._pools.values():
            cancelled += pool.cancel(wanted.difference(cancelled))
        return cancelled

    def take_unstarted(self) -> list[WorkItem]:
        items = [i for held in (*self._waiting.values(), *self._building.values()) for i in held]
        self._waiting.clear()
        for held in self._building.values():
            held.clear()  # the build goes on; nobody waits for it now
        for pool in self._pools.values():
            items += pool.take_unstarted()
        return items

    def capacity(self) -> int:
        cap = max((p.per_worker_cap for p in self._pools.values()), default=INITIAL_CAP)
        return self.workers * cap

    @property
    def _unassigned(self) -> int:
        return max(0, self.workers - sum(self._sizes.values()) - self._stopping)

    @property
    def free_slots(self) -> int:
        return sum(p.free_slots for p in self._pools.values()) + self._unassigned

    @property
    def queued(self) -> int:
        held = sum(map(len, self._waiting.values())) + sum(map(len, self._building.values()))
        return held + sum(p.queued for p in self._pools.values())

    @property
    def worker_count(self) -> int:
        return sum(p.worker_count for p in self._pools.values())

    @property
    def pids(self) -> list[int]:
        return [pid for p in self._pools.values() for pid in p.pids]

    def pool_sizes(self) -> dict[str, int]:
        """Workers per runtime digest ("" = the endpoint's own Python), ready pools only."""
        return {k: p.worker_count for k, p in self._pools.items()}

    # ------------------------------------------------------------ runtimes
    async def _provide(self, rt: Runtime) -> None:
        """Build (or find) the runtime, then run the tasks that waited for it."""
        try:
            built = await self.cache.get(rt)
        except asyncio.CancelledError:
            raise
        except BuildError as exc:
            self._fail_building(rt.digest, exc.type_name, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - any failure fails its tasks, not the endpoint
            log.exception("building runtime %s failed", rt.describe())
            self._fail_building(rt.digest, "RuntimeBuildFailed",
                                f"runtime {rt.describe()}: the build failed: {exc!r}")
            return
        self._built[rt.digest] = (rt, built)
        self._offer(rt.digest, self._building.pop(rt.digest, []))

    def _fail_building(self, digest: str, type_name: str, message: str) -> None:
        items = self._building.pop(digest, [])
        log.warning("runtime %s unavailable; failing %d task(s): %s", digest[:12], len(items),
                    message.splitlines()[0] if message else type_name)
        if items:
            self._deliver([runtime_failure(i, type_name, message) for i in items])

    # ------------------------------------------------------------ sharing the budget
    def _offer(self, key: str, items: list[WorkItem]) -> None:
        if not items:
            return
        pool = self._pools.get(key)
        if pool is not None and not self._waiting:
            pool.submit(items)
            return
        self._waiting.setdefault(key, deque()).extend(items)
        self._rebalance()

    def _starved(self) -> bool:
        """Some runtime has runnable tasks and no pool: others must make room."""
        return any(k not in self._pools for k, q in self._waiting.items() if q)

    def _rebalance(self) -> None:
        if self._closing:
            return
        for key in list(self._waiting):
            if not self._waiting[key]:
                del self._waiting[key]
                continue
            if key in self._pools or key in self._starting:
                continue
            if self._unassigned == 0:
                self._stop_one_idle()
            room = self._unassigned
            if room == 0:
                break  # first come, first served: later keys wait their turn
            self._sizes[key] = min(room, len(self._waiting[key]))
            self._jobs.start(self._start_pool(key, self._sizes[key]))
        if not self._starved():  # nobody is waiting for room: held-back tasks go out
            for key in [k for k in self._waiting if k in self._pools]:
                self._pools[key].submit(list(self._waiting.pop(key)))

    def _stop_one_idle(self) -> None:
        for key, pool in list(self._pools.items()):
            if pool.outstanding == 0 and not self._waiting.get(key):
                del self._pools[key]
                size = self._sizes.pop(key)
                self._stopping += size
                log.info("stopping %d idle worker(s) of runtime %s to make room", size,
                         key[:12] or "(own)")
                self._jobs.start(self._stop_pool(pool, size))
                return

    async def _stop_pool(self, pool: WorkerPool, size: int) -> None:
        try:
            await pool.shutdown()
        finally:
            self._stopping -= size
        self._rebalance()

    def _new_pool(self, key: str, size: int) -> WorkerPool:
        on_results = functools.partial(self._pool_results, key)
        if key == OWN:
            pool = WorkerPool(size, on_results, env=self._env, python=sys.executable,
                              gpus=self._gpus[:size] if self._gpus else (), **self._pool_args)
        else:
            rt, built = self._built[key]
            if built.path is None:  # the endpoint's own Python, with the runtime's variables
                pool = WorkerPool(size, on_results, env={**(self._env or os.environ), **rt.env},
                                  python=built.python, **self._pool_args)
            else:  # the endpoint's own variables (e.g. FABRIC_SLOWDOWN), less its import path
                pool = WorkerPool(size, on_results, python=built.python, isolated=True,
                                  env=self.cache.worker_env(rt, built.path, self._env),
                                  **self._pool_args)
        for fid, body in self._bodies.items():
            pool.add_function(fid, body)
        return pool

    async def _start_pool(self, key: str, size: int) -> None:
        pool = self._new_pool(key, size)
        self._starting[key] = pool
        try:
            await pool.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - its tasks fail; the other pools go on
            self._sizes.pop(key, None)
            items = list(self._waiting.pop(key, ()))
            log.warning("workers of runtime %s did not start: %s", key[:12] or "(own)", exc)
            self._deliver([runtime_failure(i, "RuntimeBuildFailed",
                                           f"workers do not start in runtime {key[:12]}: {exc}")
                           for i in items])
            self._rebalance()
            return
        finally:
            self._starting.pop(key, None)
        self._pools[key] = pool
        log.info("runtime %s: %d warm worker(s)", key[:12] or "(own)", size)
        self._rebalance()
        self._capacity_changed()

    def _pool_results(self, key: str, results: list[WorkResult]) -> None:
        self._deliver(results)
        if self._waiting and self._pools.get(key) is not None \
                and self._pools[key].outstanding == 0:
            self._rebalance()  # this pool went idle: it may make room for a waiting runtime

    def _deliver(self, results: list[WorkResult]) -> None:
        try:
            self._on_results(results)
        except Exception:  # noqa: BLE001 - the agent's bug must not stop the engine
            log.exception("on_results callback failed")
