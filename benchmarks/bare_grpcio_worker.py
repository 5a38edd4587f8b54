"""Baseline 2: an echo worker on grpcio (asyncio API) + Google protobuf, no SDK.

The ceiling for a Python worker on this machine: HTTP/2 and parsing in C. The protobuf
classes are compiled from proto/ at bench time; the driver passes their directory in
``WORKERKIT_BENCH_PB2``. One task reads, handles and replies inline.

    WORKERKIT_BENCH_PB2=DIR python benchmarks/bare_grpcio_worker.py --host ... (host's argv)
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from benchmarks._hostargs import parse
    from benchmarks._pb2 import ENV, load
else:  # run as a script: the sibling modules are on sys.path
    from _hostargs import parse
    from _pb2 import ENV, load

pb: Any = load(os.environ[ENV])
Message = pb.StreamingMessage
PATH = "/AzureFunctionsRpcMessages.FunctionRpc/EventStream"
CAPABILITIES = {"RpcHttpBodyOnly": "true", "RawHttpBodyBytes": "true",
                "RpcHttpTriggerMetadataRemoved": "true", "TypedDataCollection": "true"}  # fmt: skip
LOG_LINES = 10
SUCCESS = 1
USER, INFORMATION = 0, 2


def _content_type(http: Any) -> str:
    if "content-type" in http.headers:
        return str(http.headers["content-type"])
    if "content-type" in http.nullable_headers:
        return str(http.nullable_headers["content-type"].value)
    return "application/octet-stream"


async def serve() -> int:
    args = parse(sys.argv[1:])
    logging_functions: set[str] = set()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(f"{args.host}:{args.port}", options=options) as channel:
        call: Any = channel.stream_stream(
            PATH,
            request_serializer=Message.SerializeToString,
            response_deserializer=Message.FromString,
        )()
        start = Message(request_id=args.request_id)
        start.start_stream.worker_id = args.worker_id
        await call.write(start)
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return 1
            kind = message.WhichOneof("content")
            if kind == "invocation_request":
                invocation = message.invocation_request
                iid = invocation.invocation_id
                http = invocation.input_data[0].data.http
                if invocation.function_id in logging_functions:
                    for line in range(LOG_LINES):
                        log = Message()
                        entry = log.rpc_log
                        entry.invocation_id = iid
                        entry.category = "bench"
                        entry.level = INFORMATION
                        entry.message = f"echo log line {line}"
                        entry.log_category = USER
                        await call.write(log)
                reply = Message()
                response = reply.invocation_response
                response.invocation_id = iid
                response.result.status = SUCCESS
                out = response.return_value.http
                out.status_code = "200"
                out.body.CopyFrom(http.body)
                out.headers["content-type"] = _content_type(http)
                await call.write(reply)
            elif kind == "function_load_request":
                load_request = message.function_load_request
                if load_request.metadata.name == "echolog":
                    logging_functions.add(load_request.function_id)
                reply = Message()
                reply.function_load_response.function_id = load_request.function_id
                reply.function_load_response.result.status = SUCCESS
                await call.write(reply)
            elif kind == "worker_init_request":
                reply = Message(request_id=message.request_id)
                init = reply.worker_init_response
                init.worker_version = "0"
                init.capabilities.update(CAPABILITIES)
                init.result.status = SUCCESS
                await call.write(reply)
            elif kind == "worker_status_request":
                reply = Message(request_id=message.request_id)
                reply.worker_status_response.SetInParent()
                await call.write(reply)
            elif kind == "worker_terminate":
                return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
