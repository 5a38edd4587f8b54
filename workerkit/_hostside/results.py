"""Typed results of `HostConnection.load_function` and `HostConnection.call`: what a host
makes of a worker's `FunctionLoadResponse` and `InvocationResponse`, as Python values.

Values are decoded the way the host reads them (`workerkit.convert.decode_output`): an
`http` value becomes an `HttpResponse`, json is parsed, strings, bytes and numbers stay as
they are, and a kind the host rejects in outputs (collections, model binding data) is a
`ConversionError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Self

from .._generated import AzureFunctionsRpcMessages as pb
from .._values import ConversionError, HttpResponse
from ..convert import decode_output

__all__ = [
    "CallFailed",
    "CallResult",
    "CallStatus",
    "FunctionLoadFailed",
    "LoadResult",
    "LogEntry",
]

#: How an invocation ended, as the worker reported it.
CallStatus = Literal["success", "failure", "cancelled"]

_STATUS: dict[int, CallStatus] = {
    pb.StatusResultStatus.Success: "success",
    pb.StatusResultStatus.Failure: "failure",
    pb.StatusResultStatus.Cancelled: "cancelled",
}


class FunctionLoadFailed(Exception):
    """The worker answered a function load with Failure (`HostConnection.load_function`).

    Attributes:
        result: the `LoadResult`, with the worker's message in `LoadResult.error`.
    """

    def __init__(self, result: LoadResult) -> None:
        super().__init__(f"the worker failed to load function {result.name!r}: {result.error}")
        self.result = result


class CallFailed(Exception):
    """An invocation did not succeed (`CallResult.raise_for_status`).

    Attributes:
        result: the `CallResult`, with `CallResult.status` and `CallResult.error`.
    """

    def __init__(self, result: CallResult) -> None:
        message = f"invocation {result.invocation_id} ended with {result.status}"
        if result.error:
            message += f": {result.error}"
        super().__init__(message)
        self.result = result


def _status_error(result: pb.StatusResult | None) -> tuple[CallStatus, str | None]:
    """The status a `StatusResult` reports and, unless it is a success, its message."""
    if result is None:
        return "failure", "the worker's response has no status result"
    status = _STATUS.get(int(result.status), "failure")
    if status == "success":
        return status, None
    if result.exception is not None:
        return status, result.exception.message
    return status, result.result


@dataclass(frozen=True)
class LoadResult:
    """How the worker answered one `FunctionLoadRequest`.

    Attributes:
        function_id: the id the function was loaded under; pass the result (or this id) to
            `HostConnection.call`.
        name: the function's name.
        error: the worker's error message when it failed to load the function, else None.
        response: the `FunctionLoadResponse` as received.
    """

    function_id: str
    name: str
    error: str | None
    response: pb.FunctionLoadResponse

    @property
    def ok(self) -> bool:
        """The worker loaded the function (its reply said Success)."""
        return self.error is None

    @classmethod
    def from_response(cls, name: str, response: pb.FunctionLoadResponse) -> Self:
        """Read a `FunctionLoadResponse` for the function `name`."""
        status, error = _status_error(response.result)
        if status != "success" and not error:
            error = "(the worker gave no message)"
        return cls(function_id=response.function_id, name=name, error=error, response=response)


@dataclass(frozen=True)
class LogEntry:
    """One `RpcLog` record the worker sent while running an invocation.

    Attributes:
        level: the host's level name: "Trace", "Debug", "Information", "Warning", "Error",
            "Critical" or "None".
        message: the text of the record.
        category: the logger's name (the record's category).
        kind: "User" for records of the function's code, "System" for the SDK's own,
            "CustomMetric" for metrics.
        exception: the message of the exception attached to the record, if any.
    """

    level: str
    message: str
    category: str
    kind: str
    exception: str | None = None

    @classmethod
    def from_rpc_log(cls, log: pb.RpcLog) -> Self:
        """Read an `RpcLog` record."""
        return cls(
            level=_enum_name(log.level),
            message=log.message,
            category=log.category,
            kind=_enum_name(log.log_category),
            exception=log.exception.message if log.exception is not None else None,
        )


@dataclass(frozen=True)
class CallResult:
    """How an invocation ended, with its values decoded as the host would read them.

    Attributes:
        invocation_id: the invocation's id.
        status: "success", "failure" or "cancelled".
        error: the worker's message (its exception's) when the status is not "success",
            else None.
        return_value: the ``$return`` value as a Python value (an `HttpResponse` for an HTTP
            response), or None when the worker sent none.
        outputs: the named output bindings the worker set, as Python values.
        http: the HTTP response, whether it came as ``$return`` or in the one named output
            binding holding an HTTP response; None when there is none (or several).
        logs: the log records the worker sent for this invocation, before its response.
        response: the `InvocationResponse` as received.
    """

    invocation_id: str
    status: CallStatus
    error: str | None
    return_value: Any
    outputs: dict[str, Any]
    http: HttpResponse | None
    logs: list[LogEntry]
    response: pb.InvocationResponse

    @property
    def ok(self) -> bool:
        """The invocation succeeded."""
        return self.status == "success"

    def raise_for_status(self) -> Self:
        """Return this result if the invocation succeeded.

        Raises:
            CallFailed: it failed or was cancelled; the message has the worker's error.
        """
        if not self.ok:
            raise CallFailed(self)
        return self

    @classmethod
    def from_response(cls, response: pb.InvocationResponse, logs: list[pb.RpcLog]) -> Self:
        """Read an `InvocationResponse` and the `RpcLog` records sent for it.

        Raises:
            ConversionError: a value is of a kind the host rejects in outputs (a collection,
                model binding data) or is malformed; the message names it.
        """
        status, error = _status_error(response.result)
        where = f"invocation {response.invocation_id}"
        return_value = None
        if response.return_value is not None:
            return_value = _decode(response.return_value, f"{where}, $return")
        outputs: dict[str, Any] = {}
        for binding in response.output_data:
            if binding.rpc_shared_memory is not None:
                raise ConversionError(
                    f"{where}, output {binding.name!r}: sent through shared memory, which "
                    "this host does not read"
                )
            data = binding.data if binding.data is not None else pb.TypedData()
            outputs[binding.name] = _decode(data, f"{where}, output {binding.name!r}")
        http: HttpResponse | None = None
        if isinstance(return_value, HttpResponse):
            http = return_value
        else:
            named = [v for v in outputs.values() if isinstance(v, HttpResponse)]
            http = named[0] if len(named) == 1 else None
        return cls(
            invocation_id=response.invocation_id,
            status=status,
            error=error,
            return_value=return_value,
            outputs=outputs,
            http=http,
            logs=[LogEntry.from_rpc_log(log) for log in logs],
            response=response,
        )


def _enum_name(value: int) -> str:
    """The proto name of an enum value (``None_`` is "None"); its number when unknown."""
    name = getattr(value, "name", None)
    if not name or name.startswith("~"):
        return str(int(value))
    return str(name).removesuffix("_")


def _decode(data: pb.TypedData, where: str) -> Any:
    try:
        return decode_output(data)
    except ConversionError as exc:
        raise ConversionError(f"{where}: {exc}") from exc
