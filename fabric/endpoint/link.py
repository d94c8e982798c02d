"""The endpoint's side of the link protocol, written once and with no I/O (sans-IO).

Both the real endpoint (`fabric.endpoint.agent`) and the simulated ones
(`fabric.endpoint.simulated_endpoint`) run this object, through one driver
(`fabric.endpoint.link_driver`), so the scale benchmark measures the rules
real endpoints follow. The driver decodes what the hub sends into the events
below, feeds them to `LinkProtocol.handle`, and carries out the local
instructions it returns; when `wants_to_send()` says so, its writer asks
`next_message()` for the one message to send now (whatever gathered while the
previous write was in flight goes out together).

The rules, in one place:
- Credits: grant the hub what the runner can usefully hold (its capacity plus
  `prefetch`), counting tasks held and credits granted but not yet used; hold
  back a grant smaller than `min_grant` while busy; none while draining.
- Allow-list: a task for a function not on `allow_functions` fails here, before
  anything runs it (the hub enforces the list first; owners only it can check).
- Results: every finished result is kept (`Store`) and sent until the hub acks
  it (`Forget`); on each reconnect all unacked ones are replayed, big values
  uploaded again. Messages carry at most `max_batch_results` results and
  `max_batch_bytes` of inline values (at least one result).
- Heartbeats: one at once after the welcome, then every period (the driver's
  `beat_phase` spreads endpoints that connected together); a hub heartbeat or
  batch stamp is echoed in the next message. A hub silent for `heartbeat_misses`
  periods is lost (`Disconnect`).
- Draining: no more credits; unstarted tasks are handed back; the flag rides on
  every message, so a hub that reconnects learns it too.

Nothing here reads a clock or a socket: times come in events (`now`), the
capacity in calls, so `tests/test_link_protocol.py` drives it in microseconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from fabric import config
from fabric.endpoint.link_events import (AddFunctions, Cancel, Disconnect, Drain, Dropped, Event,
                                         Finished, Forget, FromHub, Hello, Instruction, LinkDown,
                                         Outgoing, Restored, Result, Run, Store, Task, Tick,
                                         Upload, Uploaded, Welcome)
from fabric.serialize import ErrorInfo


@dataclass(frozen=True, slots=True)
class LinkSettings:
    name: str
    prefetch: int = 0  # tasks held beyond what keeps the runner busy
    # Grant credits once this many are wanted (or when holding nothing). 1 is the
    # endpoint's default; more is an experiment against credits trickling back.
    min_grant: int = 1
    heartbeat_misses: int = config.DEFAULT_HEARTBEAT_MISSES
    allow_functions: tuple[str, ...] = ()
    allow_owners: tuple[str, ...] = ()
    max_batch_results: int = config.MAX_TASKS_PER_BATCH
    max_batch_bytes: int = config.MAX_BATCH_BYTES


@dataclass(slots=True)
class LinkStats:
    """Traffic counts, for benchmarks and `fabric endpoint simulate`."""

    completed: int = 0  # results finished here
    connects: int = 0
    messages_in: int = 0
    tasks_in: int = 0
    task_messages: int = 0
    ack_only_messages: int = 0
    messages_out: int = 0
    results_out: int = 0


# ---------------------------------------------------------------- the protocol
class LinkProtocol:
    """The endpoint's link state and rules. One per endpoint, for its whole life
    (it outlives streams: what it holds is replayed on the next one)."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.held: dict[str, None] = {}  # received, no result yet (insertion-ordered)
        self.unacked: dict[str, Result] = {}  # finished, the hub has not acked
        self.draining = False
        self.connected = False
        self.endpoint_id = ""
        self.period = config.DEFAULT_HEARTBEAT_PERIOD_S
        self.stats = LinkStats()
        self._to_send: deque[Result] = deque()
        self._uploading: set[str] = set()
        self._returned: list[str] = []
        self._granted = 0  # credits granted on this stream, tasks not yet received
        self._draining_told = False  # this stream has heard we drain
        self._beat_due = False
        self._last_heard = self._last_beat = 0.0
        self._heartbeat_echo = self._batch_echo = 0.0
        self._handlers: dict[type, Callable[[Any], list[Instruction]]] = {
            Welcome: self._welcome, FromHub: self._from_hub, LinkDown: self._down,
            Finished: self._finished, Restored: self._restored, Dropped: self._dropped,
            Uploaded: self._uploaded, Drain: self._drain, Tick: self._tick}

    def handle(self, event: Event) -> list[Instruction]:
        return self._handlers[type(event)](event)

    # -------------------------------------------------------- what to send
    def credits_wanted(self, capacity: int) -> int:
        if self.draining:
            return 0
        held = len(self.held)
        want = capacity + self.settings.prefetch - held - self._granted
        if want < self.settings.min_grant and held:
            return 0
        return max(0, want)

    def hello(self, capacity: int) -> Hello:
        """The first message of a stream: what we still hold (finished-but-unacked too:
        the hub must not send those again before their replay arrives) and credits."""
        self._granted = 0
        self._granted = credits = self.credits_wanted(capacity)
        self._draining_told = self.draining
        s = self.settings
        return Hello([*self.held, *self.unacked], credits, self.draining,
                     s.allow_functions, s.allow_owners)

    def wants_to_send(self, capacity: int) -> bool:
        return self.connected and bool(
            self._to_send or self._returned or self._beat_due or self._heartbeat_echo
            or self._batch_echo or (self.draining and not self._draining_told)
            or self.credits_wanted(capacity) > 0)

    def next_message(self, now: float, capacity: int) -> Outgoing | None:
        """The message to send now, or None when there is nothing to say."""
        if not self.connected:
            return None
        out = Outgoing(results=self._take_results())
        want = self.credits_wanted(capacity)
        if want > 0:
            out.credits = want
            self._granted += want
        if self._beat_due or self._heartbeat_echo:
            out.heartbeat, out.heartbeat_echo = True, self._heartbeat_echo
            self._beat_due, self._heartbeat_echo, self._last_beat = False, 0.0, now
        if self._batch_echo:
            out.batch_echo, self._batch_echo = self._batch_echo, 0.0
        announce = False
        if self.draining:
            announce, out.draining, self._draining_told = not self._draining_told, True, True
            if self._returned:
                out.returned, self._returned = self._returned, []
        if not (out.results or out.credits or out.heartbeat or out.batch_echo or out.returned
                or announce):
            return None
        self.stats.messages_out += 1
        self.stats.results_out += len(out.results)
        return out

    def _take_results(self) -> list[Result]:
        """The front of the queue, capped by count and by inline bytes (at least one).
        Results acked meanwhile (a replay overtaken by its ack) are skipped."""
        queue, unacked = self._to_send, self.unacked
        if not queue:
            return []
        most, budget = self.settings.max_batch_results, self.settings.max_batch_bytes
        out: list[Result] = []
        size = 0
        while queue and len(out) < most:
            r = queue[0]
            if r.task_id not in unacked:
                queue.popleft()
                continue
            size += len(r.value)
            if out and size > budget:
                break
            out.append(queue.popleft())
        return out

    @property
    def settled(self) -> bool:
        """Nothing held, nothing unacked, nothing to hand back: a drain is done."""
        return not (self.held or self.unacked or self._returned)

    # -------------------------------------------------------- events
    def _welcome(self, e: Welcome) -> list[Instruction]:
        self.connected, self.endpoint_id = True, e.endpoint_id
        self.period = e.heartbeat_period_s or config.DEFAULT_HEARTBEAT_PERIOD_S
        self._last_heard = e.now
        self._beat_due, self._last_beat = True, e.now - e.beat_phase * self.period
        self.stats.connects += 1
        # Replay what the hub never confirmed. Big values are uploaded again: the
        # blob ids of an earlier session may name blobs this hub never saw.
        self._to_send = deque(r for r in self.unacked.values() if not r.big)
        return self._uploads([r for r in self.unacked.values() if r.big])

    def _down(self, _: LinkDown) -> list[Instruction]:
        self.connected = False
        self._granted = 0
        self._beat_due, self._heartbeat_echo, self._batch_echo = False, 0.0, 0.0
        return []

    def _from_hub(self, e: FromHub) -> list[Instruction]:
        self._last_heard = e.now
        stats = self.stats
        stats.messages_in += 1
        out: list[Instruction] = []
        if e.functions:
            out.append(AddFunctions(e.functions))
        if e.tasks:
            stats.task_messages += 1
            stats.tasks_in += len(e.tasks)
            self._granted = max(0, self._granted - len(e.tasks))
            held = self.held
            fresh = [t for t in e.tasks if t.task_id not in held]
            fresh, refused = self._allowed(fresh)
            for t in fresh:
                held[t.task_id] = None
            if fresh:
                out.append(Run(fresh))
            if refused:
                out += self._finished(Finished(refused))
        elif e.acks and not (e.functions or e.cancel or e.heartbeat_stamp):
            stats.ack_only_messages += 1
        if e.acks:
            unacked = self.unacked
            for tid in e.acks:
                unacked.pop(tid, None)
            out.append(Forget(e.acks))
        if e.heartbeat_stamp:
            self._heartbeat_echo = e.heartbeat_stamp
        if e.batch_stamp:
            self._batch_echo = e.batch_stamp
        if e.cancel:
            out.append(Cancel(e.cancel))
        return out

    def _allowed(self, tasks: list[Task]) -> tuple[list[Task], list[Result]]:
        """Defence in depth for the function-id allow-list (the hub enforces it first)."""
        allow = self.settings.allow_functions
        if not allow or self.settings.allow_owners:  # owners are known to the hub only
            return tasks, []
        ok = [t for t in tasks if t.function_id in allow]
        if len(ok) == len(tasks):
            return tasks, []
        refused = [Result(t.task_id, False, error=ErrorInfo(
            "PermissionDenied", f"endpoint {self.settings.name} does not run function "
            f"{t.function_id} (not on its allow-list)", "", b"", "system"))
            for t in tasks if t.function_id not in allow]
        return ok, refused

    def _finished(self, e: Finished) -> list[Instruction]:
        held, unacked, queue = self.held, self.unacked, self._to_send
        big = []
        for r in e.results:
            held.pop(r.task_id, None)
            unacked[r.task_id] = r
            if r.big:
                big.append(r)
            else:
                queue.append(r)
        self.stats.completed += len(e.results)
        return [Store(list(e.results)), *self._uploads(big)]

    def _restored(self, e: Restored) -> list[Instruction]:
        for r in e.results:
            self.unacked[r.task_id] = r
        return []  # replayed at the next welcome

    def _uploads(self, results: list[Result]) -> list[Instruction]:
        out: list[Instruction] = []
        for r in results:
            if r.task_id not in self._uploading:  # one at a time per result
                self._uploading.add(r.task_id)
                out.append(Upload(r))
        return out

    def _uploaded(self, e: Uploaded) -> list[Instruction]:
        self._uploading.discard(e.task_id)
        if e.result is None:  # nobody waits for it: forget it
            self.unacked.pop(e.task_id, None)
            return [Forget([e.task_id])]
        if e.task_id not in self.unacked:
            return []  # acked while it was uploading
        r = e.result
        out: list[Instruction] = []
        if not r.value_blob:  # refused (too big): the failure replaces the result
            self.unacked[e.task_id] = r
            out.append(Store([r]))
        self._to_send.append(r)
        return out

    def _dropped(self, e: Dropped) -> list[Instruction]:
        for tid in e.task_ids:
            self.held.pop(tid, None)
        return []

    def _drain(self, e: Drain) -> list[Instruction]:
        if not self.draining:
            self.draining = True
            for tid in e.unstarted:
                self.held.pop(tid, None)
            self._returned.extend(e.unstarted)
        return []

    def _tick(self, e: Tick) -> list[Instruction]:
        if not self.connected:
            return []
        silent_after = self.period * self.settings.heartbeat_misses
        if e.now - self._last_heard > silent_after:
            return [Disconnect(f"hub silent for {silent_after:.1f}s")]
        if e.now - self._last_beat >= self.period:
            self._beat_due = True
        return []


__all__ = ["LinkProtocol", "LinkSettings", "LinkStats"]
