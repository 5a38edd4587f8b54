"""Helpers for the emulator tests: function apps written into tmp_path, an emulator running in
a background thread, and a small blocking HTTP client (urllib) for real requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import eventually

from workerkit.emulator import Console, Emulator, EmulatorOptions

WORKER = Path(__file__).resolve().parent / "emulator_worker.py"


def http_function(
    methods: Sequence[str] | None = ("get", "post"), route: str | None = None, **extra: Any
) -> dict[str, Any]:
    trigger: dict[str, Any] = {"type": "httpTrigger", "direction": "in", "name": "req"}
    trigger["authLevel"] = "anonymous"
    if methods is not None:
        trigger["methods"] = list(methods)
    if route is not None:
        trigger["route"] = route
    return {
        "scriptFile": "run.txt",
        "bindings": [trigger, {"type": "http", "direction": "out", "name": "$return"}],
        **extra,
    }


def trigger_function(trigger: Mapping[str, Any], *outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "scriptFile": "run.txt",
        "bindings": [{"direction": "in", "name": "item", **trigger}, *outputs],
    }


def write_app(
    root: Path,
    functions: Mapping[str, Mapping[str, Any] | str],
    *,
    host: Mapping[str, Any] | None = None,
    settings: Mapping[str, str] | None = None,
) -> Path:
    """An app directory: host.json, local.settings.json and one folder per function
    (a dict is written as function.json; a str is written verbatim, e.g. broken JSON)."""
    app = root / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "host.json").write_text(json.dumps({"version": "2.0", **(host or {})}))
    (app / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": dict(settings or {})})
    )
    for name, spec in functions.items():
        folder = app / name
        folder.mkdir(exist_ok=True)
        (folder / "run.txt").write_text(f"function {name}\n")
        text = spec if isinstance(spec, str) else json.dumps(spec)
        (folder / "function.json").write_text(text)
    return app


def write_worker(
    root: Path,
    *,
    process_options: Mapping[str, str] | None = None,
    description: Mapping[str, Any] | None = None,
) -> Path:
    """A worker directory whose worker.config.json starts tests/emulator_worker.py."""
    worker = root / "worker"
    worker.mkdir(parents=True, exist_ok=True)
    config = {
        "description": {
            "language": "emulated",
            "extensions": [".txt"],
            "defaultExecutablePath": sys.executable,
            "defaultWorkerPath": str(WORKER),
            "arguments": ["-u"],
            **(description or {}),
        },
        "processOptions": {
            "initializationTimeout": "00:00:30",
            "processRestartInterval": "00:00:00",
            **(process_options or {}),
        },
    }
    (worker / "worker.config.json").write_text(json.dumps(config))
    return worker


class _Sink:
    """A text stream that collects lines (thread-safe enough: appends under a lock)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._partial = ""

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *done, self._partial = self._partial.split("\n")
            self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RunningEmulator:
    """An `Emulator` served by its own event loop in a daemon thread."""

    options: EmulatorOptions
    verbose: bool = False
    sink: _Sink = field(default_factory=_Sink)
    code: int | None = None
    start_error: BaseException | None = None

    def __post_init__(self) -> None:
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.emulator = Emulator(
            self.options,
            Console(self.sink, color=False, verbose=self.verbose),  # type: ignore[arg-type]
        )
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self, timeout: float = 30.0) -> RunningEmulator:
        self._thread.start()
        assert self._started.wait(timeout), "the emulator did not start in time:\n" + self.output
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self.emulator.start()
        except BaseException as exc:
            self.start_error = exc
            self._started.set()
            return
        self._started.set()
        self.code = await self.emulator.run()

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def output(self) -> str:
        return "\n".join(self.sink.lines)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.emulator.request_stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the emulator did not stop:\n" + self.output
        return self.code

    def wait_exit(self, timeout: float = 30.0) -> int | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the emulator is still running:\n" + self.output
        return self.code

    def wait_for(
        self,
        predicate: Callable[[str], bool] | str,
        timeout: float = 30.0,
        what: str | None = None,
    ) -> str:
        """Poll the console output until `predicate` (or the substring) holds; return it.
        `timeout` only catches a hang; `what` names the awaited event in the failure."""
        check = (lambda text: predicate in text) if isinstance(predicate, str) else predicate

        def seen() -> str:
            text = self.output
            return text if check(text) else ""

        return eventually(
            seen, lambda: f"{what or repr(predicate)}; the output:\n{self.output}", timeout
        )

    def invocation_ids(self, function: str) -> list[str]:
        """The ids of the invocations of `function` so far, from the "Executing" lines."""
        pattern = rf"Executing 'Functions\.{re.escape(function)}' \(Reason=.*?, Id=([^)\s]+)\)"
        return re.findall(pattern, self.output)

    def wait_answered(self, invocation_id: str, status: str, timeout: float = 30.0) -> str:
        """Wait until the worker has sent the InvocationResponse for `invocation_id` with
        `status` (e.g. Cancelled, after a timeout): a protocol line, so a verbose emulator."""
        assert self.verbose, "the protocol lines are only shown by a verbose emulator"
        wanted = f"invocation_id={invocation_id} status={status}"
        return self.wait_for(
            lambda _: any(
                "worker → host invocation_response" in line and wanted in line
                for line in list(self.sink.lines)
            ),
            timeout,
            f"the worker's InvocationResponse {wanted}",
        )

    def records(self, function: str) -> list[dict[str, Any]]:
        """The RECORD lines tests/emulator_worker.py logged for `function`."""
        found = []
        for line in self.sink.lines:
            marker = line.find("RECORD ")
            if marker >= 0:
                record = json.loads(line[marker + len("RECORD ") :])
                if record["function"] == function:
                    found.append(record)
        return found

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 20.0,
    ) -> Response:
        return request(method, self.url + path, body, headers, timeout)


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 20.0,
) -> Response:
    """A real HTTP request; any status is returned, never raised."""
    prepared = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as reply:
            return Response(reply.status, reply.headers, reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers, error.read())
    except (TimeoutError, urllib.error.URLError) as error:
        if isinstance(error, TimeoutError) or isinstance(error.reason, TimeoutError):
            raise AssertionError(f"no reply to {method} {url} within {timeout:g} s") from error
        raise


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie is dead: only its parent, or init, must reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class HostSubprocess:
    """``workerkit host`` run as a user runs it (``--port 0``), its console collected."""

    def __init__(self, app: Path, worker: Path, *extra: str, open_files: int | None = None) -> None:
        command = [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker),
                   "--port", "0", *extra]  # fmt: skip
        if open_files is not None:  # started under that open-file limit (ulimit -n)
            command = ["sh", "-c", f'ulimit -n {open_files} && exec "$@"', "sh", *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        try:
            self.url = self.wait_for(r"Host started: (http://\S+)").group(1)
        except BaseException:
            self.close()
            raise

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first match of `pattern` on the console, once it is there (`timeout` only
        catches a hang)."""
        return eventually(
            lambda: re.search(pattern, self.output),
            lambda: f"{pattern!r} on the console:\n{self.output}",
            timeout,
        )

    def wait_exit(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(60)
