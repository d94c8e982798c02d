"""What the scheduler sees: frozen snapshots of endpoints and tasks, and its answers.

The hub builds views from its live state; the simulator builds them from
simulated endpoints. Neither side leaks its own types in here. Every field
past the first few has a default, so a caller that knows little (an endpoint
that never measured its link, a task with no special needs) still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class EndpointView:
    endpoint_id: str
    name: str
    online: bool
    python_version: str  # "" when the endpoint has not reported its capabilities
    workers: int = 1
    credits: int = 0  # tasks the endpoint will accept right now
    queued: int = 0  # routed to it at the hub, not yet sent
    in_flight: int = 0  # sent, no result yet
    gpus: int = 0
    memory_bytes: int = 0  # memory a task may use there; 0 = not reported
    free_slots: int = 0  # idle workers, from the last heartbeat
    # Tasks routed there and unfinished, per function: (function_id, tasks,
    # payload bytes). The scheduler prices them with what it knows *now*, so a
    # backlog routed before the model learned a function is not underestimated.
    pending: tuple[tuple[str, int, int], ...] = ()
    # Or the backlog already priced, in slot-seconds (e.g. the sum of their
    # `Decision.slot_s`): wins over `pending`. Neither: estimated from counts.
    backlog_s: float | None = None
    # Payload of tasks routed there and unfinished (queued at the hub or in
    # flight): what may still have to cross its link before they can start.
    link_bytes: int = 0
    latency_s: float = 0.0  # measured one-way link latency
    bandwidth_Bps: float = 0.0  # measured link bandwidth; 0 = unknown (payload time ignored)
    relative_speed: float = 1.0  # declared speed of one worker (1.0 = reference machine)
    cost_per_core_hour: float = 0.0  # what the owner pays; 0 = free (laptop, campus)


@dataclass(frozen=True, slots=True)
class TaskView:
    function_id: str
    #: The Python an endpoint must run; "" = any (the task's runtime brings its own).
    python_version: str
    endpoint_id: str | None = None  # the endpoint the user named, if any
    payload_bytes: int = 0
    gpus: int = 0  # GPUs the task needs; True counts as 1
    memory_bytes: int = 0  # memory the task needs; 0 = no need stated
    # Endpoints the user allows (None = any). Stored as a frozenset.
    allowed_endpoints: frozenset[str] | None = None
    deadline_s: float | None = None  # finish within this many seconds of now, if possible
    fail_fast: bool = False  # fail at once instead of waiting when nothing can run it

    def __post_init__(self) -> None:
        # Normalise the friendly forms (gpus=True, allowed=["a", "b"]) so views
        # hash and compare by value: route_batch groups tasks by their needs.
        if self.gpus is True or self.gpus is False:
            object.__setattr__(self, "gpus", int(self.gpus))
        allowed = self.allowed_endpoints
        if allowed is not None and not isinstance(allowed, frozenset):
            object.__setattr__(self, "allowed_endpoints", frozenset(_ids(allowed)))

    @property
    def needs(self) -> tuple:
        """What decides eligibility: tasks with equal needs see the same candidates."""
        return (self.python_version, self.gpus, self.memory_bytes, self.allowed_endpoints)


def _ids(allowed: Iterable[str] | str) -> Iterable[str]:
    return (allowed,) if isinstance(allowed, str) else allowed


@dataclass(frozen=True, slots=True)
class Decision:
    """Send the task to `endpoint_id`; `reason` is shown to users in `fabric tasks`.

    `eta_s` is the predicted time until the result is back at the hub, and
    `slot_s` how long the task is predicted to hold one of that endpoint's
    slots (round trip and payload transfer + expected cold start + runtime).
    Both are None only for a named endpoint the snapshot does not know.
    """

    endpoint_id: str
    reason: str
    eta_s: float | None = None
    slot_s: float | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """No endpoint can take the task now; keep it queued and say why.

    `fail` is True when the task asked to fail fast: the hub should fail it
    with `reason` instead of waiting for an endpoint that meets its needs.
    """

    reason: str
    fail: bool = False
