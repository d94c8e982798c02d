"""CLI for tokens and sharing.

    fabric token create --user alice [--kind user|endpoint|admin] [--endpoint NAME] [--ttl 30d] [--save]
    fabric token list | fabric token revoke ID | fabric token revoke --user alice
    fabric endpoint share laptop --with bob [--revoke]
    fabric function share FUNCTION_ID --with bob [--revoke]

`fabric token ...` runs on the hub's machine and works on the hub's own
store and key (see fabric/hub/tokens.py for why not an RPC); sharing is
asked of the hub by the owner, with the owner's token.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import click
from rich.table import Table

from fabric import config, errors
from fabric.cli.views import HUB_OPTION, _client, _guard, console
from fabric.names import endpoint_dir, endpoint_pattern

def checked_store(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A --store value the hub can open (a precise error, not a file at a URL's path)."""
    from fabric.hub.location import store_path

    if value is None:
        return None
    try:
        return store_path(value)
    except errors.BadConfig as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


STORE_OPTION = click.option("--store", "store_path", default=None, callback=checked_store,
                            help="the hub's SQLite file  [default: ~/.fabric/hub.db]")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """'3600', '90m', '12h', '30d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r}: use seconds or a number with s/m/h/d, e.g. 30d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _store(store_path: str | None) -> Path:
    return Path(store_path) if store_path else config.home() / "hub.db"


@click.group()
def token() -> None:
    """Issue, list and revoke tokens (run on the hub's machine)."""


@token.command("create")
@click.option("--user", required=True, help="who the token is for (owner of what it creates)")
@click.option("--kind", type=click.Choice(["user", "endpoint", "admin"]), default="user",
              show_default=True)
@click.option("--endpoint", default="",
              help="endpoint tokens: the endpoint name it may connect (NAME-* for a fleet)")
@click.option("--ttl", default="30d", show_default=True, help="lifetime: seconds, or 90m / 12h / 30d")
@click.option("--save", is_flag=True,
              help="also write it (0600) where this machine's client or endpoint finds it")
@STORE_OPTION
@_guard
def token_create(user: str, kind: str, endpoint: str, ttl: str, save: bool,
                 store_path: str | None) -> None:
    """Print a new token (shown once; the hub keeps only its id)."""
    from fabric.credentials import save_token, token_file
    from fabric.hub.tokens import TokenBook

    if kind == "endpoint":
        endpoint_pattern(endpoint)  # before the store is opened or anything written
    with TokenBook(_store(store_path)) as book:
        tok, info = book.create(user, kind, endpoint, parse_ttl(ttl))
    click.echo(tok)
    expires = dt.datetime.fromtimestamp(info.expires_at).isoformat(timespec="minutes")
    click.echo(f"# token {info.jti}: {kind} {user}{' endpoint ' + endpoint if endpoint else ''}, "
               f"expires {expires}", err=True)
    if save:
        if kind == "endpoint" and not endpoint.endswith("*"):
            path = endpoint_dir(endpoint) / "token"
        elif kind == "endpoint":
            path = config.home() / "endpoint-token"
        else:
            path = token_file()
        click.echo(f"# saved to {save_token(tok, path)}", err=True)


@token.command("list")
@click.option("--all", "show_all", is_flag=True, help="include expired tokens")
@STORE_OPTION
@_guard
def token_list(show_all: bool, store_path: str | None) -> None:
    """Tokens issued by this hub (ids and owners; never the tokens themselves)."""
    from fabric.hub.tokens import TokenBook

    with TokenBook(_store(store_path)) as book:
        rows = book.list(include_expired=show_all)
    table = Table("id", "user", "kind", "endpoint", "issued", "expires", "revoked")

    def when(t: float | None) -> str:
        return dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="minutes") if t else ""

    for r in rows:
        table.add_row(r.jti, r.user, r.kind, r.endpoint, when(r.issued_at), when(r.expires_at),
                      when(r.revoked_at))
    console.print(table)


@token.command("revoke")
@click.argument("token_id", required=False, default="")
@click.option("--user", default="", help="revoke every token of this user instead")
@STORE_OPTION
@_guard
def token_revoke(token_id: str, user: str, store_path: str | None) -> None:
    """Revoke a token by id (see `fabric token list`), or all of a user's.
    A running hub refuses it within a second and ends its open streams."""
    from fabric.hub.tokens import TokenBook

    with TokenBook(_store(store_path)) as book:
        ids = book.revoke(token_id, user)
    click.echo(f"revoked {len(ids)} token(s): {' '.join(ids)}")


def _share_command(kind: str) -> click.Command:
    @click.command("share")
    @click.argument("ref")
    @click.option("--with", "users", multiple=True, required=True, help="user name (repeatable)")
    @click.option("--revoke", is_flag=True, help="stop sharing with these users")
    @HUB_OPTION
    @_guard
    def share(ref: str, users: tuple[str, ...], revoke: bool, hub: str) -> None:
        with _client(hub) as c:
            now = c.share(kind, ref, users, revoke)
        click.echo(f"{kind} {ref} is shared with: {', '.join(now) or 'nobody'}")

    share.help = (f"Share {kind} {'NAME (or id)' if kind == 'endpoint' else 'ID'} that you own "
                  f"with other users (--revoke: stop).")
    return share


endpoint_share = _share_command("endpoint")
function_share = _share_command("function")


@click.group()
def function() -> None:
    """Manage registered functions."""


function.add_command(function_share)

__all__ = ["endpoint_share", "function", "parse_ttl", "token"]
