"""Which log lines the console shows, as ``func start`` decides it.

Every line the host logs has a category and a level. Core Tools' console logger
(Azure/azure-functions-core-tools, src/Cli/func/Diagnostics/ColoredConsoleLogger.cs
``IsEnabled``, src/Cli/func/Common/Utilities.cs ``DefaultLoggingFilter``,
src/Cli/func/Diagnostics/LoggingFilterHelper.cs) shows a line when:

- the ``logging.logLevel`` rule of ``host.json`` (or an
  ``AzureFunctionsJobHost__logging__logLevel__<category>`` setting) that best matches its
  category allows its level: the longest matching category prefix wins, ``default`` matches
  every category (Microsoft.Extensions.Logging's ``LoggerRuleSelector``);
- with no such rule, by the kind of category: user logs (``Function.<name>.User``, the
  function's own ``Function.<name>``, a worker's plain console output ``Host.Function.Console``,
  anything unknown) from the user level, ``Information`` (``FUNCTIONS_USER_LOG_LEVEL``, else
  ``host.json`` ``logging.logLevel.default``); system logs (``Worker.*``, ``Host.*``,
  ``Function.*``, ``Microsoft.Azure.WebJobs.*``) from the system level, ``Warning``
  (``Information`` with ``--verbose``; ``host.json``'s default wins over both).

Core Tools also sets ``logging.logLevel.Function`` to the user level when neither the
environment nor ``host.json`` sets it (StartHostAction.cs ``ConfigureHostLoggingForUserLogLevel``).
Lines starting ``Worker process started and initialized.`` are always shown, and lines
starting ``azfuncjsonlog:`` are printed without the prefix and without a timestamp
(`Console.log` does both).

The categories, from the host (Azure/azure-functions-host): user logs of an invocation
``Function.<name>.User`` (GrpcWorkerChannel.cs ``Log``), a worker's System logs
``Worker.LanguageWorkerChannel.<language>.<worker id>`` (GrpcWorkerChannelFactory.cs), its
``LanguageWorkerConsoleLog`` lines ``Worker.rpcWorkerProcess.<language>.<worker id>``
(RpcWorkerProcessFactory.cs), its other output ``Host.Function.Console`` (WorkerConstants.cs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CONSOLE_CATEGORY",
    "LEVEL_NAMES",
    "LogFilter",
    "host_json_log_levels",
    "parse_level",
    "user_category",
    "worker_channel_category",
]

#: Microsoft.Extensions.Logging's LogLevel values.
TRACE, DEBUG, INFORMATION, WARNING, ERROR, CRITICAL, NONE = range(7)
LEVEL_NAMES: Final = ("Trace", "Debug", "Information", "Warning", "Error", "Critical", "None")
#: A worker's console output that is not a LanguageWorkerConsoleLog line.
CONSOLE_CATEGORY: Final = "Host.Function.Console"
_SYSTEM_PREFIXES: Final = ("Microsoft.Azure.WebJobs.", "Function.", "Worker.", "Host.")
_USER_FUNCTION: Final = re.compile(r"Function\.[^\s.]+\.User")
_FUNCTION: Final = re.compile(r"Function\.[^\s.]+")
_ENV_PREFIX: Final = "azurefunctionsjobhost__logging__loglevel__"


def user_category(function: str) -> str:
    """The category of a function's user logs (LogCategories.CreateFunctionUserCategory)."""
    return f"Function.{function}.User"


def worker_channel_category(language: str, worker_id: str) -> str:
    """The category of a worker's System ``RpcLog``s."""
    return f"Worker.LanguageWorkerChannel.{language}.{worker_id}"


def parse_level(text: str) -> int | None:
    """A LogLevel name (any case) or number 0-6, as .NET's ``Enum.TryParse`` reads it; None
    when it is neither."""
    stripped = text.strip()
    if stripped.isascii() and stripped.lstrip("+").isdigit():
        number = int(stripped)
        return number if number <= NONE else None
    lowered = stripped.lower()
    for number, name in enumerate(LEVEL_NAMES):
        if name.lower() == lowered:
            return number
    return None


