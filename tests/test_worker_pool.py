"""WorkerPool and the worker process, with real subprocesses and real signals.

Every wait has a deadline; nothing sleeps to "let it settle".
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import cloudpickle
import psutil
import pytest

import fabric.worker
from fabric.endpoint.pool import WorkerPool, per_worker_cap
from fabric.endpoint.supervision import (Kill, StartClock, describe_exit, running_index,
                                         settle_dead_worker)
from fabric.serialize import ErrorInfo, dumps_args, loads
from fabric.testing import wait_until as wait_until_sync
from fabric.worker.main import (decode_frame, encode_frame, progress_file, read_frame,
                                read_progress, worker_command, worker_env)
from fabric.worker.output import bytes_waiting
from fabric.worker.runtime import WorkItem, WorkResult

# Functions defined here travel by value, so workers need not import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def item(task_id: str, function_id: str, *args, walltime_s: float = 0.0,
         max_retries: int | None = None, **kwargs) -> WorkItem:
    return WorkItem(task_id, function_id, dumps_args(args, kwargs), walltime_s=walltime_s,
                    max_retries=max_retries)


class Collector:
    """on_results for tests: every result by task id, arrival order, duplicates."""

    def __init__(self) -> None:
        self.results: dict[str, WorkResult] = {}
        self.order: list[str] = []
        self.duplicates: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, results: list[WorkResult]) -> None:
        for r in results:
            if r.task_id in self.results:
                self.duplicates.append(r.task_id)
            self.results[r.task_id] = r
            self.order.append(r.task_id)
        self._changed.set()

    async def wait_for(self, task_ids, timeout: float = 20.0) -> dict[str, WorkResult]:
        wanted = set(task_ids)

        async def until() -> None:
            while not wanted <= self.results.keys():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return {t: self.results[t] for t in wanted}


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async def until() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until(), timeout)


def value(r: WorkResult):
    assert r.ok, r.error
    return loads(r.value)


def frame_within(stream, timeout: float = 20.0):
    """read_frame, with a deadline: a worker that sends nothing fails the test, not hangs it."""
    box: list = []
    reader = threading.Thread(target=lambda: box.append(read_frame(stream)), daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, f"no frame from the worker within {timeout}s"
    return box[0]


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ user functions
def double_and_pid(x):
    return x * 2, os.getpid()


def fail(n):
    raise KeyError(f"missing {n}")


class LockedError(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()  # makes the exception unpicklable


def fail_unpicklably():
    raise LockedError("holds a lock")


def counter(calls=[]):  # noqa: B006 - the default list shows the function was unpickled once
    s = fabric.worker.state()
    s["n"] = s.get("n", 0) + 1
    calls.append(1)
    return s["n"], len(calls), os.getpid()


def other():
    s = fabric.worker.state()
    s["n"] = s.get("n", 0) + 1
    return s["n"]


def noisy(x):
    print("hello from the task", x)
    sys.stdout.buffer.write(encode_frame(("results", []))[0] * 10)  # looks like a frame header
    sys.stdout.flush()
    os.write(1, b"\x00" * 64)
    return x


def echo(data):
    return data


def die(code):
    os._exit(code)


def sleep_after_marker(marker, seconds):
    Path(marker).write_text("running")
    time.sleep(seconds)
    return "slept"


def die_first_time(marker):
    if not Path(marker).exists():
        Path(marker).write_text("died once")
        os._exit(1)
    return "second attempt"


def always_die(log):
    with open(log, "a") as f:
        f.write("attempt\n")
    os._exit(2)


def die_counting(log, code):
    with open(log, "a") as f:
        f.write("attempt\n")
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def spin(marker):
    Path(marker).write_text("spinning")
    while True:
        pass


def nap(seconds):
    time.sleep(seconds)
    return seconds


def wait_for_file(path):
    deadline = time.monotonic() + 20
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.002)
    return "released"


def fork_then_die(pid_file, how):
    """Start a child that sleeps for ten minutes holding every fd this worker has
    (unless it execs), then SIGKILL this worker."""
    if how == "exec":
        pid = subprocess.Popen(["sleep", "600"]).pid
    else:
        # libc's fork() runs none of Python's at-fork handlers: only the pool can help.
        pid = os.fork() if how == "os.fork" else ctypes.PyDLL(None).fork()
        if pid == 0:
            try:
                time.sleep(600)
            finally:
                os._exit(0)
    Path(pid_file).write_text(str(pid))
    os.kill(os.getpid(), signal.SIGKILL)


def shout(n_lines, last):
    """Print n_lines lines of 1 KiB, half to stdout and half to fd 2 directly, then `last`."""
    line = "x" * 1023 + "\n"
    for _ in range(n_lines // 2):
        sys.stdout.write(line)
    for _ in range(n_lines - n_lines // 2):
        os.write(2, line.encode())
    print(last)
    return "shouted"


def say(text):
    print(text, end="")
    return text


FUNCTIONS = {name: cloudpickle.dumps(fn) for name, fn in {
    "double": double_and_pid, "fail": fail, "counter": counter, "other": other,
    "noisy": noisy, "echo": echo, "die": die, "sleep": sleep_after_marker,
    "die_first": die_first_time, "always_die": always_die, "wait": wait_for_file,
    "noop": lambda: None, "locked": fail_unpicklably, "die_counting": die_counting,
    "segfault": segfault, "sigkill_self": sigkill_self, "spin": spin, "nap": nap,
    "fork_then_die": fork_then_die, "shout": shout, "say": say,
}.items()}


def pool(workers: int, collector: Collector, **kwargs) -> WorkerPool:
    p = WorkerPool(workers, collector, **kwargs)
    for fid, body in FUNCTIONS.items():
        p.add_function(fid, body)
    return p


# ------------------------------------------------------------------ tests
def test_many_small_tasks_each_run_exactly_once_across_workers():
    async def main():
        c = Collector()
        async with pool(2, c) as p:
            ids = [f"t{i}" for i in range(2000)]
            p.submit([item(t, "double", i) for i, t in enumerate(ids)])
            got = await c.wait_for(ids)
            assert [value(got[t])[0] for t in ids] == [2 * i for i in range(2000)]
            assert {value(r)[1] for r in got.values()} == set(p.pids)  # both workers served
            assert not c.duplicates and len(c.order) == 2000
            assert p.outstanding == 0 and p.free_slots == 2 and p.queued == 0

    run(main())


def test_exceptions_cross_the_process_boundary():
    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("bad", "fail", 7), item("nofn", "never-added"), item("locked", "locked")])
            got = await c.wait_for(["bad", "nofn", "locked"])
        err = got["bad"].error
        assert (err.type_name, err.message, err.kind) == ("KeyError", "'missing 7'", "user")
        assert "Traceback" in err.traceback and "fail" in err.traceback
        assert isinstance(err.to_exception("bad").cause, KeyError)
        assert got["nofn"].error.kind == "system"
        locked = got["locked"].error
        assert (locked.type_name, locked.message, locked.exception) == ("LockedError", "holds a lock", b"")
        assert "fail_unpicklably" in locked.traceback

    run(main())


def test_warm_cache_and_state_persist_in_one_worker_per_function():
    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item(f"c{i}", "counter") for i in range(3)])
            got = await c.wait_for(["c0", "c1", "c2"])
            assert [value(got[f"c{i}"])[:2] for i in range(3)] == [(1, 1), (2, 2), (3, 3)]
            p.submit([item("o1", "other"), item("c3", "counter")])
            got = await c.wait_for(["o1", "c3"])
            assert value(got["o1"]) == 1  # its own state, not counter's
            assert value(got["c3"])[:2] == (4, 4)

    run(main())


def test_print_in_user_code_does_not_break_frames():
    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item(f"n{i}", "noisy", i) for i in range(20)])
            got = await c.wait_for([f"n{i}" for i in range(20)])
            assert [value(got[f"n{i}"]) for i in range(20)] == list(range(20))

    run(main())


def test_task_output_is_kept_as_a_bounded_tail_per_task_and_not_passed_on(capfd):
    """50 MiB printed: the result keeps the last 4 KiB and says how much was cut; the
    pool's own stderr (the endpoint's log) gets none of it; the next task's tail is its own."""
    last = "the last line"
    n_lines = 50 * 1024

    async def main():
        c = Collector()
        async with pool(1, c, output_tail_bytes=4096) as p:
            p.submit([item("loud", "shout", n_lines, last), item("quiet", "double", 1),
                      item("hello", "say", "hello\n")])
            return await c.wait_for(["loud", "quiet", "hello"], timeout=60)

    got = run(main(), timeout=90)
    loud = got["loud"]
    assert value(loud) == "shouted"
    assert len(loud.output) == 4096 and loud.output.endswith(f"x\n{last}\n".encode())
    assert loud.output_cut == n_lines * 1024 + len(last) + 1 - 4096
    assert (got["quiet"].output, got["quiet"].output_cut) == (b"", 0)
    assert got["hello"].output == b"hello\n"
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 4096, (len(out), len(err))


