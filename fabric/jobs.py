"""Background jobs with an owner: whoever starts one stops it and waits for it.

A long-lived thing (the hub, a client, an endpoint) keeps one `Jobs` and
starts every background coroutine through it, instead of a bare
`create_task` nobody holds: so shutdown cancels *and awaits* each one (none
touches a store that is already closed), and a job that dies of an error says
so in the log instead of vanishing (a purge loop that stopped quietly would
keep results forever).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

log = logging.getLogger("fabric")


class Jobs:
    """`start()` jobs on the running loop; `await stop()` cancels and awaits them all.
    Idempotent; nothing can be started once stopping began."""

    def __init__(self, owner: str) -> None:
        self.owner = owner  # for the log: whose job died
        self._jobs: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def start(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        if self._stopping:
            coro.close()  # never awaited: close it so Python does not warn
            raise RuntimeError(f"{self.owner} is shutting down: no new background jobs")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._jobs.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            log.error("%s: background job %s died", self.owner, task.get_name(),
                      exc_info=task.exception())

    async def stop(self) -> None:
        """Cancel every job and wait until each has ended (errors are not raised here)."""
        self._stopping = True
        jobs = list(self._jobs)
        for task in jobs:
            task.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._jobs)


__all__ = ["Jobs"]
