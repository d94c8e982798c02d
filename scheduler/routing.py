"""The entry points the hub (and the simulator) call: `route` and `route_batch`.

Order of business for each task: an endpoint the user named wins (if it
could ever run the task); otherwise the task's needs filter the endpoints
(constraints.py) and the policy chooses among what is left; when nothing is
left the task is held with a reason, or failed when it asked to fail fast.
It is never sent somewhere ineligible.
"""

from __future__ import annotations

import math
from typing import Sequence

from scheduler.constraints import named_problem, why_held
from scheduler.policies import Explicit, Policy
from scheduler.runtime_model import RuntimeModel
from scheduler.tally import Tally
from scheduler.views import Decision, EndpointView, Hold, TaskView

_EXPLICIT = Explicit()


def route(task: TaskView, endpoints: Sequence[EndpointView], policy: Policy,
          model: RuntimeModel | None = None) -> Decision | Hold:
    """Route one task against a snapshot. Costs O(endpoints): for many tasks
    use `route_batch`, which also counts each task before the next."""
    return route_batch((task,), endpoints, policy, model)[0]


def route_batch(tasks: Sequence[TaskView], endpoints: Sequence[EndpointView] | None,
                policy: Policy, model: RuntimeModel | None = None, *,
                tally: Tally | None = None) -> list[Decision | Hold]:
    """Route a batch against ONE snapshot, one answer per task, in order.

    Each routed task is added to a working tally (its predicted work to the
    endpoint's backlog, its payload to the link, one credit used), so a big
    batch spreads in proportion to speed. Pass your own `tally` (built from
    the snapshot; `endpoints` is then ignored) to read the counts afterwards.
    `model` defaults to a fresh RuntimeModel, which knows only declared speeds.
    """
    if tally is None:
        tally = Tally(endpoints or (), model)
    index, views = tally.index, tally.views
    holds: dict[tuple, Hold] = {}  # one reason per distinct set of needs
    out: list[Decision | Hold] = [None] * len(tasks)  # type: ignore[list-item]
    tally.plan(tasks)
    order = _routing_order(tasks, policy, tally)
    tally.order = list(order)
    for k in order:
        task = tasks[k]
        if task.endpoint_id is not None:
            decision: Decision | Hold = _named(task, tally)
        else:
            candidates = tally.candidates(task)
            if candidates:
                decision = policy.choose(task, candidates, tally)
            else:
                key = (task.needs, task.fail_fast)
                decision = holds.get(key) or holds.setdefault(
                    key, Hold(why_held(task, views), fail=task.fail_fast))
        if type(decision) is Decision:
            i = index.get(decision.endpoint_id)
            if i is not None:
                slot = decision.slot_s
                tally.assign(i, task, slot if slot is not None else tally.eta(i, task).slot_s)
        out[k] = decision
    return out


def _routing_order(tasks: Sequence[TaskView], policy: Policy, tally: Tally) -> Sequence[int]:
    """Submission order, unless the policy ranks tasks (higher first, stable).
    Named and unroutable tasks go first: they are decided whatever comes after."""
    rank = getattr(policy, "rank", None)
    if rank is None or len(tasks) < 2:
        return range(len(tasks))
    first = math.inf
    keys: list[float] = []
    for task in tasks:
        candidates = tally.candidates(task) if task.endpoint_id is None else None
        keys.append(rank(task, candidates, tally) if candidates else first)
    return sorted(range(len(tasks)), key=keys.__getitem__, reverse=True)


def _named(task: TaskView, tally: Tally) -> Decision | Hold:
    """The endpoint the user named: it, offline or not (the task waits for
    it), unless its capabilities rule the task out for good."""
    i = tally.index.get(task.endpoint_id)  # type: ignore[arg-type]
    if i is None:
        return _EXPLICIT.choose(task)  # not connected since the hub started: wait for it
    problem = named_problem(task, tally.views[i])
    if problem is not None:
        return Hold(problem, fail=task.fail_fast)
    eta = tally.eta(i, task)
    return Decision(task.endpoint_id, _EXPLICIT.choose(task).reason,  # type: ignore[arg-type]
                    eta.total_s, eta.slot_s)