def test_large_args_round_trip():
    data = os.urandom(20 * 2**20)

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("big", "echo", data)])
            got = await c.wait_for(["big"])
            assert value(got["big"]) == data

    run(main())


def test_result_over_the_limit_fails_clearly():
    async def main():
        c = Collector()
        async with pool(1, c, max_result_bytes=1000) as p:
            p.submit([item("big", "echo", b"x" * 5000), item("small", "echo", b"x")])
            got = await c.wait_for(["big", "small"])
        assert got["big"].error.type_name == "PayloadTooLarge"
        assert "1000 bytes" in got["big"].error.message
        assert value(got["small"]) == b"x"

    run(main())


def test_os_exit_reports_worker_died_and_the_pool_replaces_the_worker():
    async def main():
        c = Collector()
        async with pool(2, c) as p:
            before = set(p.pids)
            p.submit([item("dead", "die", 3)])
            err = (await c.wait_for(["dead"]))["dead"].error
            assert err.type_name == "WorkerDied" and err.kind == "worker_died"
            assert "exit code 3" in err.message and "while running the task" in err.message
            await wait_until(lambda: len(p.pids) == 2)
            assert len(set(p.pids) - before) == 1
            ids = [f"after{i}" for i in range(50)]
            p.submit([item(t, "double", i) for i, t in enumerate(ids)])
            got = await c.wait_for(ids)
            assert all(r.ok for r in got.values())

    run(main())


