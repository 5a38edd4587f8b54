"""A small Functions host for tests: a real grpclib server on 127.0.0.1 that workers dial.

    async with TestHost() as host:
        worker = await host.start_worker(MyWorker())            # in this process, or:
        worker = await host.spawn([sys.executable, "worker.py"])  # a subprocess, real argv
        conn = worker.connection
        await conn.init()
        await conn.load("f1", "hello", bindings=http_bindings())
        response = await conn.invoke("f1", {"req": HttpRequest("GET", "http://x/api/hello")})

Replies are matched the way the real host matches them: status by ``request_id``, loads by
``function_id``, invocations by ``invocation_id``, the rest in order per kind; so overlapping
invocations can be started with `HostConnection.start_invocation` and awaited in any order.
Everything the worker sent is kept in `HostConnection.messages`, in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import os
import sys
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import betterproto2
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from ._generated import AzureFunctionsRpcMessages as pb
from ._runtime.transport import EVENT_STREAM_PATH, Codec
from .cli import DEFAULT_MAX_MESSAGE_LENGTH, HostArgs
from .convert import encode_input
from .worker import Worker

__all__ = [
    "HostConnection",
    "InProcessWorker",
    "PendingInvocation",
    "TestHost",
    "WorkerProcess",
    "binding",
    "http_bindings",
]

Message = pb.StreamingMessage
_DIRECTIONS = {"in": 0, "out": 1, "inout": 2}
_DATA_TYPES = {"undefined": 0, "string": 1, "binary": 2, "stream": 3}


def binding(type: str, direction: str = "in", data_type: str = "undefined") -> pb.BindingInfo:
    """A `BindingInfo` as the host puts it in a `FunctionLoadRequest`."""
    return pb.BindingInfo(
        type=type,
        direction=pb.BindingInfoDirection(_DIRECTIONS[direction]),
        data_type=pb.BindingInfoDataType(_DATA_TYPES[data_type]),
    )


def http_bindings(trigger: str = "req", output: str = "$return") -> dict[str, pb.BindingInfo]:
    """The bindings of a plain HTTP function: an httpTrigger in, an http out."""
    return {trigger: binding("httpTrigger"), output: binding("http", "out")}


def _typed(value: Any) -> pb.TypedData:
    return value if isinstance(value, pb.TypedData) else encode_input(value)


class PendingInvocation:
    """An invocation sent to the worker; await it for the `InvocationResponse`."""

    def __init__(self, invocation_id: str, future: asyncio.Future[pb.InvocationResponse]) -> None:
        self.invocation_id = invocation_id
        self.future = future

    async def result(self, timeout: float | None = 30.0) -> pb.InvocationResponse:
        return await asyncio.wait_for(asyncio.shield(self.future), timeout)

    def __await__(self) -> Generator[Any, None, pb.InvocationResponse]:
        return self.result().__await__()


class HostConnection:
    """The host's side of one worker's `EventStream`, with typed request helpers."""

    def __init__(self, stream: Stream[Message, Message], start: Message) -> None:
        self.worker_id = start.start_stream.worker_id if start.start_stream else ""
        #: The request id the worker put on its StartStream (from ``--requestId``).
        self.start_request_id = start.request_id
        #: Every message the worker sent after StartStream, in arrival order.
        self.messages: list[Message] = []
        #: Replies no pending request was waiting for (e.g. a second reply to one request).
        self.unmatched: list[Message] = []
        self.logs: list[pb.RpcLog] = []
        self._stream = stream
        self._send_lock = asyncio.Lock()
        self._fifo: dict[str, collections.deque[asyncio.Future[Any]]] = {}
        self._keyed: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._done = asyncio.Event()
        self._close = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        #: Called with ``(message, outgoing)`` for every message sent or received, before any
        #: reply is matched (e.g. to print the conversation). It must not raise.
        self.observer: Callable[[Message, bool], None] | None = None
        #: Keep received messages in `messages` and `logs`; a long-running host sets it False.
        self.record = True

    # -- plumbing ----------------------------------------------------------------------------
    async def send(self, message: Message | bytes) -> None:
        """Send one message (or raw, possibly malformed, bytes) to the worker."""
        async with self._send_lock:
            await self._stream.send_message(message)  # type: ignore[arg-type]
        if self.observer is not None and isinstance(message, Message):
            self.observer(message, True)

    def _expect(self, kind: str, key: str | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key is None:
            self._fifo.setdefault(kind, collections.deque()).append(future)
        else:
            self._keyed[(kind, key)] = future
        return future

    def _receive(self, message: Message) -> None:
        if self.observer is not None:
            self.observer(message, False)
        if self.record:
            self.messages.append(message)
        kind, found = betterproto2.which_one_of(message, "content")
        body: Any = found
        if kind == "rpc_log":
            if self.record:
                self.logs.append(body)
            return
        future: asyncio.Future[Any] | None
        key: str | None = None
        if kind == "invocation_response":
            key = body.invocation_id
        elif kind == "function_load_response":
            key = body.function_id
        elif kind == "worker_status_response":
            key = message.request_id
        if key is not None:
            future = self._keyed.pop((kind, key), None)
        else:
            waiting = self._fifo.get(kind)
            future = waiting.popleft() if waiting else None
        if future is None or future.done():
            self.unmatched.append(message)
        else:
            future.set_result(body)

    async def _request(
        self, message: Message, reply: str, key: str | None, timeout: float | None
    ) -> Any:
        future = await self._send_expecting(message, reply, key)
        return await asyncio.wait_for(future, timeout)

    async def _send_expecting(
        self, message: Message, reply: str, key: str | None
    ) -> asyncio.Future[Any]:
        """Send a request and return the future of its reply; fails at once (ConnectionError)
        when the stream is already over, rather than after the caller's timeout."""
        if self._done.is_set():
            raise ConnectionError(f"worker {self.worker_id} ended the stream")
        future = self._expect(reply, key)
        try:
            await self.send(message)
        except Exception as exc:
            future.cancel()
            raise ConnectionError(f"cannot send to worker {self.worker_id}: {exc!r}") from exc
        return future

    def _ended(self) -> None:
        self._done.set()
        error = ConnectionError(f"worker {self.worker_id} ended the stream")
        waiting = [f for queue in self._fifo.values() for f in queue] + list(self._keyed.values())
        for future in waiting:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting any more
        self._fifo.clear()
        self._keyed.clear()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def wait_closed(self, timeout: float | None = 10.0) -> None:
        """Wait until the worker ends the stream (or the connection drops)."""
        await asyncio.wait_for(self._done.wait(), timeout)

    def close(self) -> None:
        """End the stream from the host's side."""
        self._close.set()

    def pause_reading(self) -> None:
        """Stop reading the worker's messages (HTTP/2 flow control then holds the worker
        back), to test how a worker copes with a host that does not keep up."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def replies(self, kind: str) -> list[Any]:
        """Every message of `kind` (e.g. ``"invocation_response"``) received so far."""
        found = []
        for message in self.messages:
            name, body = betterproto2.which_one_of(message, "content")
            if name == kind:
                found.append(body)
        return found

    def logs_for(self, invocation_id: str) -> list[pb.RpcLog]:
        return [entry for entry in self.logs if entry.invocation_id == invocation_id]

    # -- requests ----------------------------------------------------------------------------
    async def init(
        self,
        *,
        function_app_directory: str = "",
        worker_directory: str = "",
        capabilities: Mapping[str, str] | None = None,
        log_categories: Mapping[str, pb.RpcLogLevel] | None = None,
        host_version: str = "4.1037.0",
        timeout: float | None = 10.0,
    ) -> pb.WorkerInitResponse:
        request = pb.WorkerInitRequest(
            host_version=host_version,
            capabilities=dict(capabilities or {"MultiStream": "10"}),
            log_categories=dict(log_categories or {}),
            worker_directory=worker_directory,
            function_app_directory=function_app_directory or os.getcwd(),
        )
        reply: pb.WorkerInitResponse = await self._request(
            Message(worker_init_request=request), "worker_init_response", None, timeout
        )
        return reply

    async def functions_metadata(
        self, function_app_directory: str = "", *, timeout: float | None = 60.0
    ) -> pb.FunctionMetadataResponse:
        request = pb.FunctionsMetadataRequest(
            function_app_directory=function_app_directory or os.getcwd()
        )
        reply: pb.FunctionMetadataResponse = await self._request(
            Message(functions_metadata_request=request), "function_metadata_response", None, timeout
        )
        return reply

    async def load(
        self,
        function_id: str,
        name: str,
        *,
        bindings: Mapping[str, pb.BindingInfo] | None = None,
        script_file: str = "",
        entry_point: str = "",
        directory: str = "",
        properties: Mapping[str, str] | None = None,
        timeout: float | None = 60.0,
    ) -> pb.FunctionLoadResponse:
        request = self.load_request(
            function_id,
            name,
            bindings=bindings,
            script_file=script_file,
            entry_point=entry_point,
            directory=directory,
            properties=properties,
        )
        return await self.send_load(request, timeout=timeout)

    async def send_load(
        self, request: pb.FunctionLoadRequest, *, timeout: float | None = 60.0
    ) -> pb.FunctionLoadResponse:
        """Send a ready-made `FunctionLoadRequest` and wait for its response."""
        reply: pb.FunctionLoadResponse = await self._request(
            Message(function_load_request=request),
            "function_load_response",
            request.function_id,
            timeout,
        )
        return reply

    @staticmethod
    def load_request(
        function_id: str,
        name: str,
        *,
        bindings: Mapping[str, pb.BindingInfo] | None = None,
        script_file: str = "",
        entry_point: str = "",
        directory: str = "",
        properties: Mapping[str, str] | None = None,
    ) -> pb.FunctionLoadRequest:
        """A `FunctionLoadRequest` shaped like the host's (its properties carry FunctionId)."""
        return pb.FunctionLoadRequest(
            function_id=function_id,
            metadata=pb.RpcFunctionMetadata(
                name=name,
                directory=directory,
                script_file=script_file,
                entry_point=entry_point,
                bindings=dict(bindings or {}),
                properties={"FunctionId": function_id, **(properties or {})},
            ),
        )

    async def load_collection(
        self, requests: Sequence[pb.FunctionLoadRequest], *, timeout: float | None = 60.0
    ) -> pb.FunctionLoadResponseCollection:
        message = Message(
            function_load_request_collection=pb.FunctionLoadRequestCollection(list(requests))
        )
        reply: pb.FunctionLoadResponseCollection = await self._request(
            message, "function_load_response_collection", None, timeout
        )
        return reply

    async def start_invocation(
        self,
        function_id: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        trigger_metadata: Mapping[str, Any] | None = None,
        invocation_id: str | None = None,
        trace_parent: str = "",
    ) -> PendingInvocation:
        """Send an `InvocationRequest` without waiting for its response.

        Input values are Python values converted as the host would (`convert.encode_input`)
        or ready-made `TypedData`.
        """
        invocation_id = invocation_id or str(uuid.uuid4())
        request = pb.InvocationRequest(
            invocation_id=invocation_id,
            function_id=function_id,
            input_data=[
                pb.ParameterBinding(name=name, data=_typed(value))
                for name, value in (inputs or {}).items()
            ],
            trigger_metadata={k: _typed(v) for k, v in (trigger_metadata or {}).items()},
            trace_context=pb.RpcTraceContext(trace_parent=trace_parent),
        )
        future = await self._send_expecting(
            Message(invocation_request=request), "invocation_response", invocation_id
        )
        return PendingInvocation(invocation_id, future)

    async def invoke(
        self,
        function_id: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        trigger_metadata: Mapping[str, Any] | None = None,
        invocation_id: str | None = None,
        timeout: float | None = 30.0,
    ) -> pb.InvocationResponse:
        """Invoke and wait for the `InvocationResponse`."""
        pending = await self.start_invocation(
            function_id, inputs, trigger_metadata=trigger_metadata, invocation_id=invocation_id
        )
        return await pending.result(timeout)

    async def cancel(self, invocation_id: str) -> None:
        await self.send(Message(invocation_cancel=pb.InvocationCancel(invocation_id=invocation_id)))

    async def status(self, *, timeout: float | None = 10.0) -> pb.WorkerStatusResponse:
        request_id = str(uuid.uuid4())
        message = Message(request_id=request_id, worker_status_request=pb.WorkerStatusRequest())
        reply: pb.WorkerStatusResponse = await self._request(
            message, "worker_status_response", request_id, timeout
        )
        return reply

    async def terminate(self, grace_period: float = 5.0) -> None:
        """Send `WorkerTerminate`; the worker should end the stream and exit within it."""
        request = pb.WorkerTerminate(grace_period=datetime.timedelta(seconds=grace_period))
        await self.send(Message(worker_terminate=request))

    async def reload_environment(
        self,
        environment: Mapping[str, str],
        function_app_directory: str = "",
        *,
        timeout: float | None = 30.0,
    ) -> pb.FunctionEnvironmentReloadResponse:
        request = pb.FunctionEnvironmentReloadRequest(
            environment_variables=dict(environment),
            function_app_directory=function_app_directory,
        )
        reply: pb.FunctionEnvironmentReloadResponse = await self._request(
            Message(function_environment_reload_request=request),
            "function_environment_reload_response",
            None,
            timeout,
        )
        return reply

    async def warmup(
        self, worker_directory: str = "", *, timeout: float | None = 90.0
    ) -> pb.WorkerWarmupResponse:
        request = pb.WorkerWarmupRequest(worker_directory=worker_directory)
        reply: pb.WorkerWarmupResponse = await self._request(
            Message(worker_warmup_request=request), "worker_warmup_response", None, timeout
        )
        return reply

    async def close_shared_memory(
        self, map_names: Sequence[str], *, timeout: float | None = 10.0
    ) -> pb.CloseSharedMemoryResourcesResponse:
        request = pb.CloseSharedMemoryResourcesRequest(map_names=list(map_names))
        reply: pb.CloseSharedMemoryResourcesResponse = await self._request(
            Message(close_shared_memory_resources_request=request),
            "close_shared_memory_resources_response",
            None,
            timeout,
        )
        return reply


