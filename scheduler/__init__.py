"""Pure routing logic for Fabric: which endpoint runs each task, and why.

No gRPC, no SQL, no asyncio, no threads, standard library only: the hub feeds
snapshots in (`EndpointView`, `TaskView`) and carries `Decision`s / `Hold`s
out, so policies are tested in microseconds and the simulator
(`scheduler.simulator`) runs the very same objects.

- views.py          what the scheduler sees and answers
- runtime_model.py  runtimes and cold starts learned online from results
- constraints.py    which endpoints may run a task, and why none can
- tally.py          one routing round: a snapshot plus what it assigned
- policies.py       the policies users name
- routing.py        `route` / `route_batch`: needs first, then the policy
- simulator.py      discrete-event evaluation of the same objects ...
- workloads.py      ... against simulated endpoints and workloads ...
- bounds.py         ... next to a lower bound on makespan
(The last three are for benchmarks and tests; the hub needs none of them.)
"""

from scheduler.constraints import eligible
from scheduler.policies import (
    DEFAULT_POLICY,
    POLICIES,
    Cheapest,
    Explicit,
    Fastest,
    LeastLoaded,
    Policy,
    RoundRobin,
    SmallestEta,
    make_policy,
)
from scheduler.routing import route, route_batch
from scheduler.runtime_model import Estimate, RuntimeModel
from scheduler.tally import Eta, Tally
from scheduler.views import Decision, EndpointView, Hold, TaskView

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Cheapest",
    "Decision",
    "EndpointView",
    "Estimate",
    "Eta",
    "Explicit",
    "Fastest",
    "Hold",
    "LeastLoaded",
    "Policy",
    "RoundRobin",
    "RuntimeModel",
    "SmallestEta",
    "Tally",
    "TaskView",
    "eligible",
    "make_policy",
    "route",
    "route_batch",
]