def test_sigkill_during_a_long_task_fails_it_and_the_rest_still_run(tmp_path):
    marker = tmp_path / "running"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            quick = [f"q{i}" for i in range(5)]
            p.submit([item("long", "sleep", str(marker), 60)] + [item(t, "double", 1) for t in quick])
            await wait_until(marker.exists)
            victim = p.pids[0]
            os.kill(victim, signal.SIGKILL)
            got = await c.wait_for(["long", *quick])
            err = got["long"].error
            assert err.type_name == "WorkerDied" and "SIGKILL" in err.message
            assert f"pid {victim}" in err.message
            assert all(got[t].ok for t in quick)
            assert c.order == ["long", *quick]  # never-started tasks kept their order
            assert victim not in p.pids

    run(main())


@pytest.mark.parametrize("how", ["os.fork", "libc-fork", "exec"])
def test_a_child_of_the_task_does_not_delay_its_workers_death(tmp_path, how):
    """The task starts a child that outlives its worker by ten minutes, holding the
    worker's fds unless it execs; the worker's death is seen while the child runs."""
    pid_file = tmp_path / "child.pid"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            victim = p.pids[0]
            p.submit([item("forker", "fork_then_die", str(pid_file), how)])
            err = (await c.wait_for(["forker"], timeout=60))["forker"].error
            assert not pid_gone(int(pid_file.read_text()))  # the child still holds them
            assert err.type_name == "WorkerDied" and "SIGKILL" in err.message, err
            assert f"pid {victim}" in err.message
            await wait_until(lambda: len(p.pids) == 1 and victim not in p.pids)
            p.submit([item("after", "double", 2)])
            assert value((await c.wait_for(["after"]))["after"])[0] == 4

    try:
        run(main(), timeout=120)
    finally:
        if pid_file.exists():  # the child is not ours (its parent died): end it by its pid
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_only_the_task_that_killed_the_worker_is_blamed():
    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("ok1", "double", 1)])
            await c.wait_for(["ok1"])  # now the cap is large: the rest travel in one frame
            p.submit([item("ok2", "double", 2), item("ok3", "double", 3), item("killer", "die", 9),
                      item("ok4", "double", 4)])
            got = await c.wait_for(["ok2", "ok3", "killer", "ok4"])
            assert got["killer"].error.type_name == "WorkerDied"
            # ok2/ok3 finished before the crash; if their batched results died
            # with the worker they ran again, but each is reported once and ok.
            assert [value(got[t])[0] for t in ("ok2", "ok3", "ok4")] == [4, 6, 8]
            assert not c.duplicates

    run(main())


