"""The engines a scenario compares, behind one small interface.

    with open_engine("dask", workers=2) as eng:    # None if Dask is not installed
        eng.submit(fn, *args).result(timeout=60)
        eng.run_all(fn, [(a,), (b,)], batch=100)   # all at once, `batch` calls per message

Fabric is measured end to end: client -> hub -> endpoint(s) -> workers -> back,
with the hub and the endpoints as real processes on loopback (LocalFabric).
The peers are ProcessPoolExecutor, Parsl HTEX with a LocalProvider, Dask
LocalCluster (processes, one thread each) and Ray (when installed), each with
the same number of workers and the same functions.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence

from benchmarks.common import console

ENGINES = ("process-pool", "fabric", "dask", "parsl", "ray")
Call = tuple[Any, ...]


class Engine:
    """`submit` runs one call; `run_all` runs many and waits for every result."""

    def __init__(self, name: str, workers: int, submit: Callable[..., Any]) -> None:
        self.name = name
        self.workers = workers
        self._submit = submit

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A future (concurrent.futures-like: `.result(timeout)`)."""
        return self._submit(fn, *args)

    def run_all(self, fn: Callable[..., Any], calls: Sequence[Call], batch: int = 0,
                timeout: float = 600) -> list[Any]:
        """Every call submitted at once, then every result. `batch` 0: one submit per call,
        as a user of a concurrent.futures executor writes it; B >= 1: the engine's batch API,
        B calls at a time. Engines without one ignore `batch`."""
        futures = [self.submit(fn, *c) for c in calls]
        return [f.result(timeout=timeout) for f in futures]

    def warm_up(self, fn: Callable[..., Any], calls: int = 100) -> None:
        self.run_all(fn, [()] * calls, timeout=120)


class ProcessPool(Engine):
    def __init__(self, ex: cf.ProcessPoolExecutor, workers: int) -> None:
        super().__init__("process-pool", workers, ex.submit)
        self.ex = ex

    def run_all(self, fn: Callable[..., Any], calls: Sequence[Call], batch: int = 0,
                timeout: float = 600) -> list[Any]:
        if batch < 1:
            return super().run_all(fn, calls, timeout=timeout)
        return list(self.ex.map(fn, *zip(*calls), chunksize=batch, timeout=timeout))


class Dask(Engine):
    def __init__(self, dc: Any, workers: int) -> None:
        super().__init__("dask", workers, lambda fn, *args: dc.submit(fn, *args, pure=False))
        self.dc = dc

    def run_all(self, fn: Callable[..., Any], calls: Sequence[Call], batch: int = 0,
                timeout: float = 600) -> list[Any]:
        if batch < 1:
            return super().run_all(fn, calls, timeout=timeout)
        futures = self.dc.map(fn, *zip(*calls), pure=False, batch_size=batch)
        return self.dc.gather(futures)


class Fabric(Engine):
    """`submit` goes through `fabric.client.Executor` (which coalesces a burst of submits
    into few Submit calls); `run_all` with batch B >= 1 through `Client.batch_run`, one
    Submit of B calls at a time, each waited for, then one `get_batch_result`."""

    def __init__(self, fab: Any, client: Any, executor: Any, workers: int,
                 policy: str = "") -> None:
        super().__init__("fabric", workers, executor.submit)
        self.fab = fab
        self.executor = executor
        self.client = client  # a second Client: an Executor owns the one it is given
        self.policy = policy

    def run_all(self, fn: Callable[..., Any], calls: Sequence[Call], batch: int = 0,
                timeout: float = 600) -> list[Any]:
        if batch < 1:
            return super().run_all(fn, calls, timeout=timeout)
        fid = self.client.register_function(fn)
        tids: list[str] = []
        for i in range(0, len(calls), batch):
            tids += self.client.batch_run(fid, [(c, {}) for c in calls[i:i + batch]],
                                          policy=self.policy)
        return self.client.get_batch_result(tids, timeout=timeout)

    def map_chunked(self, fn: Callable[..., Any], calls: Sequence[Call], chunksize: int,
                    timeout: float = 600) -> list[Any]:
        """`Executor.map(chunksize=B)`: B calls per task, as ProcessPoolExecutor.map does."""
        return list(self.executor.map(fn, *zip(*calls), chunksize=chunksize, timeout=timeout))


