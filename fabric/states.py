"""The task state machine: events in, the next state and the actions it calls for out.

Pure: no I/O. The hub's dispatcher feeds it every event about a task and
carries out the actions it returns, so the rules of the lifecycle live here
once and are tested on their own, illegal transitions included.

    QUEUED ──dispatch──> DISPATCHED ──succeed/fail──> SUCCESS | FAILED ──purge──> PURGED
      ^  ^                  │  │
      │  └──── requeue ─────┘  └──cancel──> CANCELLED ──purge──> PURGED
      └── (link lost, handed back on drain)
    QUEUED ──cancel──> CANCELLED      QUEUED ──fail──> FAILED (refused before running)

A result for a task the hub had already requeued (the endpoint finished it
while the hub thought the link dead) is legal and wins: delivery to workers
is at-least-once, results are first-wins. A second result for a final task is
an illegal transition, which the hub turns into "acknowledge and drop".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TaskState(enum.IntEnum):
    """Numbers match the TaskState enum in protos/fabric.proto."""

    QUEUED = 1
    DISPATCHED = 2
    SUCCESS = 3
    FAILED = 4
    CANCELLED = 5
    PURGED = 6  # final; its result was dropped after the retention period

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED, TaskState.PURGED})


class Event(enum.Enum):
    DISPATCH = "dispatch"  # sent to an endpoint (or claimed by one that reconnected)
    REQUEUE = "requeue"  # its endpoint was lost, or handed it back while draining
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    PURGE = "purge"  # retention period over: drop the stored result


class Action(enum.Flag):
    """What the hub must do after a transition (several may apply)."""

    NONE = 0
    STORE = enum.auto()  # persist the new state
    PUBLISH = enum.auto()  # push the final result to clients that wait for it
    ACK = enum.auto()  # acknowledge the result to the endpoint once stored
    ROUTE = enum.auto()  # pick an endpoint for it again
    STOP_REMOTE = enum.auto()  # tell the endpoint holding it to stop it
    DROP_PAYLOAD = enum.auto()  # arguments (and, on purge, the result) are no longer needed


@dataclass(frozen=True, slots=True)
class Transition:
    state: TaskState
    actions: Action


_S, _A = TaskState, Action
_FINISH = _A.STORE | _A.PUBLISH | _A.DROP_PAYLOAD

_TRANSITIONS: dict[tuple[TaskState, Event], Transition] = {
    (_S.QUEUED, Event.DISPATCH): Transition(_S.DISPATCHED, _A.STORE),
    (_S.QUEUED, Event.CANCEL): Transition(_S.CANCELLED, _FINISH),
    (_S.QUEUED, Event.FAIL): Transition(_S.FAILED, _FINISH | _A.ACK),
    (_S.QUEUED, Event.SUCCEED): Transition(_S.SUCCESS, _FINISH | _A.ACK),
    (_S.DISPATCHED, Event.REQUEUE): Transition(_S.QUEUED, _A.STORE | _A.ROUTE),
    (_S.DISPATCHED, Event.SUCCEED): Transition(_S.SUCCESS, _FINISH | _A.ACK),
    (_S.DISPATCHED, Event.FAIL): Transition(_S.FAILED, _FINISH | _A.ACK),
    (_S.DISPATCHED, Event.CANCEL): Transition(_S.CANCELLED, _FINISH | _A.STOP_REMOTE),
    (_S.SUCCESS, Event.PURGE): Transition(_S.PURGED, _A.STORE | _A.DROP_PAYLOAD),
    (_S.FAILED, Event.PURGE): Transition(_S.PURGED, _A.STORE | _A.DROP_PAYLOAD),
    (_S.CANCELLED, Event.PURGE): Transition(_S.PURGED, _A.STORE | _A.DROP_PAYLOAD),
}


class IllegalTransition(Exception):
    def __init__(self, state: TaskState, event: Event) -> None:
        super().__init__(f"no transition from {state.name} on {event.value}")
        self.state = state
        self.event = event


def step(state: TaskState, event: Event) -> Transition:
    """The next state and the actions for `event`, or IllegalTransition."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def next_state(state: TaskState, event: Event) -> TaskState:
    return step(state, event).state


def can(state: TaskState, event: Event) -> bool:
    return (state, event) in _TRANSITIONS
