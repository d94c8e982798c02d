"""The endpoint's link protocol (fabric/endpoint/link.py), with no sockets and no loop.

The real endpoint and the simulated ones run this one object, so these rules
hold for both: credits never exceed what the runner can hold, result batches
respect the count and byte caps, every finished result is sent until acked and
replayed after a reconnect, the allow-list, draining, heartbeats and silence.
Each property is checked on what the link *sends* (its messages), as a hub
would see it, never on the link's own counters.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.endpoint.link import LinkProtocol, LinkSettings
from fabric.endpoint.link_events import (AddFunctions, Cancel, Disconnect, Drain, Dropped,
                                         Finished, Forget, FromHub, LinkDown, Result, Run,
                                         Store, Task, Tick, Upload, Uploaded, Welcome)

PERIOD = 5.0


def connected(capacity: int = 4, **kw) -> LinkProtocol:
    """A link on a welcomed stream, its first grant already in the Hello."""
    link = LinkProtocol(LinkSettings("ep", **kw))
    link.hello(capacity)
    link.handle(Welcome("ep-1", PERIOD, now=0.0))
    return link


def drain_messages(link: LinkProtocol, capacity: int = 4, now: float = 0.0) -> list:
    """Everything the link has to send now (a link that never runs dry fails)."""
    out = []
    while (m := link.next_message(now, capacity)) is not None:
        out.append(m)
        assert len(out) < 1000, "the link keeps composing messages"
    return out


def tasks(*ids: str, fn: str = "f") -> list[Task]:
    return [Task(i, fn, b"args") for i in ids]


def ok(tid: str, size: int = 1) -> Result:
    return Result(tid, True, b"x" * size)


# ---------------------------------------------------------------- credits
@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 8), prefetch=st.integers(0, 4), min_grant=st.integers(1, 4),
       steps=st.lists(st.tuples(st.sampled_from(["send", "finish", "cancel", "write"]),
                                st.integers(0, 10)), max_size=60))
def test_credits_never_let_the_hub_send_more_than_the_runner_can_hold(
        capacity, prefetch, min_grant, steps):
    link = LinkProtocol(LinkSettings("ep", prefetch=prefetch, min_grant=min_grant))
    outstanding = link.hello(capacity).credits  # what the hub may still send, as it counts
    link.handle(Welcome("ep-1", PERIOD, 0.0))
    limit = capacity + prefetch
    n = 0
    for op, k in steps:
        if op == "send":  # the hub sends up to what it was granted, never more
            k = min(k, outstanding)
            batch = tasks(*(f"t{n + i}" for i in range(k)))
            n += k
            outstanding -= k
            link.handle(FromHub(0.0, tasks=batch))
        elif op == "finish" and link.held:
            done = list(link.held)[:k]
            link.handle(Finished([ok(t) for t in done]))
        elif op == "cancel" and link.held:
            gone = list(link.held)[:k]
            link.handle(FromHub(0.0, cancel=gone))
            link.handle(Dropped(gone))
        else:
            for m in drain_messages(link, capacity):
                outstanding += m.credits
                if m.credits:
                    assert m.credits >= min_grant or not link.held
        assert len(link.held) + outstanding <= limit, (len(link.held), outstanding)


def test_a_grant_smaller_than_min_grant_waits_while_busy():
    link = connected(min_grant=3)
    (first,) = drain_messages(link)  # the welcome's heartbeat; credits went with the hello
    assert first.credits == 0
    link.handle(FromHub(0.0, tasks=tasks("a", "b", "c", "d")))
    link.handle(Finished([ok("a")]))
    assert all(m.credits == 0 for m in drain_messages(link))  # 1 wanted, 3 needed
    link.handle(Finished([ok("b"), ok("c")]))
    assert sum(m.credits for m in drain_messages(link)) == 3


def test_no_credits_while_draining_and_the_unstarted_are_handed_back_once():
    link = connected()
    link.handle(FromHub(0.0, tasks=tasks("a", "b", "c", "d")))
    link.handle(Drain(["c", "d"]))
    link.handle(Finished([ok("a")]))
    msgs = drain_messages(link)
    assert sum(m.credits for m in msgs) == 0
    assert [t for m in msgs for t in m.returned] == ["c", "d"]
    assert all(m.draining for m in msgs)
    assert not link.settled  # "b" still runs, "a" is not acked
    link.handle(Finished([ok("b")]))
    link.handle(FromHub(0.0, acks=["a", "b"]))
    assert link.settled
    link.handle(LinkDown())  # a hub that comes back hears we drain from the first message
    assert link.hello(4).draining and link.hello(4).credits == 0


# ---------------------------------------------------------------- batching
@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=80),
       most=st.integers(1, 10), budget=st.integers(1, 5000))
def test_result_batches_respect_the_count_and_the_byte_cap(sizes, most, budget):
    link = connected(max_batch_results=most, max_batch_bytes=budget)
    results = [ok(f"t{i}", s) for i, s in enumerate(sizes)]
    link.handle(Finished(results))
    sent = []
    for m in drain_messages(link):
        assert len(m.results) <= most
        assert len(m.results) == 1 or sum(len(r.value) for r in m.results) <= budget
        sent += m.results
    assert [r.task_id for r in sent] == [r.task_id for r in results]  # all of them, in order


# ---------------------------------------------------------------- delivery
@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["finish", "write", "ack", "drop"]), st.integers(0, 5)),
                      max_size=60))
def test_every_result_is_sent_until_acked_and_replayed_after_a_reconnect(steps):
    link = connected()
    finished: list[str] = []
    acked: set[str] = set()
    received: list[str] = []  # what the hub got on the current stream, not yet acked
    n = 0
    for op, k in steps:
        if op == "finish":
            ids = [f"t{n + i}" for i in range(k)]
            n += k
            finished += ids
            link.handle(Finished([ok(t) for t in ids]))
        elif op == "write":
            for m in drain_messages(link):
                for r in m.results:
                    assert r.task_id not in acked, "an acked result was sent again"
                    received.append(r.task_id)
        elif op == "ack" and received:
            now_acked, received = received[:k], received[k:]
            acked.update(now_acked)
            link.handle(FromHub(0.0, acks=now_acked))
        elif op == "drop":
            link.handle(LinkDown())
            received = []  # what the hub did not ack, it may not have stored
            hello = link.hello(4)
            assert set(hello.held_task_ids) >= set(finished) - acked
            link.handle(Welcome("ep-1", PERIOD, 0.0))
    # After one last reconnect, the hub receives every result it never acked.
    link.handle(LinkDown())
    link.hello(4)
    link.handle(Welcome("ep-1", PERIOD, 0.0))
    replayed = [r.task_id for m in drain_messages(link) for r in m.results]
    assert sorted(replayed) == sorted(set(finished) - acked)
    assert set(link.unacked) == set(finished) - acked


def test_acks_tell_the_runner_to_forget_and_stores_come_with_every_result():
    link = connected()
    assert link.handle(Finished([ok("a"), ok("b")])) == [Store([ok("a"), ok("b")])]
    out = link.handle(FromHub(0.0, acks=["a"]))
    assert out == [Forget(["a"])] and list(link.unacked) == ["b"]


def test_big_values_are_uploaded_before_they_are_sent_and_again_after_a_reconnect():
    link = connected()
    big = Result("big", True, b"", big=True)
    assert link.handle(Finished([big])) == [Store([big]), Upload(big)]
    assert [r for m in drain_messages(link) for r in m.results] == []  # not sendable yet
    link.handle(LinkDown())
    link.hello(4)
    # Still uploading from the last session: not uploaded twice at once.
    assert link.handle(Welcome("ep-1", PERIOD, 0.0)) == []
    named = Result("big", True, b"", value_blob="blob-1", big=True)
    link.handle(Uploaded("big", named))
    assert [r.value_blob for m in drain_messages(link) for r in m.results] == ["blob-1"]
    link.handle(LinkDown())
    link.hello(4)
    # The blob of an earlier session may be unknown to this hub: upload it again.
    assert link.handle(Welcome("ep-1", PERIOD, 0.0)) == [Upload(big)]


def test_an_upload_the_hub_no_longer_wants_is_forgotten():
    link = connected()
    link.handle(Finished([Result("big", True, b"", big=True)]))
    assert link.handle(Uploaded("big", None)) == [Forget(["big"])]
    assert link.settled


# ---------------------------------------------------------------- tasks in
def test_tasks_run_once_even_when_the_hub_sends_one_again():
    link = connected()
    (run,) = [i for i in link.handle(FromHub(0.0, tasks=tasks("a", "b"))) if isinstance(i, Run)]
    assert [t.task_id for t in run.tasks] == ["a", "b"]
    again = link.handle(FromHub(0.0, tasks=tasks("a", "c")))
    assert [t.task_id for i in again if isinstance(i, Run) for t in i.tasks] == ["c"]


def test_functions_and_cancels_become_instructions():
    link = connected()
    out = link.handle(FromHub(0.0, functions=[("f", b"body")], cancel=["x"]))
    assert out == [AddFunctions([("f", b"body")]), Cancel(["x"])]


def test_a_function_off_the_allow_list_fails_before_anything_runs_it():
    link = connected(allow_functions=("good",))
    out = link.handle(FromHub(0.0, tasks=[*tasks("a", fn="good"), *tasks("b", fn="bad")]))
    runs = [t.task_id for i in out if isinstance(i, Run) for t in i.tasks]
    stored = [r for i in out if isinstance(i, Store) for r in i.results]
    assert runs == ["a"]
    assert [(r.task_id, r.ok, r.error.type_name) for r in stored] == [("b", False,
                                                                       "PermissionDenied")]
    assert [r.task_id for m in drain_messages(link) for r in m.results] == ["b"]
    # Owners are known to the hub only: with an owner list, the endpoint trusts it.
    trusting = connected(allow_functions=("good",), allow_owners=("alice",))
    out = trusting.handle(FromHub(0.0, tasks=tasks("c", fn="bad")))
    assert [t.task_id for i in out if isinstance(i, Run) for t in i.tasks] == ["c"]


# ---------------------------------------------------------------- heartbeats
def test_heartbeats_at_once_then_every_period_and_hub_stamps_are_echoed():
    link = connected()
    (first,) = drain_messages(link)
    assert first.heartbeat and first.heartbeat_echo == 0.0
    link.handle(Tick(PERIOD - 0.1))
    assert drain_messages(link, now=PERIOD - 0.1) == []
    link.handle(FromHub(PERIOD - 0.1))  # the hub is alive
    link.handle(Tick(PERIOD))
    (beat,) = drain_messages(link, now=PERIOD)
    assert beat.heartbeat
    link.handle(FromHub(PERIOD + 1, heartbeat_stamp=123.0, batch_stamp=456.0))
    (echo,) = drain_messages(link, now=PERIOD + 1)
    assert (echo.heartbeat_echo, echo.batch_echo) == (123.0, 456.0)


def test_a_silent_hub_is_disconnected_after_its_misses():
    link = connected(heartbeat_misses=2)
    assert link.handle(Tick(2 * PERIOD)) != [Disconnect("hub silent for 10.0s")]
    assert link.handle(Tick(2 * PERIOD + 0.01)) == [Disconnect("hub silent for 10.0s")]
    link.handle(LinkDown())
    assert link.handle(Tick(100.0)) == []  # no stream, nothing to lose


def test_nothing_is_sent_while_the_link_is_down():
    link = connected()
    drain_messages(link)
    link.handle(LinkDown())
    link.handle(Finished([ok("a")]))
    assert not link.wants_to_send(4) and link.next_message(0.0, 4) is None
