"""Which HTTP functions the host serves, at which routes, in which order.

Two steps, as in the host (Azure/azure-functions-host):

1. Each HTTP-triggered function is checked, in the order of the functions' names ignoring case
   (``FunctionMetadataManager`` sorts them; ``ScriptHost.GetFunctionDescriptorsAsync`` then
   runs ``ValidateFunction``, src/WebJobs.Script/Host/ScriptHost.cs). ``ValidateHttpFunction``:
   a missing, empty or blank ``route`` means the function's name; a route that, without the
   ``/`` around it, starts with ``admin`` or ``runtime`` in any case (``administrator`` too) is
   refused. ``HttpRoutesConflict``: a route equal to an earlier function's, compared as text
   (``/`` around it trimmed, any case: ``products/{id}`` and ``products/{name}`` differ), whose
   ``methods`` overlap, compared exactly (``GET`` and ``get`` differ; no ``methods`` or an
   empty list means all of them). Each failure is that function's error; the others load.
2. The routes are mapped (``WebScriptHostHttpRoutesManager.InitializeHttpFunctionRoutes`` and
   ``WebJobsRouteBuilder.BuildRouteTemplate`` in Azure/azure-webjobs-sdk-extensions): the
   template is host.json's ``routePrefix`` as written, a ``/``, and the route, so
   ``"route": "/hello"`` makes ``api//hello``. A template ASP.NET rejects (`_routes`) fails
   the host's start, not one function: the host then stays in its ``Error`` state and answers
   every function request 503 until the app changes. The emulator does not start instead, with
   the host's message and the file to fix: nothing of the app would be served either way.

Requests go to the first route that matches, in that same order (`_routes.Router`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ._app import FUNCTION_JSON, AppError, FunctionSpec, HostSettings
from ._dispatch import HttpFunction
from ._dotnet import fold
from ._routes import Route, RouteEntry, RouteError, Router
from ._validation import BindingError, http_methods, http_route

__all__ = ["HttpRoutes", "http_routes"]

_BUILT_IN: Final = "The specified route conflicts with one or more built in routes."


@dataclass(frozen=True)
class HttpRoutes:
    """The HTTP functions the host serves and its router.

    Attributes:
        router: the routes of the enabled functions, in the host's order.
        functions: every HTTP function that loaded (disabled ones included), in the host's
            order.
        errors: (function, the host's reason) for each HTTP function it refuses.
    """

    router: Router[HttpFunction]
    functions: list[HttpFunction]
    errors: list[tuple[FunctionSpec, str]]


@dataclass(frozen=True)
class _Candidate:
    spec: FunctionSpec
    route: str
    methods: list[str | None] | None


def http_routes(functions: Sequence[FunctionSpec], settings: HostSettings) -> HttpRoutes:
    """Check and map the HTTP functions among `functions` (module docstring).

    Raises:
        AppError: a route template ASP.NET rejects (the host does not start); it names the
            function's ``function.json``.
    """
    accepted: list[_Candidate] = []
    errors: list[tuple[FunctionSpec, str]] = []
    for spec in sorted(functions, key=lambda f: fold(f.name)):
        if fold(spec.trigger_type) != "HTTPTRIGGER":
            continue
        try:
            candidate = _candidate(spec, accepted)
        except (BindingError, ValueError) as exc:
            errors.append((spec, str(exc)))
            continue
        accepted.append(candidate)
    prefix = settings.written_route_prefix
    skipped = len([p for p in settings.route_prefix.split("/") if p])
    found: list[HttpFunction] = []
    entries: list[RouteEntry[HttpFunction]] = []
    for candidate in accepted:
        spec = candidate.spec
        template = f"{prefix}/{candidate.route}" if prefix else candidate.route
        try:
            parsed = Route.parse(template)
        except RouteError as exc:
            hint = (
                f" (the route prefix {prefix!r} and the route are joined with '/', so a route"
                " must not start with '/')"
                if prefix and candidate.route.startswith("/")
                else ""
            )
            raise AppError(
                spec.directory / FUNCTION_JSON,
                f"the host does not start with this route: An error occurred while creating the"
                f" route with name '{spec.name}' and template '{template}'. {exc}{hint}",
                spec.name,
            ) from None
        route = parsed.without_prefix(skipped, candidate.route)
        methods = (
            None
            if candidate.methods is None
            else frozenset(fold(m) for m in candidate.methods if m is not None)
        )
        item = HttpFunction(spec, route, methods, spec.trigger)
        found.append(item)
        if not spec.disabled:
            entries.append(RouteEntry(route, methods, item))
    return HttpRoutes(Router(entries), found, errors)


def _candidate(spec: FunctionSpec, accepted: Sequence[_Candidate]) -> _Candidate:
    """ValidateHttpFunction and the conflict check against the functions accepted so far.

    Raises:
        ValueError: the host's reason to refuse the function.
    """
    trigger = spec.trigger
    route = http_route(trigger)
    methods = http_methods(trigger)
    if route is None or not route.strip():
        route = spec.name
    trimmed = route.strip("/").lower()
    if trimmed.startswith(("admin", "runtime")):
        raise ValueError(_BUILT_IN)
    for other in accepted:
        if fold(other.route.strip("/")) != fold(route.strip("/")):
            continue
        if not methods or not other.methods or set(methods) & set(other.methods):
            raise ValueError(
                f"The route specified conflicts with the route defined by function"
                f" '{other.spec.name}'."
            )
    return _Candidate(spec, route, methods)
