"""`workerkit conformance` treats workers as the host and Core Tools do (issue 14, items
21-24): environment-reload on a process of its own, started as a placeholder worker; workers
launched with the environment ``func start`` gives them; HTTP bodies compared as the bytes
they are; a worker left running after its stream ends is an orphan, one exiting 0 a warning;
cases name the trigger input of a self-indexing worker as ``$trigger``.

Every worker here is a real process on a real gRPC stream (workerkit workers written into
tmp_path, and the bare grpcio worker of tests/test_conformance.py for the exit statuses).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import arun

from workerkit.conformance import (
    CasesError,
    ConformanceOptions,
    Outcome,
    Report,
    check_worker,
    parse_cases,
)

#: Limits that only catch a hang (a good worker passes however slow the machine is).
GENEROUS = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=30, grace=30)

HTTP = [
    {"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get", "post"]},
    {"type": "http", "direction": "out", "name": "$return"},
]

#: Variables ``func start`` (Core Tools) sets, removed from the test's own environment so
#: that what the worker sees comes from the kit.
CORE_TOOLS_VARIABLES = (
    "AzureWebJobsScriptRoot",
    "WEBSITE_HOSTNAME",
    "AZURE_FUNCTIONS_ENVIRONMENT",
    "FUNCTIONS_CORETOOLS_ENVIRONMENT",
    "WEBSITE_PLACEHOLDER_MODE",
)


def check(command: list[str], **kwargs: Any) -> Report:
    report: Report = arun(check_worker(command, **kwargs), timeout=110)
    return report


def results(report: Report) -> dict[str, tuple[Outcome, str]]:
    return {r.name: (r.outcome, r.detail) for r in report.results}


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CORE_TOOLS_VARIABLES}


def write_app(root: Path, functions: dict[str, list[dict[str, Any]]]) -> Path:
    app = root / "app"
    app.mkdir()
    (app / "host.json").write_text('{"version": "2.0"}')
    for name, bindings in functions.items():
        (app / name).mkdir()
        (app / name / "run.txt").write_text("")
        (app / name / "function.json").write_text(
            json.dumps({"scriptFile": "run.txt", "bindings": bindings})
        )
    return app


# -- item 21: environment-reload on a process of its own; the environment of func start ---------

#: Like the Node.js worker with a v4 app: the app's entry point runs once per process (Node's
#: module cache), at init when the app directory has one, else at the reload; a reload first
#: forgets the functions. Reloading the app it was initialised with leaves it with none.
FORGETFUL_WORKER = """\
from pathlib import Path

import workerkit
from workerkit import FunctionMetadata, HttpResponse

HTTP = [
    {"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get"]},
    {"type": "http", "direction": "out", "name": "$return"},
]


class Forgetful(workerkit.Worker):
    def __init__(self):
        super().__init__()
        self.entry_point_ran = False
        self.functions = []

    def start_app(self, directory):
        if (Path(directory) / "entry.txt").exists() and not self.entry_point_ran:
            self.entry_point_ran = True
            self.functions = [FunctionMetadata("shout", script_file="entry.txt", bindings=HTTP)]

    def on_init(self, request):
        self.start_app(request.function_app_directory)

    def on_environment_reload(self, reload):
        self.functions = []
        self.start_app(reload.function_app_directory)

    def on_functions_metadata(self, request):
        return list(self.functions)

    def on_function_load(self, function):
        pass

    def on_invocation(self, invocation):
        return HttpResponse(body=invocation.inputs["req"].query.get("word", "").upper())


Forgetful.main()
"""


def test_environment_reload_runs_on_a_placeholder_process_of_its_own(tmp_path: Path) -> None:
    """Before, the reload ran on the process every later scenario used: this worker then
    reported no functions, as the Node.js worker does with a v4 app, and every case failed.
    The host reloads only a worker it started for a placeholder app (specialization,
    WebHostRpcWorkerChannelManager in Azure/azure-functions-host)."""
    (tmp_path / "entry.txt").write_text("")
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    worker = tmp_path / "forgetful_worker.py"
    worker.write_text(FORGETFUL_WORKER)
    cases = parse_cases(
        [
            {
                "name": "shout",
                "function": "shout",
                "inputs": {"req": "/api/shout?word=hey"},
                "expect": {"http": {"status": 200, "body": "HEY"}},
            }
        ]
    )
    report = check(
        [sys.executable, str(worker)],
        cases=cases,
        cwd=tmp_path,
        worker_indexing=True,
        options=GENEROUS,
    )
    assert report.ok(strict=True), report.table()
    found = results(report)
    assert found["metadata"] == (Outcome.PASS, "1 function(s) reported by the worker: shout")
    assert found["case:shout"][0] is Outcome.PASS
    outcome, detail = found["environment-reload"]
    assert outcome is Outcome.PASS
    assert detail.endswith("then reported and loaded 1 function(s)"), detail
    # start-stream/init's process, the placeholder one, restart-load's, stream-end's
    assert found["message-rules"][1].endswith("from 4 process(es) checked")


ENVIRONMENT_WORKER = """\
import os

