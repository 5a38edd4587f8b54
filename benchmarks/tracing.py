"""Tracing overhead: the echo worker with OpenTelemetry installed (no SDK configured) beside
the same worker with ``opentelemetry`` hidden (every import of it fails, as if absent).

Two processes of ``workerkit_echo.py`` (``async def`` echo) run under
`workerkit.testing.TestHost`; every `InvocationRequest` carries a new W3C ``trace_parent``,
as the host's always do. Rounds alternate between the two, ``IN_FLIGHT`` calls in flight;
``trace_run`` records (calls/s, p50/p99, worker CPU per call) and two ratios with the
target ≥ 0.95: "echo @32 with opentelemetry-api vs without" (calls/s: at most 5 % fewer),
and the worker's CPU per call without vs with (at most 5 % more). On a small machine the
calls/s are bounded by the driver, which shares the cores, so the CPU figure is the one that
sees the worker's own cost. Worker CPU is the scheduler's run time of all its threads
(``/proc/PID/task/*/schedstat``, nanoseconds), not the 10 ms ticks of ``/proc/PID/stat``.
Figures are medians over the rounds, with their spread (min-max). With the package
installed, each invocation's hook runs in the host's trace (its context attached, parsed
only when asked for); without a configured SDK no span is started.
"""

from __future__ import annotations

import glob
import os
import secrets
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.host import cpu_seconds, echo_run

HERE = Path(__file__).resolve().parent
WORKER = HERE / "workerkit_echo.py"
IN_FLIGHT = 32
TARGET = 0.95
LABEL = "echo @32 with opentelemetry-api vs without"
CPU_LABEL = "worker CPU/call @32 without opentelemetry-api vs with"
BODY = b'{"message": "hello from the benchmark", "padding": "xxxxxxxxxxx"}'
Emit = Callable[..., Any]

#: Starts the worker script (argv[1]) with every ``opentelemetry`` import failing.
HIDDEN = textwrap.dedent(
    """
    import runpy, sys

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    worker = sys.argv.pop(1)
    sys.argv[0] = worker
    runpy.run_path(worker, run_name="__main__")
    """
)


def _parent() -> str:
    """A new trace parent, as the host sends for every invocation (its activity's id)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def available() -> str | None:
    """Why the scenario cannot run here (None when it can)."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return "opentelemetry-api is not installed (workerkit[otel])"
    return None


