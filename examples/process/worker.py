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
timeout, or once the process has exited, whatever it started is killed: its process group,
and on Linux also what left the group (daemons), found through the worker's process tree.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import contextlib
import contextvars
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
#: Seconds one invocation may run before its processes are killed.
TIMEOUT = float(os.environ.get("PROCESS_TIMEOUT_SECONDS", "300"))
MAX_STDOUT = 64 << 20  # bytes of result a process may print
#: Seconds to read what is left in the pipes once the process has exited. What it printed is
#: in them already; only a process out of the worker's reach can keep them open longer.
DRAIN = 1.0
STDERR_TAIL = 20  # stderr lines quoted in a failure
LINE_LIMIT = 64 << 10  # longer stderr lines are logged in pieces
LEVELS = {"debug": logging.DEBUG, "warning": logging.WARNING, "error": logging.ERROR}
#: Added to each process's environment: the invocation id. Children inherit it through fork,
#: exec and setsid, so it tells whose a process is once it has left its process group.
MARK = "PROCESS_INVOCATION_ID"
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>

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
        self.contained = _become_subreaper()
        self.leaders: set[int] = set()  # processes asyncio started and has not reaped yet
        self.spawning = 0  # processes being started, not in `leaders` yet
        atexit.register(self._kill_all)  # also runs when the stream breaks (exit status 1)

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
            http=frozenset(
                n for n, b in function.output_bindings.items() if b.type.lower() == "http"
            ),
            log=logging.getLogger(f"function.{function.name}"),
        )

    async def on_invocation(self, invocation: Invocation) -> Any:
        command = self.commands[invocation.function.function_id]
        name = Path(command.argv[-1]).name
        request = {
            "invocationId": invocation.invocation_id,
            "functionName": invocation.function.name,
            "functionDirectory": command.cwd,
            "inputs": invocation.inputs,
            "triggerMetadata": invocation.trigger_metadata,
        }
        payload = json.dumps(request, default=_to_json).encode()
        transport, run = await self._start(command, invocation.invocation_id)
        leader = transport.get_pid()
        stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
        stdin.write(payload)  # written as the process reads it; it need not read it all
        stdin.write_eof()
        clean = False  # exited, and nothing of it was left running
        try:
            async with asyncio.timeout(TIMEOUT):
                await asyncio.wait((run.exited, run.overflow), return_when=asyncio.FIRST_COMPLETED)
                if not run.overflow.done():
                    # It has exited. What it left running may hold its stdout open for ever:
                    # stop that now, then take what is left in the pipes.
                    clean = not self._stop(invocation.invocation_id, leader)
                    await asyncio.wait((run.closed,), timeout=DRAIN)
                    if not run.closed.done():
                        command.log.warning(
                            f"{name} exited {DRAIN:g} s ago but its stdout or stderr is still "
                            "open (a process out of the worker's reach?): stopped reading"
                        )
        except TimeoutError:
            raise InvocationError(
                f"{invocation.function.name} timed out after {TIMEOUT:g} s; its processes "
                f"were killed. stderr:\n" + "\n".join(run.tail)
            ) from None
        finally:
            if not clean:  # cancelled, timed out, too much output, or it left processes
                self._stop(invocation.invocation_id, leader)
            # Let go of the pipes: a process we cannot kill may hold them. (abort() drops the
            # input it did not read; only while some is left, as asyncio's pipe must not be
            # aborted after it closed.)
            if stdin.get_write_buffer_size():
                stdin.abort()
            for fd in (1, 2):
                cast(asyncio.ReadTransport, transport.get_pipe_transport(fd)).close()
            # The transport, once asyncio has reaped the process: before, closing it would
            # make asyncio poll the process and kill it by pid.
            run.exited.add_done_callback(lambda _: transport.close())
        if run.overflow.done():
            raise InvocationError(
                f"{name} printed more than {MAX_STDOUT >> 20} MiB on stdout (MAX_STDOUT), so "
                f"its processes were killed; a result is one JSON object within that size"
            )
        code = transport.get_returncode() or 0
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise InvocationError(f"{name} {how}:\n" + "\n".join(run.tail))
        return _result(run.take_stdout(), command)

    async def _start(
        self, command: Command, invocation_id: str
    ) -> tuple[asyncio.SubprocessTransport, _Run]:
        """Start the function's process, in a process group of its own."""
        self.spawning += 1
        spawn = asyncio.ensure_future(
            asyncio.get_running_loop().subprocess_exec(
                lambda: _Run(command.log),
                *command.argv,
                cwd=command.cwd,
                env={**os.environ, MARK: invocation_id},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        )
        try:
            # Shielded: the process runs (and may start others) before its pipes are
            # connected. Cancelled then, asyncio would kill only the leader and leave its
            # children running; so wait for the start to finish, then stop them all.
            transport, run = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                transport, run = await spawn
                self._stop(invocation_id, transport.get_pid())
                run.exited.add_done_callback(lambda _: transport.close())
            raise
        finally:
            self.spawning -= 1
        leader = transport.get_pid()
        self.leaders.add(leader)
        run.exited.add_done_callback(lambda _: self.leaders.discard(leader))
        return transport, run

    def _stop(self, invocation_id: str, leader: int) -> int:
        """Kill the invocation's processes that are still running; how many were found."""
        if not self.contained:
            # Elsewhere than Linux, only its process group, by number. The number stays the
            # group's while any member lives; once none does, a new process may reuse it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader, signal.SIGKILL)
            return 0
        mark = invocation_id.encode()
        killed: set[tuple[int, int]] = set()  # (pid, start): SIGKILL takes a moment to land
        # Until a look finds none left: a process may fork between the look at /proc and
        # its kill, and its new child is only seen by the next look (SIGKILL then stops the
        # parent for good, so each round can only find what the previous one missed).
        for _ in range(_KILL_ROUNDS):
            tree = _descendants()
            before = len(killed)
            for proc in tree:
                if proc.zombie or (proc.pid, proc.start) in killed:  # dead, or dying
                    continue
                owner = _mark(proc.pid)
                # Its environment names the invocation, or it cleared its environment but
                # stayed in the invocation's process group. (A process of another invocation
                # that got the same group number later carries that one's mark.)
                if owner == mark or (owner is None and proc.pgid == leader):
                    _kill(proc)
                    killed.add((proc.pid, proc.start))
            self._reap(tree)
            if len(killed) == before:
                break
        return len(killed)

    def _reap(self, tree: list[_Proc]) -> None:
        """Wait for the adopted orphans that have exited: nobody else will. Never for a
        process asyncio started: it waits for those itself, and would lose the status."""
        if self.spawning:  # a process just started may not be in `leaders` yet: next time
            return
        worker = os.getpid()
        for proc in tree:
            if proc.zombie and proc.ppid == worker and proc.pid not in self.leaders:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, os.WNOHANG)

    def _kill_all(self) -> None:
        """At exit: whatever is left, of any invocation, or whose it was unknown."""
        if self.contained:
            for proc in _descendants():
                _kill(proc)
            return
        for leader in self.leaders:  # not reaped, so far as asyncio told: still its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader, signal.SIGKILL)


