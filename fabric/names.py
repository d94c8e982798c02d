"""Names that users type and that become paths: one rule, checked once.

An endpoint's name is its id at the hub and the name of its folder under
`$FABRIC_HOME/endpoints/`. The hub checks it on Connect; every local command
(`fabric endpoint start | stop | configure | delete | restart`, `fabric token
create --save`) builds paths only through `endpoint_dir()`, which checks it
too. So `..`, `''`, `/etc` or a 300-character name is a precise `InvalidName`,
never a path outside `FABRIC_HOME` (an earlier `fabric endpoint delete ../..`
removed a home directory).
"""

from __future__ import annotations

import re
from pathlib import Path

from fabric import config
from fabric.errors import InvalidName

#: Starts with a letter or digit, so it is never `.`, `..`, empty or a dotfile;
#: no `/` and at most 64 characters, so it is one short path component.
ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE = "use 1-64 of [A-Za-z0-9._-], starting with a letter or digit"


def endpoint_name(name: str) -> str:
    """`name` itself if it is a valid endpoint name; else `InvalidName` saying why."""
    if not isinstance(name, str) or not ENDPOINT_NAME.fullmatch(name):
        shown = repr(name[:64]) + ("..." if isinstance(name, str) and len(name) > 64 else "")
        raise InvalidName(f"bad endpoint name {shown}: {RULE}")
    return name


def endpoint_pattern(pattern: str) -> str:
    """What an endpoint token may be bound to: a name, `*` (any) or `PREFIX*`."""
    if pattern == "*":
        return pattern
    stem = pattern[:-1] if pattern.endswith("*") else pattern
    if not ENDPOINT_NAME.fullmatch(stem):
        raise InvalidName(f"bad endpoint name or prefix {pattern[:64]!r}: {RULE}, "
                          "optionally ending in * (any name with that prefix)")
    return pattern


def endpoints_root(home: str | Path | None = None) -> Path:
    """`$FABRIC_HOME/endpoints` (or HOME/endpoints)."""
    return Path(home if home is not None else config.home()) / "endpoints"


def endpoint_dir(name: str, home: str | Path | None = None) -> Path:
    """The folder of endpoint `name`: checked to be a valid name, and to be a real
    folder directly inside the endpoints root (not a link that leads elsewhere)."""
    root = endpoints_root(home)
    folder = root / endpoint_name(name)
    if folder.is_symlink():
        raise InvalidName(f"{folder} is a symbolic link; an endpoint's folder must be a "
                          "plain folder inside " + str(root))
    # A valid name is one plain component, so the path cannot climb out of root;
    # the root itself may be a link (the user's own choice).
    return folder


__all__ = ["ENDPOINT_NAME", "endpoint_dir", "endpoint_name", "endpoint_pattern",
           "endpoints_root"]
