"""Shared pieces of the benchmark harness: the functions every engine runs, machine
facts, statistics, progress bars, and one writer for every scenario's result files
(JSON with every sample, a markdown table, PNG plots)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=None if sys.stdout.isatty() else 160)

#: A column of a result table: (key in each row, header, format of a value).
Column = tuple[str, str, str]


# ---------------------------------------------------------------- what engines run
def noop() -> None:
    return None


def nap(seconds: float) -> None:
    """A task of a given duration that leaves the cores to the engine (on a 2-core
    machine a busy loop would measure contention with the hub, not dispatch)."""
    if seconds > 0:
        time.sleep(seconds)


def echo(payload: bytes) -> bytes:
    return payload


# ---------------------------------------------------------------- facts and statistics
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg": list(os.getloadavg()),
        "versions": {d: version(d) for d in ("fabric-fx", "grpcio", "protobuf", "uvloop",
                                              "parsl", "dask", "distributed", "ray",
                                              "cloudpickle")},
        "executable": sys.executable,
    }


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    if not samples_s:
        return {}
    xs = sorted(samples_s)

    def pct(p: float) -> float:
        return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))] * 1000

    return {"p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(xs) * 1000, "n": len(xs)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def parse_list(text: str, kind: Callable[[str], Any] = int) -> list[Any]:
    """"1,2,4" -> [1, 2, 4]; a bad item is an argparse error, not a traceback."""
    try:
        return [kind(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r} ({e})") from e


def parse_size(text: str) -> int:
    """"1K", "10M", "100M", "512" -> bytes (K = 1024)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def human_size(n: int) -> str:
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# ---------------------------------------------------------------- arguments and progress
PEERS = "process-pool,fabric,dask,parsl,ray"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every peer-comparing scenario shares."""
    parser.add_argument("--quick", action="store_true",
                        help="the smallest sweep that still shows the trend (under ~60 s)")
    parser.add_argument("--peers", default=PEERS,
                        help=f"comma-separated engines to run (default: {PEERS}); "
                             "a peer that is not installed is skipped with a message")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for the JSON, markdown and PNG files")


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


# ---------------------------------------------------------------- ratios to the peers
SHORT = {"process-pool": "PPE", "dask": "dask", "parsl": "parsl", "ray": "ray"}


def add_ratios(rows: list[dict[str, Any]], key: str | tuple[str, ...], metric: str,
               higher_is_better: bool = True) -> None:
    """Fabric's rows get `x_<peer>` = Fabric's metric over that peer's row with the same
    `key` field(s) (for a time, the peer's over Fabric's: > 1 always means Fabric is ahead)."""
    keys = (key,) if isinstance(key, str) else key
    by = {(r["engine"], *(r[k] for k in keys)): r for r in rows}
    for r in rows:
        if r["engine"] != "fabric":
            continue
        for peer in SHORT:
            other = by.get((peer, *(r[k] for k in keys)))
            if other is not None:
                a, b = r.get(metric), other.get(metric)
                r[f"x_{peer}"] = ratio(a, b) if higher_is_better else ratio(b, a)


def ratio_columns(rows: list[dict[str, Any]]) -> list[Column]:
    return [(f"x_{p}", f"x {s}", "{:.2f}") for p, s in SHORT.items()
            if any(r.get(f"x_{p}") is not None for r in rows)]



# ---------------------------------------------------------------- result files
def save(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    out = RESULTS if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    return path


def cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return fmt.format(value)


def markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if f == "{}" else "---:" for _, _, f in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |")
    return lines


def write_report(name: str, payload: dict[str, Any], title: str, columns: Sequence[Column],
                 rows: Sequence[dict[str, Any]], notes: Sequence[str] = (),
                 plot: Callable[[Path], None] | None = None,
                 out: Path | None = None) -> dict[str, Path]:
    """Every scenario's ending: `name-<stamp>.json` (payload + machine + when + rows),
    `.md` (title, machine, table, notes), `.png` (if `plot`), and the table on the console."""
    if payload.get("args", {}).get("quick"):
        title += " [--quick]"
    payload = {"scenario": name, "machine": machine(),
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **payload, "rows": list(rows),
               "notes": list(notes)}
    path = save(name, payload, out)
    m = payload["machine"]
    md = path.with_suffix(".md")
    lines = [f"# {title}", "",
             f"{payload['when']}, {m['cpus']} x {m['cpu_model']}, {m['memory_gb']} GB, {m['os']}, "
             f"Python {m['python']}, grpcio {m['versions']['grpcio']}, load average "
             f"{m['load_avg'][0]:.1f} (`{path.name}` has every sample)", "",
             *markdown_table(columns, rows), ""]
    lines += [f"- {n}" for n in notes]
    md.write_text("\n".join(lines) + "\n")
    files = {"json": path, "md": md}
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        png = path.with_suffix(".png")
        plot(png)
        files["png"] = png
    table = Table(title=title)
    for _, header, fmt in columns:
        table.add_column(header, justify="left" if fmt == "{}" else "right")
    for r in rows:
        table.add_row(*(cell(r.get(k), f) for k, _, f in columns))
    console.print(table)
    for n in notes:
        console.print(f"  {n}")
    console.print("wrote " + ", ".join(str(p) for p in files.values()))
    return files


def figure(ncols: int = 1, width: float = 6.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4), squeeze=False)
    return fig, list(axes[0])


def finish(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
