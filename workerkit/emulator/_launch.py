"""`WorkerConfig`: a worker as the host knows it once its ``worker.config.json`` is read
(`_config` reads it), and how the host launches it: the command line, the environment, the
executable lookup.

The host's code: ``GetArguments`` and ``CreateWorkerProcess`` in
src/WebJobs.Script/Workers/ProcessManagement/DefaultWorkerProcessFactory.cs, and
``CreateWorkerProcess`` in src/WebJobs.Script/Workers/Rpc/RpcWorkerProcess.cs
(Azure/azure-functions-host).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from workerkit.cli import HostArgs

__all__ = [
    "ENV_TOKEN",
    "WorkerConfig",
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
