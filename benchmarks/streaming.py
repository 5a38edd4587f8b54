"""HTTP streaming (``HttpUri``) beside the gRPC path, with ``streaming_worker.py``.

Two processes of the same workerkit worker run under `workerkit.testing.TestHost`, one
without ``WORKERKIT_HTTP_STREAMING`` (the gRPC path: the request inside the
`InvocationRequest`) and one with it (the request forwarded to its ``HttpUri`` by
``workerkit._hostside.proxy.HttpProxyClient``, which plays the host's proxy, with the
`InvocationRequest` carrying an empty `RpcHttp`). Every answer is checked.

- ``echo`` at ``IN_FLIGHT`` in flight, on both paths, interleaved per round: ``stream_run``
  records (calls/s, p50/p99, worker CPU per call) and the ratio "proxied HTTP echo @32 vs
  gRPC path" (information, no target). Both go through the same Python driver (grpclib
  host and aiohttp client), which sets part of the pace: compare them with each other.
- ``count``: one request body (1 GiB; 64 MiB in quick mode) sent in 1 MiB chunks and counted
  by the hook with ``async for chunk in req.stream()``: MB/s, and the worker's peak RSS
  during the transfer over its RSS before it (VmHWM, first reset to the RSS through
  /proc/<pid>/clear_refs, so a peak from the echo runs does not hide it; ``peak_reset`` false
  where that is refused: then an upper bound) and its RSS growth, target at most 64 MiB
  (``stream_body``).
- ``first``: a response whose first chunk is yielded at once and three more 20 ms apart:
  time to first byte (the request sent to the first chunk read) on the proxy, and the time to
  the whole response on the gRPC path, which gathers the body (``stream_ttfb``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from benchmarks.host import cpu_seconds, echo_run, memory_kib

HERE = Path(__file__).resolve().parent
WORKER = HERE / "streaming_worker.py"
IN_FLIGHT = 32
RSS_TARGET_MIB = 64
ECHO_LABEL = "proxied HTTP echo @32 vs gRPC path"
ECHO_BODY = b'{"message": "hello from the benchmark", "padding": "xxxxxxxxxxx"}'
MIB = 1 << 20
FIRST_BODY = b"first\nlater 0\nlater 1\nlater 2\n"
Emit = Callable[..., Any]


def available() -> str | None:
    """Why the scenario cannot run here (None when it can)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "aiohttp is not installed (workerkit[http])"
    return None


class _Side:
    """One worker process and how to call its functions."""

    def __init__(self, name: str, process: Any, conn: Any, ids: dict[str, str]) -> None:
        self.name, self.process, self.conn, self.ids = name, process, conn, ids
        self.proxy: Any = None

    @property
    def pid(self) -> int:
        return int(self.process.process.pid)

    async def echo(self) -> float:
        """One echo call, checked; its latency in seconds."""
        from workerkit import HttpRequest
        from workerkit._hostside.proxy import proxied_http_input
        from workerkit.convert import decode_output

        began = time.perf_counter()
        if self.proxy is None:
            request = HttpRequest(
                "POST",
                "http://localhost/api/echo",
                headers={"content-type": "application/json"},
                body=ECHO_BODY,
            )
            reply = await self.conn.invoke(self.ids["echo"], {"req": request})
            body = decode_output(reply.return_value).body
        else:
            pending = await self.conn.start_invocation(
                self.ids["echo"], {"req": proxied_http_input()}
            )
            response = await self.proxy.forward(
                pending.invocation_id,
                "POST",
                "/api/echo",
                headers={"content-type": "application/json"},
                body=ECHO_BODY,
            )
            if response.status != 200:
                raise RuntimeError(f"{self.name}: echo answered HTTP {response.status}")
            body = await response.read()
            reply = await pending.result(60)
        if reply.result.status != 1 or body != ECHO_BODY:
            raise RuntimeError(f"{self.name}: a wrong echo: {reply.result} {body[:80]!r}")
        return time.perf_counter() - began


async def _echo_run(side: _Side, calls: int) -> dict[str, Any]:
    return await echo_run(
        f"echo_{side.name}", side.echo, calls, IN_FLIGHT, lambda: cpu_seconds(side.pid)
    )


