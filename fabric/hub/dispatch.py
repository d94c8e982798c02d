"""The hub's live view of work: tasks not yet final, endpoint links, queues.

The dispatcher decides (through `scheduler.route`) where each task goes,
hands tasks to links within the credits each endpoint granted, takes results
(first one wins) and hands them to `fabric.hub.finishing` (stored, then
published and acknowledged), and requeues the work of a lost link. It never
touches gRPC streams itself: servicers call it and carry its messages.
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import logging
import time
from collections import deque
from typing import Callable, Iterable, Sequence

import scheduler
from fabric import config, errors
from fabric._proto import fabric_pb2 as pb
from fabric.hub.disk import DiskBudget
from fabric.hub.finishing import Finisher, Outcome
from fabric.hub.live import NO_NEEDS, EndpointRecord, LiveTask, Link, Needs
from fabric.hub.sessions import Sessions
from fabric.hub.store import FunctionRow, TaskStore
from fabric.states import Action, Event, TaskState, can, step

__all__ = ["Dispatcher", "EndpointRecord", "LiveTask", "Link", "Needs", "NO_NEEDS"]

log = logging.getLogger("fabric.hub")


class Dispatcher:
    def __init__(self, store: TaskStore, sessions: Sessions, budget: DiskBudget) -> None:
        self.store = store
        self.sessions = sessions
        self.budget = budget
        self.tasks: dict[str, LiveTask] = {}
        self.queues: dict[str, deque[str]] = {}  # endpoint id -> routed, unsent task ids
        self.held: deque[str] = deque()  # no eligible endpoint yet
        self.unfinished_by: dict[str, int] = {}  # owner -> live tasks, for the per-user cap
        self.links: dict[str, Link] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.functions: dict[str, FunctionRow] = {}
        self._policies: dict[str, scheduler.Policy] = {}
        # Learned from every result: runtimes per (function, endpoint), for the policies.
        self.model = scheduler.RuntimeModel()
        self.backlog_s: dict[str, float] = {}  # endpoint id -> predicted slot-seconds routed there
        # True right after a restart, until endpoints had time to reconnect and claim
        # what they hold: until then no queued task is moved between endpoints.
        self.settling = False
        # Which endpoints a task's owner may use (set by the hub; None: any endpoint).
        self.usable: Callable[[LiveTask], frozenset[str] | None] = lambda t: None
        # Told when finished tasks let go of argument blobs (the hub deletes them soon).
        self.blobs_released: Callable[[], None] = lambda: None
        # Monotonic counts for `fabric status` and the chaos benchmark.
        self.counters: dict[str, int] = dict.fromkeys(
            ("results", "duplicates_dropped", "links_lost", "requeued", "handed_back",
             "cancelled", "withdrawn", "purged", "queue_full", "blobs_deleted",
             "results_held"), 0)
        # Final outcomes not stored yet (held there while the disk is full).
        self.finisher = Finisher(store, sessions, budget, self.links, self.counters)
        self.finisher.on_stored = lambda frees_blob: frees_blob and self.blobs_released()
        self.finisher.on_resumed = self.wake_all

    # ------------------------------------------------------------ routing
    def policy(self, name: str) -> scheduler.Policy:
        name = name or scheduler.DEFAULT_POLICY
        if name not in self._policies:
            try:
                self._policies[name] = scheduler.make_policy(name)
            except ValueError as exc:  # the scheduler is pure: the error tree is ours
                raise errors.InvalidRequest(str(exc)) from None
        return self._policies[name]

    def views(self) -> list[scheduler.EndpointView]:
        out = []
        for rec in self.endpoints.values():
            link = self.links.get(rec.endpoint_id)
            caps = rec.capabilities
            out.append(scheduler.EndpointView(
                endpoint_id=rec.endpoint_id,
                name=rec.name,
                online=link is not None and not link.draining,
                python_version=caps.python_version if caps else "",
                workers=caps.workers if caps else 1,
                credits=link.credits if link else 0,
                queued=len(self.queues.get(rec.endpoint_id, ())),
                in_flight=len(link.in_flight) if link else 0,
                gpus=caps.gpus if caps else 0,
                memory_bytes=caps.memory_bytes if caps else 0,
                free_slots=link.free_slots if link else 0,
                latency_s=(link.latency_s or 0.0) if link else 0.0,
                bandwidth_Bps=(link.bandwidth_Bps or 0.0) if link else 0.0,
                backlog_s=max(0.0, self.backlog_s.get(rec.endpoint_id, 0.0)),
                relative_speed=caps.relative_speed if caps else 1.0,
                cost_per_core_hour=caps.cost_per_core_hour if caps else 0.0,
            ))
        return out

    def route(self, tasks: Sequence[LiveTask]) -> list[LiveTask]:
        """Route tasks against one snapshot: sets `endpoint_id` (None: hold it) and
        `reason` on each. Returns them in the order to queue them (a policy may
        rank tasks, e.g. longest first, and its ETAs assume that order)."""
        if not tasks:
            return []
        tally = scheduler.Tally(self.views(), self.model)
        groups: dict[str, list[LiveTask]] = {}
        for t in tasks:
            groups.setdefault(t.policy, []).append(t)
        ordered: list[LiveTask] = []
        usable: dict[tuple[str, str], frozenset[str] | None] = {}
        for t in tasks:
            key = (t.owner, t.function_id)
            if key not in usable:
                usable[key] = self.usable(t)
            t.usable = usable[key]
        for name, group in groups.items():
            decisions = scheduler.route_batch([t.view() for t in group], None, self.policy(name),
                                              tally=tally)
            for t, decision in zip(group, decisions):
                self._release(t)
                if isinstance(decision, scheduler.Decision):
                    t.endpoint_id, t.reason = decision.endpoint_id, decision.reason
                    t.slot_s = decision.slot_s or 0.0
                    t.charged_to = t.endpoint_id
                    self.backlog_s[t.endpoint_id] = self.backlog_s.get(t.endpoint_id, 0.0) + t.slot_s
                else:
                    t.endpoint_id, t.reason = None, decision.reason
            ordered.extend(group[k] for k in tally.order)
        return ordered

    def _release(self, t: LiveTask) -> None:
        """The task no longer adds to its endpoint's backlog (finished, cancelled, moved)."""
        if t.charged_to is not None:
            self.backlog_s[t.charged_to] = self.backlog_s.get(t.charged_to, 0.0) - t.slot_s
            t.charged_to = None

    def unroute(self, tasks: Iterable[LiveTask]) -> None:
        """Routed but never queued (the submission was refused): drop their charges."""
        for t in tasks:
            self._release(t)

    def fail_fast_reason(self, tasks: Sequence[LiveTask]) -> str | None:
        """Why some task could not run anywhere now, for a caller that asked to fail fast."""
        return next((t.reason for t in tasks if t.endpoint_id is None), None)

    def enqueue(self, tasks: Iterable[LiveTask], front: bool = False) -> None:
        """Make routed tasks available to their link (or hold them) and wake links."""
        woken: set[str] = set()
        for t in tasks:
            if t.task_id not in self.tasks:
                self.unfinished_by[t.owner] = self.unfinished_by.get(t.owner, 0) + 1
            self.tasks[t.task_id] = t
            if t.endpoint_id is None:
                (self.held.appendleft if front else self.held.append)(t.task_id)
                continue
            q = self.queues.setdefault(t.endpoint_id, deque())
            (q.appendleft if front else q.append)(t.task_id)
            woken.add(t.endpoint_id)
        for eid in woken:
            link = self.links.get(eid)
            if link is not None and link.credits > 0:
                link.wake.set()

    def route_held(self) -> None:
        """Give held tasks another chance (an endpoint came online)."""
        if not self.held:
            return
        pending = [self.tasks[tid] for tid in self.held if tid in self.tasks]
        self.held.clear()
        pending = self.route([t for t in pending if t.state is TaskState.QUEUED])
        moved = [(t.endpoint_id, t.reason, t.task_id) for t in pending if t.endpoint_id]
        if moved:
            self.store.set_routes(moved)
        self.enqueue(pending)

    def _may_run_on(self, t: LiveTask, link: Link) -> bool:
        """The task's owner may use this endpoint (so it may claim or answer the task)."""
        if t.endpoint_id == link.endpoint_id:
            return True
        allowed = self.usable(t)
        return allowed is None or link.endpoint_id in allowed

    # ------------------------------------------------------------ links
    def link_up(self, link: Link, held_task_ids: Iterable[str]) -> None:
        """An endpoint connected. Tasks it says it still holds count as in flight."""
        old = self.links.get(link.endpoint_id)
        if old is not None:
            self.link_lost(old)
        self.links[link.endpoint_id] = link
        self.endpoints[link.endpoint_id] = link.endpoint
        for tid in held_task_ids:
            t = self.tasks.get(tid)
            if t is None and self.finisher.owe_ack(tid, link.endpoint_id):
                continue  # its result is on its way into the store: acknowledged then
            if t is None or t.state is not TaskState.QUEUED or not self._may_run_on(t, link):
                # Finished, cancelled, or already running elsewhere since the hub
                # requeued it: this copy must stop (its result would be dropped anyway).
                link.cancels.append(tid)
                continue
            # Still queued here (requeued, or reloaded after a hub restart): the
            # endpoint's copy is as good as a fresh dispatch, and saves running it twice.
            t.state, t.endpoint_id = step(t.state, Event.DISPATCH).state, link.endpoint_id
            link.in_flight.add(tid)
        # (Nothing is written: that a task runs, and where, lives in memory; after a hub
        # restart the endpoint that holds it claims it again by its id.)
        if not self.settling:
            self.rebalance()
        self.route_held()
        link.wake.set()

    def link_lost(self, link: Link) -> None:
        """The link is gone: requeue what the endpoint held."""
        if link.closed:
            return
        link.closed = True
        link.wake.set()
        if self.links.get(link.endpoint_id) is link:
            del self.links[link.endpoint_id]
        self.counters["links_lost"] += 1
        held = list(link.in_flight)
        link.in_flight.clear()
        n = self.requeue(held)
        n += self.reroute_queue(link.endpoint_id)
        if n:
            log.warning("link to %s lost: %d tasks requeued", link.endpoint.name, n)

    def requeue(self, task_ids: Iterable[str]) -> int:
        """Dispatched tasks back to QUEUED: pinned ones wait for their endpoint, the
        rest are routed again. They go to the front: they have waited longest."""
        tasks = []
        for tid in task_ids:
            t = self.tasks.get(tid)
            if t is not None and can(t.state, Event.REQUEUE):
                t.state = step(t.state, Event.REQUEUE).state
                tasks.append(t)
        if not tasks:
            return 0
        pinned = [t for t in tasks if t.requested]
        free = self.route([t for t in tasks if not t.requested])
        self.enqueue(pinned + free, front=True)
        self.counters["requeued"] += len(tasks)
        return len(tasks)

    def reroute_queue(self, endpoint_id: str) -> int:
        """Unpinned tasks waiting for an endpoint that went away go elsewhere;
        pinned ones keep waiting for it."""
        q = self.queues.get(endpoint_id)
        if not q:
            return 0
        waiting = [self.tasks[tid] for tid in q if tid in self.tasks]
        movable = [t for t in waiting if t.state is TaskState.QUEUED and not t.requested
                   and t.endpoint_id == endpoint_id]
        if not movable:
            return 0
        movable = self.route(movable)
        moved = [t for t in movable if t.endpoint_id != endpoint_id]
        if moved:
            self.store.set_routes([(t.endpoint_id, t.reason, t.task_id) for t in moved
                                   if t.endpoint_id])
            self.enqueue(moved)  # the old queue's entries are now stale and skipped
        return len(moved)

    def rebalance(self) -> int:
        """Route unsent, unpinned tasks again (an endpoint joined: it may be the better
        place for work queued elsewhere). Returns how many moved."""
        waiting: dict[str, LiveTask] = {}
        for eid, q in self.queues.items():
            for tid in q:
                t = self.tasks.get(tid)
                if t is not None and t.state is TaskState.QUEUED and not t.requested \
                        and t.endpoint_id == eid:
                    waiting[tid] = t
        if not waiting:
            return 0
        before = {tid: t.endpoint_id for tid, t in waiting.items()}
        moved = [t for t in self.route(list(waiting.values()))
                 if t.endpoint_id != before[t.task_id]]
        if moved:
            self.store.set_routes([(t.endpoint_id, t.reason, t.task_id) for t in moved
                                   if t.endpoint_id])
            self.enqueue(moved)  # their old queue entries are stale now and skipped
        return len(moved)

    def reroute_offline(self) -> int:
        """After a hub restart: tasks routed to endpoints that did not come back."""
        return sum(self.reroute_queue(eid) for eid in list(self.queues) if eid not in self.links)

    def hand_back(self, link: Link, task_ids: Sequence[str]) -> None:
        """A draining endpoint returned tasks it will not run."""
        mine = [tid for tid in task_ids if tid in link.in_flight]
        for tid in mine:
            link.in_flight.discard(tid)
        self.counters["handed_back"] += self.requeue(mine)

    def take(self, link: Link) -> pb.HubMessage | None:
        """The next message for `link`: tasks within its credits, bodies, acks, cancels."""
        msg = pb.HubMessage()
        q = self.queues.get(link.endpoint_id)
        sent: list[str] = []
        withdrawn: list[LiveTask] = []
        size = 0
        # Nothing new while results wait for room to be stored: theirs would pile up.
        paused = self.finisher.holding
        while q and link.credits > 0 and not link.draining and not paused \
                and len(sent) < config.MAX_TASKS_PER_BATCH:
            tid = q.popleft()
            t = self.tasks.get(tid)
            # Stale entries (cancelled, finished, re-routed) are skipped lazily.
            if t is None or t.state is not TaskState.QUEUED or t.endpoint_id != link.endpoint_id:
                continue
            allowed = self.usable(t)
            if allowed is not None and link.endpoint_id not in allowed:
                # Since it was routed, the endpoint's owner stopped sharing it or the
                # endpoint reconnected with an allow-list that excludes this function.
                withdrawn.append(t)
                continue
            if sent and size + len(t.args) > config.MAX_BATCH_BYTES:
                q.appendleft(tid)
                break
            if t.function_id not in link.sent_functions:
                fn = self.functions[t.function_id]
                msg.functions.add(function_id=fn.function_id, body=fn.body)
                link.sent_functions.add(t.function_id)
                size += len(fn.body)
            if _TON:
                _trace(tid, 'h_take')
            task = msg.tasks.add(task_id=tid, function_id=t.function_id, args=t.args,
                                 walltime_s=t.walltime_s)
            if t.args_blob:  # the endpoint fetches these itself (EndpointApi.GetBlob)
                task.args_blob = t.args_blob
            if t.max_retries is not None:
                task.max_retries = t.max_retries
            if t.needs.runtime:
                task.runtime = t.needs.runtime.encode()
            t.state = TaskState.DISPATCHED
            link.in_flight.add(tid)
            link.credits -= 1
            size += len(t.args)
            sent.append(tid)
        if withdrawn:
            self._withdrawn(withdrawn, link.endpoint.name)
        if sent:
            now = time.time()
            msg.sent_at = link.probe_stamp(size, now)
            if q and link.credits > 0:
                link.wake.set()  # more to send: go round again after this write
        if link.acks:
            msg.acks.extend(link.acks)
            link.acks.clear()
        if link.cancels:
            msg.cancel.extend(link.cancels)
            link.cancels.clear()
        if not (sent or msg.acks or msg.cancel):
            return None
        return msg

    # ------------------------------------------------------------ results
    def on_results(self, link: Link, results: Sequence[pb.TaskResult]) -> None:
        """Record results; the first one for a task wins, later ones are only
        acknowledged (once the first is stored: see `Finisher.owe_ack`)."""
        now = time.time()
        if _TON:
            _trace(results[0].task_id, 'h_result_in')
        fresh: list[Outcome] = []
        dup: list[str] = []
        repeats = 0
        for r in results:
            t = self.tasks.get(r.task_id)
            event = Event.SUCCEED if r.state == pb.SUCCESS else Event.FAIL
            if t is None or not can(t.state, event):  # final already: first result won
                repeats += 1
                if not self.finisher.owe_ack(r.task_id, link.endpoint_id):
                    dup.append(r.task_id)  # stored: the endpoint may forget it now
                continue
            if not self._may_run_on(t, link):
                # Never sent there, and its owner may not use it: a forged result.
                log.warning("endpoint %s sent a result for task %s, which it may not run; "
                            "dropped", link.endpoint.name, r.task_id)
                dup.append(r.task_id)
                repeats += 1
                continue
            other = self.links.get(t.endpoint_id or "")
            if other is not None and other is not link and t.task_id in other.in_flight:
                # Requeued and re-sent to another endpoint meanwhile: that copy must stop.
                other.in_flight.discard(t.task_id)
                other.cancels.append(t.task_id)
                other.wake.set()
            del self.tasks[r.task_id]
            self.unfinished_by[t.owner] -= 1
            self._release(t)
            if r.state == pb.SUCCESS:
                self.model.observe(t.function_id, link.endpoint_id, r.runtime_s, t.size,
                                   cold=r.cold)
            link.in_flight.discard(r.task_id)
            if not r.endpoint_id:
                r.endpoint_id = link.endpoint_id
            error = r.error.SerializeToString() if r.HasField("error") else None
            row = (int(r.state), r.value or None, r.value_blob or None, error,
                   r.error.type_name or None, link.endpoint_id, now, r.runtime_s, r.task_id)
            fresh.append(Outcome(r, row, t.owner, t.state, {link.endpoint_id},
                                 t.args_blob is not None))
        link.endpoint.completed += len(fresh)
        self.counters["results"] += len(fresh)
        self.counters["duplicates_dropped"] += repeats
        if dup:
            link.acks.extend(dup)
            link.wake.set()
        if fresh:
            # Stored first, then published and acknowledged: a client never has a
            # result the store lacks, and the endpoint keeps it until it is stored.
            if _TON:
                _trace(fresh[0].result.task_id, 'h_publish')
            self.finisher.finish(fresh)

    def wake_all(self) -> None:
        """Links with credits and work queued for them look again (dispatch resumed)."""
        for eid, link in self.links.items():
            if link.credits > 0 and self.queues.get(eid):
                link.wake.set()

    # ------------------------------------------------------------ cancel
    def cancel(self, task_ids: Iterable[str]) -> list[pb.TaskResult]:
        """Cancel tasks that are not final yet; returns their CANCELLED results."""
        err = pb.TaskError(type_name="TaskCancelled", message="cancelled by the user",
                           kind="cancelled")
        tasks = [t for t in map(self.tasks.get, task_ids)
                 if t is not None and can(t.state, Event.CANCEL)]
        return self._end_here(tasks, Event.CANCEL, err, "cancelled")

    def _withdrawn(self, tasks: list[LiveTask], endpoint_name: str) -> None:
        """Queued tasks their endpoint may no longer run: unpinned ones are routed
        again (or held with the reason), pinned ones fail, saying why."""
        pinned = [t for t in tasks if t.requested]
        for t in pinned:
            self._end_here([t], Event.FAIL, pb.TaskError(
                type_name="PermissionDenied", kind="system",
                message=f"endpoint {endpoint_name} no longer accepts this task: its owner "
                        f"stopped sharing it, or its allow-list excludes function {t.function_id}"),
                "withdrawn")
        free = [t for t in tasks if not t.requested]
        if free:
            free = self.route(free)
            # Held ones too (endpoint NULL): after a restart they are routed afresh.
            self.store.set_routes([(t.endpoint_id, t.reason, t.task_id) for t in free])
            self.enqueue(free)

    def _end_here(self, tasks: list[LiveTask], event: Event, err: pb.TaskError,
                  counter: str) -> list[pb.TaskResult]:
        """Make `tasks` final at the hub (cancelled, or failed before reaching a worker):
        stop remote copies, store the outcome, then tell the waiting clients."""
        now = time.time()
        out, outcomes = [], []
        for t in tasks:
            tid = t.task_id
            transition = step(t.state, event)
            state = transition.state
            if Action.STOP_REMOTE in transition.actions and t.endpoint_id in self.links:
                link = self.links[t.endpoint_id]
                link.in_flight.discard(tid)
                link.cancels.append(tid)
                link.wake.set()
            del self.tasks[tid]
            self.unfinished_by[t.owner] -= 1
            self._release(t)
            r = pb.TaskResult(task_id=tid, state=int(state), error=err,
                              endpoint_id=t.endpoint_id or "")
            out.append(r)
            row = (int(state), None, None, err.SerializeToString(), err.type_name, None, now,
                   0.0, tid)
            outcomes.append(Outcome(r, row, t.owner, t.state, frees_blob=t.args_blob is not None))
        if outcomes:
            self.counters[counter] += len(outcomes)
            self.finisher.finish(outcomes)  # published once stored
        return out

    # ------------------------------------------------------------ health
    def expire_links(self, silent_after: float) -> list[Link]:
        """Links that have said nothing for `silent_after` seconds."""
        now = time.monotonic()
        return [link for link in self.links.values() if now - link.last_heard > silent_after]
