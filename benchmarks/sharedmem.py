"""Shared-memory data transfer beside the gRPC path, with ``sharedmem_worker.py``.

    python -m benchmarks.sharedmem [--quick] [--profile FILE]

A workerkit worker runs under `workerkit.testing.TestHost` with
``FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED=1`` (it reports
``SharedMemoryDataTransfer``), its maps in a private folder under ``/dev/shm``. The driver
plays the host: a ``blobTrigger`` function ``echo`` (``dataType: binary``) gets a blob and
sends it back as its ``copy`` output, one call at a time, 1, 16 and 64 MiB. The driver
writes the blob to a map file as the host does (not timed), sends the `InvocationRequest`
with an ``RpcSharedMemory`` reference, and times until the `InvocationResponse` arrives: the
worker reads the input map, runs the hook and writes its output map in that time. Then (not
timed) the driver deletes its map, reads the worker's and checks it byte for byte, and sends
``CloseSharedMemoryResourcesRequest`` (the worker deletes its map while the next call is
prepared). The gRPC path's figures are ``run.py``'s (its lean host; "16 MiB echo, MB/s"):
TestHost encodes and parses a 16 MiB inline message at a cost of its own that would hide
the worker's.

Records: ``sharedmem_run`` per size and round (MB/s one way = blob bytes per second of wall
time; p50; worker CPU per call from /proc);
``sharedmem_copies`` (full-size copies per 16 MiB echo in the worker, from ``strace``: each
anonymous allocation of the blob's size holds a copy, and so does each map file the worker
maps writable, since it copies the output into it; the host's map it only reads is not a
copy; as in copies.py, what the kernel copies between files or sockets and user space is not
counted, and is reported beside: the read and write calls that moved the blob whole);
``ratio`` records: 16 MiB MB/s shared memory vs the gRPC path's (info, when ``run.py``
measured it in the same run), and the targets: at least 1 GB/s one way, at most one
full-size copy per echo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.host import cpu_seconds, memory_kib

HERE = Path(__file__).resolve().parent
WORKER = HERE / "sharedmem_worker.py"
MIB = 1 << 20
SETTING = "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED"
DIRECTORIES = "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES"
MB_S_TARGET = 1000.0
COPIES_TARGET = 1.0
RATIO_LABEL = "16 MiB echo MB/s: shared memory vs gRPC"
#: glibc serves allocations of this size or more with their own mmap (as copies.py).
THRESHOLD = 8192
MMAP = re.compile(r"^\d+\s+mmap\(NULL, (\d+), ([A-Z_|]+), ([A-Z_|]+), (-?\d+),")
#: A read or write system call and the bytes it moved.
MOVED = re.compile(r"^\d+\s+(p?read64|p?write64|read|write|preadv2?|pwritev2?)\(.* = (\d+)$")
Emit = Callable[..., Any]


def available() -> str | None:
    """Why the scenario cannot run here (None when it can)."""
    if sys.platform != "linux":
        return "shared memory maps are files under /dev/shm: Linux only"
    return None


def _plan(quick: bool) -> tuple[list[tuple[int, int]], int]:
    """(size, calls) per size, and rounds."""
    if quick:
        return [(1 * MIB, 4), (16 * MIB, 2), (64 * MIB, 1)], 1
    return [(1 * MIB, 40), (16 * MIB, 8), (64 * MIB, 3)], 3


def _difference(sent: bytes, back: bytes, page: int = 4096) -> str:
    """How `back` differs from `sent`, by 4 KiB page: enough to tell a short write (a tail of
    zeros), a stale page or another map's content apart."""
    same = min(len(sent), len(back))
    pages = [
        start
        for start in range(0, same, page)
        if sent[start : min(start + page, same)] != back[start : min(start + page, same)]
    ]
    text = f"{len(sent)} bytes sent, {len(back)} back"
    if not pages:
        return text + f"; equal over the first {same}"
    zeros = all(not any(back[start : start + page]) for start in pages)
    return (
        text + f"; {len(pages)} of {-(-same // page)} pages differ, the first at byte"
        f" {pages[0]}, the last at {pages[-1]}" + ("; those are all zeros" if zeros else "")
    )


