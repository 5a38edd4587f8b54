"""``workerkit host`` forwards HTTP requests to a worker that reports ``HttpUri``, as the host's
proxy does (workerkit/emulator/_proxy.py; the host's DefaultHttpProxyService,
RetryProxyHandler and GrpcWorkerChannel). The worker is tests/proxy_worker.py, which serves
HTTP itself; every wait is for an event (a line, a chunk), never for a length of time."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from conftest import arun, until
from emulator_support import (
    HostSubprocess,
    RunningEmulator,
    http_function,
    write_app,
    write_worker,
)
from hypothesis import given
from hypothesis import strategies as st

from workerkit.emulator import Console, EmulatorOptions
from workerkit.emulator._connections import Counted
from workerkit.emulator._httpuri import HttpUriError, forwarded_headers, parse_http_uri
from workerkit.emulator._proxy import HttpProxy, ProxiedRequest

PROXY_WORKER = Path(__file__).resolve().parent / "proxy_worker.py"
EXECUTING = r"Executing 'Functions\.{name}' \(Reason=.*?, Id=([^)\s]+)\)(?: on worker pid (\d+))?"


def proxy_worker(root: Path, **process_options: str) -> Path:
    """A worker directory whose worker.config.json starts tests/proxy_worker.py."""
    return write_worker(
        root,
        process_options=process_options,
        description={"defaultWorkerPath": str(PROXY_WORKER)},
    )


def started(
    root: Path,
    functions: dict[str, Any],
    *,
    settings: dict[str, str] | None = None,
    host: dict[str, Any] | None = None,
    verbose: bool = False,
    **process_options: str,
) -> RunningEmulator:
    app = write_app(root, functions, settings=settings, host=host)
    options = EmulatorOptions(app, proxy_worker(root, **process_options), port=0)
    running = RunningEmulator(options, verbose=verbose).start()
    assert running.start_error is None, running.output
    return running


def connection(running: RunningEmulator) -> http.client.HTTPConnection:
    parts = urlsplit(running.url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)


def executed(running: RunningEmulator, name: str) -> list[tuple[str, str]]:
    """(invocation id, worker pid or "") of each "Executing" line of function `name`."""
    return re.findall(EXECUTING.format(name=re.escape(name)), running.output)


def worker_says(running: RunningEmulator, event: str, invocation_id: str) -> str:
    """Wait for the line tests/proxy_worker.py prints on stderr for `event`."""
    return running.wait_for(f"PW {event} {invocation_id}", what=f"the worker's {event} line")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    running = started(
        tmp_path_factory.mktemp("proxied"),
        {
            "echo": http_function(["get", "post", "put"]),
            "echo-items": http_function(["get"], route="items/{id}/{rest?}"),
            "stream": http_function(["get"]),
            "pipe": http_function(["post"]),
            "fail": http_function(["get"]),
            "failempty": http_function(["get"]),
        },
        settings={"PW_MATCH_TIMEOUT": "5"},
    )
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def timing_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """Functions whose worker never completes one side of the call: the function timeout
    (2 s) ends them."""
    running = started(
        tmp_path_factory.mktemp("timing-out"),
        {"silent": http_function(["get"]), "held": http_function(["get"])},
        host={"functionTimeout": "00:00:02"},
    )
    yield running
    assert running.stop() == 0


# -- what is forwarded -----------------------------------------------------------------------
def test_the_request_goes_to_the_worker_with_the_hosts_headers_and_an_empty_rpc_http(
    proxied: RunningEmulator,
) -> None:
    """DefaultHttpProxyService.StartForwarding: the request (method, path and query, headers,
    body) with x-ms-invocation-id; YARP's default transforms set X-Forwarded-For/-Host/-Proto
    (the client's own are replaced), drop Forwarded and hop-by-hop headers and send the
    worker's authority as Host. The InvocationRequest carries an empty RpcHttp
    (GrpcMessageConversionExtensions.ToRpcHttp)."""
    conn = connection(proxied)
    conn.request(
        "POST",
        "/api/echo?name=Ada&x=%2F1",
        body=b'{"a": 1}',
        headers={
            "Content-Type": "application/json",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "elsewhere.example",
            "X-Forwarded-Prefix": "/prefix",
            "Forwarded": "for=203.0.113.9",
            "Keep-Alive": "timeout=5",
            "X-Custom": "kept",
        },
    )
    reply = conn.getresponse()
    seen = json.loads(reply.read())
    assert reply.status == 200
    invocation_id = seen["invocation_id"]
    assert (invocation_id, "") in executed(proxied, "echo")
    headers = [(name.lower(), value) for name, value in seen["headers"]]
    names = [name for name, _ in headers]
    uri = re.search(r"serves HTTP at (\S+) \(HttpUri\)", proxied.output)
    assert uri is not None
    assert ("host", urlsplit(uri.group(1)).netloc) in headers
    assert ("x-ms-invocation-id", invocation_id) in headers
    assert ("x-forwarded-for", "127.0.0.1") in headers
    assert ("x-forwarded-host", urlsplit(proxied.url).netloc) in headers
    assert ("x-forwarded-proto", "http") in headers
    assert ("x-custom", "kept") in headers and ("content-length", "8") in headers
    for gone in ("forwarded", "x-forwarded-prefix", "keep-alive"):
        assert gone not in names
    assert names.count("x-forwarded-for") == names.count("x-forwarded-host") == 1
    assert (seen["method"], seen["path_qs"], seen["body"]) == (
        "POST",
        "/api/echo?name=Ada&x=%2F1",
        '{"a": 1}',
    )
    assert (seen["input_kind"], seen["input_empty"]) == ("http", True)
    # the binding data still has the query and headers (not the JSON body: it is streamed)
    assert {"Query", "Headers", "name", "x"} <= set(seen["metadata"])
    assert "a" not in seen["metadata"]
    proxied.wait_for(f"Executed 'Functions.echo' (Succeeded, Id={invocation_id}")


def test_route_parameters_go_only_to_a_worker_that_requires_them(tmp_path: Path) -> None:
    """ToRpcHttp: with HttpUri and RequiresRouteParameters the RpcHttp holds the route
    parameters (nullable ones with UseNullableValueDictionaryForHttp), nothing else."""
    caps = {"RequiresRouteParameters": "true", "UseNullableValueDictionaryForHttp": "true"}
    running = started(
        tmp_path,
        {"echo-items": http_function(["get"], route="items/{id}/{rest?}")},
        settings={"PW_CAPS": json.dumps(caps)},
    )
    try:
        seen = running.request("GET", "/api/items/7").json()
        assert (seen["params"], seen["nullable_params"]) == ({}, {"id": "7"})
        assert seen["path_qs"] == "/api/items/7"
    finally:
        assert running.stop() == 0


def test_without_required_route_parameters_the_rpc_http_stays_empty(
    proxied: RunningEmulator,
) -> None:
    seen = proxied.request("GET", "/api/items/7/more").json()
    assert (seen["input_empty"], seen["params"], seen["nullable_params"]) == (True, {}, {})
    assert seen["path_qs"] == "/api/items/7/more"


def test_a_client_sent_invocation_id_is_replaced_as_the_host_replaces_it(
    proxied: RunningEmulator,
) -> None:
    """DefaultHttpProxyService sets x-ms-invocation-id, "override existing header if present"
    (src/WebJobs.Script/Http/DefaultHttpProxyService.cs, commit 1057af80): a client's own
    header does not keep the worker from pairing the request with its invocation."""
    reply = proxied.request("PUT", "/api/echo", b"ping", {"x-ms-invocation-id": "mine"})
    assert reply.status == 200
    seen = json.loads(reply.body)
    ids = [value for name, value in seen["headers"] if name.lower() == "x-ms-invocation-id"]
    assert ids == [seen["invocation_id"]] and seen["body"] == "ping"


# -- streaming -------------------------------------------------------------------------------
def test_a_streamed_response_arrives_chunk_by_chunk(
    proxied: RunningEmulator, tmp_path: Path
) -> None:
    """YARP copies the response body as it comes (StreamCopier flushes each read): the worker
    writes line k+1 only after the test has read line k (it waits on a FIFO the test writes
    to), so every line must have arrived before the response ended."""
    fifo = tmp_path / "signal"
    os.mkfifo(fifo)
    signal = os.open(fifo, os.O_RDWR)  # a writer, so the worker's open does not block
    try:
        conn = connection(proxied)
        conn.request("GET", f"/api/stream?n=3&signal={fifo}")
        reply = conn.getresponse()
        assert reply.status == 200 and reply.getheader("Content-Type") == "text/plain"
        assert reply.getheader("Transfer-Encoding") == "chunked"
        for index in range(3):
            assert reply.readline() == f"line {index}\n".encode()
            os.write(signal, b"next\n")
        assert reply.read() == b""
    finally:
        os.close(signal)


def test_the_request_body_is_streamed_to_the_worker_and_back(proxied: RunningEmulator) -> None:
    """The body goes to the worker as the client sends it (not read whole first): the worker
    echoes each chunk at once, and the test sends the next chunk only after it has read the
    echo of the previous one."""
    conn = connection(proxied)
    conn.putrequest("POST", "/api/pipe")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"6\r\nalpha\n\r\n")
    reply = conn.getresponse()
    assert reply.status == 200
    assert reply.readline() == b"alpha\n"
    conn.send(b"6\r\nomega\n\r\n")
    assert reply.readline() == b"omega\n"
    conn.send(b"0\r\n\r\n")
    assert reply.read() == b""


# -- the invocation and the HTTP answer ------------------------------------------------------
def test_a_failed_invocation_cuts_a_response_already_started(proxied: RunningEmulator) -> None:
    """GrpcWorkerChannel.InvokeResponse fails the invocation; the exception reaches
    ExceptionMiddleware after the response started, so the client gets the worker's body but
    no proper end (a cut connection, not a truncated body taken for a whole one)."""
    conn = connection(proxied)
    conn.request("GET", "/api/fail")
    reply = conn.getresponse()
    assert reply.status == 200
    assert reply.readline() == b"partial\n"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        reply.read()
    proxied.wait_for("fail failed on purpose")


def test_a_failed_invocation_without_a_body_sent_is_a_500(proxied: RunningEmulator) -> None:
    """Nothing sent yet (an empty body): ExceptionMiddleware answers 500 instead of the
    worker's 200."""
    reply = proxied.request("GET", "/api/failempty")
    assert (reply.status, reply.body) == (500, b"")
    ((invocation_id, _),) = executed(proxied, "failempty")
    proxied.wait_for(f"Executed 'Functions.failempty' (Failed, Id={invocation_id}")


def test_a_response_is_completed_only_with_its_invocation(timing_out: RunningEmulator) -> None:
    """The worker sent its whole HTTP answer but not the InvocationResponse: the host ends
    the response only after the invocation (the HTTP pipeline awaits it), so at the function
    timeout the client's response is cut; the worker gets InvocationCancel."""
    conn = connection(timing_out)
    conn.request("GET", "/api/held")
    reply = conn.getresponse()
    assert reply.readline() == b"held\n"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        reply.read()
    ((invocation_id, _),) = executed(timing_out, "held")
    timing_out.wait_for("Timeout value of 0:00:02 was exceeded by function: Functions.held")
    worker_says(timing_out, "cancelled", invocation_id)


def test_the_function_timeout_aborts_a_request_the_worker_never_answers(
    timing_out: RunningEmulator,
) -> None:
    """The worker answered the invocation, never the HTTP request: the invocation waits for
    the forwarding (EnsureSuccessfulForwardingAsync) until the function timeout, the client
    gets 500 and the forwarded request is aborted (the worker sees its connection close)."""
    reply = timing_out.request("GET", "/api/silent")
    assert (reply.status, reply.body) == (500, b"")
    ((invocation_id, _),) = executed(timing_out, "silent")
    worker_says(timing_out, "aborted", invocation_id)
    timing_out.wait_for("Timeout value of 0:00:02 was exceeded by function: Functions.silent")


def test_a_client_that_goes_away_cancels_the_invocation_and_the_forwarding(
    proxied: RunningEmulator, tmp_path: Path
) -> None:
    """The function's cancellation token is the request's RequestAborted
    (FunctionInvocationMiddleware): InvocationCancel goes to the worker, and the forwarded
    request is aborted (YARP's token is linked to it), here while the worker streams."""
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    signal = os.open(fifo, os.O_RDWR)  # never written: the worker's second line never comes
    try:
        conn = connection(proxied)
        conn.request("GET", f"/api/stream?n=2&signal={fifo}")
        reply = conn.getresponse()
        assert reply.readline() == b"line 0\n"
        invocation_id = executed(proxied, "stream")[-1][0]  # (tests run one at a time)
        conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        conn.close()
        worker_says(proxied, "aborted", invocation_id)
        worker_says(proxied, "cancelled", invocation_id)
        proxied.wait_for(f"Executed 'Functions.stream' (Failed, Id={invocation_id}")
    finally:
        os.close(signal)  # the worker's blocked read of the FIFO ends


# -- where requests go -----------------------------------------------------------------------
def test_each_worker_process_gets_the_requests_of_its_own_invocations(tmp_path: Path) -> None:
    """Several worker processes, each with its own HttpUri: a request goes to the worker its
    invocation went to (round robin, RpcFunctionInvocationDispatcherLoadBalancer)."""
    running = started(
        tmp_path,
        {"echo": http_function(["get"])},
        settings={"FUNCTIONS_WORKER_PROCESS_COUNT": "2"},
        processStartupInterval="00:00:00",
    )
    try:
        running.wait_for("(2 of 2 ready)")
        served = [running.request("GET", "/api/echo").json() for _ in range(4)]
        named = dict(executed(running, "echo"))
        assert all(int(named[seen["invocation_id"]]) == seen["pid"] for seen in served)
        assert len({seen["pid"] for seen in served}) == 2
        assert len(re.findall(r"serves HTTP at \S+ \(HttpUri\)", running.output)) == 2
    finally:
        assert running.stop() == 0


def test_an_http_uri_naming_another_host_is_refused(tmp_path: Path) -> None:
    """workerkit host connects only to this machine: an HttpUri naming another host is
    refused (a console error at init, and for each request a 500 without invoking)."""
    running = started(
        tmp_path, {"echo": http_function(["get"])}, settings={"PW_URI": "http://192.0.2.7:8080/"}
    )
    try:
        running.wait_for("names 192.0.2.7:8080: workerkit host forwards HTTP requests only to")
        reply = running.request("GET", "/api/echo")
        assert (reply.status, reply.body) == (500, b"")
        running.wait_for("Function 'echo': HttpUri 'http://192.0.2.7:8080/' names 192.0.2.7")
        assert executed(running, "echo") == []
    finally:
        assert running.stop() == 0


def test_an_http_uri_that_is_no_uri_is_a_worker_error(tmp_path: Path) -> None:
    """GrpcWorkerChannel.ApplyCapabilities: new Uri(HttpUri) throws, a worker error (the
    worker is restarted until the host gives up)."""
    app = write_app(tmp_path, {"echo": http_function(["get"])}, settings={"PW_URI": "nowhere"})
    running = RunningEmulator(EmulatorOptions(app, proxy_worker(tmp_path), port=0)).start()
    assert running.start_error is not None
    assert "HttpUri 'nowhere' is not an absolute URI" in str(running.start_error)


def test_refused_connections_are_retried_as_the_host_retries_them(
    tmp_path: Path,
) -> None:
    """RetryProxyHandler: 10 attempts, 50 ms doubling to at most 250 ms between them (told
    on a verbose console); then the call fails (ForwarderError.Request) and, as nothing was
    sent, the client gets 500 once the invocation is over."""
    with socket.socket() as probe:  # a port nothing listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = started(
        tmp_path,
        {"echo": http_function(["get"])},
        settings={"PW_URI": f"http://127.0.0.1:{port}/", "PW_MATCH_TIMEOUT": "1"},
        verbose=True,
    )
    try:
        reply = running.request("GET", "/api/echo", timeout=90)
        assert (reply.status, reply.body) == (500, b"")
        delays = re.findall(r"Retrying in (\d+)ms\. Attempt (\d+) of 10\.", running.output)
        assert delays == [
            (str(ms), str(n))
            for n, ms in enumerate([50, 100, 200, 250, 250, 250, 250, 250, 250], start=1)
        ]
        running.wait_for(f"could not connect to the worker's HttpUri http://127.0.0.1:{port}/")
        running.wait_for("Failed to proxy request with ForwarderError: Request")
    finally:
        assert running.stop() == 0


