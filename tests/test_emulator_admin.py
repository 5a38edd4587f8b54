"""``workerkit host`` answering as the host answers (issue 14): an HTTP function without HTTP
output (item 14), the host's own endpoints and root page (item 16), a worker that wants its
HTTP requests proxied (item 19). Real HTTP requests on 127.0.0.1 to an emulator serving
tests/emulator_worker.py in a real subprocess; the host's code for each answer is named in
workerkit/emulator/_admin.py and _dispatch.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator_support import (
    RunningEmulator,
    http_function,
    trigger_function,
    write_app,
    write_worker,
)

from workerkit.emulator import EmulatorOptions
from workerkit.emulator._admin import host_id

QUEUE = {"type": "queueTrigger", "queueName": "q"}
HTTP_IN_ONLY = {
    "scriptFile": "run.txt",
    "bindings": [
        {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "anonymous"}
    ],
}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    root = tmp_path_factory.mktemp("admin")
    app = write_app(
        root,
        {
            "silent": HTTP_IN_ONLY,  # no HTTP output binding: fn_record returns nothing
            "echo": http_function(["get"]),
            "Warmup": trigger_function({"type": "WarmupTrigger"}),
            "queue": trigger_function(QUEUE),
        },
    )
    options = EmulatorOptions(app, write_worker(root), port=0, environ=os.environ)
    running = RunningEmulator(options).start()
    assert running.start_error is None, running.output
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def proxying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """A worker declaring ``HttpUri`` (HTTP proxying); the home page disabled."""
    root = tmp_path_factory.mktemp("proxying")
    app = write_app(
        root,
        {"echo": http_function(["get"]), "queue": trigger_function(QUEUE)},
        settings={
            "WK_CAPS": json.dumps({"HttpUri": "http://127.0.0.1:9/"}),
            "AzureWebJobsDisableHomepage": "TRUE",
        },
    )
    options = EmulatorOptions(app, write_worker(root), port=0, environ=os.environ)
    running = RunningEmulator(options).start()
    assert running.start_error is None, running.output
    yield running
    assert running.stop() == 0


# -- item 14 --------------------------------------------------------------------------------
def test_an_http_function_without_http_output_answers_204(host: RunningEmulator) -> None:
    """No HTTP output binding: the HTTP trigger's return-value handler stores
    ObjectResult(null), which ASP.NET Core writes as 204 (HttpBinding.SetResponse)."""
    reply = host.request("GET", "/api/silent")
    assert (reply.status, reply.body) == (204, b"")
    assert "Content-Type" not in reply.headers
    host.wait_for("Executed 'Functions.silent' (Succeeded")


# -- item 16 --------------------------------------------------------------------------------
def test_ping_answers_200_without_a_body_and_uncached(host: RunningEmulator) -> None:
    """HostController.Ping: GET or POST, Ok(), ResponseCache(NoStore, Location None)."""
    for method in ("GET", "POST"):
        reply = host.request(method, "/admin/host/ping")
        assert (reply.status, reply.body) == (200, b""), method
        assert reply.headers["Cache-Control"] == "no-store,no-cache"
        assert reply.headers["Pragma"] == "no-cache"
    # another method matches no action (the host routes MVC the legacy way): an empty 404
    reply = host.request("PUT", "/admin/host/ping", b"")
    assert (reply.status, reply.body) == (404, b"")
    reply = host.request("GET", "/admin/nothing")
    assert (reply.status, reply.body) == (404, b"")


def test_status_is_the_hosts_json(host: RunningEmulator) -> None:
    """HostController.GetHostStatus: the HostStatus members the host fills locally, in its
    order; the local host id from the machine name and the app's path."""
    reply = host.request("GET", "/admin/host/status")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    status = reply.json()
    platform = [  # App Service settings: null when unset, and the host leaves nulls out
        member
        for member, setting in (
            ("platformVersion", "WEBSITE_PLATFORM_VERSION"),
            ("instanceId", "WEBSITE_INSTANCE_ID"),
            ("computerName", "COMPUTERNAME"),
        )
        if os.environ.get(setting)
    ]
    assert list(status) == [
        "id",
        "state",
        "version",
        "versionDetails",
        *platform,
        "processUptime",
        "functionAppContentEditingState",
    ]
    assert status["state"] == "Running" and status["version"] == "4.1037.0.0"
    assert status["functionAppContentEditingState"] == "Unknown"
    assert isinstance(status["processUptime"], int) and status["processUptime"] >= 0
    assert status["id"] == host_id(host.emulator.app_dir, os.environ)
    assert re.fullmatch(r"[a-z0-9]*-[0-9]+", status["id"]) and len(status["id"]) <= 32
    assert host.request("POST", "/admin/host/status", b"").status == 404  # [HttpGet] only


