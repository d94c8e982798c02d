"""How soon could ANY schedule finish a simulated workload? A lower bound on
makespan, so the simulator can say how far a policy is from the best possible.

Three bounds, the largest wins (every one is safe: cold starts and lost work
are left out, which can only make the true optimum later):

- one task: its arrival, latency both ways, its payload over the link and
  its runtime, on its best endpoint;
- capacity: for every arrival time `a` and every set S of endpoints, the
  work of tasks arriving at or after `a` that can only run within S
  (speed-normalised seconds, each on its best endpoint) over S's capacity
  (sum of workers x speed);
- prices (LP duality): give three resources of each endpoint a price, all
  prices summing to one: its workers (a task occupies one for its runtime),
  its link (for its payload), and its slots (credits: one per worker plus
  prefetch, held from send to result, so for the round trip, the transfer
  and the run). Each task pays what its cheapest endpoint would charge it in
  busy time; no schedule can make the total bill exceed the makespan (less
  each endpoint's downtime, priced). Any prices give a valid bound; mirror
  ascent on the prices makes it tight. This one sees that links and GPU-only
  speedups are scarce, which the capacity bound does not.
"""

from __future__ import annotations

import math
from typing import Sequence

from scheduler.workloads import SimEndpoint, SimTask

#: Arrival times at which the price bound is evaluated (it is the costly one).
PRICE_POINTS = 4


def lower_bound(endpoints: Sequence[SimEndpoint], tasks: Sequence[SimTask],
                iterations: int = 150) -> float:
    if not tasks:
        return 0.0
    return max(one_task_bound(endpoints, tasks), capacity_bound(endpoints, tasks),
               price_bound(endpoints, tasks, iterations))


def one_task_bound(endpoints: Sequence[SimEndpoint], tasks: Sequence[SimTask]) -> float:
    best = 0.0
    for t in tasks:
        times = [2 * e.latency_s + t.payload_bytes / e.bandwidth_Bps + t.runtime_on(e)
                 for e in endpoints if t.can_run_on(e)]
        if times:
            best = max(best, t.arrival_s + min(times))
    return best


def capacity_bound(endpoints: Sequence[SimEndpoint], tasks: Sequence[SimTask]) -> float:
    groups: dict[frozenset[int], list[tuple[float, float]]] = {}
    for t in tasks:
        ok = [i for i, e in enumerate(endpoints) if t.can_run_on(e)]
        if ok:
            work = min(t.runtime_on(endpoints[i]) * endpoints[i].speed for i in ok)
            groups.setdefault(frozenset(ok), []).append((t.arrival_s, work))
    bound = 0.0
    for allowed in groups:
        capacity = sum(endpoints[i].workers * endpoints[i].speed for i in allowed)
        items = sorted(x for g, xs in groups.items() if g <= allowed for x in xs)
        remaining = 0.0
        for arrival, work in reversed(items):
            remaining += work
            bound = max(bound, arrival + remaining / capacity)
    return bound


def price_bound(endpoints: Sequence[SimEndpoint], tasks: Sequence[SimTask],
                iterations: int = 150) -> float:
    arrivals = sorted({t.arrival_s for t in tasks})
    points = sorted({arrivals[(len(arrivals) - 1) * k // max(1, PRICE_POINTS - 1)]
                     for k in range(PRICE_POINTS)})
    bound = 0.0
    for a in points:
        later = [t for t in tasks if t.arrival_s >= a]
        # Per task and endpoint: whole-endpoint seconds of workers, link and
        # slots it would occupy there (None where it cannot run).
        rows = []
        for t in later:
            row = [_usage(t, e) if t.can_run_on(e) else None for e in endpoints]
            if any(r is not None for r in row):
                rows.append(row)
        if rows:
            bound = max(bound, a + _best_bill(endpoints, rows, a, iterations))
    return bound


def _best_bill(endpoints: Sequence[SimEndpoint], rows: list[list], a: float,
               iterations: int) -> float:
    """Max over prices of (bill + priced downtime), by exponentiated-gradient ascent."""
    n = len(endpoints)
    capacity = sum(e.workers * e.speed for e in endpoints)
    # Start at the capacity bound's prices (workers priced by speed, the rest
    # nearly free), as [worker, link, slot] per endpoint.
    prices = [[e.workers * e.speed / capacity, 1e-3 / n, 1e-3 / n] for e in endpoints]
    best = 0.0
    for k in range(iterations):
        total = sum(map(sum, prices))
        prices = [[p / total for p in ps] for ps in prices]
        bill, used = 0.0, [[0.0, 0.0, 0.0] for _ in endpoints]
        for row in rows:
            cheapest, at = math.inf, -1
            for i, cell in enumerate(row):
                if cell is not None:
                    p = prices[i]
                    c = p[0] * cell[0] + p[1] * cell[1] + p[2] * cell[2]
                    if c < cheapest:
                        cheapest, at = c, i
            bill += cheapest
            u, cell = used[at], row[at]
            u[0] += cell[0]
            u[1] += cell[1]
            u[2] += cell[2]
        best = max(best, _with_downtime(endpoints, [sum(p) for p in prices], bill, a))
        # Raise the price of what is most used: the supergradient, normalised.
        scale = max(map(max, used)) or 1.0
        step = 2.0 / math.sqrt(k + 1)
        prices = [[p * math.exp(step * g / scale) for p, g in zip(ps, us)]
                  for ps, us in zip(prices, used)]
    return best


def _usage(t: SimTask, e: SimEndpoint) -> tuple[float, float, float]:
    run = t.runtime_on(e)
    link = t.payload_bytes / e.bandwidth_Bps
    return run / e.workers, link, (run + link + 2 * e.latency_s) / (e.workers + e.prefetch)


def _with_downtime(endpoints: Sequence[SimEndpoint], price: list[float], bill: float,
                   a: float) -> float:
    """bill <= (T - a) - sum(price_e x downtime_e in [a, T]): solve for T by
    iterating from below (the right side grows with T, so we never overshoot)."""
    if not any(e.outages for e in endpoints):
        return bill
    span = bill
    for _ in range(8):
        end = a + span
        lost = sum(p * _downtime(e, a, end) for e, p in zip(endpoints, price))
        span = bill + lost
    return span


def _downtime(e: SimEndpoint, start: float, end: float) -> float:
    return sum(max(0.0, min(end, s + d) - max(start, s)) for s, d in e.outages)