# -- the proxy on its own: a late server, the activity timeout ---------------------------------
class _Front:
    """An aiohttp front door of the test's own that forwards every request through
    `ProxiedRequest` to `target` and finishes it as succeeded."""

    def __init__(self, target: str, activity_timeout: float = 240.0) -> None:
        self.lines: list[str] = []
        console = Console(self, color=False, verbose=True)  # type: ignore[arg-type]
        self.proxy = HttpProxy(
            console,
            max_body_size=1 << 20,
            min_data_rate=240.0,
            data_rate_grace=5.0,
            activity_timeout=activity_timeout,
        )
        self.target = parse_http_uri(target)
        self.errors: list[str | None] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async def no_body() -> bytes | None:
            return None

        protocol = request.transport.get_protocol() if request.transport else None
        proxied = ProxiedRequest(
            self.proxy,
            request,
            request.rel_url.raw_path_qs,
            read_body=no_body,
            lost=protocol.lost if isinstance(protocol, Counted) else None,
        )
        self.errors.append(await proxied.start(self.target, "id-1"))
        await proxied.finish(self.errors[-1] is None)
        return proxied.answer or web.Response(status=500)


async def _serve(handler: Any) -> tuple[web.AppRunner, int]:
    """An aiohttp server on a free loopback port (handlers not cancelled when a client goes
    away, as in the emulator's front door)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def test_a_worker_server_that_comes_up_late_still_gets_the_request() -> None:
    """RetryProxyHandler retries refused connections: a worker whose server listens only
    after the second refusal gets the request (the test waits for that refusal's line)."""

    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        front = _Front(f"http://127.0.0.1:{port}")
        front_runner, front_port = await _serve(front.handle)

        async def worker(request: web.Request) -> web.Response:
            return web.Response(text=f"late {request.headers['x-ms-invocation-id']}")

        worker_runner: web.AppRunner | None = None
        try:
            loop = asyncio.get_running_loop()
            reply = loop.run_in_executor(None, lambda: _get(f"http://127.0.0.1:{front_port}/api/x"))
            await until(lambda: any("Attempt 2 of 10" in line for line in front.lines))
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", worker)
            worker_runner = web.AppRunner(app)
            await worker_runner.setup()
            await web.TCPSite(worker_runner, "127.0.0.1", port).start()
            assert await reply == (200, b"late id-1")
            await until(lambda: bool(front.errors))
            assert front.errors == [None]
        finally:
            if worker_runner is not None:
                await worker_runner.cleanup()
            await front_runner.cleanup()
            await front.proxy.close()

    arun(scenario())


def test_the_activity_timeout_gives_up_a_worker_that_stops_sending() -> None:
    """ForwarderRequestConfig.ActivityTimeout (240 s in the host, 0.5 s here): a worker that
    sent part of its body and then nothing is given up (ResponseBodyCanceled) and the client's
    connection is cut; progress resets the clock."""

    async def scenario() -> None:
        release = asyncio.Event()

        async def worker(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first\n")
            await release.wait()  # until the test is done
            return response

        worker_runner, worker_port = await _serve(worker)
        front = _Front(f"http://127.0.0.1:{worker_port}/", activity_timeout=0.5)
        front_runner, front_port = await _serve(front.handle)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", front_port)
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: test\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readuntil(b"first\n")
            assert await reader.read() == b"\r\n"  # cut: no last chunk (0) comes
            await until(lambda: bool(front.errors))
            assert (front.errors[0] or "").startswith("ResponseBodyCanceled: no progress for")
            writer.close()
        finally:
            release.set()
            await front_runner.cleanup()
            await worker_runner.cleanup()
            await front.proxy.close()

    arun(scenario())


def _get(url: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("GET", parts.path)
    reply = conn.getresponse()
    return reply.status, reply.read()


# -- the pure parts --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "address", "authority", "url"),
    [
        ("http://127.0.0.1:5555", "127.0.0.1", "127.0.0.1:5555", "http://127.0.0.1:5555/api/x"),
        ("http://localhost:55000/", "127.0.0.1", "localhost:55000", "http://127.0.0.1:55000/api/x"),
        ("http://[::1]:80/base/", "::1", "[::1]", "http://[::1]:80/base/api/x"),
    ],
)
def test_loopback_http_uris_are_accepted(uri: str, address: str, authority: str, url: str) -> None:
    """The Node.js worker reports http://localhost:<port>/, the Python one 127.0.0.1; a
    path prefix is kept (YARP's MakeDestinationAddress)."""
    target = parse_http_uri(uri)
    assert (target.address, target.authority, target.url("/api/x")) == (address, authority, url)


@pytest.mark.parametrize(
    ("uri", "invalid"),
    [
        ("nowhere", True),
        ("http://127.0.0.1:99999/", True),
        ("https://127.0.0.1:5555/", False),
        ("http://10.0.0.1:80/", False),
        ("http://127.0.0.2:80/", False),
        ("http://example.com/", False),
    ],
)
def test_other_http_uris_are_refused(uri: str, invalid: bool) -> None:
    with pytest.raises(HttpUriError) as caught:
        parse_http_uri(uri)
    assert caught.value.invalid is invalid


def test_forwarded_headers_replace_a_clients_own_invocation_id() -> None:
    target = parse_http_uri("http://127.0.0.1:5555/")
    headers, own = forwarded_headers(
        [("Host", "h:1"), ("X-MS-Invocation-Id", "mine"), ("Expect", "100-continue")],
        invocation_id="real",
        target=target,
        client_address="::1",
        scheme="http",
    )
    assert own == "mine"
    assert headers == [
        ("Host", "127.0.0.1:5555"),
        ("x-ms-invocation-id", "real"),
        ("X-Forwarded-For", "::1"),
        ("X-Forwarded-Host", "h:1"),
        ("X-Forwarded-Proto", "http"),
    ]


# -- end to end with workerkit's own HTTP streaming -------------------------------------------
def test_a_workerkit_worker_streams_server_sent_events_through_workerkit_host(
    tmp_path: Path,
) -> None:
    """WORKERKIT_HTTP_STREAMING=true (an app setting) makes a workerkit worker report HttpUri;
    `workerkit host`, run as a user runs it, relays each event as the function's async
    iterator yields it: the function yields event k+1 only after the test has read event k."""
    app = write_app(
        tmp_path,
        {"countdown": http_function(["get"])},
        settings={"PW_SDK": "1", "WORKERKIT_HTTP_STREAMING": "true"},
    )
    fifo = tmp_path / "signal"
    os.mkfifo(fifo)
    signal = os.open(fifo, os.O_RDWR)
    host = HostSubprocess(app, proxy_worker(tmp_path))
    try:
        host.wait_for(r"serves HTTP at http://127\.0\.0\.1:\d+/? \(HttpUri\)")
        parts = urlsplit(host.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        conn.request("GET", f"/api/countdown?n=3&signal={fifo}")
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Type", "").startswith("text/event-stream")
        for index in range(3):
            assert reply.readline() == f"data: {index}\n".encode()
            assert reply.readline() == b"\n"
            os.write(signal, b"next\n")
        assert reply.read() == b""
        host.wait_for(r"Executed 'Functions\.countdown' \(Succeeded")
    finally:
        host.close()
        os.close(signal)


HEADER_NAMES = st.sampled_from(
    ["Host", "Connection", "X-Forwarded-For", "x-forwarded-host", "Forwarded", "TE", "Expect",
     "x-ms-invocation-id", "X-Custom", "Content-Type", "Keep-Alive", "Upgrade"]
) | st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)  # fmt: skip


@given(
    client=st.lists(st.tuples(HEADER_NAMES, st.text("abc ,;=:/.", max_size=8)), max_size=12),
    address=st.sampled_from(["127.0.0.1", "::1", None]),
)
def test_forwarded_headers_follow_the_hosts_rules_for_any_client_headers(
    client: list[tuple[str, str]], address: str | None
) -> None:
    """Whatever the client sends: no hop-by-hop header, Forwarded or Expect goes on; Host is
    the worker's, once; X-Forwarded-For/-Proto once (and -Host once when the client sent a
    non-empty Host), the host's values; x-ms-invocation-id ours, once, whatever the client sent."""
    target = parse_http_uri("http://localhost:7000/")
    headers, own = forwarded_headers(
        client, invocation_id="ours", target=target, client_address=address, scheme="http"
    )
    names = [name.lower() for name, _ in headers]
    assert not {"connection", "te", "keep-alive", "upgrade", "forwarded", "expect"} & set(names)
    assert [v for n, v in headers if n.lower() == "host"] == ["localhost:7000"]
    assert [v for n, v in headers if n.lower() == "x-forwarded-proto"] == ["http"]
    forwarded_for = [v for n, v in headers if n.lower() == "x-forwarded-for"]
    assert forwarded_for == ([address] if address else [])
    hosts = [v for n, v in client if n.lower() == "host"]
    # (an empty Host has no value: Request.Host.HasValue is false)
    assert [v for n, v in headers if n.lower() == "x-forwarded-host"] == [h for h in hosts[:1] if h]
    ids = [v for n, v in client if n.lower() == "x-ms-invocation-id"]
    assert own == (ids[0] if ids else None)
    assert [v for n, v in headers if n.lower() == "x-ms-invocation-id"] == ["ours"]


URIS = st.text(max_size=40) | st.builds(
    "http://{}:{}/".format, st.text(max_size=12), st.integers(-5, 70000)
)


@given(URIS)
def test_an_http_uri_is_accepted_only_for_this_machine(uri: str) -> None:
    """Any text: parse_http_uri either refuses it (HttpUriError, nothing else) or gives a
    loopback address to connect to."""
    try:
        target = parse_http_uri(uri)
    except HttpUriError:
        return
    assert target.address in ("127.0.0.1", "::1")
    assert 0 <= target.port <= 65535
