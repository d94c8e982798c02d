"""A full disk under the hub: refused work is a clean StorageFull, finished work is
held (never failed, never lost), and the hub recovers by itself once there is room.

The hub's store lives on a small tmpfs of its own (root only: skipped otherwise),
filled the way a user would fill it, through many small inline arguments, and
then by someone else's file. Executions are counted in a ledger outside the
tmpfs (`fabric.testing.mark`), so "exactly once" is observed, not assumed.

Two tiers: the store on a full disk in this process (what SQLite does when a
write does not fit, and that dropping arguments frees room), and a real hub
and endpoint as processes: small arguments fill the disk (issue 13, defect 3),
a big result meets a small disk (defect 4), and a hub stops while it holds
results it had no room for.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client
from fabric.hub.store import TaskStore
from fabric.launch import LocalFabric
from fabric.states import TaskState
from fabric.testing import Ledger, value_of, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

KiB, MiB = 1 << 10, 1 << 20
ARG = 500 * KiB  # inline: under the 1 MiB blob threshold, where the old check never looked


# ---------------------------------------------------------------- what the workers run
def gated(ledger: str, i: int, gate: str, payload: bytes) -> tuple[int, str]:
    """Record the execution, wait until the test opens the gate, answer for `i`."""
    import hashlib
    import os
    import time

    from fabric.testing import mark, value_of

    mark(ledger, i)
    deadline = time.monotonic() + 120  # the test's own deadlines are shorter
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value_of(i), hashlib.sha256(payload).hexdigest()


def big_result(ledger: str, i: int, size: int) -> bytes:
    """Record the execution, return `size` bytes that name `i`."""
    from fabric.testing import mark

    mark(ledger, i)
    return (f"{i}:".encode() * (size // 2 + 1))[:size]


# ---------------------------------------------------------------- the small disk
def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0) -> Path:
    """Someone else's file, grown until `path`'s filesystem has `leave` bytes free."""
    filler = path / f"filler-{uuid.uuid4().hex[:8]}"
    with open(filler, "wb") as f:
        for step in (MiB, 64 * KiB, 4 * KiB):
            while free_bytes(path) - step >= leave:
                try:
                    f.write(b"\0" * step)
                    f.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Any]:
    """`small_disk(size)` mounts a tmpfs of `size` (e.g. "48m"); all are unmounted at
    teardown, whatever happened (lazily if a file is still open)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


# ---------------------------------------------------------------- tier 2: the store itself
def _rows(n: int, size: int, start: int = 0) -> list[tuple[Any, ...]]:
    return [(f"t{i}", "f", int(TaskState.QUEUED), None, None, "", "local", "",
             os.urandom(size), time.time(), 0.0, None, None, None)
            for i in range(start, start + n)]



def fabric_on(disk: Path, tmp_path: Path, endpoints: list[str], workers: int) -> LocalFabric:
    """A started LocalFabric with only the hub's store on the small disk."""
    fab = LocalFabric(tmp_path / "fabric", endpoints, workers=workers)
    fab.store = disk / "hub.db"
    return fab.start()

