"""The Parsl and Dask engines end to end: real hub, real endpoint processes,
the engines' own workers (Parsl HTEX + LocalProvider, Dask LocalCluster).

One hub and one endpoint per engine are shared by the module (the engines
take seconds to start); the autoscaling tests start their own endpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cloudpickle
import psutil
import pytest

from fabric.client import Client
from fabric.errors import EngineUnavailable, TaskFailed, WorkerDied
from fabric.launch import LocalFabric

from fabric.endpoint.engines import require
from fabric.endpoint.engines.futures import engine_capacity, tasks_per_worker
from fabric.testing import wait_until

try:
    require("parsl")
    require("dask")
    MISSING = ""
except EngineUnavailable as exc:  # CI installs both (make test); say why when they are not
    MISSING = str(exc)
needs_engines = pytest.mark.skipif(bool(MISSING), reason=MISSING)
# The endpoints cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ENGINES = ["parsl", "dask"]
#: Fast autoscaling for tests: decide every 0.2 s, release a block idle for 1 s.
AUTOSCALE = ("--init-blocks", "0", "--min-blocks", "0", "--max-blocks", "2",
             "--strategy-period", "0.2", "--max-idletime", "1")


def count_calls(x):
    import os

    import fabric.worker

    s = fabric.worker.state()
    s["calls"] = s.get("calls", 0) + 1
    return x * 2, os.getpid(), s["calls"]


def fails(x):
    raise ValueError(f"bad input {x}")


def dies_first_time(marker):
    """Writes its pid to `marker` and hangs (to be killed); the rerun returns."""
    import os
    import pathlib
    import time

    p = pathlib.Path(marker)
    if not p.exists():
        p.write_text(str(os.getpid()))
        time.sleep(60)
    return "ran again"


def nap(seconds):
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def hold_in(seen_dir, release):
    """Leave this worker's pid in `seen_dir`, then return it once `release` exists."""
    import os
    import pathlib
    import time

    pathlib.Path(seen_dir, str(os.getpid())).touch()
    deadline = time.monotonic() + 90
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(release)
        time.sleep(0.02)
    return os.getpid()


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    with LocalFabric(tmp_path_factory.mktemp("engines"), [], workers=1) as f:
        for kind in ENGINES:
            # A short strategy period: Parsl starts even the first block on its first pass.
            f.start_endpoint(kind, "--engine", kind, "--strategy-period", "0.5")
        with Client(f.address) as c:
            c.wait_for_endpoints(len(ENGINES), timeout=90)
        yield f
        print(f.output())


@pytest.fixture
def client(fab):
    with Client(fab.address) as c:
        yield c


@needs_engines
@pytest.mark.parametrize("kind", ENGINES)
def test_tasks_run_warm_and_fail_clearly(client, kind):
    fid = client.register_function(count_calls)
    tids = client.batch_run(fid, [((i,), {}) for i in range(8)], endpoint_id=kind)
    rows = client.get_batch_result(tids, timeout=60)
    assert [r[0] for r in rows] == [i * 2 for i in range(8)]
    # One worker: every call ran in the same process, and per-function state
    # survived between calls there (the function stayed warm).
    assert len({r[1] for r in rows}) == 1
    assert sorted(r[2] for r in rows)[-1] >= 8
    assert rows[0][1] != os.getpid()

    bad = client.run(3, function_id=client.register_function(fails), endpoint_id=kind)
    with pytest.raises(TaskFailed) as err:
        client.get_result(bad, timeout=60)
    assert isinstance(err.value.cause, ValueError)
    assert "bad input 3" in str(err.value)


@needs_engines
@pytest.mark.parametrize("kind", ENGINES)
def test_runtime_tasks_are_refused_naming_what_is_missing(client, kind):
    """Runtimes run on the local engine only, so far: a task asking for one fails at
    once, saying so, instead of running in an environment it did not ask for."""
    from fabric.client import Runtime
    from fabric.errors import RuntimeBuildFailed

    fid = client.register_function(fails, runtime=Runtime(env={"X": "1"}))
    with pytest.raises(RuntimeBuildFailed, match=f"the {kind} engine cannot run tasks in a "
                                                 "runtime yet") as err:
        client.get_result(client.run(1, function_id=fid, endpoint_id=kind), timeout=60)
    assert err.value.type_name == "EngineUnavailable" and "local engine" in err.value.message
    # Asking for the endpoint's own environment is no runtime: it runs.
    plain = client.register_function(count_calls, runtime=Runtime())
    assert client.get_result(client.run(5, function_id=plain, endpoint_id=kind),
                             timeout=60)[0] == 10


@needs_engines
@pytest.mark.parametrize("kind", ENGINES)
def test_a_killed_engine_worker_reruns_the_task_then_fails_it(client, kind, tmp_path):
    fid = client.register_function(dies_first_time)

    def kill_the_worker_running(marker: Path) -> None:
        wait_until(lambda: marker.exists() and marker.read_text(), 60, "the task to start")
        pid = int(marker.read_text())
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)

    # Retries allowed (the endpoint's default, 1): the task runs again and succeeds.
    marker = tmp_path / "once"
    tid = client.run(str(marker), function_id=fid, endpoint_id=kind)
    kill_the_worker_running(marker)
    assert client.get_result(tid, timeout=60) == "ran again"

    # No retries: the task fails with WorkerDied, naming the engine.
    marker = tmp_path / "never"
    tid = client.run(str(marker), function_id=fid, endpoint_id=kind, max_retries=0)
    kill_the_worker_running(marker)
    with pytest.raises(WorkerDied, match=kind):
        client.get_result(tid, timeout=60)

    # The engine replaced its worker: the endpoint still runs tasks.
    again = client.run(1, function_id=client.register_function(count_calls), endpoint_id=kind)
    assert client.get_result(again, timeout=60)[0] == 2