class _Side:
    """The worker process."""

    def __init__(self, name: str, process: Any, function_id: str, folders: list[Path]) -> None:
        self.name = name
        self.process = process
        self.conn = process.connection
        self.function_id = function_id
        self.folders = folders

    @property
    def pid(self) -> int:
        return int(self.process.process.pid)

    async def echo(self, payload: bytes) -> float:
        """One echo, checked; the seconds from sending the request to its response."""
        from workerkit._generated import AzureFunctionsRpcMessages as pb
        from workerkit._sharedmap import read_map, write_map

        created = write_map(payload, self.folders)
        try:
            reference = pb.RpcSharedMemory(
                name=created.name, offset=0, count=len(payload), type=pb.RpcDataType.bytes
            )
            began = time.perf_counter()
            pending = await self.conn.start_invocation(self.function_id, {"blob": reference})
            reply = await pending.result(300)
            elapsed = time.perf_counter() - began
        finally:
            created.delete()
        if reply.result.status != 1:
            raise RuntimeError(f"shared: the echo failed: {reply.result}")
        output = reply.output_data[0].rpc_shared_memory if reply.output_data else None
        if output is None:
            raise RuntimeError("shared: the output did not come through shared memory")
        with read_map(output.name, output.offset, output.count, self.folders) as view:
            echoed = bytes(view)
        await self.conn.close_shared_memory([output.name])
        if echoed != payload:
            raise RuntimeError(f"shared: a wrong echo: {_difference(payload, echoed)}")
        return elapsed


async def _start(
    host: Any, base: Path, *, command: list[str] | None = None, env: dict[str, str] | None = None
) -> _Side:
    from workerkit._sharedmap import directories
    from workerkit.testing import binding

    environment = {k: v for k, v in os.environ.items() if k != SETTING}
    environment[DIRECTORIES] = str(base)
    environment.update(env or {})
    environment[SETTING] = "1"
    process = await host.spawn(command or [sys.executable, str(WORKER)], env=environment)
    process.connection.record = False  # as in tracing.py: the driver keeps no message
    init = await process.connection.init()
    if init.result.status != 1:
        raise RuntimeError(f"init failed: {init.result}")
    if not init.capabilities.get("SharedMemoryDataTransfer"):
        raise RuntimeError("the worker does not report SharedMemoryDataTransfer")
    bindings = {
        "blob": binding("blobTrigger", "in", "binary"),
        "copy": binding("blob", "out", "binary"),
    }
    loaded = await process.connection.load_function("echo", bindings=bindings)
    return _Side("shared", process, loaded.function_id, directories({DIRECTORIES: str(base)}))


async def _run(side: _Side, payload: bytes, calls: int) -> dict[str, Any]:
    times = []
    cpu = cpu_seconds(side.pid)
    for _ in range(calls):
        times.append(await side.echo(payload))
    cpu = cpu_seconds(side.pid) - cpu
    size = len(payload)
    return {
        "mib": size // MIB,
        "calls": calls,
        "mb_s": round(size * calls / sum(times) / 1e6, 1),
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "worker_cpu_ms": round(cpu / calls * 1000, 2),
        "mb_per_worker_cpu_s": round(size * calls / cpu / 1e6, 1) if cpu else None,
        "loadavg_1min": float(Path("/proc/loadavg").read_text().split()[0]),
    }


async def _copies(host: Any, base: Path, size: int, echoes: int) -> dict[str, Any]:
    """Full-size copies per echo in a shared-memory worker traced with strace."""
    with tempfile.TemporaryDirectory(prefix="workerkit-shm-strace-") as tmp:
        log = Path(tmp) / "strace.log"
        calls = "trace=mmap,read,write,pread64,pwrite64,preadv,pwritev,preadv2,pwritev2"
        trace = ["strace", "-f", "-qq", "-e", calls, "-o", str(log)]
        side = await _start(
            host,
            base,
            command=[*trace, sys.executable, str(WORKER)],
            env={"MALLOC_MMAP_THRESHOLD_": str(THRESHOLD)},
        )
        try:
            payload = os.urandom(size)
            for _ in range(echoes):
                await side.echo(payload)
        finally:
            await side.conn.terminate(2)
            with contextlib.suppress(Exception):
                await side.process.wait(30)
        anonymous = written = read = moved = 0
        for line in log.read_text().splitlines():
            found = MOVED.match(line)
            if found is not None:
                moved += int(found[2]) >= size
                continue
            found = MMAP.match(line)
            if found is None:
                continue
            length, prot, flags = int(found[1]), found[2], found[3]
            if "MAP_ANONYMOUS" in flags and size <= length < size + 64 * 1024:
                anonymous += 1
            elif "MAP_SHARED" in flags and length == size + 9:
                if "PROT_WRITE" in prot:
                    written += 1
                else:
                    read += 1
    return {
        "mib": size // MIB,
        "echoes": echoes,
        "copies_per_echo": (anonymous + written) / echoes,
        "allocations_per_echo": anonymous / echoes,
        "maps_written_per_echo": written / echoes,
        "maps_read_per_echo": read / echoes,
        "full_size_syscalls_per_echo": moved / echoes,
    }


