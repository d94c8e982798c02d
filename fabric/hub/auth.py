"""Who is calling: the hub's signing key, and the tokens it issues and verifies.

A token is a JWT signed by the hub with ES256 (ECDSA P-256). The accepted
algorithm is pinned: `none`, HS256 (e.g. "signed" with the hub's *public*
key, the classic algorithm-confusion forgery) and every other algorithm are
refused before any signature check. `exp`, `nbf`, `iat`, `iss`, `aud`,
`sub` and `jti` are required and checked with a small clock skew.

Kinds: `user` (register, run, collect), `admin` (a user who may also list
everyone's tasks and endpoints) and `endpoint` (may only connect the
endpoint named in its `endpoint` claim; `NAME-*` binds a fleet of simulated
endpoints to a name prefix).

The private key lives next to the hub's store (`hub.db` -> `hub.key`, mode
0600); it is created on first use by whichever comes first, the hub or
`fabric token create`. Pure apart from reading/writing that one file.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from fabric import errors

ALGORITHM = "ES256"
ISSUER = "fabric-hub"
AUDIENCE = "fabric"
#: Clock skew tolerated between the hub and whoever made the token (seconds).
LEEWAY_S = 30
KINDS = ("user", "endpoint", "admin")
DEFAULT_TTL_S = 30 * 24 * 3600.0
#: Longest token the hub will issue (an endpoint left running for a year).
MAX_TTL_S = 366 * 24 * 3600.0
#: A token is a few hundred bytes; anything much longer is not ours.
MAX_TOKEN_LENGTH = 4096
USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller of one RPC."""

    user: str
    kind: str  # user | endpoint | admin
    endpoint: str = ""  # endpoint tokens: the name they may connect, or "PREFIX-*"
    jti: str = ""
    expires_at: float = float("inf")

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def may_connect(self, name: str) -> bool:
        """Endpoint tokens are bound to one endpoint name (or a name prefix)."""
        if self.kind != "endpoint" or not self.endpoint:
            return False
        if self.endpoint.endswith("*"):
            return name.startswith(self.endpoint[:-1])
        return name == self.endpoint


#: The caller when the hub runs with --no-auth: everything belongs to one local user.
NO_AUTH = Principal(user="local", kind="admin", jti="")


def check_user_name(user: str) -> str:
    if not user or len(user) > 64 or not set(user) <= USER_CHARS:
        raise errors.InvalidRequest(f"bad user name {user[:64]!r}: use 1-64 of [A-Za-z0-9._@-]")
    return user


def key_path(store_path: str | Path) -> Path:
    """Where the hub's signing key lives: beside its store (hub.db -> hub.key)."""
    p = Path(store_path)
    return p.with_name(p.stem + ".key")


class SigningKey:
    """The hub's ES256 key pair: issues and verifies tokens."""

    def __init__(self, private_pem: bytes) -> None:
        self._private_pem = private_pem
        private = serialization.load_pem_private_key(private_pem, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey) or \
                not isinstance(private.curve, ec.SECP256R1):
            raise errors.AuthError("the hub key must be an EC P-256 private key")
        self.public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        # Parsed once: building a key object from PEM costs more than the check itself.
        self._signer = jwk.construct(private_pem.decode(), ALGORITHM)
        self._verifier = jwk.construct(self.public_pem.decode(), ALGORITHM)

    @classmethod
    def generate(cls) -> "SigningKey":
        private = ec.generate_private_key(ec.SECP256R1())
        return cls(private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))

    @classmethod
    def load_or_create(cls, path: str | Path) -> "SigningKey":
        """Read the key at `path`, creating it (mode 0600, atomically) if missing."""
        path = Path(path)
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # someone else created it meanwhile: theirs wins
            return cls(path.read_bytes())
        with os.fdopen(fd, "wb") as f:
            f.write(key._private_pem)
        return key

    # ------------------------------------------------------------ tokens
    def issue(self, user: str, kind: str = "user", endpoint: str = "",
              ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> tuple[str, Principal]:
        check_user_name(user)
        if kind not in KINDS:
            raise errors.InvalidRequest(f"token kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if (kind == "endpoint") != bool(endpoint):
            raise errors.InvalidRequest("an endpoint token needs --endpoint NAME (and only it does)")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise errors.InvalidRequest(f"ttl must be 1 s .. {MAX_TTL_S:.0f} s, not {ttl_s}")
        now = time.time() if now is None else now
        p = Principal(user, kind, endpoint, "t-" + uuid.uuid4().hex[:20], int(now + ttl_s))
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "kind": kind, "jti": p.jti,
                  "iat": int(now), "nbf": int(now), "exp": int(p.expires_at)}
        if endpoint:
            claims["endpoint"] = endpoint
        return jwt.encode(claims, self._signer, algorithm=ALGORITHM), p

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The principal a token names, or AuthError saying precisely why not."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise errors.AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise errors.AuthError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            # Before any key is touched: `none`, HS256-with-our-public-key, RS256 ...
            raise errors.AuthError(f"token algorithm {str(header.get('alg'))[:16]!r} is not accepted")
        now = time.time() if now is None else now
        try:
            claims = jwt.decode(token, self._verifier, algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=ISSUER, options={
                                    "leeway": LEEWAY_S, "require_exp": True, "require_iat": True,
                                    "require_nbf": True, "require_iss": True,
                                    "require_aud": True, "require_sub": True,
                                    "require_jti": True, "verify_at_hash": False})
        except ExpiredSignatureError:
            raise errors.AuthError("token expired") from None
        except JWTClaimsError as exc:
            raise errors.AuthError(f"token rejected: {exc}") from None
        except JWTError as exc:
            # jose reports nbf in the future as a plain JWTError
            raise errors.AuthError(f"token rejected: {exc}") from None
        if claims["iat"] > now + LEEWAY_S:
            raise errors.AuthError("token issued in the future")
        kind = claims.get("kind")
        if kind not in KINDS:
            raise errors.AuthError("token has no valid kind")
        endpoint = claims.get("endpoint", "")
        if not isinstance(endpoint, str) or (kind == "endpoint") != bool(endpoint):
            raise errors.AuthError("endpoint token without an endpoint (or the reverse)")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or not set(sub) <= USER_CHARS:
            raise errors.AuthError("token has a malformed subject")
        return Principal(sub, kind, endpoint, str(claims["jti"]), float(claims["exp"]))


class VerifiedTokens:
    """Tokens verified recently, so a thousand endpoint streams connecting at once
    (or a client's every call) pay for one ECDSA check per token, not per call.
    Expiry is still checked on every hit; revocation is checked by the caller."""

    def __init__(self, key: SigningKey, size: int = 50_000) -> None:
        self.key = key
        self.size = size
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def verify(self, token: str) -> Principal:
        now = time.time()
        p = self._cache.get(token)
        if p is not None:
            if now <= p.expires_at + LEEWAY_S:
                return p
            del self._cache[token]
        p = self.key.verify(token, now)
        self._cache[token] = p
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return p


__all__ = ["ALGORITHM", "AUDIENCE", "ISSUER", "KINDS", "LEEWAY_S", "NO_AUTH", "Principal",
           "SigningKey", "VerifiedTokens", "check_user_name", "key_path"]
