"""Count how many times a worker process copies a large body while echoing it.

    python -m benchmarks.copies [--targets workerkit,bare-grpclib] [--mib 16] [--echoes 3]

Each worker runs under ``strace`` (needed on PATH) with glibc's mmap threshold pinned at
8 KiB, so every buffer of 8 KiB or more the process allocates is one ``mmap`` call. A buffer
about the size of the body (body .. body + 64 KiB) holds a whole copy of it; the count per
echo is the number of full-size copies made on the way in and out, in user space (what the
kernel copies between sockets and user space is not counted). Buffers grown by ``mremap``
are not counted: they are resized, not copied. ``make bench`` runs this too when strace is
installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from benchmarks import _pb2
from benchmarks.host import BenchHost, connect, read_app, spawn
from benchmarks.run import Target, _base_env, make_targets

MIB = 1024 * 1024
#: glibc serves every allocation of this size or more with its own mmap. It is below the
#: HTTP/2 frame size, so 16 KiB frames held until a message is complete do not leave a
#: body-sized hole in the heap that a later copy could reuse without an mmap.
THRESHOLD = 8192
MMAP = re.compile(r"^\d+\s+mmap\(NULL, (\d+),")
MREMAP = re.compile(r"^\d+\s+mremap\(0x[0-9a-f]+, \d+, (\d+),")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def count(log: Path, size: int) -> tuple[int, int]:
    """Full-size mmaps, and mremaps to full size, in an ``strace -f`` log."""
    mmaps = mremaps = 0
    for line in log.read_text().splitlines():
        if (found := MMAP.match(line)) and size <= int(found[1]) < size + 64 * 1024:
            mmaps += 1
        elif (found := MREMAP.match(line)) and size <= int(found[1]) < size + 64 * 1024:
            mremaps += 1
    return mmaps, mremaps


async def measure(host: BenchHost, target: Target, size: int, echoes: int) -> float:
    """Full-size copies of the body per echo in `target`'s worker (raises when wrong)."""
    with tempfile.TemporaryDirectory(prefix="workerkit-copies-") as tmp:
        log = Path(tmp) / "strace.log"
        env = {**_base_env(target.app, target.worker_directory), **target.env}
        env["MALLOC_MMAP_THRESHOLD_"] = str(THRESHOLD)
        command = ["strace", "-f", "-qq", "-e", "trace=mmap,mremap", "-o", str(log)]
        process, connected = await spawn(host, command + target.command, cwd=target.app, env=env)
        try:
            connection = await connect(process, connected, 60)
            await connection.init(target.app, target.worker_directory, 60)
            functions = {f.name: f for f in read_app(target.app)}
            await connection.load(list(functions.values()), 60)
            body = os.urandom(size)
            template = connection.template(functions["echo"], body, "application/octet-stream")
            result = await connection.run(template, body, echoes, 1, timeout=300)
            if result.errors:
                raise RuntimeError(f"{target.name}: wrong replies: {result.first_error}")
        finally:
            # End the traced worker, then let strace exit by itself: killed, it would lose
            # the end of its log (and leave a traced child running).
            for child in _children(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.process.wait(), 10)
            await process.stop(None)
        # Counted once strace has exited and written everything; nothing else in a worker
        # allocates buffers of the body's size.
        return count(log, size)[0] / echoes


def available() -> bool:
    return shutil.which("strace") is not None


async def main_async(args: argparse.Namespace) -> int:
    if not available():
        print("strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    official = os.environ.get("WORKERKIT_OFFICIAL_WORKER")
    with tempfile.TemporaryDirectory(prefix="workerkit-bench-pb2-") as tmp:
        pb2_dir = _pb2.compile_into(Path(tmp))
        names = [name.strip() for name in args.targets.split(",")]
        targets, notes = make_targets(names, Path(official) if official else None, pb2_dir)
        host = BenchHost(_pb2.load(pb2_dir))
        await host.start()
        try:
            for target in targets:
                copies = await measure(host, target, args.mib * MIB, args.echoes)
                print(f"{target.name}: {copies:.1f} full-size copies per {args.mib} MiB echo")
        finally:
            await host.stop()
    for note in notes:
        print(note)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.copies", description=__doc__)
    parser.add_argument("--targets", default="workerkit,bare-grpclib,bare-grpcio")
    parser.add_argument("--mib", type=int, default=16, help="body size in MiB")
    parser.add_argument("--echoes", type=int, default=3)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
