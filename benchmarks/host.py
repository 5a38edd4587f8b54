"""A lean Functions host for benchmarks: a grpclib server on 127.0.0.1 that keeps its own
per-invocation cost small, so the worker is what gets measured.

- Frames stay bytes through grpclib (no codec work); replies are parsed with Google's
  protobuf classes (C), not with betterproto2.
- Invocation requests are serialised once per scenario: a request is the template's prefix,
  a fixed-width invocation id and the suffix.
- Every `InvocationResponse` is checked (Success, HTTP status 200, echoed body byte for
  byte, and for the logging function its 10 user logs before the response); a scenario with
  any wrong reply reports the error instead of figures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server

PATH = "/AzureFunctionsRpcMessages.FunctionRpc/EventStream"
WINDOW = 16 * 1024 * 1024
SUCCESS = 1
USER = 0
#: `RpcLog.Level.Warning`: worker logs at this level and above are kept (`Connection.warnings`).
WARNING = 3
#: How many of them are kept per connection.
KEPT_WARNINGS = 20
#: An invocation id is this wide, always; the template has this placeholder in its place.
ID_PLACEHOLDER = "ffffffff-ffff-4fff-bfff-ffffffffffff"
HOST_CAPABILITIES = {"MultiStream": "10"}
KEEP_OUTPUT = 64 * 1024


class RawCodec(CodecBase):
    """Frames in and out as bytes: the host parses what it needs itself."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def echo_run(
    scenario: str,
    echo: Callable[[], Awaitable[float]],
    calls: int,
    in_flight: int,
    worker_cpu: Callable[[], float],
) -> dict[str, Any]:
    """`calls` echoes, `in_flight` at a time (`echo` does one, checks it, and returns its
    latency in seconds): the record of the run, with the worker's CPU per call as
    `worker_cpu` (its CPU seconds so far) measures it."""
    latencies: list[float] = []
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            latencies.append(await echo())

    cpu = worker_cpu()
    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    elapsed = time.perf_counter() - began
    cpu = worker_cpu() - cpu
    return {
        "scenario": scenario,
        "in_flight": in_flight,
        "invocations": calls,
        "per_second": round(calls / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "worker_cpu_us": round(cpu / calls * 1e6, 1),
    }


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid` in KiB, from /proc."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


@dataclass(frozen=True)
class Function:
    """A function of the app, as the host reads it from function.json."""

    name: str
    function_id: str
    directory: Path
    script_file: Path
    entry_point: str
    bindings: tuple[Mapping[str, Any], ...]


def read_app(app: Path) -> list[Function]:
    """Host indexing: every ``*/function.json`` of the app (HOST_PROTOCOL §3.3)."""
    functions = []
    for spec_path in sorted(app.glob("*/function.json")):
        spec = json.loads(spec_path.read_text())
        name = spec_path.parent.name
        functions.append(
            Function(
                name=name,
                function_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{name}")),
                directory=spec_path.parent,
                script_file=spec_path.parent / spec.get("scriptFile", "__init__.py"),
                entry_point=spec.get("entryPoint", ""),
                bindings=tuple(spec["bindings"]),
            )
        )
    return functions


class Template:
    """One serialised `InvocationRequest` with a slot for the invocation id."""

    def __init__(self, message: Any) -> None:
        data = message.SerializeToString()
        marker = ID_PLACEHOLDER.encode()
        if data.count(marker) != 1:
            raise ValueError("the invocation id placeholder must occur exactly once")
        self.prefix, _, self.suffix = data.partition(marker)

    def render(self, invocation_id: str) -> bytes:
        return b"".join((self.prefix, invocation_id.encode(), self.suffix))


@dataclass
class Scenario:
    """One measured run: what was sent, what came back, and whether it was right."""

    body: bytes
    logs_expected: int
    total: int
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    log_counts: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0
    first_error: str = ""
    first_send: float = 0.0
    last_reply: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    slots: asyncio.Semaphore | None = None

    def fail(self, problem: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = problem

    def check(self, response: Any, now: float) -> None:
        sent = self.sent_at.pop(response.invocation_id, None)
        if sent is None:
            self.fail(f"a response for an invocation not in flight: {response.invocation_id!r}")
            return
        self.latencies.append(now - sent)
        self.last_reply = now
        problem = _problem(response, self.body)
        if problem is None and self.logs_expected:
            seen = self.log_counts.pop(response.invocation_id, 0)
            if seen < self.logs_expected:
                problem = f"{seen} user logs before the response, expected {self.logs_expected}"
        if problem is not None:
            self.fail(problem)
        if self.slots is not None:
            self.slots.release()
        if len(self.latencies) == self.total:
            self.done.set()


def _problem(response: Any, body: bytes) -> str | None:
    """What is wrong with an echo's `InvocationResponse` (None when it is right)."""
    result = response.result
    if result.status != SUCCESS:
        return f"status {result.status}: {result.exception.message[:300]!r}"
    value = response.return_value
    if value.WhichOneof("data") != "http":
        outputs = [o.data for o in response.output_data if o.data.WhichOneof("data") == "http"]
        if len(outputs) != 1:
            return f"no http response (return_value is {value.WhichOneof('data')!r})"
        value = outputs[0]
    http = value.http
    if http.status_code not in ("200", ""):
        return f"HTTP status {http.status_code!r}"
    kind = http.body.WhichOneof("data")
    if kind == "bytes" or kind == "stream":
        echoed = getattr(http.body, kind)
    elif kind == "string":
        echoed = http.body.string.encode()
    else:
        return f"body of kind {kind!r}"
    if echoed != body:
        return f"wrong body: {len(echoed)} bytes {echoed[:40]!r}, expected {len(body)} bytes"
    return None


class Connection:
    """The host's side of one worker's stream."""

    def __init__(self, pb: Any, stream: Any, start: Any, started_at: float) -> None:
        self.pb = pb
        self.stream = stream
        self.worker_id = start.start_stream.worker_id
        self.started_at = started_at
        self.capabilities: dict[str, str] = {}
        self.scenario: Scenario | None = None
        self.system_logs = 0
        #: The first `KEPT_WARNINGS` warnings the worker logged outside an invocation (the
        #: example's note that a function went back to the thread pool, for one).
        self.warnings: list[str] = []
        self.closed = asyncio.Event()
        self._waiting: dict[tuple[str, str], collections.deque[asyncio.Future[Any]]] = {}

    async def send(self, data: bytes) -> None:
        await self.stream.send_message(data)

    def _expect(self, kind: str, key: str = "") -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((kind, key), collections.deque()).append(future)
        return future

    async def read(self) -> None:
        parse = self.pb.StreamingMessage.FromString
        clock = time.perf_counter
        try:
            while (data := await self.stream.recv_message()) is not None:
                message = parse(data)
                kind = message.WhichOneof("content")
                scenario = self.scenario
                if kind == "invocation_response":
                    if scenario is not None:
                        scenario.check(message.invocation_response, clock())
                elif kind == "rpc_log":
                    entry = message.rpc_log
                    if scenario is not None and entry.invocation_id and entry.log_category == USER:
                        scenario.log_counts[entry.invocation_id] += 1
                    else:
                        self.system_logs += 1
                        if entry.level >= WARNING and len(self.warnings) < KEPT_WARNINGS:
                            self.warnings.append(entry.message)
                else:
                    key = ""
                    if kind == "function_load_response":
                        key = message.function_load_response.function_id
                    waiting = self._waiting.get((kind, key))
                    if waiting:
                        waiting.popleft().set_result(getattr(message, kind))
        finally:
            self.closed.set()
            for queue in self._waiting.values():
                for future in queue:
                    if not future.done():
                        future.set_exception(ConnectionError("the worker ended its stream"))
                        future.exception()

    # -- the handshake ---------------------------------------------------------------------
    async def init(self, app: Path, worker_directory: Path, timeout: float) -> None:
        message = self.pb.StreamingMessage()
        request = message.worker_init_request
        request.host_version = "4.1037.0"
        request.capabilities.update(HOST_CAPABILITIES)
        request.worker_directory = str(worker_directory)
        request.function_app_directory = str(app)
        reply = self._expect("worker_init_response")
        await self.send(message.SerializeToString())
        response = await asyncio.wait_for(reply, timeout)
        if response.result.status != SUCCESS:
            raise RuntimeError(f"init failed: {response.result.exception.message}")
        self.capabilities = dict(response.capabilities)

    async def load(self, functions: Sequence[Function], timeout: float) -> None:
        """One `FunctionLoadRequest` per function, all sent before any reply is awaited."""
        replies = []
        for function in functions:
            replies.append(self._expect("function_load_response", function.function_id))
            await self.send(self._load_request(function))
        for function, response in zip(
            functions, await asyncio.wait_for(asyncio.gather(*replies), timeout), strict=True
        ):
            if response.result.status != SUCCESS:
                raise RuntimeError(
                    f"{function.name} failed to load: {response.result.exception.message}"
                )

    def _load_request(self, function: Function) -> bytes:
        message = self.pb.StreamingMessage()
        request = message.function_load_request
        request.function_id = function.function_id
        metadata = request.metadata
        metadata.name = function.name
        metadata.function_id = function.function_id
        metadata.directory = str(function.directory)
        metadata.script_file = str(function.script_file)
        metadata.entry_point = function.entry_point
        # The host names the worker's language; the Node.js worker's apps are JavaScript.
        node = function.script_file.suffix in (".js", ".mjs", ".cjs")
        metadata.language = "node" if node else "python"
        metadata.properties["FunctionId"] = function.function_id
        directions = {"in": 0, "out": 1, "inout": 2}
        for spec in function.bindings:
            info = metadata.bindings[spec["name"]]
            info.type = spec["type"]
            info.direction = directions[spec.get("direction", "in")]
            metadata.raw_bindings.append(json.dumps(spec, separators=(",", ":")))
        data: bytes = message.SerializeToString()
        return data

    async def terminate(self, grace: float = 2.0) -> None:
        message = self.pb.StreamingMessage()
        message.worker_terminate.grace_period.FromSeconds(int(grace))
        with contextlib.suppress(Exception):
            await self.send(message.SerializeToString())

    # -- invocations -----------------------------------------------------------------------
    def template(
        self,
        function: Function,
        body: bytes,
        content_type: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> Template:
        """An HTTP POST to `function` with `body`, shaped as the host sends it to a worker
        with this worker's capabilities (HOST_PROTOCOL §5.1-5.3)."""
        pb = self.pb
        nullable = self.capabilities.get("UseNullableValueDictionaryForHttp") == "true"
        headers = {
            "content-type": content_type,
            "content-length": str(len(body)),
            "host": "127.0.0.1:7071",
            "user-agent": "workerkit-bench/1",
            "accept": "*/*",
        }
        message = pb.StreamingMessage()
        request = message.invocation_request
        request.invocation_id = ID_PLACEHOLDER
        request.function_id = function.function_id
        binding = request.input_data.add()
        binding.name = "req"
        http = binding.data.http
        http.method = "POST"
        http.url = f"http://127.0.0.1:7071/api/{function.name}"
        for key, value in headers.items():
            if nullable:
                http.nullable_headers[key].value = value
            else:
                http.headers[key] = value
        http.body.bytes = body
        # Trigger metadata as the HTTP extension builds it (minus the request itself, which
        # every worker here asks to be removed): Query, Headers and a JSON body's properties.
        trigger = request.trigger_metadata
        trigger["Query"].json = "{}"
        trigger["Headers"].json = json.dumps(headers)
        for key, value in (metadata or {}).items():
            if isinstance(value, str):
                trigger[key].string = value
            else:
                trigger[key].json = json.dumps(value)
        request.trace_context.trace_parent = (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        )
        return Template(message)

    async def run(
        self,
        template: Template,
        body: bytes,
        total: int,
        in_flight: int,
        *,
        logs: int = 0,
        tag: int = 0,
        timeout: float = 120.0,
    ) -> Scenario:
        """Send `total` invocations keeping `in_flight` outstanding; check every reply."""
        scenario = Scenario(body=body, logs_expected=logs, total=total)
        scenario.slots = slots = asyncio.Semaphore(in_flight)
        self.scenario = scenario
        sent_at = scenario.sent_at
        render, send, clock = template.render, self.stream.send_message, time.perf_counter
        suffix = f"-{tag & 0xFFFF:04x}-4000-8000-000000000000"
        try:
            async with asyncio.timeout(timeout):
                scenario.first_send = clock()
                for number in range(total):
                    await slots.acquire()
                    invocation_id = f"{number:08x}{suffix}"
                    data = render(invocation_id)
                    sent_at[invocation_id] = clock()
                    await send(data)
                await scenario.done.wait()
        except TimeoutError:
            scenario.fail(
                f"timed out after {timeout:.0f} s with {len(scenario.latencies)} of {total} replies"
            )
        finally:
            self.scenario = None
        return scenario


class _GrpcioStream:
    """A grpcio server call with the two methods `Connection` uses."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def recv_message(self) -> bytes | None:
        data = await self._context.read()
        return None if data is _grpc().aio.EOF else bytes(data)

    async def send_message(self, data: bytes) -> None:
        await self._context.write(data)


def _grpc() -> Any:
    """grpcio, imported only when the grpcio host is used."""
    import grpc  # type: ignore[import-untyped]

    return grpc


class BenchHost:
    """The gRPC server; `expect(worker_id)` resolves with that worker's `Connection` once its
    StartStream arrives. `impl` is the server library: ``grpclib`` or ``grpcio``."""

    def __init__(self, pb: Any, impl: str = "grpclib") -> None:
        if impl not in ("grpclib", "grpcio"):
            raise ValueError(f"unknown host implementation {impl!r}")
        self.pb = pb
        self.impl = impl
        self.port = 0
        self._server: Any = None
        self._connections: dict[str, asyncio.Future[Connection]] = {}

    def __mapping__(self) -> dict[str, Handler]:
        return {PATH: Handler(self._event_stream, Cardinality.STREAM_STREAM, bytes, bytes)}

    async def start(self) -> None:
        if self.impl == "grpcio":
            grpc = _grpc()
            unlimited = [("grpc.max_send_message_length", -1),
                         ("grpc.max_receive_message_length", -1)]  # fmt: skip
            server = grpc.aio.server(options=unlimited)
            method = grpc.stream_stream_rpc_method_handler(self._grpcio_event_stream)
            service, _, name = PATH.strip("/").rpartition("/")
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, {name: method}),)
            )
            self.port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self._server = server
            return
        config = Configuration(http2_connection_window_size=WINDOW, http2_stream_window_size=WINDOW)
        self._server = Server([self], codec=RawCodec(), config=config)
        await self._server.start("127.0.0.1", 0)
        listening: Any = self._server._server
        self.port = int(listening.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        if self.impl == "grpcio":
            await self._server.stop(1.0)
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def expect(self, worker_id: str) -> asyncio.Future[Connection]:
        future = asyncio.get_running_loop().create_future()
        self._connections[worker_id] = future
        return future

    async def _grpcio_event_stream(self, request_iterator: Any, context: Any) -> None:
        await self._event_stream(_GrpcioStream(context))

    async def _event_stream(self, stream: Any) -> None:
        data = await stream.recv_message()
        started_at = time.perf_counter()
        if data is None:
            return
        start = self.pb.StreamingMessage.FromString(data)
        future = self._connections.pop(start.start_stream.worker_id, None)
        if start.WhichOneof("content") != "start_stream" or future is None or future.done():
            return  # what the real host does with an unknown worker: end the call
        connection = Connection(self.pb, stream, start, started_at)
        future.set_result(connection)
        await connection.read()


@dataclass
class Process:
    """A worker process started with the host's command line; its output is kept."""

    process: asyncio.subprocess.Process
    spawned_at: float
    worker_id: str
    output: bytearray = field(default_factory=bytearray)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self) -> str:
        return self.output[-4000:].decode(errors="replace")

    async def stop(self, connection: Connection | None = None, grace: float = 2.0) -> None:
        """WorkerTerminate when connected, then SIGKILL once `grace` has passed."""
        if connection is not None and self.process.returncode is None:
            await connection.terminate(grace)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), grace + 0.5)
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        for pump in self.pumps:
            pump.cancel()


async def _pump(source: asyncio.StreamReader | None, sink: bytearray) -> None:
    if source is None:
        return
    while chunk := await source.read(65536):
        sink += chunk
        if len(sink) > KEEP_OUTPUT:
            del sink[: len(sink) - KEEP_OUTPUT]


async def spawn(
    host: BenchHost,
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
) -> tuple[Process, asyncio.Future[Connection]]:
    """Start `command` + the host's argv (both spellings, host order, HOST_PROTOCOL §1.1)."""
    worker_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    uri = f"http://127.0.0.1:{host.port}/"
    limit = "2147483647"
    argv = [
        "--host", "127.0.0.1", "--port", str(host.port), "--workerId", worker_id,
        "--requestId", request_id, "--grpcMaxMessageLength", limit,
        "--functions-uri", uri, "--functions-worker-id", worker_id,
        "--functions-request-id", request_id, "--functions-grpc-max-message-length", limit,
    ]  # fmt: skip
    connected = host.expect(worker_id)
    spawned_at = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command,
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started = Process(process, spawned_at, worker_id)
    started.pumps.append(asyncio.create_task(_pump(process.stdout, started.output)))
    return started, connected


async def connect(
    started: Process, connected: asyncio.Future[Connection], timeout: float
) -> Connection:
    """Wait for the worker's StartStream; fail with its output if it exits first."""
    exited: asyncio.Future[Any] = asyncio.ensure_future(started.process.wait())
    waiting: set[asyncio.Future[Any]] = {connected, exited}
    try:
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if connected not in done:
        connected.cancel()
        why = f"exited with {started.process.returncode}" if exited in done else "timed out"
        await asyncio.sleep(0.1)
        raise RuntimeError(f"worker {why} before StartStream; output:\n{started.tail()}")
    return connected.result()
