"""Routing policies: plain objects that pick one endpoint among eligible ones.

Pure: no asyncio, no gRPC, no SQL. `route()` / `route_batch()` filter the
endpoints by the task's needs first, then ask a policy; the simulator calls
the very same objects. Names are what users type: "round-robin",
"least-loaded", "fastest", "cheapest", "smallest-eta".

Speed: a batch is routed against one `Tally`. Policies that minimise a key
(load, ETA, cost) keep a heap per task class in the tally and update it
lazily: an endpoint's key only grows as this round assigns work to it, so a
stale key is a lower bound; popping until the top is current finds the true
minimum in O(log endpoints) instead of scanning every endpoint per task.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol, Sequence

from scheduler.tally import Tally
from scheduler.views import Decision, EndpointView, TaskView


class Policy(Protocol):
    """Chooses among endpoints that are already known to be eligible (non-empty).

    `candidates` come from `tally.candidates(task)` (endpoint-id order); a
    policy called without a tally makes a throwaway one. A policy may also
    define `rank(task, candidates, tally) -> float`: route_batch then decides
    a batch's tasks in descending rank instead of submission order.
    """

    name: str

    def choose(self, task: TaskView, candidates: Sequence[EndpointView],
               tally: Tally | None = None) -> Decision: ...


def _round(candidates: Sequence[EndpointView], tally: Tally | None) -> tuple[Tally, Sequence[EndpointView]]:
    if tally is None:
        tally = Tally(candidates)
        return tally, tally.views
    return tally, candidates


class Explicit:
    """The endpoint the user named. Routing applies it before any policy."""

    name = "explicit"

    def choose(self, task: TaskView, candidates: Sequence[EndpointView] = (),
               tally: Tally | None = None) -> Decision:
        if task.endpoint_id is None:
            raise ValueError("the task names no endpoint")
        return Decision(task.endpoint_id, "named by the user")


class RoundRobin:
    """Each task to the next eligible endpoint in turn (in id order, so stable)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, task: TaskView, candidates: Sequence[EndpointView],
               tally: Tally | None = None) -> Decision:
        tally, candidates = _round(candidates, tally)
        chosen = candidates[self._turn % len(candidates)]
        self._turn += 1
        eta = tally.eta(tally.index[chosen.endpoint_id], task)
        return Decision(chosen.endpoint_id, f"round-robin among {len(candidates)} online",
                        eta.total_s, eta.slot_s)


class LeastLoaded:
    """The endpoint with the fewest tasks queued and in flight per worker."""

    name = "least-loaded"

    def choose(self, task: TaskView, candidates: Sequence[EndpointView],
               tally: Tally | None = None) -> Decision:
        tally, candidates = _round(candidates, tally)
        jobs, workers = tally.jobs, tally.workers
        key = ("least-loaded", id(candidates))
        entry = tally.cache.get(key)
        if entry is None:
            heap = [(jobs[i] / workers[i], i) for i in _indexes(tally, candidates)]
            heapq.heapify(heap)
            entry = tally.cache[key] = (candidates, heap)  # holding candidates pins its id
        heap = entry[1]
        while True:
            k, i = heap[0]
            now = jobs[i] / workers[i]
            if now <= k:
                break
            heapq.heapreplace(heap, (now, i))
        eta = tally.eta(i, task)
        return Decision(tally.views[i].endpoint_id,
                        f"least loaded of {len(candidates)} "
                        f"({jobs[i]} tasks on {workers[i]} workers)", eta.total_s, eta.slot_s)


class Fastest:
    """The smallest predicted runtime, ignoring queues: the naive baseline."""

    name = "fastest"

    def choose(self, task: TaskView, candidates: Sequence[EndpointView],
               tally: Tally | None = None) -> Decision:
        tally, candidates = _round(candidates, tally)
        rep = tally.payload_class(task)
        key = ("fastest", task.function_id, rep, id(candidates))
        entry = tally.cache.get(key)
        if entry is None:
            f = task.function_id
            best = min((tally.run_s(i, f, rep), i) for i in _indexes(tally, candidates))
            entry = tally.cache[key] = (candidates, best[1])
        i = entry[1]
        est = tally.predict(i, task)
        eta = tally.eta(i, task, est)
        return Decision(tally.views[i].endpoint_id,
                        f"fastest of {len(candidates)}: run {est.runtime_s:.3g}s ({est.source})",
                        eta.total_s, eta.slot_s)


class SmallestEta:
    """The earliest predicted result: queue wait + transfer + cold start + runtime.

    Within a batch, tasks that can run in one place only go first, then the
    longest (`rank`), as in longest-processing-time list scheduling: short
    tasks then fill what is left, instead of a long task landing last on a
    slow endpoint. The hub should queue each endpoint's tasks in that routing
    order (`Tally.order`), which is also the order every ETA assumed.
    """

    name = "smallest-eta"

    def rank(self, task: TaskView, candidates: Sequence[EndpointView], tally: Tally) -> float:
        """Routing priority within a batch, higher first: tasks with a single
        candidate (they have no choice; the rest should plan around them), then
        predicted time on the task's best endpoint."""
        if len(candidates) == 1:
            return float("inf")
        return _longest_first(tally, task, candidates)

    def choose(self, task: TaskView, candidates: Sequence[EndpointView],
               tally: Tally | None = None) -> Decision:
        tally, candidates = _round(candidates, tally)
        i = _smallest_eta(tally, task, candidates)
        eta = tally.eta(i, task)
        return Decision(tally.views[i].endpoint_id,
                        f"smallest ETA {eta.total_s:.3g}s of {len(candidates)} ({eta.describe()})",
                        eta.total_s, eta.slot_s)


