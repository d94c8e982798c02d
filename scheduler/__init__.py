"""Pure routing logic for Fabric: endpoint and task views, policies, `route()`.

No gRPC, no SQL, no asyncio: the hub feeds snapshots in and carries the
decision out, so policies are tested in microseconds.
"""

from scheduler.policies import (
    DEFAULT_POLICY,
    POLICIES,
    LeastLoaded,
    Policy,
    RoundRobin,
    eligible,
    make_policy,
    route,
)
from scheduler.views import Decision, EndpointView, Hold, TaskView

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Decision",
    "EndpointView",
    "Hold",
    "LeastLoaded",
    "Policy",
    "RoundRobin",
    "TaskView",
    "eligible",
    "make_policy",
    "route",
]
