"""The README's worker, as a subprocess, driven by an independent host: grpcio + protobuf.

Nothing of workerkit runs on the host side here: the server is grpcio, the messages are
Google's protobuf classes compiled from proto/, and the command line is spelled out as the
real host builds it (HOST_PROTOCOL §1.1). This is the "done" check of the core SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from conftest import EXAMPLES, arun
from google_pb2 import Pb2

WORKER = EXAMPLES / "templates" / "worker.py"
APP = EXAMPLES / "templates" / "app"
INVOCATIONS = 1000
CONCURRENT_BATCH = 50


class GrpcioHost:
    """A minimal Functions host: one EventStream, replies routed by id or kind."""

    def __init__(self, pb2: Pb2) -> None:
        self.pb = pb2.rpc
        self.connected: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.finished = asyncio.Event()
        self.waiting: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self.received: list[Any] = []
        self.first: Any = None
        self.write_lock = asyncio.Lock()  # grpcio allows one write in progress per call

    def handler(self) -> grpc.GenericRpcHandler:
        message = self.pb.StreamingMessage
        method = grpc.stream_stream_rpc_method_handler(
            self.event_stream,
            request_deserializer=message.FromString,
            response_serializer=message.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(
            "AzureFunctionsRpcMessages.FunctionRpc", {"EventStream": method}
        )

    async def event_stream(self, request_iterator: Any, context: Any) -> None:
        self.first = await context.read()
        self.connected.set_result(context)
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                break
            self.received.append(message)
            kind = message.WhichOneof("content")
            key = ""
            if kind == "invocation_response":
                key = message.invocation_response.invocation_id
            elif kind == "function_load_response":
                key = message.function_load_response.function_id
            elif kind == "worker_status_response":
                key = message.request_id
            future = self.waiting.pop((kind, key), None)
            if future is not None:
                future.set_result(message)
        self.finished.set()

    async def request(self, reply: str, key: str = "", **content: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.waiting[(reply, key)] = future
        await self.send(self.pb.StreamingMessage(**content))
        return await asyncio.wait_for(future, 30)

    async def send(self, message: Any) -> None:
        context = await self.connected
        async with self.write_lock:
            await context.write(message)


@contextlib.asynccontextmanager
async def grpcio_host(pb2: Pb2) -> AsyncIterator[tuple[GrpcioHost, int]]:
    host = GrpcioHost(pb2)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((host.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield host, port
    finally:
        await server.stop(grace=None)


def host_command_line(port: int, worker_id: str, request_id: str) -> list[str]:
    line = (
        f" --host 127.0.0.1 --port {port} --workerId {worker_id} --requestId {request_id}"
        " --grpcMaxMessageLength 2147483647"
        f" --functions-uri http://127.0.0.1:{port}/ --functions-worker-id {worker_id}"
        f" --functions-request-id {request_id} --functions-grpc-max-message-length 2147483647"
    )
    return [sys.executable, "-u", str(WORKER), *line.split()]


def http_request(pb: Any, name: str, path: str, query: dict[str, str]) -> Any:
    return pb.TypedData(
        http=pb.RpcHttp(
            method="GET",
            url=f"http://127.0.0.1:7071{path}",
            nullable_headers={"host": pb.NullableString(value="127.0.0.1:7071")},
            nullable_query={k: pb.NullableString(value=v) for k, v in query.items()},
        )
    )


def test_readme_worker_under_an_independent_grpcio_host(pb2: Pb2) -> None:
    async def scenario() -> None:
        pb = pb2.rpc
        pb.NullableString = pb2.nullable.NullableString
        async with grpcio_host(pb2) as (host, port):
            worker_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
            process = await asyncio.create_subprocess_exec(
                *host_command_line(port, worker_id, request_id),
                cwd=APP,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await asyncio.wait_for(asyncio.shield(host.connected), 30)
                assert host.first.WhichOneof("content") == "start_stream"
                assert host.first.start_stream.worker_id == worker_id
                assert host.first.request_id == request_id

                init = await host.request(
                    "worker_init_response",
                    worker_init_request=pb.WorkerInitRequest(
                        host_version="4.1037.0",
                        capabilities={"MultiStream": "10"},
                        function_app_directory=str(APP),
                    ),
                )
                init = init.worker_init_response
                assert init.result.status == pb.StatusResult.Success
                assert init.capabilities["HandlesInvocationCancelMessage"] == "true"
                assert init.worker_metadata.runtime_name == "templates"

                binding = pb.BindingInfo
                bindings = {
                    "req": binding(type="httpTrigger", direction=binding.Direction.Value("in")),
                    "$return": binding(type="http", direction=binding.Direction.Value("out")),
                }
                for name in ("hello", "sum"):
                    script = APP / name / f"{name}.txt"
                    loaded = await host.request(
                        "function_load_response",
                        name,
                        function_load_request=pb.FunctionLoadRequest(
                            function_id=name,
                            metadata=pb.RpcFunctionMetadata(
                                name=name, script_file=str(script), bindings=bindings
                            ),
                        ),
                    )
                    status = loaded.function_load_response.result.status
                    assert status == pb.StatusResult.Success

                async def invoke(i: int) -> None:
                    invocation_id = f"inv-{i}"
                    reply = await host.request(
                        "invocation_response",
                        invocation_id,
                        invocation_request=pb.InvocationRequest(
                            invocation_id=invocation_id,
                            function_id="hello",
                            input_data=[
                                pb.ParameterBinding(
                                    name="req",
                                    data=http_request(pb, "req", "/api/hello", {"name": f"n{i}"}),
                                )
                            ],
                        ),
                    )
                    response = reply.invocation_response
                    assert response.result.status == pb.StatusResult.Success, response.result
                    http = response.return_value.http
                    assert http.status_code == "200"
                    assert http.body.string == f"Hello, n{i}!\n"

                done = 0
                while done < INVOCATIONS // 2:  # one at a time
                    await invoke(done)
                    done += 1
                while done < INVOCATIONS:  # then batches in flight together
                    await asyncio.gather(*(invoke(done + k) for k in range(CONCURRENT_BATCH)))
                    done += CONCURRENT_BATCH
                responses = [m for m in host.received if m.HasField("invocation_response")]
                assert len(responses) == INVOCATIONS
                assert len({r.invocation_response.invocation_id for r in responses}) == INVOCATIONS

                status_id = str(uuid.uuid4())
                status = await host.request(
                    "worker_status_response",
                    status_id,
                    request_id=status_id,
                    worker_status_request=pb.WorkerStatusRequest(),
                )
                assert status.request_id == status_id

                cancel = pb.InvocationCancel(invocation_id="inv-3")  # long finished
                await host.send(pb.StreamingMessage(invocation_cancel=cancel))
                terminate = pb.WorkerTerminate()
                terminate.grace_period.FromSeconds(5)
                await host.send(pb.StreamingMessage(worker_terminate=terminate))
                assert await asyncio.wait_for(process.wait(), 60) == 0
                await asyncio.wait_for(host.finished.wait(), 30)
                assert len([m for m in host.received if m.HasField("invocation_response")]) == (
                    INVOCATIONS
                )
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    arun(scenario(), timeout=120)
