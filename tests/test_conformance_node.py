"""Microsoft's official Node.js worker (Azure/azure-functions-nodejs-worker, built from
source, unmodified) under `workerkit conformance` and `workerkit host` (issue 14, item 25),
with a classic app (``function.json`` + ``index.js``, the v3 programming model the worker
bundles) and a v4 app (``app.http(...)``, worker indexing, generated binding names).

These tests need a prepared worker and are skipped, saying why, without one:

- ``WORKERKIT_NODE_WORKER=DIR``: a checkout of the worker built in DIR with
  ``npm ci && npm run build && npm run webpack`` (``DIR/worker.config.json``,
  ``DIR/dist/src/nodejsWorker.js`` and ``worker-bundle.js``), and ``node`` on PATH;
- for the v4 app also ``WORKERKIT_NODE_FUNCTIONS=DIR``: a ``node_modules`` directory holding
  the ``@azure/functions`` 4.x package (``npm install @azure/functions@4`` somewhere).

What is the Node.js worker's own behaviour, and so expected here: it exits with status 0
when the host ends its stream (stream-end: a warning), and it does not declare
HandlesInvocationCancelMessage (cancel-unknown: skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import arun
from emulator_support import HostSubprocess, request

from workerkit.conformance import ConformanceOptions, Outcome, Report, check_worker, parse_cases

WORKER_ENV = "WORKERKIT_NODE_WORKER"
FUNCTIONS_ENV = "WORKERKIT_NODE_FUNCTIONS"
#: Limits that only catch a hang (a good worker passes however slow the machine is).
GENEROUS = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=30, grace=30)
#: The Node.js worker's own behaviour (module docstring): everything else passes.
#: Neither worker reports HttpUri (the Node.js worker does only with the v4 model's
#: streaming turned on, the official Python worker with its HTTP streaming extension).
NO_PROXY = dict.fromkeys(
    ("http-proxy:request-first", "http-proxy:invocation-first", "http-proxy:streamed",
     "http-proxy:unmatched"),
    Outcome.SKIP,
)  # fmt: skip
NODE_OWN = {"stream-end": Outcome.WARN, "cancel-unknown": Outcome.SKIP, **NO_PROXY}


def node_worker() -> Path:
    """The prepared worker directory, or skip the test saying what is missing."""
    where = os.environ.get(WORKER_ENV)
    if not where:
        pytest.skip(
            f"{WORKER_ENV} is not set: point it at Azure/azure-functions-nodejs-worker built "
            "with npm ci && npm run build && npm run webpack"
        )
    directory = Path(where).resolve()
    needed = [
        directory / "worker.config.json",
        directory / "dist" / "src" / "nodejsWorker.js",
        directory / "dist" / "src" / "worker-bundle.js",
    ]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        pytest.skip(f"{WORKER_ENV}={where} is not a built worker: missing {', '.join(missing)}")
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH (the worker's defaultExecutablePath)")
    return directory


def functions_v4() -> Path:
    """The node_modules directory with @azure/functions 4.x, or skip saying what is missing."""
    where = os.environ.get(FUNCTIONS_ENV)
    if not where:
        pytest.skip(
            f"{FUNCTIONS_ENV} is not set: point it at a node_modules directory with "
            "@azure/functions 4.x (npm install @azure/functions@4)"
        )
    package = Path(where).resolve() / "@azure" / "functions" / "package.json"
    try:
        version = str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        pytest.skip(f"{FUNCTIONS_ENV}={where} holds no @azure/functions package ({package})")
    if not version.startswith("4."):
        pytest.skip(f"{FUNCTIONS_ENV}={where} holds @azure/functions {version}, not 4.x")
    return package.parent.parent.parent


HTTP_IN = {"authLevel": "anonymous", "type": "httpTrigger", "direction": "in", "name": "req"}

CLASSIC: dict[str, tuple[list[dict[str, Any]], str]] = {
    "hello": (
        [
            {**HTTP_IN, "methods": ["get", "post"]},
            {"type": "http", "direction": "out", "name": "res"},
        ],
        """module.exports = async function (context, req) {
    context.log('hello called');
    const name = req.query.name || req.rawBody || 'world';
    context.res = { headers: { 'content-type': 'text/plain' }, body: `Hello, ${name}!` };
};
""",
    ),
    "bytes": (
        [
            {**HTTP_IN, "methods": ["post"], "route": "bytes/{n:int}"},
            {"type": "http", "direction": "out", "name": "$return"},
        ],
        """module.exports = async function (context, req) {
    return { status: 201, body: Buffer.from([0xff, Number(req.params.n)]) };
};
""",
    ),
    "echo": (
        [
            {"type": "queueTrigger", "direction": "in", "name": "msg", "queueName": "items"},
            {"type": "queue", "direction": "out", "name": "out", "queueName": "done"},
        ],
        """module.exports = async function (context, msg) {
    context.bindings.out = { echo: msg, dequeueCount: context.bindingData.dequeueCount };
};
""",
    ),
}

V4_INDEX = """const { app } = require('@azure/functions');

