"""Discrete-event simulator: the hub's routing, run against simulated endpoints.

It runs the very objects the hub runs: `route_batch`, the policy, and a
`RuntimeModel` that learns only from completed tasks (observe() when a result
reaches the hub), exactly as the hub does. Everything else plays the hub and
the endpoints as the design describes them: each arriving batch is routed
against one snapshot; routed tasks wait in a per-endpoint queue at the hub;
the hub sends within credits (one per worker plus prefetch); payloads cross
a serial link; a worker's first call of a function is cold; when an endpoint
goes offline its queued and in-flight tasks are rerouted (the running ones
are lost and run again), and held tasks get another chance when one returns.

`simulate()` reports makespan, cost and utilisation next to the lower bound
of bounds.py.
Deterministic: the workload carries all randomness (drawn from its seed),
and ties in the event queue break by insertion order.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Sequence

from scheduler.bounds import lower_bound
from scheduler.policies import Policy, make_policy
from scheduler.routing import route_batch
from scheduler.runtime_model import RuntimeModel
from scheduler.tally import Tally
from scheduler.views import Decision, EndpointView
from scheduler.workloads import SimEndpoint, SimTask, Workload

ARRIVE, DELIVER, DONE, RESULT, DOWN, UP = range(6)


@dataclass
class SimResult:
    policy: str
    workload: str
    makespan_s: float  # until the last result reached the hub
    lower_bound_s: float
    cost: float  # dollars, for every execution (lost ones too)
    utilisation: float  # busy worker-seconds / (workers x makespan)
    completed: int
    failed: int  # held tasks that asked to fail fast
    unfinished: int  # still held when nothing else could happen
    requeued: int  # tasks rerouted because their endpoint went offline
    mean_response_s: float  # arrival to result, averaged
    per_endpoint: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Makespan over the lower bound (1.0 would be perfect)."""
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s > 0 else float("inf")


class _Site:
    """One simulated endpoint plus the hub's state for it."""

    def __init__(self, spec: SimEndpoint) -> None:
        self.spec = spec
        self.online = True
        self.epoch = 0  # bumped by an outage: events of the old epoch are void
        self.busy_s = 0.0
        self.done = 0
        self.reset(0.0)

    def reset(self, now: float) -> None:
        self.queue: deque[SimTask] = deque()  # routed, waiting at the hub for a credit
        # What the hub tracks per endpoint: function -> [tasks, payload bytes]
        # routed there whose results it has not had yet.
        self.pending: dict[str, list[int]] = {}
        self.credits = self.spec.workers + self.spec.prefetch
        self.link_free_at = now
        self.sent: dict[int, SimTask] = {}  # at the endpoint: in transit, ready or running
        self.ready: deque[SimTask] = deque()  # delivered, waiting for a worker
        self.running: dict[int, tuple[int, float]] = {}  # id -> (worker, started at)
        self.idle = list(range(self.spec.workers - 1, -1, -1))
        self.warm: list[set[str]] = [set() for _ in range(self.spec.workers)]


