"""``worker.config.json``, read and validated the way the Functions host reads it, into a
`WorkerConfig` (`_launch`).

The host's code: src/WebJobs.Script/Workers/Rpc/Configuration/RpcWorkerConfigFactory.cs,
src/WebJobs.Script/Workers/Rpc/RpcWorkerDescription.cs,
src/WebJobs.Script/Workers/ProcessManagement/WorkerDescription.cs and
src/WebJobs.Script/Workers/Profiles/ (Azure/azure-functions-host). The steps, in its order:

1. read the file as the host does (`_jsonfile`: byte order marks, Newtonsoft's lenient
   JSON); ``description`` is required; the top-level names ``description``, ``profiles`` and
   ``processOptions`` are matched in exactly that case (``JObject.Property``/``GetValue``),
   the names inside them in any case (``ToObject``);
2. apply the first ``profiles`` entry whose conditions all match (the result keeps only
   ``arguments``, ``defaultExecutablePath``, ``defaultWorkerPath``, ``extensions``,
   ``language``, ``workerDirectory`` and ``isDisabled``: like the host, everything else is lost);
3. apply the ``languageWorkers:<language>:*`` settings from the environment
   (``defaultExecutablePath``, ``defaultRuntimeVersion`` replace; ``arguments`` is split on
   whitespace and appended); the ``__`` spelling and any letter case are accepted, as .NET
   configuration does;
4. join a relative ``defaultWorkerPath`` to the worker directory; require ``language`` and
   ``defaultExecutablePath``; skip a disabled config; require ``language`` to match
   ``FUNCTIONS_WORKER_RUNTIME`` when that is set;
5. fill ``{os}``, ``{architecture}`` and ``%FUNCTIONS_WORKER_RUNTIME_VERSION%`` in the worker
   path (checked against the ``supported*`` lists), ``{workerDirectoryPath}`` in arguments;
6. require the worker path to exist (before ``%VAR%`` expansion, as the host checks it), then
   expand ``%VAR%`` in the executable and worker path from the environment;
7. read ``processOptions`` (TimeSpans as ``"hh:mm:ss"``) and the process count.

Anything the host would reject raises `WorkerConfigError` naming the file and the reason.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ._dotnet import dotnet_regex
from ._jsonfile import dotnet_string, read_json_object
from ._launch import ENV_TOKEN, WorkerConfig, expand_environment_variables

__all__ = [
    "CONFIG_FILE_NAME",
    "HOST_VERSION",
    "WorkerConfigError",
    "parse_timespan",
    "read_worker_config",
]

CONFIG_FILE_NAME: Final = "worker.config.json"
#: The host version the emulator reports (init request, profile conditions).
HOST_VERSION: Final = "4.1037.0"

_RUNTIME_VERSION_PLACEHOLDER: Final = "%FUNCTIONS_WORKER_RUNTIME_VERSION%"
_OS_PLACEHOLDER: Final = "{os}"
_ARCH_PLACEHOLDER: Final = "{architecture}"
_WORKER_DIR_PLACEHOLDER: Final = "{workerDirectoryPath}"
_TIMESPAN: Final = re.compile(  # ASCII digits only, as .NET's TimeSpanParse reads them
    r"^\s*(?P<sign>-)?(?:(?P<days>[0-9]+)\.)?(?P<h>[0-9]+):(?P<m>[0-9]+)"
    r"(?::(?P<s>[0-9]+)(?:\.(?P<f>[0-9]{1,7}))?)?\s*$"
)
_DAYS_ONLY: Final = re.compile(r"^\s*(?P<sign>-)?(?P<days>[0-9]+)\s*$")
#: TimeSpan.MaxValue in ticks (100 ns): 10675199.02:48:05.4775807.
_MAX_TICKS: Final = (1 << 63) - 1


class WorkerConfigError(Exception):
    """A ``worker.config.json`` the host would reject (or that cannot be read).

    ``str(error)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_worker_config(worker_dir: Path, environ: Mapping[str, str]) -> WorkerConfig:
    """Read ``<worker_dir>/worker.config.json`` as the host does (module docstring).

    Args:
        worker_dir: the directory holding ``worker.config.json``.
        environ: the host's environment including app settings (``local.settings.json``
            ``Values``): ``%VAR%`` values, ``languageWorkers:*`` overrides,
            ``FUNCTIONS_WORKER_RUNTIME`` and its version, ``FUNCTIONS_WORKER_PROCESS_COUNT``.

    Raises:
        WorkerConfigError: the file is missing or unreadable, or the host would reject it.
    """
    worker_dir = Path(os.path.abspath(worker_dir))
    path = worker_dir / CONFIG_FILE_NAME
    document = read_json_object(path, error=WorkerConfigError)
    return _Reader(path, worker_dir, environ).read(document)


