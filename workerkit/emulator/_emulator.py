"""`Emulator`: a function app served by a language worker, the way ``func start`` serves it.

Start-up, in order: pre-read every ``function.json`` and read ``host.json`` (a broken one
stops start-up, as it stops ``func start``) and ``local.settings.json``; build the
environment ``func start`` gives the host (`_launch.core_tools_environment`: ``Values``
join it unless already set there); find the worker directory
(``--worker`` or the ``languageWorkers:<runtime>:workerDirectory`` setting) and read its
``worker.config.json``; find the functions (``function.json``, unless the worker indexes
them); start the worker (`Supervisor`); check HTTP routes and timer schedules; open the HTTP
front door; print the function list.

Then: HTTP requests become invocations (`_http.FrontDoor`), timers fire, and
``POST /admin/functions/<name>`` runs any other trigger (all three through
`_dispatch.Dispatcher`). `run` returns when stopping was requested (0) or the worker failed
for good (1); `stop` drains invocations, terminates the worker and closes both servers.

aiohttp is imported only when the front door opens (`start`), so importing this module does
not need it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._app import (
    AppError,
    FunctionSpec,
    HostSettings,
    discover_functions,
    read_host_json,
    read_local_settings,
)
from ._config import WorkerConfigError, read_worker_config
from ._console import Console
from ._cron import ScheduleError, timer_trigger
from ._dispatch import Dispatcher, HttpFunction
from ._httproutes import http_routes
from ._jsonfile import check_function_json_files
from ._launch import CoreToolsError, WorkerConfig, core_tools_environment
from ._logfilter import LogFilter
from ._process import Supervisor, SupervisorError
from ._routes import Router
from ._rpchttp import HttpOutput, IncomingRequest

if TYPE_CHECKING:
    from ._http import FrontDoor
    from ._proxy import ProxiedRequest

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_PORT",
    "Emulator",
    "EmulatorError",
    "EmulatorOptions",
    "exposure_warning",
]

DEFAULT_PORT: Final = 7071
#: The host's (Kestrel's) request body limit: 100 MiB.
DEFAULT_MAX_BODY_SIZE: Final = 100 * 1024 * 1024
#: Kestrel's RequestHeadersTimeout.
DEFAULT_HEADER_TIMEOUT: Final = 30.0
#: Open connections at most (Kestrel sets no limit by default; see `_http`).
DEFAULT_MAX_CONNECTIONS: Final = 1000
DEFAULT_HOST: Final = "127.0.0.1"


class EmulatorError(Exception):
    """The emulator cannot start: the message names the file and the reason."""


@dataclass(frozen=True)
class EmulatorOptions:
    """How to run the emulator (``workerkit host``'s options).

    Attributes:
        app_dir: the function app root (``host.json``).
        worker_dir: the directory with ``worker.config.json``; None: the
            ``languageWorkers:<FUNCTIONS_WORKER_RUNTIME>:workerDirectory`` setting.
        host: the address the HTTP front door listens on (loopback unless told otherwise).
        port: its port; 0 for a free one; None: ``local.settings.json``
            ``Host.LocalHttpPort``, else 7071.
        max_body_size: bytes; a larger request body is answered 413.
        function_timeout: seconds, overriding ``host.json`` ``functionTimeout``.
        environ: the environment to start from (default: this process's).
        header_timeout: seconds a client has to send a request's line and headers (also
            how long a kept-alive connection may idle); then the connection is closed.
        min_data_rate: bytes per second a request body must arrive at, and a response be
            read at, once `data_rate_grace` seconds have passed (Kestrel's defaults: 240
            bytes/s after 5 s). A slower body is answered 408; a slower reader is cut off.
        data_rate_grace: seconds before `min_data_rate` applies.
        max_connections: TCP connections open at once; past it a new connection is closed
            without a response (Kestrel's behaviour past MaxConcurrentConnections) and the
            console says so. Lowered when the open-file limit (``ulimit -n``) is smaller.
    """

    app_dir: Path
    worker_dir: Path | None = None
    host: str = DEFAULT_HOST
    port: int | None = None
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    function_timeout: float | None = None
    environ: Mapping[str, str] | None = None
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    min_data_rate: float = 240.0
    data_rate_grace: float = 5.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")


class Emulator:
    """A function app served by a worker subprocess (module docstring).

    Use ``async with Emulator(options) as emulator:`` (start and stop), or `start`, `run`.
    """

    def __init__(self, options: EmulatorOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.app_dir = Path(os.path.abspath(options.app_dir))
        self.functions: list[FunctionSpec] = []
        self.errors: list[AppError] = []
        self.config: WorkerConfig | None = None
        self.host_settings: HostSettings | None = None
        self.router: Router[HttpFunction] = Router([])
        self.url = ""
        self.stopping = False
        self._supervisor: Supervisor | None = None
        self._dispatcher: Dispatcher | None = None
        self._front_door: FrontDoor | None = None
        self._stop_requested = asyncio.Event()
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Read the app and the worker config, start the worker, open the front door.

        Raises:
            EmulatorError: a broken ``host.json``/``local.settings.json``/``worker.config.json``,
                no worker directory, a worker that cannot be started, or a port in use.
        """
        try:
            from . import _http
        except ImportError as exc:  # aiohttp missing
            raise EmulatorError(
                f"workerkit host needs aiohttp ({exc}): pip install 'workerkit[host]'"
            ) from None
        options = self.options
        port = options.port
        try:  # as func start does: every function.json pre-read, then host.json, the settings
            check_function_json_files(self.app_dir, error=AppError)
            self.host_settings = read_host_json(self.app_dir)
            local = read_local_settings(self.app_dir)
            for warning in local.warnings:
                self.console.warning(warning)
            if port is None:
                port = local.local_http_port if local.local_http_port is not None else DEFAULT_PORT
            environment = core_tools_environment(
                self.app_dir,
                port,
                local.values,
                environ=options.environ,
                connection_strings=local.connection_strings,
                warn=self.console.warning,
            )
        except (AppError, CoreToolsError) as exc:
            raise EmulatorError(str(exc)) from None
        self._filter_logs(local.values)
        config = self._read_config(environment)
        self.config = config
        for warning in config.warnings:
            self.console.warning(f"{config.path}: {warning}")
        if config.process_count > 1:
            self.console.info(
                f"{config.process_count} worker processes (processCount or"
                " FUNCTIONS_WORKER_PROCESS_COUNT): invocations go to them in turn."
            )
        timeout = (
            options.function_timeout
            if options.function_timeout is not None
            else self.host_settings.function_timeout
        )
        functions: list[FunctionSpec] = []
        if not config.worker_indexing:
            functions, self.errors = discover_functions(self.app_dir, config.extensions)
            if not config.extensions and functions:
                self.errors += [
                    AppError(
                        f.directory / "function.json",
                        "worker.config.json lists no 'extensions', so the host gives this worker"
                        " no function.json functions",
                        f.name,
                    )
                    for f in functions
                ]
                functions = []
            functions = self._prepare(functions, environment)
        supervisor = Supervisor(
            config=config,
            app_dir=self.app_dir,
            environment=environment,
            functions=functions,
            function_timeout=timeout,
            console=self.console,
            prepare=lambda specs: self._prepare(specs, environment),
        )
        self._supervisor = supervisor
        self._dispatcher = Dispatcher(supervisor, self.console, self.host_settings.retry)
        try:
            try:
                await supervisor.start()
            except SupervisorError as exc:
                raise EmulatorError(f"{config.path}: {exc}") from None
            self.functions = supervisor.functions
            self.errors += supervisor.function_errors
            http_functions = self._routes()
            door = _http.FrontDoor(
                self,
                max_body_size=options.max_body_size,
                header_timeout=options.header_timeout,
                min_data_rate=options.min_data_rate,
                data_rate_grace=options.data_rate_grace,
                max_connections=options.max_connections,
            )
            try:
                bound = await door.start(options.host, port)
            except OSError as exc:
                raise EmulatorError(
                    f"cannot listen on {options.host}:{port}: {exc.strerror or exc}"
                    " (use --port 0 for a free port)"
                ) from None
        except BaseException:  # an error or a cancelled start: leave nothing running
            self._stopped = True
            await supervisor.stop()
            raise
        self._front_door = door
        shown_host = f"[{options.host}]" if ":" in options.host else options.host
        self.url = f"http://{shown_host}:{bound}"
        timers = self._start_timers()
        self._dispatcher.started(self.functions)  # retry warnings
        self._banner(http_functions, timers)
        exposed = exposure_warning(options.host, door.addresses)
        if exposed is not None:
            self.console.warning(exposed)

    async def run(self) -> int:
        """Serve until `request_stop` (returns 0) or the worker fails for good (returns 1).

        Stops everything before returning.
        """
        supervisor = self._supervisor
        assert supervisor is not None, "start() first"
        failed = asyncio.create_task(supervisor.wait_failed())
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({failed, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        code = 0
        if failed.done():
            self.console.error(f"Stopping: {failed.result()}")
            code = 1
        else:
            failed.cancel()
        await self.stop()
        return code

    def request_stop(self) -> None:
        """Ask `run` to stop gracefully (Ctrl-C, SIGTERM)."""
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        """Return once `request_stop` or `request_kill` was called."""
        await self._stop_requested.wait()

    def request_kill(self) -> None:
        """Kill the worker at once (a second Ctrl-C); `run` then stops."""
        if self._supervisor is not None:
            self._supervisor.kill()
        self._stop_requested.set()

    async def stop(self) -> None:
        """Stop taking work, drain invocations (``processShutdownTimeout``), terminate the worker.

        New HTTP requests are answered 503 meanwhile. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        self.stopping = True
        if self._dispatcher is not None:
            self._dispatcher.stop_timers()
        supervisor = self._supervisor
        try:
            if supervisor is not None:
                try:
                    in_flight = supervisor.in_flight()
                    if in_flight and self.config is not None:
                        self.console.info(
                            f"Waiting up to {self.config.shutdown_timeout:g} s for {in_flight}"
                            " invocation(s) to finish."
                        )
                        await supervisor.drain(self.config.shutdown_timeout)
                finally:
                    await supervisor.stop()  # kills the worker, whatever happened
            if self._dispatcher is not None:
                await self._dispatcher.wait(5)
        finally:
            if self._front_door is not None:
                await self._front_door.stop()
        self.console.info("Host stopped.")

    def kill_workers(self) -> None:
        """Kill every worker process still running, at once (never raises): the last line of
        defence when stopping went wrong."""
        if self._supervisor is not None:
            self._supervisor.kill()

    # -- configuration -----------------------------------------------------------------------
    def _filter_logs(self, values: Mapping[str, str | None]) -> None:
        """Show the log lines ``func start`` shows (`_logfilter`): host.json
        ``logging.logLevel`` and its ``AzureFunctionsJobHost__logging__logLevel__*`` settings
        (environment first, then ``local.settings.json``), ``FUNCTIONS_USER_LOG_LEVEL``,
        ``--verbose``."""
        assert self.host_settings is not None
        environ = os.environ if self.options.environ is None else self.options.environ
        settings = {k: v for k, v in values.items() if v is not None}
        settings.update((k, v) for k, v in environ.items() if v)
        self.console.log_filter, warnings = LogFilter.build(
            log_levels=self.host_settings.log_levels,
            environ=environ,
            settings=settings,
            verbose=self.console.verbose,
        )
        for warning in warnings:
            self.console.warning(warning)

    def _read_config(self, environment: Mapping[str, str]) -> WorkerConfig:
        worker_dir = self.options.worker_dir
        if worker_dir is None:
            runtime = environment.get("FUNCTIONS_WORKER_RUNTIME", "")
            candidates = {
                key.replace("__", ":").lower(): value
                for key, value in environment.items()
                if key.replace("__", ":").lower().startswith("languageworkers:")
                and key.replace("__", ":").lower().endswith(":workerdirectory")
            }
            wanted = f"languageworkers:{runtime.lower()}:workerdirectory"
            if runtime and wanted in candidates:
                worker_dir = Path(candidates[wanted])
            elif not runtime and len(candidates) == 1:
                worker_dir = Path(next(iter(candidates.values())))
            else:
                raise EmulatorError(
                    "no worker: pass --worker DIR (the directory with worker.config.json), or set"
                    " languageWorkers__<language>__workerDirectory and FUNCTIONS_WORKER_RUNTIME"
                )
        try:
            return read_worker_config(worker_dir, environment)
        except WorkerConfigError as exc:
            raise EmulatorError(str(exc)) from None

    def _prepare(
        self, functions: list[FunctionSpec], settings: Mapping[str, str]
    ) -> list[FunctionSpec]:
        """Apply host.json ``functions`` and the ``AzureWebJobs.<name>.Disabled`` settings."""
        assert self.host_settings is not None
        allowed = self.host_settings.functions
        if allowed is not None:
            wanted = {name.lower() for name in allowed}
            functions = [f for f in functions if f.name.lower() in wanted]
        return _disabled_by_settings(functions, settings)

    def _routes(self) -> list[HttpFunction]:
        """The HTTP functions' checks and routes, as the host makes them (`_httproutes`); a
        route template the host cannot map stops start-up (the host would not start)."""
        assert self.host_settings is not None
        try:
            table = http_routes(self.functions, self.host_settings)
        except AppError as exc:
            raise EmulatorError(str(exc)) from None
        for spec, reason in table.errors:
            self._function_error(spec, reason)
        self.router = table.router
        return table.functions

    def _function_error(self, spec: FunctionSpec, reason: str) -> None:
        self.errors.append(AppError(spec.directory / "function.json", reason, spec.name))
        self.functions = [f for f in self.functions if f is not spec]

    def _banner(self, http_functions: list[HttpFunction], timers: dict[str, str]) -> None:
        assert self.host_settings is not None
        prefix = self.host_settings.route_prefix
        lines: list[tuple[str, str]] = []
        http_by_name = {h.spec.name: h for h in http_functions}
        for spec in self.functions:
            suffix = " (disabled)" if spec.disabled else ""
            http = http_by_name.get(spec.name)
            if http is not None:
                methods = f"[{','.join(sorted(http.methods))}] " if http.methods else ""
                path = "/".join(p for p in (prefix, http.route.template.strip().lstrip("~/")) if p)
                lines.append((spec.name, f"{methods}{self.url}/{path}{suffix}"))
            elif spec.name in timers:
                lines.append((spec.name, f"timerTrigger ({timers[spec.name]}){suffix}"))
            else:
                lines.append(
                    (
                        spec.name,
                        f"{spec.trigger_type}: POST {self.url}/admin/functions/{spec.name}"
                        f' with {{"input": "..."}}{suffix}',
                    )
                )
        if lines:
            self.console.functions(lines)
        else:
            self.console.warning("No functions found.")
        if self.errors:
            self.console.error(
                f"The following {len(self.errors)} functions are in error:\n"
                + "\n".join(f"{e.function or '?'}: {e}" for e in self.errors)
            )
        self.console.info(f"Host started: {self.url} (Ctrl+C to stop).")

    # -- invocations -------------------------------------------------------------------------
    @property
    def dispatcher(self) -> Dispatcher:
        """Runs the invocations (`start` first)."""
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher

    async def invoke_http(
        self,
        match_target: HttpFunction,
        request: IncomingRequest,
        proxy: ProxiedRequest | None = None,
    ) -> HttpOutput:
        """Run an HTTP-triggered function for `request`; the response to write (a failed,
        timed-out or undeliverable invocation is a 500 with a short text body). With `proxy`
        (the request itself) a worker that reported ``HttpUri`` gets it forwarded
        (`Dispatcher.invoke_http`)."""
        assert self._dispatcher is not None, "start() first"
        return await self._dispatcher.invoke_http(match_target, request, proxy)

    def admin_invoke(self, name: str, body: bytes) -> tuple[int, str]:
        """``POST /admin/functions/<name>``: start an invocation; (status, text) to answer.

        202 once the invocation is started (its outcome is logged), 400 for a body that is not
        ``{"input": "..."}`` or input the trigger cannot take, 404 for an unknown function.
        """
        spec = next((f for f in self.functions if f.name.lower() == name.lower()), None)
        if spec is None:
            return 404, f"no function named {name!r}\n"
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher.admin_invoke(spec, body)

    # -- timers ------------------------------------------------------------------------------
    def _start_timers(self) -> dict[str, str]:
        shown: dict[str, str] = {}
        environment = self._supervisor.environment if self._supervisor else {}
        for spec in list(self.functions):
            if spec.trigger_type.lower() != "timertrigger":
                continue
            try:  # as the host reads it: keys in any case, %settings% anywhere (`_cron`)
                schedule, run_on_startup = timer_trigger(spec.trigger, environment)
            except ScheduleError as exc:
                self._function_error(spec, str(exc))
                continue
            shown[spec.name] = str(schedule) + (", runOnStartup" if run_on_startup else "")
            assert self._dispatcher is not None
            self._dispatcher.start_timer(spec, schedule, run_on_startup, enabled=not spec.disabled)
        return shown


def exposure_warning(host: str, addresses: list[str]) -> str | None:
    """What to say when listening on `host` (bound to `addresses`) rather than 127.0.0.1."""
    if host == DEFAULT_HOST:
        return None
    shown = ", ".join(addresses)
    if addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses):
        return (
            f"Listening on {host} ({shown}) instead of the default {DEFAULT_HOST}: still"
            " loopback only, so only this machine can connect."
        )
    return (
        f"Listening on {host} ({shown}) instead of the default {DEFAULT_HOST}: anyone who can"
        " reach this machine can call these functions; the emulator has no authentication."
    )


def _disabled_by_settings(
    functions: Sequence[FunctionSpec], settings: Mapping[str, str]
) -> list[FunctionSpec]:
    """Apply the ``AzureWebJobs.<name>.Disabled`` (or ``AzureWebJobs_<name>_Disabled``) app
    settings: exactly ``true`` or ``1``, in any case (the WebJobs SDK's
    ``HostListenerFactory.IsDisabled`` and ``IsSettingEnabled``; setting names ignore case)."""
    lowered = {k.lower(): v for k, v in settings.items()}
    out = []
    for spec in functions:
        name = spec.name.lower()
        for key in (f"azurewebjobs.{name}.disabled", f"azurewebjobs_{name}_disabled"):
            if lowered.get(key, "").lower() in ("true", "1"):
                spec = replace(spec, disabled=True)
        out.append(spec)
    return out