def host_json_log_levels(document: Mapping[str, object]) -> tuple[tuple[str, object], ...]:
    """``logging.logLevel`` of a ``host.json`` document (keys in any case, as .NET
    configuration reads them): (category, value) pairs in order; () when absent."""

    def get(obj: object, key: str) -> object:
        if not isinstance(obj, Mapping):
            return None
        found = None
        for name, value in obj.items():
            if isinstance(name, str) and name.lower() == key.lower():
                found = value  # the last of keys differing in case, as configuration does
        return found

    levels = get(get(document, "logging"), "logLevel")
    if not isinstance(levels, Mapping):
        return ()
    return tuple((str(category), value) for category, value in levels.items())


def _is_user(category: str) -> bool:
    if _USER_FUNCTION.fullmatch(category) or _FUNCTION.fullmatch(category):
        return True
    if category.lower() == CONSOLE_CATEGORY.lower():
        return True
    return not category.startswith(_SYSTEM_PREFIXES)


def _rule_matches(rule: str, category: str) -> bool:
    prefix, star, suffix = rule.partition("*")
    folded = category.lower()
    if not folded.startswith(prefix.lower()):
        return False
    return not star or folded.endswith(suffix.lower())


@dataclass(frozen=True)
class LogFilter:
    """What the console shows (module docstring).

    Attributes:
        user_level: the lowest level of user logs shown where no rule applies.
        system_level: the same for system logs.
        rules: ``(category, level)`` from ``logging.logLevel``, in order; category None is
            ``default``.
    """

    user_level: int = INFORMATION
    system_level: int = WARNING
    rules: tuple[tuple[str | None, int], ...] = ()

    @classmethod
    def build(
        cls,
        *,
        log_levels: Iterable[tuple[str, object]] = (),
        environ: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
        verbose: bool = False,
    ) -> tuple[LogFilter, list[str]]:
        """The filter ``func start`` would apply, and warnings about values it cannot read.

        Args:
            log_levels: ``host.json`` ``logging.logLevel`` entries, in order.
            environ: the environment ``workerkit host`` runs in (``FUNCTIONS_USER_LOG_LEVEL``).
            settings: the host's settings (environment with the app settings merged in): its
                ``AzureFunctionsJobHost__logging__logLevel__<category>`` entries.
            verbose: ``--verbose``: system logs from ``Information``.
        """
        warnings: list[str] = []
        configured: dict[str, tuple[str, int]] = {}  # lowered key: (category, level)

        def add(category: str, value: object, where: str) -> None:
            readable = isinstance(value, str | int) and not isinstance(value, bool)
            level = parse_level(str(value)) if readable else None
            if level is None:
                warnings.append(
                    f"{where}: {value!r} is not a log level (Trace, Debug, Information, Warning,"
                    " Error, Critical or None); ignored"
                )
                return
            configured.pop(category.lower(), None)  # a later source replaces the key
            configured[category.lower()] = (category, level)

        for category, value in log_levels:
            add(category, value, f"host.json logging.logLevel.{category}")
        for key, value in (settings or {}).items():
            if key.lower().startswith(_ENV_PREFIX) and len(key) > len(_ENV_PREFIX):
                add(key[len(_ENV_PREFIX) :].replace("__", ":"), value, key)
        default = configured.get("default")
        user_level = INFORMATION
        user_setting = (environ or {}).get("FUNCTIONS_USER_LOG_LEVEL", "")
        parsed = parse_level(user_setting) if user_setting else None
        if parsed is not None:
            user_level = parsed
        elif default is not None:
            user_level = default[1]
        system_level = INFORMATION if verbose else WARNING
        if default is not None:
            system_level = default[1]
        if "function" not in configured:  # Core Tools' AzureFunctionsJobHost__…__Function
            configured["function"] = ("Function", user_level)
        rules = tuple(
            (None if category.lower() == "default" else category, level)
            for category, level in configured.values()
        )
        return cls(user_level, system_level, rules), warnings

    def allows(self, category: str, level: int) -> bool:
        """Whether a line of `category` at `level` is shown."""
        if level >= NONE:
            return False
        best: tuple[str | None, int] | None = None
        for rule in self.rules:
            name = rule[0]
            if name is not None and not _rule_matches(name, category):
                continue
            chosen = best[0] if best is not None else None
            if chosen is not None and (name is None or len(chosen) > len(name)):
                continue  # a more specific rule was found already
            best = rule
        if best is not None:
            return level >= best[1]
        minimum = self.user_level if _is_user(category) else self.system_level
        return level >= minimum