def test_a_full_disk_is_storage_full_and_the_store_carries_on(small_disk):
    """SQLite rolls a failed COMMIT back itself: the caller gets StorageFull (not a
    second error about the rollback), every op of that transaction fails with it,
    none is reported stored without being stored, and the store works again once
    there is room."""
    disk = small_disk("8m")

    async def main() -> None:
        store = TaskStore(disk / "hub.db")
        await store.open()
        stored: list[str] = []
        refusals: list[BaseException] = []
        for i in range(64):  # 64 x 256 KiB: four times the disk
            # Two ops per transaction (lone ones commit on the loop, batches on the
            # store thread): both paths must say StorageFull.
            batch = [store.insert_tasks(_rows(1, 256 * KiB, 2 * i)),
                     store.insert_tasks(_rows(1, 64, 2 * i + 1))] if i % 2 else \
                    [store.insert_tasks(_rows(1, 256 * KiB, 2 * i))]
            for j, outcome in enumerate(await asyncio.gather(*batch, return_exceptions=True)):
                if isinstance(outcome, BaseException):
                    refusals.append(outcome)
                else:
                    stored.append(f"t{2 * i + j}")
        assert refusals, "the disk never filled"
        for exc in refusals:
            assert isinstance(exc, errors.StorageFull), repr(exc)
            assert "rollback" not in str(exc)
        # Nothing said stored is missing, nothing refused is there.
        rows = await store.get_tasks([f"t{i}" for i in range(128)])
        assert set(rows) == set(stored)
        # Room again: the same store takes writes, no reopening.
        for p in disk.iterdir():
            if p.name.startswith("filler"):
                p.unlink()
        remount(disk, "64m")
        await store.insert_tasks(_rows(1, 256 * KiB, 1000))
        assert "t1000" in await store.get_tasks(["t1000"])
        await store.close()  # no error, nothing left unretrieved

    asyncio.run(main())


def test_finishing_tasks_frees_room_on_a_full_disk(small_disk):
    """Storing a result drops the task's arguments. That must not cost as much free
    space as the arguments took (SQLite's secure_delete would overwrite them), or a
    full disk could never drain; and the pages freed count as room for new work."""
    from fabric.hub.disk import DiskBudget

    disk = small_disk("16m")

    async def main() -> None:
        store = TaskStore(disk / "hub.db")
        await store.open()
        budget = DiskBudget(disk, store)
        for i in range(0, 40, 2):  # 10 MiB of arguments
            await store.insert_tasks(_rows(2, 256 * KiB, i))
        await store.flush()
        fill(disk, leave=128 * KiB)
        with pytest.raises(errors.StorageFull):
            budget.check(256 * KiB)  # new work: no room
        done = [(int(TaskState.SUCCESS), b"ok", None, None, None, "ep", time.time(), 0.1,
                 f"t{i}", None) for i in range(36)]
        await store.finish_tasks(done)  # 9 MiB of arguments dropped with 128 KiB free
        rows = await store.get_tasks([f"t{i}" for i in range(40)], with_result=True)
        assert [rows[f"t{i}"].state for i in range(36)] == [TaskState.SUCCESS] * 36
        budget.check(4 * 256 * KiB)  # the freed pages are room for new arguments
        await store.close()

    asyncio.run(main())


def test_the_reserve_scales_with_the_disk_and_the_store():
    from fabric.hub.disk import limits

    small, big = limits(48 * MiB, 0), limits(1 << 40, 0)
    assert small.floor < small.reserve < 48 * MiB // 4  # a small disk stays usable
    assert big.reserve > small.reserve
    assert big.reserve < (1 << 40) // 100  # and a big one is not wasted
    # A store that fills most of its disk keeps more room for its own growth.
    assert limits(8 << 30, 6 << 30).reserve > limits(8 << 30, 0).reserve


# ---------------------------------------------------------------- tier 3: processes
def _outbox_rows(fab: LocalFabric, name: str) -> int:
    db = fab.home / "endpoints" / name / "outbox.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def _counter(c: Client, name: str) -> int:
    return c.status().counters.get(name, 0)


def _hub_output_is_clean(fab: LocalFabric) -> list[str]:
    """Stop the hub (SIGTERM: a graceful shutdown, with whatever it still held) and
    check it said nothing of raw errors; returns its output."""
    hub = fab.hub
    assert hub is not None
    hub.stop()
    fab.retired.append(hub)
    fab.hub = None
    text = "\n".join(hub.lines)
    for bad in ("never retrieved", "cannot rollback", "OperationalError", "Traceback"):
        assert bad not in text, f"hub logged {bad!r}:\n{hub.tail(60)}"
    assert hub.proc.returncode == 0, hub.tail(60)
    return hub.lines


