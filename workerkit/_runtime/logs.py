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
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar

from ..errors import ErrorDetails, error_details

__all__ = ["LogEntry", "LogRoute", "current_invocation_id", "handler"]

SDK_LOGGER = "workerkit"
log = logging.getLogger(SDK_LOGGER)

#: Public as ``workerkit.current_invocation_id`` (documented in the package docstring: a
#: ContextVar takes no docstring). The id of the invocation being served: set in the context
#: that runs ``on_invocation`` (the hook's task, or its pool thread with a copy of that
#: context), so tasks and `asyncio.to_thread` calls started there inherit it; "" in every
#: other context (other hooks, ``on_cancel`` too, and plain `threading.Thread` targets).
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
    """One `RpcLog` to send: the fields workerkit fills, as plain values (`_wire.messages.rpc_log`
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


class LogRoute:
    """Where the records of one session go: its sink and the host's level for each category.

    `sink` must be safe to call from any thread and must never block (it may drop the
    record when the send buffer is full, and counts what it drops). None once the session
    has ended: records still routed here go to stderr.
    """

    __slots__ = ("_category_levels", "_default_level", "sink")

    def __init__(self, sink: Callable[[LogEntry], None]) -> None:
        self.sink: Callable[[LogEntry], None] | None = sink
        self._category_levels: dict[str, int] = {}
        self._default_level = logging.INFO

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

    def threshold(self, name: str) -> int:
        """The lowest level the host wants from logger `name` (or its nearest parent)."""
        levels = self._category_levels
        while levels:
            if name in levels:
                return levels[name]
            if "." not in name:
                break
            name = name.rpartition(".")[0]
        return self._default_level


#: The route of the session this code runs for. Each session sets it in its own task, so
#: everything it starts (its tasks, and hooks in pool threads, which get a copy of the
#: context) logs to that session's stream, also with several sessions in one process.
current_route: ContextVar[LogRoute | None] = ContextVar("workerkit_log_route", default=None)


class RpcLogHandler(logging.Handler):
    """Sends records to the host: to the route of the session the code runs for, or, from
    a thread that did not inherit one, to the session started last. Without any session,
    SDK records and warnings go to stderr with the ``LanguageWorkerConsoleLog`` prefix the
    host recognises.

    One instance serves the whole process; it is on the root logger while at least one
    session is attached.
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._routes: list[LogRoute] = []  # attached, the latest last; replaced whole
        self._attaching = threading.Lock()  # sessions may run in several threads' loops

    def attach(self, route: LogRoute) -> None:
        """Route records to `route` (from its session's context, and from threads with no
        session's context while it is the latest); the first attach installs the handler."""
        with self._attaching:
            self._routes = [*self._routes, route]
            root = logging.getLogger()
            if self not in root.handlers:
                root.addHandler(self)

    def detach(self, route: LogRoute) -> None:
        """The session of `route` has ended; the last detach removes the handler."""
        with self._attaching:
            self._routes = [r for r in self._routes if r is not route]
            if not self._routes:
                logging.getLogger().removeHandler(self)

    def handle(self, record: logging.LogRecord) -> bool:
        """`Handler.handle` without its lock: `emit` is safe in many threads at once (the
        sinks are, and routes and levels are replaced whole), and with the lock, plain-def
        functions logging from many pool threads queued up behind each other (~3 times the
        CPU per line). The lock itself stays a real one, for the code that takes it."""
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        route = current_route.get()
        if route is None:
            routes = self._routes
            route = routes[-1] if routes else None
        sink = route.sink if route is not None else None
        if route is None or sink is None:  # no session, or its stream is gone
            if record.levelno >= logging.WARNING or (
                record.levelno >= logging.INFO and is_sdk_record(record)
            ):
                try:
                    sys.stderr.write(
                        f"LanguageWorkerConsoleLog{record.levelname}: {record.getMessage()}\n"
                    )
                except Exception:  # stderr closed: nowhere left to say it
                    pass
            return
        if record.levelno < route.threshold(record.name):
            return
        try:
            sink(to_rpc_log(record, current_invocation_id.get()))
        except Exception:
            self.handleError(record)


#: The process's one handler (sessions attach their routes to it).
handler = RpcLogHandler()
