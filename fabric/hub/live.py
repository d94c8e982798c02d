"""The hub's live records: tasks not yet final, known endpoints, connected links.

Plain data the dispatcher (dispatch.py) works on; they hold no logic beyond
converting a task to the view the scheduler reads.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import scheduler
from fabric.models import Capabilities
from fabric.states import TaskState


PROBE_MIN_BYTES = 256 * 1024  # smaller batches time the round trip, not the link
PROBE_GIVE_UP_S = 30.0
MIN_TRANSFER_S = 50e-6  # a clock tick: keeps one lucky sample from reading as infinite


class LiveTask:
    """A task the hub still has to finish. Arguments stay opaque bytes."""

    __slots__ = ("task_id", "function_id", "args", "args_blob", "size", "requested", "endpoint_id", "state",
                 "python_version", "policy", "reason", "walltime_s", "max_retries", "needs",
                 "charged_to", "slot_s", "owner", "usable", "submitted_at")

    def __init__(self, task_id: str, function_id: str, args: bytes, requested: str | None,
                 python_version: str, policy: str, walltime_s: float = 0.0,
                 max_retries: int | None = None, needs: Needs | None = None,
                 owner: str = "local", args_blob: str | None = None,
                 size: int | None = None) -> None:
        self.task_id = task_id
        self.function_id = function_id
        self.args = args  # inline arguments; empty when they are a blob
        self.args_blob = args_blob  # arguments too big for one message (fabric.hub.blobs)
        self.size = len(args) if size is None else size  # payload bytes, wherever they are
        self.requested = requested  # endpoint the user named, if any
        self.endpoint_id: str | None = None  # where it is routed / running
        self.state = TaskState.QUEUED
        self.python_version = python_version
        self.policy = policy
        self.reason = ""
        self.walltime_s = walltime_s
        self.max_retries = max_retries
        self.needs = needs or NO_NEEDS
        # The predicted slot time this task adds to one endpoint's backlog, and which.
        self.charged_to: str | None = None
        self.slot_s = 0.0
        self.owner = owner  # the submitter: only they see it, and it runs only where they may
        # Endpoint ids the owner may use, set before each routing (None: all of them).
        self.usable: frozenset[str] | None = None
        self.submitted_at = 0.0  # when the hub stored it (for listings)

    def view(self) -> scheduler.TaskView:
        n = self.needs
        allowed: frozenset[str] | tuple[str, ...] | None = n.allowed_endpoints or None
        if self.usable is not None:
            allowed = self.usable if allowed is None else self.usable.intersection(allowed)
        return scheduler.TaskView(self.function_id, self.python_version, self.requested,
                                  self.size, n.gpus, n.memory_bytes,
                                  allowed, n.deadline_s)


@dataclass(frozen=True, slots=True)
class Needs:
    """What a task asks of the endpoint it runs on (stored with it; routing honours it)."""

    gpus: int = 0
    memory_bytes: int = 0
    allowed_endpoints: tuple[str, ...] = ()  # endpoint ids; () = any
    deadline_s: float | None = None
    runtime: str = ""  # the runtime spec it runs in (canonical JSON); "" = the endpoint's own

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"gpus": self.gpus, "memory_bytes": self.memory_bytes,
                                "allowed_endpoints": list(self.allowed_endpoints),
                                "deadline_s": self.deadline_s}
        if self.runtime:
            d["runtime"] = self.runtime
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object] | None) -> "Needs":
        if not d:
            return NO_NEEDS
        return cls(int(d.get("gpus") or 0), int(d.get("memory_bytes") or 0),  # type: ignore[arg-type]
                   tuple(d.get("allowed_endpoints") or ()), d.get("deadline_s"),  # type: ignore[arg-type]
                   str(d.get("runtime") or ""))


NO_NEEDS = Needs()


@dataclass
class EndpointRecord:
    endpoint_id: str
    name: str
    owner: str
    capabilities: Capabilities | None
    last_seen: float = 0.0
    completed: int = 0


@dataclass(eq=False)
class Link:
    """One connected endpoint stream, as the dispatcher sees it."""

    endpoint: EndpointRecord
    credits: int = 0
    in_flight: set[str] = field(default_factory=set)
    sent_functions: set[str] = field(default_factory=set)
    acks: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_heard: float = field(default_factory=time.monotonic)
    load: float = 0.0
    free_slots: int = 0
    remote_queued: int = 0
    draining: bool = False  # the endpoint is stopping: send it nothing new
    latency_s: float | None = None  # one way, from heartbeat round trips (smoothed)
    bandwidth_Bps: float | None = None  # hub -> endpoint, from echoed large batches (smoothed)
    probe: tuple[float, int] | None = None  # (sent_at, bytes) of the batch awaiting its echo
    closed: bool = False

    def heard_echo(self, echo: float, now: float) -> None:
        """An answer to our heartbeat: half the round trip is the one-way latency."""
        one_way = max(0.0, now - echo) / 2
        self.latency_s = one_way if self.latency_s is None else 0.8 * self.latency_s + 0.2 * one_way

    def probe_stamp(self, size: int, now: float) -> float:
        """The sent_at to stamp on an outgoing batch of `size` payload bytes, or 0.0 for none.

        Only batches big enough for their transfer to dwarf the round trip are
        timed, one at a time (so an echo is never mistaken for another's);
        a probe whose echo never came is given up after PROBE_GIVE_UP_S."""
        if size < PROBE_MIN_BYTES:
            return 0.0
        if self.probe is not None and now - self.probe[0] < PROBE_GIVE_UP_S:
            return 0.0
        self.probe = (now, size)
        return now

    def heard_batch_echo(self, echo: float, now: float) -> None:
        """The endpoint got the probed batch: its transfer took the round trip less
        the latency both ways. Smoothed, since one sample includes any queueing."""
        if self.probe is None or self.probe[0] != echo:
            return
        size, self.probe = self.probe[1], None
        self.heard_transfer(size, now - echo - 2 * (self.latency_s or 0.0))

    def heard_transfer(self, size: int, seconds: float) -> None:
        """`size` bytes reached the endpoint in `seconds`: a probed batch, or a blob it
        fetched (big arguments travel that way). Smoothed, since one sample includes
        any queueing."""
        if size < PROBE_MIN_BYTES:
            return
        sample = size / max(seconds, MIN_TRANSFER_S)
        self.bandwidth_Bps = sample if self.bandwidth_Bps is None else \
            0.7 * self.bandwidth_Bps + 0.3 * sample

    @property
    def endpoint_id(self) -> str:
        return self.endpoint.endpoint_id
