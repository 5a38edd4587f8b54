"""HTTP throughput of workerkit's Python example through ``workerkit host``, with 1 and with 2
worker processes (``FUNCTIONS_WORKER_PROCESS_COUNT``): does a second process use the second
core?

Two ``workerkit host`` processes run side by side on 127.0.0.1, both serving
``apps/python_cpu`` with ``examples/python`` (the example's own ``worker.config.json``, its
interpreter set to this one through ``languageWorkers__pyworker__defaultExecutablePath``):
one with 1 worker process, one with 2. Each has all its workers started and initialized
before anything is measured. The app's ``burn`` function is plain ``def`` pure-Python
arithmetic (``STEPS`` steps, ~20 ms on the reference machine), so one worker process, whose
GIL serialises its thread pool, uses at most one core. The driver (aiohttp, keep-alive)
keeps ``in_flight`` requests open, checks every answer (200 and the right number) and times
each; the two hosts are measured one after the other in every round, after a warm-up.

Records: ``host_run`` per measurement (``processes``, requests/s, p50/p99, the cores used by
its workers, by the host process and by the driver, from /proc, and the load average),
``host_summary`` per process count (medians), and the ``ratio`` "2 processes vs 1" (target
>= 1.5) in `ratio_record`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.host import cpu_seconds

HERE = Path(__file__).resolve().parent
APP = HERE / "apps" / "python_cpu"
WORKER_DIR = HERE.parent / "examples" / "python"
STEPS = 300_000
PROCESS_COUNTS = (1, 2)
RATIO_LABEL = "2 processes vs 1"
RATIO_TARGET = 1.5
_STARTED = re.compile(r"Worker process started and initialized: pid (\d+)")
_URL = re.compile(r"Host started: (http://\S+)")


def expected_answer(steps: int = STEPS) -> bytes:
    """What ``burn`` answers (the same arithmetic as apps/python_cpu/burn)."""
    total = 0
    for i in range(steps):
        total = (total * 31 + i) % 1_000_003
    return str(total).encode()


def available() -> str | None:
    """Why the scenario cannot run here (None when it can)."""
    if not (WORKER_DIR / "worker.py").exists():
        return "examples/python is missing"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "aiohttp (workerkit[host]) is not installed"
    return None


@dataclass
class RunningHost:
    """One ``workerkit host`` subprocess and what its console said."""

    processes: int
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    url: str = ""
    reader: asyncio.Task[None] | None = None

    @property
    def worker_pids(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := _STARTED.search(line))]

    async def wait_for(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.returncode is not None or time.monotonic() > deadline:
                tail = "".join(self.lines[-20:])
                raise RuntimeError(f"workerkit host ({self.processes}): no {what}:\n{tail}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)  # drains, terminates its workers
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader is not None:
            self.reader.cancel()


async def start_host(processes: int, timeout: float = 120.0) -> RunningHost:
    """``workerkit host`` with `processes` workers, once all of them are initialized."""
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "FUNCTIONS_WORKER_PROCESS_COUNT": str(processes),
        "languageWorkers__pyworker__defaultExecutablePath": sys.executable,
    }
    command = [sys.executable, "-m", "workerkit", "host", str(APP), "--worker",
               str(WORKER_DIR), "--port", "0"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=HERE.parent,
    )
    host = RunningHost(processes, process)

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:  # every line is read: the pipe never fills
            line = raw.decode(errors="replace")
            if not host.url and (match := _URL.search(line)):
                host.url = match.group(1)
            if len(host.lines) < 200 or "Worker process" in line or "rror" in line:
                host.lines.append(line)

    host.reader = asyncio.create_task(read())
    try:
        await host.wait_for(lambda: bool(host.url), "Host started line", timeout)
        await host.wait_for(
            lambda: len(host.worker_pids) >= processes, f"{processes} workers", timeout
        )
    except BaseException:
        await host.stop()
        raise
    return host


@dataclass
class Result:
    seconds: float
    latencies: list[float]
    errors: int
    first_error: str | None


async def drive(url: str, total: int, in_flight: int, expected: bytes) -> Result:
    """`total` GETs of ``burn``, `in_flight` at a time, every answer checked."""
    import aiohttp

    target = f"{url}/api/burn?n={STEPS}"
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    remaining = total

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, errors, first_error
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            async with session.get(target) as reply:
                body = await reply.read()
            latencies.append(time.perf_counter() - began)
            if reply.status != 200 or body != expected:
                errors += 1
                first_error = first_error or f"{reply.status} {body[:200]!r}"

    connector = aiohttp.TCPConnector(limit=in_flight, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(in_flight)))
        seconds = time.perf_counter() - began
    return Result(seconds, latencies, errors, first_error)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(
    emit: Callable[..., dict[str, Any]],
    say: Callable[[str], None],
    *,
    requests: int,
    in_flight: int,
    rounds: int,
    warmup: int,
) -> dict[int, float | None]:
    """Run the scenario (module docstring); requests/s (median of the rounds) per process
    count, None where a run failed."""
    expected = expected_answer()
    say(
        f"workerkit host, examples/python, CPU-bound HTTP ({STEPS} steps per call):"
        f" {rounds} rounds x {requests} requests at {in_flight} in flight, with"
        f" {' and '.join(map(str, PROCESS_COUNTS))} worker processes"
    )
    hosts: list[RunningHost] = []
    runs: list[dict[str, Any]] = []
    try:
        for count in PROCESS_COUNTS:
            hosts.append(await start_host(count))
        for host in hosts:
            result = await drive(host.url, warmup, in_flight, expected)
            if result.errors:
                raise RuntimeError(f"warm-up with {host.processes}: {result.first_error}")
        for round_ in range(rounds):
            for host in hosts:
                runs.append(await _measure_once(host, emit, round_, requests, in_flight, expected))
            say(f"  round {round_ + 1}/{rounds} done")
    finally:
        for host in hosts:
            await host.stop()
    figures: dict[int, float | None] = {}
    for count in PROCESS_COUNTS:
        mine = [r for r in runs if r["processes"] == count]
        failed = any(r["errors"] for r in mine) or not mine
        per_second = None if failed else statistics.median(r["per_second"] for r in mine)
        figures[count] = per_second
        emit(
            "host_summary",
            target=f"workerkit-host-{count}",
            processes=count,
            per_second=per_second,
            p50_ms=None if failed else statistics.median(r["p50_ms"] for r in mine),
            worker_cpu=None if failed else statistics.median(r["worker_cpu"] for r in mine),
            host_cpu=None if failed else statistics.median(r["host_cpu"] for r in mine),
        )
    return figures


async def _measure_once(
    host: RunningHost,
    emit: Callable[..., dict[str, Any]],
    round_: int,
    requests: int,
    in_flight: int,
    expected: bytes,
) -> dict[str, Any]:
    pids = host.worker_pids
    workers_before = sum(cpu_seconds(pid) for pid in pids)
    host_before = cpu_seconds(host.process.pid)
    driver_before = time.process_time()
    result = await drive(host.url, requests, in_flight, expected)
    workers = sum(cpu_seconds(pid) for pid in pids) - workers_before
    host_cpu = cpu_seconds(host.process.pid) - host_before
    driver = time.process_time() - driver_before
    fields: dict[str, Any] = {
        "target": f"workerkit-host-{host.processes}",
        "scenario": "host_http",
        "processes": host.processes,
        "round": round_,
        "requests": requests,
        "in_flight": in_flight,
        "errors": result.errors,
    }
    if result.errors:
        return emit("host_run", **fields, first_error=result.first_error)
    return emit(
        "host_run",
        **fields,
        seconds=round(result.seconds, 3),
        per_second=round(requests / result.seconds, 1),
        p50_ms=round(_percentile(result.latencies, 0.5) * 1000, 2),
        p99_ms=round(_percentile(result.latencies, 0.99) * 1000, 2),
        worker_cpu=round(workers / result.seconds, 2),
        host_cpu=round(host_cpu / result.seconds, 2),
        driver_cpu=round(driver / result.seconds, 2),
        loadavg_1min=float(Path("/proc/loadavg").read_text().split()[0]),
    )


def ratio_record(figures: dict[int, float | None]) -> dict[str, Any]:
    """The "2 processes vs 1" ratio record's fields (kind ``ratio``)."""
    one, two = figures.get(1), figures.get(2)
    fields: dict[str, Any] = {
        "label": RATIO_LABEL,
        "numerator": "workerkit-host-2",
        "denominator": "workerkit-host-1",
        "figure": "host_http_per_s",
        "target": RATIO_TARGET,
    }
    if not one or two is None:
        return {**fields, "ratio": None, "verdict": "n/a"}
    ratio = two / one
    return {
        **fields,
        "ratio": round(ratio, 3),
        "verdict": "PASS" if ratio >= RATIO_TARGET else "FAIL",
    }


def table(figures: dict[int, float | None], record: dict[str, Any]) -> str:
    cells = ", ".join(
        f"{count} process{'es' if count > 1 else ''}: "
        + (f"{value:,.1f}/s" if value is not None else "—")
        for count, value in figures.items()
    )
    ratio = record["ratio"]
    shown = f"{ratio:.2f}" if ratio is not None else "n/a"
    return (
        f"workerkit host, examples/python, CPU-bound HTTP: {cells}\n"
        f"  {RATIO_LABEL}: {shown}  {record['verdict']} (target ≥ {RATIO_TARGET})"
    )
