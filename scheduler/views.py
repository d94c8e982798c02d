"""What the scheduler sees: frozen snapshots of endpoints and tasks.

The hub builds these from its live state; the simulator builds them from
simulated endpoints. Neither side leaks its own types in here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointView:
    endpoint_id: str
    name: str
    online: bool
    python_version: str
    workers: int = 1
    credits: int = 0  # tasks the endpoint will accept right now
    queued: int = 0  # routed to it at the hub, not yet sent
    in_flight: int = 0  # sent, no result yet
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class TaskView:
    function_id: str
    python_version: str
    endpoint_id: str | None = None  # the endpoint the user named, if any
    payload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """Send the task to `endpoint_id`; `reason` is shown to users in `fabric tasks`."""

    endpoint_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """No endpoint can take the task now; keep it queued and say why."""

    reason: str
