"""Names a careless or hostile user types never become paths outside FABRIC_HOME.

Each case runs the real `fabric` CLI in a throw-away HOME with FABRIC_HOME at
HOME/.fabric, a thesis beside it, a hub's files and two endpoints' folders
inside it; afterwards every one of them must still be there, unchanged. (On
the code before this test, `fabric endpoint delete ../..` removed the HOME.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabric import names
from fabric.errors import InvalidName
from fabric.hub.tokens import TokenBook

HOSTILE = ["../..", "..", ".", "", "/nonexistent-abs", "a/../../..", "x" * 300, "-rf",
           ".hidden", "a b", "a\nb"]


@pytest.fixture
def home(tmp_path):
    """HOME with a sentinel beside .fabric, and hub files and two endpoints inside it."""
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.txt").write_text("four years of work\n")
    fabric_home = home / ".fabric"
    for name in ("alpha", "beta"):
        (fabric_home / "endpoints" / name).mkdir(parents=True)
        (fabric_home / "endpoints" / name / "config.toml").write_text(f"# {name}\n")
    with TokenBook(fabric_home / "hub.db") as book:  # a real store, key and token
        (fabric_home / "token").write_text(book.create("u", "user")[0])
    return home


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, by path, with its contents."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def fabric(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "FABRIC_HOME": str(home / ".fabric"),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-m", "fabric", *args], env=env, text=True,
                          input=stdin, capture_output=True, timeout=60, cwd=home)


@pytest.mark.parametrize("name", HOSTILE, ids=lambda n: repr(n[:12]))
def test_delete_refuses_a_name_that_is_not_an_endpoint(home, name):
    before = snapshot(home)
    out = fabric(home, "endpoint", "delete", "--yes", "--force", "--", name)
    assert out.returncode == 1, out
    assert "bad endpoint name" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert snapshot(home) == before


@pytest.mark.parametrize("args", [
    ["endpoint", "configure", "{name}"],
    ["endpoint", "start", "{name}", "--detach", "--hub", "127.0.0.1:1"],
    ["endpoint", "start", "{name}", "--hub", "127.0.0.1:1"],
    ["endpoint", "stop", "{name}"],
    ["endpoint", "restart", "{name}"],
    ["token", "create", "--user", "u", "--kind", "endpoint", "--endpoint", "{name}", "--save"],
], ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("name", ["../../x", "{outside}/x", "x" * 300],
                         ids=lambda n: repr(n[:12]))
def test_no_command_writes_outside_fabric_home(home, tmp_path, args, name):
    outside = tmp_path / "outside"  # an absolute name points here
    name = name.format(outside=outside)
    before = snapshot(home)
    out = fabric(home, *[a.format(name=name) for a in args])
    assert out.returncode != 0, out
    assert "bad endpoint name" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "File name too long" not in out.stderr
    assert snapshot(home) == before  # no log, pid file, token or config anywhere
    assert not (home / "x").exists() and not outside.exists()


def test_delete_asks_and_refuses_without_a_terminal(home):
    folder = home / ".fabric" / "endpoints" / "alpha"
    out = fabric(home, "endpoint", "delete", "alpha")  # stdin is a pipe here
    assert out.returncode == 1 and "--yes" in out.stderr, out
    assert folder.is_dir()
    out = fabric(home, "endpoint", "delete", "alpha", "--yes")
    assert out.returncode == 0, out
    assert not folder.exists() and (home / ".fabric" / "endpoints" / "beta").is_dir()
    assert (home / "Documents" / "thesis.txt").exists()


def test_delete_never_follows_a_link_out_of_the_endpoints_folder(home, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.csv").write_text("1,2,3\n")
    endpoints = home / ".fabric" / "endpoints"
    (endpoints / "linked").symlink_to(precious)  # the folder itself is a link
    (endpoints / "alpha" / "escape").symlink_to(precious)  # a link inside the folder

    out = fabric(home, "endpoint", "delete", "linked", "--yes")
    assert out.returncode == 1 and "symbolic link" in out.stderr, out
    out = fabric(home, "endpoint", "delete", "alpha", "--yes")
    assert out.returncode == 0, out
    assert not (endpoints / "alpha").exists()
    assert (precious / "data.csv").read_text() == "1,2,3\n"


def test_the_hub_and_the_local_commands_share_one_rule():
    for good in ("alpha", "gpu-box.01", "A_b", "x" * 64, "a.."):
        assert names.endpoint_name(good) == good
        assert names.endpoint_dir(good, "/h") == Path("/h/endpoints") / good
    for bad in HOSTILE + ["x" * 65, "a/b", "a\\b", "é"]:
        with pytest.raises(InvalidName, match="bad endpoint name"):
            names.endpoint_name(bad)
    for good in ("*", "sim-*", "alpha"):
        assert names.endpoint_pattern(good) == good
    for bad in ("../*", "**", "/*", ""):
        with pytest.raises(InvalidName):
            names.endpoint_pattern(bad)


def test_an_endpoint_token_needs_a_valid_name(tmp_path):
    from fabric.errors import InvalidRequest

    with TokenBook(tmp_path / "hub.db") as book:
        with pytest.raises(InvalidName):
            book.create("u", "endpoint", "../../x")
        with pytest.raises(InvalidRequest, match="needs the endpoint name"):
            book.create("u", "endpoint", "")
        assert book.list() == []
        book.create("u", "endpoint", "sim-*")
        assert len(book.list()) == 1