@contextlib.contextmanager
def open_engine(name: str, workers: int, *, endpoints: int = 1,
                endpoint_args: Sequence[str] = (), hub_args: Sequence[str] = (),
                policy: str = "") -> Iterator[Engine | None]:
    """Start engine `name` with `workers` workers in all (Fabric: `endpoints` endpoints
    of `workers // endpoints` each); yields None, with a message, if it is not installed."""
    starters = {"process-pool": _process_pool, "fabric": _fabric, "dask": _dask,
                "parsl": _parsl, "ray": _ray}
    if name not in starters:
        raise SystemExit(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    if name == "fabric":
        with _fabric(workers, endpoints, endpoint_args, hub_args, policy) as eng:
            yield eng
    else:
        with starters[name](workers) as eng:
            yield eng


def peers_arg(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    return names


def _missing(name: str, install: str = "pip install 'fabric-fx[peers]'") -> None:
    console.print(f"  {name}: not installed ({install}); skipped", style="yellow", markup=False)


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[Engine]:
    with cf.ProcessPoolExecutor(workers) as ex:
        yield ProcessPool(ex, workers)


@contextlib.contextmanager
def _fabric(workers: int, endpoints: int, endpoint_args: Sequence[str],
            hub_args: Sequence[str], policy: str) -> Iterator[Engine]:
    from fabric.client import Client, Executor
    from fabric.launch import LocalFabric

    per_endpoint = max(1, workers // endpoints)
    names = [f"bench{i}" for i in range(endpoints)]
    with tempfile.TemporaryDirectory(prefix="fabric-bench-") as tmp, \
            LocalFabric(tmp, names, workers=per_endpoint, hub_args=tuple(hub_args),
                        endpoint_args=tuple(endpoint_args)) as fab, \
            Client(fab.address) as client, Client(fab.address) as executor_client:
        client.wait_for_endpoints(endpoints, timeout=60)
        # One endpoint: name it (the no-op scenario's path); several: the policy spreads.
        target = names[0] if endpoints == 1 else None
        with Executor(endpoint_id=target, client=executor_client, policy=policy) as ex:
            yield Fabric(fab, client, ex, per_endpoint * endpoints, policy)


@contextlib.contextmanager
def _dask(workers: int) -> Iterator[Engine | None]:
    try:
        from distributed import Client as DaskClient, LocalCluster
    except ImportError:
        _missing("dask")
        yield None
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, DaskClient(cluster) as dc:
        yield Dask(dc, workers)


@contextlib.contextmanager
def _parsl(workers: int) -> Iterator[Engine | None]:
    try:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        _missing("parsl")
        yield None
        return
    # Parsl starts its interchange and workers as scripts from the venv's bin/,
    # which is not on PATH when the venv's python is run without activating it.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    apps: dict[Callable[..., Any], Any] = {}

    def submit(fn: Callable[..., Any], *args: Any) -> Any:
        # Through a Parsl app, as Parsl users do (DataFlowKernel included).
        if fn not in apps:
            apps[fn] = parsl.python_app(fn, executors=["htex"])
        return apps[fn](*args)

    with tempfile.TemporaryDirectory(prefix="parsl-bench-") as tmp:
        htex = HighThroughputExecutor(label="htex", max_workers_per_node=workers,
                                      provider=LocalProvider(init_blocks=1, max_blocks=1))
        dfk = parsl.load(Config(executors=[htex], run_dir=tmp))
        try:
            yield Engine("parsl", workers, submit)
        finally:
            dfk.cleanup()
            parsl.clear()


@contextlib.contextmanager
def _ray(workers: int) -> Iterator[Engine | None]:
    try:
        import ray
    except ImportError:
        _missing("ray", "pip install ray")
        yield None
        return
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    remotes: dict[Callable[..., Any], Any] = {}

    def submit(fn: Callable[..., Any], *args: Any) -> Any:
        if fn not in remotes:
            remotes[fn] = ray.remote(num_cpus=1)(fn)
        return remotes[fn].remote(*args).future()

    try:
        yield Engine("ray", workers, submit)
    finally:
        ray.shutdown()
