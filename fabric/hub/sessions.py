"""Result push: the open Watch streams of clients and who waits for which task.

A client opens one Watch stream per session; results of tasks it submitted
under that session, or subscribed to, are pushed on it as they are stored.
Nothing here polls: `publish()` is called by the dispatcher after a commit.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Callable, Collection, Iterable

from fabric import config
from fabric._proto import fabric_pb2 as pb


class Session:
    """One open Watch stream: an outbox the stream handler drains in batches."""

    __slots__ = ("session_id", "_outbox", "_ready", "closed")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._outbox: list[pb.TaskResult] = []
        self._ready = asyncio.Event()
        self.closed = False

    def push(self, result: pb.TaskResult) -> None:
        self._outbox.append(result)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next_batch(self, max_results: int = 4096,
                         max_bytes: int = config.MAX_BATCH_BYTES) -> list[pb.TaskResult]:
        """What is queued since the last call, up to `max_results` and about `max_bytes`
        (waits for at least one); [] once closed."""
        while not self._outbox:
            if self.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        n, size = 0, 0
        for r in self._outbox[:max_results]:
            size += len(r.value)
            if n and size > max_bytes:
                break
            n += 1
        batch = self._outbox[:n]
        del self._outbox[:n]
        return batch


class Sessions:
    def __init__(self, on_delivered: Callable[[list[str]], None] | None = None) -> None:
        self._sessions: dict[str, Session] = {}
        self._interest: defaultdict[str, set[str]] = defaultdict(set)
        # Told which final results reached a client: the retention clock starts there.
        self._on_delivered = on_delivered

    def delivered(self, task_ids: list[str]) -> None:
        if task_ids and self._on_delivered is not None:
            self._on_delivered(task_ids)

    def open(self, session_id: str) -> Session:
        # A client that reconnects reuses its id: the newest stream wins.
        old = self._sessions.get(session_id)
        if old is not None:
            old.close()
        session = self._sessions[session_id] = Session(session_id)
        return session

    def close(self, session: Session) -> None:
        session.close()
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]

    def watch(self, session_id: str, task_ids: Iterable[str]) -> None:
        for tid in task_ids:
            self._interest[tid].add(session_id)

    def watched(self, task_id: str) -> bool:
        """An open session waits for this task's result (it will be pushed when stored)."""
        return any(sid in self._sessions for sid in self._interest.get(task_id, ()))

    def publish(self, results: Iterable[pb.TaskResult], marked: Collection[str] = ()) -> None:
        """Push final results to the sessions that wait for them. `marked`: ids whose
        finish already recorded them as collected (no second write for those)."""
        interest, sessions = self._interest, self._sessions
        pushed = []
        for r in results:
            for sid in interest.pop(r.task_id, ()):
                session = sessions.get(sid)
                if session is not None:
                    session.push(r)
                    if r.task_id not in marked:
                        pushed.append(r.task_id)
        self.delivered(pushed)

    def push_to(self, session_id: str, results: Iterable[pb.TaskResult]) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            pushed = []
            for r in results:
                session.push(r)
                pushed.append(r.task_id)
            self.delivered(pushed)

    @property
    def open_count(self) -> int:
        return len(self._sessions)

    @property
    def waiting_count(self) -> int:
        return len(self._interest)
