"""Helpers for the example tests: start an example worker the way the host does and load the
functions of its sample app from their function.json files."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from conftest import EXAMPLES

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import HostConnection, TestHost, WorkerProcess, binding

SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))


def function_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def bindings_of(spec: Mapping[str, Any]) -> dict[str, pb.BindingInfo]:
    return {
        b["name"]: binding(b["type"], b["direction"], b.get("dataType", "undefined"))
        for b in spec["bindings"]
    }


async def start(
    host: TestHost,
    example: str,
    app: Path | None = None,
    env: Mapping[str, str] | None = None,
    worker_dir: Path | None = None,
) -> tuple[WorkerProcess, HostConnection]:
    """Spawn examples/<example>/worker.py (or `worker_dir`'s) in `app`, its sample app by
    default, with the host's command line, and init it."""
    worker_dir = worker_dir or EXAMPLES / example
    app = app or worker_dir / "app"
    worker = await host.spawn(
        [sys.executable, "-u", str(worker_dir / "worker.py")],
        cwd=app,
        env={**os.environ, **(env or {})},
    )
    conn = worker.connection
    assert conn is not None
    init = await conn.init(function_app_directory=str(app), worker_directory=str(worker_dir))
    assert init.result.status == SUCCESS, init.result
    return worker, conn


async def load_app(conn: HostConnection, app: Path) -> dict[str, pb.FunctionLoadResponse]:
    """Load every function of `app` as host indexing would (ids from `function_id(name)`)."""
    replies = {}
    for function_json in sorted(app.glob("*/function.json")):
        name = function_json.parent.name
        spec = json.loads(function_json.read_text())
        replies[name] = await conn.load(
            function_id(name),
            name,
            bindings=bindings_of(spec),
            script_file=str(function_json.parent / spec["scriptFile"]),
            entry_point=spec.get("entryPoint", ""),
            directory=str(function_json.parent),
        )
    return replies


def log_messages(conn: HostConnection, invocation_id: str) -> list[str]:
    return [entry.message for entry in conn.logs_for(invocation_id)]


@contextlib.contextmanager
def emulator(
    worker_dir: Path, app: Path, timeout: float = 60.0, transcript: list[str] | None = None
) -> Iterator[str]:
    """Run ``workerkit host APP --worker DIR`` as a user would; yield its base URL. Every
    line it prints is appended to `transcript` as it comes, when one is given.

    The worker's interpreter is this one (the config says ``python3``, which on a developer's
    machine is whatever is on PATH): the host's ``languageWorkers__<lang>__`` override.
    """
    language = json.loads((worker_dir / "worker.config.json").read_text())["description"][
        "language"
    ]
    env = {
        **os.environ,
        f"languageWorkers__{language}__defaultExecutablePath": sys.executable,
        "NO_COLOR": "1",
    }
    command = [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker_dir)]
    process = subprocess.Popen(
        [*command, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
            if transcript is not None:
                transcript.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError("workerkit host did not start:\n" + "".join(seen)) from None
            seen.append(line)
            found = re.search(r"Host started: (http://\S+)", line)
            if found:
                yield found.group(1)
                return
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One real HTTP request over loopback: (status, body)."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
