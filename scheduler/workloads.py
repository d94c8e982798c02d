"""Simulated endpoints and workloads: the ground truth the simulator runs.

A `SimEndpoint` is a machine as it really is (speed, workers, link, price,
outages); what it *declares* to the hub may differ. A `SimTask` carries its
true runtime on any endpoint, noise drawn once from the seed, so every policy
faces exactly the same tasks and the lower bound is computed on the same
truth. The runtime model never reads any of this: it learns from results.

Everything is deterministic given a seed (`random.Random(seed)`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from scheduler.views import TaskView

GB = 1 << 30
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class SimEndpoint:
    endpoint_id: str
    workers: int
    speed: float = 1.0  # true speed of one worker (1.0 = reference machine)
    latency_s: float = 0.005  # one way, hub <-> endpoint
    bandwidth_Bps: float = 100 * MB
    cost_per_core_hour: float = 0.0
    gpus: int = 0
    memory_bytes: int = 64 * GB
    python_version: str = "3.11"
    cold_start_s: float = 0.5  # a function's first call on a worker costs this much more
    prefetch: int = 0  # credits beyond one per worker (the endpoint default is 0)
    outages: tuple[tuple[float, float], ...] = ()  # (start_s, duration_s): offline, work lost
    declared_speed: float | None = None  # what it tells the hub; None = the truth


@dataclass(frozen=True, slots=True)
class SimFunction:
    function_id: str
    runtime_s: float  # warm, on a speed-1.0 worker, for an empty payload
    s_per_mb: float = 0.0  # more runtime per MB of payload (on speed 1.0)
    gpu_speedup: float = 1.0  # how much faster it runs on an endpoint with a GPU
    gpus: int = 0  # GPUs it needs
    memory_bytes: int = 0  # memory it needs
    jitter: float = 0.1  # sigma of the lognormal noise on each call's runtime
    straggler_chance: float = 0.0  # chance a call is an outlier ...
    straggler_factor: float = 8.0  # ... taking this many times longer


@dataclass(frozen=True, slots=True)
class SimTask:
    task_id: int
    function: SimFunction
    arrival_s: float
    payload_bytes: int
    noise: float  # this call's runtime multiplier, the same on every endpoint

    def runtime_on(self, e: SimEndpoint) -> float:
        """True warm runtime on `e` (a cold worker adds `e.cold_start_s`)."""
        f = self.function
        base = (f.runtime_s + f.s_per_mb * self.payload_bytes / MB) * self.noise
        return base / (e.speed * (f.gpu_speedup if e.gpus else 1.0))

    def can_run_on(self, e: SimEndpoint) -> bool:
        f = self.function
        return e.gpus >= f.gpus and e.memory_bytes >= f.memory_bytes

    def view(self, python_version: str = "3.11") -> TaskView:
        f = self.function
        return TaskView(f.function_id, python_version, None, self.payload_bytes,
                        gpus=f.gpus, memory_bytes=f.memory_bytes)


@dataclass(frozen=True)
class Workload:
    name: str
    tasks: tuple[SimTask, ...]
    description: str = ""
    functions: tuple[SimFunction, ...] = field(default=())


# ------------------------------------------------------------------ endpoint mixes

def continuum() -> list[SimEndpoint]:
    """The issue's users: a laptop, a campus cluster, a paid cloud VM, a GPU box."""
    return [
        SimEndpoint("laptop", 4, speed=1.0, latency_s=0.001, bandwidth_Bps=500 * MB,
                    memory_bytes=16 * GB, cold_start_s=0.3),
        SimEndpoint("campus", 48, speed=0.7, latency_s=0.015, bandwidth_Bps=40 * MB,
                    memory_bytes=256 * GB, cold_start_s=1.0),
        SimEndpoint("cloud", 16, speed=1.3, latency_s=0.030, bandwidth_Bps=60 * MB,
                    cost_per_core_hour=0.05, cold_start_s=0.5),
        SimEndpoint("gpu-box", 8, speed=1.5, latency_s=0.005, bandwidth_Bps=200 * MB,
                    cost_per_core_hour=0.60, gpus=2, memory_bytes=128 * GB, cold_start_s=0.5),
    ]


def hpc_heavy() -> list[SimEndpoint]:
    """Delta's shape: one fast allocation holds about half the capacity, a long
    tail of smaller and slower endpoints holds the rest."""
    return [
        SimEndpoint("hpc", 40, speed=1.6, latency_s=0.020, bandwidth_Bps=200 * MB,
                    memory_bytes=192 * GB, cold_start_s=1.5),
        SimEndpoint("campus", 32, speed=0.8, latency_s=0.015, bandwidth_Bps=40 * MB),
        SimEndpoint("cloud", 16, speed=1.2, latency_s=0.030, bandwidth_Bps=60 * MB,
                    cost_per_core_hour=0.05),
        SimEndpoint("gpu-box", 4, speed=1.4, gpus=1, latency_s=0.005, bandwidth_Bps=200 * MB,
                    cost_per_core_hour=0.60),
        SimEndpoint("laptop", 4, speed=1.0, latency_s=0.001, bandwidth_Bps=500 * MB,
                    memory_bytes=16 * GB, cold_start_s=0.3),
        SimEndpoint("desktop", 2, speed=0.6, latency_s=0.002, bandwidth_Bps=100 * MB,
                    memory_bytes=8 * GB),
    ]