app.http('hello', {
    methods: ['GET', 'POST'],
    authLevel: 'anonymous',
    handler: async (request, context) => {
        const name = request.query.get('name') || (await request.text()) || 'world';
        return { body: `Hello, ${name}!`, headers: { 'content-type': 'text/plain' } };
    },
});

app.http('bytes', {
    methods: ['POST'],
    authLevel: 'anonymous',
    route: 'bytes/{n:int}',
    handler: async (request) => {
        const body = Buffer.from(await request.arrayBuffer());
        const tail = Buffer.from([0xff, Number(request.params.n)]);
        return { status: 201, body: Buffer.concat([body, tail]) };
    },
});
"""


def classic_app(root: Path) -> Path:
    app = root / "classic"
    app.mkdir()
    (app / "host.json").write_text('{"version": "2.0"}')
    for name, (bindings, code) in CLASSIC.items():
        (app / name).mkdir()
        (app / name / "function.json").write_text(json.dumps({"bindings": bindings}))
        (app / name / "index.js").write_text(code)
    return app


def v4_app(root: Path, modules: Path) -> Path:
    app = root / "v4"
    (app / "src").mkdir(parents=True)
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "package.json").write_text('{"name": "v4-app", "main": "src/index.js"}')
    (app / "src" / "index.js").write_text(V4_INDEX)
    (app / "node_modules").symlink_to(modules, target_is_directory=True)
    return app


def check(worker: Path, **kwargs: Any) -> Report:
    command = ["node", str(worker / "dist" / "src" / "nodejsWorker.js")]
    report: Report = arun(check_worker(command, options=GENEROUS, **kwargs), timeout=110)
    return report


def outcomes(report: Report) -> dict[str, Outcome]:
    return {r.name: r.outcome for r in report.results}


def details(report: Report) -> dict[str, str]:
    return {r.name: r.detail for r in report.results}


# -- workerkit conformance ---------------------------------------------------------------------


def test_the_node_worker_passes_the_kit_with_a_classic_app(tmp_path: Path) -> None:
    worker = node_worker()
    cases = parse_cases(
        [
            {
                "name": "hello by query",
                "function": "hello",
                "inputs": {"req": "/api/hello?name=Ada"},
                "expect": {
                    "http": {
                        "status": 200,
                        "body": "Hello, Ada!",
                        "headers": {"content-type": "text/plain"},
                    }
                },
            },
            {
                "name": "hello by body",
                "function": "hello",
                "inputs": {"req": {"method": "POST", "url": "/api/hello", "body": "Bo"}},
                "expect": {"http": {"body": "Hello, Bo!"}},
            },
            {
                "name": "bytes back",
                "function": "bytes",
                "inputs": {
                    "$trigger": {"method": "POST", "url": "/api/bytes/7", "params": {"n": "7"}}
                },
                "expect": {"http": {"status": 201, "body": {"$bytes": "/wc="}}},
            },
            {
                "name": "queue echo",
                "function": "echo",
                "inputs": {"msg": "m1"},
                "trigger_metadata": {"DequeueCount": {"$json": 3}},
                "expect": {"outputs": {"out": {"$json": {"echo": "m1", "dequeueCount": 3}}}},
            },
        ]
    )
    report = check(worker, app=classic_app(tmp_path), cases=cases)
    expected = {name: NODE_OWN.get(name, Outcome.PASS) for name in outcomes(report)}
    assert outcomes(report) == expected, report.table()
    assert sum(name.startswith("case:") for name in expected) == 4
    assert details(report)["environment-reload"].endswith("then loaded the app's 3 function(s)")
    assert "exited with status 0" in details(report)["stream-end"]


def test_the_node_worker_passes_the_kit_with_a_v4_app(tmp_path: Path) -> None:
    """The v4 model indexes the app itself and names the trigger with a hash: the cases
    name it ``$trigger``. Before environment-reload had a process of its own, this app's
    functions were reported missing (the worker resets its app on a reload, and does not
    run the cached entry point again)."""
    worker = node_worker()
    app = v4_app(tmp_path, functions_v4())
    cases = parse_cases(
        [
            {
                "name": "hello",
                "function": "hello",
                "inputs": {"$trigger": "/api/hello?name=Ada"},
                "expect": {"http": {"status": 200, "body": "Hello, Ada!"}},
            },
            {
                "name": "bytes",
                "function": "bytes",
                "inputs": {
                    "$trigger": {
                        "method": "POST",
                        "url": "/api/bytes/7",
                        "params": {"n": "7"},
                        "body_base64": "YWI=",
                    }
                },
                "expect": {"http": {"status": 201, "body": {"$bytes": "YWL/Bw=="}}},
            },
        ]
    )
    report = check(worker, app=app, cases=cases, worker_indexing=True)
    expected = {name: NODE_OWN.get(name, Outcome.PASS) for name in outcomes(report)}
    assert outcomes(report) == expected, report.table()
    found = details(report)
    assert found["metadata"] == "2 function(s) reported by the worker: hello, bytes"
    assert found["environment-reload"].endswith("then reported and loaded 2 function(s)")
    assert found["restart-load"] == "a fresh process loaded 2 function(s) without metadata"


# -- workerkit host ----------------------------------------------------------------------------


def serve(app: Path, worker: Path) -> HostSubprocess:
    return HostSubprocess(app, worker)


def stop(host: HostSubprocess) -> None:
    """Ctrl-C: the host drains, sends WorkerTerminate and waits for the worker."""
    host.process.send_signal(signal.SIGINT)
    assert host.wait_exit() == 0, host.output
    assert "Host stopped." in host.output


def test_workerkit_host_serves_a_classic_app_with_the_node_worker(tmp_path: Path) -> None:
    worker = node_worker()
    host = serve(classic_app(tmp_path), worker)
    try:
        reply = request("GET", host.url + "/api/hello?name=Ada")
        assert (reply.status, reply.text) == (200, "Hello, Ada!"), host.output
        assert reply.headers["content-type"] == "text/plain"
        reply = request("POST", host.url + "/api/hello", b"Bo")
        assert (reply.status, reply.text) == (200, "Hello, Bo!"), host.output
        reply = request("POST", host.url + "/api/bytes/7")
        assert (reply.status, reply.body) == (201, b"\xff\x07"), host.output
        assert request("POST", host.url + "/api/bytes/seven").status == 404
        reply = request("POST", host.url + "/admin/functions/echo", b'{"input": "m1"}')
        assert reply.status == 202
        host.wait_for(r"output 'out' \(queue\): \{\"echo\":\"m1\",\"dequeueCount\":1\}")
    finally:
        stop(host)


def test_workerkit_host_serves_a_v4_app_with_the_node_worker(tmp_path: Path) -> None:
    worker = node_worker()
    host = serve(v4_app(tmp_path, functions_v4()), worker)
    try:
        reply = request("GET", host.url + "/api/hello?name=Ada")
        assert (reply.status, reply.text) == (200, "Hello, Ada!"), host.output
        reply = request("POST", host.url + "/api/bytes/7", b"ab")
        assert (reply.status, reply.body) == (201, b"ab\xff\x07"), host.output
    finally:
        stop(host)
