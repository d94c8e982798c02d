"""The working state of one routing round: a snapshot of endpoints plus what
this round has assigned to each so far.

`route_batch` routes a whole batch against one snapshot. Without a tally,
every task of a 1,000-task batch would land on the endpoint that looked best
at the start; with it, each assignment adds the task's predicted slot time to
that endpoint's backlog (and its payload to the link), so the next task sees
the endpoint as it will be. Policies read the tally through `wait_s()`,
`slots_s()` and `eta()`, and keep their per-round indexes (heaps) in `cache`.

The timing model (the same one the simulator checks it against): an endpoint
grants one credit per slot (worker, plus prefetch); a task holds its slot
from being sent until its result is back, so for its payload transfer, the
latency both ways, an expected cold start and its runtime ("slot time"). A
task waits until a slot frees (the backlog shared by the workers) and until
the link has carried the payloads ahead of it, whichever is later.

Endpoints are held in endpoint-id order, so ties break the same way on every
run, whatever order the hub listed them in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from scheduler.constraints import eligible
from scheduler.runtime_model import Estimate, RuntimeModel
from scheduler.views import EndpointView, TaskView

#: At most this many payload classes per function in one round (see `plan`).
MAX_PAYLOAD_CLASSES = 8
_QUARTER_OCTAVE = math.log(2.0) / 4


@dataclass(frozen=True, slots=True)
class Eta:
    """Predicted time to a task's result on one endpoint, and its parts."""

    wait_s: float  # for a free slot, or for the link to carry what is ahead
    transfer_s: float  # the payload there and the result back (latency both ways)
    cold_s: float  # expected cold-start cost (chance of a cold worker x its cost)
    run_s: float  # predicted warm runtime

    @property
    def slot_s(self) -> float:
        """How long the task holds one of the endpoint's slots: the credit is
        spent when it is sent and returns with its result."""
        return self.transfer_s + self.cold_s + self.run_s

    @property
    def total_s(self) -> float:
        return self.wait_s + self.slot_s

    def describe(self) -> str:
        parts = [f"queue {self.wait_s:.3g}s", f"transfer {self.transfer_s:.3g}s"]
        if self.cold_s >= 0.0005:
            parts.append(f"cold start {self.cold_s:.3g}s")
        parts.append(f"run {self.run_s:.3g}s")
        return " + ".join(parts)


