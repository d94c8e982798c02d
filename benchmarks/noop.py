"""No-op throughput and round-trip latency: Fabric beside ProcessPoolExecutor (and
Parsl / Dask when installed), same worker count, same run.

Fabric is measured end to end: client -> hub -> endpoint -> workers -> back,
with the hub and the endpoint as real processes on loopback.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import tempfile
import time
from typing import Any, Callable

from benchmarks.common import machine, noop, percentiles, save

Runner = Callable[[], None]


def measure_executor(ex: Any, tasks: int, samples: int, warmup: int = 200) -> dict[str, Any]:
    """Throughput of `tasks` no-ops submitted at once, then `samples` sequential round trips."""
    for f in [ex.submit(noop) for _ in range(warmup)]:
        f.result(timeout=120)
    t0 = time.perf_counter()
    futures = [ex.submit(noop) for _ in range(tasks)]
    for f in futures:
        f.result(timeout=300)
    elapsed = time.perf_counter() - t0
    rtts = []
    for _ in range(samples):
        t = time.perf_counter()
        ex.submit(noop).result(timeout=60)
        rtts.append(time.perf_counter() - t)
    return {"tasks": tasks, "seconds": elapsed, "tasks_per_s": tasks / elapsed,
            "latency": percentiles(rtts), "latency_samples_s": rtts}


def run_process_pool(workers: int, tasks: int, samples: int) -> dict[str, Any]:
    with cf.ProcessPoolExecutor(workers) as ex:
        return measure_executor(ex, tasks, samples)


def run_fabric(workers: int, tasks: int, samples: int) -> dict[str, Any]:
    from fabric.client import Client, Executor
    from fabric.launch import LocalFabric

    with tempfile.TemporaryDirectory(prefix="fabric-bench-") as tmp, \
            LocalFabric(tmp, ["bench"], workers=workers) as fab:
        with Client(fab.address) as client:
            client.wait_for_endpoints(1, timeout=60)
            with Executor(endpoint_id="bench", client=client) as ex:
                out = measure_executor(ex, tasks, samples)
            # The batch API too: one Submit for all, one wait for all.
            fid = client.register_function(noop)
            t0 = time.perf_counter()
            tids = client.batch_run(fid, [((), {})] * tasks, endpoint_id="bench")
            client.get_batch_result(tids, timeout=300)
            elapsed = time.perf_counter() - t0
            out["batch_api"] = {"tasks": tasks, "seconds": elapsed, "tasks_per_s": tasks / elapsed}
        return out


def run_dask(workers: int, tasks: int, samples: int) -> dict[str, Any] | None:
    try:
        from distributed import Client as DaskClient, LocalCluster
    except ImportError:
        print("  dask: not installed (pip install 'fabric-fx[peers]'); skipped")
        return None
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, DaskClient(cluster) as dc:
        class _Ex(cf.Executor):
            def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
                return dc.submit(fn, *args, pure=False, **kwargs)
        return measure_executor(_Ex(), tasks, samples)


def run_parsl(workers: int, tasks: int, samples: int) -> dict[str, Any] | None:
    try:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        print("  parsl: not installed (pip install 'fabric-fx[peers]'); skipped")
        return None
    # Parsl starts its interchange and workers as scripts from the venv's bin/,
    # which is not on PATH when the venv's python is run without activating it.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory(prefix="parsl-bench-") as tmp:
        htex = HighThroughputExecutor(label="htex", max_workers_per_node=workers,
                                      provider=LocalProvider(init_blocks=1, max_blocks=1))
        dfk = parsl.load(Config(executors=[htex], run_dir=tmp))
        try:
            return measure_executor(_ParslApps(parsl.python_app(noop, executors=["htex"])),
                                    tasks, samples)
        finally:
            dfk.cleanup()
            parsl.clear()


class _ParslApps:
    """Submits through a Parsl app, as Parsl users do (DataFlowKernel included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        return self.app(*args)


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(names, [results[n]["tasks_per_s"] for n in names], color="tab:blue")
    a.set_ylabel("no-op tasks / s")
    a.set_title("throughput")
    for n in names:
        lat = results[n]["latency"]
        b.bar([f"{n}\np50", f"{n}\np99"], [lat["p50_ms"], lat["p99_ms"]],
              color=["tab:green", "tab:red"])
    b.set_ylabel("round trip (ms)")
    b.set_title("latency, one task at a time")
    b.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(workers: int = 2, tasks: int = 20_000, samples: int = 500,
         peers: tuple[str, ...] = ("process-pool", "fabric", "dask", "parsl")) -> dict[str, Any]:
    runners = {"process-pool": run_process_pool, "fabric": run_fabric, "dask": run_dask,
               "parsl": run_parsl}
    results: dict[str, Any] = {}
    for name in peers:
        print(f"running {name} ({workers} workers, {tasks} no-ops, {samples} round trips)...",
              flush=True)
        results[name] = runners[name](workers, tasks, samples)
    base = results.get("process-pool")
    ratios = {}
    if base:
        for name, r in results.items():
            if r:
                ratios[name] = {
                    "throughput_vs_process_pool": r["tasks_per_s"] / base["tasks_per_s"],
                    "p50_vs_process_pool": r["latency"]["p50_ms"] / base["latency"]["p50_ms"],
                }
    payload = {"scenario": "noop", "machine": machine(), "workers": workers, "tasks": tasks,
               "samples": samples, "results": results, "ratios": ratios,
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    path = save("noop", payload)
    png = str(path.with_suffix(".png"))
    plot(results, png)
    print(f"\n{'engine':<14}{'tasks/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x PPE':>8}")
    for name, r in results.items():
        if r:
            ratio = ratios.get(name, {}).get("throughput_vs_process_pool", float("nan"))
            print(f"{name:<14}{r['tasks_per_s']:>10.0f}{r['latency']['p50_ms']:>9.3f}"
                  f"{r['latency']['p99_ms']:>9.3f}{ratio:>8.2f}")
        if r and "batch_api" in r:
            print(f"{'  batch_run':<14}{r['batch_api']['tasks_per_s']:>10.0f}")
    print(f"\nwrote {path} and {png}")
    return payload
