"""``workerkit conformance``: check any language worker against the host's protocol.

    workerkit conformance [--app APP_DIR] [--cases CASES_FILE] [--worker-indexing] [--json]
                          [--strict] [--init-timeout S] [--timeout S] ... -- COMMAND [ARGS...]

The worker can be written in any language and with any library: it is launched as the
Functions host launches it (HOST_PROTOCOL §1.1): ``COMMAND ARGS...`` plus the host's connection
arguments in both spellings, working directory = the app directory (or the current one),
``FUNCTIONS_APPLICATION_DIRECTORY`` / ``FUNCTIONS_WORKER_DIRECTORY`` set. It must dial the
`workerkit.testing.TestHost` listening on 127.0.0.1. The command line makes arguments of
``COMMAND`` that name existing files relative to the current directory absolute, since the
worker runs elsewhere (`check_worker` runs the command as given).

Scenarios, in order (one process serves them in turn; if it dies a fresh one, started and
initialised, takes over, so one crash does not hide the other results):

===================== ==========================================================================
start-stream          the first message is StartStream with the ``--workerId``; its request_id
                      should be the ``--requestId`` (only a warning: the host ignores it)
init                  WorkerInitResponse with an explicit ``result`` of Success within
                      ``--init-timeout`` (the host's initializationTimeout, 10 s)
capabilities          which capabilities the worker declared; the three that decide which
                      control messages the host sends are flagged; empty values, a broken
                      ``HttpUri`` and ``SupportsLoadResponseCollection`` are reported
environment-reload    FunctionEnvironmentReloadResponse with result Success
status                WorkerStatusResponse echoing the request's request_id
load-probe            a FunctionLoadRequest for a function that cannot exist is answered once,
                      with its function_id and an explicit result (Failure is fine)
app                   ``--app``: the app's ``function.json`` files are valid (read as the host
                      reads them, `workerkit.emulator`)
metadata              ``--worker-indexing`` instead: FunctionsMetadataRequest is answered and
                      the functions reported pass the host's validation (§5.8); they are the
                      ones loaded (or ``function.json``'s, with use_default_metadata_indexing)
load:NAME             each function loads with Success (disabled ones last, as the host)
restart-load          ``--worker-indexing``: a fresh process, never asked for metadata, loads
                      the same function ids (what the host does after a restart, §3.4)
case:NAME             ``--cases`` only: each case from the cases file (below)
unknown-function      an invocation of a function id never loaded gets a Failure
                      InvocationResponse, and the worker lives on
cancel-unknown        InvocationCancel for an id never sent is harmless: the worker still answers
message-rules         no request answered twice, no unsolicited replies; user logs carry an
                      invocation id and arrive before that invocation's response (else the host
                      drops them)
terminate             WorkerTerminate: the process exits with status 0 within ``--grace``
stream-end            (a separate process) when the host ends the stream the worker exits with a
                      non-zero status (§3.7) within ``--grace``
===================== ==========================================================================

`status`, `cancel-unknown` and `terminate` need the capability that makes the host send that
message (``WorkerStatus``, ``HandlesInvocationCancelMessage``, ``HandlesWorkerTerminateMessage``);
without it they are *skipped (not advertised)*: the real host would never send them. Every
``*Response`` must carry ``result`` with an explicit status (§3.6). Every reply is awaited for at
most ``--timeout`` seconds, so the whole run is bounded.

Results: ``pass``, ``fail``, ``warn`` (the host copes, but something is off) and ``skip``. The
exit status is 1 when a scenario failed (also on warnings with ``--strict``), 2 for a bad
command line or cases file, 0 otherwise.

Cases file
----------
JSON, written by hand::

    {
      "cases": [
        {
          "name": "hello greets by name",
          "function": "hello",
          "inputs": {"req": "/api/hello?name=Ada"},
          "expect": {"http": {"status": 200, "body": "Hello, Ada!\\n"}}
        },
        {
          "name": "sum with route parameters",
          "function": "sum",
          "inputs": {"req": {"method": "GET", "url": "/api/sum/3/4",
                             "params": {"a": "3", "b": "4"}}},
          "expect": {"status": "Success", "http": {"status": 200, "body_contains": "3 and 4"}}
        },
        {
          "name": "queue message is echoed",
          "function": "echo",
          "inputs": {"msg": "hello"},
          "trigger_metadata": {"DequeueCount": {"$json": 1}},
          "expect": {"outputs": {"out": "hello"}, "return_value": null}
        }
      ]
    }

A case: ``name`` (unique), ``function`` (a function of ``--app``), ``inputs`` (binding name →
value), optional ``trigger_metadata`` (name → value), ``expect``, optional ``timeout`` (seconds)
and ``cancel_after`` (seconds: send InvocationCancel then; the case is skipped when the worker
does not advertise HandlesInvocationCancelMessage). Keys starting with ``//`` are comments.

Values are plain JSON, sent as the host sends them (§5.2): a string as ``string`` (``bytes``
when the binding's ``dataType`` is binary or stream), null as no value, anything else as
``json``. Or typed, as an object with one ``$`` key: ``{"$string": "5"}``, ``{"$json": 5}``,
``{"$bytes": "<base64>"}``, ``{"$int": 5}``, ``{"$double": 2.5}``,
``{"$collection_string": [...]}`` (also ``$collection_bytes`` in base64, ``$collection_double``,
``$collection_sint64``) and ``{"$http": {...}}``.

For an ``httpTrigger`` binding a plain value describes the request: a string is the URL of a
GET; an object has ``method`` (GET), ``url`` (``/`` ; a path is prefixed with
``http://localhost:7071``), ``headers``, ``query`` (default: parsed from the URL),
``params`` (route parameters), and ``body`` (a string as UTF-8, any other JSON value as JSON
text with ``content-type: application/json``) or ``body_base64``. The request is shaped as the
host shapes it for the capabilities the worker declared (nullable maps, body kind, §5.3), and
``trigger_metadata`` gets what the host adds for HTTP (``Query``, ``Headers``, query and route
parameters, ``$request`` and the trigger unless ``RpcHttpTriggerMetadataRemoved``); your own
``trigger_metadata`` entries win.

``expect`` (all optional): ``status`` (``"Success"`` by default, ``"Failure"``, ``"Cancelled"``),
``error`` (text the failure message must contain), ``return_value`` (null: none),
``outputs`` (binding name → value; only the listed ones are checked, null means none) and
``http`` (the function's HTTP output, ``$return`` or its ``http`` out binding, compared as
the HTTP response the host would write for it, `workerkit.emulator` rules): ``status``,
``body`` (a string is compared with the text, another JSON value with the parsed JSON),
``body_contains``, ``headers`` (the listed ones, names case-insensitive). Expected values are
plain JSON compared with the decoded output (a string also matches the same text as bytes) or
typed as above, which also pins the TypedData kind (``{"$http": {...}}`` takes what ``http``
takes). What the host would reject (``collection_*`` outputs, an http response without
``body``) fails the case; what it would silently drop or change makes it a warning.

The public API (`check_worker`, `load_cases`, `Report`) runs the same checks from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..testing import TestHost
from ._cases import (
    Case,
    CasesError,
    Expectation,
    HttpExpectation,
    load_cases,
    parse_cases,
)
from ._scenarios import (
    CONTROL_CAPABILITIES,
    ConformanceOptions,
    Outcome,
    Report,
    ScenarioResult,
    _Runner,
)

if TYPE_CHECKING:
    from ..emulator import FunctionSpec

__all__ = [
    "CONTROL_CAPABILITIES",
    "HELP",
    "Case",
    "CasesError",
    "ConformanceOptions",
    "Expectation",
    "HttpExpectation",
    "Outcome",
    "Report",
    "ScenarioResult",
    "check_worker",
    "configure",
    "load_cases",
    "parse_cases",
    "run",
]

HELP: Final = "check any worker executable against the host's protocol (and your cases)"


# ---------------------------------------------------------------------------------------------
# Entry points


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
        runner = _Runner(
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
        results = await runner.run()
    return Report(
        command=tuple(command),
        cwd=str(directory),
        results=tuple(results),
        capabilities=dict(runner.capabilities),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``workerkit conformance``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "example:\n  workerkit conformance --app examples/templates/app \\\n"
        "      --cases examples/templates/conformance.json \\\n"
        "      -- python3 examples/templates/worker.py\n"
        "\nThe scenarios and the cases file format: python -m pydoc workerkit.conformance"
    )
    parser.add_argument("--app", metavar="APP_DIR", help="function app to load (function.json)")
    parser.add_argument("--cases", metavar="CASES_FILE", help="JSON cases to run (needs --app)")
    parser.add_argument(
        "--worker-indexing",
        action="store_true",
        help="get the functions from the worker (FunctionsMetadataRequest), not function.json",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--strict", action="store_true", help="treat warnings as failures (exit status 1)"
    )
    defaults = ConformanceOptions()
    for flag, name, what in (
        ("--start-timeout", "start_timeout", "launch to StartStream"),
        ("--init-timeout", "init_timeout", "WorkerInitRequest to its response, like the host"),
        ("--timeout", "timeout", "any other reply"),
        ("--grace", "grace", "WorkerTerminate grace period; also exit after stream end"),
    ):
        parser.add_argument(
            flag,
            type=float,
            metavar="S",
            default=getattr(defaults, name),
            help=f"seconds: {what} (default {getattr(defaults, name):g})",
        )
    parser.add_argument(
        "--worker-dir", metavar="DIR", help="worker directory sent in WorkerInitRequest"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARGS...]",
        help="the worker executable and its arguments (the host's are appended)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``workerkit conformance``; return 0 (passed), 1 (a scenario failed) or 2 (usage)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("workerkit conformance: give the worker command after --", file=sys.stderr)
        return 2
    try:
        options = ConformanceOptions(
            start_timeout=args.start_timeout,
            init_timeout=args.init_timeout,
            timeout=args.timeout,
            grace=args.grace,
        )
        cases = load_cases(args.cases) if args.cases else []
        if cases and not args.app and not args.worker_indexing:
            raise ValueError("--cases needs --app: cases name the app's functions")
        if args.app and not Path(args.app).is_dir():
            raise ValueError(f"--app {args.app!r} is not a directory")
    except ValueError as exc:  # CasesError included
        print(f"workerkit conformance: {exc}", file=sys.stderr)
        return 2
    # The worker runs in the app directory: make paths given relative to here absolute.
    command = [
        os.path.abspath(arg) if not Path(arg).is_absolute() and Path(arg).exists() else arg
        for arg in command
    ]
    try:
        report = asyncio.run(
            check_worker(
                command,
                app=args.app,
                cases=cases,
                options=options,
                worker_dir=args.worker_dir,
                worker_indexing=args.worker_indexing,
            )
        )
    except KeyboardInterrupt:  # the worker processes were killed on the way out
        print("workerkit conformance: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.to_json(strict=args.strict), indent=2))
    else:
        print(report.table())
    return 0 if report.ok(strict=args.strict) else 1
