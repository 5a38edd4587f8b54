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

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._types import FUNCTION_ID_NAMESPACE
from workerkit.testing import HostConnection, binding

from ._config import parse_timespan

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
_BINDING_NAME: Final = re.compile(r"^([a-zA-Z][a-zA-Z0-9]{0,127}|\$return)$")
_DIRECTIONS: Final = {"in": "in", "out": "out", "inout": "inout"}
_DATA_TYPES: Final = {"undefined", "string", "binary", "stream"}
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
        bindings: the ``bindings`` objects, as written (read-only mappings).
        disabled: ``"disabled": true`` in ``function.json`` (or the app setting
            ``AzureWebJobs.<name>.Disabled``, applied by the emulator).
        properties: metadata properties echoed on load (a worker-indexed function's own).
        reported_id: the function id a worker reported (worker indexing); "" otherwise.
        is_direct: ``"configurationSource": "attributes"``.
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

    @property
    def function_id(self) -> str:
        """The id loads and invocations use: the worker's own, else uuid5 of the lower-cased name.

        The same namespace as workerkit's worker indexing, so both give a function one id.
        """
        return self.reported_id or str(uuid.uuid5(FUNCTION_ID_NAMESPACE, self.name.lower()))

    @property
    def trigger(self) -> Mapping[str, Any]:
        """The trigger binding (the one ``in`` binding whose type ends with ``Trigger``)."""
        for item in self.bindings:
            if _is_trigger(item):
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
                str(b["name"]): binding(
                    str(b["type"]),
                    _direction(b),
                    str(_get(b, "dataType") or "undefined").lower(),
                )
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
        route_prefix: ``extensions.http.routePrefix`` (default ``api``; "" for none).
        function_timeout: ``functionTimeout`` in seconds; None when unbounded (``-1``).
        functions: the ``functions`` allow-list, when given.
        max_concurrent_requests: ``extensions.http.maxConcurrentRequests``: HTTP function
            requests run at once, the rest wait; None (the host's default, ``-1``): no limit.
        max_outstanding_requests: ``extensions.http.maxOutstandingRequests``: requests
            running or waiting, beyond which they are answered 429; None (``-1``): no limit.
    """

    path: Path
    route_prefix: str = "api"
    function_timeout: float | None = DEFAULT_FUNCTION_TIMEOUT
    functions: tuple[str, ...] | None = None
    max_concurrent_requests: int | None = None
    max_outstanding_requests: int | None = None


@dataclass(frozen=True)
class LocalSettings:
    """``local.settings.json``: ``Values`` become app settings (the worker's environment)."""

    path: Path
    values: Mapping[str, str] = field(default_factory=dict)
    local_http_port: int | None = None


def read_host_json(app_dir: Path) -> HostSettings:
    """Read ``<app_dir>/host.json``.

    Raises:
        AppError: the file is missing, is not JSON, lacks ``"version": "2.0"``, or has a
            ``routePrefix`` or ``functionTimeout`` the host would reject.
    """
    path = Path(app_dir) / "host.json"
    document = _read_json(path, missing="no host.json: this is not a function app directory")
    if not isinstance(document, dict):
        raise AppError(path, "the top level must be a JSON object")
    version = _get(document, "version")
    if version is None:
        raise AppError(path, "the host.json file is missing the required 'version' property")
    if str(version) != "2.0":
        raise AppError(path, f"{version!r} is an invalid value for host.json 'version' property")
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
        function_timeout=timeout,
        functions=tuple(functions) if functions is not None else None,
        max_concurrent_requests=throttles[0],
        max_outstanding_requests=throttles[1],
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
    """Read ``<app_dir>/local.settings.json`` (absent: no settings).

    ``Values`` must be an object; numbers and booleans become strings as Core Tools reads
    them; nulls are skipped. ``Host.LocalHttpPort`` is the default port.

    Raises:
        AppError: not JSON, encrypted, or ``Values`` is not an object of scalars.
    """
    path = Path(app_dir) / "local.settings.json"
    if not path.exists():
        return LocalSettings(path)
    document = _read_json(path, missing="")
    if not isinstance(document, dict):
        raise AppError(path, "the top level must be a JSON object")
    if _get(document, "IsEncrypted") is True:
        raise AppError(path, "the settings are encrypted; decrypt them (func settings decrypt)")
    values: dict[str, str] = {}
    raw = _get(document, "Values")
    if raw is not None:
        if not isinstance(raw, dict):
            raise AppError(path, "'Values' must be an object of strings")
        for key, value in raw.items():
            if value is None:
                continue
            if isinstance(value, dict | list):
                raise AppError(
                    path, f"Values.{key} must be a string, not a JSON {type(value).__name__}"
                )
            if isinstance(value, bool):
                value = "True" if value else "False"
            values[key] = str(value)
    port = None
    host = _get(document, "Host")
    if isinstance(host, dict):
        raw_port = _get(host, "LocalHttpPort")
        if raw_port is not None:
            if (
                isinstance(raw_port, bool)
                or not isinstance(raw_port, int)
                or not 0 <= raw_port <= 65535
            ):
                raise AppError(path, f"Host.LocalHttpPort must be a port number, not {raw_port!r}")
            port = raw_port
    return LocalSettings(path, MappingProxyType(values), port)


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
        The valid functions (sorted by name) and one `AppError` per rejected function.
        ``scriptFile`` must name an existing file inside the app directory.
    """
    root = Path(os.path.abspath(app_dir))
    functions: list[FunctionSpec] = []
    errors: list[AppError] = []
    try:
        directories = sorted(
            (p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name.lower()
        )
    except OSError as exc:
        return [], [AppError(root, f"cannot list the app directory: {exc}")]
    for directory in directories:
        config = directory / FUNCTION_JSON
        if not config.is_file():
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
            for raw in entry.raw_bindings:
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise AppError(where, f"raw binding {raw!r} is not JSON: {exc}") from None
                bindings.append(value)
            _check_bindings(where, bindings)
            if not entry.script_file:
                raise AppError(where, _UNDETERMINED)
            functions.append(
                FunctionSpec(
                    name=entry.name,
                    directory=where,
                    script_file=Path(entry.script_file),
                    entry_point=entry.entry_point,
                    bindings=tuple(MappingProxyType(b) for b in bindings),
                    disabled=entry.properties.get("IsDisabled", "").lower() == "true",
                    properties=MappingProxyType(dict(entry.properties)),
                    reported_id=entry.function_id,
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
    bindings = _get(document, "bindings")
    if bindings is None or bindings == []:
        raise AppError(config, "At least one binding must be declared.", name)
    if not isinstance(bindings, list):
        raise AppError(config, "'bindings' must be an array of binding objects", name)
    try:
        _check_bindings(config, bindings)
    except AppError as exc:
        exc.function = name
        raise
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
    script = _script_file(root, directory, config, _get(document, "scriptFile"), name)
    if extensions and script.suffix.lower() not in extensions:
        raise AppError(
            config,
            f"its script {script.name} has an extension this worker does not list in"
            f" 'extensions' ({', '.join(extensions)}): the host gives it to another language",
            name,
        )
    entry_point = _get(document, "entryPoint")
    if entry_point is not None and not isinstance(entry_point, str):
        raise AppError(config, "'entryPoint' must be a string", name)
    disabled = _get(document, "disabled")
    if isinstance(disabled, str):
        disabled = disabled.strip().lower() in ("true", "1")
    elif disabled is not None and not isinstance(disabled, bool):
        raise AppError(config, "'disabled' must be true or false", name)
    return FunctionSpec(
        name=name,
        directory=directory,
        script_file=script,
        entry_point=entry_point or "",
        bindings=tuple(MappingProxyType(dict(b)) for b in bindings),
        disabled=bool(disabled),
        is_direct=is_direct,
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
        if not path.is_file():
            raise AppError(
                config,
                "Invalid script file name configuration. The 'scriptFile' property is set to a"
                f" file that does not exist ({path}).",
                name,
            )
        return _resolved_inside(path, root, config, name)
    files = sorted(
        p for p in directory.iterdir() if p.is_file() and p.name.lower() != FUNCTION_JSON
    )
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


def _check_bindings(where: Path, bindings: Sequence[Any]) -> None:
    """The host's binding checks (Utility.ValidateBinding, ValidateFunction); first problem wins."""
    if not bindings:
        raise AppError(where, "At least one binding must be declared.")
    names: set[str] = set()
    triggers = 0
    for item in bindings:
        if not isinstance(item, dict):
            raise AppError(where, f"a binding must be a JSON object, not {json.dumps(item)}")
        name = _get(item, "name")
        if not isinstance(name, str) or not _BINDING_NAME.match(name):
            raise AppError(
                where,
                f"The binding name {name} is invalid. Please assign a valid name to the binding.",
            )
        direction = _get(item, "direction")
        if direction is not None and (
            not isinstance(direction, str) or direction.lower() not in _DIRECTIONS
        ):
            raise AppError(
                where,
                f"binding {name!r}: direction must be 'in', 'out' or 'inout', not {direction!r}",
            )
        if name == "$return" and _direction(item) != "out":
            raise AppError(where, "$return bindings must specify a direction of 'out'.")
        kind = _get(item, "type")
        if not isinstance(kind, str) or not kind:
            raise AppError(where, f"Binding '{name}' is invalid. Bindings must specify a Type.")
        data_type = _get(item, "dataType")
        if data_type is not None and (
            not isinstance(data_type, str) or data_type.lower() not in _DATA_TYPES
        ):
            raise AppError(
                where,
                f"binding {name!r}: dataType must be string, binary or stream, not {data_type!r}",
            )
        if name.lower() in names:
            raise AppError(
                where,
                f"Multiple bindings with name '{name}' discovered. Binding names must be unique.",
            )
        names.add(name.lower())
        if _is_trigger(item):
            triggers += 1
    if triggers > 1:
        raise AppError(
            where,
            "Multiple trigger bindings defined. A function can only have a single trigger binding.",
        )
    if triggers == 0:
        raise AppError(
            where, "No trigger binding specified. A function must have a trigger input binding."
        )


def _direction(item: Mapping[str, Any]) -> str:
    value = _get(item, "direction")
    return _DIRECTIONS.get(str(value).lower(), "in") if value is not None else "in"


def _is_trigger(item: Mapping[str, Any]) -> bool:
    kind = _get(item, "type")
    return isinstance(kind, str) and kind.lower().endswith("trigger") and _direction(item) == "in"


def _get(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for name, value in obj.items():
        if isinstance(name, str) and name.lower() == lowered:
            return value
    return None


def _read_json(path: Path, missing: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AppError(path, missing or "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AppError(path, f"cannot read it: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AppError(path, f"not valid JSON: {exc}") from None
