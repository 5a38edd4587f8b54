"""Microsoft's official Python worker (Azure/azure-functions-python-worker 4.34, from source,
unmodified) under `workerkit conformance` and `workerkit host` (issue 14, items 21 and 25),
with a classic app and a decorated one (``function_app.py``, importing a module of the app).

Skipped, saying why, unless ``WORKERKIT_OFFICIAL_WORKER=DIR`` names a checkout prepared as
for the benchmarks (benchmarks/README.md: ``DIR/.venv`` with its pinned packages and its
``_pb2`` modules generated).

The official worker's own behaviour, and so expected here: it does not declare
HandlesWorkerTerminateMessage or HandlesInvocationCancelMessage (terminate and
cancel-unknown skipped), and it keeps running when the host ends its stream (stream-end
fails: an orphan process).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import arun
from emulator_support import HostSubprocess, request

from workerkit.conformance import ConformanceOptions, Outcome, Report, check_worker, parse_cases

WORKER_ENV = "WORKERKIT_OFFICIAL_WORKER"
GENEROUS = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=30, grace=5)
OWN = {
    "terminate": Outcome.SKIP,
    "cancel-unknown": Outcome.SKIP,
    "stream-end": Outcome.FAIL,
    # it does not report HttpUri (its HTTP streaming needs an extension package)
    **dict.fromkeys(
        ("http-proxy:request-first", "http-proxy:invocation-first", "http-proxy:streamed",
         "http-proxy:unmatched"),
        Outcome.SKIP,
    ),
}  # fmt: skip

CLASSIC_FUNCTION = """\
import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"Hello, {req.params.get('name', 'world')}!")
"""

DECORATED_APP = """\
import azure.functions as func

import greeting

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="hello")
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(greeting.greet(req.params.get("name", "world")))
"""

CASES = [
    {
        "name": "hello",
        "function": "hello",
        "inputs": {"$trigger": "/api/hello?name=Ada"},
        "expect": {"http": {"status": 200, "body": "Hello, Ada!"}},
    }
]


def official_worker() -> Path:
    where = os.environ.get(WORKER_ENV)
    if not where:
        pytest.skip(f"{WORKER_ENV} is not set: see benchmarks/README.md to prepare the worker")
    directory = Path(where).resolve()
    needed = [
        directory / ".venv" / "bin" / "python",
        directory / "python" / "test" / "worker.py",
        directory / "azure_functions_worker" / "protos" / "FunctionRpc_pb2.py",
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"{WORKER_ENV}={where} is not prepared: missing {', '.join(missing)}")
    return directory


def classic_app(root: Path) -> Path:
    app = root / "classic"
    (app / "hello").mkdir(parents=True)
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "hello" / "__init__.py").write_text(CLASSIC_FUNCTION)
    (app / "hello" / "function.json").write_text(
        '{"scriptFile": "__init__.py", "bindings": [{"authLevel": "anonymous", "type":'
        ' "httpTrigger", "direction": "in", "name": "req", "methods": ["get"]},'
        ' {"type": "http", "direction": "out", "name": "$return"}]}'
    )
    return app


def decorated_app(root: Path) -> Path:
    app = root / "decorated"
    app.mkdir()
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "function_app.py").write_text(DECORATED_APP)
    (app / "greeting.py").write_text("def greet(name):\n    return f'Hello, {name}!'\n")
    return app


def check(worker: Path, **kwargs: Any) -> Report:
    command = [
        str(worker / ".venv" / "bin" / "python"),
        str(worker / "python" / "test" / "worker.py"),
    ]
    env = {**os.environ, "PYTHONPATH": str(worker), "FUNCTIONS_WORKER_RUNTIME": "python"}
    env.pop("AzureWebJobsScriptRoot", None)
    report: Report = arun(
        check_worker(command, env=env, options=GENEROUS, cases=parse_cases(CASES), **kwargs),
        timeout=110,
    )
    return report


def outcomes(report: Report) -> dict[str, Outcome]:
    return {r.name: r.outcome for r in report.results}


def test_the_official_python_worker_with_a_classic_app(tmp_path: Path) -> None:
    report = check(official_worker(), app=classic_app(tmp_path))
    expected = {name: OWN.get(name, Outcome.PASS) for name in outcomes(report)}
    assert outcomes(report) == expected, report.table()
    (orphan,) = [r for r in report.results if r.name == "stream-end"]
    assert "an orphan process" in orphan.detail


def test_the_official_python_worker_with_a_decorated_app(tmp_path: Path) -> None:
    """Before, ``AzureWebJobsScriptRoot`` was not set and the environment reload, on the
    process every later scenario used, put the app on the worker's import path: metadata
    passed, and only a restarted worker said "No module named 'function_app'"."""
    report = check(official_worker(), app=decorated_app(tmp_path), worker_indexing=True)
    expected = {name: OWN.get(name, Outcome.PASS) for name in outcomes(report)}
    assert outcomes(report) == expected, report.table()
    found = {r.name: r.detail for r in report.results}
    assert found["restart-load"] == "a fresh process loaded 1 function(s) without metadata"
    assert found["environment-reload"].endswith("then reported and loaded 1 function(s)")


def test_workerkit_host_serves_a_decorated_app_with_the_official_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = official_worker()
    monkeypatch.setenv("PYTHONPATH", str(worker))
    python = str(worker / ".venv" / "bin" / "python")
    monkeypatch.setenv("languageWorkers__python__defaultExecutablePath", python)
    monkeypatch.delenv("AzureWebJobsScriptRoot", raising=False)
    host = HostSubprocess(decorated_app(tmp_path), worker / "python" / "test")
    try:
        reply = request("GET", host.url + "/api/hello?name=Ada")
        assert (reply.status, reply.text) == (200, "Hello, Ada!"), host.output
    finally:
        host.process.send_signal(signal.SIGINT)
        host.wait_exit()
