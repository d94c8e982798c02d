"""The hub store's tables, and the migrations that bring an older file up to date.

A hub restarted with a newer Fabric opens the store an older one wrote: each
migration step is idempotent and runs inside the opening connection, keyed
on SQLite's `user_version`.
"""

from __future__ import annotations

import sqlite3

import sqlite_utils

SCHEMA_VERSION = 6


def ensure(conn: sqlite3.Connection) -> None:
    """Create missing tables and migrate old ones to SCHEMA_VERSION."""
    db = sqlite_utils.Database(conn)
    tables = set(db.table_names())
    if "functions" not in tables:
        db["functions"].create(
            {"function_id": str, "name": str, "body": bytes, "python_version": str,
             "owner": str, "created_at": float},
            pk="function_id",
        )
    if "endpoints" not in tables:
        db["endpoints"].create(
            {"endpoint_id": str, "name": str, "owner": str, "capabilities": str,
             "last_seen": float, "created_at": float},
            pk="endpoint_id",
        )
        db["endpoints"].create_index(["owner", "name"], unique=True)
    if "tasks" not in tables:
        db["tasks"].create(
            {"task_id": str, "function_id": str, "state": int, "requested_endpoint": str,
             "endpoint_id": str, "session_id": str, "owner": str, "route_reason": str,
             "args": bytes, "value": bytes, "error": bytes, "error_type": str,
             "submitted_at": float, "dispatched_at": float, "completed_at": float,
             "runtime_s": float, "attempts": int,
             "walltime_s": float, "max_retries": int, "collected_at": float, "needs": str},
            pk="task_id",
        )
        db["tasks"].create_index(["state"])
        db["tasks"].create_index(["endpoint_id", "state"])
        db["tasks"].create_index(["submitted_at"])
        db["tasks"].create_index(["completed_at"])
    else:
        _migrate(conn, db)
    _access_tables(db, tables)
    _blob_tables(conn, db, tables)
    _runtime_columns(conn, db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _runtime_columns(conn: sqlite3.Connection, db: sqlite_utils.Database) -> None:
    """Version 6: a function's runtime spec (JSON bytes, NULL for none). A task's own
    runtime rides in its `needs` JSON, with the rest of what it asks of an endpoint."""
    if "runtime" not in set(db["functions"].columns_dict):
        conn.execute("ALTER TABLE functions ADD COLUMN runtime BLOB")


def _access_tables(db: sqlite_utils.Database, tables: set[str]) -> None:
    """Version 4: issued tokens (for list and revoke) and sharing grants."""
    if "tokens" not in tables:
        db["tokens"].create(
            {"jti": str, "user": str, "kind": str, "endpoint": str, "issued_at": float,
             "expires_at": float, "revoked_at": float},
            pk="jti",
        )
        db["tokens"].create_index(["revoked_at"])
    if "shares" not in tables:
        # object_kind is "endpoint" or "function"; object_id the endpoint/function id.
        db["shares"].create({"object_kind": str, "object_id": str, "user": str},
                            pk=("object_kind", "object_id", "user"))


def _blob_tables(conn: sqlite3.Connection, db: sqlite_utils.Database, tables: set[str]) -> None:
    """Version 5: payloads too big for one message live in files beside the store;
    `blobs` says whose each is. Tasks refer to their argument and result blobs;
    a blob nothing refers to is deleted (at once once it was used, else after a
    grace period for its submission to arrive)."""
    if "blobs" not in tables:
        db["blobs"].create(
            {"blob_id": str, "owner": str, "size": int, "sha256": str, "task_id": str,
             "created_at": float, "used": int},
            pk="blob_id",
        )
    # A user's waiting arguments (task_id "") are summed on every upload: the cap.
    conn.execute("CREATE INDEX IF NOT EXISTS idx_blobs_owner ON blobs (owner, task_id)")
    columns = set(db["tasks"].columns_dict)
    for name in ("args_blob", "value_blob"):
        if name not in columns:
            conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} TEXT")
        # Partial: only the few tasks with big payloads are indexed.
        conn.execute(f"CREATE INDEX IF NOT EXISTS idx_tasks_{name} ON tasks ({name}) "
                     f"WHERE {name} IS NOT NULL")


def _migrate(conn: sqlite3.Connection, db: sqlite_utils.Database) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < 2:  # per-task walltime and retries; retention needs collected_at
        columns = set(db["tasks"].columns_dict)
        for name, kind in (("walltime_s", "REAL"), ("max_retries", "INTEGER"),
                           ("collected_at", "REAL")):
            if name not in columns:
                conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")
        conn.execute("CREATE INDEX IF NOT EXISTS idx_tasks_completed_at ON tasks (completed_at)")
    if version < 3:  # what a task needs of its endpoint (JSON), so a restart keeps honouring it
        if "needs" not in set(db["tasks"].columns_dict):
            conn.execute("ALTER TABLE tasks ADD COLUMN needs TEXT")
