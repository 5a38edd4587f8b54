"""The host's own endpoints, answered as the host answers them: ``/admin/...`` and the root page.

==============================  ================================================================
request                         answer
==============================  ================================================================
``GET``/``POST``                200, no body, ``Cache-Control: no-store,no-cache`` and ``Pragma:
``/admin/host/ping``            no-cache`` (``HostController.Ping`` and its ``ResponseCache``)
``GET /admin/host/status``      200, JSON ``{"id", "state", "version", "versionDetails",
                                "processUptime", "functionAppContentEditingState"}``, with
                                "platformVersion", "instanceId" and "computerName" when
                                their App Service settings are set
                                (``HostController.GetHostStatus``, Models/HostStatus.cs)
``/admin/warmup`` (any method)  the first request runs the function named ``Warmup`` (any case)
                                with a ``warmupTrigger``: 200, no body, or an empty 500 when it
                                fails; later requests, or with no such function, 200 and nothing
                                run (WebScriptHostHttpRoutesManager.cs,
                                Routing/ScriptRouteHandler.cs: once per host process)
``POST /admin/functions/<n>``   202 (the invocation started; its outcome is logged), 400 (bad
                                body or input), 404 (no such function) (FunctionsController)
any other ``/admin`` request    404, no body (no route matches; a method the route does not
                                take is no match either, the host routing MVC the legacy way)
``/`` (any method, when no      200, ``text/html``, a page saying the app is up; 204 when the
function route takes it)        setting ``AzureWebJobsDisableHomepage`` is ``true``
                                (Middleware/HomepageMiddleware.cs)
==============================  ================================================================

Paths are in Azure/azure-functions-host, src/WebJobs.Script.WebHost. Core Tools lets every
request through as an admin, so no key is asked for. The status's ``id`` is the host's local
host id (``ScriptHostIdProvider.GetDefaultHostId``: the machine name's letters and digits, a
hash of the app's path, at most 32 characters, lower case), or the
``AzureFunctionsWebHost__hostid`` setting; ``processUptime`` counts from when the emulator
started (the host: its process). The home page is workerkit's own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aiohttp import web

from ._config import HOST_VERSION

if TYPE_CHECKING:
    from ._app import FunctionSpec
    from ._emulator import Emulator

__all__ = ["answer_admin", "home_page", "host_id", "host_status", "warmup_function"]

_STARTED: Final = time.monotonic()
#: ScriptConstants.MaximumHostIdLength.
_MAX_HOST_ID: Final = 32
_NO_STORE: Final = {"Cache-Control": "no-store,no-cache", "Pragma": "no-cache"}
#: HostStatus members read from App Service settings (absent locally), and those settings.
_PLATFORM_MEMBERS: Final = (
    ("platformVersion", "WEBSITE_PLATFORM_VERSION"),
    ("instanceId", "WEBSITE_INSTANCE_ID"),
    ("computerName", "COMPUTERNAME"),
)
_HOME_PAGE: Final = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Your function app is up and running</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>Your function app is up and running</h1>
<p>Served by <code>workerkit host</code>, a local stand-in for the Azure Functions host.</p>
</body>
</html>
"""

#: Reads a request's body: its bytes (None: none), or the response that refuses it.
BodyReader = Callable[[web.Request], Awaitable["bytes | web.Response | None"]]


async def answer_admin(
    emulator: Emulator, request: web.Request, segments: list[str], read_body: BodyReader
) -> web.StreamResponse:
    """The answer to ``/admin/<segments>`` (module table)."""
    lowered = [s.lower() for s in segments]
    if lowered and lowered[-1] == "":  # a trailing slash matches the same route
        lowered.pop()
    if len(segments) == 2 and lowered[0] == "functions" and segments[1]:
        if request.method != "POST":
            return web.Response(status=405, text="use POST\n", headers={"Allow": "POST"})
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        status, text = emulator.admin_invoke(segments[1], body or b"")
        return web.Response(status=status, text=text) if text else web.Response(status=status)
    if lowered == ["host", "ping"] and request.method in ("GET", "POST"):
        return web.Response(status=200, headers=_NO_STORE)
    if lowered == ["host", "status"] and request.method == "GET":
        return web.json_response(host_status(emulator))
    if lowered == ["warmup"]:
        status = await emulator.dispatcher.warmup(warmup_function(emulator.functions))
        return web.Response(status=status)
    return web.Response(status=404)


def host_status(emulator: Emulator) -> dict[str, object]:
    """``/admin/host/status``'s object, its members in the host's order; those from App
    Service settings only when set (HostStatus ignores null members when it is serialized)."""
    environment = emulator.dispatcher.environment
    status: dict[str, object] = {
        "id": host_id(emulator.app_dir, environment),
        "state": "Stopping" if emulator.stopping else "Running",
        "version": f"{HOST_VERSION}.0",
        "versionDetails": f"{HOST_VERSION} (workerkit host)",
    }
    for member, setting in _PLATFORM_MEMBERS:
        if environment.get(setting):
            status[member] = environment[setting]
    status["processUptime"] = int((time.monotonic() - _STARTED) * 1000)
    status["functionAppContentEditingState"] = "Unknown"
    return status


def host_id(app_dir: Path, environment: Mapping[str, str]) -> str:
    """The host id of an app at `app_dir` run locally (module docstring)."""
    configured = _setting(environment, "AzureFunctionsWebHost__hostid")
    if configured is not None:
        return configured
    machine = socket.gethostname().split(".")[0]  # .NET's Environment.MachineName
    letters = "".join(c for c in machine if c.isalpha() or c.isdecimal())
    text = f"{letters}-{abs(_stable_hash(str(app_dir)))}"[:_MAX_HOST_ID]
    return text.lower().rstrip("-")


def _stable_hash(text: str) -> int:
    """``Utility.GetStableHash``: 23, times 31 plus each UTF-16 code unit, as a 32-bit int."""
    value = 23
    data = text.encode("utf-16-le")
    for index in range(0, len(data), 2):
        value = (value * 31 + int.from_bytes(data[index : index + 2], "little")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _setting(environment: Mapping[str, str], name: str) -> str | None:
    """A configuration setting: the ``__`` or ``:`` spelling, any case."""
    wanted = name.replace("__", ":").lower()
    for key, value in environment.items():
        if key.replace("__", ":").lower() == wanted:
            return value
    return None


def warmup_function(functions: list[FunctionSpec]) -> FunctionSpec | None:
    """The app's warmup function: named ``Warmup`` with a ``warmupTrigger``, both in any case
    (``IsWarmupFunction`` in src/WebJobs.Script/Host/ScriptJobHostExtensions.cs)."""
    for spec in functions:
        if spec.name.lower() == "warmup" and spec.trigger_type.lower() == "warmuptrigger":
            return spec
    return None


def home_page(environment: Mapping[str, str]) -> web.Response:
    """The root page: 204 when ``AzureWebJobsDisableHomepage`` is ``true`` (any case)."""
    if (_setting(environment, "AzureWebJobsDisableHomepage") or "").lower() == "true":
        return web.Response(status=204)
    return web.Response(status=200, body=_HOME_PAGE.encode(), content_type="text/html")
