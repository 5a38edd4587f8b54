"""Shared-memory data transfer through `workerkit host` (workerkit/emulator/_sharedmem.py):
the Python example (examples/python) as a real worker process under a real `workerkit host`
subprocess, its maps in a temporary ``FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES``.

What the emulator does is what the host does (Azure/azure-functions-host): inputs of 1 MiB
and more through maps it creates and deletes after the response (``ToRpcInvocationRequest``
in src/WebJobs.Script.Grpc/Extensions/ScriptInvocationContextExtensions.cs,
``TryCloseSharedMemoryResources`` in src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs),
nulls as empty references, outputs read from the worker's maps and closed with
``CloseSharedMemoryResourcesRequest``. Every test ends with no file left in the directory.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import sys
from pathlib import Path

import pytest
from conftest import eventually
from emulator_support import HostSubprocess, request, write_worker

from workerkit.emulator._sharedmem import setting_enabled

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python"
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="map files are a Linux feature")

STORAGE = {"connection": "AzureWebJobsStorage"}
FUNCTIONS = {
    # A blob (bytes) in, the same bytes out to a blob: through maps both ways.
    "blobecho": (
        [
            {
                "type": "blobTrigger",
                "direction": "in",
                "name": "blob",
                "path": "in/{name}",
                "dataType": "binary",
                **STORAGE,
            },
            {
                "type": "blob",
                "direction": "out",
                "name": "copy",
                "path": "out/{name}",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        """
import hashlib, logging
from pyfunc import Out

def main(blob: bytes, copy: Out[bytes]) -> None:
    logging.info("RECEIVED %s %d %s", type(blob).__name__, len(blob),
                 hashlib.sha256(blob).hexdigest())
    copy.set(blob)
""",
    ),
    # A queue message (text) in, the same text out to a queue.
    "textecho": (
        [
            {
                "type": "queueTrigger",
                "direction": "in",
                "name": "msg",
                "queueName": "in",
                **STORAGE,
            },
            {"type": "queue", "direction": "out", "name": "copy", "queueName": "out", **STORAGE},
        ],
        """
import hashlib, logging
from pyfunc import Out

def main(msg: str, copy: Out[str]) -> None:
    logging.info("RECEIVED %s %d %s", type(msg).__name__, len(msg),
                 hashlib.sha256(msg.encode()).hexdigest())
    copy.set(msg)
""",
    ),
    # A null input (the emulator has no storage: every non-trigger input is null).
    "nullin": (
        [
            {
                "type": "queueTrigger",
                "direction": "in",
                "name": "msg",
                "queueName": "in",
                **STORAGE,
            },
            {
                "type": "blob",
                "direction": "in",
                "name": "extra",
                "path": "in/x",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        """
import logging

def main(msg: str, extra: bytes) -> None:
    logging.info("RECEIVED extra=%r msg=%r", extra, msg)
""",
    ),
    # The worker process dies while it holds a map of the emulator's.
    "crash": (
        [
            {
                "type": "blobTrigger",
                "direction": "in",
                "name": "blob",
                "path": "c/{name}",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        """
import logging, os, sys

def main(blob: bytes) -> None:
    logging.info("CRASHING with %d bytes", len(blob))
    sys.stderr.flush()
    os._exit(3)
""",
    ),
    # Held until the test creates the file RELEASE names (bounded), then echoes.
    "held": (
        [
            {
                "type": "blobTrigger",
                "direction": "in",
                "name": "blob",
                "path": "h/{name}",
                "dataType": "binary",
                **STORAGE,
            },
            {
                "type": "blob",
                "direction": "out",
                "name": "copy",
                "path": "o/{name}",
                "dataType": "binary",
                **STORAGE,
            },
        ],
        """
import logging, os, time
from pyfunc import Out