def flaky(horizon_s: float = 60.0) -> list[SimEndpoint]:
    """The continuum, but the campus cluster drops out for a while mid-run
    (its running work is lost and rerouted) and the cloud VM blinks."""
    out = []
    for e in continuum():
        if e.endpoint_id == "campus":
            e = replace(e, outages=((0.25 * horizon_s, 0.3 * horizon_s),))
        elif e.endpoint_id == "cloud":
            e = replace(e, outages=((0.5 * horizon_s, 0.05 * horizon_s),))
        out.append(e)
    return out


def random_mix(n: int, seed: int = 0) -> list[SimEndpoint]:
    """`n` endpoints of random size, speed, link and price (for scale tests)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(SimEndpoint(
            f"ep{i:04d}", rng.choice((1, 2, 4, 8, 16, 32)), speed=rng.uniform(0.4, 2.0),
            latency_s=rng.uniform(0.001, 0.05), bandwidth_Bps=rng.choice((20, 100, 500)) * MB,
            cost_per_core_hour=rng.choice((0.0, 0.0, 0.05, 0.6)),
            gpus=1 if rng.random() < 0.15 else 0, cold_start_s=rng.uniform(0.1, 1.0)))
    return out


MIXES = {"continuum": continuum, "hpc-heavy": hpc_heavy, "flaky": flaky}


# ------------------------------------------------------------------ workloads

def _arrivals(n: int, rng: random.Random, arrival: str, span_s: float) -> list[float]:
    """When tasks reach the hub: all at once, in `waves` of equal size, or a Poisson stream."""
    if arrival == "at-once":
        return [0.0] * n
    if arrival == "waves":
        waves = 10
        return [span_s * (i * waves // n) / waves for i in range(n)]
    if arrival == "poisson":
        t, out = 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(n / span_s)
        return out
    raise ValueError(f"unknown arrival {arrival!r}: at-once, waves, poisson")


def _make(name: str, description: str, functions: list[tuple[SimFunction, float]],
          sizes: dict[str, tuple[int, int]], n: int, seed: int, arrival: str,
          span_s: float) -> Workload:
    """Draw `n` tasks: a function by weight, a payload log-uniform in its size
    range, lognormal noise (and the odd straggler)."""
    rng = random.Random(seed)
    fns, weights = zip(*functions)
    times = _arrivals(n, rng, arrival, span_s)
    tasks = []
    for i in range(n):
        f = rng.choices(fns, weights)[0]
        lo, hi = sizes.get(f.function_id, (1_000, 10_000))
        size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        noise = rng.lognormvariate(0.0, f.jitter) if f.jitter else 1.0
        if f.straggler_chance and rng.random() < f.straggler_chance:
            noise *= f.straggler_factor
        tasks.append(SimTask(i, f, times[i], size, noise))
    return Workload(name, tuple(tasks), description, tuple(fns))


def uniform(n: int = 2000, seed: int = 0, arrival: str = "waves", span_s: float = 10.0) -> Workload:
    f = SimFunction("uniform", 1.0)
    return _make("uniform", "one function, 1 s on a speed-1.0 worker", [(f, 1.0)], {}, n, seed,
                 arrival, span_s)


def bimodal(n: int = 2000, seed: int = 0, arrival: str = "waves", span_s: float = 10.0) -> Workload:
    short, long = SimFunction("short", 0.2), SimFunction("long", 8.0, jitter=0.2)
    return _make("bimodal", "85% 0.2 s tasks, 15% 8 s tasks", [(short, 0.85), (long, 0.15)], {},
                 n, seed, arrival, span_s)


def data_heavy(n: int = 1000, seed: int = 0, arrival: str = "waves", span_s: float = 10.0) -> Workload:
    f = SimFunction("reduce", 0.5, s_per_mb=0.02)
    return _make("data-heavy", "payloads 5-100 MB, runtime 0.5 s + 0.02 s/MB: links matter",
                 [(f, 1.0)], {"reduce": (5 * MB, 100 * MB)}, n, seed, arrival, span_s)


def delta_mix(n: int = 2000, seed: int = 0, arrival: str = "waves", span_s: float = 10.0) -> Workload:
    """Several functions with different runtimes and sizes, in the spirit of
    Delta's evaluation; one needs a GPU, one runs much faster on one."""
    fns = [
        (SimFunction("preprocess", 0.3, s_per_mb=0.05, straggler_chance=0.02), 0.35),
        (SimFunction("simulate", 4.0, jitter=0.25), 0.25),
        (SimFunction("infer", 1.0, gpu_speedup=6.0), 0.25),
        (SimFunction("train", 6.0, gpus=1, gpu_speedup=4.0), 0.05),
        (SimFunction("stats", 0.05, jitter=0.3, straggler_chance=0.02), 0.10),
    ]
    sizes = {"preprocess": (1 * MB, 20 * MB), "infer": (100_000, 2 * MB),
             "train": (10 * MB, 50 * MB)}
    return _make("delta-mix", "5 functions 0.05-6 s, payloads up to 50 MB, one needs a GPU, "
                 "one 6x faster on a GPU, 2% stragglers (8x) among the short ones", fns, sizes, n, seed,
                 arrival, span_s)


WORKLOADS = {"uniform": uniform, "bimodal": bimodal, "data-heavy": data_heavy,
             "delta-mix": delta_mix}
