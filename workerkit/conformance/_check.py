"""`check_worker`: launch a worker as the host would and play every scenario against it, in
report order."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..testing import TestHost
from . import _control, _functions, _invocations
from ._cases import Case
from ._report import ConformanceOptions, Outcome, Report, ScenarioResult
from ._runner import Runner, Step

if TYPE_CHECKING:
    from ..emulator import FunctionSpec

#: A scenario in the plan: its name, its step, and whether it needs a `Runner.ready` worker.
_Planned = tuple[str, Step, bool]


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
        env: the worker's environment (default: this process's); the host's
            ``FUNCTIONS_*_DIRECTORY`` variables are added.
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
    environment = dict(os.environ if env is None else env)
    environment["FUNCTIONS_APPLICATION_DIRECTORY"] = str(directory)
    environment["FUNCTIONS_WORKER_DIRECTORY"] = os.fspath(worker_dir)
    async with TestHost() as host:
        runner = Runner(
            host,
            command,
            cwd=directory,
            env=environment,
            worker_dir=os.fspath(worker_dir),
            functions=functions,
            app_errors=app_errors,
            cases=cases,
            options=options,
            worker_indexing=worker_indexing,
        )
        results = await play(runner)
    return Report(
        command=tuple(command),
        cwd=str(directory),
        results=tuple(results),
        capabilities=dict(runner.capabilities),
    )


async def play(runner: Runner) -> list[ScenarioResult]:
    """Every scenario in report order. The plan comes in three phases, as the functions to
    load are known only after the first (worker indexing)."""
    results: list[ScenarioResult] = []
    stream_end: asyncio.Task[ScenarioResult] | None = None
    try:
        for phase in (_handshake, _function_phase, _closing):
            for name, step, ready in phase(runner):
                if name == "stream-end":  # its own process, concurrently; reported last
                    stream_end = asyncio.create_task(runner.scenario(name, step, ready))
                    continue
                results.append(await runner.scenario(name, step, ready))
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


# The plan. start-stream and init run on the first process as it is; stream-end and
# restart-load start processes of their own; the others need a `ready` worker.


def _handshake(runner: Runner) -> list[_Planned]:
    steps: list[_Planned] = [
        ("start-stream", _control.start_stream, False),
        ("stream-end", _control.stream_end, False),
        ("init", _control.init, False),
        ("capabilities", _control.capabilities, True),
        ("environment-reload", _control.environment_reload, True),
        ("status", _control.status, True),
        ("load-probe", _functions.load_probe, True),
    ]
    if runner.worker_indexing:
        steps.append(("metadata", _functions.metadata, True))
    elif runner.functions is not None:
        steps.append(("app", _functions.app, True))
    return steps


def _function_phase(runner: Runner) -> list[_Planned]:
    steps: list[_Planned] = [
        (f"load:{spec.name}", _functions.load_step(spec), True) for spec in runner.functions or ()
    ]
    if runner.worker_indexing and runner.functions:
        steps.append(("restart-load", _functions.restart_load, False))
    steps += [(f"case:{case.name}", _invocations.case_step(case), True) for case in runner.cases]
    return steps


def _closing(runner: Runner) -> list[_Planned]:
    return [
        ("unknown-function", _invocations.unknown_function, True),
        ("cancel-unknown", _invocations.cancel_unknown, True),
        ("message-rules", _control.message_rules, True),
        ("terminate", _control.terminate, True),
    ]
