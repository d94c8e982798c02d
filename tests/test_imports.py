"""The shape of the code, as imports: the pure parts stay pure, the client stays
a client, generated protobuf code stays behind its codecs, and the hub never
loads what unpickles user data.

Read from the source (every import statement, top level or inside a function),
so a lazy import counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What a pure module (decisions, no effects) must not import.
EFFECTS = ("grpc", "sqlite3", "sqlite_utils", "asyncio", "fabric._proto", "socket", "subprocess")
#: Modules that decide and do no I/O.
PURE = [*sorted((ROOT / "scheduler").glob("*.py")), ROOT / "fabric" / "states.py",
        ROOT / "fabric" / "names.py", ROOT / "fabric" / "endpoint" / "link.py",
        ROOT / "fabric" / "endpoint" / "link_events.py"]
#: Modules that may import the generated protobuf code. The hub-core issue (14)
#: shrinks this list to one codec per process; no module may join it.
PROTO_USERS = {
    "fabric/blobs.py", "fabric/client/aio.py", "fabric/client/executor.py",
    "fabric/client/payloads.py", "fabric/client/results.py", "fabric/endpoint/link_codec.py",
    "fabric/endpoint/outbox.py", "fabric/endpoint/transfers.py", "fabric/hub/blobs.py", "fabric/hub/client_api.py",
    "fabric/hub/dispatch.py", "fabric/hub/endpoint_api.py", "fabric/hub/finishing.py",
    "fabric/hub/server.py", "fabric/hub/sessions.py", "fabric/models.py",
}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "_proto" not in p.parts)


def offenders(paths: list[Path], banned: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in paths:
        bad = sorted(m for m in imports(path) if any(m == b or m.startswith(b + ".") for b in banned))
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


def test_the_pure_core_does_no_io():
    assert offenders(PURE, EFFECTS) == {}


def test_the_client_never_imports_the_hub_or_the_endpoint():
    assert offenders(sources("fabric/client"), ("fabric.hub", "fabric.endpoint")) == {}


def test_generated_protobuf_code_stays_behind_its_codecs():
    users = {str(p.relative_to(ROOT)) for p in [*sources("fabric"), *sources("scheduler")]
             if offenders([p], ("fabric._proto",))}
    assert users - PROTO_USERS == set(), "new modules import fabric._proto: use a codec"
    # A module that stopped importing it leaves the list, so the list only shrinks.
    assert PROTO_USERS - users == set(), "drop these from PROTO_USERS"


def test_the_hub_process_never_loads_cloudpickle():
    """The hub moves user data as bytes; only workers deserialize (and the audit
    hook test in test_auth checks no pickle.loads ever runs in a hub)."""
    code = ("import sys, fabric.cli, fabric.hub.server, fabric.hub.client_api, "
            "fabric.hub.endpoint_api; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('cloudpickle', 'dill')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