class Tally:
    """One snapshot of endpoints and this round's assignments to them."""

    def __init__(self, views: Iterable[EndpointView], model: RuntimeModel | None = None) -> None:
        self.model = model if model is not None else RuntimeModel()
        self.views: list[EndpointView] = sorted(views, key=lambda v: v.endpoint_id)
        self.index = {v.endpoint_id: i for i, v in enumerate(self.views)}
        n = len(self.views)
        self.workers = [max(1, v.workers) for v in self.views]
        self.jobs = [v.queued + v.in_flight for v in self.views]  # tasks ahead, all told
        self._lat2 = [2.0 * v.latency_s for v in self.views]
        self._inv_bw = [1.0 / v.bandwidth_Bps if v.bandwidth_Bps > 0 else 0.0 for v in self.views]
        for v in self.views:
            self.model.declare_speed(v.endpoint_id, v.relative_speed)
        self.backlog_s = [self._backlog(v) for v in self.views]  # slot-seconds ahead
        self.link_s = [v.link_bytes * b for v, b in zip(self.views, self._inv_bw)]  # link busy until
        self.waits = [self._wait(i) for i in range(n)]  # wait_s(i), kept current by assign()
        self.cost_rates = [v.cost_per_core_hour for v in self.views]
        self.credits_left = [v.credits for v in self.views]
        self.assigned = [0] * n
        self.cache: dict[Any, Any] = {}  # per-round indexes that policies build
        # Indexes of the batch's tasks in the order route_batch decided them.
        # Each ETA assumed the tasks decided before it run first, so an endpoint
        # should queue its tasks in this order (a policy may rank long ones first).
        self.order: list[int] = []
        self._candidates: dict[tuple, list[EndpointView]] = {}
        self._classes: dict[str, tuple[float, float]] = {}  # function -> (log lo, width)
        # function -> per endpoint (runtime, s per byte, at payload, expected cold)
        self._terms: dict[str, list[tuple[float, float, float, float] | None]] = {}

    def _backlog(self, v: EndpointView) -> float:
        """Slot-seconds of work already routed to the endpoint and unfinished."""
        if v.backlog_s is not None:
            return v.backlog_s
        if not v.pending:
            return (v.queued + v.in_flight) * self.model.typical_runtime(v.endpoint_id)
        total = 0.0
        per_byte = 1.0 / v.bandwidth_Bps if v.bandwidth_Bps > 0 else 0.0
        for function_id, n, size in v.pending:
            if n > 0:
                est = self.model.predict(function_id, v.endpoint_id, size // n, v.workers)
                total += n * (est.work_s + 2.0 * v.latency_s) + size * per_byte
        return total

    # ---------------------------------------------------------------- the batch
    def plan(self, tasks: Iterable[TaskView]) -> None:
        """Size the payload classes of each function to this batch's payloads.

        Tasks of one function whose payloads share a class share one ordering
        of endpoints (one heap per policy), so a batch costs O(endpoints) per
        class, not per task. Classes are a quarter-octave wide (about 19%), or
        wider when a function's payloads span more than MAX_PAYLOAD_CLASSES of
        those. Exact sizes still price the chosen endpoint's ETA and tally.
        """
        ranges: dict[str, tuple[int, int]] = {}
        for t in tasks:
            if t.payload_bytes > 0:
                lo, hi = ranges.get(t.function_id, (t.payload_bytes, t.payload_bytes))
                ranges[t.function_id] = (min(lo, t.payload_bytes), max(hi, t.payload_bytes))
        for f, (lo, hi) in ranges.items():
            span = math.log(hi) - math.log(lo)
            # A hair wider than span/MAX, so the largest payload stays in the last class.
            self._classes[f] = (math.log(lo), max(_QUARTER_OCTAVE, span / MAX_PAYLOAD_CLASSES * 1.0001))

    def payload_class(self, task: TaskView) -> int:
        """The representative payload of the task's class (see `plan`)."""
        p = task.payload_bytes
        if p <= 0:
            return 0
        lo, width = self._classes.get(task.function_id, (0.0, _QUARTER_OCTAVE))
        k = math.floor((math.log(p) - lo) / width)
        return int(math.exp(lo + (k + 0.5) * width))

    def candidates(self, task: TaskView) -> list[EndpointView]:
        """Eligible endpoints, in id order; the same list object for equal needs,
        so policies can key their per-round indexes on it."""
        needs = task.needs
        got = self._candidates.get(needs)
        if got is None:
            got = self._candidates[needs] = eligible(task, self.views)
        return got

    # ---------------------------------------------------------------- reading
    def queue_s(self, i: int) -> float:
        """Until a slot frees for a task routed to endpoint `i` now: none while
        a worker is free, else the backlog shared by the workers."""
        return self.backlog_s[i] / self.workers[i] if self.jobs[i] >= self.workers[i] else 0.0

    def _wait(self, i: int) -> float:
        queue, link = self.queue_s(i), self.link_s[i]
        return queue if queue >= link else link

    def wait_s(self, i: int) -> float:
        """Until a task routed to endpoint `i` now can start crossing the link:
        it needs a free slot, and the link done with the payloads ahead of it."""
        return self.waits[i]

    def transfer_s(self, i: int, payload_bytes: int) -> float:
        """Payload over the link, and latency there and back for the result."""
        return self._lat2[i] + payload_bytes * self._inv_bw[i]

    def run_s(self, i: int, function_id: str, payload_bytes: int) -> float:
        """Predicted warm runtime, from one model call per (function, endpoint)
        per round: other sizes follow the model's size slope."""
        r, slope, p0, _ = self._pair(i, function_id, payload_bytes)
        return r if not slope else max(r + slope * (payload_bytes - p0), 0.05 * r)

    def work_s(self, i: int, function_id: str, payload_bytes: int) -> float:
        """Predicted worker-seconds: runtime plus the expected cold start."""
        return self.run_s(i, function_id, payload_bytes) + self._pair(i, function_id, payload_bytes)[3]

    def slots_s(self, function_id: str, payload_bytes: int, indexes: Sequence[int],
                transfer: bool = True) -> list[float]:
        """Slot time of the function at this payload on each endpoint of
        `indexes` (without the transfer: the billed worker time). The inner
        loop of every policy index, so it is written flat."""
        terms = self._terms.get(function_id)
        if terms is None:
            terms = self._terms[function_id] = [None] * len(self.views)
        lat2, inv_bw, out = self._lat2, self._inv_bw, []
        for i in indexes:
            t = terms[i] or self._pair(i, function_id, payload_bytes)
            r = t[0]
            if t[1]:
                r = max(r + t[1] * (payload_bytes - t[2]), 0.05 * r)
            out.append(lat2[i] + payload_bytes * inv_bw[i] + t[3] + r if transfer else t[3] + r)
        return out

    def _pair(self, i: int, function_id: str, payload_bytes: int) -> tuple[float, float, float, float]:
        terms = self._terms.get(function_id)
        if terms is None:
            terms = self._terms[function_id] = [None] * len(self.views)
        got = terms[i]
        if got is None:
            eid = self.views[i].endpoint_id
            est = self.model.predict(function_id, eid, payload_bytes, self.workers[i])
            got = terms[i] = (est.runtime_s, self.model.per_byte_s(function_id, eid),
                              float(payload_bytes), est.cold_chance * est.cold_start_s)
        return got

    def predict(self, i: int, task: TaskView) -> Estimate:
        return self.model.predict(task.function_id, self.views[i].endpoint_id,
                                  task.payload_bytes, self.workers[i])

    def eta(self, i: int, task: TaskView, est: Estimate | None = None) -> Eta:
        """The exact prediction for this task on endpoint `i` (for its reason and tally)."""
        est = est or self.predict(i, task)
        return Eta(self.waits[i], self.transfer_s(i, task.payload_bytes),
                   est.cold_chance * est.cold_start_s, est.runtime_s)

    def counts(self) -> dict[str, int]:
        """Tasks assigned to each endpoint this round (endpoints with none left out)."""
        return {v.endpoint_id: n for v, n in zip(self.views, self.assigned) if n}

    # ---------------------------------------------------------------- writing
    def assign(self, i: int, task: TaskView, slot_s: float) -> None:
        """Count a task routed to endpoint `i`: it is now ahead of the next ones."""
        if task.payload_bytes and self._inv_bw[i]:
            # Sent only once a slot frees (credits), so the link cannot carry
            # this payload before then: a payload queued behind long compute
            # tasks does not overlap with them.
            self.link_s[i] = max(self.queue_s(i), self.link_s[i]) + task.payload_bytes * self._inv_bw[i]
        self.assigned[i] += 1
        self.jobs[i] += 1
        self.backlog_s[i] += slot_s
        self.credits_left[i] -= 1  # below zero: it waits in the hub's queue for credits
        self.waits[i] = self._wait(i)