class _Run(asyncio.SubprocessProtocol):
    """The pipes of one function process: stdout collected (a list of chunks, joined once),
    stderr logged line by line as the invocation's logs."""

    def __init__(self, log: logging.Logger) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # stdout and stderr ended
        self.overflow: asyncio.Future[None] = loop.create_future()  # stdout over MAX_STDOUT
        self.stdout: list[bytes] = []
        self.size = 0
        self.stderr = bytearray()  # a line not ended yet
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.log = log
        self.context = contextvars.copy_context()  # the invocation's: its logs are its own
        self.open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.size += len(data)
            if self.size <= MAX_STDOUT:
                self.stdout.append(data)
            elif not self.overflow.done():
                self.overflow.set_result(None)
        else:
            self.stderr += data
            if b"\n" in data or len(self.stderr) >= LINE_LIMIT:
                self._log_lines()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 2:
            self._log_lines(end=True)
        self.open.discard(fd)
        if not self.open and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        self.exited.set_result(None)

    def take_stdout(self) -> bytes:
        data = b"".join(self.stdout)
        self.stdout.clear()
        return data

    def _log_lines(self, end: bool = False) -> None:
        """Log each complete stderr line (at `end`, the rest too); a line longer than
        LINE_LIMIT in pieces."""
        while self.stderr:
            newline = self.stderr.find(b"\n", 0, LINE_LIMIT)
            if newline < 0 and len(self.stderr) < LINE_LIMIT and not end:
                return
            cut = newline + 1 if newline >= 0 else LINE_LIMIT
            line = self.stderr[:cut].decode(errors="replace").rstrip("\r\n")
            del self.stderr[:cut]
            self.tail.append(line)
            prefix, sep, rest = line.partition(":")
            level = LEVELS.get(prefix.strip().lower()) if sep else None
            self.context.run(self.log.log, level or logging.INFO, rest.strip() if level else line)


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


