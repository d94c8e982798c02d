"""Smoke runs of the benchmark scenarios that compare Fabric with its peers.

Each scenario runs in its smallest setting, with Fabric (real hub and endpoint
processes) and ProcessPoolExecutor only, writing to tmp_path; the test checks
the files a user reads: the JSON (machine, versions, parameters, every row,
Fabric's ratios to the peer), the markdown table and the PNG. Speed is not
asserted here (benchmarks/README.md says how to measure it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.__main__ import main as bench
from fabric.cli import main as fabric_cli

pytestmark = pytest.mark.processes
PEERS = ["--peers", "process-pool,fabric"]


def run(argv: list[str], out: Path) -> dict:
    with pytest.raises(SystemExit) as exit_:
        bench([*argv, *PEERS, "--out", str(out)])
    assert exit_.value.code == 0
    return report(out, argv[0])


def report(out: Path, scenario: str) -> dict:
    [path] = out.glob(f"{scenario}-*.json")
    assert path.with_suffix(".md").read_text().count("\n|") >= 3  # header, rule, a row
    assert path.with_suffix(".png").stat().st_size > 1000
    payload = json.loads(path.read_text())
    m = payload["machine"]
    assert m["cpus"] >= 1 and m["memory_gb"] > 0 and m["cpu_model"] and m["os"] and m["python"]
    assert m["versions"]["fabric-fx"] and m["versions"]["grpcio"]
    assert {"parsl", "distributed", "ray"} <= set(m["versions"])  # None when not installed
    assert payload["scenario"] == scenario and payload["args"]["peers"] == PEERS[1]
    assert {r["engine"] for r in payload["rows"]} == {"process-pool", "fabric"}
    return payload


def fabric_rows(payload: dict) -> list[dict]:
    return [r for r in payload["rows"] if r["engine"] == "fabric"]


def test_durations_through_the_fabric_bench_alias(tmp_path):
    help_ = CliRunner().invoke(fabric_cli, ["bench", "--help"])  # the harness's own help
    assert help_.exit_code == 0 and "fabric bench" in help_.output
    assert all(s in help_.output for s in ("durations", "sizes", "batching", "workers", "routing"))
    result = CliRunner().invoke(fabric_cli, [
        "bench", "durations", "--durations-ms", "0,10", "--noop-tasks", "200", "--seconds",
        "0.2", *PEERS, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = report(tmp_path, "durations")
    rows = fabric_rows(payload)
    assert [r["duration_ms"] for r in rows] == [0, 10]
    assert rows[0]["efficiency"] is None and 0 < rows[1]["efficiency"] <= 1.05
    assert all(r["tasks_per_s"] > 0 and r["x_process-pool"] > 0 for r in rows)


def test_sizes_records_a_refused_size_as_its_result(tmp_path):
    payload = run(["sizes", "--sizes", "1K,1M", "--samples", "2",
                   "--hub-max-payload", "512K"], tmp_path)
    small, big = fabric_rows(payload)
    assert small["error"] is None and len(small["round_trip_samples_s"]) == 2
    assert small["mib_per_s"] > 0 and small["x_process-pool"] > 0
    assert big["mib_per_s"] is None and "PayloadTooLarge" in big["error"], big["error"]
    ppe_big = [r for r in payload["rows"] if r["engine"] == "process-pool"][1]
    assert ppe_big["error"] is None and ppe_big["bytes"] == 2**20


def test_batching_sweeps_batch_size_and_prefetch(tmp_path):
    payload = run(["batching", "--batches", "1,10", "--prefetch", "0,2", "--tasks", "200",
                   "--prefetch-tasks", "100"], tmp_path)
    rows = fabric_rows(payload)
    batch = {(r["api"], r["batch"]) for r in rows if r["sweep"] == "batch"}
    assert batch == {("submit", 0), ("batch_run", 1), ("batch_run", 10), ("map", 10)}
    assert sorted(r["prefetch"] for r in rows if r["sweep"] == "prefetch") == [0, 2]
    assert all(r["tasks_per_s"] > 0 and r["x_process-pool"] > 0 for r in rows)


def test_workers_scales_endpoints_against_the_same_total_workers(tmp_path):
    payload = run(["workers", "--endpoints", "1,2", "--workers", "1", "--task-ms", "5",
                   "--seconds", "0.2"], tmp_path)
    rows = fabric_rows(payload)
    assert [(r["endpoints"], r["total_workers"]) for r in rows] == [(1, 1), (2, 2)]
    ppe = sorted(r["total_workers"] for r in payload["rows"] if r["engine"] == "process-pool")
    assert ppe == [1, 2]
    assert all(0 < r["efficiency"] <= 1.05 and r["x_process-pool"] > 0 for r in rows)


def test_routing_reports_makespan_per_policy(tmp_path):
    payload = run(["routing", "--waves", "1", "--per-wave", "8", "--mix-ms", "5,10,20",
                   "--policies", "round-robin,smallest-eta"], tmp_path)
    rows = fabric_rows(payload)
    assert [r["policy"] for r in rows] == ["round-robin", "smallest-eta"]
    for r in rows:
        assert sum(map(int, r["split"].split("/"))) == 8
        assert r["makespan_s"] > 0 and r["vs_bound"] >= 1.0 and r["x_process-pool"] > 0
    assert payload["lower_bound_s"] > 0
