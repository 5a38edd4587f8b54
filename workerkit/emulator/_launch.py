"""`WorkerConfig`: a worker as the host knows it once its ``worker.config.json`` is read
(`_config` reads it), and how the host launches it: the command line, the environment, the
executable lookup; and `core_tools_environment`, the environment ``func start`` gives the
host process, which every worker inherits.

The host's code: ``GetArguments`` and ``CreateWorkerProcess`` in
src/WebJobs.Script/Workers/ProcessManagement/DefaultWorkerProcessFactory.cs, and
``CreateWorkerProcess`` in src/WebJobs.Script/Workers/Rpc/RpcWorkerProcess.cs
(Azure/azure-functions-host). Core Tools' (Azure/azure-functions-core-tools):
src/Cli/func/Program.cs and src/Cli/func/Actions/HostActions/StartHostAction.cs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from workerkit.cli import HostArgs

from ._jsonfile import read_json_object

__all__ = [
    "ENV_TOKEN",
    "CoreToolsError",
    "WorkerConfig",
    "core_tools_environment",
    "expand_environment_variables",
    "split_dotnet_arguments",
]

#: A ``%NAME%`` reference to an environment variable.
ENV_TOKEN: Final = re.compile(r"%([^%]+)%")
_LEFTOVER_TOKEN: Final = re.compile(r"%(.+?)%")


@dataclass(frozen=True)
class WorkerConfig:
    """A worker as the host would launch it, from its ``worker.config.json``.

    Timeouts and intervals are in seconds. `arguments` are the config's ``arguments``
    (already ``{workerDirectoryPath}``-formatted, with the ``languageWorkers`` setting's
    appended); like the host, each element is pasted into one command string, so one
    element may carry several argv tokens (see `command`).
    """

    path: Path
    language: str
    worker_directory: Path
    executable: str
    arguments: tuple[str, ...] = ()
    worker_path: Path | None = None
    extensions: tuple[str, ...] = ()
    worker_indexing: bool = False
    use_stderr_for_errors_only: bool = False
    default_runtime_version: str = ""
    profile: str | None = None
    process_count: int = 1
    max_process_count: int = 10
    startup_interval: float = 10.0
    startup_timeout: float = 60.0
    init_timeout: float = 10.0
    env_reload_timeout: float = 30.0
    restart_interval: float = 10.0
    shutdown_timeout: float = 10.0
    #: Accepted by the host but worth telling the author (e.g. a profile dropped a field).
    warnings: tuple[str, ...] = ()
    #: The environment the config was read with; `command` expands ``%VAR%`` from it.
    host_environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def command(self, host_args: HostArgs, *, app_dir: Path | None = None) -> list[str]:
        """The worker's argv, exactly as the host builds it.

        ``<executable> <arguments…> "<worker path>" <connection arguments>``: the arguments
        are ``%VAR%``-expanded from `host_environment` and joined into one string with the
        worker path in double quotes and `HostArgs.to_argv` (both spellings) last; the
        host's own variables (``FUNCTIONS_WORKER_DIRECTORY``, ``FUNCTIONS_APPLICATION_DIRECTORY``,
        ``FUNCTIONS_WORKER_RUNTIME_VERSION``) replace their ``%KEY%`` tokens in the executable
        and the string; any ``%…%`` left in the string is deleted; the string is split the way
        .NET splits a command line (`split_dotnet_arguments`).

        Args:
            host_args: where the gRPC server listens and the worker's ids.
            app_dir: the function app root (``FUNCTIONS_APPLICATION_DIRECTORY``); default: cwd.
        """
        text = "".join(
            " " + expand_environment_variables(argument, self.host_environment)
            for argument in self.arguments
        )
        if self.worker_path is not None:
            text += f' "{self.worker_path}"'
        text += " " + " ".join(host_args.to_argv())
        executable = self.executable
        for key, value in self._injected(app_dir or Path.cwd()).items():
            executable = executable.replace(f"%{key}%", value)
            text = text.replace(f"%{key}%", value)
        for token in _LEFTOVER_TOKEN.findall(text):
            text = text.replace(f"%{token}%", "")
        return [executable, *split_dotnet_arguments(text)]

    def environment(self, app_dir: Path, base_env: Mapping[str, str]) -> dict[str, str]:
        """The worker's environment: `base_env` plus what the host adds.

        `base_env` is what the host process would have (its environment with the app
        settings, i.e. ``local.settings.json`` ``Values``, already merged in). Added:
        ``FUNCTIONS_WORKER_DIRECTORY``, ``FUNCTIONS_APPLICATION_DIRECTORY``,
        ``FUNCTIONS_WORKER_RUNTIME_VERSION`` (when set), ``FUNCTIONS_WORKER_RUNTIME`` (the
        config's language, unless set), and the host's concurrency defaults for python and
        powershell.
        """
        env = dict(base_env)
        env.setdefault("FUNCTIONS_WORKER_RUNTIME", self.language)
        for key, value in self._injected(app_dir).items():
            if value or key != "FUNCTIONS_WORKER_RUNTIME_VERSION":
                env[key] = value
        runtime = env.get("FUNCTIONS_WORKER_RUNTIME", "").lower()
        if runtime == "python" and not env.get("PYTHON_THREADPOOL_THREAD_COUNT"):
            env["PYTHON_THREADPOOL_THREAD_COUNT"] = "1000"
        elif runtime == "powershell" and not env.get("PSWorkerInProcConcurrencyUpperBound"):
            env["PSWorkerInProcConcurrencyUpperBound"] = "1000"
        return env

    def _injected(self, app_dir: Path) -> dict[str, str]:
        return {
            "FUNCTIONS_WORKER_DIRECTORY": str(self.worker_directory),
            "FUNCTIONS_APPLICATION_DIRECTORY": str(app_dir),
            "FUNCTIONS_WORKER_RUNTIME_VERSION": self.host_environment.get(
                "FUNCTIONS_WORKER_RUNTIME_VERSION", ""
            ),
        }

    def resolve_executable(self, command: Sequence[str], env: Mapping[str, str]) -> str | None:
        """Where the OS would find ``command[0]``: a path, or None when it cannot be found.

        A bare name is looked up on the worker environment's PATH; a relative path is taken
        from the current directory (the .NET host resolves it against its own directory,
        not the app root).
        """
        executable = command[0]
        if os.sep in executable or (os.altsep and os.altsep in executable):
            path = Path(executable)
            if not path.is_absolute():
                path = Path.cwd() / path
            return str(path) if path.is_file() else None
        return shutil.which(executable, path=env.get("PATH", os.defpath))


def split_dotnet_arguments(text: str) -> list[str]:
    """Split a command-line string into argv the way .NET does on Unix.

    Whitespace separates arguments; double quotes group (and are removed); ``""`` inside
    quotes is a literal quote; backslashes are literal unless they precede a quote, where
    each pair becomes one backslash and an odd one escapes the quote.
    """
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        current: list[str] = []
        quoted = False
        while i < n and (quoted or text[i] not in " \t"):
            char = text[i]
            if char == "\\":
                start = i
                while i < n and text[i] == "\\":
                    i += 1
                count = i - start
                if i < n and text[i] == '"':
                    current.append("\\" * (count // 2))
                    if count % 2:
                        current.append('"')
                        i += 1
                else:
                    current.append("\\" * count)
            elif char == '"':
                if quoted and i + 1 < n and text[i + 1] == '"':
                    current.append('"')
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            else:
                current.append(char)
                i += 1
        args.append("".join(current))
    return args


def expand_environment_variables(text: str, environ: Mapping[str, str]) -> str:
    """.NET ``Environment.ExpandEnvironmentVariables``: ``%NAME%`` of a set variable is replaced."""

    def replace(match: re.Match[str]) -> str:
        value = environ.get(match.group(1))
        return match.group(0) if value is None else value

    return ENV_TOKEN.sub(replace, text)


class CoreToolsError(Exception):
    """Something ``func start`` stops on before the host starts (the message says what)."""


#: ``func start``'s default port (``DefaultPort`` in StartHostAction.cs).
CORE_TOOLS_PORT: Final = 7071
_PYTHON_SETTING: Final = "languageWorkers:python:defaultExecutablePath"
#: What Core Tools tries, in its order of preference (``GetEnvironmentPythonVersion`` in
#: src/Cli/func/Helpers/PythonHelpers.cs); ``py`` only on Windows.
_PYTHON_CANDIDATES: Final = (
    *(("py",) if sys.platform == "win32" else ()),
    "python3",
    "python",
    *(f"python3.{minor}" for minor in range(9, 15)),
)
_SUPPORTED_PYTHON: Final = range(9, 15)  # 3.9 to 3.14: PythonHelpers.IsVersionSupported
_PYTHON_VERSION: Final = re.compile(r"(\d+)\.(\d+)")


def core_tools_environment(
    app_dir: Path,
    port: int = CORE_TOOLS_PORT,
    settings: Mapping[str, str | None] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    connection_strings: Mapping[str, str | None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """The environment ``func start`` gives the host process, which its workers inherit.

    In Core Tools' order: ``FUNCTIONS_CORETOOLS_ENVIRONMENT`` and
    ``AzureFunctionsJobHost__SequentialRestart`` (``true``, unless set: Program.cs
    ``SetCoreToolsEnvironmentVariables``); for a ``python`` app the Python it finds
    (``languageWorkers:python:defaultExecutablePath`` unless set in either spelling, and
    ``FUNCTIONS_WORKER_RUNTIME_VERSION``, always: ``PreRunConditions``);
    ``ASPNETCORE_SUPPRESSSTATUSMESSAGES`` and ``Logging__LogLevel__Microsoft.Hosting.Lifetime``
    (``RunAsync``); then the app settings, applied one by one (``GetConfigurationSettings`` and
    ``UpdateEnvironmentVariables``): `settings` (``local.settings.json`` ``Values``),
    ``WEBSITE_HOSTNAME`` = ``localhost:<port>``, ``ConnectionStrings:<name>`` for each of
    `connection_strings`, ``AzureWebJobsScriptRoot`` = the app directory and
    ``AZURE_FUNCTIONS_ENVIRONMENT`` = ``Development`` (replacing a ``Values`` entry, with a
    warning). A variable already non-empty in the environment wins over any of them (a
    warning names it); a null value is skipped. Last ``PYTHON_ENABLE_DEBUG_LOGGING`` (``1``)
    and ``AzureFunctionsJobHost__logging__logLevel__Function`` (``Information``, unless
    ``host.json`` sets ``logging.logLevel.Function``), both unless set
    (``ConfigureHostLoggingForUserLogLevel``).

    Args:
        app_dir: the function app root (``func start``'s current directory).
        port: the HTTP port ``func start`` listens on (``WEBSITE_HOSTNAME``).
        settings: ``local.settings.json`` ``Values`` (None values are skipped).
        environ: the environment it starts from (default: this process's); not changed.
        connection_strings: ``local.settings.json`` ``ConnectionStrings``.
        warn: where Core Tools' warnings go (default: dropped).

    Raises:
        CoreToolsError: ``func start`` would stop: a ``Values`` entry named like one Core
            Tools adds itself (a duplicate key), or a ``python`` app without Python 3.9-3.14.
    """
    env = dict(os.environ if environ is None else environ)
    values = dict(settings or {})
    say = warn or (lambda message: None)
    for name in ("FUNCTIONS_CORETOOLS_ENVIRONMENT", "AzureFunctionsJobHost__SequentialRestart"):
        if not env.get(name):
            env[name] = "true"
    runtime = env.get("FUNCTIONS_WORKER_RUNTIME") or next(
        (v for k, v in values.items() if k.lower() == "functions_worker_runtime" and v), ""
    )
    if runtime.lower() == "python":
        _find_python(env)
    if not env.get("ASPNETCORE_SUPPRESSSTATUSMESSAGES"):
        env["ASPNETCORE_SUPPRESSSTATUSMESSAGES"] = "true"
    env["Logging__LogLevel__Microsoft.Hosting.Lifetime"] = "None"

    added: dict[str, str | None] = {
        "WEBSITE_HOSTNAME": "localhost" if port == 80 else f"localhost:{port}"
    }
    for name, value in (connection_strings or {}).items():
        added[f"ConnectionStrings:{name}"] = value
    added["AzureWebJobsScriptRoot"] = os.path.abspath(app_dir)
    for key in added:
        if key in values:  # Dictionary.Add on a key the Values already hold
            raise CoreToolsError(
                f"local.settings.json sets {key!r} in Values, which Core Tools adds itself:"
                " func start fails on the duplicate. Remove it from Values."
            )
    if "AZURE_FUNCTIONS_ENVIRONMENT" in values:
        say(
            "AZURE_FUNCTIONS_ENVIRONMENT already exists with value"
            f" '{values['AZURE_FUNCTIONS_ENVIRONMENT']}', overriding to 'Development'."
        )
    merged = {**values, **added}
    merged["AZURE_FUNCTIONS_ENVIRONMENT"] = "Development"
    for key, value in merged.items():
        if not key:
            say("Skipping local setting with empty key.")
        elif env.get(key):
            say(
                f"Skipping '{key}' from local settings as it's already defined in current"
                " environment variables."
            )
        elif value is None:
            say(f"Skipping '{key}' because value is null")
        else:
            env[key] = value

    if not env.get("AzureFunctionsJobHost__logging__logLevel__Function") and not _host_json_has(
        app_dir, "logging", "logLevel", "Function"
    ):
        env["AzureFunctionsJobHost__logging__logLevel__Function"] = "Information"
    if not env.get("PYTHON_ENABLE_DEBUG_LOGGING"):
        env["PYTHON_ENABLE_DEBUG_LOGGING"] = "1"
    return env


def _host_json_has(app_dir: Path, *keys: str) -> bool:
    """Whether ``host.json`` sets the section (configuration keys: any letter case)."""
    try:
        node: Any = read_json_object(Path(app_dir) / "host.json", error=lambda p, r: ValueError(r))
    except ValueError:
        return False
    for key in keys:
        if not isinstance(node, dict):
            return False
        node = next((v for k, v in node.items() if k.lower() == key.lower()), None)
    return node is not None and node != {} and node != []


def _find_python(env: dict[str, str]) -> None:
    """Core Tools' ``PreRunConditions`` for a ``python`` app: find Python 3.9-3.14, make it
    the worker's executable unless one is set, and always set its ``<major>.<minor>`` as
    ``FUNCTIONS_WORKER_RUNTIME_VERSION``.

    Core Tools reads only the ``:`` spelling of the setting from the environment; either
    spelling counts here (with both set, which one .NET configuration picks is not defined).
    """
    chosen = next(
        (
            v
            for k, v in env.items()
            if k.replace("__", ":").lower() == _PYTHON_SETTING.lower() and v
        ),
        None,
    )
    found: list[tuple[str, int, int]] = []
    for candidate in (chosen,) if chosen else _PYTHON_CANDIDATES:
        version = _python_version(candidate, env)
        if version is not None:
            found.append((candidate, *version))
            if version[0] == 3 and version[1] in _SUPPORTED_PYTHON:
                break
    pick = next((f for f in found if f[1] == 3 and f[2] in _SUPPORTED_PYTHON), None)
    if pick is None:
        seen = ", ".join(f"{exe} is {major}.{minor}" for exe, major, minor in found)
        if chosen:
            problem = f"{chosen!r} ({_PYTHON_SETTING}) " + (
                f"is {found[0][1]}.{found[0][2]}" if found else "does not run"
            )
        else:
            problem = seen or f"none of {', '.join(_PYTHON_CANDIDATES)} is on PATH"
        raise CoreToolsError(
            f"FUNCTIONS_WORKER_RUNTIME is python, and func start needs Python 3.9 to 3.14:"
            f" {problem}. Set languageWorkers__python__defaultExecutablePath to one."
        )
    executable, major, minor = pick
    if not chosen:
        env[_PYTHON_SETTING] = executable
    env["FUNCTIONS_WORKER_RUNTIME_VERSION"] = f"{major}.{minor}"


def _python_version(executable: str, env: Mapping[str, str]) -> tuple[int, int] | None:
    """``<executable> --version`` (stdout and stderr, as Core Tools reads it), or None."""
    path = shutil.which(executable, path=env.get("PATH", os.defpath))
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(env),
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _PYTHON_VERSION.search((done.stdout + done.stderr).replace("Python ", ""))
    if done.returncode != 0 or match is None:
        return None
    return int(match.group(1)), int(match.group(2))
