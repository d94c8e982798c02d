"""The hub's book of issued tokens: create, list and revoke (`fabric token ...`).

Token administration runs on the hub's machine, against the hub's own store
and key (the same files the hub uses), rather than through an admin RPC:
there is then no first-admin bootstrap problem, nothing an attacker on the
network can call to mint tokens, and revoking works while the hub is down.
The running hub sees revocations by polling the `tokens` table
(`revoked_since`), about once a second, and closes the open streams of
revoked tokens.

Only metadata is stored (id, user, kind, expiry); the token itself is shown
once, when created, and never written to the store.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from fabric import errors
from fabric.hub import schema
from fabric.hub.auth import DEFAULT_TTL_S, SigningKey, key_path
from fabric.names import endpoint_pattern


@dataclass(frozen=True, slots=True)
class TokenInfo:
    jti: str
    user: str
    kind: str
    endpoint: str
    issued_at: float
    expires_at: float
    revoked_at: float | None


class TokenBook:
    """Synchronous access to the tokens table of a hub store (short-lived use)."""

    def __init__(self, store_path: str | Path) -> None:
        self.store_path = Path(store_path)
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.store_path), isolation_level=None, timeout=10,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        schema.ensure(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "TokenBook":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, user: str, kind: str = "user", endpoint: str = "",
               ttl_s: float = DEFAULT_TTL_S) -> tuple[str, TokenInfo]:
        """Issue a token with the hub's key (created if this store has none yet)."""
        if kind == "endpoint":
            if not endpoint:
                raise errors.InvalidRequest("an endpoint token needs the endpoint name it may "
                                            "connect (--endpoint NAME, PREFIX* or *)")
            endpoint_pattern(endpoint)  # InvalidName; a name is a folder on the endpoint's side
        key = SigningKey.load_or_create(key_path(self.store_path))
        now = time.time()
        token, p = key.issue(user, kind, endpoint, ttl_s, now)
        info = TokenInfo(p.jti, user, kind, endpoint, now, p.expires_at, None)
        self._conn.execute("INSERT INTO tokens (jti, user, kind, endpoint, issued_at, expires_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (p.jti, user, kind, endpoint, now, p.expires_at))
        return token, info

    def revoke(self, jti: str = "", user: str = "") -> list[str]:
        """Revoke one token by id, or every live token of `user`; returns the ids revoked."""
        if bool(jti) == bool(user):
            raise errors.InvalidRequest("revoke one token id, or every token of one --user")
        where, arg = ("jti=?", jti) if jti else ("user=?", user)
        rows = self._conn.execute(f"SELECT jti FROM tokens WHERE {where} AND revoked_at IS NULL",
                                  (arg,)).fetchall()
        if not rows and jti:
            known = self._conn.execute("SELECT 1 FROM tokens WHERE jti=?", (jti,)).fetchone()
            if not known:
                raise errors.NotFound(f"no token with id {jti!r} in {self.store_path}")
        ids = [r[0] for r in rows]
        self._conn.executemany("UPDATE tokens SET revoked_at=? WHERE jti=?",
                               [(time.time(), i) for i in ids])
        return ids

    def list(self, include_expired: bool = False) -> list[TokenInfo]:
        sql = "SELECT jti, user, kind, endpoint, issued_at, expires_at, revoked_at FROM tokens"
        if not include_expired:
            sql += f" WHERE expires_at > {time.time()!r}"
        return [TokenInfo(*r) for r in self._conn.execute(sql + " ORDER BY issued_at")]

    def revoked_since(self, since: float) -> tuple[set[str], float]:
        """Ids revoked at or after `since`, and the time to ask from next."""
        rows = self._conn.execute("SELECT jti, revoked_at FROM tokens WHERE revoked_at >= ?",
                                  (since,)).fetchall()
        latest = max((r[1] for r in rows), default=since)
        return {r[0] for r in rows}, latest


__all__ = ["TokenBook", "TokenInfo"]
