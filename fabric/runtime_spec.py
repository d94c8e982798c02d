"""`Runtime`: the environment a function needs, as data (`fabric.client.Runtime`).

A runtime is a spec, never code: pip requirements, a Python minor version,
environment variables and a setup line. The client makes one and sends its
canonical JSON (`to_json()`) with a function or a call; the hub validates it
with `from_json()` and forwards the bytes untouched; the endpoint builds it
(fabric/endpoint/runtimes.py) and keys its cache by `digest`, the SHA-256 of
those bytes, so two functions with the same spec share one build.

Normalised at creation: requirements are parsed (packaging), written in one
canonical form, deduplicated and sorted; a requirements file is read then,
so the spec carries its contents, not a path only this machine has.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from fabric.errors import InvalidRuntime

#: Bumped when the JSON layout changes, so old and new specs never share a digest.
SPEC_VERSION = 1
#: A spec travels with every task that uses it: keep it small.
MAX_SPEC_BYTES = 64 * 1024
_PYTHON = re.compile(r"^3\.\d{1,2}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Set by the endpoint for every runtime worker; a spec may not move them.
_RESERVED_ENV = frozenset({"PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED"})


@dataclass(frozen=True)
class Runtime:
    """What a function needs to run: `Runtime(pip=["humanize>=4"], python="3.12")`.

    pip: requirement specifiers (PEP 508), e.g. "scipy>=1.10", "pyhf[minuit]==0.7.6".
    requirements: a requirements file; its lines are read now and added to `pip`.
    python: "3.X", an interpreter of that minor version found on the endpoint
        ("" = the endpoint's own). A function body loads only on the Python it
        was pickled on: a 3.12 runtime is for functions registered from 3.12.
    env: environment variables of the runtime's workers.
    setup: a shell line run before the workers start; endpoints refuse it
        unless they allow setup (none does in this version).
    """

    pip: tuple[str, ...] = ()
    requirements: str | None = field(default=None, compare=False)
    python: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    setup: str = ""

    def __post_init__(self) -> None:
        specs = list(_as_list(self.pip, "pip"))
        if self.requirements is not None:
            specs += _read_requirements(self.requirements)
        object.__setattr__(self, "pip", tuple(sorted(set(map(normalise_requirement, specs)))))
        python = str(self.python or "")
        if python and not _PYTHON.match(python):
            raise InvalidRuntime(f"python must be a minor version such as '3.12', not {python!r}")
        object.__setattr__(self, "python", python)
        if not isinstance(self.env, Mapping):
            raise InvalidRuntime(f"env must be a mapping of names to strings, not "
                                 f"{type(self.env).__name__}")
        for k, v in self.env.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise InvalidRuntime(f"env: {k!r} is not a valid environment variable name")
            if k in _RESERVED_ENV:
                raise InvalidRuntime(f"env: {k} is set by the endpoint for runtime workers")
            if not isinstance(v, str) or "\0" in v:
                raise InvalidRuntime(f"env: the value of {k} must be a string without NUL bytes")
        # A plain dict inside a frozen spec: sorted, and copied so the caller's changes
        # cannot alter a runtime after its digest was taken.
        object.__setattr__(self, "env", dict(sorted(self.env.items())))
        if not isinstance(self.setup, str) or "\0" in self.setup:
            raise InvalidRuntime("setup must be a string without NUL bytes")
        if len(self.to_json()) > MAX_SPEC_BYTES:
            raise InvalidRuntime(f"the runtime spec is over {MAX_SPEC_BYTES} bytes")

    def __hash__(self) -> int:
        return hash(self.digest)

    # ------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        return {"v": SPEC_VERSION, "pip": list(self.pip), "python": self.python,
                "env": dict(self.env), "setup": self.setup}

    def to_json(self) -> bytes:
        """The canonical bytes: what travels, and what `digest` is taken of."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    @property
    def is_default(self) -> bool:
        """Asks for nothing: runs on the endpoint's own workers."""
        return not (self.pip or self.python or self.env or self.setup)

    def describe(self) -> str:
        parts = [f"pip={list(self.pip)}" if self.pip else "",
                 f"python={self.python}" if self.python else "",
                 f"env={sorted(self.env)}" if self.env else "",
                 "setup=..." if self.setup else ""]
        return f"Runtime({', '.join(p for p in parts if p)}) {self.digest[:12]}"

    @classmethod
    def from_json(cls, data: bytes | str) -> "Runtime":
        """Parse and validate a spec from the wire (InvalidRuntime if it is not one)."""
        if len(data) > MAX_SPEC_BYTES:
            raise InvalidRuntime(f"the runtime spec is over {MAX_SPEC_BYTES} bytes")
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRuntime(f"the runtime spec is not JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("v") != SPEC_VERSION:
            raise InvalidRuntime(f"not a version-{SPEC_VERSION} runtime spec (from a newer Fabric?)")
        unknown = set(d) - {"v", "pip", "python", "env", "setup"}
        if unknown:
            raise InvalidRuntime(f"the runtime spec has unknown fields {sorted(unknown)}")
        return cls(pip=tuple(d.get("pip") or ()), python=d.get("python") or "",
                   env=d.get("env") or {}, setup=d.get("setup") or "")


@functools.lru_cache(maxsize=256)
def parse(spec: bytes) -> Runtime:
    """The runtime of wire `spec` (InvalidRuntime if it is not one). Cached: a batch of
    thousands of calls carries the same few specs, at the hub and at the endpoint."""
    return Runtime.from_json(spec)


def normalise_requirement(spec: str) -> str:
    """One canonical text per requirement: "Scipy >= 1.10" -> "scipy>=1.10"."""
    if not isinstance(spec, str):
        raise InvalidRuntime(f"pip: {spec!r} is not a string")
    text = spec.strip()
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise InvalidRuntime(f"pip: {text!r} is not a valid requirement: {exc}") from None
    out = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    if req.url:
        out += f" @ {req.url}"
    else:
        out += ",".join(sorted(str(s) for s in req.specifier))
    if req.marker is not None:
        out += f"; {req.marker}"
    return out


def _as_list(value: Iterable[str] | str, what: str) -> Iterable[str]:
    if isinstance(value, str):  # pip="numpy" would otherwise be five one-letter packages
        return [value]
    try:
        return list(value)
    except TypeError:
        raise InvalidRuntime(f"{what} must be a list of strings, not "
                             f"{type(value).__name__}") from None


def _read_requirements(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise InvalidRuntime(f"requirements file {p}: {exc.strerror or exc}") from None
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            # -r, -e, --index-url ...: pip options, not requirements; not carried yet.
            raise InvalidRuntime(f"requirements file {p}, line {n}: {line.split()[0]} is a pip "
                                 "option; only requirement lines are supported")
        try:
            out.append(normalise_requirement(line))
        except InvalidRuntime as exc:
            raise InvalidRuntime(f"requirements file {p}, line {n}: {exc}") from None
    return out