@needs_engines
@pytest.mark.parametrize("kind", ENGINES)
def test_blocks_scale_out_under_a_burst_and_back_in_when_idle(fab, client, kind, tmp_path):
    name = f"{kind}-auto"
    fab.start_endpoint(name, "--engine", kind, *AUTOSCALE)
    try:
        wait_until(lambda: any(e.name == name and e.online for e in client.endpoints()), 60,
                   f"{name} to connect")
        fid = client.register_function(hold_in)
        seen, release = tmp_path / "seen", tmp_path / "release"
        seen.mkdir()
        tids = client.batch_run(fid, [((str(seen), str(release)), {}) for _ in range(8)],
                                endpoint_id=name)
        # Started with no block at all; the held burst makes the engine add a block, then
        # a second one (one worker each) while the first block's worker is still busy.
        try:
            wait_until(lambda: len(list(seen.iterdir())) >= 2, 90,
                       f"{kind} to add a second block under the burst")
        finally:
            release.touch()
        pids = set(client.get_batch_result(tids, timeout=90))
        assert len(pids) == 2 and pids == {int(p.name) for p in seen.iterdir()}, pids
        # Idle for longer than --max-idletime: the engine releases the blocks.
        wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 60,
                   f"{kind} to release its idle workers {pids}")
    finally:
        fab.endpoints[name].stop(30)


def test_choosing_an_engine_that_is_not_installed_names_the_extra(monkeypatch, tmp_path):
    from fabric.endpoint.engines import EngineConfig, EngineContext, make_engine

    monkeypatch.setitem(sys.modules, "parsl", None)  # as if the extra were not installed
    ctx = EngineContext(workers=1, on_results=lambda rs: None, max_result_bytes=1 << 20,
                        max_retries=0, run_dir=tmp_path)
    with pytest.raises(EngineUnavailable, match=r"pip install 'fabric-fx\[parsl\]'"):
        make_engine(EngineConfig(kind="parsl"), ctx)


def test_credits_follow_the_engines_real_capacity():
    # No worker yet and no block that could still start: no credits at all.
    assert engine_capacity(0, False, 4) == 0
    # No worker yet, the autoscaler may add a block: one block's worth, so it sees work.
    assert engine_capacity(0, True, 4) == 4
    # Two workers: keep each busy, plus headroom while growing.
    assert engine_capacity(2, False, 4, per_worker=2) == 4
    assert engine_capacity(2, True, 4, per_worker=2) == 8
    # Short tasks: more queued per worker, so none idles while results travel back.
    assert tasks_per_worker(None) == 2 and tasks_per_worker(10.0) == 2
    assert tasks_per_worker(0.001) == 32 and tasks_per_worker(0.01) == 5


@needs_engines
def test_batch_providers_come_from_configuration():
    from fabric.endpoint.engines import EngineConfig
    from fabric.endpoint.engines.parsl import make_provider

    slurm = make_provider(EngineConfig(
        kind="parsl", provider="slurm", min_blocks=0, max_blocks=4, nodes_per_block=2,
        provider_options={"partition": "gpu", "account": "proj", "walltime": "00:30:00"}))
    assert type(slurm).__name__ == "SlurmProvider"
    assert (slurm.partition, slurm.account, slurm.walltime) == ("gpu", "proj", "00:30:00")
    assert (slurm.max_blocks, slurm.nodes_per_block) == (4, 2)
    pbs = make_provider(EngineConfig(kind="parsl", provider="pbspro",
                                     provider_options={"queue": "workq"}))
    assert type(pbs).__name__ == "PBSProProvider" and pbs.queue == "workq"
    with pytest.raises(EngineUnavailable, match="slurm provider"):
        make_provider(EngineConfig(kind="parsl", provider="slurm",
                                   provider_options={"no_such_option": 1}))


@needs_engines
def test_dask_engine_joins_a_running_cluster(fab, client):
    """--scheduler: the endpoint is a client of a cluster someone else runs
    (here a `dask scheduler` and a `dask worker` process)."""
    from fabric.launch import spawn_command, stop_all

    scheduler = spawn_command("dask scheduler", [
        sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
        "--port", "0", "--no-dashboard"])
    children = [scheduler]
    try:
        address = scheduler.wait_for(r"Scheduler at:\s+(tcp://\S+)", 60).group(1)
        children.append(spawn_command("dask worker", [
            sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
            "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"]))
        fab.start_endpoint("dask-joined", "--engine", "dask", "--scheduler", address)
        children.append(fab.endpoints["dask-joined"])
        wait_until(lambda: any(e.name == "dask-joined" and e.online
                               for e in client.endpoints()), 60, "dask-joined to connect")
        fid = client.register_function(count_calls)
        tids = client.batch_run(fid, [((i,), {}) for i in range(4)], endpoint_id="dask-joined")
        rows = client.get_batch_result(tids, timeout=60)
        assert {r[1] for r in rows} == {children[1].pid}  # ran on that cluster's worker
    finally:
        stop_all(children[::-1], 20)