def test_small_arguments_fill_the_disk_cleanly_and_everything_taken_completes(
        small_disk, tmp_path):
    disk = small_disk("48m")
    ledger = Ledger(tmp_path / "ledger")
    gate = tmp_path / "gate"
    fab = fabric_on(disk, tmp_path, [], workers=2)
    patient_ids: list[str] = []
    patient_errors: list[BaseException] = []
    delivered: list[float] = []  # when a waiting client got each result
    try:
        with Client(fab.address) as c, Client(fab.address) as watcher:
            fid = c.register_function(gated)
            # 1. Fill it with small inline arguments, no endpoint yet: they stay queued.
            # (An impatient user: a refusal is retried for a second, then raised.)
            taken: dict[str, int] = {}
            refused: BaseException | None = None
            with Client(fab.address, retry_timeout=1.0) as impatient:
                for i in range(400):  # 200 MB: four times the disk
                    try:
                        tid = impatient.run(str(ledger), i, str(gate), os.urandom(ARG),
                                            function_id=fid)
                    except errors.FabricError as exc:
                        refused = exc
                        break
                    taken[tid] = i
            assert isinstance(refused, errors.StorageFull), repr(refused)
            assert "UNKNOWN" not in str(refused) and "sqlite" not in str(refused).lower()
            assert len(taken) > 40, "the hub refused long before its disk was full"
            watcher.aio.result_observer = lambda r: delivered.append(time.monotonic())
            watching = threading.Thread(target=watcher.get_batch_result, args=(list(taken),),
                                        kwargs={"timeout": 90, "return_exceptions": True},
                                        daemon=True)
            watching.start()

            # 2. A patient user's batch meets the full disk: it waits, it does not crash.
            seen = _counter(c, "storage_full")

            def patient() -> None:
                try:
                    with Client(fab.address, retry_timeout=120.0) as p:
                        patient_ids.extend(p.batch_run(fid, [
                            ((str(ledger), 1000 + k, str(gate), os.urandom(ARG)), {})
                            for k in range(4)]))
                except BaseException as exc:  # noqa: BLE001 - checked below
                    patient_errors.append(exc)

            waiter = threading.Thread(target=patient, daemon=True)
            waiter.start()
            wait_until(lambda: _counter(c, "storage_full") > seen, 30,
                       "the patient batch to be refused for room")

            # 3. The endpoint comes; its first tasks start and wait at the gate.
            fab.start_endpoint("ep")
            wait_until(lambda: ledger.count() >= 2, 60, "two tasks to start")
            # 4. Someone else takes every byte left; then the running tasks finish.
            fill(disk)
            gate.touch()
            wait_until(lambda: _outbox_rows(fab, "ep") >= 2 and
                       _counter(c, "results_held") >= 1, 60,
                       "finished results to be held: kept by the endpoint, not stored")
            assert not patient_ids and not patient_errors

            # 5. Room again, no restart: every task taken completes, exactly once.
            roomy_since = time.monotonic()
            remount(disk, "200m")
            waiter.join(60)
            assert not waiter.is_alive() and not patient_errors, patient_errors
            want = {**taken, **{tid: 1000 + k for k, tid in enumerate(patient_ids)}}
            got = c.get_batch_result(list(want), timeout=60)
            assert [v for v, _ in got] == [value_of(i) for i in want.values()]
            runs = ledger.by_input()
            assert sorted(runs) == sorted(want.values()), "a task ran that was never taken"
            assert all(len(pids) == 1 for pids in runs.values()), \
                {i: p for i, p in runs.items() if len(p) > 1}
            wait_until(lambda: _outbox_rows(fab, "ep") == 0, 30, "every result acknowledged")
            left = [t for t in c.tasks(limit=1000) if t.state is not TaskState.SUCCESS]
            assert not left, left
            watching.join(60)
            assert len(delivered) == len(taken)
            # No client had a result before the hub could store it.
            assert min(delivered) > roomy_since
        _hub_output_is_clean(fab)
    finally:
        gate.touch()
        print(fab.output())
        fab.stop()


