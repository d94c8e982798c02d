"""Final outcomes on their way into the store: results from endpoints, and the
hub's own cancellations and failures.

The dispatcher hands each batch here once it has taken the tasks out of its
live set (`Dispatcher.on_results`, `_end_here`). A batch is committed first;
only then are its results published to waiting clients and acknowledged to
the endpoints that sent them. So a client never has a result the store does
not, and an endpoint forgets a result only once the hub has stored it.

When the disk has no room (the budget refuses, or the commit fails with
StorageFull), the batch is held here, in memory, and retried with backoff
until it is stored: no restart needed. Meanwhile the endpoints still keep
those results in their outboxes (nothing was acknowledged), so a hub that
dies while holding them loses nothing: they are replayed when it is back.
While anything is held the dispatcher sends no new tasks (their results would
only pile up here); it is told when the held results are stored.

A duplicate of a result held here (its endpoint replaying it after a
reconnect, or another copy of the task) is acknowledged only once the held
one is stored: earlier, the endpoint would forget the one durable copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fabric import errors
from fabric._proto import fabric_pb2 as pb
from fabric.hub.disk import ROW_BYTES, DiskBudget
from fabric.hub.live import Link
from fabric.hub.sessions import Sessions
from fabric.hub.store import TaskStore
from fabric.states import TaskState

log = logging.getLogger("fabric.hub")

#: Backoff between attempts to store held outcomes (seconds).
RETRY_MIN_S, RETRY_MAX_S = 0.05, 1.0


@dataclass(slots=True, eq=False)
class Outcome:
    """One task's final outcome, not stored yet."""

    result: pb.TaskResult  # what waiting clients get once it is stored
    row: tuple[Any, ...]  # for TaskStore.finish_tasks (the Finisher adds collected_at)
    owner: str
    was: TaskState  # what lookups report until it is stored
    ack_to: set[str] = field(default_factory=set)  # endpoint ids to acknowledge it to
    frees_blob: bool = False  # its arguments were a blob, deletable once it is stored

    @property
    def size(self) -> int:
        return len(self.result.value) + self.result.error.ByteSize() + ROW_BYTES


class Finisher:
    """Stores outcomes, then publishes and acknowledges them; holds them while the
    disk is full. `on_stored(frees_blob)` is told after each stored batch,
    `on_resumed()` when held outcomes are all stored (dispatch may go on)."""

    def __init__(self, store: TaskStore, sessions: Sessions, budget: DiskBudget,
                 links: dict[str, Link], counters: dict[str, int]) -> None:
        self._store = store
        self._sessions = sessions
        self._budget = budget
        self._links = links  # endpoint id -> its live link (the dispatcher's)
        self._counters = counters
        self.pending: dict[str, Outcome] = {}  # by task id: everything not stored yet
        self._held: list[Outcome] = []
        self._stalled_since: float | None = None  # holding since (monotonic)
        self._retry: asyncio.TimerHandle | None = None
        self._delay = RETRY_MIN_S
        self._closed = False
        self.on_stored: Callable[[bool], None] = lambda frees_blob: None
        self.on_resumed: Callable[[], None] = lambda: None

    @property
    def holding(self) -> bool:
        """Outcomes are waiting for room: send no new work."""
        return self._stalled_since is not None

    def get(self, task_id: str) -> Outcome | None:
        return self.pending.get(task_id)

    def owe_ack(self, task_id: str, endpoint_id: str) -> bool:
        """A repeat of a result for `task_id`, from `endpoint_id`: if this task's
        result is not stored yet, acknowledge the repeat with it (True). False when
        no endpoint's result is pending for it here (stored, or the hub's own
        outcome, a cancellation, which the repeat cannot replace)."""
        o = self.pending.get(task_id)
        if o is None or not o.ack_to:
            return False
        o.ack_to.add(endpoint_id)
        return True

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.pending[o.result.task_id] = o
        if self.holding:  # the disk is full: wait with the others
            self._hold(list(outcomes), None)
        else:
            self._write(list(outcomes))

    def close(self) -> int:
        """Stop retrying (hub shutdown); returns how many outcomes were not stored."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        return len(self.pending)

    # ------------------------------------------------------------ storing
    def _write(self, batch: list[Outcome]) -> None:
        if self._closed:  # shutting down: the endpoints send them to the next hub
            return
        try:
            self._budget.spend(sum(o.size for o in batch), result=True)
        except errors.StorageFull as exc:
            self._hold(batch, exc)
            return
        # A result a client waits for is pushed to it as soon as it is stored: record it
        # as collected in the same write (the retention clock starts), not in a third one.
        now = time.time()
        watched = {o.result.task_id for o in batch if self._sessions.watched(o.result.task_id)}
        done = self._store.finish_tasks([(*o.row, now if o.result.task_id in watched else None)
                                         for o in batch])
        done.add_done_callback(lambda fut: self._written(batch, watched, fut))

    def _written(self, batch: list[Outcome], watched: set[str], fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            self._hold(batch, exc)
            return
        acks: dict[str, list[str]] = {}
        for o in batch:
            self.pending.pop(o.result.task_id, None)
            for eid in o.ack_to:
                acks.setdefault(eid, []).append(o.result.task_id)
        self._sessions.publish([o.result for o in batch], marked=watched)
        for eid, ids in acks.items():
            link = self._links.get(eid)
            if link is not None and not link.closed:  # else: replayed on reconnect, acked then
                link.acks.extend(ids)
                link.wake.set()
        self.on_stored(any(o.frees_blob for o in batch))
        if self.holding:
            if self._held:
                self._try_again()  # there is room again: the rest at once
            else:
                self._resumed()

    def _hold(self, batch: list[Outcome], exc: BaseException | None) -> None:
        self._held.extend(batch)
        self._counters["results_held"] += sum(1 for o in batch if o.ack_to)
        if self._stalled_since is None:  # said once per stall, not at every retry
            self._stalled_since = time.monotonic()
            if exc is None or isinstance(exc, errors.StorageFull):
                log.warning("no room to store %d results (%s): their endpoints keep them "
                            "and the hub retries; no new tasks are sent until they are "
                            "stored", len(batch), exc)
            else:
                log.error("storing %d results failed; their endpoints keep them and the "
                          "hub retries", len(batch), exc_info=exc)
        if self._retry is None and not self._closed:
            self._retry = asyncio.get_running_loop().call_later(self._delay, self._try_again)
            self._delay = min(self._delay * 2, RETRY_MAX_S)

    def _try_again(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        batch, self._held = self._held, []
        if batch and not self._closed:
            self._write(batch)

    def _resumed(self) -> None:
        assert self._stalled_since is not None
        log.info("results stored again after %.1fs without room",
                 time.monotonic() - self._stalled_since)
        self._stalled_since = None
        self._delay = RETRY_MIN_S
        self.on_resumed()


__all__ = ["Finisher", "Outcome"]
