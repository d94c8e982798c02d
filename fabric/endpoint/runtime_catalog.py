"""What an endpoint has built: its runtimes on disk, listed and pruned.

`fabric endpoint runtimes NAME [--prune]` reads `STATE_DIR/runtimes/` (the
folders `RuntimeCache` commits, each with its marker file) without the
endpoint running: spec, Python, size on disk, when and how fast it was built,
when it was last used. Pruning removes whole runtime folders (and their build
logs) and nothing else: the `fabric` link inside each venv is removed, never
followed, so the endpoint's own package is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fabric.endpoint.runtimes import LAST_USED, MARKER
from fabric.runtime_spec import Runtime


@dataclass(frozen=True)
class RuntimeEntry:
    digest: str
    spec: str  # Runtime.describe()
    python_version: str
    builder: str  # "uv" or "pip"
    built_at: float
    build_s: float
    last_used: float
    size_bytes: int
    path: Path


def entries(root: Path) -> list[RuntimeEntry]:
    """The complete runtimes under `root`, least recently used first."""
    if not root.is_dir():
        return []
    out = []
    for path in root.iterdir():
        marker = path / MARKER
        if ".tmp-" in path.name or path.is_symlink() or not marker.is_file():
            continue  # half-built (swept at the endpoint's next start), or not ours
        try:
            meta = json.loads(marker.read_text())
            spec = Runtime.from_json(json.dumps(meta["spec"])).describe()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            spec = f"(unreadable marker: {exc})"
            meta = {}
        used = path / LAST_USED
        out.append(RuntimeEntry(
            digest=path.name, spec=spec, python_version=str(meta.get("python_version", "?")),
            builder=str(meta.get("builder", "?")), built_at=float(meta.get("built_at", 0.0)),
            build_s=float(meta.get("build_s", 0.0)),
            last_used=(used if used.exists() else marker).stat().st_mtime,
            size_bytes=disk_usage(path), path=path))
    return sorted(out, key=lambda e: e.last_used)


def disk_usage(path: Path) -> int:
    """Bytes of the files under `path`, links not followed (the venv's `fabric` link
    points at the endpoint's own package, which is not the runtime's)."""
    total = 0
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def prune(root: Path, older_than_s: float = 0.0, now: float | None = None) -> list[RuntimeEntry]:
    """Remove the runtimes not used for `older_than_s` seconds (0: all of them);
    returns what was removed. Only call it while no endpoint uses `root`."""
    now = time.time() if now is None else now
    gone = []
    for entry in entries(root):
        if now - entry.last_used < older_than_s:
            continue
        shutil.rmtree(entry.path)  # unlinks links inside, never follows them
        log_file = root / f"{entry.digest}.log"
        if log_file.exists():
            log_file.unlink()
        gone.append(entry)
    return gone


__all__ = ["RuntimeEntry", "disk_usage", "entries", "prune"]
