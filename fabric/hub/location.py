"""What `--store` may name: a SQLite file this hub can open, checked before it starts.

`fabric hub --store` and the `fabric token` commands take a path, or a URL of
a store this hub can open (`sqlite:///PATH`, as SQLAlchemy writes it). Any
other URL is a precise error at start: `postgresql://host/db` used to become a
SQLite file at the relative path `postgresql:/host/db`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fabric.errors import BadConfig

#: `scheme://...` or a database scheme followed by a colon (`postgresql:/x` is a URL
#: with a lost slash, not a file name).
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://|"
                  r"^(?P<db>postgres|postgresql|mysql|mariadb|sqlite|redis|mongodb)(\+\w+)?:",
                  re.IGNORECASE)
_SQLITE_MAGIC = b"SQLite format 3\x00"


def store_path(value: str) -> str:
    """The SQLite path `value` names; `BadConfig` saying why if this hub cannot use it."""
    if value == ":memory:":
        return value
    m = _URL.match(value)
    if m:
        scheme = (m.group("scheme") or m.group("db")).lower()
        if scheme == "sqlite" and value.lower().startswith("sqlite:///"):
            value = value[len("sqlite:///"):]  # sqlite:///rel.db, sqlite:////abs.db
        elif scheme.startswith("postgres"):
            raise BadConfig(f"{value!r}: this hub opens SQLite stores only; a PostgreSQL "
                            "store is not available yet. Give a file path (default "
                            "~/.fabric/hub.db)")
        else:
            raise BadConfig(f"{value!r}: unknown kind of store {scheme!r}; give a SQLite file "
                            "path or sqlite:///PATH")
    if not value:
        raise BadConfig("give a SQLite file path, not an empty one")
    path = Path(value).expanduser()
    if path.is_dir():
        raise BadConfig(f"{value!r} is a folder; name the SQLite file inside it "
                        "(for example hub.db)")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise BadConfig(f"{value!r}: cannot read it: {exc.strerror}") from None
        if head and head != _SQLITE_MAGIC:
            raise BadConfig(f"{value!r} exists and is not a SQLite database; refusing to "
                            "touch it")
        return str(path)
    try:  # the hub would make the folder anyway; find out now whether it can
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadConfig(f"{value!r}: cannot create its folder {path.parent}: "
                        f"{exc.strerror}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise BadConfig(f"{value!r}: cannot create it ({path.parent} is not writable)")
    return str(path)


__all__ = ["store_path"]