def test_the_host_id_is_the_machine_name_and_a_hash_of_the_app_path() -> None:
    """ScriptHostIdProvider.GetDefaultHostId and Utility.GetStableHash, worked by hand: 23,
    then times 31 plus each UTF-16 code unit, as a 32-bit integer."""
    machine = "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum()).lower()
    assert host_id(Path("a"), {}) == f"{machine}-{23 * 31 + ord('a')}"[:32]
    hashed = host_id(Path("/" + "z" * 40), {}).rsplit("-", 1)[1]
    assert hashed.isdigit() and int(hashed) <= 2**31  # the absolute value of an int
    assert host_id(Path("a"), {"AZUREFUNCTIONSWEBHOST__HOSTID": "mine"}) == "mine"


def test_the_root_page(host: RunningEmulator, proxying: RunningEmulator) -> None:
    """HomepageMiddleware: "/" that no function takes, any method: 200 text/html; 204 with
    AzureWebJobsDisableHomepage true (any case)."""
    for method in ("GET", "POST"):
        reply = host.request(method, "/", b"" if method == "POST" else None)
        assert reply.status == 200 and reply.headers["Content-Type"] == "text/html"
        assert "up and running" in reply.text
    reply = proxying.request("GET", "/")
    assert (reply.status, reply.body) == (204, b"")
    assert host.request("GET", "/other").status == 404


def test_warmup_runs_the_warmup_function_once(host: RunningEmulator) -> None:
    """/admin/warmup (any method): the function named Warmup with a warmupTrigger runs with
    the host's WarmupContext ({} as JSON) on the first request only (ScriptRouteHandler's
    once-per-process flag); every request is answered 200 without a body."""
    reply = host.request("POST", "/admin/warmup", b"")
    assert (reply.status, reply.body) == (200, b"")
    (record,) = host.records("Warmup")
    assert (record["kind"], record["value"]) == ("json", {})
    again = host.request("GET", "/admin/warmup/")
    assert (again.status, again.body) == (200, b"")
    assert len(host.invocation_ids("Warmup")) == 1  # answered without running it again


# -- item 19, and issue 15 ------------------------------------------------------------------
def test_a_worker_declaring_http_uri_gets_its_requests_forwarded(proxying: RunningEmulator) -> None:
    """The host forwards an HTTP request to the worker's HttpUri (DefaultHttpProxyService):
    nothing listens at 127.0.0.1:9, so after the host's 10 connect attempts
    (RetryProxyHandler) the forwarding fails, and so does the invocation once the worker has
    answered it (GrpcWorkerChannel.InvokeResponse awaits the forwarding): an empty 500."""
    assert "serves HTTP at http://127.0.0.1:9/ (HttpUri)" in proxying.output
    reply = proxying.request("GET", "/api/echo", timeout=60)
    assert (reply.status, reply.body) == (500, b"")
    proxying.wait_for("could not connect to the worker's HttpUri http://127.0.0.1:9/ in 10")
    (invocation_id,) = proxying.invocation_ids("echo")
    proxying.wait_for(f"Executed 'Functions.echo' (Failed, Id={invocation_id}")
    assert "Failed to proxy request with ForwarderError: Request" in proxying.output
    # other triggers are not proxied: they run as usual
    body = json.dumps({"input": "hello"}).encode()
    assert proxying.request("POST", "/admin/functions/queue", body).status == 202
    proxying.wait_for(lambda _: bool(proxying.records("queue")), what="the queue invocation")