import workerkit
from workerkit import HttpResponse

SHOWN = ("AzureWebJobsScriptRoot", "WEBSITE_HOSTNAME", "AZURE_FUNCTIONS_ENVIRONMENT",
         "FUNCTIONS_CORETOOLS_ENVIRONMENT", "FUNCTIONS_APPLICATION_DIRECTORY",
         "WEBSITE_PLACEHOLDER_MODE", "MY_SETTING")


class Environment(workerkit.Worker):
    def on_function_load(self, function):
        pass

    def on_invocation(self, invocation):
        return HttpResponse.from_json({name: os.environ.get(name) for name in SHOWN})


Environment.main()
"""


def test_workers_get_the_environment_func_start_gives(tmp_path: Path) -> None:
    """Core Tools sets AzureWebJobsScriptRoot (the app), WEBSITE_HOSTNAME,
    AZURE_FUNCTIONS_ENVIRONMENT=Development and the local.settings.json Values for the host
    and so for the worker, where the environment does not set them already
    (StartHostAction.GetConfigurationSettings and UpdateEnvironmentVariables in
    Azure/azure-functions-core-tools); the official Python worker cannot import a decorated
    app without the first."""
    app = write_app(tmp_path, {"env": HTTP})
    settings = {"MY_SETTING": "from Values", "AZURE_FUNCTIONS_ENVIRONMENT": "Production"}
    (app / "local.settings.json").write_text(json.dumps({"Values": settings}))
    worker = tmp_path / "environment_worker.py"
    worker.write_text(ENVIRONMENT_WORKER)
    expected = {
        "AzureWebJobsScriptRoot": str(app.resolve()),
        "WEBSITE_HOSTNAME": "localhost:7071",
        "AZURE_FUNCTIONS_ENVIRONMENT": "Development",  # Core Tools overrides the Values
        "FUNCTIONS_CORETOOLS_ENVIRONMENT": "true",
        "FUNCTIONS_APPLICATION_DIRECTORY": str(app.resolve()),
        "WEBSITE_PLACEHOLDER_MODE": None,
        "MY_SETTING": "from Values",
    }

    def run(expected: dict[str, Any], env: dict[str, str]) -> Report:
        cases = parse_cases(
            [
                {
                    "name": "environment",
                    "function": "env",
                    "inputs": {"req": "/api/env"},
                    "expect": {"http": {"status": 200, "body": expected}},
                }
            ]
        )
        worker_command = [sys.executable, str(worker)]
        return check(worker_command, app=app, cases=cases, env=env, options=GENEROUS)

    report = run(expected, clean_environment())
    assert report.ok(strict=True), report.table()
    # What the environment already sets (non-empty) is kept, as Core Tools keeps it.
    staging = {**clean_environment(), "AZURE_FUNCTIONS_ENVIRONMENT": "Staging", "MY_SETTING": "e"}
    report = run({**expected, "AZURE_FUNCTIONS_ENVIRONMENT": "Staging", "MY_SETTING": "e"}, staging)
    assert report.ok(strict=True), report.table()
    # A local.settings.json Core Tools cannot read: no settings, and its warning.
    (app / "local.settings.json").write_text('{"Values": {"MY_SETTING": {"nested": 1}}}')
    report = run({**expected, "MY_SETTING": None}, clean_environment())
    assert report.ok(), report.table()
    outcome, detail = results(report)["app"]
    assert outcome is Outcome.WARN
    assert detail.startswith("Failed to read app settings file at "), detail


# -- item 22: an expected HTTP body in bytes is compared byte for byte ---------------------------

RAW_WORKER = """\
import workerkit
from workerkit import HttpResponse


class Raw(workerkit.Worker):
    def on_function_load(self, function):
        pass

    def on_invocation(self, invocation):
        return HttpResponse(body=bytes.fromhex(invocation.inputs["req"].query["hex"]))