class Cheapest:
    """The lowest predicted cost (billed runtime x cost per core-hour); ties go
    to the smaller ETA, so among free endpoints it is smallest-ETA.

    With a deadline (the task's, else the policy's): the cheapest endpoint
    whose ETA meets it; when none does, the smallest ETA, saying so.
    """

    name = "cheapest"

    def __init__(self, deadline_s: float | None = None) -> None:
        self.deadline_s = deadline_s

    def choose(self, task: TaskView, candidates: Sequence[EndpointView],
               tally: Tally | None = None) -> Decision:
        tally, candidates = _round(candidates, tally)
        deadline = task.deadline_s if task.deadline_s is not None else self.deadline_s
        index = _eta_index(tally, task, candidates, "cheapest", deadline)
        heap, static, waits = index[2], index[1], tally.waits
        while heap:
            cost, k, i = heap[0]
            now = waits[i] + static[i]
            if deadline is not None and now > deadline:
                heapq.heappop(heap)  # ETAs only grow this round: it never meets it again
                continue
            if now <= k:
                break
            heapq.heapreplace(heap, (cost, now, i))
        else:
            i = _smallest_eta(tally, task, candidates)
            eta = tally.eta(i, task)
            return Decision(tally.views[i].endpoint_id,
                            f"deadline {deadline:g}s cannot be met; smallest ETA "
                            f"{eta.total_s:.3g}s of {len(candidates)} ({eta.describe()})",
                            eta.total_s, eta.slot_s)
        eta = tally.eta(i, task)
        price = _money((eta.cold_s + eta.run_s) * tally.views[i].cost_per_core_hour / 3600.0)
        within = "" if deadline is None else f" meeting the {deadline:g}s deadline"
        return Decision(tally.views[i].endpoint_id,
                        f"cheapest of {len(candidates)}{within}: {price}, ETA {eta.total_s:.3g}s",
                        eta.total_s, eta.slot_s)


# ------------------------------------------------------------------ shared insides

def _indexes(tally: Tally, candidates: Sequence[EndpointView]) -> list[int]:
    index = tally.index
    return [index[v.endpoint_id] for v in candidates]


def _eta_index(tally: Tally, task: TaskView, candidates: Sequence[EndpointView],
               kind: str, deadline: float | None = None) -> Any:
    """Per round and task class: the fixed part of each candidate's ETA (transfer
    + expected cold start + runtime) and a heap keyed by ETA (or cost, ETA)."""
    rep = tally.payload_class(task)
    key = (kind, task.function_id, rep, id(candidates), deadline)
    entry = tally.cache.get(key)
    if entry is None:
        indexes = _indexes(tally, candidates)
        slots = tally.slots_s(task.function_id, rep, indexes)
        static = dict(zip(indexes, slots))
        waits = tally.waits
        if kind == "cheapest":  # billed: the slot time less the transfer
            rates = tally.cost_rates
            billed = tally.slots_s(task.function_id, rep, indexes, transfer=False)
            heap: list[tuple] = [(b * rates[i], waits[i] + fixed, i)
                                 for i, fixed, b in zip(indexes, slots, billed)]
        else:
            heap = [(waits[i] + fixed, i) for i, fixed in zip(indexes, slots)]
        heapq.heapify(heap)
        entry = tally.cache[key] = (candidates, static, heap)
    return entry


def _longest_first(tally: Tally, task: TaskView, candidates: Sequence[EndpointView]) -> float:
    """The task's predicted slot time on its best endpoint (cached per class)."""
    key = ("longest-first", task.function_id, tally.payload_class(task), id(candidates))
    got = tally.cache.get(key)
    if got is None:
        got = tally.cache[key] = min(_eta_index(tally, task, candidates, "eta")[1].values())
    return got


def _smallest_eta(tally: Tally, task: TaskView, candidates: Sequence[EndpointView]) -> int:
    _, static, heap = _eta_index(tally, task, candidates, "eta")
    waits = tally.waits
    while True:
        k, i = heap[0]
        now = waits[i] + static[i]
        if now <= k:
            return i
        heapq.heapreplace(heap, (now, i))


def _money(dollars: float) -> str:
    return "free" if dollars <= 0.0 else f"${dollars:.2g}"


POLICIES: dict[str, type] = {p.name: p for p in (RoundRobin, LeastLoaded, Fastest, Cheapest,
                                                  SmallestEta)}
DEFAULT_POLICY = SmallestEta.name


def make_policy(name: str | None = None, **options: Any) -> Policy:
    """A fresh policy object by name (options such as `deadline_s` for "cheapest");
    raises ValueError naming the known policies, or the option it does not take."""
    name = name or DEFAULT_POLICY
    try:
        cls = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; known policies: {known}") from None
    try:
        return cls(**options)
    except TypeError:
        raise ValueError(f"policy {name!r} takes no option(s) {', '.join(sorted(options))}") from None
