"""``workerkit conformance``, the command: its arguments, and the run that prints the report.
`workerkit.__main__` reaches `HELP`, `configure` and `run` through `workerkit.conformance`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Final

from ._report import ConformanceOptions

HELP: Final = "check any worker executable against the host's protocol (and your cases)"


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
        ("--http-wait", "http_wait", "HttpUri: a forwarded request or invocation left unpaired"),
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
    from ._cases import load_cases
    from ._check import check_worker

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
            http_wait=args.http_wait,
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
    except ValueError as exc:  # what func start stops on (local.settings.json, Python)
        print(f"workerkit conformance: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(strict=args.strict), indent=2))
    else:
        print(report.table())
    return 0 if report.ok(strict=args.strict) else 1
