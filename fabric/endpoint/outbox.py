"""The endpoint's durable outbox: finished results kept on disk until the hub acknowledges them.

A result is written here before it is sent, and deleted when the hub says
it has stored it. If the endpoint process is killed, or its machine's hub
link is down for hours, a restarted endpoint finds its finished work here
and replays it on connect: no finished task runs again because of an
endpoint restart.

SQLite in WAL mode with synchronous=NORMAL: a commit survives the process
being killed (only an OS crash can lose the last commits), and costs tens
of microseconds, paid once per batch of results. A value too big for one
message (`fabric.blobs.is_big`), which the agent keeps apart from its result
message, goes to a file of its own beside the table (`save_value`, then the
row without it): SQLite writes big rows page by page, ten times slower.

The directory is owned by one endpoint process at a time (`StateDir.lock`),
so two endpoints started with the same name on one machine cannot share it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

from fabric import names
from fabric._proto import fabric_pb2 as pb
from fabric.errors import EndpointBusy

class StateDir:
    """`$FABRIC_HOME/endpoints/NAME/`: the outbox, the pid file and the lock."""

    def __init__(self, name: str, root: str | Path | None = None) -> None:
        # An explicit --state-dir is the user's path; a default one is built from the
        # checked name, so it stays inside $FABRIC_HOME/endpoints.
        self.path = Path(root) if root else names.endpoint_dir(name)
        self._lock_fd: int | None = None

    @property
    def pid_file(self) -> Path:
        return self.path / "endpoint.pid"

    @property
    def outbox(self) -> Path:
        return self.path / "outbox.db"

    def lock(self) -> None:
        """Claim the directory for this process (released when the process ends)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "endpoint.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EndpointBusy(f"another endpoint (pid {self.running_pid() or '?'}) is using "
                               f"{self.path}; stop it first (fabric endpoint stop)") from None
        self._lock_fd = fd
        self.pid_file.write_text(f"{os.getpid()}\n")

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                if self.running_pid() == os.getpid():
                    self.pid_file.unlink()
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def running_pid(self) -> int | None:
        """The pid of the endpoint that holds this directory, if one is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid


class Outbox:
    """Results not yet acknowledged by the hub, keyed by task id."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.values = Path(self.path + ".values")  # big values, a file per task
        self.values.mkdir(exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results "
                         "(task_id TEXT PRIMARY KEY, result BLOB NOT NULL)")
        stored = {tid for (tid,) in self._db.execute("SELECT task_id FROM results")}
        self._big: set[str] = set()
        for p in self.values.iterdir():  # a crash may leave a value whose row never committed
            if p.name in stored:
                self._big.add(p.name)
            else:
                p.unlink(missing_ok=True)

    def put(self, results: Sequence[pb.TaskResult]) -> None:
        """Store results (one transaction). A task's newer result replaces an older one.
        A result whose big value went ahead with save_value() comes without it."""
        rows = [(r.task_id, r.SerializeToString()) for r in results]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", rows)

    def ack(self, task_ids: Iterable[str]) -> None:
        """The hub stored these: forget them."""
        rows = [(tid,) for tid in task_ids]
        if rows:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM results WHERE task_id=?", rows)
            for (tid,) in rows:
                if tid in self._big:
                    self._big.discard(tid)
                    (self.values / tid).unlink(missing_ok=True)

    def pending(self) -> list[pb.TaskResult]:
        """Everything not acknowledged yet, oldest first."""
        out = []
        for (blob,) in self._db.execute("SELECT result FROM results ORDER BY rowid"):
            r = pb.TaskResult.FromString(blob)
            if r.task_id in self._big:
                r.value = (self.values / r.task_id).read_bytes()
            out.append(r)
        return out

    def save_value(self, task_id: str, value: bytes) -> None:
        """Write a big value ahead of put() (safe on another thread: it touches no
        table). Written whole, then renamed: a crash leaves the old file or the new one."""
        if "/" in task_id or task_id.startswith("."):
            raise ValueError(f"task id {task_id!r} cannot name a file")
        part = self.values / (task_id + ".part")
        part.write_bytes(value)
        os.replace(part, self.values / task_id)
        self._big.add(task_id)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self._db.close()

