"""The host's server: a grpclib server on 127.0.0.1 that workers dial, and the workers it
starts (in this process or as subprocesses with the host's argv). Public as
`workerkit.testing.TestHost`; `workerkit host` and `workerkit conformance` use it too."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import betterproto2
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from .._runtime.transport import EVENT_STREAM_PATH, Codec
from ..cli import DEFAULT_MAX_MESSAGE_LENGTH, HostArgs
from ..worker import Worker
from .connection import HostConnection, Message

#: The longest piece of a line `WorkerProcess` hands to ``on_output``: longer ones are split.
_MAX_LINE: Final = 65536
#: How many of its last stderr lines a worker that did not open its stream is reported with.
STDERR_TAIL_LINES: Final = 20
#: Characters kept of each of those lines (the start, where a traceback's exception type is).
_TAIL_LINE_CHARS: Final = 1000


def _tail_note(tail: str) -> str:
    if not tail:
        return "; it wrote nothing to stderr"
    return "; the end of its stderr:\n" + tail


class InProcessWorker:
    """A worker served by a task in the test's own event loop."""

    def __init__(self, task: asyncio.Task[int], connection: HostConnection) -> None:
        self.task = task
        self.connection = connection

    async def wait(self, timeout: float | None = 10.0) -> int:
        """The exit status `Worker.serve` returned."""
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


