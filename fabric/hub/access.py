"""Who may use what: the ownership and sharing rules, in one place.

Users own the functions they register and the endpoints they connect (an
endpoint token's subject is the endpoint's owner). An owner may share an
endpoint or a function with named users. A task's status, result and
cancel belong to its submitter alone. Admins may *list* everything, but see
no one else's results either.

An endpoint may also restrict itself (its Hello carries an allow-list of
function ids and/or function owners): a task for any other function is
refused before it is stored, and never routed there.

The servicers ask this module and raise what it raises; the rules are not
repeated anywhere else. Grants are kept in memory and written through to
the store's `shares` table.
"""

from __future__ import annotations

from typing import Iterable

from fabric import errors
from fabric.hub.auth import Principal
from fabric.hub.live import EndpointRecord, LiveTask
from fabric.hub.store import FunctionRow


class Access:
    def __init__(self, endpoints: dict[str, EndpointRecord],
                 functions: dict[str, FunctionRow]) -> None:
        self.endpoints = endpoints  # the dispatcher's own maps, shared
        self.functions = functions
        self.shared: dict[tuple[str, str], set[str]] = {}  # (kind, id) -> users
        # Endpoint id -> (allowed function ids, allowed owners), from its last Hello.
        self.allow_lists: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        # usable() answers per (owner, function), valid while nothing above changes.
        self._usable: dict[tuple[str, str], frozenset[str] | None] = {}
        self._usable_stamp: tuple[int, int] = (-1, -1)
        self.version = 0  # bumped on every change of grants or allow-lists

    def set_allow_list(self, endpoint_id: str, functions: Iterable[str], owners: Iterable[str]) -> None:
        rule = (frozenset(functions), frozenset(owners))
        if rule == (frozenset(), frozenset()):
            if self.allow_lists.pop(endpoint_id, None) is not None:
                self.version += 1
        elif self.allow_lists.get(endpoint_id) != rule:
            self.allow_lists[endpoint_id] = rule
            self.version += 1

    def load(self, grants: Iterable[tuple[str, str, str]]) -> None:
        for kind, object_id, user in grants:
            self.shared.setdefault((kind, object_id), set()).add(user)
        self.version += 1

    # ------------------------------------------------------------ tasks
    @staticmethod
    def check_task(p: Principal, task_id: str, owner: str | None) -> None:
        """Status, results and cancel are for the submitter only."""
        if owner is not None and owner != p.user:
            raise errors.PermissionDenied(f"task {task_id[:128]!r} was submitted by another user")

    # ------------------------------------------------------------ functions
    def may_use_function(self, user: str, fn: FunctionRow) -> bool:
        return fn.owner == user or user in self.shared.get(("function", fn.function_id), ())

    def check_function(self, p: Principal, fn: FunctionRow) -> None:
        if not self.may_use_function(p.user, fn):
            raise errors.PermissionDenied(
                f"function {fn.function_id} belongs to another user and is not shared with you")

    # ------------------------------------------------------------ endpoints
    def may_use_endpoint(self, user: str, rec: EndpointRecord) -> bool:
        return rec.owner == user or user in self.shared.get(("endpoint", rec.endpoint_id), ())

    def accepts(self, endpoint_id: str, fn_id: str, fn_owner: str) -> bool:
        """The endpoint's allow-list (if it has one) lets this function through."""
        rule = self.allow_lists.get(endpoint_id)
        if rule is None:
            return True
        functions, owners = rule
        return fn_id in functions or fn_owner in owners

    def check_endpoint(self, p: Principal, rec: EndpointRecord, fn: FunctionRow | None = None) -> None:
        if not self.may_use_endpoint(p.user, rec):
            raise errors.PermissionDenied(
                f"endpoint {rec.name} belongs to another user and is not shared with you")
        if fn is not None and not self.accepts(rec.endpoint_id, fn.function_id, fn.owner):
            raise errors.PermissionDenied(
                f"endpoint {rec.name} does not run function {fn.function_id} "
                f"(not on its allow-list)")

    def resolve(self, p: Principal, ref: str) -> EndpointRecord:
        """An endpoint the caller may use, by id or by name (their own name first)."""
        rec = self.endpoints.get(ref)
        if rec is None:
            named = [e for e in self.endpoints.values() if e.name == ref]
            mine = [e for e in named if e.owner == p.user]
            usable = mine or [e for e in named if self.may_use_endpoint(p.user, e)]
            if len(usable) == 1:
                return usable[0]
            if len(usable) > 1:
                raise errors.InvalidRequest(
                    f"endpoint name {ref!r} is shared with you by several users; use its id "
                    f"({', '.join(sorted(e.endpoint_id for e in usable))})")
            rec = named[0] if named else None
        if rec is None:
            raise errors.EndpointNotFound(f"unknown endpoint {ref[:128]!r}")
        self.check_endpoint(p, rec)
        return rec

    def usable(self, t: LiveTask) -> frozenset[str] | None:
        """Endpoint ids task `t` may be routed to; None when that is every endpoint
        (the common case, kept cheap: no constraint for the scheduler to evaluate).
        Cached until an endpoint appears or a grant or allow-list changes."""
        stamp = (len(self.endpoints), self.version)
        if stamp != self._usable_stamp:
            self._usable.clear()
            self._usable_stamp = stamp
        key = (t.owner, t.function_id)
        if key not in self._usable:
            self._usable[key] = self._compute_usable(t)
        return self._usable[key]

    def _compute_usable(self, t: LiveTask) -> frozenset[str] | None:
        fn = self.functions.get(t.function_id)
        fn_owner = fn.owner if fn is not None else t.owner
        out = [eid for eid, rec in self.endpoints.items()
               if self.may_use_endpoint(t.owner, rec) and self.accepts(eid, t.function_id, fn_owner)]
        return None if len(out) == len(self.endpoints) else frozenset(out)

    # ------------------------------------------------------------ sharing
    def owner_of(self, p: Principal, kind: str, ref: str) -> str:
        """The id of the endpoint/function `ref` names, which the caller must own."""
        if kind == "endpoint":
            named = [e for e in self.endpoints.values()
                     if e.endpoint_id == ref or (e.name == ref and e.owner == p.user)]
            if not named:
                raise errors.EndpointNotFound(f"you have no endpoint {ref[:128]!r}")
            rec = named[0]
            if rec.owner != p.user:
                raise errors.PermissionDenied(f"only the owner may share endpoint {rec.name}")
            return rec.endpoint_id
        if kind == "function":
            fn = self.functions.get(ref)
            if fn is None:
                raise errors.FunctionNotFound(f"unknown function id {ref[:128]!r}")
            if fn.owner != p.user:
                raise errors.PermissionDenied(f"only the owner may share function {ref}")
            return fn.function_id
        raise errors.InvalidRequest(f"share what? kind must be 'endpoint' or 'function', not {kind[:32]!r}")

    def share(self, kind: str, object_id: str, users: Iterable[str], revoke: bool) -> list[str]:
        granted = self.shared.setdefault((kind, object_id), set())
        self.version += 1
        if revoke:
            granted.difference_update(users)
        else:
            granted.update(users)
        return sorted(granted)


__all__ = ["Access"]