# -- the process tree (Linux) ---------------------------------------------------------------
#
# Without cgroups, the worker contains what functions start by becoming a child subreaper:
# an orphan of its descendants is then reparented to the worker instead of init, so every
# process a function started, daemons that setsid and fork twice included, stays in the
# worker's process tree until it is killed. /proc shows that tree; the invocation a process
# belongs to is in its environment (MARK).


@dataclass(frozen=True, slots=True)
class _Proc:
    """A process as /proc/<pid>/stat showed it."""

    pid: int
    ppid: int
    pgid: int
    zombie: bool
    start: int  # clock ticks after boot: with the pid, it names one process for good


#: Looks at /proc per stop; more than two means a process tree forking as fast as it dies.
_KILL_ROUNDS = 16


def _become_subreaper() -> bool:
    """Linux (5.3 and later, for pidfds): make the worker a child subreaper."""
    if sys.platform != "linux" or not hasattr(os, "pidfd_open") or not os.path.isdir("/proc/1"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel without pidfds
        return False
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return bool(prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0) == 0)


def _stat(pid: int) -> _Proc:
    with open(f"/proc/{pid}/stat", "rb") as file:
        # the command name, in parentheses, may hold anything: fields follow the last ")"
        fields = file.read().rsplit(b")", 1)[1].split()
    return _Proc(pid, int(fields[1]), int(fields[2]), fields[0] == b"Z", int(fields[19]))


def _descendants() -> list[_Proc]:
    """The worker's descendants now, zombies included."""
    try:  # no child at all (no other call running, nothing left): no need to read /proc
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    children: dict[int, list[_Proc]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # it just ended
                proc = _stat(int(name))
                children[proc.ppid].append(proc)
    found: list[_Proc] = []
    parents = [os.getpid()]
    while parents:
        below = children.pop(parents.pop(), [])
        found += below
        parents += [proc.pid for proc in below]
    return found


def _mark(pid: int) -> bytes | None:
    """The invocation id in the environment `pid` was started with, if any."""
    prefix = MARK.encode() + b"="
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            environ = file.read()
    except OSError:  # gone, or not ours to read (set-user-ID)
        return None
    return next((v[len(prefix) :] for v in environ.split(b"\0") if v.startswith(prefix)), None)


def _kill(proc: _Proc) -> None:
    """SIGKILL `proc` if it is still the process /proc showed. Its pid may have been reused
    since: so open a pidfd first, then check that the pid still names the process that
    started at `proc.start`; if so, the pidfd is that process, and the signal cannot reach
    a newcomer even if it ends and its pid is reused right after the check."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # gone
        return
    try:
        if _stat(proc.pid).start == proc.start:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
    finally:
        os.close(pidfd)


if __name__ == "__main__":
    ProcessWorker.main()
