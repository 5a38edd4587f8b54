"""Baseline 1: an echo worker on grpclib + betterproto2 with no SDK (the ceiling of our stack).

It uses only workerkit's generated message classes, loaded without running
``workerkit/__init__.py``, so none of the SDK is imported. One task reads, handles and replies
inline: no queues, no tasks per invocation, no conversion. The request's body `TypedData` is
put into the response as it is.

    python benchmarks/bare_grpclib_worker.py --host ... (the host's argv)
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase

if TYPE_CHECKING:
    from benchmarks._hostargs import parse
else:  # run as a script: the sibling module is on sys.path
    from _hostargs import parse


def _generated() -> Any:
    """workerkit._generated.AzureFunctionsRpcMessages without importing the workerkit package."""
    if "workerkit" not in sys.modules:
        spec = importlib.util.find_spec("workerkit")
        if spec is None or spec.submodule_search_locations is None:
            raise SystemExit("workerkit is not installed")
        stub = types.ModuleType("workerkit")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["workerkit"] = stub
    return importlib.import_module("workerkit._generated.AzureFunctionsRpcMessages")


pb = _generated()
Message = pb.StreamingMessage
PATH = "/AzureFunctionsRpcMessages.FunctionRpc/EventStream"
WINDOW = 16 * 1024 * 1024  # the same HTTP/2 windows workerkit's transport asks for
CAPABILITIES = {"RpcHttpBodyOnly": "true", "RawHttpBodyBytes": "true",
                "RpcHttpTriggerMetadataRemoved": "true", "TypedDataCollection": "true"}  # fmt: skip
LOG_LINES = 10


class Codec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return message_type.parse(data)


def _content_type(http: Any) -> str:
    if "content-type" in http.headers:
        return str(http.headers["content-type"])
    wrapped = http.nullable_headers.get("content-type")
    return str(wrapped.value) if wrapped is not None else "application/octet-stream"


async def serve() -> int:
    args = parse(sys.argv[1:])
    ok = pb.StatusResult(status=pb.StatusResultStatus.Success)
    logging_functions: set[str] = set()
    config = Configuration(http2_connection_window_size=WINDOW, http2_stream_window_size=WINDOW)
    channel = Channel(args.host, args.port, codec=Codec(), config=config)
    try:
        async with channel.request(PATH, Cardinality.STREAM_STREAM, Message, Message) as stream:
            await stream.send_request()
            start = pb.StartStream(worker_id=args.worker_id)
            await stream.send_message(Message(request_id=args.request_id, start_stream=start))
            while (message := await stream.recv_message()) is not None:
                if (invocation := message.invocation_request) is not None:
                    iid = invocation.invocation_id
                    http = invocation.input_data[0].data.http
                    if invocation.function_id in logging_functions:
                        for line in range(LOG_LINES):
                            entry = pb.RpcLog(
                                invocation_id=iid,
                                category="bench",
                                level=pb.RpcLogLevel.Information,
                                message=f"echo log line {line}",
                                log_category=pb.RpcLogRpcLogCategory.User,
                            )
                            await stream.send_message(Message(rpc_log=entry))
                    reply = pb.RpcHttp(
                        status_code="200",
                        body=http.body,
                        headers={"content-type": _content_type(http)},
                    )
                    response = pb.InvocationResponse(
                        invocation_id=iid, result=ok, return_value=pb.TypedData(http=reply)
                    )
                    await stream.send_message(Message(invocation_response=response))
                elif (load := message.function_load_request) is not None:
                    if load.metadata is not None and load.metadata.name == "echolog":
                        logging_functions.add(load.function_id)
                    response = pb.FunctionLoadResponse(function_id=load.function_id, result=ok)
                    await stream.send_message(Message(function_load_response=response))
                elif message.worker_init_request is not None:
                    init = pb.WorkerInitResponse(
                        worker_version="0", capabilities=CAPABILITIES, result=ok
                    )
                    await stream.send_message(
                        Message(request_id=message.request_id, worker_init_response=init)
                    )
                elif message.worker_status_request is not None:
                    status = pb.WorkerStatusResponse()
                    await stream.send_message(
                        Message(request_id=message.request_id, worker_status_response=status)
                    )
                elif message.worker_terminate is not None:
                    return 0
            return 1
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