def test_a_finished_result_does_not_wait_behind_a_long_task(tmp_path):
    release = tmp_path / "release"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("fast", "double", 1), item("slow", "wait", str(release))])
            await c.wait_for(["fast"], timeout=5)  # sent while "slow" still runs
            assert "slow" not in c.results
            release.write_text("go")
            await c.wait_for(["slow"])

    run(main())


def test_max_retries_reruns_the_task_once(tmp_path):
    log = tmp_path / "attempts"

    async def main():
        c = Collector()
        async with pool(1, c, max_retries=1) as p:
            p.submit([item("flaky", "die_first", str(tmp_path / "marker")),
                      item("doomed", "always_die", str(log))])
            got = await c.wait_for(["flaky", "doomed"])
            assert value(got["flaky"]) == "second attempt"
            assert got["doomed"].error.type_name == "WorkerDied"
            assert "exit code 2" in got["doomed"].error.message
            assert log.read_text().count("attempt") == 2
            assert not c.duplicates

    run(main())


def test_cancel_drops_queued_tasks_and_ones_sent_but_not_started(tmp_path):
    release = tmp_path / "release"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            assert p.capacity() == p.workers * p.per_worker_cap == 2  # before any runtime is seen
            others = [f"t{i}" for i in range(10)]
            p.submit([item("block", "wait", str(release))] + [item(t, "double", 1) for t in others])
            # The worker holds the blocker and t0 (cap 2); t1..t9 wait in the pool.
            assert (p.queued, p.outstanding, p.free_slots) == (9, 11, 0)
            dropped = p.cancel(["t3", "t5", "t0", "unknown"])
            assert sorted(dropped) == ["t0", "t3", "t5"]
            assert p.cancel(["t0", "t3"]) == []  # already cancelled
            assert p.queued == 7
            release.write_text("go")
            expected = ["block"] + [t for t in others if t not in dropped]
            await c.wait_for(expected)
            await wait_until(lambda: p.outstanding == 0)
            assert sorted(c.order) == sorted(expected)

    run(main())


# ------------------------------------------------------------------ walltime
def test_walltime_kills_a_sleeping_task_and_the_rest_run_in_order(tmp_path):
    marker = tmp_path / "running"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            quick = [f"q{i}" for i in range(4)]
            # q0 is sent to the worker with the sleeper (cap 2): it goes back to the queue.
            p.submit([item("long", "sleep", str(marker), 30, walltime_s=0.5)]
                     + [item(t, "double", i) for i, t in enumerate(quick)])
            await wait_until(marker.exists)
            victim = p.pids[0]
            # A 30 s sleep ended by the walltime (the deadline is far below 30 s).
            err = (await c.wait_for(["long"], timeout=10))["long"].error
            assert (err.type_name, err.kind) == ("WalltimeExceeded", "walltime")
            assert "walltime of 0.5s" in err.message and f"pid {victim}" in err.message
            got = await c.wait_for(quick)
            assert [value(got[t])[0] for t in quick] == [0, 2, 4, 6]
            assert c.order == ["long", *quick] and not c.duplicates
            assert pid_gone(victim) and victim not in p.pids
            p.submit([item("next", "double", 21)])
            assert value((await c.wait_for(["next"]))["next"])[0] == 42

    run(main())


def test_walltime_kills_a_pure_python_busy_loop(tmp_path):
    marker = tmp_path / "spinning"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("spin", "spin", str(marker), walltime_s=0.3)])
            await wait_until(marker.exists)
            victim = p.pids[0]
            err = (await c.wait_for(["spin"], timeout=10))["spin"].error  # it never ends itself
            assert err.kind == "walltime" and pid_gone(victim)
            p.submit([item("after", "double", 1)])
            assert (await c.wait_for(["after"]))["after"].ok

    run(main())


