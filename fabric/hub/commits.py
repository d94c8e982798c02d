"""Group commit over one SQLite file: the write path under the hub's task store.

Reads and large writes run on one dedicated thread, so the event loop never
blocks on the disk for long. Writes are grouped: whatever the loop queued while
the previous transaction ran is committed together in the next one, and the
callers that need durability await their batch's commit. A lone small write
(one task submitted, say) found with the store idle is committed on the loop
itself: in WAL mode without fsync it costs about 25 µs, while the two thread
hops it would take cost several times that in latency. Under load, writes
arrive several per turn and keep going to the thread, where they group and
overlap with the loop. WAL checkpoints (which fsync) always run on the thread.

A full disk: SQLite rolls a failed COMMIT back itself (and may abandon the
whole transaction when one statement cannot spill its pages), so every op of
that transaction fails with the same StorageFull (`fabric.hub.disk.storage_full`
maps it) and none is ever reported stored without being stored. The WAL is
checkpointed and truncated once it passes `wal_limit`, and freed pages are not
overwritten (secure_delete=FAST), so dropping data never needs as much free
space as the data took: a full store can always make room by finishing tasks.

This module knows nothing of tasks: `fabric.hub.store` holds the SQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fabric import errors
from fabric.hub.disk import storage_full

log = logging.getLogger("fabric.hub")

Op = Callable[[sqlite3.Connection], Any]

#: A lone write of at most this many rows is committed on the event loop.
INLINE_ROWS = 8
#: Commits between WAL checkpoints (run on the store thread, never on the loop).
CHECKPOINT_EVERY = 200
#: WAL bytes past which a checkpoint also truncates it (the hub sets the store's
#: `wal_limit` from its disk's size: fabric.hub.disk.limits).
DEFAULT_WAL_LIMIT = 64 * 1024 * 1024
#: How long a truncating checkpoint waits for readers to move off the WAL.
TRUNCATE_WAIT_MS = 100


class GroupCommitter:
    """Owns one SQLite file and its thread. Start with `await open()`, end with
    `await close()`; `write()` queues an op for the next transaction, `read()`
    runs a query on the thread."""

    def __init__(self, path: str | Path,
                 prepare: Callable[[sqlite3.Connection], None] = lambda conn: None) -> None:
        self.path = str(path)
        self._prepare = prepare  # creates or migrates the tables, once opened
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fabric-store")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Op, asyncio.Future[Any] | None]] = []
        self._pending_rows = 0
        self._flushing = False
        self._reads = 0  # reads running on the store thread: no inline commit meanwhile
        self._since_checkpoint = 0
        self.wal_limit = DEFAULT_WAL_LIMIT
        self._wal_over = False  # the WAL passed wal_limit: checkpoint on the thread
        self._checkpoint_wanted = False  # ... after a commit made on the loop
        self._checkpoint_failing = False  # (said once, not after every commit)
        self.free_page_bytes = 0  # pages inside the file free for reuse (the disk budget)
        self._page_size = 4096
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.commits = 0  # transactions run, for tests and metrics
        self.full_commits = 0  # transactions lost to a full disk (StorageFull)

    # ------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._executor, self._open_sync)

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; no fsync per commit
        conn.execute("PRAGMA busy_timeout=5000")
        # Checkpoints fsync: we run them on the store thread (see _commit), not
        # inside whichever commit happens to cross the size limit.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        # Debian builds SQLite with secure_delete on: dropping a task's arguments
        # would rewrite them with zeros, needing as much free disk as they took,
        # so a full disk could not drain. FAST zeroes only what is written anyway.
        conn.execute("PRAGMA secure_delete=FAST")
        self._prepare(conn)
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        self._measure(conn)
        self._conn = conn

    # ------------------------------------------------------------ files (the disk budget)
    def db_bytes(self) -> int:
        return _size(self.path)

    def wal_bytes(self) -> int:
        return _size(self.path + "-wal")

    def _measure(self, conn: sqlite3.Connection) -> None:
        """After a commit: free pages (room to reuse) and whether the WAL is too big."""
        self.free_page_bytes = conn.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        self._wal_over = self.path != ":memory:" and self.wal_bytes() > self.wal_limit

    async def close(self) -> None:
        """Commit what is queued, then close the file. Idempotent."""
        if self._closed:
            return
        while self._pending or self._flushing:
            try:
                await self.flush()
            except errors.StorageFull as exc:
                # What is lost is what the hub gets again: results stay in the
                # endpoints' outboxes until acknowledged, dispatch marks only mean
                # a task may run twice. Said once, not left to asyncio to report.
                log.warning("closing the store with writes not stored: %s", exc)
                break
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # the WAL stays; the next open replays it
                log.warning("final checkpoint of %s failed: %s", self.path, exc)
            finally:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ group commit
    def write(self, op: Op, *, wait: bool = True, rows: int = 1) -> asyncio.Future[Any] | None:
        """Queue `op` (which touches about `rows` rows) for the next transaction;
        returns a future of its result if `wait`."""
        if self._closed:
            raise RuntimeError("task store is closed")
        fut = self._loop.create_future() if wait else None  # type: ignore[union-attr]
        self._pending.append((op, fut))
        self._pending_rows += rows
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._start_flush)  # type: ignore[union-attr]
        return fut

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        fut = self.write(lambda conn: None)
        await fut  # type: ignore[misc]

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        rows, self._pending_rows = self._pending_rows, 0
        if len(batch) == 1 and rows <= INLINE_ROWS and not self._reads \
                and self._since_checkpoint < CHECKPOINT_EVERY and not self._wal_over:
            try:
                outcomes = self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - reported to every op of the batch
                self._settle(batch, None, exc)
            else:
                self._settle(batch, outcomes, None)
            self._next_flush()
            return
        task = self._loop.run_in_executor(self._executor, self._commit, batch, True)  # type: ignore[union-attr]
        task.add_done_callback(lambda f: self._committed(f, batch))

    def _commit(self, batch: list[tuple[Op, Any]], on_thread: bool = False) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN")
            for op, _ in batch:
                # One failing op must not lose the others: savepoint each.
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # reported to that op's caller only
                    if not conn.in_transaction:
                        raise  # SQLite gave the whole transaction up: every op failed
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, storage_full(exc) or exc))
            conn.execute("COMMIT")
        except BaseException as exc:
            # A COMMIT that failed for want of room was rolled back by SQLite
            # already: a second ROLLBACK would raise and hide why.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as second:
                    log.warning("rollback after %r failed: %s", exc, second)
            full = storage_full(exc)
            if full is None:
                raise
            self.full_commits += 1
            raise full from exc
        self.commits += 1
        self._since_checkpoint += 1
        try:
            self._measure(conn)
            if on_thread and (self._wal_over or self._since_checkpoint >= CHECKPOINT_EVERY):
                self._checkpoint(conn)
                self._checkpoint_failing = False
        except (sqlite3.Error, OSError) as exc:  # committed all the same; the next one retries
            if not self._checkpoint_failing:
                log.warning("checkpoint of %s failed (tried again after each commit): %s",
                            self.path, exc)
            self._checkpoint_failing = True
        self._checkpoint_wanted = self._wal_over and not on_thread
        return outcomes

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never waits for readers
        if self._wal_over:
            # Give the WAL's space back to the disk. Truncating waits for readers
            # to leave the WAL: briefly, or it is tried again after the next commit.
            conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.execute("PRAGMA busy_timeout=5000")
            self._measure(conn)
        self._since_checkpoint = 0

    def _committed(self, done: asyncio.Future[Any], batch: list[tuple[Op, Any]]) -> None:
        exc = done.exception()
        self._settle(batch, None if exc is not None else done.result(), exc)
        self._next_flush()

    def _settle(self, batch: list[tuple[Op, Any]], outcomes: list[tuple[bool, Any]] | None,
                exc: BaseException | None) -> None:
        for i, (_, fut) in enumerate(batch):
            if fut is None or fut.done():
                continue
            if exc is not None or outcomes is None:
                fut.set_exception(exc or RuntimeError("commit failed"))
                continue
            ok, value = outcomes[i]
            fut.set_result(value) if ok else fut.set_exception(value)

    def _next_flush(self) -> None:
        if not self._pending and self._checkpoint_wanted:
            # A commit on the loop left the WAL too big: checkpoint it on the thread
            # now, not whenever the next big write comes (the disk budget counts it).
            self._checkpoint_wanted = False
            self._pending.append((lambda conn: None, None))
            self._pending_rows += INLINE_ROWS + 1
        if self._pending:
            self._start_flush()
        else:
            self._flushing = False

    async def read(self, op: Op) -> Any:
        """Run a read on the store thread (sees everything committed before it)."""
        loop = asyncio.get_running_loop()
        self._reads += 1
        try:
            return await loop.run_in_executor(self._executor, op, self._conn)
        except sqlite3.OperationalError as exc:  # (a big sort may spill to disk)
            full = storage_full(exc)
            if full is None:
                raise
            raise full from exc
        finally:
            self._reads -= 1


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, ValueError):
        return 0
