"""The benchmark driver still runs: its quickest mode against the bare grpclib baseline.

Asserts the shape of the output (JSON lines, summary, ratios, the skip notes for absent
official Python and Node.js workers), never speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

QUICK = [sys.executable, "-m", "benchmarks.run", "--quick"]
EXPECTED_SCENARIOS = {"echo", "echolog", "payload_1MiB", "payload_16MiB"}


def test_quick_run_against_bare_grpclib() -> None:
    absent = ("WORKERKIT_OFFICIAL_WORKER", "WORKERKIT_NODE_WORKER")
    env = {k: v for k, v in os.environ.items() if k not in absent}
    done = subprocess.run(
        [*QUICK, "--targets", "bare-grpclib,official,node"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"machine", "target", "cold_launch", "memory", "run", "summary", "ratio"} <= kinds
    assert records[-1]["kind"] == "done"

    skipped = sorted(r["note"].split(":")[0] for r in records if r["kind"] == "skipped")
    assert skipped == ["node", "official"]
    assert [r["target"] for r in records if r["kind"] == "target"] == ["bare-grpclib"]

    launches = [r for r in records if r["kind"] == "cold_launch"]
    assert len(launches) == 3
    assert all(0 < r["start_ms"] <= r["ready_ms"] for r in launches)
    # The floors, each round: the interpreter alone, and with asyncio and grpclib loaded.
    floors = [r for r in records if r["kind"] == "cold_floor"]
    assert sorted(r["what"] for r in floors) == sorted(
        ["python -c pass", "python -c 'import asyncio, grpclib.client'"] * 3
    )
    assert all(r["done_ms"] > 0 for r in floors)
    assert "spawn → python -c 'import asyncio, grpclib.client' done" in done.stderr

    runs = [r for r in records if r["kind"] == "run"]
    assert {r["scenario"] for r in runs} == EXPECTED_SCENARIOS
    assert {r["in_flight"] for r in runs if r["scenario"] == "echo"} == {1, 32, 128}
    for run in runs:
        assert run["errors"] == 0, run
        assert run["per_second"] > 0 and run["p50_ms"] <= run["p99_ms"]

    (summary,) = [r for r in records if r["kind"] == "summary"]
    for key in ("ready_ms", "echo32_per_s", "echo1_p50_ms", "log_per_s", "payload16_mb_s"):
        assert summary[key] is not None, key
    assert summary["rss_idle_mib"] > 0
    assert summary["peak_after_payloads_mib"] >= summary["rss_idle_mib"]

    # Warnings a worker logs outside invocations are kept as records: the bare worker has none.
    assert not [r for r in records if r["kind"] == "worker_warning"]

    ratios = [r for r in records if r["kind"] == "ratio"]
    assert ratios and all(r["verdict"] == "n/a" for r in ratios if r["numerator"] == "workerkit")
    assert "spawn → ready" in done.stderr and "ratios" in done.stderr


def test_quick_run_of_the_http_streaming_scenarios() -> None:
    """Proxied echo and the gRPC path of the same worker, a streamed request body, the time
    to first byte: every record present, every answer checked by the driver (exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--targets", "http-streaming"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert not [r for r in records if r["kind"] == "stream_error"]
    runs = [r for r in records if r["kind"] == "stream_run"]
    assert {r["scenario"] for r in runs} == {"echo_grpc", "echo_proxied"}
    for run in runs:
        assert run["in_flight"] == 32
        assert run["per_second"] > 0 and run["p50_ms"] <= run["p99_ms"]
    (ratio,) = [r for r in records if r["kind"] == "ratio" and r["label"].startswith("proxied")]
    assert (ratio["denominator"], ratio["verdict"]) == ("workerkit-grpc", "info")
    assert ratio["ratio"] > 0
    (body,) = [r for r in records if r["kind"] == "stream_body"]
    assert body["body_mib"] == 64 and body["mb_s"] > 0
    assert body["verdict"] in ("PASS", "FAIL") and body["target_mib"] == 64
    (ttfb,) = [r for r in records if r["kind"] == "stream_ttfb"]
    assert 0 < ttfb["ttfb_p50_ms"] <= ttfb["whole_p50_ms"]
    assert "HTTP streaming" in done.stderr and "time to first byte" in done.stderr


def test_quick_run_of_the_shared_memory_scenario() -> None:
    """1, 16 and 64 MiB blobs echoed through map files, each echo checked byte for byte by
    the driver (a wrong one ends the run with an error): exit 0 and a record per size."""
    done = subprocess.run(
        [*QUICK, "--targets", "shared-memory"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert not [r for r in records if r["kind"] == "sharedmem_error"]
    runs = [r for r in records if r["kind"] == "sharedmem_run"]
    assert {r["mib"] for r in runs} == {1, 16, 64}
    assert all(r["mb_s"] > 0 and r["calls"] >= 1 for r in runs)
    (speed,) = [
        r
        for r in records
        if r["kind"] == "ratio" and r["figure"] == "payload16_mb_s" and r["denominator"] is None
    ]
    assert speed["ratio"] > 0 and speed["verdict"] in ("PASS", "FAIL")
    assert records[-1]["kind"] == "done"
    assert "shared memory (sharedmem_worker.py" in done.stderr