class StreamNotOpened(RuntimeError):
    """A launched worker did not open its stream: it exited, its StartStream was refused,
    or none came in time (`reason`: "exited", "refused" or "timeout")."""

    def __init__(
        self,
        message: str,
        reason: str,
        returncode: int | None,
        refusal: tuple[str, str] | None,
        *,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        #: Its exit status when it exited (`reason` "exited").
        self.returncode = returncode
        #: (the worker id it sent, what was wrong) for a refused stream.
        self.refusal = refusal
        #: The last lines it wrote to stderr (up to `STDERR_TAIL_LINES`), for a subprocess.
        self.stderr_tail = stderr_tail


class WorkerProcess:
    """A worker subprocess started with the host's argv; its output is collected in
    `stdout` and `stderr`, or, with `on_output`, handed over line by line instead."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        args: HostArgs | None = None,
        *,
        on_output: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        self.process = process
        #: The host arguments it was started with (its worker id among them).
        self.args = args
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.connection: HostConnection | None = None
        #: The last lines of stderr handed to `on_output` (collected output has them all).
        self._tail: collections.deque[bytes] | None = None
        #: The tasks reading its stdout and stderr; done once both pipes are closed.
        self.pumps: list[asyncio.Task[None]]
        if on_output is None:
            self.pumps = [
                asyncio.create_task(self._pump(process.stdout, self.stdout)),
                asyncio.create_task(self._pump(process.stderr, self.stderr)),
            ]
        else:
            tail = self._tail = collections.deque(maxlen=STDERR_TAIL_LINES)

            def stderr_line(line: bytes, stderr: bool) -> None:
                tail.append(line[:_TAIL_LINE_CHARS])
                on_output(line, stderr)

            self.pumps = [
                asyncio.create_task(self._pump_lines(process.stdout, False, on_output)),
                asyncio.create_task(self._pump_lines(process.stderr, True, stderr_line)),
            ]

    @staticmethod
    async def _pump(source: asyncio.StreamReader | None, sink: bytearray) -> None:
        if source is None:
            return
        while chunk := await source.read(65536):
            sink += chunk

    @staticmethod
    async def _pump_lines(
        source: asyncio.StreamReader | None,
        stderr: bool,
        on_output: Callable[[bytes, bool], None],
    ) -> None:
        """Call `on_output` with each line (without its newline) and whether it is stderr;
        the last line too when it has no newline."""
        if source is None:
            return
        pending = b""
        while chunk := await source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > _MAX_LINE:  # a very long line: hand it over in pieces
                lines.append(pending)
                pending = b""
            for line in lines:
                on_output(line, stderr)
        if pending:
            on_output(pending, stderr)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """The last `lines` lines it wrote to stderr so far (at most `STDERR_TAIL_LINES` when
        its output goes to `on_output`), decoded with replacement characters."""
        if lines <= 0:
            return ""
        if self._tail is not None:
            last = list(self._tail)[-lines:]
        else:  # from the end of what was collected, however much that is
            buffer, last = self.stderr, []
            end = len(buffer)
            while end and buffer[end - 1] in b"\r\n":
                end -= 1
            while end > 0 and len(last) < lines:
                start = buffer.rfind(b"\n", 0, end) + 1
                last.insert(0, bytes(buffer[start : min(end, start + _TAIL_LINE_CHARS)]))
                end = start - 1
        return "\n".join(
            line[:_TAIL_LINE_CHARS].decode(errors="replace").rstrip("\r") for line in last
        )

    async def wait(self, timeout: float | None = 10.0) -> int:
        """The exit status, once the process exited (its output fully collected)."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait(self.pumps, timeout=5)
        return code

    @property
    def finished(self) -> bool:
        """It has exited and its output is all read."""
        return self.process.returncode is not None and all(p.done() for p in self.pumps)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class TestHost:
    """A Functions host for tests, listening on 127.0.0.1 (a free port) or ``::1``.

    Like the real host, it ends a stream at once when the first message is not
    `StartStream` with a worker id it launched (`host_args`, `spawn`, `start_worker`). It
    also ends a second stream naming a worker id that has connected before, and one that
    `check_peer` refuses. Each refusal is added to `refused` and told to `on_refused`.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        on_connection: Callable[[HostConnection], None] | None = None,
        check_peer: Callable[[str, tuple[str, int] | None], str | Awaitable[str | None] | None]
        | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        """Args:
        host: loopback address to listen on.
        max_message_length: the gRPC message size limit, as the host passes it to workers.
        on_connection: called with each accepted `HostConnection` before its first message
            is read (e.g. to set `HostConnection.observer`).
        check_peer: called with the worker id and the peer's (address, port) of each
            StartStream naming a worker it launched; a reason (str) refuses the stream. It
            may return an awaitable of that, to wait for what it needs to know.
        on_refused: called with the worker id and the reason of each stream refused.
        """
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"TestHost listens on loopback only, not {host!r}")
        self.host = host
        self.max_message_length = max_message_length
        self.on_connection = on_connection
        self.check_peer = check_peer
        self.on_refused = on_refused
        self.port = 0
        #: StartStream messages refused: (worker id, first message kind).
        self.refused: list[tuple[str, str]] = []
        self._expected: set[str] = set()
        self._connections: dict[str, asyncio.Future[HostConnection]] = {}
        self._server: Server | None = None
        self._processes: list[WorkerProcess] = []
        self._workers: list[InProcessWorker] = []

    def __mapping__(self) -> dict[str, Handler]:
        return {
            EVENT_STREAM_PATH: Handler(
                self._event_stream, Cardinality.STREAM_STREAM, Message, Message
            )
        }

    async def start(self) -> None:
        self._server = Server([self], codec=Codec(self.max_message_length))
        await self._server.start(self.host, 0)
        listening: Any = self._server._server  # grpclib keeps the asyncio server there
        self.port = int(listening.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for process in self._processes:
            process.kill()
        for process in self._processes:
            with contextlib.suppress(TimeoutError):
                await process.wait(5)
        for worker in self._workers:
            worker.task.cancel()
        if self._workers:
            await asyncio.wait([w.task for w in self._workers], timeout=5)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> TestHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- launching ---------------------------------------------------------------------------
    def host_args(self, worker_id: str | None = None, request_id: str | None = None) -> HostArgs:
        """Arguments for a new worker; its StartStream will be accepted."""
        worker_id = worker_id or str(uuid.uuid4())
        self._expected.add(worker_id)
        return HostArgs(
            host=self.host,
            port=self.port,
            worker_id=worker_id,
            request_id=request_id or str(uuid.uuid4()),
            max_message_length=self.max_message_length,
        )

    def argv(self, worker_id: str | None = None) -> list[str]:
        """The connection arguments the real host appends, both spellings."""
        return self.host_args(worker_id).to_argv()

    async def connection(self, worker_id: str, timeout: float | None = 10.0) -> HostConnection:
        """Wait for the worker with `worker_id` to open its stream."""
        future = self._connections.setdefault(worker_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def start_worker(
        self, worker: Worker, *, timeout: float | None = 10.0
    ) -> InProcessWorker:
        """Serve `worker` in this event loop and wait for its StartStream.

        Raises:
            Exception: what stops it from serving (e.g. a `TypeError` about the class), at
                once.
            StreamNotOpened: `Worker.serve` returned (with `StreamNotOpened.returncode`)
                before its stream opened.
            TimeoutError: no StartStream within `timeout` seconds (the worker is stopped).
        """
        args = self.host_args()
        task = asyncio.create_task(worker.serve(args))
        waiter = asyncio.create_task(self.connection(args.worker_id, None))
        try:
            await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            waiter.cancel()
            raise
        if not waiter.done():
            waiter.cancel()
            if not task.done():
                task.cancel()
                raise TimeoutError(f"the worker opened no stream within {timeout:g} s")
            code = task.result()  # raises what the worker raised
            raise StreamNotOpened(
                f"the worker stopped with {code} before StartStream", "exited", code, None
            )
        connection = waiter.result()
        started = InProcessWorker(task, connection)
        self._workers.append(started)
        return started

    async def spawn(
        self,
        command: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        connect: bool = True,
        timeout: float | None = 30.0,
    ) -> WorkerProcess:
        """Start `command` plus the host's argv as a subprocess, as the real host does.

        With `connect`, wait for its StartStream (the connection is then on the result);
        `StreamNotOpened` (a RuntimeError) says why there was none: as soon as the worker
        exits, with its exit status and the end of its stderr.
        """
        started = await self.launch(command, cwd=cwd, env=env)
        if connect:
            started.connection = await self.wait_for_stream(started, timeout)
        return started

    async def launch(
        self,
        command: Sequence[str] = (),
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        args: HostArgs | None = None,
        argv: Sequence[str] | None = None,
        start_new_session: bool = False,
        on_output: Callable[[bytes, bool], None] | None = None,
    ) -> WorkerProcess:
        """Start `command` plus the host's argv as a subprocess; do not wait for it.

        Args:
            command: the worker's command; the host's arguments are appended to it.
            cwd: its working directory.
            env: its environment (default: this process's), with ``PYTHONUNBUFFERED=1``
                unless set, or, with `argv`, exactly as given.
            args: the host arguments to start it with, from `host_args` (default: new ones).
            argv: instead of `command`, the complete command line, the host arguments
                (`args`, then required) already in it where the worker wants them.
            start_new_session: start it in a session (and process group) of its own.
            on_output: called with each line of its output (without the newline) and
                whether it came from stderr, instead of collecting it in
                `WorkerProcess.stdout` and `WorkerProcess.stderr`.

        Raises:
            ValueError: both `command` and `argv`, or `argv` without `args`, or `args` not
                from `host_args`; also what starting the process raises (e.g. OSError).
        """
        if argv is not None and (command or args is None):
            raise ValueError("argv is the whole command line: give args with it, no command")
        if args is None:
            args = self.host_args()
        elif args.worker_id not in self._expected:
            raise ValueError(f"args for worker {args.worker_id!r} are not from host_args()")
        environment = dict(os.environ if env is None else env)
        if argv is None:
            environment.setdefault("PYTHONUNBUFFERED", "1")
            argv = [*command, *args.to_argv()]
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=start_new_session,
        )
        started = WorkerProcess(process, args, on_output=on_output)
        # Those gone, their output read, need no killing by `stop` (a host may launch many).
        self._processes = [p for p in self._processes if not p.finished] + [started]
        return started

    async def wait_for_stream(
        self, worker: WorkerProcess, timeout: float | None = 30.0, *, refusals_fail: bool = True
    ) -> HostConnection:
        """The stream of a `launch`ed worker, once its StartStream came; `StreamNotOpened`
        as soon as it exits or (with `refusals_fail`) a stream is refused, or after `timeout`
        seconds. Without `refusals_fail`, a refused stream (e.g. a stray one naming the
        worker) is left to `on_refused` and the wait goes on."""
        assert worker.args is not None, "a worker started by launch() or spawn()"
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        refused = len(self.refused)
        waiter = asyncio.ensure_future(self.connection(worker.args.worker_id, None))
        try:
            while not waiter.done():
                if refusals_fail and len(self.refused) > refused:
                    refusal = self.refused[refused]
                    raise StreamNotOpened(
                        f"the worker's stream was refused: {refusal[1]}", "refused", None, refusal
                    )
                if worker.process.returncode is not None:
                    with contextlib.suppress(TimeoutError):
                        await worker.wait(5)  # its output, all of it
                    tail = worker.stderr_tail()
                    raise StreamNotOpened(
                        f"worker exited with {worker.process.returncode} before StartStream"
                        + _tail_note(tail),
                        "exited",
                        worker.process.returncode,
                        None,
                        stderr_tail=tail,
                    )
                if deadline is not None and loop.time() > deadline:
                    tail = worker.stderr_tail()
                    raise StreamNotOpened(
                        f"no StartStream within {timeout:g} s" + _tail_note(tail),
                        "timeout",
                        None,
                        None,
                        stderr_tail=tail,
                    )
                # Polled: a refusal or an exit may come first, and the poll is cheap.
                await asyncio.wait({waiter}, timeout=0.02)
            return waiter.result()
        finally:
            waiter.cancel()

    # -- the gRPC method ---------------------------------------------------------------------
    async def _event_stream(self, stream: Stream[Message, Message]) -> None:
        try:
            first = await stream.recv_message()
        except Exception:
            return
        if first is None:
            return
        kind = betterproto2.which_one_of(first, "content")[0]
        worker_id = first.start_stream.worker_id if first.start_stream is not None else ""
        problem: str | None = None
        connected = self._connections.get(worker_id)
        if worker_id not in self._expected:
            problem = kind  # the first message names no worker this host launched
        elif connected is not None and connected.done():
            problem = "a second StartStream for a connected worker"
        elif self.check_peer is not None:
            peer = stream.peer.addr()
            checked = self.check_peer(worker_id, (str(peer[0]), int(peer[1])) if peer else None)
            problem = await checked if inspect.isawaitable(checked) else checked
        if problem is not None:
            self.refused.append((worker_id, problem))
            if self.on_refused is not None:
                self.on_refused(worker_id, problem)
            return  # what the real host does: end the call, say nothing
        connection = HostConnection(stream, first)
        if self.on_connection is not None:
            self.on_connection(connection)
        future = self._connections.setdefault(worker_id, asyncio.get_running_loop().create_future())
        if not future.done():
            future.set_result(connection)
        reader = asyncio.create_task(self._read(stream, connection))
        closer = asyncio.create_task(connection._close.wait())
        try:
            await asyncio.wait({reader, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            closer.cancel()
            connection._ended()

    @staticmethod
    async def _read(stream: Stream[Message, Message], connection: HostConnection) -> None:
        try:
            async for message in stream:
                await connection._reading.wait()
                connection._receive(message)
        except Exception as exc:
            print(f"TestHost: stream from {connection.worker_id} broke: {exc!r}", file=sys.stderr)
