"""`check_worker`: launch a worker as the host would and play every scenario against it, in
report order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..testing import TestHost
from . import _control, _functions, _invocations, _proxycalls
from ._cases import Case
from ._environment import launch_environment
from ._report import ConformanceOptions, Outcome, Report, ScenarioResult
from ._runner import Needs, Runner, Step

if TYPE_CHECKING:
    from ..emulator import FunctionSpec, LocalSettings

#: A scenario in the plan: its name, its step, and the process it is given.
_Planned = tuple[str, Step, Needs]


async def check_worker(
    command: Sequence[str],
    *,
    app: str | os.PathLike[str] | None = None,
    cases: Sequence[Case] = (),
    options: ConformanceOptions | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    worker_dir: str | os.PathLike[str] | None = None,
    worker_indexing: bool = False,
) -> Report:
    """Launch `command` as the host would and run every scenario against it.

    Args:
        command: the executable and its arguments; the host's connection arguments are
            appended. Run as given (resolve relative paths first if needed).
        app: a function app directory: its functions are loaded, and it is the worker's
            working directory (unless `cwd` says otherwise).
        cases: cases to run (`load_cases`); they need `app`.
        options: time limits.
        cwd: the worker's working directory (default: `app`, else the current directory).
        env: the environment the host would run in (default: this process's). The worker
            gets it with what ``func start`` adds where a variable is not already set
            (``AzureWebJobsScriptRoot`` = the working directory, ``WEBSITE_HOSTNAME``,
            ``AZURE_FUNCTIONS_ENVIRONMENT=Development``, ...) and the host's
            ``FUNCTIONS_*_DIRECTORY`` variables.
        worker_dir: sent as the worker directory (default: the directory of the first
            argument naming an existing file, the worker script of an interpreter; else of
            the executable when it is a path; else `cwd`).
        worker_indexing: ask the worker for its functions (FunctionsMetadataRequest, as the
            host does for ``"workerIndexing": "true"``) instead of reading ``function.json``.

    Returns:
        The report; it never raises for a misbehaving worker.

    Raises:
        ValueError: empty `command`, cases without `app`, or `app` not a directory.
    """
    if not command:
        raise ValueError("no worker command given")
    if cases and app is None and not worker_indexing:
        raise ValueError("cases need an app (--app): they name the app's functions")
    options = options or ConformanceOptions()
    functions: list[FunctionSpec] | None = None
    app_errors: list[str] = []
    if app is not None and not Path(app).is_dir():
        raise ValueError(f"app directory {os.fspath(app)!r} does not exist")
    if app is not None and not worker_indexing:
        from ..emulator import discover_functions

        found, errors = discover_functions(Path(app).resolve())
        functions = sorted(found, key=lambda spec: spec.disabled)  # disabled last, as the host
        app_errors = [str(error) for error in errors]
    directory = Path(cwd if cwd is not None else app if app is not None else os.getcwd()).resolve()
    if worker_dir is None:
        candidates = [*command[1:], command[0]] if os.sep in command[0] else command[1:]
        files = [Path(arg) for arg in candidates if Path(arg).is_file()]
        worker_dir = Path(os.path.abspath(files[0])).parent if files else directory
    base = os.environ if env is None else env
    app_warnings: list[str] = []
    given = app is not None or cwd is not None  # else no app: no local.settings.json either
    settings = _local_settings(directory if given else None, app_warnings)
    environment = launch_environment(
        base,
        directory,
        worker_dir,
        settings=settings.values if settings else None,
        connection_strings=settings.connection_strings if settings else None,
    )
    # A workerkit worker gives up an unpaired proxied request or invocation after this many
    # seconds (60 by default): short here, so `http-proxy:unmatched` does not take a minute.
    # Other workers ignore it; a value in the environment or local.settings.json wins.
    environment.setdefault("WORKERKIT_HTTP_MATCH_TIMEOUT", "5")
    with tempfile.TemporaryDirectory(prefix="conformance-placeholder-") as placeholder:
        # What the host starts a worker in when in placeholder mode (an app of its own)
        placeholder_app = Path(placeholder).resolve()
        (placeholder_app / "host.json").write_text('{"version": "2.0"}\n')
        placeholder_env = launch_environment(base, placeholder_app, worker_dir)
        placeholder_env["WEBSITE_PLACEHOLDER_MODE"] = "1"
        async with TestHost() as host:
            runner = Runner(
                host,
                command,
                cwd=directory,
                env=environment,
                worker_dir=os.fspath(worker_dir),
                functions=functions,
                app_errors=app_errors,
                app_warnings=app_warnings,
                cases=cases,
                options=options,
                worker_indexing=worker_indexing,
                placeholder=(placeholder_app, placeholder_env),
            )
            results = await play(runner)
    return Report(
        command=tuple(command),
        cwd=str(directory),
        results=tuple(results),
        capabilities=dict(runner.capabilities),
    )


def _local_settings(app: Path | None, problems: list[str]) -> LocalSettings | None:
    """The app's ``local.settings.json``, which ``func start`` reads (None without an app);
    a file Core Tools cannot read adds its warning to `problems` and gives no settings
    (``func start`` goes on).

    Raises:
        ValueError: encrypted settings (``func start`` stops on them).
    """
    if app is None:
        return None
    from ..emulator import AppError, read_local_settings

    try:
        settings = read_local_settings(app)
    except AppError as exc:
        raise ValueError(str(exc)) from None
    problems += settings.warnings
    return settings


async def play(runner: Runner) -> list[ScenarioResult]:
    """Every scenario in report order. The plan comes in three phases, as the functions to
    load are known only after the first (worker indexing)."""
    results: list[ScenarioResult] = []
    stream_end: asyncio.Task[ScenarioResult] | None = None
    try:
        for phase in (_handshake, _function_phase, _closing):
            for name, step, needs in phase(runner):
                if name == "stream-end":  # its own process, concurrently; reported last
                    stream_end = asyncio.create_task(runner.scenario(name, step, needs))
                    continue
                results.append(await runner.scenario(name, step, needs))
        results.append(
            await stream_end
            if stream_end is not None
            else ScenarioResult("stream-end", Outcome.SKIP, f"not run: {runner.blocked}", 0.0)
        )
    finally:
        if stream_end is not None and not stream_end.done():
            stream_end.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream_end
        for worker in runner.workers:
            await runner.kill(worker)
    return results


# The plan. start-stream and init run on the first process as it is; stream-end,
# environment-reload and restart-load get processes of their own (a reload changes the
# worker's state: a later scenario on that process would not see what the host's workers
# see); the others need a `ready` worker.


def _handshake(runner: Runner) -> list[_Planned]:
    steps: list[_Planned] = [
        ("start-stream", _control.start_stream, "current"),
        ("stream-end", _control.stream_end, "own"),
        ("init", _control.init, "current"),
        ("capabilities", _control.capabilities, "ready"),
        ("environment-reload", _control.environment_reload, "placeholder"),
        ("status", _control.status, "ready"),
        ("load-probe", _functions.load_probe, "ready"),
    ]
    if runner.worker_indexing:
        steps.append(("metadata", _functions.metadata, "ready"))
    elif runner.functions is not None:
        steps.append(("app", _functions.app, "ready"))
    return steps


def _function_phase(runner: Runner) -> list[_Planned]:
    steps: list[_Planned] = [
        (f"load:{spec.name}", _functions.load_step(spec), "ready")
        for spec in runner.functions or ()
    ]
    if runner.worker_indexing and runner.functions:
        steps.append(("restart-load", _functions.restart_load, "own"))
    steps += [(f"case:{case.name}", _invocations.case_step(case), "ready") for case in runner.cases]
    steps += [  # skipped for a worker that does not report HttpUri (`_proxycalls`)
        ("http-proxy:request-first", _proxycalls.request_first, "ready"),
        ("http-proxy:invocation-first", _proxycalls.invocation_first, "ready"),
        ("http-proxy:streamed", _proxycalls.streamed, "ready"),
        ("http-proxy:unmatched", _proxycalls.unmatched, "ready"),
    ]
    return steps


def _closing(runner: Runner) -> list[_Planned]:
    return [
        ("unknown-function", _invocations.unknown_function, "ready"),
        ("cancel-unknown", _invocations.cancel_unknown, "ready"),
        ("message-rules", _control.message_rules, "ready"),
        ("terminate", _control.terminate, "ready"),
    ]