def main(blob: bytes, copy: Out[bytes]) -> None:
    logging.info("HOLDING %d bytes", len(blob))
    deadline = time.monotonic() + 30
    while not os.path.exists(os.environ["RELEASE"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    copy.set(blob)
""",
    ),
}


def _app(root: Path, settings: dict[str, str]) -> Path:
    app = root / "app"
    app.mkdir()
    (app / "host.json").write_text(json.dumps({"version": "2.0"}))
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "pyworker",
        "languageWorkers__pyworker__defaultExecutablePath": sys.executable,
        **settings,
    }
    (app / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    for name, (bindings, code) in FUNCTIONS.items():
        folder = app / name
        folder.mkdir()
        (folder / "function.json").write_text(
            json.dumps({"scriptFile": "__init__.py", "bindings": bindings})
        )
        (folder / "__init__.py").write_text(code.lstrip())
    return app


def _files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


class SharedHost:
    """`workerkit host` with the Python example, shared memory on, maps under `base`."""

    def __init__(self, tmp_path: Path, *, enabled: str = "1") -> None:
        self.base = tmp_path / "shm"
        self.base.mkdir()
        self.release = tmp_path / "release"
        app = _app(
            tmp_path,
            {
                "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED": enabled,
                "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES": str(self.base),
                "RELEASE": str(self.release),
            },
        )
        self.host = HostSubprocess(app, EXAMPLE)

    def post(self, function: str, text: str) -> None:
        body = json.dumps({"input": text}).encode()
        reply = request("POST", f"{self.host.url}/admin/functions/{function}", body)
        assert reply.status == 202, reply.body

    def wait(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        return self.host.wait_for(pattern, timeout)

    def finished(self, function: str, count: int = 1) -> None:
        """Wait until `function` has ended `count` times (succeeded or failed)."""
        pattern = re.compile(rf"Executed 'Functions\.{function}' \((Succeeded|Failed)")
        eventually(
            lambda: len(pattern.findall(self.host.output)) >= count,
            lambda: f"{function} to finish {count} time(s):\n{self.host.output[-4000:]}",
            60,
        )

    def no_maps(self) -> None:
        eventually(
            lambda: not _files(self.base),
            lambda: f"no map files left, found {_files(self.base)}:\n{self.host.output[-3000:]}",
            30,
        )

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.host.process.send_signal(signum)
        return self.host.wait_exit(60)

    def close(self) -> None:
        self.host.close()


@pytest.fixture
def shared(tmp_path: Path):  # type: ignore[no-untyped-def]
    started = SharedHost(tmp_path)
    try:
        yield started
    finally:
        started.close()


def _ascii(size: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789 ", k=size))


def test_setting_parsed_as_the_host_parses_it() -> None:
    # ResolveSharedTransferEnablementState: bool.TryParse, else int.TryParse == 1.
    for on in ("1", "true", "True", " TRUE ", "+1", "01"):
        assert setting_enabled(on), on
    for off in (None, "", "0", "false", "yes", "2", "1.0", "on", "-1"):
        assert not setting_enabled(off), off


def test_3_mib_bytes_through_maps_both_ways_and_nothing_left_after_a_normal_stop(
    shared: SharedHost,
) -> None:
    payload = _ascii(3 * MIB, 1)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    shared.post("blobecho", payload)
    shared.finished("blobecho")
    output = shared.host.output
    assert "input 'blob' sent through shared memory: 3145728 bytes" in output, output[-3000:]
    assert f"RECEIVED bytes 3145728 {digest}" in output, output[-3000:]
    assert f"output 'copy' read from shared memory: 3145728 bytes, SHA-256 {digest}" in output, (
        output[-3000:]
    )
    assert "Executed 'Functions.blobecho' (Succeeded" in output
    shared.no_maps()  # the host's input map deleted, the worker's output map closed
    assert shared.stop() == 0
    assert list(shared.base.iterdir()) == []  # its AzureFunctions folder removed too


def test_2_mib_utf8_text_and_a_null_input(shared: SharedHost) -> None:
    unit = "héllo wörld ✓ 🙂 \u4e16\u754c "
    text = unit * (2 * MIB // len(unit.encode()) + 1)
    encoded = text.encode()
    digest = hashlib.sha256(encoded).hexdigest()
    shared.post("textecho", text)
    shared.finished("textecho")
    output = shared.host.output
    assert f"input 'msg' sent through shared memory: {len(encoded)} bytes" in output
    assert f"RECEIVED str {len(text)} {digest}" in output, output[-3000:]
    assert f"output 'copy' read from shared memory: {len(encoded)} bytes, SHA-256 {digest}" in (
        output
    )
    shared.post("nullin", "small")
    shared.finished("nullin")
    assert "RECEIVED extra=None msg='small'" in shared.host.output, shared.host.output[-3000:]
    assert "input 'msg' sent through shared memory" not in shared.host.output.split("nullin")[-1]
    shared.no_maps()
    assert shared.stop() == 0
    assert _files(shared.base) == []


def test_a_worker_crash_leaves_no_map_behind(shared: SharedHost) -> None:
    shared.post("crash", _ascii(2 * MIB, 2))
    shared.finished("crash")  # (its log record may die with it)
    output = shared.host.output
    assert "input 'blob' sent through shared memory: 2097152 bytes" in output, output[-3000:]
    assert "Executed 'Functions.crash' (Failed" in output
    # Which the host sees first, the process's exit or its stream's end, is a race.
    assert re.search(
        r"the worker (process exited with status 3|'s stream ended) during the invocation", output
    ), output[-3000:]
    shared.no_maps()
    # The restarted worker still gets maps, and they are still cleaned up.
    payload = _ascii(MIB + 1, 3)
    shared.post("blobecho", payload)
    shared.finished("blobecho")
    assert f"RECEIVED bytes {MIB + 1} {hashlib.sha256(payload.encode()).hexdigest()}" in (
        shared.host.output
    )
    shared.no_maps()
    assert shared.stop() == 0
    assert _files(shared.base) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopping_with_an_invocation_holding_maps_leaves_nothing(
    shared: SharedHost, signum: int
) -> None:
    shared.post("held", _ascii(4 * MIB, 4))
    shared.wait(r"HOLDING 4194304 bytes")
    assert _files(shared.base)  # the input map, while the function runs
    shared.host.process.send_signal(signum)
    shared.wait(r"Stopping: draining invocations")
    shared.release.touch()  # the function ends during the drain
    assert shared.host.wait_exit(60) == 0
    assert "Executed 'Functions.held' (Succeeded" in shared.host.output, shared.host.output
    assert list(shared.base.iterdir()) == []


def test_a_second_ctrl_c_kills_the_worker_and_still_leaves_nothing(shared: SharedHost) -> None:
    shared.post("held", _ascii(2 * MIB, 5))
    shared.wait(r"HOLDING 2097152 bytes")
    assert _files(shared.base)  # the input map, held by the worker
    shared.host.process.send_signal(signal.SIGINT)
    shared.wait(r"Stopping: draining invocations")
    shared.host.process.send_signal(signal.SIGINT)  # kill the workers, never released
    shared.host.wait_exit(60)
    assert list(shared.base.iterdir()) == []


def test_a_worker_without_the_capability_gets_everything_inline(tmp_path: Path) -> None:
    # tests/emulator_worker.py: its RECORD line shows the kind and value it received; an
    # empty capability value counts as absent for the host (and is dropped by the worker).
    base = tmp_path / "shm"
    base.mkdir()
    app = tmp_path / "app"
    app.mkdir()
    (app / "host.json").write_text(json.dumps({"version": "2.0"}))
    settings = {
        "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED": "true",
        "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES": str(base),
        "WK_CAPS": json.dumps({"SharedMemoryDataTransfer": ""}),
    }
    (app / "local.settings.json").write_text(json.dumps({"Values": settings}))
    (app / "record").mkdir()
    (app / "record" / "run.txt").write_text("record\n")
    trigger = {"type": "queueTrigger", "direction": "in", "name": "msg", "queueName": "q"}
    (app / "record" / "function.json").write_text(
        json.dumps({"scriptFile": "run.txt", "bindings": [trigger]})
    )
    host = HostSubprocess(app, write_worker(tmp_path))
    try:
        text = _ascii(MIB, 6)  # 2 MiB as the host counts a string
        body = json.dumps({"input": text}).encode()
        assert request("POST", f"{host.url}/admin/functions/record", body).status == 202
        line = host.wait_for(r"RECORD (\{.*\})").group(1)
        record = json.loads(line)
        assert record["kind"] == "string"
        assert record["value"] == text
        assert "shared memory" not in host.output
        host.process.send_signal(signal.SIGINT)
        assert host.wait_exit(60) == 0
    finally:
        host.close()
    assert list(base.iterdir()) == []


def test_without_the_setting_nothing_goes_through_maps(tmp_path: Path) -> None:
    shared = SharedHost(tmp_path, enabled="false")
    try:
        payload = _ascii(2 * MIB, 7)
        shared.post("blobecho", payload)
        shared.finished("blobecho")
        output = shared.host.output
        assert f"RECEIVED bytes {2 * MIB} {hashlib.sha256(payload.encode()).hexdigest()}" in (
            output
        )
        assert "shared memory" not in output
        assert shared.stop() == 0
    finally:
        shared.close()
    assert list(shared.base.iterdir()) == []