def test_walltime_is_not_charged_while_a_task_waits(tmp_path):
    release = tmp_path / "release"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            # One worker: "block" (no walltime) holds it while n1 waits on the worker
            # (cap 2) and n2 in the pool, for longer than their 0.8 s walltime.
            ids = ["n1", "n2"]
            p.submit([item("block", "wait", str(release))]
                     + [item(t, "nap", 0.05, walltime_s=0.8) for t in ids])
            await asyncio.sleep(1.6)  # not a wait for a condition: the waiting under test
            release.write_text("go")
            got = await c.wait_for(["block", *ids])
            assert [value(got[t]) for t in ids] == [0.05, 0.05]

    run(main())


def test_tasks_without_walltime_run_no_watchdog():
    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("plain", "nap", 0.2)])
            assert p._watchdog is None
            p.submit([item("timed", "nap", 0.01, walltime_s=5)])
            assert p._watchdog is not None
            await c.wait_for(["plain", "timed"])
            await wait_until(lambda: p._watchdog is None, timeout=2)  # stops once none is left

    run(main())


# ------------------------------------------------------------------ worker deaths
def test_per_task_max_retries_overrides_the_pool_default(tmp_path):
    logs = {t: tmp_path / t for t in ("two", "zero", "default")}

    async def main():
        c = Collector()
        async with pool(1, c, max_retries=1) as p:
            p.submit([item("two", "die_counting", str(logs["two"]), 3, max_retries=2),
                      item("zero", "die_counting", str(logs["zero"]), 3, max_retries=0),
                      item("default", "die_counting", str(logs["default"]), 3)])
            got = await c.wait_for(logs)
            for tid, attempts in (("two", 3), ("zero", 1), ("default", 2)):
                err = got[tid].error
                assert (err.type_name, err.kind) == ("WorkerDied", "worker_died")
                assert "exit code 3" in err.message and f"attempts made: {attempts}" in err.message
                assert logs[tid].read_text().count("attempt") == attempts
            assert not c.duplicates
            await wait_until(lambda: len(p.pids) == 1)

    run(main())


@pytest.mark.parametrize("function_id, cause", [("segfault", "SIGSEGV"),
                                                ("sigkill_self", "SIGKILL")])
def test_a_worker_killed_by_a_signal_names_it(function_id, cause):
    async def main():
        c = Collector()
        async with pool(1, c) as p:
            p.submit([item("victim", function_id), item("bystander", "double", 1)])
            got = await c.wait_for(["victim", "bystander"])
            err = got["victim"].error
            assert (err.type_name, err.kind) == ("WorkerDied", "worker_died")
            assert f"signal {cause}" in err.message and "attempts made: 1" in err.message
            assert got["bystander"].ok

    run(main())


# ------------------------------------------------------------------ cancel
def test_cancel_kills_a_running_task_without_a_result(tmp_path):
    marker = tmp_path / "running"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            quick = [f"q{i}" for i in range(4)]
            p.submit([item("long", "sleep", str(marker), 30)]
                     + [item(t, "double", i) for i, t in enumerate(quick)])
            await wait_until(marker.exists)
            victim = p.pids[0]
            assert p.cancel(["long"]) == ["long"]  # synchronous; the kill is not awaited
            await wait_until(lambda: pid_gone(victim), timeout=5)
            got = await c.wait_for(quick)
            assert [value(got[t])[0] for t in quick] == [0, 2, 4, 6]
            p.submit([item("after", "double", 5)])
            await c.wait_for(["after"])
            assert "long" not in c.results and not c.duplicates
            assert victim not in p.pids and p.outstanding == 0

    run(main())


def test_cancel_of_tasks_sent_but_not_started_delivers_nothing_for_them(tmp_path):
    release = tmp_path / "release"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            warm = [f"w{i}" for i in range(200)]
            p.submit([item(t, "noop") for t in warm])
            await c.wait_for(warm)
            assert p.per_worker_cap == 64  # now everything below travels to the worker at once
            pid = p.pids[0]
            ids = [f"t{i}" for i in range(10)]
            p.submit([item("block", "wait", str(release))] + [item(t, "double", 1) for t in ids])
            assert p.queued == 0
            assert sorted(p.cancel(["t3", "t9", "t5"])) == ["t3", "t5", "t9"]
            release.write_text("go")
            await c.wait_for(["block", "t8"])
            await wait_until(lambda: p.outstanding == 0)
            assert not {"t3", "t5", "t9"} & c.results.keys()
            assert p.pids == [pid]  # skipping needs no kill

    run(main())