class _Reader:
    def __init__(self, path: Path, worker_dir: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.worker_dir = worker_dir
        self.environ = dict(environ)
        self.warnings: list[str] = []

    def fail(self, reason: str) -> WorkerConfigError:
        return WorkerConfigError(self.path, reason)

    # -- JSON access -------------------------------------------------------------------------
    @staticmethod
    def _get(obj: Mapping[str, Any], key: str) -> Any:
        """Case-insensitive property lookup, as Newtonsoft binds properties."""
        if key in obj:
            return obj[key]
        lowered = key.lower()
        for name, value in obj.items():
            if name.lower() == lowered:
                return value
        return None

    def _string(self, obj: Mapping[str, Any], key: str, where: str = "description") -> str | None:
        value = self._get(obj, key)
        if value is None:
            return None
        if isinstance(value, bool | int | float | str):  # Newtonsoft turns scalars into strings
            return dotnet_string(value)
        raise self.fail(f"{where}.{key} must be a string, not {_json_kind(value)}")

    def _strings(self, obj: Mapping[str, Any], key: str) -> list[str] | None:
        value = self._get(obj, key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail(
                f"description.{key} must be an array of strings, not {_json_kind(value)}"
            )
        out: list[str] = []
        for item in value:
            if item is None:
                continue
            if isinstance(item, dict | list):
                raise self.fail(f"description.{key} must hold strings, not {_json_kind(item)}")
            out.append(dotnet_string(item) or "")
        return out

    def _bool(self, obj: Mapping[str, Any], key: str) -> bool | None:
        value = self._get(obj, key)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.fail(f"description.{key} must be true or false, not {value!r}")

    # -- the steps ---------------------------------------------------------------------------
    def read(self, document: Mapping[str, Any]) -> WorkerConfig:
        description = document.get("description")
        if description is None:
            spelled = next((k for k in document if k.lower() == "description"), None)
            raise self.fail(
                "the 'description' object is missing"
                + (
                    f" (the host reads 'description' in that case only, not {spelled!r})"
                    if spelled
                    else ""
                )
            )
        if not isinstance(description, dict):
            raise self.fail(f"'description' must be an object, not {_json_kind(description)}")
        fields = self._description(description)
        profiles = document.get("profiles")
        profile_name = None
        if profiles is not None:
            profile_name = self._apply_profiles(profiles, fields)
        self._apply_settings(fields)

        language = fields["language"] or ""
        worker_path = fields["defaultWorkerPath"]
        if worker_path and not os.path.isabs(worker_path):
            worker_path = os.path.join(self.worker_dir, worker_path)
        if not language:
            raise self.fail("description.language cannot be empty")
        if not fields["defaultExecutablePath"]:
            raise self.fail("description.defaultExecutablePath cannot be empty")
        if fields["isDisabled"]:
            raise self.fail(f"the worker for language {language!r} is disabled (isDisabled: true)")
        runtime = self.environ.get("FUNCTIONS_WORKER_RUNTIME", "")
        if runtime.lower() == "dotnet":
            raise self.fail(
                "FUNCTIONS_WORKER_RUNTIME is 'dotnet' (in-process .NET): the host reads no"
                " worker.config.json at all"
            )
        if runtime and runtime.lower() != language.lower():
            raise self.fail(
                f"FUNCTIONS_WORKER_RUNTIME is {runtime!r} but this worker's language is"
                f" {language!r}: the host would skip this config"
            )
        if worker_path:
            worker_path = self._format_worker_path(worker_path, fields, language, runtime)
        arguments = [
            a.replace(_WORKER_DIR_PLACEHOLDER, str(self.worker_dir)) for a in fields["arguments"]
        ]
        if worker_path is not None and not os.path.isfile(worker_path):
            hint = (
                " (the host checks this path before expanding %VAR%)"
                if ENV_TOKEN.search(worker_path)
                else ""
            )
            raise self.fail(f"defaultWorkerPath {worker_path} does not exist{hint}")
        executable = expand_environment_variables(fields["defaultExecutablePath"], self.environ)
        if worker_path is not None:
            worker_path = expand_environment_variables(worker_path, self.environ)

        options = self._process_options(document)
        return WorkerConfig(
            path=self.path,
            language=language,
            worker_directory=self.worker_dir,
            executable=executable,
            arguments=tuple(arguments),
            worker_path=Path(worker_path) if worker_path else None,
            # The host compares them ignoring case (``ParseLanguage`` in
            # src/WebJobs.Script/Host/HostFunctionMetadataProvider.cs): kept lower-cased.
            extensions=tuple(e.lower() for e in fields["extensions"]),
            worker_indexing=(fields["workerIndexing"] or "").lower() == "true",
            use_stderr_for_errors_only=bool(fields["useStdErrorStreamForErrorsOnly"]),
            default_runtime_version=fields["defaultRuntimeVersion"] or "",
            profile=profile_name,
            warnings=tuple(self.warnings),
            host_environment=self.environ,
            **options,
        )

    def _description(self, description: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "language": self._string(description, "language"),
            "defaultExecutablePath": self._string(description, "defaultExecutablePath"),
            "defaultWorkerPath": self._string(description, "defaultWorkerPath"),
            "arguments": self._strings(description, "arguments") or [],
            "workerArguments": self._strings(description, "workerArguments") or [],
            "extensions": self._strings(description, "extensions") or [],
            "defaultRuntimeVersion": self._string(description, "defaultRuntimeVersion"),
            "supportedRuntimeVersions": self._strings(description, "supportedRuntimeVersions"),
            "supportedOperatingSystems": self._strings(description, "supportedOperatingSystems"),
            "supportedArchitectures": self._strings(description, "supportedArchitectures"),
            "sanitizeRuntimeVersionRegex": self._string(description, "sanitizeRuntimeVersionRegex"),
            "workerIndexing": self._string(description, "workerIndexing"),
            "isDisabled": self._bool(description, "isDisabled"),
            "useStdErrorStreamForErrorsOnly": self._bool(
                description, "useStdErrorStreamForErrorsOnly"
            ),
        }

    def _apply_profiles(self, profiles: Any, fields: dict[str, Any]) -> str | None:
        if not isinstance(profiles, list):
            raise self.fail(
                "Failed to parse profiles in worker config: 'profiles' must be an array"
            )
        for profile in profiles:
            if not isinstance(profile, dict):
                raise self.fail(
                    "Failed to parse profiles in worker config: a profile must be an object"
                )
            name = self._get(profile, "profileName")
            conditions = self._get(profile, "conditions")
            description = self._get(profile, "description")
            if not isinstance(name, str) or not name:
                raise self.fail("WorkerDescriptionProfile Name cannot be empty")
            if not isinstance(conditions, list) or not conditions:
                raise self.fail(
                    f"WorkerDescriptionProfile Conditions cannot be empty (profile {name!r})"
                )
            if not isinstance(description, dict):
                raise self.fail(
                    f"WorkerDescriptionProfile ProfileDescription cannot be null (profile {name!r})"
                )
            if all(self._condition(c, name) for c in conditions):
                self._apply_profile(name, self._description(description), fields)
                return name
        return None

    def _condition(self, condition: Any, profile: str) -> bool:
        if not isinstance(condition, dict):
            raise self.fail(f"profile {profile!r}: a condition must be an object")
        kind = condition.get("conditionType")
        if not isinstance(kind, str):
            raise self.fail(f"profile {profile!r}: a condition needs 'conditionType'")
        name = condition.get("conditionName")
        expression = condition.get("conditionExpression")
        if kind not in ("environment", "hostProperty"):
            self.warnings.append(
                f"profile {profile!r} is disabled: unknown condition type {kind!r}"
            )
            return False
        label = "EnvironmentCondition" if kind == "environment" else "HostPropertyCondition"
        if not isinstance(name, str) or not name:
            raise self.fail(f"{label} Name cannot be empty (profile {profile!r})")
        if kind == "hostProperty" and not any(
            name.lower() in prop for prop in ("sku", "platform", "hostversion")
        ):
            raise self.fail(f"{label} Name is not a valid host property name: {name!r}")
        if not isinstance(expression, str) or not expression:
            raise self.fail(f"{label} Expression cannot be empty (profile {profile!r})")
        try:
            pattern = dotnet_regex(expression)
        except re.error:
            raise self.fail(
                f"{label} Expression must be a valid regular expression: {expression!r}"
            ) from None
        if kind == "environment":
            value = self.environ.get(name, "")
        else:
            value = {
                "sku": self.environ.get("WEBSITE_SKU", ""),
                "platform": _os_name(),
                "hostversion": HOST_VERSION,
            }.get(name.lower(), "")
        return bool(value) and pattern.search(value) is not None

    def _apply_profile(self, name: str, profile: dict[str, Any], fields: dict[str, Any]) -> None:
        for key in ("defaultExecutablePath", "defaultWorkerPath", "language"):
            if profile[key]:
                fields[key] = profile[key]
        for key in ("arguments", "extensions"):
            if profile[key]:
                fields[key] = profile[key]
        fields["isDisabled"] = (
            profile["isDisabled"] if profile["isDisabled"] is not None else fields["isDisabled"]
        )
        lost = [
            key
            for key in (
                "workerIndexing",
                "defaultRuntimeVersion",
                "useStdErrorStreamForErrorsOnly",
                "sanitizeRuntimeVersionRegex",
                "supportedRuntimeVersions",
                "supportedOperatingSystems",
                "supportedArchitectures",
            )
            if fields[key]
        ]
        for key in lost:
            fields[key] = None
        if lost:
            self.warnings.append(
                f"profile {name!r} applies; like the host, it drops {', '.join(lost)}"
            )

    def _setting(self, language: str, key: str) -> str | None:
        """``languageWorkers:<language>:<key>`` from the environment (any case, ``:`` or ``__``)."""
        wanted = f"languageworkers:{language}:{key}".lower()
        found = None
        for name, value in self.environ.items():
            if name.replace("__", ":").lower() == wanted:
                found = value
        return found

    def _apply_settings(self, fields: dict[str, Any]) -> None:
        language = fields["language"] or ""
        executable = self._setting(language, "defaultExecutablePath")
        if executable is not None:
            fields["defaultExecutablePath"] = executable
        version = self._setting(language, "defaultRuntimeVersion")
        if version is not None:
            fields["defaultRuntimeVersion"] = version
        arguments = self._setting(language, "arguments")
        if arguments is not None:
            fields["arguments"] = [*fields["arguments"], *re.split(r"\s+", arguments)]

    def _format_worker_path(
        self, worker_path: str, fields: dict[str, Any], language: str, runtime: str
    ) -> str:
        version = fields["defaultRuntimeVersion"] or ""
        env_version = self.environ.get("FUNCTIONS_WORKER_RUNTIME_VERSION", "")
        if runtime and runtime.lower() == language.lower() and env_version:
            regex = fields["sanitizeRuntimeVersionRegex"]
            if regex:
                try:
                    match = dotnet_regex(regex).search(env_version)
                except re.error as exc:
                    raise self.fail(
                        f"sanitizeRuntimeVersionRegex {regex!r} is invalid: {exc}"
                    ) from None
                if match is None:
                    raise self.fail(
                        f"Version {env_version} for language {language} does not match the"
                        f" regular expression '{regex}'"
                    )
                env_version = match.group(0)
            version = env_version
        os_name, arch = _os_name(), _architecture()
        if _OS_PLACEHOLDER in worker_path and not _contains(
            fields["supportedOperatingSystems"], os_name
        ):
            raise self.fail(f"OS {os_name} is not supported for language {language}")
        if _ARCH_PLACEHOLDER in worker_path and not _contains(
            fields["supportedArchitectures"], arch
        ):
            raise self.fail(f"Architecture {arch} is not supported for language {language}")
        if (
            _RUNTIME_VERSION_PLACEHOLDER in worker_path
            and version
            and not _contains(fields["supportedRuntimeVersions"], version)
        ):
            raise self.fail(f"Version {version} is not supported for language {language}")
        return (
            worker_path.replace(_OS_PLACEHOLDER, os_name)
            .replace(_ARCH_PLACEHOLDER, arch)
            .replace(_RUNTIME_VERSION_PLACEHOLDER, version)
        )

    def _process_options(self, document: Mapping[str, Any]) -> dict[str, Any]:
        options = document.get("processOptions")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise self.fail(f"'processOptions' must be an object, not {_json_kind(options)}")

        def span(key: str, default: float) -> float:
            value = self._get(options, key)
            if value is None:
                return default
            if not isinstance(value, str):
                raise self.fail(f'processOptions.{key} must be a TimeSpan string like "00:01:00"')
            try:
                return parse_timespan(value)
            except ValueError as exc:
                raise self.fail(f"processOptions.{key}: {exc}") from None

        def integer(key: str, default: int) -> int:
            value = self._get(options, key)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"processOptions.{key} must be a whole number, not {value!r}")
            return value

        count = integer("processCount", 1)
        maximum = integer("maxProcessCount", 10)
        to_cores = self._get(options, "setProcessCountToNumberOfCpuCores")
        if to_cores is True:
            count = os.cpu_count() or 1
            maximum = max(maximum, count)
        env_count = self.environ.get("FUNCTIONS_WORKER_PROCESS_COUNT", "")
        if env_count:
            try:
                count = max(int(env_count), 1)
            except ValueError:
                raise self.fail(
                    f"FUNCTIONS_WORKER_PROCESS_COUNT {env_count!r} is not a whole number"
                ) from None
        if count <= 0:
            raise self.fail("ProcessCount must be greater than 0.")
        if count > maximum:  # the host drops the whole worker config: no worker starts
            source = (
                f"FUNCTIONS_WORKER_PROCESS_COUNT={env_count.strip()}"
                if env_count
                else f"processOptions.processCount {count}"
            )
            raise self.fail(
                f"{source} asks for more worker processes than maxProcessCount ({maximum}):"
                " the host rejects this worker configuration (ProcessCount must not be greater"
                f" than MaxProcessCount) and starts no worker. Ask for at most {maximum}, or"
                " raise processOptions.maxProcessCount."
            )
        interval = span("processStartupInterval", 10.0)
        if interval < 0:
            raise self.fail("processStartupInterval: the TimeSpan must not be negative.")
        result = {
            "process_count": count,
            "max_process_count": maximum,
            "startup_interval": interval,
            "startup_timeout": span("processStartupTimeout", 60.0),
            "init_timeout": span("initializationTimeout", 10.0),
            "env_reload_timeout": span("environmentReloadTimeout", 30.0),
            "restart_interval": span("processRestartInterval", 10.0),
            "shutdown_timeout": span("processShutdownTimeout", 10.0),
        }
        for key in ("startup_timeout", "init_timeout", "env_reload_timeout"):
            if result[key] <= 0:
                raise self.fail(f"processOptions: {key.replace('_', ' ')} must be positive")
        return result


def parse_timespan(text: str) -> float:
    """Parse a .NET TimeSpan string (``[-][d.]hh:mm[:ss[.fffffff]]`` or whole days) to seconds.

    Raises:
        ValueError: not a TimeSpan .NET would parse (ASCII digits; hours 0-23, minutes and
            seconds 0-59; at most ``TimeSpan.MaxValue``, 10675199.02:48:05.4775807).
    """
    match = _TIMESPAN.match(text) or _DAYS_ONLY.match(text)
    if match is None:
        raise ValueError(f'{text!r} is not a TimeSpan; use "hh:mm:ss", e.g. "00:02:00"')
    groups = match.groupdict()
    numbers = [(groups.get(key) or "").lstrip("0") or "0" for key in ("days", "h", "m", "s")]
    if any(len(number) > 9 for number in numbers):  # and int() never sees 4300 digits
        raise ValueError(f"{text!r} is out of range (a TimeSpan is at most 10675199 days)")
    days, hours, minutes, secs = map(int, numbers)
    if hours > 23 or minutes > 59 or secs > 59:
        raise ValueError(f"{text!r} is out of range (hours 0-23, minutes and seconds 0-59)")
    fraction = groups.get("f") or ""
    seconds_whole = days * 86400 + hours * 3600 + minutes * 60 + secs
    ticks = seconds_whole * 10**7 + int(fraction.ljust(7, "0"))
    negative = bool(groups["sign"])
    if ticks > _MAX_TICKS + negative:
        raise ValueError(f"{text!r} is out of range (a TimeSpan is at most 10675199 days)")
    seconds = ticks / 10**7
    return -seconds if negative else seconds


def _contains(values: Sequence[str] | None, wanted: str) -> bool:
    return any(v.lower() == wanted.lower() for v in values or ())


def _os_name() -> str:
    system = platform.system()
    return {"Windows": "WINDOWS", "Darwin": "OSX"}.get(system, "LINUX")


def _architecture() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "X64"
    if machine in ("aarch64", "arm64"):
        return "Arm64"
    if machine.startswith("arm"):
        return "Arm"
    if machine in ("i386", "i686", "x86"):
        return "X86"
    return machine


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
