"""The engine interface: what the endpoint agent needs from whatever runs its tasks.

The agent (fabric/endpoint/agent.py) talks to its engine only through this
class: it hands over function bodies and batches of `WorkItem`s, gets every
outcome back through the `on_results` callback (on the agent's event loop),
and grants the hub `capacity()` credits. Three engines implement it: the
local process pool (fabric/endpoint/pool.py, the default), Parsl and Dask.

An engine whose capacity changes by itself (blocks joining or leaving under
autoscaling) calls `on_capacity()` so the agent grants or stops granting
credits at once instead of at the next heartbeat.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable

from fabric.worker.runtime import WorkItem, WorkResult

ResultsCallback = Callable[[list[WorkResult]], None]


class Engine(abc.ABC):
    """Runs tasks on workers. Lifecycle: `await start()` -> use -> `await shutdown()`."""

    #: The name users choose it by (`fabric endpoint start --engine NAME`).
    kind: ClassVar[str] = ""
    #: Set by the agent: called (on the loop) when capacity() may have changed.
    on_capacity: Callable[[], None] | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the workers (or connect to them); raise if that is impossible."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop everything this engine started. Idempotent. Unfinished tasks are
        dropped without a result: the hub requeues what an endpoint held."""

    @abc.abstractmethod
    def add_function(self, function_id: str, body: bytes) -> None:
        """Remember a function body; tasks that use it follow."""

    @abc.abstractmethod
    def submit(self, items: list[WorkItem]) -> None:
        """Queue tasks; never blocks. Every one ends in exactly one result, unless cancelled."""

    @abc.abstractmethod
    def cancel(self, task_ids: Iterable[str]) -> list[str]:
        """Cancel tasks; returns the ids that will never produce a result."""

    @abc.abstractmethod
    def take_unstarted(self) -> list[WorkItem]:
        """Remove and return tasks not yet handed to a worker (a draining endpoint
        gives them back to the hub)."""

    @abc.abstractmethod
    def capacity(self) -> int:
        """Tasks the endpoint should hold to keep its workers busy (and, under
        autoscaling, to let the engine see there is work to scale out for)."""

    @property
    @abc.abstractmethod
    def free_slots(self) -> int:
        """Workers with nothing to do (reported in heartbeats)."""

    @property
    @abc.abstractmethod
    def queued(self) -> int:
        """Tasks waiting for a worker (reported in heartbeats)."""

    @property
    @abc.abstractmethod
    def worker_count(self) -> int:
        """Workers connected now (0 while blocks are still starting)."""

    def _capacity_changed(self) -> None:
        if self.on_capacity is not None:
            self.on_capacity()

    async def __aenter__(self) -> "Engine":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()