def test_take_unstarted_hands_back_only_tasks_no_worker_has(tmp_path):
    release = tmp_path / "release"

    async def main():
        c = Collector()
        async with pool(1, c) as p:
            others = [f"t{i}" for i in range(6)]
            p.submit([item("block", "wait", str(release))] + [item(t, "double", 1) for t in others])
            # The worker holds the blocker and t0 (cap 2): those stay and finish here.
            assert [i.task_id for i in p.take_unstarted()] == others[1:]
            assert p.queued == 0 and p.take_unstarted() == []
            release.write_text("go")
            await c.wait_for(["block", "t0"])
            await wait_until(lambda: p.outstanding == 0)
            assert sorted(c.order) == ["block", "t0"]

    run(main())

def test_worker_process_skips_cancelled_tasks_but_counts_them(tmp_path):
    release = tmp_path / "release"
    fd = progress_file()
    proc = subprocess.Popen(worker_command(sys.executable, 10**6, fd), pass_fds=(fd,),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env(None))
    try:
        def send(obj):
            header, payload = encode_frame(obj)
            proc.stdin.write(header + payload)
            proc.stdin.flush()

        assert frame_within(proc.stdout) == ("ready", proc.pid)
        send(("functions", [(f, FUNCTIONS[f]) for f in ("wait", "echo")]))
        send(("tasks", [("block", "wait", dumps_args((str(release),), {}))]
              + [(t, "echo", dumps_args((t,), {})) for t in ("a", "b", "c")]))
        send(("cancel", ["b", "never-sent"]))
        # The worker's reader thread must take the cancel before "block" ends. A frame
        # after it, and the pipe read empty: the reader has queued the cancel.
        send(("functions", []))
        wait_until_sync(lambda: bytes_waiting(proc.stdin.fileno()) == 0, 20,
                        "the worker to read the cancel")
        release.write_text("go")
        rows = []
        while len(rows) < 4:
            kind, more = frame_within(proc.stdout)
            rows += more
        assert [r[0] for r in rows] == ["block", "a", "b", "c"]
        assert [r[1] for r in rows] == [True, True, False, True]
        assert rows[2][3][0] == "TaskCancelled" and rows[2][3][4] == "cancelled"
        assert read_progress(fd) == 4  # a skipped task still counts as taken
        send(("stop",))
        assert proc.wait(timeout=10) == 0
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


# ------------------------------------------------------------------ supervision, pure
def _items(*ids: str, **max_retries: int) -> list[WorkItem]:
    return [WorkItem(t, "f", b"", max_retries=max_retries.get(t)) for t in ids]


def test_running_index_and_describe_exit():
    assert running_index(None, 0, 3) is None
    assert running_index(5, 3, 3) == 1  # two started since the last result: the second runs
    assert running_index(3, 3, 2) is None  # all results in: nothing runs
    assert running_index(9, 3, 2) is None  # the counter names a task no longer outstanding
    assert describe_exit(-11) == "signal SIGSEGV"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(None) == "exit code unknown"


def test_start_clock_charges_from_the_first_poll_that_saw_the_task():
    clock = StartClock()
    assert clock.running_for(4, 10.0) == 0.0
    assert clock.running_for(4, 10.5) == 0.5
    assert clock.running_for(5, 11.0) == 0.0  # the next task started
    assert clock.running_for(5, 11.2) == pytest.approx(0.2)


