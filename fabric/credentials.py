"""Credentials on the calling side: which token to send, and how to dial the hub.

A client's token is, in order: the one passed in (`Client(token=...)`),
$FABRIC_TOKEN, one registered in this process for that hub address
(`remember`, used by `fabric.launch` for the hubs it starts), and the file
$FABRIC_HOME/token. An endpoint's token is `--token` / $FABRIC_ENDPOINT_TOKEN,
else `token` in its state directory, else $FABRIC_HOME/endpoint-token.
Token files are written with mode 0600.

Channels are plaintext to loopback; with a CA file (`tls_ca=` / `--tls-ca` /
$FABRIC_TLS_CA) they use TLS and verify the hub's certificate. A plaintext
channel to anything but loopback is warned about loudly: the token would
cross the network in the clear.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import grpc

from fabric import config

log = logging.getLogger("fabric")

_remembered: dict[str, str] = {}
_warned: set[str] = set()


def remember(address: str, token: str) -> None:
    """Use `token` for clients in this process that talk to `address` without one."""
    _remembered[address] = token


def token_file() -> Path:
    return config.home() / "token"


def client_token(address: str, explicit: str | None = None) -> str:
    return (explicit or os.environ.get("FABRIC_TOKEN") or _remembered.get(address)
            or _read(token_file()))


def endpoint_token(state_dir: Path | None, explicit: str | None = None) -> str:
    return (explicit or os.environ.get("FABRIC_ENDPOINT_TOKEN")
            or (_read(state_dir / "token") if state_dir is not None else "")
            or _read(config.home() / "endpoint-token"))


def save_token(token: str, path: Path) -> Path:
    """Write a token file readable by its owner only (0600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return ""


def metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0] if ":" in address else address


def open_channel(address: str, options: Sequence[tuple[str, Any]] | None = None,
                 tls_ca: str | None = None) -> grpc.aio.Channel:
    """A channel to the hub: TLS when a CA file is given (or $FABRIC_TLS_CA)."""
    options = list(options if options is not None else config.grpc_options())
    ca = tls_ca if tls_ca is not None else os.environ.get("FABRIC_TLS_CA", "")
    if ca:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        return grpc.aio.secure_channel(address, creds, options=options)
    if not is_loopback(host_of(address)) and address not in _warned:
        _warned.add(address)
        log.warning("PLAINTEXT connection to %s: tokens and data cross the network unencrypted; "
                    "pass --tls-ca (or FABRIC_TLS_CA) for a hub started with --tls-cert/--tls-key",
                    address)
    return grpc.aio.insecure_channel(address, options=options)


__all__ = ["client_token", "endpoint_token", "is_loopback", "metadata", "open_channel",
           "remember", "save_token", "token_file"]
