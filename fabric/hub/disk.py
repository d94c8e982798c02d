"""The hub's disk budget: room for every write it makes, and what it keeps free.

Every write path asks here before it writes: submissions (their inline
arguments), function bodies, uploaded blobs (arguments and results), and
results coming in on the endpoint links. A refusal is `StorageFull`, and it
goes to whoever can wait: a client retries its submission or upload for a
while (`fabric.client`), an endpoint keeps a finished result in its outbox
and retries, and results the hub already holds wait in `fabric.hub.finishing`.
Nothing that already ran is failed for want of room.

Two lines are kept free, both scaled to the disk (and the store), not fixed:

- the *floor*: room for the store's own bookkeeping. The WAL grows to
  `wal_limit` between checkpoints, and a checkpoint needs as much again to
  copy it into the store file. Only results may go down to it.
- the *reserve*, above the floor: new work (arguments, functions) stops
  there, so the results of work already taken always find room. A full disk
  then drains itself: storing a result drops its task's arguments, which
  frees more than the result takes (SQLite's secure_delete is FAST, so the
  freed pages are not rewritten: `fabric.hub.commits`).

A write into the store costs twice its size until checkpointed (in the WAL,
then in the file) and may reuse the store's free pages; a blob file costs its
size. Measuring is cheap (statvfs and two stats) and done at most every
REFRESH_S, with what was spent since subtracted; a refusal is always decided
on a fresh measurement, so room freed by anyone is seen at once.

`storage_full()` is the one place where "the disk is full" from SQLite or the
OS becomes the domain's StorageFull.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from fabric import errors

MiB = 1 << 20
GiB = 1 << 30
#: A measurement is reused for this long (minus what was spent since).
REFRESH_S = 0.05
#: What a task row costs beside its payloads (row, index entries, page slack).
ROW_BYTES = 512
#: Bounds of the WAL size at which the store checkpoints and truncates it.
MIN_WAL, MAX_WAL = 1 * MiB, 64 * MiB
#: Bounds of the room kept for results above the floor.
MIN_HEADROOM, MAX_HEADROOM = 1 * MiB, 1 * GiB


@dataclass(frozen=True, slots=True)
class Limits:
    wal_limit: int  # the store checkpoints and truncates its WAL past this
    floor: int  # kept free of everything but the store's bookkeeping
    reserve: int  # kept free of new work: the floor plus room for results


def limits(total: int, store_bytes: int) -> Limits:
    """What a hub keeps free on a disk of `total` bytes holding a store of
    `store_bytes`: a few percent of a small disk, about a gigabyte of a big one,
    and more as the store grows (its bookkeeping grows with it)."""
    wal = _clamp(total // 64, MIN_WAL, MAX_WAL)
    floor = 2 * wal
    headroom = _clamp(max(total // 32, store_bytes // 16), MIN_HEADROOM, MAX_HEADROOM)
    return Limits(wal, floor, floor + headroom)


def _clamp(x: int, low: int, high: int) -> int:
    return max(low, min(x, high))


def storage_full(exc: BaseException) -> errors.StorageFull | None:
    """The StorageFull for an error saying the disk is full (SQLite's SQLITE_FULL,
    the OS's ENOSPC or EDQUOT), chained to it; None for any other error."""
    full = False
    if isinstance(exc, sqlite3.OperationalError):
        full = (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(exc))
    elif isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full:
        return None
    out = errors.StorageFull("the hub's disk is full, so nothing of this was stored; retry "
                             "once it has room")
    out.__cause__ = exc
    return out


class StoreFiles(Protocol):
    """What the budget reads of the store (`fabric.hub.commits.GroupCommitter`)."""

    free_page_bytes: int

    def db_bytes(self) -> int: ...

    def wal_bytes(self) -> int: ...


class DiskBudget:
    """Room on the disk under `directory` (the store's and its blobs'), for `store`.

    `check` says whether a write fits (StorageFull if not), `spend` also counts
    it, `claim` holds room for an upload while it runs. `refusals` counts the
    StorageFull answers given, for `fabric status`."""

    def __init__(self, directory: str | Path, store: StoreFiles,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.store = store
        self._clock = clock
        self._measured_at = float("-inf")
        self._free = 0  # bytes the filesystem had free at the last measurement
        self._spent = 0  # bytes allowed since then
        self._claimed = 0  # bytes held for uploads under way
        self.limits = limits(0, 0)
        self.refusals = 0

    def refresh(self) -> None:
        st = os.statvfs(_existing(self.directory))
        self._free = st.f_bavail * st.f_frsize
        self.limits = limits(st.f_blocks * st.f_frsize,
                             self.store.db_bytes() + self.store.wal_bytes())
        self._spent = 0
        self._measured_at = self._clock()

    def room(self, *, result: bool = False, in_store: bool = True) -> int:
        """Bytes a write may take now: down to the floor for results, down to the
        reserve for anything else; writes into the store may reuse its free pages."""
        free = self._free - self._spent - self._claimed
        if in_store:
            free += self.store.free_page_bytes
        return free - (self.limits.floor if result else self.limits.reserve)

    def check(self, nbytes: int, *, result: bool = False, in_store: bool = True) -> None:
        """StorageFull unless a write of `nbytes` fits (see `room`)."""
        cost = 2 * nbytes if in_store else nbytes  # the WAL, then the file
        if self._clock() - self._measured_at > REFRESH_S or \
                self.room(result=result, in_store=in_store) < cost:
            self.refresh()  # never refuse on a stale measurement
        room = self.room(result=result, in_store=in_store)
        if room < cost:
            self.refusals += 1
            kept = self.limits.floor if result else self.limits.reserve
            what = "this result" if result else "new work"
            raise errors.StorageFull(
                f"the hub's disk has no room for {what} ({nbytes} bytes): "
                f"{max(0, room + kept)} bytes usable, {kept} of them kept for "
                f"{'the store itself' if result else 'the results of tasks already taken'}; "
                "retry once space is freed")

    def spend(self, nbytes: int, *, result: bool = False, in_store: bool = True) -> None:
        """`check`, then count the write as made until the next measurement."""
        self.check(nbytes, result=result, in_store=in_store)
        self._spent += 2 * nbytes if in_store else nbytes

    @contextmanager
    def claim(self, nbytes: int, *, result: bool = False) -> Iterator[None]:
        """Room for a blob file of `nbytes` while it is being written (StorageFull
        if there is none); afterwards it counts as spent until the next measurement."""
        self.check(nbytes, result=result, in_store=False)
        self._claimed += nbytes
        try:
            yield
        finally:
            self._claimed -= nbytes
            self._spent += nbytes


def _existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (the store's directory may not yet)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


__all__ = ["DiskBudget", "Limits", "ROW_BYTES", "limits", "storage_full"]