class Simulator:
    def __init__(self, endpoints: Sequence[SimEndpoint], workload: Workload,
                 policy: Policy | str, model: RuntimeModel | None = None,
                 lower_bound_s: float | None = None, rebalance: bool = False) -> None:
        self.lower_bound_s = lower_bound_s
        # When an endpoint comes (back) online, route the tasks still waiting
        # at the hub again, so the newcomer gets a share. The hub does not do
        # this today: it routes a task once, unless its endpoint is lost.
        self.rebalance = rebalance
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.model = model if model is not None else RuntimeModel()
        self.workload = workload
        self.sites = {e.endpoint_id: _Site(e) for e in endpoints}
        self.views = {t.task_id: t.view() for t in workload.tasks}
        self.now = 0.0
        self._events: list[tuple] = []
        self._seq = count()
        self.held: list[SimTask] = []
        self.finished: dict[int, float] = {}
        self.failed = self.requeued = 0

    def _at(self, t: float, kind: int, *args: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, args))

    # ---------------------------------------------------------------- the run
    def run(self) -> SimResult:
        by_time: dict[float, list[SimTask]] = {}
        for t in self.workload.tasks:
            by_time.setdefault(t.arrival_s, []).append(t)
        for when, batch in sorted(by_time.items()):
            self._at(when, ARRIVE, batch)
        for site in self.sites.values():
            for start, duration in site.spec.outages:
                self._at(start, DOWN, site)
                self._at(start + duration, UP, site)
        while self._events:
            self.now, _, kind, args = heapq.heappop(self._events)
            if kind == ARRIVE:
                self._route(args[0])
            elif kind == DELIVER:
                site, task, epoch = args
                if epoch == site.epoch:
                    site.ready.append(task)
                    self._start(site)
            elif kind == DONE:
                self._done(*args)
            elif kind == RESULT:
                site, task, runtime, cold, epoch = args
                self.model.observe(task.function.function_id, site.spec.endpoint_id, runtime,
                                   task.payload_bytes, cold)
                self.finished.setdefault(task.task_id, self.now)
                if epoch == site.epoch:  # unless the endpoint restarted since
                    p = site.pending[task.function.function_id]
                    p[0] -= 1
                    p[1] -= task.payload_bytes
                    site.credits += 1
                    self._send(site)
            elif kind == DOWN:
                self._down(args[0])
            elif kind == UP:
                args[0].online = True
                held, self.held = self.held, []
                if self.rebalance:
                    held = [*self._take_back_unsent(), *held]
                self._route(held)
        return self._result()

    # ---------------------------------------------------------------- the hub
    def _snapshot(self) -> list[EndpointView]:
        out = []
        for site in self.sites.values():
            e = site.spec
            out.append(EndpointView(
                e.endpoint_id, e.endpoint_id, site.online, e.python_version, workers=e.workers,
                credits=site.credits, queued=len(site.queue), in_flight=len(site.sent),
                gpus=e.gpus, memory_bytes=e.memory_bytes, free_slots=len(site.idle),
                pending=tuple((f, n, size) for f, (n, size) in site.pending.items() if n),
                link_bytes=sum(size for _, size in site.pending.values()), latency_s=e.latency_s,
                bandwidth_Bps=e.bandwidth_Bps,
                relative_speed=e.declared_speed if e.declared_speed is not None else e.speed,
                cost_per_core_hour=e.cost_per_core_hour))
        return out

    def _route(self, tasks: Sequence[SimTask]) -> None:
        if not tasks:
            return
        tally = Tally(self._snapshot(), self.model)
        decisions = route_batch([self.views[t.task_id] for t in tasks], None, self.policy,
                                tally=tally)
        touched: dict[str, _Site] = {}
        for k in tally.order:  # as the hub should: each ETA assumed this order
            task, d = tasks[k], decisions[k]
            if isinstance(d, Decision):
                site = self.sites[d.endpoint_id]
                site.queue.append(task)
                p = site.pending.setdefault(task.function.function_id, [0, 0])
                p[0] += 1
                p[1] += task.payload_bytes
                touched[d.endpoint_id] = site
            elif d.fail:
                self.failed += 1
            else:
                self.held.append(task)
        for site in touched.values():
            self._send(site)

    def _take_back_unsent(self) -> list[SimTask]:
        """Tasks routed but still waiting at the hub for a credit."""
        back: list[SimTask] = []
        for site in self.sites.values():
            for task in site.queue:
                p = site.pending[task.function.function_id]
                p[0] -= 1
                p[1] -= task.payload_bytes
            back.extend(site.queue)
            site.queue.clear()
        return back

    def _send(self, site: _Site) -> None:
        e = site.spec
        while site.online and site.credits > 0 and site.queue:
            task = site.queue.popleft()
            site.credits -= 1
            site.link_free_at = max(self.now, site.link_free_at) + task.payload_bytes / e.bandwidth_Bps
            site.sent[task.task_id] = task
            self._at(site.link_free_at + e.latency_s, DELIVER, site, task, site.epoch)

    def _down(self, site: _Site) -> None:
        """The endpoint is gone: what it held and what waited for it go elsewhere."""
        site.online = False
        site.epoch += 1
        for _, started in site.running.values():
            site.busy_s += self.now - started  # paid for, then lost
        lost = [*site.sent.values(), *site.queue]
        site.reset(self.now)
        self.requeued += len(lost)
        self._route(lost)

    # ---------------------------------------------------------------- the endpoints
    def _start(self, site: _Site) -> None:
        e = site.spec
        while site.idle and site.ready:
            task = site.ready.popleft()
            worker = site.idle.pop()
            fid = task.function.function_id
            cold = fid not in site.warm[worker]
            site.warm[worker].add(fid)
            runtime = task.runtime_on(e) + (e.cold_start_s if cold else 0.0)
            site.running[task.task_id] = (worker, self.now)
            self._at(self.now + runtime, DONE, site, task, worker, runtime, cold, site.epoch)

    def _done(self, site: _Site, task: SimTask, worker: int, runtime: float, cold: bool,
              epoch: int) -> None:
        if epoch != site.epoch:
            return  # lost in an outage; the task was rerouted
        del site.running[task.task_id]
        del site.sent[task.task_id]
        site.idle.append(worker)
        site.busy_s += runtime
        site.done += 1
        self._at(self.now + site.spec.latency_s, RESULT, site, task, runtime, cold, site.epoch)
        self._start(site)

    # ---------------------------------------------------------------- the report
    def _result(self) -> SimResult:
        tasks = self.workload.tasks
        specs = [s.spec for s in self.sites.values()]
        makespan = max(self.finished.values(), default=0.0)
        workers = sum(e.workers for e in specs)
        busy = sum(s.busy_s for s in self.sites.values())
        arrival = {t.task_id: t.arrival_s for t in tasks}
        responses = [end - arrival[tid] for tid, end in self.finished.items()]
        per = {}
        for s in self.sites.values():
            per[s.spec.endpoint_id] = {
                "tasks": s.done, "busy_s": s.busy_s,
                "cost": s.busy_s * s.spec.cost_per_core_hour / 3600.0,
                "utilisation": s.busy_s / (s.spec.workers * makespan) if makespan else 0.0}
        return SimResult(
            policy=getattr(self.policy, "name", type(self.policy).__name__),
            workload=self.workload.name, makespan_s=makespan,
            lower_bound_s=(self.lower_bound_s if self.lower_bound_s is not None
                           else lower_bound(specs, tasks)),
            cost=sum(p["cost"] for p in per.values()),
            utilisation=busy / (workers * makespan) if makespan else 0.0,
            completed=len(self.finished), failed=self.failed,
            unfinished=len(tasks) - len(self.finished) - self.failed, requeued=self.requeued,
            mean_response_s=sum(responses) / len(responses) if responses else 0.0,
            per_endpoint=per)


def simulate(endpoints: Sequence[SimEndpoint], workload: Workload, policy: Policy | str,
             model: RuntimeModel | None = None, lower_bound_s: float | None = None,
             rebalance: bool = False) -> SimResult:
    """Run `workload` on `endpoints` under `policy`; `model` starts empty unless
    given. Pass `lower_bound_s` when comparing policies on one workload: it is
    the same for all of them, and computing it is the slow part."""
    return Simulator(endpoints, workload, policy, model, lower_bound_s, rebalance).run()

