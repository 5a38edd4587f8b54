"""Forwarding `logging` records to the host as `RpcLog` messages.

Attribution: the id of the invocation being served lives in a `ContextVar`; workerkit sets it
before calling `on_invocation` and runs plain-`def` hooks with a copy of the context, so a
record logged anywhere inside the hook, also from the worker thread, carries that id.

Category: records of the ``workerkit`` loggers are *System* (the host's worker log); records
of any other logger logged inside an invocation are *User* (the function's log). A user record
outside any invocation would be dropped by the host, so it goes as System instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar

from .errors import ErrorDetails, error_details

__all__ = ["LogEntry", "current_invocation_id"]

SDK_LOGGER = "workerkit"
log = logging.getLogger(SDK_LOGGER)

#: The invocation being served in this context ("" outside invocations).
current_invocation_id: ContextVar[str] = ContextVar("workerkit_invocation_id", default="")

# `RpcLog.Level` and `RpcLog.RpcLogCategory` values (as on the wire).
TRACE, DEBUG, INFORMATION, WARNING, ERROR, CRITICAL, NONE = range(7)
USER, SYSTEM = 0, 1
_LEVELS: tuple[tuple[int, int], ...] = (
    (logging.CRITICAL, CRITICAL),
    (logging.ERROR, ERROR),
    (logging.WARNING, WARNING),
    (logging.INFO, INFORMATION),
    (logging.DEBUG, DEBUG),
)
# The host's levels (WorkerInitRequest.log_categories values) as logging levels.
_HOST_LEVELS: dict[int, int] = {
    TRACE: 5,
    DEBUG: logging.DEBUG,
    INFORMATION: logging.INFO,
    WARNING: logging.WARNING,
    ERROR: logging.ERROR,
    CRITICAL: logging.CRITICAL,
    NONE: logging.CRITICAL + 10,
}


class LogEntry:
    """One `RpcLog` to send: the fields workerkit fills, as plain values (`_fastwire.rpc_log`
    writes it)."""

    __slots__ = ("category", "exception", "invocation_id", "level", "log_category", "message")

    def __init__(
        self,
        message: str,
        *,
        category: str = "",
        level: int = INFORMATION,
        log_category: int = SYSTEM,
        invocation_id: str = "",
        exception: ErrorDetails | None = None,
    ) -> None:
        self.message = message
        self.category = category
        self.level = level
        self.log_category = log_category
        self.invocation_id = invocation_id
        self.exception = exception

    def __repr__(self) -> str:
        return (
            f"LogEntry({self.message!r}, category={self.category!r}, level={self.level}, "
            f"log_category={self.log_category}, invocation_id={self.invocation_id!r})"
        )


def rpc_level(levelno: int) -> int:
    """A `logging` level as an `RpcLog.Level` value."""
    for threshold, level in _LEVELS:
        if levelno >= threshold:
            return level
    return TRACE


def host_level(level: int) -> int | None:
    """A host `RpcLogLevel` as a `logging` level, or None for a value we do not know."""
    return _HOST_LEVELS.get(int(level))


def is_sdk_record(record: logging.LogRecord) -> bool:
    name = record.name
    return name == SDK_LOGGER or name.startswith(SDK_LOGGER + ".")


def to_rpc_log(record: logging.LogRecord, invocation_id: str) -> LogEntry:
    """`record` as an `RpcLog`; the caller has decided the category by `invocation_id`."""
    try:
        message = record.getMessage()
    except Exception as error:  # a bad format string must not lose the record
        message = f"{record.msg!r} (could not format arguments: {error})"
    user = bool(invocation_id) and not is_sdk_record(record)
    exception = None
    if record.exc_info and record.exc_info[1] is not None:
        exception = error_details(record.exc_info[1], user=user)
    return LogEntry(
        message,
        invocation_id=invocation_id if user else "",
        category=record.name,
        level=rpc_level(record.levelno),
        log_category=USER if user else SYSTEM,
        exception=exception,
    )


class RpcLogHandler(logging.Handler):
    """Sends records to the host through `sink`; before there is a sink, SDK records go to
    stderr with the ``LanguageWorkerConsoleLog`` prefix the host recognises.

    `sink` must be safe to call from any thread and must never block (it may drop the
    record when the send buffer is full, and counts what it drops).
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.sink: Callable[[LogEntry], None] | None = None
        self._category_levels: dict[str, int] = {}
        self._default_level = logging.INFO

    def createLock(self) -> None:
        """No lock around `emit`: it is safe to run in many threads at once (the sink is,
        and the levels are replaced whole), and with a lock, plain-def functions that log
        from many pool threads queued up behind each other: ~3 times the CPU per line."""
        self.lock = None

    def apply_host_levels(self, categories: Mapping[str, int]) -> None:
        """Honour the host's ``log_categories`` (category -> minimum level); a category
        named ``Default`` (or empty) sets the level of every other category. Replaces
        whatever an earlier init asked for."""
        levels: dict[str, int] = {}
        default = logging.INFO
        for category, value in categories.items():
            level = host_level(value)
            if level is None:
                continue
            if category.lower() in ("default", ""):
                default = level
            else:
                levels[category] = level
        self._category_levels, self._default_level = levels, default

    def _threshold(self, name: str) -> int:
        levels = self._category_levels
        while levels:
            if name in levels:
                return levels[name]
            if "." not in name:
                break
            name = name.rpartition(".")[0]
        return self._default_level

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self._threshold(record.name):
            return
        sink = self.sink
        if sink is None:
            if is_sdk_record(record) or record.levelno >= logging.WARNING:
                try:
                    sys.stderr.write(
                        f"LanguageWorkerConsoleLog{record.levelname}: {record.getMessage()}\n"
                    )
                except Exception:  # stderr closed: nowhere left to say it
                    pass
            return
        try:
            sink(to_rpc_log(record, current_invocation_id.get()))
        except Exception:
            self.handleError(record)