def test_a_big_result_on_a_small_disk_is_held_until_there_is_room(small_disk, tmp_path):
    disk = small_disk("48m")
    ledger = Ledger(tmp_path / "ledger")
    fab = fabric_on(disk, tmp_path, ["ep"], workers=1)
    try:
        with Client(fab.address) as c:
            c.wait_for_endpoints(1, timeout=60)
            fid = c.register_function(big_result)
            size = 12 * MiB  # a blob, bigger than the room left below
            filler = fill(disk, leave=8 * MiB)
            tid = c.run(str(ledger), 7, size, function_id=fid)
            value = fab.home / "endpoints" / "ep" / "outbox.db.values" / tid

            def held_or_final() -> bool:
                held = value.exists() and _counter(c, "storage_full") >= 1
                return held or _outcome(c, tid) is not None

            wait_until(held_or_final, 60,
                       "the result to be refused for room and kept by the endpoint")
            done = _outcome(c, tid)
            assert done is None, f"a task that already ran was ended: {done!r}"
            # Held past one upload's own retries (fabric.blobs.upload): for as long
            # as the disk is full, not for a while.
            ep = fab.endpoints["ep"]
            wait_until(lambda: any("kept here and retried" in line for line in ep.lines)
                       or _outcome(c, tid) is not None, 60,
                       "the endpoint to keep the result past its upload's retries")
            done = _outcome(c, tid)
            assert done is None, f"a task that already ran was ended: {done!r}"
            assert ledger.count() == 1
            filler.unlink()  # room again
            got = c.get_result(tid, timeout=60)
            assert got == big_result(os.devnull, 7, size)
            assert ledger.by_input() == {7: ledger.by_input()[7]} and len(ledger.runs()) == 1
            wait_until(lambda: _outbox_rows(fab, "ep") == 0, 30, "the result acknowledged")
        _hub_output_is_clean(fab)
    finally:
        print(fab.output())
        fab.stop()


def _outcome(c: Client, tid: str) -> BaseException | None:
    """None while the task is not final; else what get_result raises (or TaskDone)."""
    try:
        c.get_result(tid)
    except errors.TaskPending:
        return None
    except errors.FabricError as exc:
        return exc
    return _TaskDone()


class _TaskDone(Exception):
    """The task succeeded already."""


def test_results_held_when_the_hub_stops_reach_the_next_hub(small_disk, tmp_path):
    """A hub stopped while it holds results for want of room loses none: their
    endpoint still has them and gives them to the next hub, and no task stays
    dispatched to it."""
    disk = small_disk("48m")
    ledger = Ledger(tmp_path / "ledger")
    gate = tmp_path / "gate"
    fab = fabric_on(disk, tmp_path, ["ep"], workers=2)
    try:
        with Client(fab.address) as c:
            c.wait_for_endpoints(1, timeout=60)
            fid = c.register_function(gated)
            ids = {c.run(str(ledger), i, str(gate), b"", function_id=fid): i for i in range(6)}
            wait_until(lambda: ledger.count() >= 2, 60, "two tasks to start")
            filler = fill(disk)
            gate.touch()
            wait_until(lambda: _counter(c, "results_held") >= 2, 60,
                       "finished results to be held")
            said = _hub_output_is_clean(fab)
            assert any("were not stored" in line for line in said), said[-20:]
            filler.unlink()
            fab.restart_hub()  # same store, same port
            got = c.get_batch_result(list(ids), timeout=60)
            assert [v for v, _ in got] == [value_of(i) for i in ids.values()]
            runs = ledger.by_input()
            assert sorted(runs) == sorted(ids.values())
            assert all(len(pids) == 1 for pids in runs.values()), runs
            wait_until(lambda: _outbox_rows(fab, "ep") == 0, 30, "every result acknowledged")
            left = [t for t in c.tasks(limit=100) if t.state is not TaskState.SUCCESS]
            assert not left, left
        _hub_output_is_clean(fab)
    finally:
        gate.touch()
        print(fab.output())
        fab.stop()
