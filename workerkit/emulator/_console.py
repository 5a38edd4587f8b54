"""What ``workerkit host`` prints: a console like ``func start``.

Every line starts with a UTC timestamp in brackets. Function logs (``RpcLog``) show the
function name, the first 8 characters of the invocation id and the level; worker
stdout/stderr lines are passed through (levels and categories as the host gives them, see
`Console.worker_output`). Which of these log lines are shown is ``func start``'s choice
(`_logfilter`): user logs from ``Information``, the worker's System logs and its
``LanguageWorkerConsoleLog`` lines from ``Warning`` (``Information`` with ``--verbose``),
``host.json`` ``logging.logLevel`` first. ``--verbose`` also adds one line per protocol
message. Colour is used when the stream is a terminal and ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Final, TextIO

import betterproto2

from workerkit._generated import AzureFunctionsRpcMessages as pb

from ._logfilter import CONSOLE_CATEGORY, ERROR, INFORMATION, LEVEL_NAMES, WARNING, LogFilter

__all__ = ["Console"]

_RESET: Final = "\x1b[0m"
_COLOURS: Final = {
    "red": "\x1b[31m",
    "green": "\x1b[32m",
    "yellow": "\x1b[33m",
    "cyan": "\x1b[36m",
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
}
LEVELS: Final = {
    pb.RpcLogLevel.Trace: "Trace",
    pb.RpcLogLevel.Debug: "Debug",
    pb.RpcLogLevel.Information: "Information",
    pb.RpcLogLevel.Warning: "Warning",
    pb.RpcLogLevel.Error: "Error",
    pb.RpcLogLevel.Critical: "Critical",
    pb.RpcLogLevel.None_: "None",
}
_LEVEL_COLOURS: Final = {
    "Trace": "dim",
    "Debug": "dim",
    "Warning": "yellow",
    "Error": "red",
    "Critical": "red",
}
#: WorkerConstants.LanguageWorkerConsoleLogPrefix and ToolingConsoleLogPrefix.
_CONSOLE_PREFIX: Final = "LanguageWorkerConsoleLog"
_CONSOLE_PREFIX_ANYWHERE: Final = re.compile(re.escape(_CONSOLE_PREFIX), re.IGNORECASE)
_JSON_PREFIX: Final = "azfuncjsonlog:"
#: Core Tools shows these whatever the filter says (ColoredConsoleLogger._allowedLogsPrefixes).
_ALWAYS_SHOWN: Final = (
    "Worker process started and initialized.",
    "Host lock lease acquired by instance ID",
)
#: What a terminal would act on rather than show: C0 controls but tab (line breaks are split
#: off first), DEL, C1 controls, and the bidirectional overrides that reorder what is shown.
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def starts_with_ignore_case(text: str, prefix: str) -> bool:
    """.NET ``StartsWith(prefix, StringComparison.OrdinalIgnoreCase)`` for an ASCII `prefix`."""
    head = text[: len(prefix)]
    return head.isascii() and head.lower() == prefix.lower()


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escape sequences, carriage
    returns, backspaces, bidi overrides) shown as an escape instead: a client of the
    emulator, a function or a worker cannot retitle, clear or forge lines of the console."""
    return _CONTROLS.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Console:
    """Writes the emulator's output to `stream` (default stdout), one flushed line at a time.

    Args:
        stream: where to write.
        color: force colour on or off; default: on for a terminal unless ``NO_COLOR`` is set.
        verbose: also print protocol messages (`protocol`).
    """

    def __init__(
        self, stream: TextIO | None = None, *, color: bool | None = None, verbose: bool = False
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if color is None:
            isatty = getattr(self.stream, "isatty", None)
            color = bool(isatty and isatty()) and not os.environ.get("NO_COLOR")
        self.color = color
        self.verbose = verbose
        #: What log lines to show (`log`); the emulator sets it from host.json at start.
        self.log_filter = LogFilter(system_level=INFORMATION if verbose else WARNING)

    # -- primitives --------------------------------------------------------------------------
    def paint(self, text: str, colour: str | None) -> str:
        """`text` in `colour` (a key of the colour table) when colour is on."""
        if not self.color or colour is None:
            return text
        return f"{_COLOURS[colour]}{text}{_RESET}"

    def write(self, text: str = "") -> None:
        """Write `text` as is (plus a newline)."""
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: nothing useful to do
            pass

    def line(self, text: str, colour: str | None = None) -> None:
        """One timestamped line; continuation lines of `text` are indented. Control
        characters in `text` are shown escaped (`printable`): it may come from outside."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        first, *rest = printable(text).split("\n") or [""]
        self.write(self.paint(f"[{stamp}] {first}", colour))
        for extra in rest:
            self.write(self.paint(f"    {extra}", colour))

    def info(self, text: str) -> None:
        """A host line."""
        self.line(text)

    def warning(self, text: str) -> None:
        """A host warning (yellow)."""
        self.line(text, "yellow")

    def error(self, text: str) -> None:
        """A host error (red)."""
        self.line(text, "red")

    @staticmethod
    def value(value: object) -> str:
        """`value` (an output, as `workerkit.convert.decode_output` reads it) as the console
        shows it: compact JSON with non-ASCII characters kept (control characters escaped,
        by JSON and by `line`); bytes as ``<N bytes>``, since a binary value is not text and
        base64 would make a long line nobody reads; anything else JSON cannot hold as its repr
        in a JSON string."""
        if isinstance(value, bytes | bytearray | memoryview):
            return f"<{len(bytes(value))} bytes>"
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_jsonable)

    # -- log lines ----------------------------------------------------------------------------
    def log(self, category: str, level: int, text: str, colour: str | None = None) -> None:
        """A line the host logs in `category` at `level` (a LogLevel number), as ``func
        start`` prints it: shown if the filter allows it or it is one Core Tools always
        shows; a line starting ``azfuncjsonlog:`` is printed without that prefix and without
        a timestamp, whatever its level (ColoredConsoleLogger.Log)."""
        if starts_with_ignore_case(text, _JSON_PREFIX):
            self.write(printable(text[len(_JSON_PREFIX) :]))
            return
        if not self.shows(category, level, text):
            return
        name = LEVEL_NAMES[level] if 0 <= level < len(LEVEL_NAMES) else ""
        self.line(text, colour or _LEVEL_COLOURS.get(name))

    def shows(self, category: str, level: int, text: str) -> bool:
        """Whether ``func start`` shows a line of `category` at `level` saying `text`."""
        if any(starts_with_ignore_case(text, prefix) for prefix in _ALWAYS_SHOWN):
            return True
        return self.log_filter.allows(category, level)

    def rpc_log(
        self,
        log: pb.RpcLog,
        function: str | None,
        dropped: str | None = None,
        *,
        category: str = "",
    ) -> None:
        """One ``RpcLog`` in `category`: function (or ``worker`` for System logs), invocation
        id, level. `dropped` says why the real host would not log it at all."""
        level = int(log.level)
        name = LEVELS.get(log.level, str(level))
        system = log.log_category == pb.RpcLogRpcLogCategory.System
        category = category or ("Worker." if system else f"Function.{function or '?'}.User")
        if starts_with_ignore_case(log.message, _JSON_PREFIX) and not dropped:
            self.log(category, level, log.message)
            return
        if not self.shows(category, level, log.message):
            return
        who = function or ("worker" if system else "?")
        short = f" ({log.invocation_id[:8]})" if log.invocation_id else ""
        text = f"{who}{short} {name}: {log.message}"
        if log.exception is not None and (log.exception.message or log.exception.stack_trace):
            details = log.exception.stack_trace or log.exception.message
            text += "\n" + details.rstrip()
        if dropped:
            text = f"{text}\n(the real host drops this log: {dropped})"
            self.line(text, "yellow")
            return
        self.line(text, _LEVEL_COLOURS.get(name))

    def worker_output(
        self, text: str, *, stderr: bool, errors_only: bool = False, worker: str = ""
    ) -> None:
        """A line of worker stdout/stderr, as the host logs it
        (src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs
        ``ParseErrorMessageAndLog``, ``BuildAndLogConsoleLog``; WorkerProcessUtilities.cs).

        Its level: stdout is Information; a stderr line is Warning if it mentions "warn", else
        Error with ``useStdErrorStreamForErrorsOnly`` or when it mentions "error", "fail",
        "severe" or "unhandled exception", else Information. A line starting
        ``LanguageWorkerConsoleLog`` (any case) is the worker's own log: every occurrence of
        that word is removed and it is a system log of the worker process (category
        ``Worker.rpcWorkerProcess.<worker>``, hidden below Warning unless ``--verbose``);
        any other line is the app's console output (``Host.Function.Console``, a user log).

        Args:
            worker: ``<language>.<worker id>``, for the category.
        """
        level = INFORMATION
        if stderr:
            lowered = text.lower()
            if "warn" in lowered:
                level = WARNING
            elif errors_only or any(
                word in lowered for word in ("error", "fail", "severe", "unhandled exception")
            ):
                level = ERROR
        if starts_with_ignore_case(text, _CONSOLE_PREFIX):
            message = _CONSOLE_PREFIX_ANYWHERE.sub("", text)
            self.log(f"Worker.rpcWorkerProcess.{worker}", level, message)
        elif starts_with_ignore_case(text, _JSON_PREFIX):
            self.log("Host.Function.ToolingConsoleLog", level, text)
        else:
            self.log(CONSOLE_CATEGORY, level, text)

    def protocol(self, message: pb.StreamingMessage, outgoing: bool) -> None:
        """With ``--verbose``: one line summarising a protocol message."""
        if not self.verbose:
            return
        kind, body = betterproto2.which_one_of(message, "content")
        if kind == "rpc_log":
            return  # printed as a log line already
        arrow = "host → worker" if outgoing else "worker → host"
        self.line(f"{arrow} {kind} {_summary(kind, body, message)}".rstrip(), "cyan")

    def functions(self, entries: Iterable[tuple[str, str]]) -> None:
        """The function list, as ``func start`` prints it: name, then what triggers it."""
        self.write()
        self.write(self.paint("Functions:", "bold"))
        self.write()
        for name, description in entries:
            name, description = printable(name), printable(description)
            self.write(f"\t{self.paint(name + ':', 'yellow')} {self.paint(description, 'green')}")
            self.write()


def _jsonable(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return repr(value)


def _summary(kind: str, body: object, message: pb.StreamingMessage) -> str:
    parts: list[str] = []
    if message.request_id:
        parts.append(f"request_id={message.request_id}")
    for attr in ("worker_id", "function_id", "invocation_id"):
        value = getattr(body, attr, None)
        if value:
            parts.append(f"{attr}={value}")
    result = getattr(body, "result", None)
    if isinstance(result, pb.StatusResult):
        parts.append(f"status={result.status.name}")
        if result.exception is not None and result.exception.message:
            parts.append(f"error={Console.value(result.exception.message)}")
    if kind == "worker_init_response" and isinstance(body, pb.WorkerInitResponse):
        parts.append("capabilities=" + ",".join(sorted(body.capabilities)))
    if kind == "function_metadata_response" and isinstance(body, pb.FunctionMetadataResponse):
        parts.append("functions=" + ",".join(m.name for m in body.function_metadata_results))
    if isinstance(body, pb.FunctionLoadRequest) and body.metadata is not None:
        parts.append(f"name={body.metadata.name}")
    return " ".join(parts)
