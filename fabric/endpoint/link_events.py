"""The vocabulary of the endpoint's link protocol (`fabric.endpoint.link`): the domain
types it works on, the events the driver feeds it, the local instructions it
returns and the messages it composes. Plain dataclasses, no protobuf: the
driver's codec (`fabric.endpoint.link_codec`) turns them into wire messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

from fabric.serialize import ErrorInfo


# ---------------------------------------------------------------- domain types
@dataclass(slots=True)
class Task:
    """A task as the hub sent it: bytes only, never unpickled here."""

    task_id: str
    function_id: str
    args: bytes = b""
    args_blob: str = ""  # arguments too big for the message: fetched before it runs
    walltime_s: float = 0.0
    max_retries: int | None = None
    runtime: bytes = b""


@dataclass(slots=True)
class Result:
    """A finished task's outcome, as the link keeps it until the hub acks it."""

    task_id: str
    ok: bool
    value: bytes = b""  # inline value; b"" when `big` (the runner keeps it) or uploaded
    error: ErrorInfo | None = None
    runtime_s: float = 0.0
    cold: bool = False
    value_blob: str = ""  # the blob its big value was uploaded as, this session
    big: bool = False  # the value travels as a blob, uploaded again after each reconnect


# ---------------------------------------------------------------- events (in)
@dataclass(slots=True)
class Welcome:
    endpoint_id: str
    heartbeat_period_s: float
    now: float
    beat_phase: float = 0.0  # in [0, 1): how far into its period the beat schedule starts


@dataclass(slots=True)
class FromHub:
    """One hub message, decoded."""

    now: float
    tasks: Sequence[Task] = ()
    functions: Sequence[tuple[str, bytes]] = ()
    acks: Sequence[str] = ()
    cancel: Sequence[str] = ()
    heartbeat_stamp: float = 0.0  # a hub heartbeat's sent_at, to echo (0: none)
    batch_stamp: float = 0.0  # a large batch's sent_at, to echo (0: none)


@dataclass(slots=True)
class LinkDown:
    """The stream ended (or was never welcomed)."""


@dataclass(slots=True)
class Finished:
    """The runner finished these (or failed them before running)."""

    results: Sequence[Result]


@dataclass(slots=True)
class Restored:
    """Results kept from before a restart, never acked: replay them."""

    results: Sequence[Result]


@dataclass(slots=True)
class Dropped:
    """These held tasks will never produce a result (cancelled, or no longer ours)."""

    task_ids: Sequence[str]


@dataclass(slots=True)
class Uploaded:
    """A big value's upload ended: `result` names its blob, or is the failure that
    replaces it; None when the hub no longer has the task out here (nobody waits)."""

    task_id: str
    result: Result | None


@dataclass(slots=True)
class Drain:
    """Stop taking tasks; `unstarted` were taken back from the runner: hand them back."""

    unstarted: Sequence[str]


@dataclass(slots=True)
class Tick:
    now: float


Event = Union[Welcome, FromHub, LinkDown, Finished, Restored, Dropped, Uploaded, Drain, Tick]


# ---------------------------------------------------------------- instructions (out)
@dataclass(slots=True)
class Run:
    tasks: list[Task]


@dataclass(slots=True)
class AddFunctions:
    functions: Sequence[tuple[str, bytes]]


@dataclass(slots=True)
class Cancel:
    """Stop these; answer with `Dropped` for the ones that will never have a result."""

    task_ids: Sequence[str]


@dataclass(slots=True)
class Store:
    """Keep these results durably until `Forget` (the real endpoint's outbox)."""

    results: list[Result]


@dataclass(slots=True)
class Forget:
    """The hub stored these results: drop them (and their kept values)."""

    task_ids: Sequence[str]


@dataclass(slots=True)
class Upload:
    """Upload this result's big value; answer with `Uploaded`."""

    result: Result


@dataclass(slots=True)
class Disconnect:
    reason: str


Instruction = Union[Run, AddFunctions, Cancel, Store, Forget, Upload, Disconnect]


# ---------------------------------------------------------------- messages (out)
@dataclass(slots=True)
class Hello:
    held_task_ids: list[str]
    credits: int
    draining: bool
    allow_functions: tuple[str, ...]
    allow_owners: tuple[str, ...]


@dataclass(slots=True)
class Outgoing:
    results: list[Result] = field(default_factory=list)
    credits: int = 0
    heartbeat: bool = False  # the driver fills in load, free slots and queue length
    heartbeat_echo: float = 0.0
    draining: bool = False
    returned: list[str] = field(default_factory=list)
    batch_echo: float = 0.0


__all__ = ["AddFunctions", "Cancel", "Disconnect", "Drain", "Dropped", "Event", "Finished",
           "Forget", "FromHub", "Hello", "Instruction", "LinkDown", "Outgoing", "Restored",
           "Result", "Run", "Store", "Task", "Tick", "Upload", "Uploaded", "Welcome"]