class InProcessWorker:
    """A worker served by a task in the test's own event loop."""

    def __init__(self, task: asyncio.Task[int], connection: HostConnection) -> None:
        self.task = task
        self.connection = connection

    async def wait(self, timeout: float | None = 10.0) -> int:
        """The exit status `Worker.serve` returned."""
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


class WorkerProcess:
    """A worker subprocess started with the host's argv; its output is collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.connection: HostConnection | None = None
        self._pumps = [
            asyncio.create_task(self._pump(process.stdout, self.stdout)),
            asyncio.create_task(self._pump(process.stderr, self.stderr)),
        ]

    @staticmethod
    async def _pump(source: asyncio.StreamReader | None, sink: bytearray) -> None:
        if source is None:
            return
        while chunk := await source.read(65536):
            sink += chunk

    async def wait(self, timeout: float | None = 10.0) -> int:
        """The exit status, once the process exited (its output fully collected)."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait(self._pumps, timeout=5)
        return code

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
        check_peer: Callable[[str, tuple[str, int] | None], str | None] | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        """Args:
        host: loopback address to listen on.
        max_message_length: the gRPC message size limit, as the host passes it to workers.
        on_connection: called with each accepted `HostConnection` before its first message
            is read (e.g. to set `HostConnection.observer`).
        check_peer: called with the worker id and the peer's (address, port) of each
            StartStream naming a worker it launched; a reason (str) refuses the stream.
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
        """Serve `worker` in this event loop and wait for its StartStream; what stops it
        from serving (e.g. a `TypeError` about the class) is raised here at once."""
        args = self.host_args()
        task = asyncio.create_task(worker.serve(args))
        waiter = asyncio.create_task(self.connection(args.worker_id, timeout))
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            waiter.cancel()
            raise
        if not waiter.done():
            waiter.cancel()
            code = task.result()  # raises what the worker raised
            raise RuntimeError(f"the worker stopped with {code} before StartStream")
        try:
            connection = waiter.result()
        except BaseException:
            task.cancel()
            raise
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

        With `connect`, wait for its StartStream (the connection is then on the result).
        """
        args = self.host_args()
        environment = dict(os.environ if env is None else env)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        process = await asyncio.create_subprocess_exec(
            *command,
            *args.to_argv(),
            cwd=cwd,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started = WorkerProcess(process)
        self._processes.append(started)
        if connect:
            waiter = asyncio.create_task(self.connection(args.worker_id, timeout))
            exited = asyncio.create_task(process.wait())
            done, _ = await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                await started.wait(5)
                raise RuntimeError(
                    f"worker exited with {process.returncode} before StartStream; stderr:\n"
                    + started.stderr.decode(errors="replace")
                )
            exited.cancel()
            started.connection = waiter.result()
        return started

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
            problem = self.check_peer(worker_id, (str(peer[0]), int(peer[1])) if peer else None)
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
