"""workerkit's exceptions and the one place that turns any exception into a `StatusResult`."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from ._wire.pb import pb

# The exceptions, also exported by `workerkit`. The functions and constants after them turn an
# exception into the StatusResult or RpcException the runtime sends: importable from here for
# workerkit's own modules, but not part of the API.
__all__ = [
    "FunctionLoadError",
    "InvocationCancelled",
    "InvocationError",
    "MessageTooLarge",
    "WorkerError",
]

#: `StatusResult.Status` values.
FAILURE, SUCCESS, CANCELLED = 0, 1, 2


class WorkerError(Exception):
    """Base class of every error workerkit raises on purpose."""


class FunctionLoadError(WorkerError):
    """Raise from `on_function_load` to refuse a function with a message for the host."""


class InvocationError(WorkerError):
    """Raise from `on_invocation` to fail an invocation with a message but no stack trace."""


class InvocationCancelled(WorkerError):
    """Raise from a hook that noticed `Invocation.cancelled`; answered as Cancelled."""


class MessageTooLarge(WorkerError):
    """A message exceeds the size limit the host gave with ``--grpcMaxMessageLength``."""

    def __init__(self, size: int, limit: int, what: str = "message") -> None:
        super().__init__(
            f"{what} is {size} bytes, over the host's limit of {limit} bytes "
            "(--functions-grpc-max-message-length)"
        )
        self.size = size
        self.limit = limit


def success() -> pb.StatusResult:
    """An explicit Success: the proto default (0) would mean Failure to the host."""
    return pb.StatusResult(status=pb.StatusResultStatus.Success)


def failure(exc: BaseException | str, *, user: bool = False, source: str = "") -> pb.StatusResult:
    """A Failure describing `exc`; never raises, whatever `exc` does in ``__str__``.

    `user` marks exceptions raised by the function author's code (``is_user_exception``), so
    the host can tell them from worker faults. `WorkerError` subclasses carry their message
    only: they are the author telling the caller what went wrong, not a crash.
    """
    return pb.StatusResult(
        status=pb.StatusResultStatus.Failure,
        exception=rpc_exception(exc, user=user, source=source),
    )


def cancelled() -> pb.StatusResult:
    return pb.StatusResult(status=pb.StatusResultStatus.Cancelled)


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """The fields of an `RpcException`, as plain values."""

    message: str
    type: str = ""
    stack_trace: str = ""
    source: str = ""
    is_user_exception: bool = False


def rpc_exception(
    exc: BaseException | str, *, user: bool = False, source: str = ""
) -> pb.RpcException:
    """`exc` as an `RpcException` (message, type, stack trace); never raises."""
    details = error_details(exc, user=user, source=source)
    return pb.RpcException(
        message=details.message,
        type=details.type,
        stack_trace=details.stack_trace,
        source=details.source,
        is_user_exception=details.is_user_exception,
    )


def error_details(
    exc: BaseException | str, *, user: bool = False, source: str = ""
) -> ErrorDetails:
    """What `rpc_exception` puts in the message, without building it; never raises."""
    if isinstance(exc, str):
        return ErrorDetails(_sendable(exc), source=source, is_user_exception=user)
    try:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        text = _safe_str(exc)
        if isinstance(exc, WorkerError) and text:
            message = text  # the author's own words for the caller
        else:
            message = f"{kind.__name__}: {text}" if text else kind.__name__
        stack = "" if isinstance(exc, WorkerError) else "".join(traceback.format_exception(exc))
        return ErrorDetails(
            message=_sendable(message),
            type=_sendable(name),
            stack_trace=_sendable(stack),
            source=source,
            is_user_exception=user,
        )
    except BaseException:
        return ErrorDetails("unprintable exception", source=source)


def _sendable(text: str) -> str:
    """`text` made UTF-8 encodable (lone surrogates escaped), so the reply can be sent."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<{type(exc).__name__} with a failing __str__>"