def test_settle_retries_the_running_task_then_fails_it():
    retries: dict[str, int] = {}
    args = dict(pid=7, returncode=-9, cancelled=set(), retries=retries, default_max_retries=0)
    failed, requeue = settle_dead_worker(_items("a", "b", "c", b=1), 1, None, **args)
    assert failed == [] and [i.task_id for i in requeue] == ["a", "b", "c"]
    failed, requeue = settle_dead_worker(_items("b", "c", b=1), 0, None, **args)
    assert [i.task_id for i in requeue] == ["c"] and retries == {}
    err = failed[0].error
    assert failed[0].task_id == "b" and err.kind == "worker_died"
    assert err.message == ("worker pid 7 died (signal SIGKILL) while running the task; "
                           "attempts made: 2")


def test_settle_after_a_kill_blames_only_the_killed_task_and_drops_cancelled():
    timeout = ErrorInfo("WalltimeExceeded", "too long", kind="walltime")
    cancelled = {"c"}
    retries = {"a": 1, "c": 1}
    # "d" started just before the kill over "b" landed: not its fault, no retry charged.
    failed, requeue = settle_dead_worker(
        _items("a", "b", "c", "d"), 3, Kill("b", timeout), pid=7, returncode=-9,
        cancelled=cancelled, retries=retries, default_max_retries=3)
    assert [(r.task_id, r.error) for r in failed] == [("b", timeout)]
    assert [i.task_id for i in requeue] == ["a", "d"]
    assert cancelled == set() and retries == {"a": 1}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds via /proc")
def test_shutdown_kills_stragglers_leaves_nothing_and_is_idempotent(tmp_path):
    marker = tmp_path / "running"

    async def main():
        fds = len(os.listdir("/proc/self/fd"))
        c = Collector()
        p = pool(2, c)
        await p.start()
        pids = p.pids
        assert len(pids) == 2 and all(psutil.pid_exists(x) for x in pids)
        p.submit([item("stuck", "sleep", str(marker), 60)])
        await wait_until(marker.exists)
        started = time.monotonic()
        await asyncio.gather(p.shutdown(timeout=0.5), p.shutdown(timeout=0.5))
        assert time.monotonic() - started < 5
        await p.shutdown()
        assert all(pid_gone(x) for x in pids)
        assert p.pids == []
        assert len(os.listdir("/proc/self/fd")) == fds  # pipes and progress files closed

    run(main())


def test_adaptive_cap_follows_runtime():
    assert per_worker_cap(None) == 2
    assert per_worker_cap(0.0) == 64
    assert per_worker_cap(1e-6) == 64
    assert per_worker_cap(0.0005) == 20  # 10 ms of queued work
    assert per_worker_cap(0.004) == 3
    assert per_worker_cap(0.02) == 2  # one running, one waiting: no idle round trip
    assert per_worker_cap(0.1) == per_worker_cap(1.0) == 1  # long: one at a time


def test_noop_tasks_travel_in_big_frames():
    async def main():
        c = Collector()
        async with pool(2, c) as p:
            ids = [f"n{i}" for i in range(3000)]
            p.submit([item(t, "noop") for t in ids])
            await c.wait_for(ids)
            assert p.per_worker_cap == 64 and p.capacity() == 128

    run(main())


def test_worker_process_batches_results_but_answers_a_lone_task_at_once():
    proc = subprocess.Popen(worker_command(sys.executable, 10**6), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=worker_env(None))
    try:
        def send(obj):
            header, payload = encode_frame(obj)
            proc.stdin.write(header + payload)
            proc.stdin.flush()

        assert frame_within(proc.stdout) == ("ready", proc.pid)
        send(("functions", [("noop", FUNCTIONS["noop"])]))
        send(("tasks", [("lone", "noop", dumps_args((), {}))]))
        kind, rows = frame_within(proc.stdout)
        assert kind == "results" and [r[0] for r in rows] == ["lone"] and rows[0][1] is True

        send(("tasks", [(f"b{i}", "noop", dumps_args((), {})) for i in range(500)]))
        seen, frames = [], 0
        while len(seen) < 500:
            kind, rows = frame_within(proc.stdout)
            seen += [r[0] for r in rows]
            frames += 1
        assert seen == [f"b{i}" for i in range(500)]
        assert frames < 500  # batched: some frame carried more than one result
        send(("stop",))
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_decode_frame_is_plain_data_only():
    assert decode_frame(encode_frame(("stop",))[1]) == ("stop",)
    with pytest.raises(Exception):
        decode_frame(cloudpickle.dumps(("tasks", [lambda: 1])))
