"""Routing policies: plain objects that pick an endpoint for a task.

Pure: no asyncio, no gRPC, no SQL. The hub calls `route()` with snapshots of
its endpoints; the simulator will call the very same objects.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from scheduler.views import Decision, EndpointView, Hold, TaskView


class Policy(Protocol):
    """Chooses among endpoints that are already known to be eligible."""

    name: str

    def choose(self, task: TaskView, eligible: Sequence[EndpointView]) -> Decision: ...


class RoundRobin:
    """Each task to the next eligible endpoint in turn (sorted by id, so stable)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, task: TaskView, eligible: Sequence[EndpointView]) -> Decision:
        ordered = sorted(eligible, key=lambda e: e.endpoint_id)
        chosen = ordered[self._turn % len(ordered)]
        self._turn += 1
        return Decision(chosen.endpoint_id, f"round-robin among {len(ordered)} online")


class LeastLoaded:
    """The endpoint with the fewest tasks queued and in flight per worker."""

    name = "least-loaded"

    def choose(self, task: TaskView, eligible: Sequence[EndpointView]) -> Decision:
        chosen = min(
            eligible,
            key=lambda e: ((e.queued + e.in_flight) / max(e.workers, 1), e.endpoint_id),
        )
        return Decision(chosen.endpoint_id, f"least loaded of {len(eligible)} online")


POLICIES: dict[str, type] = {p.name: p for p in (RoundRobin, LeastLoaded)}
DEFAULT_POLICY = RoundRobin.name


def make_policy(name: str) -> Policy:
    """A fresh policy object by name; raises ValueError naming the known ones."""
    try:
        return POLICIES[name or DEFAULT_POLICY]()
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; known policies: {known}") from None


def eligible(task: TaskView, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
    """Endpoints that may run the task at all: online, same Python minor version."""
    return [e for e in endpoints if e.online and e.python_version == task.python_version]


def route(task: TaskView, endpoints: Sequence[EndpointView], policy: Policy) -> Decision | Hold:
    """The one entry point the hub calls for a task.

    A task that names an endpoint goes there (online or not: it waits for it);
    otherwise the policy chooses among the eligible endpoints, or the task is
    held with a reason when there are none.
    """
    if task.endpoint_id is not None:
        return Decision(task.endpoint_id, "named by the user")
    candidates = eligible(task, endpoints)
    if not candidates:
        online = sum(1 for e in endpoints if e.online)
        if online:
            return Hold(
                f"waiting for an endpoint with Python {task.python_version} "
                f"({online} online, none matching)"
            )
        return Hold("waiting for an endpoint to come online")
    return policy.choose(task, candidates)