def worker_cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, all threads, from the scheduler's nanosecond counts (the
    tick counts of /proc/PID/stat when schedstat is not there)."""
    total = 0
    found = False
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as stat:
                total += int(stat.read().split()[0])
            found = True
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    if found:
        return total / 1e9
    return cpu_seconds(pid)


class _Side:
    def __init__(self, name: str, process: Any, function_id: str) -> None:
        self.name, self.process, self.function_id = name, process, function_id
        self.conn = process.connection

    async def echo(self) -> float:
        from workerkit import HttpRequest
        from workerkit._generated import AzureFunctionsRpcMessages as pb
        from workerkit.convert import decode_output

        began = time.perf_counter()
        request = HttpRequest(
            "POST", "http://localhost/api/echo", headers={"content-type": "application/json"},
            body=BODY,
        )  # fmt: skip
        pending = await self.conn.start_invocation(
            self.function_id,
            {"req": request},
            trace_context=pb.RpcTraceContext(trace_parent=_parent()),
        )
        reply = await pending.result(60)
        if reply.result.status != 1 or decode_output(reply.return_value).body != BODY:
            raise RuntimeError(f"{self.name}: a wrong echo: {reply.result}")
        return time.perf_counter() - began


async def _run(side: _Side, calls: int) -> dict[str, Any]:
    pid = int(side.process.process.pid)
    return await echo_run(
        f"echo_{side.name}", side.echo, calls, IN_FLIGHT, lambda: worker_cpu_seconds(pid)
    )


async def _start(host: Any, name: str, hidden: bool) -> _Side:
    from workerkit.testing import http_bindings

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    command = (
        [sys.executable, "-c", HIDDEN, str(WORKER)] if hidden else [sys.executable, str(WORKER)]
    )
    process = await host.spawn(command, env=env)
    init = await process.connection.init()
    if init.result.status != 1:
        raise RuntimeError(f"{name}: init failed: {init.result}")
    # Keep no message: a record of every one grows the driver's heap, and its full
    # collections then stall whole rounds for longer each round (p99 77 -> 330 ms).
    process.connection.record = False
    loaded = await process.connection.load_function("echo", bindings=http_bindings())
    return _Side(name, process, loaded.function_id)


async def measure(emit: Emit, say: Callable[[str], None], *, quick: bool) -> dict[str, Any]:
    """Interleaved rounds on both workers; emit their records and the ratio; the figures."""
    from workerkit.testing import TestHost

    rounds, calls, warmup = (2, 300, 50) if quick else (9, 3000, 300)
    figures: dict[str, Any] = {}
    async with TestHost() as host:
        sides = [await _start(host, "otel", False), await _start(host, "no_otel", True)]
        try:
            say(f"tracing: echo @{IN_FLIGHT}, {rounds} x {calls} per worker, interleaved")
            for side in sides:
                await _run(side, warmup)
            runs: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
            for number in range(rounds):
                order = sides if number % 2 == 0 else sides[::-1]
                for side in order:
                    runs[side.name].append(emit("trace_run", **await _run(side, calls)))
            for name, records in runs.items():
                figures[name] = {
                    key: statistics.median(r[key] for r in records)
                    for key in ("per_second", "p50_ms", "p99_ms", "worker_cpu_us")
                }
                for key in ("per_second", "worker_cpu_us"):
                    figures[name][f"{key}_spread"] = (
                        min(r[key] for r in records),
                        max(r[key] for r in records),
                    )
            ratio = figures["otel"]["per_second"] / figures["no_otel"]["per_second"]
            cpu_ratio = figures["no_otel"]["worker_cpu_us"] / figures["otel"]["worker_cpu_us"]
            figures["cpu_ratio"] = emit(
                "ratio",
                label=CPU_LABEL,
                numerator="workerkit-no-otel",
                denominator="workerkit-otel",
                figure="echo32_worker_cpu_us",
                target=TARGET,
                ratio=round(cpu_ratio, 3),
                verdict="PASS" if cpu_ratio >= TARGET else "FAIL",
            )
            figures["ratio"] = emit(
                "ratio",
                label=LABEL,
                numerator="workerkit-otel",
                denominator="workerkit-no-otel",
                figure="echo32_per_s",
                target=TARGET,
                ratio=round(ratio, 3),
                verdict="PASS" if ratio >= TARGET else "FAIL",
            )
        finally:
            for side in sides:
                await side.conn.terminate()
                await side.process.wait(30)
    return figures


def table(figures: dict[str, Any]) -> str:
    """The figures for the console."""
    on, off = figures["otel"], figures["no_otel"]

    def spread(side: dict[str, Any], key: str) -> str:
        low, high = side[f"{key}_spread"]
        return f"{side[key]:,.0f} ({low:,.0f}-{high:,.0f})"

    lines = [
        "Tracing (workerkit_echo.py, no SDK)  with opentelemetry-api   without   (median, range)",
        f"  echo @{IN_FLIGHT}: calls/s             {spread(on, 'per_second'):>22}"
        f"   {spread(off, 'per_second')}",
        f"  echo @{IN_FLIGHT}: p50 / p99 ms        {on['p50_ms']:>10.1f} / {on['p99_ms']:<9.1f}"
        f"   {off['p50_ms']:.1f} / {off['p99_ms']:.1f}",
        f"  echo @{IN_FLIGHT}: worker CPU µs/call  {spread(on, 'worker_cpu_us'):>22}"
        f"   {spread(off, 'worker_cpu_us')}",
    ]
    for ratio in (figures["ratio"], figures["cpu_ratio"]):
        lines.append(
            f"  {ratio['label']}: {ratio['ratio']:.3f} (target ≥ {TARGET}: {ratio['verdict']})"
        )
    return "\n".join(lines)
