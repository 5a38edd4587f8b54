"""What the worker answers with: its capabilities and the replies built from hook results,
free of I/O (the session sends them)."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._types import FunctionMetadata
from .._wire import schema
from .._wire.messages import rpc_function_metadata, status_result
from .._wire.pb import pb
from ..errors import FAILURE, SUCCESS, error_details, failure
from .transport import Unreadable

#: Property the worker puts on indexed functions; the host echoes it on every load.
WORKER_INDEXED = "worker_indexed"

#: What workerkit implements, advertised on every init (the host reads a capability as on
#: when its value is non-empty). Not advertised:
#: SupportsLoadResponseCollection (the host's handling is broken for N > 1) and shared
#: memory; HttpUri only with HTTP streaming on (`HTTP_PROXY_CAPABILITIES`).
CAPABILITIES: Mapping[str, str] = {
    "RpcHttpBodyOnly": "true",
    "RawHttpBodyBytes": "true",
    "RpcHttpTriggerMetadataRemoved": "true",
    "UseNullableValueDictionaryForHttp": "true",
    "TypedDataCollection": "true",
    "IncludeEmptyEntriesInMessagePayload": "true",
    "WorkerStatus": "true",
    "HandlesWorkerTerminateMessage": "true",
    "HandlesInvocationCancelMessage": "true",
    "HandlesWorkerWarmupMessage": "true",
    "EnableUserCodeException": "true",
}
#: Added to the capabilities, with ``HttpUri`` (the worker's HTTP server), when HTTP
#: streaming is on: the host then forwards each HTTP-trigger request there and sends the
#: InvocationRequest with an `RpcHttp` that holds only the route parameters. The proxied
#: request cannot carry those (the worker does not know the function's route template),
#: and trigger metadata would mix them with query parameters of the same name.
HTTP_PROXY_CAPABILITIES: Mapping[str, str] = {"RequiresRouteParameters": "true"}
#: The app setting (an environment variable of the worker) that turns HTTP streaming on.
HTTP_STREAMING_SETTING = "WORKERKIT_HTTP_STREAMING"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def wants_http_streaming(option: bool | None, environ: Mapping[str, str]) -> bool:
    """HTTP streaming on? `option` (`WorkerOptions.http_streaming`) when set, else the app
    setting in `environ`; a value that is neither true nor false is logged and means off."""
    if option is not None:
        return option
    value = environ.get(HTTP_STREAMING_SETTING, "").strip()
    if value.lower() in _TRUE:
        return True
    if value.lower() not in _FALSE:
        logging.getLogger("workerkit").warning(
            "%s=%r is neither true nor false: HTTP streaming stays off",
            HTTP_STREAMING_SETTING,
            value,
        )
    return False


#: Requests that expect a reply, by content field number (for messages about them).
_M = schema  # the content fields of StreamingMessage, by number
_REQUEST_NAMES = {
    _M.STREAMING_MESSAGE_INVOCATION_REQUEST: "InvocationRequest",
    _M.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST: "FunctionLoadRequest",
    _M.STREAMING_MESSAGE_WORKER_STATUS_REQUEST: "WorkerStatusRequest",
    _M.STREAMING_MESSAGE_WORKER_TERMINATE: "WorkerTerminate",
    _M.STREAMING_MESSAGE_WORKER_INIT_REQUEST: "WorkerInitRequest",
    _M.STREAMING_MESSAGE_INVOCATION_CANCEL: "InvocationCancel",
    _M.STREAMING_MESSAGE_FUNCTION_ENVIRONMENT_RELOAD_REQUEST: "FunctionEnvironmentReloadRequest",
    _M.STREAMING_MESSAGE_CLOSE_SHARED_MEMORY_RESOURCES_REQUEST: "CloseSharedMemoryResourcesRequest",
    _M.STREAMING_MESSAGE_FUNCTIONS_METADATA_REQUEST: "FunctionsMetadataRequest",
    _M.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST_COLLECTION: "FunctionLoadRequestCollection",
    _M.STREAMING_MESSAGE_WORKER_WARMUP_REQUEST: "WorkerWarmupRequest",
}


def no_maps_closed(names: Sequence[str] = ()) -> pb.CloseSharedMemoryResourcesResponse:
    """This worker never creates shared memory maps, so it closes none of them."""
    return pb.CloseSharedMemoryResourcesResponse(close_map_results=dict.fromkeys(names, False))


@functools.cache
def machine() -> str:
    """The processor architecture, for `WorkerMetadata.worker_bitness`; "" where the
    platform cannot say (it is informational: never worth losing a reply over)."""
    try:
        return os.uname().machine
    except Exception:  # no os.uname here (Windows), or it failed
        pass
    try:
        import platform

        return platform.machine()
    except Exception:
        return ""


def hook_status(error: BaseException | None, hook: str) -> bytes:
    """The encoded `StatusResult` of a hook that raised `error` (None: it succeeded)."""
    if error is None:
        return status_result(SUCCESS)
    return status_result(FAILURE, error_details(error, user=True, source=hook))


def check_strings(mapping: Mapping[str, str], what: str) -> None:
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{what} must map str to str, got {key!r}: {value!r}")


def rpc_metadata(entry: FunctionMetadata, app_directory: str) -> bytes:
    """`entry` as the `RpcFunctionMetadata` the host expects; what the host would reject is
    reported in its status, so the host names the function and the problem."""
    problems = entry.problems()
    raw_bindings: list[str] = []
    for binding in entry.bindings:
        try:
            raw_bindings.append(json.dumps(dict(binding), separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            problems.append(f"binding {binding.get('name')!r} is not JSON: {exc}")
    for what, value in (
        ("directory", entry.directory),
        ("script_file", entry.script_file),
        ("entry_point", entry.entry_point),
    ):
        if not isinstance(value, str):
            raise TypeError(f"FunctionMetadata.{what} of {entry.name!r} must be a str: {value!r}")
    check_strings(entry.properties, f"FunctionMetadata.properties of {entry.name!r}")
    status = None
    if problems:
        status = status_result(
            FAILURE, error_details(f"function {entry.name!r}: " + "; ".join(problems))
        )
    return rpc_function_metadata(
        name=entry.name,
        function_id=entry.function_id,
        directory=entry.directory or app_directory,
        script_file=entry.script_file,
        entry_point=entry.entry_point,
        raw_bindings=raw_bindings,
        properties={**entry.properties, WORKER_INDEXED: "True"},
        status=status,
    )


def answer_unreadable(frame: Unreadable) -> tuple[str, dict[str, Any] | None]:
    """Why `frame` could not be read, and the reply content its request is owed (None: no
    reply, for a cancel, a terminate, an invocation without an id or a kind we do not know).
    What else the session does about it (a load error kept, a shutdown) is its own."""
    kind = frame.content
    reason = f"the host's {_REQUEST_NAMES.get(kind, 'message')} could not be read: {frame.reason}"
    status = failure(reason)
    reply: dict[str, Any] | None = None
    if kind == schema.STREAMING_MESSAGE_INVOCATION_REQUEST:
        if frame.invocation_id:  # else nobody to address the reply to
            response = pb.InvocationResponse(invocation_id=frame.invocation_id, result=status)
            reply = {"invocation_response": response}
    elif kind == schema.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST:
        load = pb.FunctionLoadResponse(function_id=frame.function_id, result=status)
        reply = {"function_load_response": load}
    elif kind == schema.STREAMING_MESSAGE_WORKER_INIT_REQUEST:
        reply = {"worker_init_response": pb.WorkerInitResponse(result=status)}
    elif kind == schema.STREAMING_MESSAGE_FUNCTIONS_METADATA_REQUEST:
        reply = {"function_metadata_response": pb.FunctionMetadataResponse(result=status)}
    elif kind == schema.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST_COLLECTION:
        # which functions it held cannot be known
        reply = {"function_load_response_collection": pb.FunctionLoadResponseCollection()}
    elif kind == schema.STREAMING_MESSAGE_FUNCTION_ENVIRONMENT_RELOAD_REQUEST:
        reload = pb.FunctionEnvironmentReloadResponse(result=status)
        reply = {"function_environment_reload_response": reload}
    elif kind == schema.STREAMING_MESSAGE_WORKER_WARMUP_REQUEST:
        reply = {"worker_warmup_response": pb.WorkerWarmupResponse(result=status)}
    elif kind == schema.STREAMING_MESSAGE_WORKER_STATUS_REQUEST:
        reply = {"worker_status_response": pb.WorkerStatusResponse()}
    elif kind == schema.STREAMING_MESSAGE_CLOSE_SHARED_MEMORY_RESOURCES_REQUEST:
        reply = {"close_shared_memory_resources_response": no_maps_closed()}
    return reason, reply