async def _body_run(side: _Side, size: int) -> dict[str, Any]:
    from workerkit._hostside.proxy import proxied_http_input

    chunk = bytes(MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // MIB):
            yield chunk

    exact = _reset_peak(side.pid)
    before = memory_kib(side.pid)
    began = time.perf_counter()
    pending = await side.conn.start_invocation(side.ids["count"], {"req": proxied_http_input()})
    response = await side.proxy.forward(
        pending.invocation_id,
        "POST",
        "/api/count",
        headers={"content-type": "application/octet-stream"},
        body=chunks(),
    )
    answer = await response.read()
    elapsed = time.perf_counter() - began
    reply = await pending.result(120)
    after = memory_kib(side.pid)
    if reply.result.status != 1 or response.status != 200 or answer != str(size).encode():
        raise RuntimeError(
            f"count: a wrong answer: {reply.result} HTTP {response.status} {answer[:80]!r}"
        )
    # The peak during the transfer over the RSS before it: exact once the peak was reset to
    # the RSS, else an upper bound (the peak may date from the echo runs).
    hwm = (after["VmHWM"] - before["VmRSS"]) / 1024
    rss = (after["VmRSS"] - before["VmRSS"]) / 1024
    return {
        "body_mib": size // MIB,
        "mb_s": round(size / elapsed / 1e6, 1),
        "seconds": round(elapsed, 3),
        "peak_growth_mib": round(hwm, 1),
        "rss_growth_mib": round(rss, 1),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "peak_reset": exact,
        "target_mib": RSS_TARGET_MIB,
        "verdict": "PASS" if hwm <= RSS_TARGET_MIB else "FAIL",
    }


def _reset_peak(pid: int) -> bool:
    """Reset process `pid`'s peak RSS (VmHWM) to its RSS now (Linux: ``5`` to
    /proc/<pid>/clear_refs); False where that cannot be done."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


async def _ttfb_run(grpc: _Side, http: _Side, calls: int) -> dict[str, Any]:
    from workerkit import HttpRequest
    from workerkit._hostside.proxy import proxied_http_input
    from workerkit.convert import decode_output

    firsts: list[float] = []
    wholes: list[float] = []
    gathered: list[float] = []
    for _ in range(calls):
        began = time.perf_counter()
        pending = await http.conn.start_invocation(http.ids["first"], {"req": proxied_http_input()})
        response = await http.proxy.forward(pending.invocation_id, "GET", "/api/first")
        if response.status != 200:
            raise RuntimeError(f"first: answered HTTP {response.status}")
        body = await response.read_chunk()
        firsts.append(time.perf_counter() - began)
        body += await response.read()
        wholes.append(time.perf_counter() - began)
        reply = await pending.result(60)
        if reply.result.status != 1 or body != FIRST_BODY:
            raise RuntimeError(f"first: a wrong answer: {reply.result} {body!r}")

        began = time.perf_counter()
        request = HttpRequest("GET", "http://localhost/api/first")
        reply = await grpc.conn.invoke(grpc.ids["first"], {"req": request})
        gathered.append(time.perf_counter() - began)
        output = decode_output(reply.return_value) if reply.result.status == 1 else None
        if output is None or output.status_code != 200 or output.body != FIRST_BODY:
            raise RuntimeError(f"first (gRPC path): a wrong answer: {reply.result}")
    return {
        "calls": calls,
        "ttfb_p50_ms": round(statistics.median(firsts) * 1000, 3),
        "ttfb_max_ms": round(max(firsts) * 1000, 3),
        "whole_p50_ms": round(statistics.median(wholes) * 1000, 3),
        "grpc_whole_p50_ms": round(statistics.median(gathered) * 1000, 3),
    }


async def _start(host: Any, name: str, streaming: bool) -> _Side:
    from workerkit.testing import http_bindings

    env = {k: v for k, v in os.environ.items() if k != "WORKERKIT_HTTP_STREAMING"}
    if streaming:
        env["WORKERKIT_HTTP_STREAMING"] = "true"
    process = await host.spawn([sys.executable, str(WORKER)], env=env)
    conn = process.connection
    conn.record = False  # as in tracing.py: the driver keeps no message
    init = await conn.init()
    if init.result.status != 1:
        raise RuntimeError(f"{name}: init failed: {init.result}")
    ids = {}
    for function in ("echo", "count", "first"):
        loaded = await conn.load_function(function, bindings=http_bindings())
        ids[function] = loaded.function_id
    side = _Side(name, process, conn, ids)
    if streaming:
        from workerkit._hostside.proxy import HttpProxyClient

        side.proxy = HttpProxyClient(init.capabilities["HttpUri"])
    return side


async def measure(emit: Emit, say: Callable[[str], None], *, quick: bool) -> dict[str, Any]:
    """Run the three scenarios; emit their records; return the figures for `table`."""
    from workerkit.testing import TestHost

    rounds, calls, warmup = (1, 300, 50) if quick else (3, 3000, 300)
    size = (64 if quick else 1024) * MIB
    ttfb_calls = 5 if quick else 30
    figures: dict[str, Any] = {}
    async with TestHost() as host:
        grpc = await _start(host, "grpc", streaming=False)
        http = await _start(host, "proxied", streaming=True)
        try:
            say(f"http streaming: echo @{IN_FLIGHT}, {rounds} x {calls} per path")
            for side in (grpc, http):
                await _echo_run(side, warmup)
            runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "proxied": []}
            for _ in range(rounds):
                for side in (grpc, http):
                    record = emit("stream_run", **await _echo_run(side, calls))
                    runs[side.name].append(record)
            for name, records in runs.items():
                figures[name] = {
                    key: statistics.median(r[key] for r in records)
                    for key in ("per_second", "p50_ms", "p99_ms", "worker_cpu_us")
                }
            ratio = figures["proxied"]["per_second"] / figures["grpc"]["per_second"]
            figures["ratio"] = emit(
                "ratio",
                label=ECHO_LABEL,
                numerator="workerkit-proxied",
                denominator="workerkit-grpc",
                figure="echo32_per_s",
                target=None,
                ratio=round(ratio, 3),
                verdict="info",
            )
            say(f"http streaming: a {size // MIB} MiB body through `count`")
            figures["body"] = emit("stream_body", **await _body_run(http, size))
            say(f"http streaming: time to first byte, {ttfb_calls} calls")
            figures["ttfb"] = emit("stream_ttfb", **await _ttfb_run(grpc, http, ttfb_calls))
        finally:
            for side in (grpc, http):
                if side.proxy is not None:
                    await side.proxy.close()
                await side.conn.terminate()
                await side.process.wait(30)
    return figures


def table(figures: dict[str, Any]) -> str:
    """The scenarios' figures for the console."""
    grpc, proxied = figures["grpc"], figures["proxied"]
    body, ttfb, ratio = figures["body"], figures["ttfb"], figures["ratio"]
    return "\n".join(
        [
            "HTTP streaming (streaming_worker.py)      gRPC path    proxied (HttpUri)",
            f"  echo @{IN_FLIGHT}: calls/s              {grpc['per_second']:>10,.0f}"
            f"   {proxied['per_second']:>10,.0f}",
            f"  echo @{IN_FLIGHT}: p50 / p99 ms        "
            f"{grpc['p50_ms']:>5.1f} / {grpc['p99_ms']:<5.1f}"
            f"  {proxied['p50_ms']:>5.1f} / {proxied['p99_ms']:.1f}",
            f"  echo @{IN_FLIGHT}: worker CPU µs/call    {grpc['worker_cpu_us']:>9.0f}"
            f"   {proxied['worker_cpu_us']:>10.0f}",
            f"  {ratio['label']}: {ratio['ratio']:.2f} (info)",
            f"  {body['body_mib']} MiB body counted by the hook: {body['mb_s']:,.1f} MB/s, worker"
            f" peak +{body['peak_growth_mib']:.1f} MiB, RSS +{body['rss_growth_mib']:.1f} MiB"
            f" (target ≤ {RSS_TARGET_MIB}: {body['verdict']})",
            f"  time to first byte p50 {ttfb['ttfb_p50_ms']:.2f} ms (whole response"
            f" {ttfb['whole_p50_ms']:.1f} ms; gathered on the gRPC path"
            f" {ttfb['grpc_whole_p50_ms']:.1f} ms)",
        ]
    )
