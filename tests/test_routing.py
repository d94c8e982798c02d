"""Tier 3: routing policies on real endpoints of different speeds.

Three endpoints on loopback: `quick` (2 workers), `steady` (1 worker, every
task takes 2x as long) and `sluggish` (1 worker, 4x). Tasks sleep, so the
2-core machine is not what limits them. Smallest-ETA learns the runtimes
from the results of a first wave and sends the next waves in proportion to
speed; round-robin gives each a third, and the slowest endpoint sets its
makespan.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client, Executor
from fabric.launch import LocalFabric
from fabric.states import TaskState
from fabric.testing import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nap(seconds, i=0):
    time.sleep(seconds)
    return i


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    f = LocalFabric(tmp_path_factory.mktemp("routing"), [], workers=1)
    try:
        f.start()
        f.workers = 2
        f.start_endpoint("quick")
        f.workers = 1
        f.start_endpoint("steady", "--slowdown", "2")
        f.start_endpoint("sluggish", "--slowdown", "4")
        with Client(f.address) as c:
            c.wait_for_endpoints(3, timeout=60)
        yield f
    finally:
        f.stop()


@pytest.fixture
def client(mixed):
    with Client(mixed.address) as c:
        yield c


def where(client, tids):
    info = {t.task_id: t for t in client.tasks(limit=5000)}
    return Counter(info[tid].endpoint_name for tid in tids), [info[tid].route_reason for tid in tids]


def run_waves(client, policy, waves=3, per_wave=16, seconds=0.1):
    """Submit waves as the previous one finishes; returns (makespan, tids)."""
    fid = client.register_function(nap)
    t0 = time.monotonic()
    tids = []
    for w in range(waves):
        wave = client.batch_run(fid, [((seconds, i), {}) for i in range(per_wave)], policy=policy)
        client.get_batch_result(wave, timeout=120)
        tids += wave
    return time.monotonic() - t0, tids


def test_smallest_eta_sends_more_to_faster_endpoints(client):
    client.get_batch_result(client.batch_run(client.register_function(nap),
                                             [((0.1,), {}) for _ in range(12)],
                                             policy="round-robin"), timeout=60)  # the model learns
    rr_makespan, rr_tids = run_waves(client, "round-robin")
    eta_makespan, eta_tids = run_waves(client, "smallest-eta")
    rr_counts, _ = where(client, rr_tids)
    print(f"\nround-robin {rr_makespan:.2f}s, smallest-eta {eta_makespan:.2f}s")
    eta_counts, reasons = where(client, eta_tids)
    print(f"smallest-eta split {dict(eta_counts)}; e.g. {reasons[0]!r}")
    assert rr_counts["quick"] == rr_counts["steady"] == rr_counts["sluggish"] == 16
    assert eta_counts["quick"] > eta_counts["steady"] > eta_counts["sluggish"], eta_counts
    assert all(r.startswith("smallest ETA") for r in reasons), reasons[:3]
    # (What that split does to the makespan is measured in benchmarks/, not asserted here.)


def test_allow_list_and_policy_per_executor(client):
    with Executor(client=client, policy="least-loaded", endpoints=["steady", "sluggish"]) as ex:
        assert list(ex.map(nap, [0.01] * 12, range(12), timeout=60)) == list(range(12))
    names = {t.endpoint_name for t in client.tasks(limit=12)}
    assert names <= {"steady", "sluggish"} and names, names


def test_a_task_needing_a_gpu_is_held_with_a_reason_or_refused(client):
    fid = client.register_function(nap)
    tid = client.run(0, function_id=fid, gpus=1)
    info = wait_until(lambda: {t.task_id: t for t in client.tasks(limit=20)}.get(tid), 30,
                      "the hub to list the task")
    assert info.state is TaskState.QUEUED and "GPU" in info.route_reason, info
    assert info.endpoint_name == ""  # never sent anywhere
    client.cancel(tid)
    before = client.status().tasks_by_state
    with pytest.raises(errors.NoEligibleEndpoint, match="GPU"):
        client.run(0, function_id=fid, gpus=1, fail_fast=True)
    assert client.status().tasks_by_state == before  # refused: nothing stored


def test_unknown_policy_and_unknown_allowed_endpoint_are_refused(client):
    fid = client.register_function(nap)
    with pytest.raises(errors.InvalidRequest, match="smallest-eta"):
        client.run(0, function_id=fid, policy="psychic")
    with pytest.raises(errors.EndpointNotFound, match="nowhere"):
        client.run(0, function_id=fid, endpoints=["nowhere"])


def test_cheapest_under_a_deadline(client):
    fid = client.register_function(nap)
    tid = client.run(0.01, function_id=fid, policy="cheapest", deadline=60)
    assert client.get_result(tid, timeout=30) == 0
    reason = {t.task_id: t for t in client.tasks(limit=10)}[tid].route_reason
    assert "cheapest" in reason, reason


def size_of(blob):
    return len(blob)


def test_the_hub_measures_each_link_from_heartbeat_round_trips(tmp_path):
    with LocalFabric(tmp_path, ["near"], workers=1, hub_args=("--heartbeat", "0.1")) as f:
        with Client(f.address) as c:
            c.wait_for_endpoints(1, timeout=60)
            wait_until(lambda: c.endpoints()[0].latency_s, 30, "a latency measured")
            assert c.endpoints()[0].latency_s > 0
            assert c.endpoints()[0].bandwidth_Bps == 0.0  # small batches are not timed
            # Large transfers are: task batches of 256 KiB or more (the endpoint echoes
            # their stamp) and, as here, arguments over 1 MiB, which the endpoint fetches
            # as blobs; the hub learns the bandwidth from the transfer time.
            fid = c.register_function(size_of)
            blob = b"x" * (1 << 20)
            tids = c.batch_run(fid, [((blob,), {})] * 6)
            assert c.get_batch_result(tids, timeout=60) == [1 << 20] * 6
            wait_until(lambda: c.endpoints()[0].bandwidth_Bps, 30, "a bandwidth measured")
            assert c.endpoints()[0].bandwidth_Bps > 0, c.endpoints()[0]
