"""The benchmark driver: plays the Functions host for workerkit and its baselines, side by side.

    python -m benchmarks.run [--quick] [--targets a,b] [--official-worker DIR]

JSON lines (one per measurement, then one per summary figure and ratio) go to stdout;
progress and the final table go to stderr. See benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _pb2, hostprocs, node, sharedmem, streaming, tracing
from benchmarks.host import (
    BenchHost,
    Connection,
    Function,
    Process,
    connect,
    cpu_seconds,
    memory_kib,
    read_app,
    spawn,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"
EXAMPLE_WORKER = ROOT / "examples" / "python" / "worker.py"
EXAMPLE_APP = APPS / "python"
OFFICIAL_ENV = "WORKERKIT_OFFICIAL_WORKER"
MIB = 1024 * 1024
SMALL_BODY = b'{"name":"Ada","n":1,"tags":["x","y"],"text":"hello, world"}'
SMALL_METADATA = {"name": "Ada", "n": 1, "tags": ["x", "y"], "text": "hello, world"}
LOG_LINES = 10
#: Not a worker played against the driver's host: the Python example through `workerkit
#: host` with 1 and 2 worker processes (hostprocs.py).
HOST_SCENARIO = "workerkit-host"
#: Not a worker target either: HTTP streaming (HttpUri) beside the gRPC path (streaming.py).
STREAMING_SCENARIO = "http-streaming"
#: Nor this: the echo worker with and without opentelemetry importable (tracing.py).
TRACING_SCENARIO = "tracing"
#: Nor this: a blob echoed through shared-memory map files (sharedmem.py).
SHAREDMEM_SCENARIO = "shared-memory"
DEFAULT_TARGETS = (
    "workerkit", "bare-grpclib", "bare-grpcio", "official", "node", HOST_SCENARIO,
    STREAMING_SCENARIO, TRACING_SCENARIO, SHAREDMEM_SCENARIO,
)  # fmt: skip
ALL_TARGETS = (*DEFAULT_TARGETS, "workerkit-minimal", "workerkit-sync")


def default_targets() -> str:
    """The default set; with the Python example present, also the minimal echo (the SDK
    without the example's own work, e.g. its thread hop for plain def functions)."""
    names = list(DEFAULT_TARGETS)
    if EXAMPLE_WORKER.exists() and EXAMPLE_APP.is_dir():
        names.insert(1, "workerkit-minimal")
    return ",".join(names)


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    launches: int = 15
    runs: int = 3
    invocations: int = 5000
    concurrency: tuple[int, ...] = (1, 32, 128)
    log_invocations: int = 2000
    log_in_flight: int = 32
    warmup: int = 1000
    payloads: tuple[tuple[int, int], ...] = ((1 * MIB, 20), (16 * MIB, 4))
    payload_runs: int = 3
    idle_settle: float = 1.0
    #: 16 MiB echoes per worker traced for copies (0: skip; needs strace)
    copies_echoes: int = 2
    #: workerkit host with 1 and 2 worker processes: CPU-bound requests per run (one run
    #: per round, `runs` rounds), in flight, and warm-up requests
    host_requests: int = 240
    host_in_flight: int = 8
    host_warmup: int = 16

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            launches=3,
            runs=1,
            invocations=300,
            log_invocations=100,
            warmup=50,
            payloads=((1 * MIB, 2), (16 * MIB, 1)),
            payload_runs=1,
            idle_settle=0.2,
            copies_echoes=0,
            host_requests=24,
            host_warmup=4,
        )


@dataclass
class Target:
    """A worker to measure: its command (the host's argv is appended) and its app."""

    name: str
    description: str
    command: list[str]
    app: Path
    worker_directory: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """The HTTP request an echo scenario sends."""

    body: bytes
    content_type: str
    metadata: dict[str, Any] | None = None


SMALL = Request(SMALL_BODY, "application/json", SMALL_METADATA)


@dataclass
class Live:
    """A target's long-lived worker for the invocation scenarios."""

    target: Target
    process: Process
    connection: Connection
    functions: dict[str, Function]


# -- output -----------------------------------------------------------------------------------


