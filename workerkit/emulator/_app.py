"""The function app on disk: ``host.json``, ``local.settings.json`` and ``function.json`` discovery.

Host indexing follows the host (src/WebJobs.Script/Host/HostFunctionMetadataProvider.cs and
FunctionMetadataManager.cs in Azure/azure-functions-host): every immediate subdirectory of
the app root that holds a ``function.json`` is a function named after the directory. A
function the host would reject is reported as an `AppError` naming its ``function.json`` and
the reason (the host's own wording where it has one) and left out; the others still load.

The same binding checks apply to the functions a worker reports itself (worker indexing:
``ValidateMetadata`` in src/WebJobs.Script/Host/WorkerFunctionMetadataProvider.cs), see
`functions_from_metadata`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._types import FUNCTION_ID_NAMESPACE
from workerkit.testing import HostConnection, binding

from ._config import parse_timespan
from ._dotnet import fold
from ._jsonfile import (
    JsonSyntaxError,
    dotnet_strings,
    parse_json,
    read_host_json_object,
    read_json_object,
)
from ._logfilter import host_json_log_levels
from ._retry import RetryPolicy, checked, checked_rpc
from ._validation import (
    BindingConfig,
    BindingError,
    check_bindings,
    data_type_of,
    direction_of,
    is_trigger,
)

__all__ = [
    "AppError",
    "FunctionSpec",
    "HostSettings",
    "LocalSettings",
    "discover_functions",
    "functions_from_metadata",
    "read_host_json",
    "read_local_settings",
]

FUNCTION_JSON: Final = "function.json"
_FUNCTION_NAME: Final = re.compile(r"^[a-z][a-z0-9_\-]{0,127}$", re.IGNORECASE)
_PRIMARY_NAMES: Final = ("index.js", "index.mjs", "index.cjs", "__init__.py")
_UNDETERMINED: Final = (
    "Unable to determine the primary function script. Try renaming your entry point script to"
    " 'run' (or 'index' in the case of Node), or alternatively you can specify the name of the"
    " entry point script explicitly by adding a 'scriptFile' property to your function metadata."
)
#: host.json ``functionTimeout`` when unset (the Consumption plan's; the host uses 30 min on
#: other plans).
DEFAULT_FUNCTION_TIMEOUT: Final = 300.0


class AppError(Exception):
    """Something in the function app the host would reject.

    ``str(error)`` is ``"<file>: <reason>"``; `function` names the function when it is one.
    """

    def __init__(self, path: Path, reason: str, function: str | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.function = function


@dataclass(frozen=True)
class FunctionSpec:
    """One function: from its ``function.json`` (host indexing) or from the worker.

    Attributes:
        name: the function name (the directory name under host indexing).
        directory: the function's directory.
        script_file: the primary script, absolute under host indexing; under worker indexing
            whatever the worker reported.
        entry_point: ``entryPoint``, or "".
        bindings: the ``bindings`` objects, as written, read as the host reads them: keys
            in any letter case (`_validation.BindingConfig`).
        disabled: the app setting ``AzureWebJobs.<name>.Disabled`` (applied by the emulator)
            or, from a worker, ``IsDisabled``. The host ignores ``"disabled"`` in
            ``function.json``, so does the emulator.
        properties: metadata properties echoed on load (a worker-indexed function's own).
        reported_id: the function id a worker reported (worker indexing); "" otherwise.
        is_direct: ``"configurationSource": "attributes"``.
        retry: its own retry policy (``retry`` in ``function.json``, a worker's
            ``retry_options``); None: the app's, if any (`_retry`).
    """

    name: str
    directory: Path
    script_file: Path
    entry_point: str
    bindings: tuple[Mapping[str, Any], ...]
    disabled: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)
    reported_id: str = ""
    is_direct: bool = False
    retry: RetryPolicy | None = None

    def __post_init__(self) -> None:
        bindings = tuple(
            b if isinstance(b, BindingConfig) else BindingConfig(b) for b in self.bindings
        )
        object.__setattr__(self, "bindings", bindings)

    @property
    def function_id(self) -> str:
        """The id loads and invocations use: the worker's own, else uuid5 of the lower-cased name.

        The same namespace as workerkit's worker indexing, so both give a function one id.
        """
        return self.reported_id or str(uuid.uuid5(FUNCTION_ID_NAMESPACE, self.name.lower()))

    @property
    def trigger(self) -> Mapping[str, Any]:
        """The trigger binding (the input binding whose type ends with ``Trigger``)."""
        for item in self.bindings:
            if is_trigger(item):
                return item
        raise AppError(self.directory / FUNCTION_JSON, "no trigger binding", self.name)

    @property
    def trigger_type(self) -> str:
        """The trigger's ``type`` (e.g. ``httpTrigger``)."""
        return str(self.trigger.get("type", ""))

    def load_request(self) -> pb.FunctionLoadRequest:
        """The `FunctionLoadRequest` the host sends for this function (``GetFunctionLoadRequest``
        in src/WebJobs.Script.Grpc/Channel/GrpcWorkerChannel.cs).

        ``metadata`` carries name, directory, script file, entry point and the bindings as
        ``BindingInfo{type, direction, data_type}`` (no properties); ``properties`` holds
        ``FunctionId``, the function's own properties and ``IsDisabled``/``IsDirect`` when set.
        """
        properties = dict(self.properties)
        if self.disabled:
            properties["IsDisabled"] = "True"
        if self.is_direct:
            properties["IsDirect"] = "True"
        return HostConnection.load_request(
            self.function_id,
            self.name,
            bindings={
                str(b["name"]): binding(str(b["type"]), direction_of(b), data_type_of(b))
                for b in self.bindings
            },
            script_file=str(self.script_file),
            entry_point=self.entry_point,
            directory=str(self.directory),
            properties=properties,
        )


@dataclass(frozen=True)
class HostSettings:
    """What the emulator uses from ``host.json``.

    Attributes:
        route_prefix: ``extensions.http.routePrefix`` (default ``api``; "" for none), without
            the ``/`` around it: the path segments requests start with.
        written_route_prefix: the same as written: the host joins it and each route with a
            ``/`` into the route's template (`_httproutes`).
        function_timeout: ``functionTimeout`` in seconds; None when unbounded (``-1``).
        functions: the ``functions`` allow-list, when given.
        max_concurrent_requests: ``extensions.http.maxConcurrentRequests``: HTTP function
            requests run at once, the rest wait; None (the host's default, ``-1``): no limit.
        max_outstanding_requests: ``extensions.http.maxOutstandingRequests``: requests
            running or waiting, beyond which they are answered 429; None (``-1``): no limit.
        retry: ``retry``, the policy of functions without their own (`_retry`).
    """

    path: Path
    route_prefix: str = "api"
    function_timeout: float | None = DEFAULT_FUNCTION_TIMEOUT
    functions: tuple[str, ...] | None = None
    max_concurrent_requests: int | None = None
    max_outstanding_requests: int | None = None
    retry: RetryPolicy | None = None
    written_route_prefix: str = "api"
    #: ``logging.logLevel`` entries, (category, level), for what the console shows.
    log_levels: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class LocalSettings:
    """``local.settings.json``: ``Values`` become app settings (the worker's environment).

    Null values are left out (Core Tools skips them); `warnings` are Core Tools' for a file
    it cannot read.
    """

    path: Path
    values: Mapping[str, str] = field(default_factory=dict)
    local_http_port: int | None = None
    connection_strings: Mapping[str, str | None] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def read_host_json(app_dir: Path) -> HostSettings:
    """Read ``<app_dir>/host.json``.

    Raises:
        AppError: the file is missing, is not JSON, lacks ``"version": "2.0"``, or has a
            ``routePrefix`` or ``functionTimeout`` the host would reject.
    """
    path = Path(app_dir) / "host.json"
    document = read_host_json_object(  # {} → defaults; "version" checked as the host does
        path, error=AppError, missing="no host.json: this is not a function app directory"
    )
    prefix: Any = "api"
    http: Any = {}
    extensions = _get(document, "extensions")
    if isinstance(extensions, dict):
        http = _get(extensions, "http")
        if isinstance(http, dict):
            value = _get(http, "routePrefix")
            if value is not None:
                prefix = value
        else:
            http = {}
    throttles = [
        _request_limit(path, name, _get(http, name))
        for name in ("maxConcurrentRequests", "maxOutstandingRequests")
    ]
    if not isinstance(prefix, str):
        raise AppError(path, "extensions.http.routePrefix must be a string")
    timeout: float | None = DEFAULT_FUNCTION_TIMEOUT
    raw_timeout = _get(document, "functionTimeout")
    if raw_timeout is not None:
        if not isinstance(raw_timeout, str):
            raise AppError(path, 'functionTimeout must be a TimeSpan string like "00:05:00"')
        try:
            timeout = parse_timespan(raw_timeout)
        except ValueError as exc:
            raise AppError(path, f"functionTimeout: {exc}") from None
        if timeout == -86400.0:  # "-1": unbounded
            timeout = None
        elif timeout < 1:
            raise AppError(path, "FunctionTimeout must be greater than 00:00:01.")
    functions = _get(document, "functions")
    if functions is not None and (
        not isinstance(functions, list) or not all(isinstance(f, str) for f in functions)
    ):
        raise AppError(path, "'functions' must be an array of function names")
    return HostSettings(
        path=path,
        route_prefix=prefix.strip("/"),
        written_route_prefix=prefix,
        function_timeout=timeout,
        functions=tuple(functions) if functions is not None else None,
        max_concurrent_requests=throttles[0],
        max_outstanding_requests=throttles[1],
        retry=checked(_get(document, "retry") or None, lambda e: AppError(path, e)),  # {}: none
        log_levels=host_json_log_levels(document),
    )


def _request_limit(path: Path, name: str, value: Any) -> int | None:
    """``extensions.http.<name>``: a positive count, or -1 (also when absent) for none. The
    host reads configuration values as strings, so ``"100"`` is 100; it fails to start on
    0 or another negative number (they become dataflow block limits)."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        number = int(value.strip())
    if number is None or number == 0 or number < -1:
        raise AppError(
            path, f"extensions.http.{name} must be a positive integer or -1 (no limit): {value!r}"
        )
    return None if number == -1 else number


def read_local_settings(app_dir: Path) -> LocalSettings:
    """Read ``<app_dir>/local.settings.json`` as Core Tools does (absent: no settings).

    ``Values``, ``ConnectionStrings`` (`_jsonfile.dotnet_strings`) and ``Host.LocalHttpPort``
    (the default port). A file Core Tools cannot read (not JSON, a value that is an object,
    a port that is not a number) gives no settings and Core Tools' warning in
    `LocalSettings.warnings`: ``func start`` goes on (the ``AppSettingsFile`` constructor,
    src/Cli/func/Common/AppSettingsFile.cs in Azure/azure-functions-core-tools).

    Raises:
        AppError: the settings are encrypted.
    """
    path = Path(app_dir) / "local.settings.json"
    if not path.exists():
        return LocalSettings(path)
    try:
        document = _read_json(path, missing="")
        values = dotnet_strings(document.get("Values"), "Values", path=path, error=AppError)
        connections = dotnet_strings(
            document.get("ConnectionStrings"),
            "ConnectionStrings",
            path=path,
            error=AppError,
            inner="ConnectionString",
        )
        port = None
        host = document.get("Host")
        raw_port = _get(host, "LocalHttpPort") if isinstance(host, dict) else None
        if raw_port is not None:
            port = int(raw_port) if re.fullmatch(r"\s*[0-9]{1,5}\s*", str(raw_port)) else -1
            if isinstance(raw_port, bool) or not 0 <= port <= 65535:
                raise AppError(path, f"Host.LocalHttpPort must be a port number, not {raw_port!r}")
    except AppError as exc:
        warning = (
            f"Failed to read app settings file at '{path}'. Ensure it is a valid JSON file."
            f" {exc.reason}"
        )
        return LocalSettings(path, warnings=(warning,))
    if document.get("IsEncrypted") is True:
        raise AppError(path, "the settings are encrypted; decrypt them (func settings decrypt)")
    return LocalSettings(
        path,
        MappingProxyType({k: v for k, v in values.items() if v is not None}),
        port,
        MappingProxyType(connections),
    )


def discover_functions(
    app_dir: Path, extensions: Sequence[str] = ()
) -> tuple[list[FunctionSpec], list[AppError]]:
    """Find the app's functions by host indexing (``<app_dir>/*/function.json``).

    Args:
        app_dir: the function app root.
        extensions: the worker's ``extensions`` (with dots); a function whose script has
            another extension belongs to another language and is reported as an error.
            Empty: no filtering.

    Returns:
        The valid functions, in the host's order (``FunctionMetadataManager``: by name,
        ignoring case), and one `AppError` per rejected function. ``scriptFile`` must name an
        existing file inside the app directory.
    """
    root = Path(os.path.abspath(app_dir))
    functions: list[FunctionSpec] = []
    errors: list[AppError] = []
    try:
        directories = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: fold(p.name))
    except OSError as exc:
        return [], [AppError(root, f"cannot list the app directory: {exc}")]
    for directory in directories:
        config = directory / FUNCTION_JSON
        if not os.path.isfile(config):  # File.Exists: false on any error (an unreadable folder)
            continue
        try:
            functions.append(_read_function(root, directory, config, extensions))
        except AppError as exc:
            exc.function = exc.function or directory.name
            errors.append(exc)
    return functions, errors


def functions_from_metadata(
    metadata: Sequence[pb.RpcFunctionMetadata], app_dir: Path
) -> tuple[list[FunctionSpec], list[AppError]]:
    """Validate the functions a worker reported in its ``FunctionMetadataResponse``.

    A function with a failure ``status``, an invalid name, an empty script file or bindings
    the host would reject is reported as an `AppError` (its path: the reported directory) and
    left out; the others are returned in order.
    """
    functions: list[FunctionSpec] = []
    errors: list[AppError] = []
    for entry in metadata:
        where = Path(entry.directory or app_dir)
        try:
            if entry.status is not None and entry.status.status != pb.StatusResultStatus.Success:
                message = entry.status.exception.message if entry.status.exception else ""
                raise AppError(where, f"the worker reported a failure: {message or 'no message'}")
            if not _FUNCTION_NAME.match(entry.name) or entry.name.lower() == "host":
                raise AppError(where, f"'{entry.name}' is not a valid function name.")
            bindings = []
            for raw in entry.raw_bindings:  # JObject.Parse each: Newtonsoft's dialect, depth 64
                try:
                    value = parse_json(raw)
                except JsonSyntaxError as exc:
                    raise AppError(where, f"raw binding {raw[:200]!r} is not JSON: {exc}") from None
                bindings.append(value)
            _checked(where, bindings)
            if not entry.script_file:
                raise AppError(where, _UNDETERMINED)
            functions.append(
                FunctionSpec(
                    name=entry.name,
                    directory=where,
                    script_file=Path(entry.script_file),
                    entry_point=entry.entry_point,
                    bindings=tuple(bindings),
                    disabled=entry.properties.get("IsDisabled", "").lower() == "true",
                    properties=MappingProxyType(dict(entry.properties)),
                    reported_id=entry.function_id,
                    retry=checked_rpc(entry.retry_options, partial(AppError, where)),
                )
            )
        except AppError as exc:
            exc.function = entry.name
            errors.append(exc)
    return functions, errors


# ---------------------------------------------------------------------------------------------


def _read_function(
    root: Path, directory: Path, config: Path, extensions: Sequence[str]
) -> FunctionSpec:
    name = directory.name
    if not _FUNCTION_NAME.match(name) or name.lower() == "host":
        raise AppError(config, f"'{name}' is not a valid function name.", name)
    document = _read_json(config, missing="")
    if not isinstance(document, dict):
        raise AppError(config, "the top level must be a JSON object", name)
    # The host reads "bindings", "scriptFile", "entryPoint" and "retry" spelled exactly so, and
    # "configurationSource" in any case (HostFunctionMetadataProvider.ParseFunctionMetadata);
    # it never reads "disabled" (only the AzureWebJobs.<name>.Disabled setting disables).
    bindings = document.get("bindings")
    if bindings is None or bindings == []:
        raise AppError(config, "At least one binding must be declared.", name)
    if not isinstance(bindings, list):
        raise AppError(config, "'bindings' must be an array of binding objects", name)
    _checked(config, bindings, name)
    source = _get(document, "configurationSource")
    is_direct = False
    if source is not None:
        if str(source).lower() == "attributes":
            is_direct = True
        elif str(source).lower() != "config":
            raise AppError(
                config,
                f"Illegal value '{source}' for 'configurationSource' property in {name}'.",
                name,
            )
    script = _script_file(root, directory, config, document.get("scriptFile"), name)
    if extensions and script.suffix.lower() not in extensions:
        raise AppError(
            config,
            f"its script {script.name} has an extension this worker does not list in"
            f" 'extensions' ({', '.join(extensions)}): the host gives it to another language",
            name,
        )
    entry_point = document.get("entryPoint")
    if entry_point is not None and not isinstance(entry_point, str):
        raise AppError(config, "'entryPoint' must be a string", name)
    return FunctionSpec(
        name=name,
        directory=directory,
        script_file=script,
        entry_point=entry_point or "",
        bindings=tuple(bindings),
        is_direct=is_direct,
        # "retry" exactly: the host reads JObject.Property("retry")
        retry=checked(document.get("retry"), lambda e: AppError(config, e, name)),
    )


def _script_file(root: Path, directory: Path, config: Path, script: Any, name: str) -> Path:
    if script is not None and not isinstance(script, str):
        raise AppError(config, "'scriptFile' must be a string", name)
    if script:
        path = Path(os.path.normpath(directory / script))
        if not _inside(path, root):
            raise AppError(
                config,
                f"scriptFile {script!r} points outside the function app directory {root}",
                name,
            )
        if not os.path.isfile(path):
            raise AppError(
                config,
                "Invalid script file name configuration. The 'scriptFile' property is set to a"
                f" file that does not exist ({path}).",
                name,
            )
        return _resolved_inside(path, root, config, name)
    try:
        files = sorted(
            p for p in directory.iterdir() if p.is_file() and p.name.lower() != FUNCTION_JSON
        )
    except OSError as exc:
        raise AppError(config, f"cannot list the function's folder: {exc}", name) from None
    if len(files) == 1:
        return _resolved_inside(files[0], root, config, name)
    for candidate in files:
        if candidate.stem.lower() == "run" or candidate.name.lower() in _PRIMARY_NAMES:
            return _resolved_inside(candidate, root, config, name)
    raise AppError(config, _UNDETERMINED, name)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _resolved_inside(path: Path, root: Path, config: Path, name: str) -> Path:
    """`path`, if following its symbolic links (or its folder's) stays inside the app."""
    real = path.resolve()
    if not _inside(real, root.resolve()):
        raise AppError(
            config,
            f"the script {path} is a symbolic link (or in a linked folder) to {real}, outside"
            f" the function app directory {root}",
            name,
        )
    return path


def _checked(where: Path, bindings: Sequence[Any], function: str | None = None) -> None:
    """The host's checks on the bindings (`_validation.check_bindings`) as an `AppError`."""
    try:
        check_bindings(bindings)
    except BindingError as exc:
        raise AppError(where, str(exc), function) from None


def _get(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for name, value in obj.items():
        if isinstance(name, str) and name.lower() == lowered:
            return value
    return None


def _read_json(path: Path, missing: str) -> Any:
    """The file as the host reads it (`_jsonfile`: BOMs, lenient JSON, depth 64)."""
    return read_json_object(path, error=AppError, missing=missing or "file not found")
