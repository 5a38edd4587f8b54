"""The host's end of one worker's stream: requests out, replies matched as the real host
matches them (status by ``request_id``, loads by ``function_id``, invocations by
``invocation_id``, the rest in order per kind). Public as `workerkit.testing.HostConnection`;
`workerkit host` and `workerkit conformance` use it too.

Two levels: `load_function` and `call` return typed results (`results`) for testing a
worker's functions; `load`, `send_load`, `invoke`, `start_invocation` and the other requests
return the protocol's messages as received, for testing the protocol itself."""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import betterproto2
from grpclib.server import Stream

from .._generated import AzureFunctionsRpcMessages as pb
from ..convert import encode_input
from .results import CallResult, FunctionLoadFailed, LoadResult

Message = pb.StreamingMessage
#: Function ids `load_function` derives from names: GUIDs, like the host's, stable per name.
_FUNCTION_IDS = uuid.UUID("5f0c6d2e-6b8e-4d55-9a43-7c1f0b6f2a10")
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


def _parameter(name: str, value: Any) -> pb.ParameterBinding:
    """An input: a value, or a reference to a shared memory map (`pb.RpcSharedMemory`)."""
    if isinstance(value, pb.RpcSharedMemory):
        return pb.ParameterBinding(name=name, rpc_shared_memory=value)
    return pb.ParameterBinding(name=name, data=_typed(value))


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
        """Send a `FunctionLoadRequest` and return the `FunctionLoadResponse` as received,
        a Failure too (nothing is raised for it); `load_function` is the typed form."""
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

    async def load_function(
        self,
        name: str,
        *,
        bindings: Mapping[str, pb.BindingInfo] | None = None,
        script_file: str = "",
        entry_point: str = "",
        directory: str = "",
        properties: Mapping[str, str] | None = None,
        function_id: str | None = None,
        check: bool = True,
        timeout: float | None = 60.0,
    ) -> LoadResult:
        """Load a function as the host does and return how the worker answered.

        Args:
            name: the function's name.
            bindings: its bindings by name (`binding`, `http_bindings`).
            script_file: its script file; the host sends an absolute path (a relative one
                is resolved by the worker, against its own working directory).
            entry_point: its entry point, if the worker uses one.
            directory: the function's directory (the host sends the absolute path).
            properties: more metadata properties (``FunctionId`` is always set).
            function_id: the id to load it under; default: a GUID derived from `name`.
            check: raise `FunctionLoadFailed` when the worker answers Failure; with False,
                return the result with `LoadResult.error` set instead.
            timeout: seconds to wait for the response (TimeoutError).

        Raises:
            FunctionLoadFailed: the worker failed to load the function (with `check`).
            ConnectionError: the stream is over.
        """
        function_id = function_id or str(uuid.uuid5(_FUNCTION_IDS, name))
        request = self.load_request(
            function_id,
            name,
            bindings=bindings,
            script_file=script_file,
            entry_point=entry_point,
            directory=directory,
            properties=properties,
        )
        result = LoadResult.from_response(name, await self.send_load(request, timeout=timeout))
        if check and not result.ok:
            raise FunctionLoadFailed(result)
        return result

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
        retry_context: pb.RetryContext | None = None,
        trace_context: pb.RpcTraceContext | None = None,
    ) -> PendingInvocation:
        """Send an `InvocationRequest` without waiting for its response.

        Input values are Python values converted as the host would (`convert.encode_input`),
        ready-made `TypedData`, or `RpcSharedMemory` references to map files;
        `retry_context` is sent as given (the host sends one on every attempt of a function
        with a retry policy); `trace_context`, when given, instead of one of `trace_parent`.
        """
        invocation_id = invocation_id or str(uuid.uuid4())
        request = pb.InvocationRequest(
            invocation_id=invocation_id,
            function_id=function_id,
            input_data=[_parameter(name, value) for name, value in (inputs or {}).items()],
            trigger_metadata={k: _typed(v) for k, v in (trigger_metadata or {}).items()},
            trace_context=trace_context or pb.RpcTraceContext(trace_parent=trace_parent),
            retry_context=retry_context,
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
        """Invoke and wait for the `InvocationResponse`, returned as received; `call` is the
        typed form."""
        pending = await self.start_invocation(
            function_id, inputs, trigger_metadata=trigger_metadata, invocation_id=invocation_id
        )
        return await pending.result(timeout)

    async def call(
        self,
        function: LoadResult | str,
        inputs: Mapping[str, Any] | None = None,
        *,
        trigger_metadata: Mapping[str, Any] | None = None,
        invocation_id: str | None = None,
        timeout: float | None = 30.0,
    ) -> CallResult:
        """Invoke a function and return how the invocation ended, its values decoded.

        Args:
            function: what `load_function` returned, or a function id.
            inputs: input values by binding name: Python values, converted as the host
                would (`convert.encode_input`), or ready-made `TypedData`.
            trigger_metadata: trigger metadata by name, converted the same way.
            invocation_id: the invocation's id; default: a new GUID.
            timeout: seconds to wait for the response (TimeoutError).

        Raises:
            ConversionError: an input cannot be sent, or the worker sent back a value the
                host would reject (`call_result`).
            ConnectionError: the stream is over.
        """
        function_id = function.function_id if isinstance(function, LoadResult) else function
        response = await self.invoke(
            function_id,
            inputs,
            trigger_metadata=trigger_metadata,
            invocation_id=invocation_id,
            timeout=timeout,
        )
        return self.call_result(response)

    def call_result(self, response: pb.InvocationResponse) -> CallResult:
        """The typed result of a received `InvocationResponse` (e.g. of a
        `start_invocation`), with the log records the worker sent for that invocation (kept
        while `record` is true).

        Raises:
            ConversionError: a value the host would reject (a collection, model binding
                data, shared memory) or cannot read; the message names it.
        """
        return CallResult.from_response(response, self.logs_for(response.invocation_id))

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