class Report:
    """JSON lines to stdout as results arrive; everything kept for the summary."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"kind": kind, **fields}
        self.records.append(record)
        print(json.dumps(record), flush=True)
        return record

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())
        ]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_1min": loadavg(),
    }


# -- targets ----------------------------------------------------------------------------------


def _base_env(app: Path, worker_directory: Path) -> dict[str, str]:
    # Workers run as deployed: bytecode caches are written (the first, unmeasured launch
    # writes them) and read.
    dropped = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["FUNCTIONS_WORKER_DIRECTORY"] = str(worker_directory)
    env["FUNCTIONS_APPLICATION_DIRECTORY"] = str(app)
    return env


def official_problem(directory: Path) -> str | None:
    """Why `directory` is not a prepared official worker (None when it is)."""
    needed = [
        directory / ".venv" / "bin" / "python",
        directory / "python" / "test" / "worker.py",
        directory / "azure_functions_worker" / "protos" / "FunctionRpc_pb2.py",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    return f"missing {', '.join(missing)}" if missing else None


def official_version(directory: Path) -> str:
    text = (directory / "azure_functions_worker" / "version.py").read_text()
    for line in text.splitlines():
        if line.startswith("VERSION"):
            return line.partition("=")[2].strip().strip("'\"")
    return "unknown"


def make_targets(
    names: Sequence[str], official: Path | None, pb2_dir: Path, node_worker: Path | None = None
) -> tuple[list[Target], list[str]]:
    """The targets that can run here, and notes on those that cannot."""
    python = sys.executable
    minimal_app = APPS / "official"  # the bare and minimal workers only read the metadata
    targets: list[Target] = []
    notes: list[str] = []
    for name in names:
        if name == "workerkit" and EXAMPLE_WORKER.exists() and EXAMPLE_APP.is_dir():
            targets.append(
                Target(
                    name,
                    "workerkit: examples/python/worker.py with benchmarks/apps/python",
                    [python, str(EXAMPLE_WORKER)],
                    EXAMPLE_APP,
                    EXAMPLE_WORKER.parent,
                )
            )
        elif name in ("workerkit", "workerkit-minimal", "workerkit-sync"):
            sync = name == "workerkit-sync"
            description = "workerkit: benchmarks/workerkit_echo.py, " + (
                "plain def hook (thread pool)" if sync else "async def hook"
            )
            if name == "workerkit":
                description += " (examples/python not present yet)"
            targets.append(
                Target(
                    name,
                    description,
                    [python, str(HERE / "workerkit_echo.py")],
                    minimal_app,
                    HERE,
                    {"WORKERKIT_BENCH_SYNC": "1"} if sync else {},
                )
            )
        elif name == "bare-grpclib":
            targets.append(
                Target(
                    name,
                    "baseline 1: grpclib + betterproto2, no SDK",
                    [python, str(HERE / "bare_grpclib_worker.py")],
                    minimal_app,
                    HERE,
                )
            )
        elif name == "bare-grpcio":
            targets.append(
                Target(
                    name,
                    "baseline 2: grpcio + protobuf, no SDK",
                    [python, str(HERE / "bare_grpcio_worker.py")],
                    minimal_app,
                    HERE,
                    {_pb2.ENV: str(pb2_dir)},
                )
            )
        elif name == "official":
            if official is None:
                notes.append(
                    f"official: skipped, no prepared worker given (--official-worker DIR or "
                    f"{OFFICIAL_ENV}; see benchmarks/README.md)"
                )
                continue
            problem = official_problem(official)
            if problem is not None:
                notes.append(f"official: skipped, {official} is not prepared: {problem}")
                continue
            app = APPS / "official"
            targets.append(
                Target(
                    name,
                    f"baseline 3: official Python worker {official_version(official)} "
                    f"({official}), classic function.json + main(req)",
                    [
                        str(official / ".venv" / "bin" / "python"),
                        str(official / "python" / "test" / "worker.py"),
                    ],
                    app,
                    official / "python",
                    {
                        "PYTHONPATH": str(official),
                        "AzureWebJobsScriptRoot": str(app),
                        "FUNCTIONS_WORKER_RUNTIME": "python",
                        # What the host adds for the python runtime (HOST_PROTOCOL §1.3).
                        "PYTHON_THREADPOOL_THREAD_COUNT": "1000",
                    },
                )
            )
        elif name == "node":
            if node_worker is None:
                notes.append(
                    f"node: skipped, no prepared worker given (--node-worker DIR or {node.ENV}; "
                    "see benchmarks/README.md)"
                )
                continue
            problem = node.problem(node_worker)
            if problem is not None:
                notes.append(f"node: skipped, {node_worker} is not usable: {problem}")
                continue
            targets.append(
                Target(
                    name,
                    f"official Node.js worker {node.version(node_worker)} ({node_worker}), "
                    "classic function.json + index.js (v3 model)",
                    node.command(node_worker),
                    node.APP,
                    node_worker,
                    node.env(),
                )
            )
        else:
            raise SystemExit(f"unknown target {name!r} (known: {', '.join(ALL_TARGETS)})")
    return targets, notes


# -- phases -----------------------------------------------------------------------------------


async def start(
    host: BenchHost, target: Target, timeout: float = 60.0
) -> tuple[Process, Connection, dict[str, float]]:
    """Launch and bring a worker to ready: StartStream, init, every function loaded."""
    env = {**_base_env(target.app, target.worker_directory), **target.env}
    process, connected = await spawn(host, target.command, cwd=target.app, env=env)
    try:
        connection = await connect(process, connected, timeout)
        await connection.init(target.app, target.worker_directory, timeout)
        await connection.load(read_app(target.app), timeout)
    except BaseException:
        await process.stop()
        raise
    ready = time.perf_counter()
    times = {
        "start_ms": (connection.started_at - process.spawned_at) * 1000,
        "ready_ms": (ready - process.spawned_at) * 1000,
    }
    return process, connection, times


async def cold_start(
    host: BenchHost, targets: Sequence[Target], plan: Plan, report: Report
) -> None:
    say(f"cold start: {plan.launches} launches per worker, interleaved (+1 unmeasured each)")
    for launch in range(-1, plan.launches):
        for target in targets:
            process, _, times = await start(host, target)
            memory = memory_kib(process.pid)
            await process.stop()
            if launch >= 0:
                report.emit(
                    "cold_launch",
                    target=target.name,
                    launch=launch,
                    **{k: round(v, 2) for k, v in times.items()},
                    rss_at_ready_kib=memory["VmRSS"],
                )
        # The floors: the interpreter alone, and with asyncio and grpclib loaded, as the
        # workerkit targets get it (issue 18).
        for what, code in node.FLOORS.items():
            floor_ms = await node.floor_launch(EXAMPLE_APP, _base_env(EXAMPLE_APP, HERE), code)
            if launch >= 0:
                report.emit("cold_floor", what=what, launch=launch, done_ms=round(floor_ms, 2))


def record_memory(report: Report, target: str, pid: int, phase: str) -> None:
    """The worker's RSS now and its peak so far (VmHWM), as a `memory` record."""
    memory = memory_kib(pid)
    report.emit(
        "memory", target=target, phase=phase, rss_kib=memory["VmRSS"], peak_kib=memory["VmHWM"]
    )


