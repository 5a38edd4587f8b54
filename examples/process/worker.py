"""A language worker that runs each function as an executable, in any language.

A function's ``scriptFile`` is run once per invocation, never through a shell: with the
interpreter its extension names (``INTERPRETERS``), or directly when the extension is not
listed (a compiled binary, a script with a ``#!`` line and the executable bit). The command
line is fixed at load; invocation data travels only as JSON on stdin and stdout:

stdin (one JSON object, then end of file)::

    {"invocationId": "...", "functionName": "hello", "functionDirectory": "/app/hello",
     "inputs": {"req": {"method": "GET", "url": "...", "headers": {}, "query": {},
                        "params": {}, "body": "text"}},
     "triggerMetadata": {"DequeueCount": 1}}

stdout (empty, or one JSON object)::

    {"returnValue": ..., "outputs": {"bindingName": ...}}

Bytes travel as ``{"base64": "..."}`` both ways (an HTTP body that is not UTF-8 arrives as
``bodyBase64`` instead of ``body``). A value for an ``http`` binding is ``{"status": 201,
"headers": {...}, "body": "..."}`` or just a string for the body. Each stderr line becomes a
log line of the invocation (a ``warning:``, ``error:`` or ``debug:`` prefix sets the level).
A non-zero exit fails the invocation with the end of stderr in the message. On cancel,
timeout, or once the process has exited, its whole process group is killed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionLoadError,
    HttpRequest,
    HttpResponse,
    Invocation,
    InvocationError,
    InvocationResult,
)

#: Extension -> interpreter command. Other extensions are executed directly.
INTERPRETERS: dict[str, tuple[str, ...]] = {
    ".sh": ("bash",),
    ".pl": ("perl",),
    ".js": ("node",),
    ".rb": ("ruby",),
    ".py": (sys.executable, "-u"),
}
#: Seconds one invocation may run before its process group is killed.
TIMEOUT = float(os.environ.get("PROCESS_TIMEOUT_SECONDS", "300"))
MAX_STDOUT = 64 << 20  # bytes of result a process may print
STDERR_TAIL = 20  # stderr lines quoted in a failure
LINE_LIMIT = 64 << 10  # longer stderr lines are logged in pieces
LEVELS = {"debug": logging.DEBUG, "warning": logging.WARNING, "error": logging.ERROR}

logging.getLogger("function").setLevel(logging.DEBUG)  # the host filters by its own levels


@dataclass(frozen=True, slots=True)
class Command:
    """How to run one function, fixed at load."""

    argv: tuple[str, ...]
    cwd: str
    http: frozenset[str]  # output bindings of type http ($return included)
    log: logging.Logger


class ProcessWorker(workerkit.Worker):
    runtime_name = "process"

    def __init__(self) -> None:
        super().__init__()
        self.commands: dict[str, Command] = {}

    def on_function_load(self, function: FunctionInfo) -> None:
        script = Path(function.script_file).resolve()
        if not script.is_file():
            raise FunctionLoadError(f"{script} does not exist")
        interpreter = INTERPRETERS.get(script.suffix)
        if interpreter is not None:
            program = shutil.which(interpreter[0])
            if program is None:
                raise FunctionLoadError(f"{interpreter[0]} (for {script.name}) is not on PATH")
            argv = (program, *interpreter[1:], str(script))
        elif os.access(script, os.X_OK):
            argv = (str(script),)
        else:
            raise FunctionLoadError(
                f"{script.name} is not executable and {script.suffix!r} names no interpreter"
            )
        self.commands[function.function_id] = Command(
            argv=argv,
            cwd=function.directory or str(script.parent),
            http=frozenset(n for n, b in function.output_bindings.items() if b.type == "http"),
            log=logging.getLogger(f"function.{function.name}"),
        )

    async def on_invocation(self, invocation: Invocation) -> Any:
        command = self.commands[invocation.function.function_id]
        request = {
            "invocationId": invocation.invocation_id,
            "functionName": invocation.function.name,
            "functionDirectory": command.cwd,
            "inputs": invocation.inputs,
            "triggerMetadata": invocation.trigger_metadata,
        }
        payload = json.dumps(request, default=_to_json).encode()
        process = await asyncio.create_subprocess_exec(
            *command.argv,
            cwd=command.cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
            limit=LINE_LIMIT,
        )
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        io = asyncio.gather(
            _feed(process, payload),
            _read_stdout(process),
            _relay_stderr(process, command.log, tail),
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                code = await process.wait()
                _kill_group(process)  # whatever it left running would hold the pipes
                _, stdout, _ = await io
        except TimeoutError:
            _kill_group(process)
            raise InvocationError(
                f"{invocation.function.name} timed out after {TIMEOUT:g} s; its process "
                f"group was killed. stderr:\n" + "\n".join(tail)
            ) from None
        finally:
            _kill_group(process)  # cancelled (or failed): stop everything it started
            io.cancel()  # a no-op once done
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise InvocationError(f"{Path(command.argv[-1]).name} {how}:\n" + "\n".join(tail))
        return _result(stdout, command)


def _to_json(value: Any) -> Any:
    """JSON for the input values `json` cannot write itself."""
    if isinstance(value, HttpRequest):
        request: dict[str, Any] = {
            "method": value.method,
            "url": value.url,
            "headers": dict(value.headers),
            "query": dict(value.query),
            "params": dict(value.params),
        }
        try:
            request["body"] = value.body.decode()
        except UnicodeDecodeError:
            request["bodyBase64"] = base64.b64encode(value.body).decode()
        return request
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return dict(value)
    return None  # what the host sent but JSON cannot carry (e.g. model binding data)


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and value.keys() == {"base64"}:
        return base64.b64decode(value["base64"])
    return value


def _http(value: Any) -> HttpResponse:
    if not isinstance(value, dict):
        return HttpResponse(body=value if isinstance(value, str) else json.dumps(value))
    body = value.get("body", "")
    if "bodyBase64" in value:
        body = base64.b64decode(value["bodyBase64"])
    elif not isinstance(body, str):
        body = json.dumps(body)
    return HttpResponse(
        status_code=int(value.get("status") or value.get("statusCode") or 200),
        body=body,
        headers={str(k): str(v) for k, v in (value.get("headers") or {}).items()},
    )


def _result(stdout: bytes, command: Command) -> Any:
    if not stdout.strip():
        return None
    try:
        document = json.loads(stdout)
    except ValueError as exc:
        raise InvocationError(f"stdout is not JSON ({exc}): {stdout[:200]!r}") from None
    if not isinstance(document, dict):
        raise InvocationError(f"stdout must be a JSON object, not {stdout[:200]!r}")
    values = {"$return": document.get("returnValue"), **(document.get("outputs") or {})}
    return InvocationResult(
        outputs={
            name: _http(value) if name in command.http else _from_json(value)
            for name, value in values.items()
            if value is not None
        }
    )


async def _feed(process: asyncio.subprocess.Process, payload: bytes) -> None:
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it need not read
        process.stdin.write(payload)
        await process.stdin.drain()
        process.stdin.close()
        await process.stdin.wait_closed()


async def _read_stdout(process: asyncio.subprocess.Process) -> bytes:
    assert process.stdout is not None
    data = await process.stdout.read(MAX_STDOUT + 1)
    while len(data) <= MAX_STDOUT and (more := await process.stdout.read(MAX_STDOUT)):
        data += more
    if len(data) > MAX_STDOUT:
        _kill_group(process)
        raise InvocationError(f"the function printed more than {MAX_STDOUT} bytes")
    return data


async def _relay_stderr(
    process: asyncio.subprocess.Process, log: logging.Logger, tail: collections.deque[str]
) -> None:
    """Log each stderr line as the invocation's (this task inherits its context)."""
    assert process.stderr is not None
    while True:
        try:
            raw = await process.stderr.readline()
        except ValueError:  # a line over the stream's limit: take what is buffered
            raw = await process.stderr.read(LINE_LIMIT)
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip("\r\n")
        tail.append(line)
        prefix, sep, rest = line.partition(":")
        level = LEVELS.get(prefix.strip().lower()) if sep else None
        log.log(level or logging.INFO, rest.strip() if level else line)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    ProcessWorker.main()