async def measure(
    emit: Emit,
    say: Callable[[str], None],
    *,
    quick: bool,
    grpc_mb_s: float | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Run the scenario; emit its records; return the figures for `table`. `grpc_mb_s` is
    the gRPC path's 16 MiB figure from the same run, for the ratio (None: not measured)."""
    from workerkit.testing import TestHost

    sizes, rounds = _plan(quick)
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="workerkit-bench-shm-", dir=shm if shm.is_dir() else None))
    runs: dict[int, list[dict[str, Any]]] = {}
    figures: dict[str, Any] = {"runs": runs}
    try:
        async with TestHost() as host:
            extra = {"WORKERKIT_BENCH_PROFILE": profile} if profile else {}
            side = await _start(host, base, env=extra)
            try:
                await side.echo(os.urandom(MIB))  # warm-up
                for size, calls in sizes:
                    payload = os.urandom(size)
                    say(f"shared memory: {size // MIB} MiB echo, {rounds} x {calls}")
                    for _ in range(rounds):
                        record = emit("sharedmem_run", **await _run(side, payload, calls))
                        runs.setdefault(size // MIB, []).append(record)
                figures["peak_mib"] = round(memory_kib(side.pid)["VmHWM"] / 1024, 1)
            finally:
                await side.conn.terminate(2)
                with contextlib.suppress(Exception):
                    await side.process.wait(30)
            if shutil.which("strace") and not quick:
                say("shared memory: full-size copies per 16 MiB echo (strace)")
                copies = await _copies(host, base, 16 * MIB, 2)
                figures["copies"] = emit("sharedmem_copies", **copies)
            else:
                why = "quick run" if quick else "strace is not installed"
                note = f"sharedmem copies: skipped ({why})"
                emit("skipped", note=note)
                say(note)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    medians = {mib: statistics.median(r["mb_s"] for r in records) for mib, records in runs.items()}
    figures["mb_s"] = medians
    shared16 = medians.get(16)
    both = shared16 is not None and grpc_mb_s
    figures["ratio"] = emit(
        "ratio",
        label=RATIO_LABEL,
        numerator="workerkit-sharedmem",
        denominator="workerkit",
        figure="payload16_mb_s",
        ratio=round(shared16 / grpc_mb_s, 3) if both and shared16 and grpc_mb_s else None,
        target=None,
        verdict="info" if both else "n/a",
    )
    figures["speed"] = emit(
        "ratio",
        label="16 MiB echo through shared memory, MB/s one way",
        numerator="workerkit-sharedmem",
        denominator=None,
        figure="payload16_mb_s",
        ratio=shared16,
        target=MB_S_TARGET,
        verdict="n/a" if shared16 is None else ("PASS" if shared16 >= MB_S_TARGET else "FAIL"),
    )
    copies_per_echo = figures.get("copies", {}).get("copies_per_echo")
    figures["copy_target"] = emit(
        "ratio",
        label="16 MiB echo through shared memory: full-size copies in the worker",
        numerator="workerkit-sharedmem",
        denominator=None,
        figure="copies16",
        ratio=copies_per_echo,
        target=COPIES_TARGET,
        verdict="n/a"
        if copies_per_echo is None
        else ("PASS" if copies_per_echo <= COPIES_TARGET else "FAIL"),
    )
    return figures


def table(figures: dict[str, Any]) -> str:
    """The scenario's figures for the console."""
    lines = ["shared memory (sharedmem_worker.py, blob echo, 1 in flight)"]
    for mib, records in sorted(figures["runs"].items()):
        mb_s = statistics.median(r["mb_s"] for r in records)
        p50 = statistics.median(r["p50_ms"] for r in records)
        cpu = statistics.median(r["worker_cpu_ms"] for r in records)
        lines.append(
            f"  {mib:>2} MiB echo: {mb_s:>8,.1f} MB/s one way, p50 {p50:.1f} ms,"
            f" worker CPU {cpu:.1f} ms/call"
        )
    copies = figures.get("copies")
    if copies:
        lines.append(
            f"  16 MiB echo: {copies['copies_per_echo']:.1f} full-size copies in the worker"
            f" ({copies['allocations_per_echo']:.1f} buffers allocated,"
            f" {copies['maps_written_per_echo']:.1f} maps written; plus"
            f" {copies['full_size_syscalls_per_echo']:.1f} whole-blob reads/writes by the kernel)"
        )
    for key in ("ratio", "speed", "copy_target"):
        record = figures[key]
        value = record["ratio"]
        shown = "n/a" if value is None else f"{value:,.2f}"
        bound = f" (target {record['target']:g})" if record["target"] is not None else ""
        lines.append(f"  {record['label']}: {shown} {record['verdict']}{bound}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sharedmem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the worker into FILE")
    args = parser.parse_args(argv)
    problem = available()
    if problem is not None:
        print(f"shared memory: skipped, {problem}", file=sys.stderr)
        return 2

    def emit(kind: str, **fields: Any) -> dict[str, Any]:
        record = {"kind": kind, **fields}
        print(json.dumps(record), flush=True)
        return record

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    figures = asyncio.run(measure(emit, say, quick=args.quick, profile=args.profile))
    say(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