async def bring_up(host: BenchHost, target: Target, plan: Plan, report: Report) -> Live:
    process, connection, _ = await start(host, target)
    await asyncio.sleep(plan.idle_settle)
    record_memory(report, target.name, process.pid, "idle")
    functions = {f.name: f for f in read_app(target.app)}
    return Live(target, process, connection, functions)


async def invocations(
    live: Live,
    report: Report | None,
    *,
    function: str,
    total: int,
    in_flight: int,
    request: Request,
    round_: int,
    scenario: str,
) -> dict[str, Any] | None:
    connection = live.connection
    body = request.body
    template = connection.template(
        live.functions[function], body, request.content_type, request.metadata
    )
    logs = LOG_LINES if function == "echolog" else 0
    pid = live.process.pid
    worker_cpu, host_cpu = cpu_seconds(pid), time.process_time()
    result = await connection.run(template, body, total, in_flight, logs=logs, tag=round_)
    worker_cpu, host_cpu = cpu_seconds(pid) - worker_cpu, time.process_time() - host_cpu
    if report is None:
        if result.errors:
            raise RuntimeError(f"{live.target.name} warm-up: {result.first_error}")
        return None
    fields: dict[str, Any] = {
        "target": live.target.name,
        "scenario": scenario,
        "round": round_,
        "in_flight": in_flight,
        "invocations": total,
        "body_bytes": len(body),
    }
    if result.errors:
        say(f"  {live.target.name} {scenario}: {result.errors} wrong replies: {result.first_error}")
        return report.emit("run", **fields, errors=result.errors, first_error=result.first_error)
    wall = result.last_reply - result.first_send
    latencies = result.latencies
    return report.emit(
        "run",
        **fields,
        errors=0,
        seconds=round(wall, 4),
        per_second=round(total / wall, 1),
        mb_per_second=round(total * len(body) / wall / 1e6, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        worker_cpu=round(worker_cpu / wall, 2),
        host_cpu=round(host_cpu / wall, 2),
        worker_cpu_us=round(worker_cpu / total * 1e6, 1),
        host_cpu_us=round(host_cpu / total * 1e6, 1),
        system_logs=connection.system_logs,
    )


async def throughput(lives: Sequence[Live], plan: Plan, report: Report) -> None:
    say(
        f"throughput: {plan.runs} rounds x {plan.invocations} echo invocations at "
        f"{'/'.join(map(str, plan.concurrency))} in flight, + {plan.log_invocations} logging "
        f"(10 lines) at {plan.log_in_flight}; targets interleaved within each round"
    )
    for live in lives:
        await invocations(
            live,
            None,
            function="echo",
            total=plan.warmup,
            in_flight=32,
            round_=99,
            scenario="warmup",
            request=SMALL,
        )
        await invocations(
            live,
            None,
            function="echolog",
            total=max(plan.warmup // 10, 10),
            in_flight=32,
            round_=98,
            scenario="warmup",
            request=SMALL,
        )
    for round_ in range(plan.runs):
        for live in lives:
            for in_flight in plan.concurrency:
                await invocations(
                    live,
                    report,
                    function="echo",
                    total=plan.invocations,
                    in_flight=in_flight,
                    round_=round_,
                    scenario="echo",
                    request=SMALL,
                )
            await invocations(
                live,
                report,
                function="echolog",
                total=plan.log_invocations,
                in_flight=plan.log_in_flight,
                round_=round_,
                scenario="echolog",
                request=SMALL,
            )
        say(f"  round {round_ + 1}/{plan.runs} done (load average {loadavg():.2f})")
    for live in lives:
        record_memory(report, live.target.name, live.process.pid, "after_small")


async def payloads(lives: Sequence[Live], plan: Plan, report: Report) -> None:
    sizes = ", ".join(f"{size // MIB} MiB x {count}" for size, count in plan.payloads)
    say(f"large payloads: {sizes}, 1 in flight, {plan.payload_runs} runs each")
    for size, count in plan.payloads:
        request = Request(os.urandom(size), "application/octet-stream")
        for round_ in range(plan.payload_runs):
            for live in lives:
                await invocations(
                    live,
                    report,
                    function="echo",
                    total=count,
                    in_flight=1,
                    request=request,
                    round_=round_,
                    scenario=f"payload_{size // MIB}MiB",
                )
    for live in lives:
        record_memory(report, live.target.name, live.process.pid, "after_payloads")


async def copies(host: BenchHost, targets: Sequence[Target], plan: Plan, report: Report) -> None:
    from benchmarks import copies as tracer  # it imports this module

    if not plan.copies_echoes:
        return
    if not tracer.available():
        note = "copies: skipped, strace is not installed (apt-get install strace)"
        report.emit("skipped", note=note)
        say(note)
        return
    say(f"copies: {plan.copies_echoes} traced 16 MiB echoes per worker (strace)")
    for target in targets:
        try:
            found = await tracer.measure(host, target, 16 * MIB, plan.copies_echoes)
        except Exception as exc:
            say(f"  {target.name}: copies not measured: {exc}")
            continue
        report.emit("copies", target=target.name, body_mib=16, copies_per_echo=found)


# -- summary ----------------------------------------------------------------------------------


def _median(records: Iterable[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if key in r and not r.get("errors")]
    return statistics.median(values) if values else None


def summarise(report: Report, targets: Sequence[Target], plan: Plan) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for target in targets:
        name = target.name
        figures: dict[str, Any] = {}
        launches = report.of("cold_launch", target=name)
        figures["start_ms"] = _median(launches, "start_ms")
        figures["ready_ms"] = _median(launches, "ready_ms")
        for in_flight in plan.concurrency:
            runs = report.of("run", target=name, scenario="echo", in_flight=in_flight)
            failed = [r for r in runs if r.get("errors")]
            figures[f"echo{in_flight}_failed"] = len(failed)
            figures[f"echo{in_flight}_per_s"] = None if failed else _median(runs, "per_second")
            figures[f"echo{in_flight}_p50_ms"] = None if failed else _median(runs, "p50_ms")
            figures[f"echo{in_flight}_p99_ms"] = None if failed else _median(runs, "p99_ms")
            figures[f"echo{in_flight}_worker_cpu_us"] = _median(runs, "worker_cpu_us")
            figures[f"echo{in_flight}_host_cpu"] = _median(runs, "host_cpu")
            figures[f"echo{in_flight}_worker_cpu"] = _median(runs, "worker_cpu")
        logged = report.of("run", target=name, scenario="echolog")
        figures["log_failed"] = sum(1 for r in logged if r.get("errors"))
        figures["log_per_s"] = None if figures["log_failed"] else _median(logged, "per_second")
        echo = figures.get(f"echo{plan.log_in_flight}_per_s")
        if figures["log_per_s"] and echo:
            extra = 1e6 / figures["log_per_s"] - 1e6 / echo
            figures["log_us_per_line"] = round(extra / LOG_LINES, 1)
        for size, _ in plan.payloads:
            runs = report.of("run", target=name, scenario=f"payload_{size // MIB}MiB")
            bad = any(r.get("errors") for r in runs)
            figures[f"payload{size // MIB}_mb_s"] = None if bad else _median(runs, "mb_per_second")
        traced = report.of("copies", target=name)
        figures["copies16"] = traced[-1]["copies_per_echo"] if traced else None
        for phase in ("idle", "after_small", "after_payloads"):
            found = report.of("memory", target=name, phase=phase)
            if found:
                figures[f"rss_{phase}_mib"] = round(found[-1]["rss_kib"] / 1024, 1)
                figures[f"peak_{phase}_mib"] = round(found[-1]["peak_kib"] / 1024, 1)
        summary[name] = figures
        report.emit("summary", target=name, description=target.description, **figures)
    return summary


#: (label, numerator target, denominator target, figure, target bound, higher is better)
RATIOS: tuple[tuple[str, str, str, str, float | None, bool], ...] = (
    ("throughput @32 vs baseline 1", "workerkit", "bare-grpclib", "echo32_per_s", 0.8, True),
    ("p50 @1 vs baseline 1", "workerkit", "bare-grpclib", "echo1_p50_ms", 1.25, False),
    ("cold start (ready) vs official", "workerkit", "official", "ready_ms", 0.5, False),
    ("idle RSS vs official", "workerkit", "official", "rss_idle_mib", 1.0, False),
    ("16 MiB body copies vs baseline 2", "workerkit", "bare-grpcio", "copies16", 1.0, False),
    ("throughput @32 vs official", "workerkit", "official", "echo32_per_s", None, True),
    ("p50 @1 vs official", "workerkit", "official", "echo1_p50_ms", None, False),
    ("throughput @1 vs baseline 1", "workerkit", "bare-grpclib", "echo1_per_s", None, True),
    ("throughput @128 vs baseline 1", "workerkit", "bare-grpclib", "echo128_per_s", None, True),
    ("cold start (ready) vs baseline 1", "workerkit", "bare-grpclib", "ready_ms", None, False),
    ("16 MiB MB/s vs baseline 1", "workerkit", "bare-grpclib", "payload16_mb_s", None, True),
    ("16 MiB body copies vs official", "workerkit", "official", "copies16", None, False),
    (
        "baseline 1 throughput @32 vs official",
        "bare-grpclib",
        "official",
        "echo32_per_s",
        None,
        True,
    ),
    (
        "baseline 2 throughput @32 vs baseline 1",
        "bare-grpcio",
        "bare-grpclib",
        "echo32_per_s",
        None,
        True,
    ),
    (
        "logging: µs per line vs baseline 1",
        "workerkit",
        "bare-grpclib",
        "log_us_per_line",
        None,
        False,
    ),
)


def ratios(report: Report, summary: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for label, top, bottom, figure, bound, higher in (*RATIOS, *node.RATIOS):
        a = summary.get(top, {}).get(figure)
        b = summary.get(bottom, {}).get(figure)
        if a is None or b is None or not b:
            missing = top if a is None else bottom
            rows.append((label, "n/a", f"{missing} not measured"))
            report.emit(
                "ratio",
                label=label,
                numerator=top,
                denominator=bottom,
                figure=figure,
                ratio=None,
                target=bound,
                verdict="n/a",
            )
            continue
        ratio = a / b
        verdict = ""
        if bound is not None:
            ok = ratio >= bound if higher else ratio <= bound
            verdict = ("PASS" if ok else "FAIL") + f" (target {'≥' if higher else '≤'} {bound})"
        rows.append((label, f"{ratio:.2f}", verdict))
        report.emit(
            "ratio",
            label=label,
            numerator=top,
            denominator=bottom,
            figure=figure,
            ratio=round(ratio, 3),
            target=bound,
            verdict=verdict.split(" ")[0] if verdict else "info",
        )
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:  # not measured in this run (e.g. --quick), or the measurement failed
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _cell(key: str, digits: int = 1) -> Callable[[dict[str, Any]], str]:
    def get(figures: dict[str, Any]) -> str:
        return _fmt(figures.get(key), digits)

    return get


def _cpu_cell(in_flight: int) -> Callable[[dict[str, Any]], str]:
    def get(figures: dict[str, Any]) -> str:
        worker = _fmt(figures.get(f"echo{in_flight}_worker_cpu"), 2)
        return f"{worker}/{_fmt(figures.get(f'echo{in_flight}_host_cpu'), 2)}"

    return get


def table(summary: dict[str, dict[str, Any]], plan: Plan, rows: list[tuple[str, str, str]]) -> str:
    names = list(summary)
    lines: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("spawn → StartStream, ms (median)", _cell("start_ms")),
        ("spawn → ready, ms (median)", _cell("ready_ms")),
    ]
    for c in plan.concurrency:
        lines += [
            (f"echo @{c}: invocations/s", _cell(f"echo{c}_per_s", 0)),
            (f"echo @{c}: p50 ms", _cell(f"echo{c}_p50_ms", 3)),
            (f"echo @{c}: p99 ms", _cell(f"echo{c}_p99_ms", 3)),
            (f"echo @{c}: worker CPU µs/inv", _cell(f"echo{c}_worker_cpu_us")),
            (f"echo @{c}: CPU use worker/host", _cpu_cell(c)),
        ]
    lines += [
        (f"echo+10 logs @{plan.log_in_flight}: inv/s", _cell("log_per_s", 0)),
        ("logging cost, µs per line", _cell("log_us_per_line")),
    ]
    for size, _ in plan.payloads:
        lines.append((f"{size // MIB} MiB echo: MB/s", _cell(f"payload{size // MIB}_mb_s")))
    lines += [
        ("16 MiB echo: full-size copies", _cell("copies16")),
        ("RSS idle, MiB", _cell("rss_idle_mib")),
        ("peak RSS after small echoes, MiB", _cell("peak_after_small_mib")),
        ("peak RSS after payloads, MiB", _cell("peak_after_payloads_mib")),
    ]
    width = max(len(label) for label, _ in lines) + 2
    columns = [max(len(n), 12) + 2 for n in names]
    out = ["".ljust(width) + "".join(n.rjust(w) for n, w in zip(names, columns, strict=True))]
    for label, get in lines:
        cells = "".join(get(summary[n]).rjust(w) for n, w in zip(names, columns, strict=True))
        out.append(label.ljust(width) + cells)
    out.append("")
    out.append(
        "ratios (workerkit = "
        + ("the measured workerkit target" if "workerkit" in summary else "not measured")
        + ")"
    )
    label_width = max(len(r[0]) for r in rows) + 2
    for label, ratio, verdict in rows:
        out.append(f"  {label.ljust(label_width)}{ratio.rjust(6)}  {verdict}")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    plan = Plan.quick() if args.quick else Plan()
    if args.invocations:
        plan = Plan(**{**plan.__dict__, "invocations": args.invocations})
    report = Report()
    official = args.official_worker or os.environ.get(OFFICIAL_ENV) or None
    node_worker = args.node_worker or os.environ.get(node.ENV) or None
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="workerkit-bench-pb2-") as tmp:
        pb2_dir = _pb2.compile_into(Path(tmp))
        pb = _pb2.load(pb2_dir)
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
        host_scenario = HOST_SCENARIO in names
        streaming_scenario = STREAMING_SCENARIO in names
        tracing_scenario = TRACING_SCENARIO in names
        sharedmem_scenario = SHAREDMEM_SCENARIO in names
        scenarios = (HOST_SCENARIO, STREAMING_SCENARIO, TRACING_SCENARIO, SHAREDMEM_SCENARIO)
        targets, notes = make_targets(
            [n for n in names if n not in scenarios],
            Path(official).resolve() if official else None,
            pb2_dir,
            Path(node_worker).resolve() if node_worker else None,
        )
        report.emit(
            "machine", **machine(), quick=args.quick, host_impl=args.host_impl, plan=plan.__dict__
        )
        for target in targets:
            report.emit(
                "target",
                target=target.name,
                description=target.description,
                command=target.command,
                app=str(target.app),
            )
            say(f"{target.name}: {target.description}")
        for note in notes:
            report.emit("skipped", note=note)
            say(note)
        if not targets and not any(n in scenarios for n in names):
            say("nothing to measure")
            return 1
        if targets:
            await measure_workers(targets, plan, report, args.host_impl, pb)
        host_figures = await host_processes(plan, report) if host_scenario else None
        stream_figures = await http_streaming(report, args.quick) if streaming_scenario else None
        trace_figures = await tracing_overhead(report, args.quick) if tracing_scenario else None
        shm_figures = await shared_memory(report, args.quick) if sharedmem_scenario else None
    summary = summarise(report, targets, plan)
    floors = {what: _median(report.of("cold_floor", what=what), "done_ms") for what in node.FLOORS}
    rows = ratios(report, {**summary, **{w: {"ready_ms": ms} for w, ms in floors.items()}})
    elapsed = time.perf_counter() - began
    report.emit("done", seconds=round(elapsed, 1), loadavg_1min=loadavg())
    say("")
    if targets:
        say(table(summary, plan, rows))
        for what, ms in floors.items():
            say(f"cold-start floor, spawn → {what} done: {_fmt(ms)} ms (median)")
    if host_figures is not None:
        say(hostprocs.table(host_figures, report.of("ratio", label=hostprocs.RATIO_LABEL)[-1]))
    if stream_figures:
        say(streaming.table(stream_figures))
    if trace_figures:
        say(tracing.table(trace_figures))
    if shm_figures:
        say(sharedmem.table(shm_figures))
    for note in notes:
        say(note)
    busy = sorted({r["target"] for r in report.of("run") if r.get("host_cpu", 0) >= 0.8})
    busiest = max((r.get("host_cpu", 0.0) for r in report.of("run")), default=0.0)
    say(f"driver CPU use: at most {busiest:.2f} of a core in a run")
    if busy:
        say(
            f"  the driver was near a full core in some runs of {', '.join(busy)}: "
            "those figures are lower bounds (the driver, not the worker, set the pace)"
        )
    say(f"{elapsed:.0f} s; load average now {loadavg():.2f} on {os.cpu_count()} CPUs")
    failed = any(r.get("errors") for r in report.of("run") + report.of("host_run"))
    failed = failed or bool(report.of("stream_error")) or bool(report.of("trace_error"))
    failed = failed or bool(report.of("sharedmem_error"))
    return 1 if failed else 0


async def measure_workers(
    targets: Sequence[Target], plan: Plan, report: Report, host_impl: str, pb: Any
) -> None:
    """The scenarios played against the driver's own host, for every worker target."""
    host = BenchHost(pb, host_impl)
    await host.start()
    lives: list[Live] = []
    try:
        await cold_start(host, targets, plan, report)
        for target in targets:
            lives.append(await bring_up(host, target, plan, report))
        await throughput(lives, plan, report)
        await payloads(lives, plan, report)
        await copies(host, targets, plan, report)
    finally:
        for live in lives:
            for warning in live.connection.warnings:
                report.emit("worker_warning", target=live.target.name, message=warning)
                say(f"  {live.target.name} logged: {warning}")
            await live.process.stop(live.connection)
        await host.stop()


async def host_processes(plan: Plan, report: Report) -> dict[int, float | None] | None:
    """The Python example through `workerkit host` with 1 and 2 worker processes, and the
    ratio "2 processes vs 1" (hostprocs.py); None when it cannot run here."""
    problem = hostprocs.available()
    if problem is not None:
        note = f"{HOST_SCENARIO}: skipped, {problem}"
        report.emit("skipped", note=note)
        say(note)
        report.emit("ratio", **hostprocs.ratio_record({}))
        return None
    figures = await hostprocs.measure(
        report.emit,
        say,
        requests=plan.host_requests,
        in_flight=plan.host_in_flight,
        rounds=plan.runs,
        warmup=plan.host_warmup,
    )
    report.emit("ratio", **hostprocs.ratio_record(figures))
    return figures


async def http_streaming(report: Report, quick: bool) -> dict[str, Any] | None:
    """Proxied HTTP echo vs the gRPC path, a large streamed request body and the time to
    first byte of a streamed response (streaming.py); None when it cannot run here."""
    problem = streaming.available()
    if problem is not None:
        note = f"{STREAMING_SCENARIO}: skipped, {problem}"
        report.emit("skipped", note=note)
        say(note)
        return None
    try:
        return await streaming.measure(report.emit, say, quick=quick)
    except Exception as exc:  # a wrong answer or a failed worker: no figures, exit 1
        report.emit("stream_error", error=f"{type(exc).__name__}: {exc}")
        say(f"{STREAMING_SCENARIO}: failed: {type(exc).__name__}: {exc}")
        return None


async def shared_memory(report: Report, quick: bool) -> dict[str, Any] | None:
    """A blob echoed through shared-memory map files, 1, 16 and 64 MiB, beside the gRPC
    path's 16 MiB figure from this run (sharedmem.py); None when it cannot run here."""
    problem = sharedmem.available()
    if problem is not None:
        note = f"{SHAREDMEM_SCENARIO}: skipped, {problem}"
        report.emit("skipped", note=note)
        say(note)
        return None
    grpc = _median(report.of("run", target="workerkit", scenario="payload_16MiB"), "mb_per_second")
    try:
        return await sharedmem.measure(report.emit, say, quick=quick, grpc_mb_s=grpc)
    except Exception as exc:  # a wrong answer or a failed worker: no figures, exit 1
        report.emit("sharedmem_error", error=f"{type(exc).__name__}: {exc}")
        say(f"{SHAREDMEM_SCENARIO}: failed: {type(exc).__name__}: {exc}")
        return None


async def tracing_overhead(report: Report, quick: bool) -> dict[str, Any] | None:
    """The echo worker with opentelemetry-api installed (no SDK) vs without it, and the
    ratio with its 5 % target (tracing.py); None when it cannot run here."""
    problem = tracing.available()
    if problem is not None:
        note = f"{TRACING_SCENARIO}: skipped, {problem}"
        report.emit("skipped", note=note)
        say(note)
        return None
    try:
        return await tracing.measure(report.emit, say, quick=quick)
    except Exception as exc:  # a wrong answer or a failed worker: no figures, exit 1
        report.emit("trace_error", error=f"{type(exc).__name__}: {exc}")
        say(f"{TRACING_SCENARIO}: failed: {type(exc).__name__}: {exc}")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--targets",
        default=default_targets(),
        help=f"comma-separated, from {', '.join(ALL_TARGETS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--official-worker",
        metavar="DIR",
        help=f"a prepared azure-functions-python-worker 4.34 checkout (default: ${OFFICIAL_ENV})",
    )
    parser.add_argument(
        "--node-worker",
        metavar="DIR",
        help=f"a built Azure/azure-functions-nodejs-worker checkout (default: ${node.ENV})",
    )
    parser.add_argument("--invocations", type=int, help="invocations per echo run")
    parser.add_argument(
        "--host-impl",
        choices=("grpclib", "grpcio"),
        default="grpclib",
        help="the driver's gRPC server library (default: %(default)s, the cheaper per "
        "invocation for most workers; see benchmarks/README.md)",
    )
    args = parser.parse_args(argv)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
