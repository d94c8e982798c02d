"""Tier 3: lifecycles around the happy path, with real processes.

Walltime and per-task retries through the whole fabric, results kept on the
endpoint's disk across an endpoint restart, graceful `fabric endpoint stop`,
retention and "purged", and one endpoint per name per machine.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest

from fabric import errors
from fabric.client import Client, Executor
from fabric.launch import LocalFabric, spawn, start_endpoint
from fabric.states import TaskState
from fabric.testing import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = ("--heartbeat", "0.2", "--heartbeat-misses", "3")
# For the tests that count executions: delivery is at-least-once, and a busy
# 2-core machine can stall an endpoint's loop past FAST's 0.6 s, which would
# (rightly) requeue and rerun tasks. With 30 s of silence allowed, a rerun is a bug.
RELAXED = ("--heartbeat", "1", "--heartbeat-misses", "30")


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def record(path, i, seconds=0.0):
    """Append one line per execution, so tests can count runs."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{i} {os.getpid()}\n")
    return i


def start_then_sleep(started, finished, seconds):
    """Say "started" (with the worker's pid) before working; "finished" only after."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(finished).write_text("finished")
    return "finished"


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_workers(endpoint):
    """The worker processes an endpoint has now (its children that have not exited)."""
    try:
        kids = psutil.Process(endpoint.pid).children()
    except psutil.NoSuchProcess:
        return set()
    return {p.pid for p in kids if not gone(p.pid)}


def die_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return "second time lucky"


def executions(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line.split()[0]) for line in f if line.strip()]


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    with LocalFabric(tmp_path_factory.mktemp("life"), ["solo"], workers=2,
                     hub_args=(*FAST, "--retention", "1.0")) as f:
        with Client(f.address) as c:
            c.wait_for_endpoints(1, timeout=60)
        yield f


@pytest.fixture
def client(fab):
    with Client(fab.address) as c:
        yield c


def test_walltime_kills_the_task_and_the_endpoint_carries_on(client):
    fid = client.register_function(sleep_then)
    t0 = time.monotonic()
    tid = client.run(60, function_id=fid, endpoint_id="solo", walltime=0.5)
    with pytest.raises(errors.WalltimeExceeded, match="0.5"):
        client.get_result(tid, timeout=30)
    assert time.monotonic() - t0 < 20
    assert client.get_result(client.run(0, "ok", function_id=fid, walltime=5), timeout=30) == "ok"


def test_walltime_applies_to_every_executor_call(client):
    with Executor(endpoint_id="solo", client=client, walltime=0.5) as ex:
        quick, stuck = ex.submit(sleep_then, 0, 1), ex.submit(sleep_then, 60)
        assert quick.result(timeout=30) == 1
        with pytest.raises(errors.WalltimeExceeded):
            stuck.result(timeout=30)


def test_bad_walltime_or_retries_are_refused_before_anything_is_stored(client):
    fid = client.register_function(sleep_then)
    before = client.status().tasks_by_state
    with pytest.raises(errors.InvalidRequest, match="walltime"):
        client.run(0, function_id=fid, walltime=-1)
    with pytest.raises(errors.InvalidRequest, match="max_retries"):
        client.run(0, function_id=fid, max_retries=1000)
    assert client.status().tasks_by_state == before


def test_a_task_can_ask_for_retries_after_its_worker_dies(client, tmp_path):
    fid = client.register_function(die_once)
    marker = str(tmp_path / "died")
    with pytest.raises(errors.WorkerDied, match="exit code 7"):
        client.get_result(client.run(marker, function_id=fid, max_retries=0), timeout=30)
    os.unlink(marker)
    tid = client.run(marker, function_id=fid, max_retries=1)
    assert client.get_result(tid, timeout=30) == "second time lucky"


def test_cancel_stops_a_running_task(fab, client, tmp_path):
    started, finished = tmp_path / "started", tmp_path / "finished"
    fid = client.register_function(start_then_sleep)
    tid = client.run(str(started), str(finished), 60, function_id=fid, endpoint_id="solo")
    wait_until(lambda: started.exists() and started.read_text(), 30, "the task to start")
    worker = int(started.read_text())
    assert client.cancel(tid) == [tid]
    with pytest.raises(errors.TaskCancelled):
        client.get_result(tid, timeout=10)
    # The running call was interrupted: its worker was killed (a worker left running
    # it would live on for a minute and then write "finished").
    wait_until(lambda: gone(worker), 30, f"the worker running the cancelled task (pid {worker}) "
                                         "to be killed")
    # The endpoint replaced it: two workers again, and they run tasks.
    wait_until(lambda: len(live_workers(fab.endpoints["solo"]) - {worker}) == 2, 30,
               "the endpoint to have two workers again")
    tids = client.batch_run(client.register_function(sleep_then), [((0, i), {}) for i in range(4)],
                            endpoint_id="solo")
    assert client.get_batch_result(tids, timeout=30) == [0, 1, 2, 3]
    assert not finished.exists()


def test_results_are_purged_after_retention_and_say_so(client):
    fid = client.register_function(sleep_then)
    tid = client.run(0, 42, function_id=fid)
    assert client.get_result(tid, timeout=30) == 42  # collected: the retention clock starts
    wait_until(lambda: client.status().counters.get("purged", 0) >= 1 and
               {t.task_id: t.state for t in client.tasks(limit=100)}.get(tid) is TaskState.PURGED,
               30, "the result to be purged")
    fresh = Client(client.aio.address)  # no local cache: ask the hub
    try:
        with pytest.raises(errors.ResultPurged, match="retention"):
            fresh.get_result(tid)
    finally:
        fresh.close()


def test_the_same_endpoint_name_cannot_run_twice_on_one_machine(fab):
    child = start_endpoint("solo", fab.address, 1, env=fab.env)
    try:
        child.proc.wait(60)
    finally:
        child.kill()
    assert child.proc.returncode == 1
    assert any("already" in line or "another endpoint" in line for line in child.lines), child.lines


def test_finished_results_survive_an_endpoint_restart_and_run_once(tmp_path):
    """The hub is down while the endpoint finishes its tasks; then the endpoint is
    killed. Restarted, it replays the results from its disk: nothing runs twice."""
    log = str(tmp_path / "runs")
    with LocalFabric(tmp_path / "f", ["keeper"], workers=2, hub_args=RELAXED) as f:
        with Client(f.address, retry_timeout=60) as c:
            c.wait_for_endpoints(1, timeout=60)
            fid = c.register_function(record)
            tids = c.batch_run(fid, [((log, i, 1.0), {}) for i in range(4)], endpoint_id="keeper")
            wait_until(lambda: sum(t.state is TaskState.DISPATCHED for t in c.tasks(limit=10)) == 4,
                       30, "all four tasks on the endpoint")
            f.kill_hub()
            wait_until(lambda: len(executions(log)) == 4, 30, "the endpoint to finish offline")
            outbox = f.home / "endpoints" / "keeper" / "outbox.db"

            def in_outbox() -> bool:  # written there before they are sent, so a kill keeps them
                with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
                    return db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4

            wait_until(in_outbox, 30, "the four results saved in the endpoint's outbox")
            f.kill_endpoint("keeper")
            f.restart_hub()
            f.start_endpoint("keeper")
            assert c.get_batch_result(tids, timeout=60) == [0, 1, 2, 3]
    assert sorted(executions(log)) == [0, 1, 2, 3]  # each ran exactly once


def test_endpoint_stop_drains_without_losing_or_repeating_work(tmp_path):
    log = str(tmp_path / "runs")
    with LocalFabric(tmp_path / "f", ["going", "staying"], workers=1, hub_args=RELAXED) as f:
        with Client(f.address) as c:
            c.wait_for_endpoints(2, timeout=60)
            fid = c.register_function(record)
            tids = c.batch_run(fid, [((log, i, 0.3), {}) for i in range(12)])
            wait_until(lambda: len(executions(log)) >= 1, 30, "work to start")
            stop = spawn("stop", "endpoint", "stop", "going", "--timeout", "30", env=f.env)
            assert stop.proc.wait(60) == 0, stop.lines
            assert f.endpoints["going"].proc.wait(30) == 0
            assert c.get_batch_result(tids, timeout=60) == list(range(12))
            assert [e.online for e in c.endpoints() if e.name == "going"] == [False]
    assert sorted(executions(log)) == list(range(12))  # nothing lost, nothing twice


def test_stopping_an_endpoint_that_is_not_running_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fabric", "endpoint", "stop", "ghost"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FABRIC_HOME": str(tmp_path)})
    assert out.returncode == 1
    assert "not running" in out.stderr


def test_hub_sigterm_mid_run_leaves_a_sound_store_and_loses_nothing(tmp_path):
    import sqlite3

    log = str(tmp_path / "runs")
    with LocalFabric(tmp_path / "f", ["worker-box"], workers=2, hub_args=FAST) as f:
        with Client(f.address, retry_timeout=60) as c:
            c.wait_for_endpoints(1, timeout=60)
            fid = c.register_function(record)
            tids = c.batch_run(fid, [((log, i, 0.05), {}) for i in range(200)])
            wait_until(lambda: len(executions(log)) >= 10, 30, "work to start")
            assert f.hub.stop(timeout=30) == 0  # SIGTERM: a clean stop, not a kill
            check = sqlite3.connect(f.store)
            try:
                assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                stored = check.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            finally:
                check.close()
            assert stored == 200
            f.restart_hub()
            assert c.get_batch_result(tids, timeout=120) == list(range(200))
    assert set(executions(log)) == set(range(200))  # every task ran (some may have run twice)


def long_first_time(marks):
    """The first execution outlasts any drain (a minute); the rerun returns at once."""
    first = not os.listdir(marks)
    Path(marks, str(os.getpid())).touch()
    if first:
        time.sleep(60)
        return "first"
    return "rerun"


def test_drain_timeout_expiry_abandons_the_running_task_and_the_hub_requeues_it(local_fabric,
                                                                                   tmp_path):
    fab = local_fabric([], workers=1, hub_args=RELAXED)
    marks = tmp_path / "marks"
    marks.mkdir()
    going = fab.start_endpoint("going", "--drain-timeout", "1")
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        tid = c.run(str(marks), function_id=c.register_function(long_first_time))
        wait_until(lambda: list(marks.iterdir()), 30, "the task to start on going")
        (first_pid,) = [int(p.name) for p in marks.iterdir()]
        fab.start_endpoint("staying")
        c.wait_for_endpoints(2, timeout=60)
        going.terminate()  # SIGTERM: drain, for at most 1 s
        assert going.proc.wait(30) == 0
        going.wait_for(r"drain deadline: 1 tasks still running are abandoned", 10)
        wait_until(lambda: gone(first_pid), 30, "the abandoned task's worker to be stopped")
        # The hub requeued it; it ran again on `staying` and that result is the task's.
        assert c.get_result(tid, timeout=60) == "rerun"
        (row,) = [t for t in c.tasks(limit=20) if t.task_id == tid]
        assert row.endpoint_name == "staying"
    assert len(list(marks.iterdir())) == 2
