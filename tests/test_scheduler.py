"""Tier 1: the scheduler, pure: constraints, policies, batch routing, the
runtime model and the simulator. No sockets, no processes; the whole file
runs in a few seconds."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scheduler
from scheduler import Decision, EndpointView, Hold, RuntimeModel, Tally, TaskView
from scheduler import workloads as W
from scheduler.bounds import lower_bound
from scheduler.simulator import simulate

GB = 1 << 30

# ---------------------------------------------------------------- strategies

endpoint_views = st.builds(
    EndpointView,
    endpoint_id=st.text("abcdef", min_size=1, max_size=4),
    name=st.just("x"),
    online=st.booleans(),
    python_version=st.sampled_from(["3.10", "3.11", "3.12"]),
    workers=st.integers(1, 64),
    credits=st.integers(0, 100),
    queued=st.integers(0, 100),
    in_flight=st.integers(0, 100),
    gpus=st.sampled_from([0, 0, 1, 4]),
    memory_bytes=st.sampled_from([0, 8 * GB, 64 * GB]),
    latency_s=st.floats(0, 0.1),
    bandwidth_Bps=st.sampled_from([0.0, 1e7, 1e9]),
    relative_speed=st.floats(0.25, 4),
    cost_per_core_hour=st.sampled_from([0.0, 0.05, 0.6]),
)
endpoint_sets = st.lists(endpoint_views, max_size=8, unique_by=lambda v: v.endpoint_id)
task_views = st.builds(
    TaskView,
    function_id=st.sampled_from(["f", "g", "h"]),
    python_version=st.sampled_from(["3.11", "3.12"]),
    payload_bytes=st.integers(0, 10**8),
    gpus=st.sampled_from([0, 0, True, 2]),
    memory_bytes=st.sampled_from([0, 0, 16 * GB]),
    allowed_endpoints=st.one_of(st.none(), st.frozensets(st.text("abcdef", min_size=1, max_size=2),
                                                         max_size=3)),
    deadline_s=st.one_of(st.none(), st.floats(0.1, 100)),
    fail_fast=st.booleans(),
)


def ok_for(task: TaskView, v: EndpointView) -> bool:
    """Eligibility written out independently of the implementation."""
    return (v.online and v.python_version == task.python_version and v.gpus >= int(task.gpus)
            and (task.memory_bytes == 0 or v.memory_bytes >= task.memory_bytes)
            and (task.allowed_endpoints is None or v.endpoint_id in task.allowed_endpoints))


def ep(eid: str, **kw) -> EndpointView:
    return EndpointView(eid, eid, kw.pop("online", True), kw.pop("python_version", "3.11"), **kw)


# ---------------------------------------------------------------- properties

@settings(max_examples=150, deadline=None)
@given(endpoint_sets, st.lists(task_views, min_size=1, max_size=30),
       st.sampled_from(sorted(scheduler.POLICIES)))
def test_never_routes_to_an_offline_or_ineligible_endpoint(eps, tasks, name):
    decisions = scheduler.route_batch(tasks, eps, scheduler.make_policy(name), RuntimeModel())
    assert len(decisions) == len(tasks)
    for task, d in zip(tasks, decisions):
        ok = {v.endpoint_id for v in eps if ok_for(task, v)}
        if ok:
            assert isinstance(d, Decision) and d.endpoint_id in ok, (task, d)
            if task.gpus:
                assert next(v for v in eps if v.endpoint_id == d.endpoint_id).gpus >= task.gpus
            assert d.reason and d.eta_s is not None and d.slot_s is not None
        else:
            assert isinstance(d, Hold) and d.reason and d.fail == task.fail_fast


@settings(max_examples=100, deadline=None)
@given(endpoint_sets, st.lists(task_views, max_size=40), st.sampled_from(sorted(scheduler.POLICIES)))
def test_the_tally_counts_every_routed_task_once(eps, tasks, name):
    tally = Tally(eps, RuntimeModel())
    backlog_before = sum(tally.backlog_s)
    decisions = scheduler.route_batch(tasks, None, scheduler.make_policy(name), tally=tally)
    routed = [d for d in decisions if isinstance(d, Decision)]
    assert sum(tally.assigned) == len(routed)
    assert tally.counts() == dict(Counter(d.endpoint_id for d in routed))
    assert sorted(tally.order) == list(range(len(tasks)))
    added = sum(d.slot_s for d in routed)
    assert sum(tally.backlog_s) == pytest.approx(backlog_before + added)
    for i, v in enumerate(tally.views):
        assert tally.credits_left[i] == v.credits - tally.assigned[i]


@settings(max_examples=50, deadline=None)
@given(st.lists(endpoint_views, min_size=1, max_size=8, unique_by=lambda v: v.endpoint_id),
       st.randoms(use_true_random=False))
def test_round_robin_is_deterministic_whatever_the_snapshot_order(eps, rnd):
    shuffled = list(eps)
    rnd.shuffle(shuffled)
    tasks = [TaskView("f", "3.11")] * 12
    a = scheduler.route_batch(tasks, eps, scheduler.RoundRobin())
    b = scheduler.route_batch(tasks, shuffled, scheduler.RoundRobin())
    assert a == b


# ---------------------------------------------------------------- constraints and holds

def test_round_robin_spreads_evenly_and_is_deterministic():
    eps = [ep(f"e{i}") for i in range(3)]
    rr = scheduler.RoundRobin()
    picks = [rr.choose(TaskView("f", "3.11"), eps).endpoint_id for _ in range(9)]
    assert picks == ["e0", "e1", "e2"] * 3
    rr2 = scheduler.RoundRobin()
    assert picks == [rr2.choose(TaskView("f", "3.11"), eps[::-1]).endpoint_id for _ in range(9)]


def test_named_endpoint_wins_even_when_offline():
    d = scheduler.route(TaskView("f", "3.11", endpoint_id="a"), [ep("a", online=False)],
                        scheduler.RoundRobin())
    assert isinstance(d, Decision) and (d.endpoint_id, d.reason) == ("a", "named by the user")
    unknown = scheduler.route(TaskView("f", "3.11", endpoint_id="z"), [], scheduler.RoundRobin())
    assert unknown == Decision("z", "named by the user")  # not connected yet: wait for it


def test_named_endpoint_that_can_never_run_the_task_is_not_used():
    eps = [ep("cpu", online=False)]
    d = scheduler.route(TaskView("f", "3.11", endpoint_id="cpu", gpus=1), eps, scheduler.RoundRobin())
    assert isinstance(d, Hold) and "GPU" in d.reason and not d.fail
    d = scheduler.route(TaskView("f", "3.12", endpoint_id="cpu", fail_fast=True), eps,
                        scheduler.RoundRobin())
    assert isinstance(d, Hold) and d.fail and "3.12" in d.reason


@pytest.mark.parametrize("task, reason", [
    (TaskView("f", "3.11", gpus=True), "needs a GPU; no online endpoint has one (3 online)"),
    (TaskView("f", "3.10"), "needs Python 3.10; no online endpoint has it (3 online)"),
    (TaskView("f", "3.11", memory_bytes=100 * GB),
     "needs 100 GiB of memory; no online endpoint has that much (3 online)"),
    (TaskView("f", "3.11", allowed_endpoints=["off"]), "may run only on off; none of them is online"),
])
def test_held_tasks_say_which_need_no_online_endpoint_meets(task, reason):
    eps = [ep("a"), ep("b"), ep("c", python_version="3.12"), ep("off", online=False, gpus=2)]
    d = scheduler.route(task, eps, scheduler.make_policy("smallest-eta"))
    assert isinstance(d, Hold) and d.reason.startswith(reason) and not d.fail


def test_hold_reason_names_the_needs_that_narrowed_the_field():
    eps = [ep("a", gpus=1), ep("b", python_version="3.12")]
    d = scheduler.route(TaskView("f", "3.12", gpus=1), eps, scheduler.RoundRobin())
    assert d == Hold("needs a GPU; no online endpoint with Python 3.12 has one (2 online)")


def test_no_endpoint_online_holds_or_fails_fast():
    assert scheduler.route(TaskView("f", "3.11"), [], scheduler.RoundRobin()) == \
        Hold("waiting for an endpoint to come online")
    d = scheduler.route(TaskView("f", "3.11", fail_fast=True), [ep("a", online=False)],
                        scheduler.RoundRobin())
    assert d == Hold("waiting for an endpoint to come online", fail=True)


def test_gpu_tasks_go_only_to_gpu_endpoints():
    eps = [ep("cpu", workers=64, relative_speed=4.0), ep("gpu", workers=1, gpus=1)]
    decisions = scheduler.route_batch([TaskView("f", "3.11", gpus=True)] * 20, eps,
                                      scheduler.make_policy("smallest-eta"))
    assert {d.endpoint_id for d in decisions} == {"gpu"}


def test_unknown_policy_and_unknown_option_are_clear_errors():
    with pytest.raises(ValueError, match="round-robin"):
        scheduler.make_policy("fastest-ever")
    with pytest.raises(ValueError, match="deadline_s"):
        scheduler.make_policy("fastest", deadline_s=3)
    assert scheduler.make_policy("cheapest", deadline_s=3).deadline_s == 3
    assert scheduler.make_policy(None).name == scheduler.DEFAULT_POLICY


# ---------------------------------------------------------------- each policy, by hand

def trained(**runtimes: float) -> RuntimeModel:
    """A model that has seen function f take `runtimes[endpoint]` seconds, warm."""
    model = RuntimeModel()
    for eid, seconds in runtimes.items():
        model.observe("f", eid, seconds, cold=True)
        for _ in range(8):
            model.observe("f", eid, seconds)
    return model


def test_least_loaded_prefers_the_emptiest_per_worker():
    eps = [ep("a", workers=1, in_flight=3), ep("b", workers=8, in_flight=8)]
    assert scheduler.LeastLoaded().choose(TaskView("f", "3.11"), eps).endpoint_id == "b"


def test_fastest_ignores_queues_and_smallest_eta_does_not():
    model = trained(slow=2.0, fast=1.0)
    eps = [ep("slow", workers=4), ep("fast", workers=4, queued=40, in_flight=4)]
    task = TaskView("f", "3.11")
    fastest = scheduler.route(task, eps, scheduler.make_policy("fastest"), model)
    assert fastest.endpoint_id == "fast" and "run 1s" in fastest.reason
    eta = scheduler.route(task, eps, scheduler.make_policy("smallest-eta"), model)
    assert eta.endpoint_id == "slow"
    assert eta.reason.startswith("smallest ETA 2s of 2 (queue 0s + transfer 0s + run 2s)")
    assert eta.eta_s == pytest.approx(2.0)


def test_smallest_eta_counts_the_payload_transfer():
    model = trained(near=1.0, far=0.5)
    eps = [ep("near", bandwidth_Bps=1e9, latency_s=0.001), ep("far", bandwidth_Bps=1e7, latency_s=0.05)]
    d = scheduler.route(TaskView("f", "3.11", payload_bytes=10**8), eps,
                        scheduler.make_policy("smallest-eta"), model)
    assert d.endpoint_id == "near"  # 10 s over the far link outweighs 0.5 s of runtime


def test_cheapest_with_and_without_a_deadline():
    model = trained(campus=10.0, cloud=2.0)
    eps = [ep("campus", workers=2, queued=4, in_flight=2), ep("cloud", cost_per_core_hour=0.36)]
    task = TaskView("f", "3.11")
    free = scheduler.route(task, eps, scheduler.make_policy("cheapest"), model)
    assert free.endpoint_id == "campus" and "free" in free.reason
    paid = scheduler.route(task, eps, scheduler.make_policy("cheapest", deadline_s=5), model)
    assert paid.endpoint_id == "cloud" and "meeting the 5s deadline: $0.0002" in paid.reason
    late = scheduler.route(TaskView("f", "3.11", deadline_s=1), eps,
                           scheduler.make_policy("cheapest", deadline_s=5), model)
    assert late.endpoint_id == "cloud"
    assert late.reason.startswith("deadline 1s cannot be met; smallest ETA 2s of 2")


def test_a_batch_spreads_in_proportion_to_speed():
    model = trained(a=3.0, b=1.0)
    eps = [ep("a", workers=4), ep("b", workers=4)]
    tally = Tally(eps, model)
    scheduler.route_batch([TaskView("f", "3.11")] * 400, None, scheduler.make_policy("smallest-eta"),
                          tally=tally)
    counts = tally.counts()
    assert counts["b"] / counts["a"] == pytest.approx(3.0, rel=0.05)


def test_smallest_eta_routes_single_choice_and_long_tasks_first():
    model = trained(a=1.0, b=1.0)
    for eid in ("a", "b"):
        for _ in range(8):
            model.observe("long", eid, 10.0)
    eps = [ep("a", workers=2), ep("b", workers=2, gpus=1)]
    tasks = [TaskView("f", "3.11"), TaskView("long", "3.11"), TaskView("g", "3.11", gpus=1)]
    tally = Tally(eps, model)
    scheduler.route_batch(tasks, None, scheduler.make_policy("smallest-eta"), tally=tally)
    assert tally.order == [2, 1, 0]


# ---------------------------------------------------------------- the runtime model

def test_runtime_model_shrugs_off_an_outlier():
    model = RuntimeModel()
    rng = random.Random(1)
    for _ in range(30):
        model.observe("f", "a", rng.uniform(0.95, 1.05))
    model.observe("f", "a", 100.0)
    est = model.predict("f", "a")
    assert est.runtime_s == pytest.approx(1.0, rel=0.1)
    assert est.samples == 31 and est.source == "measured" and 0 < est.spread_s < 0.2


def test_runtime_model_follows_a_real_change():
    model = RuntimeModel()
    for _ in range(30):
        model.observe("f", "a", 1.0)
    for _ in range(40):
        model.observe("f", "a", 2.0)
    assert model.predict("f", "a").runtime_s == pytest.approx(2.0, rel=0.05)


def test_size_model_predicts_a_linear_size_to_runtime_relation():
    model = RuntimeModel()
    rng = random.Random(2)
    for _ in range(40):
        size = rng.randint(10**6, 10**8)
        model.observe("f", "a", (0.5 + 2e-8 * size) * rng.uniform(0.97, 1.03), payload_bytes=size)
    est = model.predict("f", "a", payload_bytes=5 * 10**7)
    assert est.source == "size model" and est.runtime_s == pytest.approx(1.5, rel=0.05)
    assert model.predict("f", "a", payload_bytes=2 * 10**6).runtime_s == pytest.approx(0.54, rel=0.1)
    assert model.per_byte_s("f", "a") == pytest.approx(2e-8, rel=0.1)


def test_no_size_model_when_size_does_not_explain_runtime():
    model = RuntimeModel()
    rng = random.Random(3)
    for _ in range(40):
        model.observe("f", "a", rng.uniform(0.5, 1.5), payload_bytes=rng.randint(10**6, 10**8))
    assert model.predict("f", "a", 10**8).source == "measured"


def test_cold_start_is_learned_and_expected_only_on_cold_workers():
    model = RuntimeModel()
    for _ in range(4):
        model.observe("f", "a", 3.0, cold=True)
    for _ in range(20):
        model.observe("f", "a", 1.0)
    est = model.predict("f", "a")
    assert est.runtime_s == pytest.approx(1.0) and est.cold_start_s == pytest.approx(2.0)
    assert est.cold_chance < 0.2  # warm calls since
    assert model.predict("f", "a", workers=4).cold_chance == 0.0  # all four workers warmed
    # Never run there: a cold start is expected, priced from what was learned elsewhere.
    fresh = model.predict("f", "b")
    assert fresh.cold_chance == 1.0 and fresh.cold_start_s == pytest.approx(2.0)
    assert fresh.work_s == pytest.approx(3.0)


def test_prior_for_an_unseen_pair_scales_by_declared_speed():
    model = RuntimeModel()
    model.declare_speed("a", 1.0)
    model.declare_speed("b", 2.0)
    for _ in range(5):
        model.observe("f", "a", 1.0)
    est = model.predict("f", "b")
    assert est.samples == 0 and est.source == "scaled from a"
    assert est.runtime_s == pytest.approx(0.5)


def test_prior_for_an_unseen_pair_scales_by_learned_speed():
    model = RuntimeModel()  # nothing declared: both look like speed 1.0
    for _ in range(20):
        model.observe("g", "a", 2.0)
        model.observe("g", "b", 1.0)  # b runs g twice as fast
    for _ in range(5):
        model.observe("f", "a", 1.0)
    assert model.speed("b") / model.speed("a") == pytest.approx(2.0, rel=0.02)
    assert model.predict("f", "b").runtime_s == pytest.approx(0.5, rel=0.02)


def test_prior_without_any_measurement_uses_the_hint_or_the_default():
    model = RuntimeModel(default_runtime_s=3.0)
    model.declare_speed("fast", 3.0)
    assert model.predict("f", "fast").runtime_s == pytest.approx(1.0)
    assert model.predict("f", "fast").source == "default"
    model.hint("f", 6.0)
    assert model.predict("f", "fast").runtime_s == pytest.approx(2.0)


def test_runtime_model_memory_is_bounded():
    model = RuntimeModel(max_pairs=10)
    for i in range(25):
        model.observe(f"f{i}", "a", 1.0)
    assert len(model) == 10
    assert model.predict("f0", "a").samples == 0 and model.predict("f24", "a").samples == 1


# ---------------------------------------------------------------- the simulator

def small_mix_workload(seed: int = 0) -> W.Workload:
    return W.delta_mix(n=300, seed=seed, arrival="waves", span_s=3.0)


def test_simulator_is_deterministic_given_a_seed():
    a = simulate(W.flaky(horizon_s=10), small_mix_workload(7), "smallest-eta")
    b = simulate(W.flaky(horizon_s=10), small_mix_workload(7), "smallest-eta")
    assert a == b
    c = simulate(W.flaky(horizon_s=10), small_mix_workload(8), "smallest-eta")
    assert c.makespan_s != a.makespan_s


def test_smallest_eta_beats_round_robin_and_fastest_on_a_heterogeneous_mix():
    # Big enough that learning the runtimes is not the whole story (a few
    # hundred tasks are dominated by the first, unpredicted, wave).
    endpoints, workload = W.continuum(), W.delta_mix(n=1000, seed=0, arrival="waves", span_s=5.0)
    bound = lower_bound(endpoints, workload.tasks, iterations=40)
    results = {p: simulate(endpoints, workload, p, lower_bound_s=bound)
               for p in ("round-robin", "fastest", "smallest-eta")}
    eta = results["smallest-eta"].makespan_s
    assert eta < 0.5 * results["round-robin"].makespan_s
    assert eta < 0.5 * results["fastest"].makespan_s
    for r in results.values():
        assert r.completed == len(workload.tasks) and r.makespan_s >= bound


def test_simulator_survives_an_outage_and_keeps_gpu_work_on_gpus():
    model = RuntimeModel()
    r = simulate(W.flaky(horizon_s=4), small_mix_workload(), "smallest-eta", model)
    assert r.completed == 300 and r.requeued > 0 and r.unfinished == 0
    gpu = {e.endpoint_id for e in W.flaky() if e.gpus}
    ran_train = {e.endpoint_id for e in W.flaky() if model.predict("train", e.endpoint_id).samples}
    assert ran_train and ran_train <= gpu


def test_lower_bound_is_never_above_any_schedule():
    endpoints = W.hpc_heavy()
    for workload in (W.uniform(200, seed=1), W.data_heavy(100, seed=1, arrival="at-once")):
        bound = lower_bound(endpoints, workload.tasks)
        for policy in sorted(scheduler.POLICIES):
            assert simulate(endpoints, workload, policy, lower_bound_s=bound).makespan_s >= bound
