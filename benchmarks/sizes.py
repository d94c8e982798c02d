"""Argument/result size sweep: round trip and bandwidth of Fabric beside its peers.

    fabric bench sizes [--sizes 1K,10K,100K,1M,10M,100M,250M] [--workers 2] [--quick]

For each size S, one task at a time: an `echo` task that takes S random bytes
and returns them, so S travels to a worker and S comes back (Fabric: client ->
hub, stored, hub -> endpoint -> worker, and the same way back; over 1 MiB as a
blob, uploaded and fetched in chunks on each leg). Fewer round trips at big
sizes. MiB/s counts both directions: 2 x S / round trip (p50).
A size an engine refuses (Fabric's --max-payload, a gRPC message limit) is
recorded with the error's exact text as its result, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (add_common_arguments, add_ratios, echo, figure, finish,
                               human_size, noop, parse_list, parse_size, percentiles, progress,
                               ratio_columns, write_report)
from benchmarks.peers import open_engine, peers_arg

FULL = "1K,10K,100K,1M,10M,100M,250M"
QUICK = "1K,10K,100K,1M,10M"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated payload sizes, K/M = 2^10/2^20 bytes "
                             f"(default: {FULL}; --quick: {QUICK})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=30,
                        help="round trips at sizes up to 100K (fewer above: a quarter at 1M, "
                             "down to 3 at 100M)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per round trip")
    parser.add_argument("--hub-max-payload", default=None,
                        help="start Fabric's hub with this --max-payload (e.g. 512K; default: "
                             "the hub's own default), to see how a refused size is reported")


def samples_for(size: int, base: int) -> int:
    if size <= 100 * 2**10:
        return base
    if size <= 2**20:
        return max(2, base // 4)
    if size <= 10 * 2**20:
        return max(2, base // 10)
    return min(3, base)


def measure(engine: Any, size: int, samples: int, timeout: float) -> dict[str, Any]:
    payload = os.urandom(size)
    row: dict[str, Any] = {"engine": engine.name, "size": human_size(size), "bytes": size,
                           "samples": samples, "error": None}
    rtts: list[float] = []
    try:
        engine.submit(echo, payload).result(timeout=timeout)  # warm: first use of `echo`
        for _ in range(samples):
            t0 = time.perf_counter()
            back = engine.submit(echo, payload).result(timeout=timeout)
            rtts.append(time.perf_counter() - t0)
            if len(back) != size:
                raise ValueError(f"echo returned {len(back)} bytes, sent {size}")
    except Exception as e:  # the result of this size: what a user would be told
        row["error"] = f"{type(e).__name__}: {e}"[:500]
    lat = percentiles(rtts)
    row.update(round_trip_samples_s=rtts, p50_ms=lat.get("p50_ms"), p90_ms=lat.get("p90_ms"),
               mib_per_s=(2 * size / 2**20) / (lat["p50_ms"] / 1000) if rtts and not row["error"]
               else None)
    if row["error"]:
        row["p50_ms"] = row["p90_ms"] = None
    return row


def run(args: argparse.Namespace) -> int:
    sizes = parse_list(args.sizes or (QUICK if args.quick else FULL), parse_size)
    if args.quick:
        args.samples = min(args.samples, 10)
    engines = peers_arg(args.peers)
    rows: list[dict[str, Any]] = []
    # Fabric's hub takes payloads up to its --max-payload (fabric/config.py); by default
    # the sweep runs with the limits a user gets, so a refusal is a finding.
    hub_args = (("--max-payload", str(parse_size(args.hub_max_payload)))
                if args.hub_max_payload else ())
    with progress() as bars:
        for name in engines:
            bar = bars.add_task(f"{name} ({args.workers} workers)", total=len(sizes))
            with open_engine(name, args.workers, hub_args=hub_args) as eng:
                if eng is None:
                    bars.remove_task(bar)
                    continue
                eng.warm_up(noop)
                for size in sizes:
                    rows.append(measure(eng, size, samples_for(size, args.samples),
                                        args.timeout))
                    bars.advance(bar)
    add_ratios(rows, "size", "p50_ms", higher_is_better=False)
    title = f"Argument/result size sweep: echo(S bytes) -> S bytes, one at a time, {args.workers} workers"
    notes = ["MiB/s = 2 x S / p50 round trip (S goes out and comes back); x PPE / x dask / "
             "x parsl = that peer's p50 round trip over Fabric's at the same size (> 1: "
             "Fabric is faster)"]
    notes += [f"{r['engine']} at {r['size']}: {r['error']}" for r in rows if r["error"]]
    write_report("sizes", {"args": vars(args)}, title, COLUMNS + ratio_columns(rows),
                 rows, notes,
                 lambda p: plot(rows, p), args.out)
    return 0


COLUMNS = [("engine", "engine", "{}"), ("size", "size", "{}"), ("samples", "n", "{}"),
           ("p50_ms", "p50 ms", "{:,.2f}"), ("p90_ms", "p90 ms", "{:,.2f}"),
           ("mib_per_s", "MiB/s", "{:,.1f}")]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (a, b) = figure(2)
    for name in dict.fromkeys(r["engine"] for r in rows):
        ok = [r for r in rows if r["engine"] == name and not r["error"]]
        a.plot([r["bytes"] for r in ok], [r["p50_ms"] for r in ok], "o-", label=name)
        b.plot([r["bytes"] for r in ok], [r["mib_per_s"] for r in ok], "o-", label=name)
        for r in rows:
            if r["engine"] == name and r["error"]:
                a.axvline(r["bytes"], ls=":", color="grey")
    a.set_title("round trip p50 (dotted: a size that failed)")
    a.set_ylabel("ms")
    b.set_title("bandwidth, both directions")
    b.set_ylabel("MiB / s")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("argument = result size (bytes)")
        ax.legend(fontsize=8)
    finish(fig, path)