Raw.main()
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_expected_body_in_bytes_is_compared_byte_for_byte(tmp_path: Path) -> None:
    """Before, {"$bytes": ...} was compared with the body parsed as JSON (the text with
    invalid UTF-8 replaced): bytes never matched it and a JSON body spelling it did; and a
    body of invalid UTF-8 matched a string of replacement characters."""
    app = write_app(tmp_path, {"raw": HTTP})
    worker = tmp_path / "raw_worker.py"
    worker.write_text(RAW_WORKER)
    spelled = b'{"$bytes":"aGk="}'

    def case(name: str, sent: bytes, **http: Any) -> dict[str, Any]:
        return {
            "name": name,
            "function": "raw",
            "inputs": {"req": f"/api/raw?hex={sent.hex()}"},
            "expect": {"http": http},
        }

    cases = parse_cases(
        [
            case("exact bytes", b"\xff\x00hi", body={"$bytes": b64(b"\xff\x00hi")}),
            case("other bytes", b"\xff\x01hi", body={"$bytes": b64(b"\xff\x00hi")}),
            case("JSON that spells the bytes", spelled, body={"$bytes": "aGk="}),
            case("not UTF-8 is not replacement characters", b"\xfe", body="\ufffd"),
            case("typed text", b"hi!", body={"$string": "hi!"}),
            case("typed JSON", b'{"a": [1]}', body={"$json": {"a": [1]}}),
            case("contains, in bytes", b"\xffhi", body_contains="hi"),
        ]
    )
    report = check([sys.executable, str(worker)], app=app, cases=cases, options=GENEROUS)
    failures = {r.name: r.detail for r in report.results if r.outcome is Outcome.FAIL}
    assert failures == {
        "case:other bytes": "$return: body b'\\xff\\x01hi', expected b'\\xff\\x00hi'",
        "case:JSON that spells the bytes": (
            "$return: body b'{\"$bytes\":\"aGk=\"}', expected b'hi'"
        ),
        "case:not UTF-8 is not replacement characters": (
            "$return: body b'\\xfe' is not UTF-8 text (expect {\"$bytes\": ...} for bytes)"
        ),
    }, report.table()
    passed = {r.name for r in report.results if r.outcome is Outcome.PASS}
    assert {"case:exact bytes", "case:typed text", "case:typed JSON"} <= passed
    assert "case:contains, in bytes" in passed
    assert results(report)["case:exact bytes"][1] == "Success: $return http 200 b'\\xff\\x00hi'"


def test_an_expected_body_takes_only_bytes_text_or_json() -> None:
    with pytest.raises(CasesError, match=r"expect\.http\.body: an HTTP body is a string"):
        parse_cases([{"name": "a", "function": "f", "expect": {"http": {"body": {"$int": 1}}}}])
    with pytest.raises(CasesError, match="is not valid base64"):
        parse_cases(
            [{"name": "a", "function": "f", "expect": {"http": {"body": {"$bytes": "%%"}}}}]
        )


# -- item 24: the trigger input named without its generated name -------------------------------

GENERATED = "httpTrigger624a61988c"

GENERATED_NAMES_WORKER = f"""\
import workerkit
from workerkit import FunctionMetadata, HttpResponse

# Named as the Node.js v4 library names a binding it was given no name for: the type and a
# hash of the binding (addBindingName in Azure/azure-functions-nodejs-library).
BINDINGS = [
    {{"type": "httpTrigger", "direction": "in", "name": "{GENERATED}", "methods": ["get"]}},
    {{"type": "http", "direction": "out", "name": "$return"}},
]


class Generated(workerkit.Worker):
    def on_functions_metadata(self, request):
        return [FunctionMetadata("hello", script_file="index.js", bindings=BINDINGS)]

    def on_function_load(self, function):
        pass

    def on_invocation(self, invocation):
        (request,) = invocation.inputs.values()
        return HttpResponse(body="Hello, " + request.query.get("name", "world"))


Generated.main()
"""


def test_cases_name_the_trigger_input_without_its_generated_name(tmp_path: Path) -> None:
    worker = tmp_path / "generated_worker.py"
    worker.write_text(GENERATED_NAMES_WORKER)
    cases = parse_cases(
        [
            {
                "name": "by $trigger",
                "function": "hello",
                "inputs": {"$trigger": "/api/hello?name=Ada"},
                "expect": {"http": {"body": "Hello, Ada"}},
            },
            {
                "name": "by its name",
                "function": "hello",
                "inputs": {GENERATED: "/api/hello?name=Bo"},
                "expect": {"http": {"body": "Hello, Bo"}},
            },
            {
                "name": "both",
                "function": "hello",
                "inputs": {"$trigger": "/api/hello", GENERATED: "/api/hello"},
            },
        ]
    )
    report = check(
        [sys.executable, str(worker)],
        cases=cases,
        cwd=tmp_path,
        worker_indexing=True,
        options=GENEROUS,
    )
    found = results(report)
    assert found["case:by $trigger"] == (Outcome.PASS, "Success: $return http 200 'Hello, Ada'")
    assert found["case:by its name"][0] is Outcome.PASS
    assert found["case:both"] == (
        Outcome.FAIL,
        f'the case gives the trigger twice: as "$trigger" and as "{GENERATED}"',
    )


def test_other_inputs_starting_with_a_dollar_are_refused() -> None:
    with pytest.raises(CasesError, match=r"inputs\.\$req: binding names do not start with \$"):
        parse_cases([{"name": "a", "function": "f", "inputs": {"$req": "/api/f"}}])
