"""The hub's durable task store: its tables and every query on them.

Writes go through group commit (`fabric.hub.commits`): many per transaction,
the callers that need durability awaiting their batch's commit.

The store keeps function bodies, arguments and results as opaque bytes; it
never unpickles them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from fabric.hub import schema
from fabric.hub.commits import INLINE_ROWS, GroupCommitter
from fabric.states import TaskState


@dataclass(slots=True)
class FunctionRow:
    function_id: str
    name: str
    body: bytes
    python_version: str
    owner: str
    runtime: bytes = b""  # the function's runtime spec (JSON), b"" for none


@dataclass(slots=True)
class BlobRow:
    blob_id: str
    owner: str  # who may fetch it: the uploader, or for a result, the task's submitter
    size: int
    sha256: str
    task_id: str  # results: the task it answers ("" for uploaded arguments)
    created_at: float
    used: bool  # a task or result has referred to it


@dataclass(slots=True)
class EndpointRow:
    endpoint_id: str
    name: str
    owner: str
    capabilities: dict[str, Any]
    last_seen: float


@dataclass(slots=True)
class TaskRow:
    """A task as stored; `args` is only loaded when asked for."""

    task_id: str
    function_id: str
    state: TaskState
    requested_endpoint: str | None
    endpoint_id: str | None
    session_id: str
    owner: str
    route_reason: str
    submitted_at: float
    completed_at: float | None
    runtime_s: float | None
    error_type: str | None
    walltime_s: float = 0.0
    max_retries: int | None = None
    needs: dict[str, Any] | None = None
    args: bytes | None = None
    value: bytes | None = None
    error: bytes | None = None  # serialized TaskError message (protobuf bytes)
    args_blob: str | None = None  # arguments stored as a blob (then `args` is empty)
    value_blob: str | None = None  # result value stored as a blob
    args_size: int = 0  # bytes of the arguments, wherever they are


class TaskStore(GroupCommitter):
    """The hub's tables (tasks, functions, endpoints) over a group-committed
    SQLite file. Start with `await open()`, end with `await close()`."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, prepare=schema.ensure)

    # ------------------------------------------------------------ functions
    def put_function(self, row: FunctionRow) -> asyncio.Future[Any]:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO functions (function_id, name, body, python_version, owner, "
                "created_at, runtime) VALUES (?,?,?,?,?,?,?)",
                (row.function_id, row.name, row.body, row.python_version, row.owner, time.time(),
                 row.runtime or None),
            )

        return self.write(op, rows=_weight(1, len(row.body)))  # type: ignore[return-value]

    async def get_function(self, function_id: str) -> FunctionRow | None:
        def op(conn: sqlite3.Connection) -> FunctionRow | None:
            r = conn.execute(
                "SELECT function_id, name, body, python_version, owner, runtime FROM functions "
                "WHERE function_id=?",
                (function_id,),
            ).fetchone()
            return FunctionRow(*r[:5], r[5] or b"") if r else None

        return await self.read(op)

    # ------------------------------------------------------------ endpoints
    async def upsert_endpoint(self, owner: str, name: str, new_id: str, caps: dict[str, Any]) -> str:
        """The endpoint id for (owner, name): existing one, or `new_id` if first seen."""

        def op(conn: sqlite3.Connection) -> str:
            now = time.time()
            r = conn.execute(
                "SELECT endpoint_id FROM endpoints WHERE owner=? AND name=?", (owner, name)
            ).fetchone()
            endpoint_id = r[0] if r else new_id
            if r:
                conn.execute(
                    "UPDATE endpoints SET capabilities=?, last_seen=? WHERE endpoint_id=?",
                    (json.dumps(caps), now, endpoint_id),
                )
            else:
                conn.execute(
                    "INSERT INTO endpoints VALUES (?,?,?,?,?,?)",
                    (endpoint_id, name, owner, json.dumps(caps), now, now),
                )
            return endpoint_id

        return await self.write(op)  # type: ignore[misc]

    def touch_endpoint(self, endpoint_id: str, when: float) -> None:
        self.write(
            lambda conn: conn.execute(
                "UPDATE endpoints SET last_seen=? WHERE endpoint_id=?", (when, endpoint_id)
            ),
            wait=False,
        )

    async def endpoints(self) -> list[EndpointRow]:
        def op(conn: sqlite3.Connection) -> list[EndpointRow]:
            rows = conn.execute(
                "SELECT endpoint_id, name, owner, capabilities, last_seen FROM endpoints"
            ).fetchall()
            return [EndpointRow(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4]) for r in rows]

        return await self.read(op)

    # ------------------------------------------------------------ sharing
    async def shares(self) -> list[tuple[str, str, str]]:
        """Every grant: (object_kind, object_id, user)."""
        return await self.read(lambda conn: conn.execute(
            "SELECT object_kind, object_id, user FROM shares").fetchall())

    def put_shares(self, kind: str, object_id: str, users: Sequence[str],
                   revoke: bool = False) -> asyncio.Future[Any]:
        sql = ("DELETE FROM shares WHERE object_kind=? AND object_id=? AND user=?" if revoke else
               "INSERT OR IGNORE INTO shares (object_kind, object_id, user) VALUES (?,?,?)")
        return self.write(lambda conn: conn.executemany(  # type: ignore[return-value]
            sql, [(kind, object_id, u) for u in users]))

    # ------------------------------------------------------------ blobs
    def put_blob(self, row: BlobRow) -> asyncio.Future[Any]:
        return self.write(lambda conn: conn.execute(  # type: ignore[return-value]
            "INSERT INTO blobs VALUES (?,?,?,?,?,?,?)",
            (row.blob_id, row.owner, row.size, row.sha256, row.task_id, row.created_at,
             int(row.used))))

    async def get_blob(self, blob_id: str) -> BlobRow | None:
        r = await self.read(lambda conn: conn.execute(
            "SELECT blob_id, owner, size, sha256, task_id, created_at, used FROM blobs "
            "WHERE blob_id=?", (blob_id,)).fetchone())
        return BlobRow(*r[:6], bool(r[6])) if r else None

    async def waiting_args_bytes(self, owner: str) -> int:
        """Bytes of argument blobs `owner` keeps here (results not counted)."""
        return await self.read(lambda conn: conn.execute(
            "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner=? AND task_id=''",
            (owner,)).fetchone()[0])

    async def blob_ids(self) -> set[str]:
        return await self.read(lambda conn: {r[0] for r in conn.execute("SELECT blob_id FROM blobs")})

    def sweep_blobs(self, unused_before: float) -> asyncio.Future[Any]:
        """Delete the rows of blobs nothing refers to: used ones (their task finished
        or was purged) at once, never-used ones once older than `unused_before`. The
        future's result is their ids (the caller deletes the files)."""

        def op(conn: sqlite3.Connection) -> list[str]:
            ids = [r[0] for r in conn.execute(
                "SELECT blob_id FROM blobs b WHERE (used=1 OR created_at < ?) "
                "AND NOT EXISTS (SELECT 1 FROM tasks WHERE args_blob=b.blob_id) "
                "AND NOT EXISTS (SELECT 1 FROM tasks WHERE value_blob=b.blob_id)",
                (unused_before,))]
            conn.executemany("DELETE FROM blobs WHERE blob_id=?", [(i,) for i in ids])
            return ids

        return self.write(op, rows=INLINE_ROWS + 1)  # scans: on the thread  # type: ignore[return-value]

    # ------------------------------------------------------------ tasks
    def insert_tasks(self, rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[Any]:
        """Rows of (task_id, function_id, state, requested_endpoint, endpoint_id, session_id,
        owner, route_reason, args, submitted_at, walltime_s, max_retries, needs_json,
        args_blob). Ids already stored are left alone (idempotent resubmission); the
        future's result is the set of those ids."""

        def op(conn: sqlite3.Connection) -> set[str]:
            existing: set[str] = set()
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                existing.update(
                    r[0] for r in conn.execute(
                        f"SELECT task_id FROM tasks WHERE task_id IN ({marks})", chunk)
                )
            conn.executemany(
                "INSERT OR IGNORE INTO tasks (task_id, function_id, state, requested_endpoint, "
                "endpoint_id, session_id, owner, route_reason, args, submitted_at, walltime_s, "
                "max_retries, needs, args_blob, attempts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                rows,
            )
            _mark_used(conn, [r[13] for r in rows if r[13]])
            return existing

        return self.write(op, rows=_weight(len(rows), sum(len(r[8] or b'') for r in rows)))  # type: ignore[return-value]

    def set_routes(self, routes: Iterable[tuple[str, str, str]]) -> None:
        """(endpoint_id, reason, task_id) for tasks routed after submission."""
        routes = list(routes)
        self.write(
            lambda conn: conn.executemany(
                "UPDATE tasks SET endpoint_id=?, route_reason=? WHERE task_id=?", routes
            ),
            wait=False, rows=len(routes),
        )

    def finish_tasks(self, rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[Any]:
        """Rows of (state, value, value_blob, error, error_type, endpoint_id, completed_at,
        runtime_s, task_id, collected_at). Drops the arguments (blob included): a finished
        task never runs again. `collected_at` (None: not yet) is when a waiting client got
        it: set here, a task costs two writes in all (its insert and this)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE tasks SET state=?1, value=?2, value_blob=?3, error=?4, error_type=?5, "
                "endpoint_id=COALESCE(?6, endpoint_id), completed_at=?7, runtime_s=?8, args=NULL, "
                "args_blob=NULL, collected_at=COALESCE(collected_at, ?10) WHERE task_id=?9",
                rows,
            )
            _mark_used(conn, [r[2] for r in rows if r[2]])

        return self.write(op, rows=_weight(len(rows), sum(len(r[1] or b'') for r in rows)))  # type: ignore[return-value]

    def mark_collected(self, task_ids: Sequence[str], when: float) -> None:
        """A client received these final results: the retention clock starts."""
        rows = [(when, tid) for tid in task_ids]
        self.write(
            lambda conn: conn.executemany(
                "UPDATE tasks SET collected_at=? WHERE task_id=? AND collected_at IS NULL", rows
            ),
            wait=False, rows=len(rows),
        )

    def purge(self, collected_before: float, completed_before: float,
              forget_before: float) -> asyncio.Future[Any]:
        """Drop results collected before `collected_before` or finished (and never
        collected) before `completed_before`: the rows stay as PURGED tombstones so
        their status is still answerable. Tombstones purged before `forget_before`
        are deleted. The future's result is (purged, forgotten)."""
        final = ",".join(str(int(s)) for s in (TaskState.SUCCESS, TaskState.FAILED,
                                                 TaskState.CANCELLED))

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            purged = conn.execute(
                f"UPDATE tasks SET state={int(TaskState.PURGED)}, value=NULL, error=NULL, "
                "args=NULL, args_blob=NULL, value_blob=NULL, collected_at=COALESCE(collected_at, ?) "
                f"WHERE state IN ({final}) "
                "AND (collected_at < ? OR completed_at < ?)",
                (time.time(), collected_before, completed_before),
            ).rowcount
            forgotten = conn.execute(
                f"DELETE FROM tasks WHERE state={int(TaskState.PURGED)} AND collected_at < ?",
                (forget_before,),
            ).rowcount
            return purged, forgotten

        return self.write(op, rows=INLINE_ROWS + 1)  # scans the table: on the thread  # type: ignore[return-value]

    async def unfinished_tasks(self) -> list[TaskRow]:
        """Queued and dispatched tasks with their arguments: what a restarted hub reloads."""
        return await self.read(
            lambda conn: [
                _task_row(r, with_payload=True)
                for r in conn.execute(
                    _SELECT_TASK + ", args, NULL, NULL, (SELECT size FROM blobs WHERE "
                    "blobs.blob_id=tasks.args_blob) FROM tasks WHERE state IN (?,?) "
                    "ORDER BY submitted_at",
                    (int(TaskState.QUEUED), int(TaskState.DISPATCHED)),
                )
            ]
        )

    async def get_tasks(self, task_ids: Sequence[str], with_result: bool = False) -> dict[str, TaskRow]:
        cols = ", NULL, value, error" if with_result else ", NULL, NULL, NULL"

        def op(conn: sqlite3.Connection) -> dict[str, TaskRow]:
            out: dict[str, TaskRow] = {}
            ids = list(task_ids)
            for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for r in conn.execute(
                    f"{_SELECT_TASK}{cols} FROM tasks WHERE task_id IN ({marks})", chunk
                ):
                    row = _task_row(r, with_payload=True)
                    out[row.task_id] = row
            return out

        return await self.read(op)

    async def list_tasks(
        self, limit: int, state: TaskState | None = None, endpoint_id: str | None = None,
        owner: str | None = None,
    ) -> list[TaskRow]:
        where, params = [], []
        if owner is not None:
            where.append("owner=?")
            params.append(owner)
        if state is not None:
            where.append("state=?")
            params.append(int(state))
        if endpoint_id is not None:
            where.append("endpoint_id=?")
            params.append(endpoint_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        sql = f"{_SELECT_TASK} FROM tasks {clause} ORDER BY submitted_at DESC LIMIT ?"
        return await self.read(
            lambda conn: [_task_row(r) for r in conn.execute(sql, (*params, limit))]
        )

    async def counts(self, owner: str | None = None
                     ) -> tuple[dict[TaskState, int], int, tuple[int, int]]:
        """Tasks per state, functions, and (blobs, their bytes): `owner`'s, or
        everyone's for None."""
        where, params = ("WHERE owner=?", (owner,)) if owner is not None else ("", ())

        def op(conn: sqlite3.Connection) -> tuple[dict[TaskState, int], int, tuple[int, int]]:
            by_state = {
                TaskState(s): n
                for s, n in conn.execute(
                    f"SELECT state, COUNT(*) FROM tasks {where} GROUP BY state", params)
            }
            functions = conn.execute(f"SELECT COUNT(*) FROM functions {where}",
                                     params).fetchone()[0]
            blobs = conn.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs {where}",
                                 params).fetchone()
            return by_state, functions, tuple(blobs)

        return await self.read(op)


def _weight(rows: int, payload_bytes: int) -> int:
    """Rows an op counts as for choosing where to commit it (big payloads count extra)."""
    return rows + payload_bytes // 65536


_SELECT_TASK = (
    "SELECT task_id, function_id, state, requested_endpoint, endpoint_id, session_id, owner, "
    "route_reason, submitted_at, completed_at, runtime_s, error_type, walltime_s, max_retries, "
    "needs, args_blob, value_blob"
)


def _task_row(r: Sequence[Any], with_payload: bool = False) -> TaskRow:
    row = TaskRow(
        r[0], r[1], TaskState(r[2]), r[3], r[4], r[5] or "", r[6] or "", r[7] or "",
        r[8], r[9], r[10], r[11], r[12] or 0.0, r[13], json.loads(r[14]) if r[14] else None,
        args_blob=r[15], value_blob=r[16],
    )
    if with_payload:
        row.args, row.value, row.error = r[17], r[18], r[19]
        row.args_size = r[20] if len(r) > 20 and r[20] is not None else len(row.args or b"")
    return row


def _mark_used(conn: sqlite3.Connection, blob_ids: list[str]) -> None:
    if blob_ids:
        conn.executemany("UPDATE blobs SET used=1 WHERE blob_id=?", [(b,) for b in blob_ids])


__all__ = ["TaskStore", "BlobRow", "FunctionRow", "EndpointRow", "TaskRow"]
