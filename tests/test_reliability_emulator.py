"""Hostile and slow HTTP clients against `workerkit host`: real sockets on loopback only.

Invariant: every request is answered (or its connection closed), slow clients are cut off,
the emulator keeps serving, memory stays bounded, and nothing a client sends reaches a
function as a path outside its route. Each scenario is bounded in count; waits are bounded
only to catch a hang (`HANG`): no verdict depends on how fast the machine is. How long things
took is printed (``pytest -s``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import eventually
from emulator_support import (
    HostSubprocess,
    RunningEmulator,
    alive,
    http_function,
    request,
    write_app,
    write_worker,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit.emulator import EmulatorOptions, discover_functions
from workerkit.emulator._emulator import exposure_warning
from workerkit.emulator._http import normalize_path

pytestmark = pytest.mark.reliability

HEADER_TIMEOUT = 1.0
GRACE = 0.5
RATE = 8 * 1024 * 1024  # bytes/s: high, so a client that does not read trips it quickly
LIMIT = 1024 * 1024
#: Seconds any one wait may take before the test fails: only there to catch a hang.
HANG = 30.0


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """An emulator with short client timeouts and a 1 MiB body limit."""
    root = tmp_path_factory.mktemp("strict")
    app = write_app(
        root,
        {
            "echo": http_function(),
            "echo-files": http_function(None, route="files/{*path}"),
            "echo-one": http_function(["get"], route="one/{name}"),
        },
    )
    options = EmulatorOptions(
        app,
        write_worker(root),
        port=0,
        max_body_size=LIMIT,
        header_timeout=HEADER_TIMEOUT,
        min_data_rate=RATE,
        data_rate_grace=GRACE,
    )
    running = RunningEmulator(options).start()
    assert running.start_error is None, running.output
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.output


def address(running: RunningEmulator) -> tuple[str, int]:
    host, port = running.url.split("//", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


def read_until_closed(sock: socket.socket, what: str) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(
                f"{what}: the emulator neither answered nor closed the connection within"
                f" {HANG:g} s; got {received[:200]!r}"
            ) from None
        if not chunk:
            return received
        received += chunk


def exchange(
    running: RunningEmulator, data: bytes, *, half_close: bool = False
) -> tuple[bytes, float]:
    """Send `data` (then end the sending side, if `half_close`), read until the server closes;
    (bytes read, seconds: for printing only)."""
    started = time.monotonic()
    with socket.create_connection(address(running), timeout=HANG) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us while sending: what was answered is still readable, or not
        received = read_until_closed(sock, f"after {data[:60]!r}")
    return received, time.monotonic() - started


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/\d\.\d (\d{3}) ", response)
    return int(match.group(1)) if match else None


def still_serving(running: RunningEmulator) -> None:
    assert request("GET", running.url + "/admin/host/status").status == 200
    reply = request("GET", running.url + "/api/echo?alive=1")
    assert reply.status == 200 and reply.json()["query"] == {"alive": "1"}


# -- malformed HTTP --------------------------------------------------------------------------

MALFORMED = {
    "binary garbage": b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
    "no request line": b"\r\n\r\n\r\n",
    "method only": b"GET\r\n\r\n",
    "unknown version": b"GET /api/echo HTTP/9.9\r\nHost: x\r\n\r\n",
    "no version": b"GET /api/echo\r\nHost: x\r\n\r\n",
    "relative target": b"GET api/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /api/echo HTTP/1.1\r\nHost x\r\n\r\n",
    "space before colon": b"GET /api/echo HTTP/1.1\r\nHost : x\r\n\r\n",
    "obsolete line folding": b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "bare LF in header": b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-A: b\nc\r\n\r\n",
    "NUL in header": b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "Content-Length not a number": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
    ),
    "negative Content-Length": b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "two Content-Lengths": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    ),
    "Content-Length overflow": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
    ),
    "Content-Length and chunked": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "bad chunk size": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
    ),
    "unknown transfer coding": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: rot13\r\n\r\nabc"
    ),
    "body shorter than Content-Length": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
    ),
    "truncated head": b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-A: ",
}


@pytest.mark.parametrize(("name", "data"), MALFORMED.items(), ids=MALFORMED.keys())
def test_malformed_http_is_answered_4xx_or_closed_and_the_emulator_keeps_serving(
    strict: RunningEmulator, name: str, data: bytes
) -> None:
    reply, seconds = exchange(strict, data)  # answered, or cut off by the header timeout
    status = status_of(reply)
    assert reply == b"" or (status is not None and 400 <= status < 500), reply[:200]
    print(f"\n{name}: {status or 'no answer'}, connection closed after {seconds:.2f} s")
    still_serving(strict)


def test_a_client_leaving_in_the_middle_of_its_body_is_no_emulator_error(
    strict: RunningEmulator,
) -> None:
    for _ in range(5):
        with socket.create_connection(address(strict), timeout=HANG) as sock:
            sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
            time.sleep(0.05)
    strict.wait_for(lambda out: out.count("the request body broke off after 3 bytes") == 5)
    assert "emulator error" not in strict.output
    still_serving(strict)


def test_random_bytes_never_break_the_front_door(strict: RunningEmulator) -> None:
    rng = random.Random(6)
    prefixes = [b"", b"GET / HTTP/1.1\r\n", b"POST /api/echo HTTP/1.1\r\nContent-Length: 5\r\n"]
    statuses = set()
    slowest = 0.0
    for _ in range(150):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        reply, seconds = exchange(strict, rng.choice(prefixes) + noise, half_close=True)
        slowest = max(slowest, seconds)
        statuses.add(status_of(reply))
    print(f"\n150 random requests: each answered or closed, the slowest after {slowest:.2f} s")
    assert statuses <= {None, 400, 404, 405, 413, 431} | set(range(200, 300)), statuses
    still_serving(strict)
    assert "emulator error" not in strict.output


# -- sizes ------------------------------------------------------------------------------------


def test_oversized_headers_get_a_clear_4xx(strict: RunningEmulator) -> None:
    head = b"GET /api/echo HTTP/1.1\r\nHost: x\r\n"
    cases = {
        "one header line over 32 KiB": head + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n",
        "more than 100 headers": head + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n",
        "request line over 8 KiB": b"GET /api/echo?" + b"q" * 10_000 + b" HTTP/1.1\r\n\r\n",
    }
    for name, data in cases.items():
        reply, _ = exchange(strict, data)
        assert status_of(reply) == 400, (name, reply[:200])
    assert b"Got more than 32768 bytes" in exchange(strict, cases["one header line over 32 KiB"])[0]

    # Every header within its limit, 40 KB in all: over the host's 32 KiB total.
    headers = {f"X-Part-{i}": "v" * 2000 for i in range(20)}
    reply = strict.request("GET", "/api/echo", headers=headers)
    assert reply.status == 431
    assert "over the limit of 32768" in reply.text
    assert (
        strict.request("GET", "/api/echo", headers=dict(list(headers.items())[:10])).status == 200
    )
    still_serving(strict)


def test_a_declared_oversized_body_is_refused_before_it_is_sent(strict: RunningEmulator) -> None:
    # Nothing of the body is sent: the 413 can only come from Content-Length (and it comes
    # at all: a server waiting for the body would send nothing until its data-rate limit,
    # then a 408).
    head = b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
    reply, _ = exchange(strict, head)
    assert status_of(reply) == 413, reply[:200]
    assert b"exceeds the limit of 1048576 bytes" in reply
    # With Expect: 100-continue the client is told 413 instead of being asked to go on.
    reply, _ = exchange(
        strict,
        b"PUT /api/files/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert status_of(reply) == 413, reply
    assert b"100 Continue" not in reply
    # A body within the limit still gets its 100 Continue and goes through.
    connection = http.client.HTTPConnection(*address(strict), timeout=HANG)
    connection.putrequest("POST", "/api/echo")
    connection.putheader("Content-Length", "5")
    connection.putheader("Expect", "100-continue")
    connection.endheaders()
    connection.send(b"hello")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["body"] == "hello"
    connection.close()


# -- paths ------------------------------------------------------------------------------------


def raw_get(running: RunningEmulator, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (http.client sends the path untouched)."""
    connection = http.client.HTTPConnection(*address(running), timeout=HANG)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_dot_segments_are_resolved_before_routing_so_no_route_sees_them(
    strict: RunningEmulator,
) -> None:
    # As Kestrel does: `..` climbs within the path, never above the root, plain or encoded.
    climbs = (
        "/api/../admin/host/status",
        "/api/%2e%2e/admin/host/status",
        "/api/files/%2E%2E/%2e./../admin/host/status",
        "/../../admin/host/status",
    )
    for target in climbs:
        status, body = raw_get(strict, target)
        assert (status, json.loads(body)["state"]) == (200, "Running"), target
    for target in ("/api/files/a/../../etc/passwd", "/api/files/%2e%2e/%2e%2e/etc/passwd",
                   "/api/one/.."):  # fmt: skip
        status, body = raw_get(strict, target)
        assert status == 404, (target, body)
    status, body = raw_get(strict, "/api/one/%2e%2e/%2e%2e/%2e%2e")  # "/": the home page
    assert status == 200 and b"up and running" in body
    cases = {
        "/api/files/a/./b/../c": "a/c",
        "/api/files/x/%2E%2E/y/%2e/z": "y/z",
        "/api/files/..%2f..%2fetc%2fpasswd": "..%2f..%2fetc%2fpasswd",  # %2F stays encoded
        "/api/files/a%2F..%2F..": "a%2F..%2F..",
        "/api/files/%252e%252e/x": "%2e%2e/x",  # decoded once, as the host does
    }
    for target, path in cases.items():
        status, body = raw_get(strict, target)
        assert status == 200, (target, body)
        seen = json.loads(body)
        assert seen["params"] == {"path": path}, target
        assert "/../" not in seen["url"] and "%2e%2e/" not in seen["url"].lower()
    status, body = raw_get(strict, "/api/one/%2e%2e%2e")  # three dots: a name, not a step
    assert (status, json.loads(body)["params"]) == (200, {"name": "..."})
    # An encoded line break is still a path the front door routes (and answers) itself.
    status, body = raw_get(strict, "/api/files/a%0Ab")
    assert (status, json.loads(body)["params"]) == (200, {"path": "a\nb"})
    not_found = raw_get(strict, "/api/nothing%0Ahere")
    assert not_found == (404, b"")  # the host's 404 has no body


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["a", "B", "", ".", "..", "%2e", "%2E%2e", ".%2e", "%2f", "..%2F..", "x y"]
        ),
        max_size=12,
    )
)
def test_normalized_paths_hold_no_dot_segments(segments: list[str]) -> None:
    decoded, raw = normalize_path("/" + "/".join(segments))
    assert not {".", ".."} & set(decoded)
    assert normalize_path(raw) == (decoded, raw)  # resolving twice changes nothing


def test_script_files_outside_the_app_are_refused_at_start_up_with_file_and_reason(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the worker")
    (outside / "function.json").write_text(json.dumps(http_function(["get"])))
    (outside / "run.txt").write_text("linked in")
    app = write_app(
        tmp_path,
        {
            "echo": http_function(["get"]),
            "upward": {**http_function(["get"]), "scriptFile": "../../outside/secret.txt"},
            "absolute": {**http_function(["get"]), "scriptFile": str(outside / "secret.txt")},
            "linked": {**http_function(["get"]), "scriptFile": "link.txt"},
        },
    )
    (app / "linked" / "link.txt").symlink_to(outside / "secret.txt")
    (app / "folder").symlink_to(outside, target_is_directory=True)  # a linked function folder
    functions, errors = discover_functions(app)
    assert [f.name for f in functions] == ["echo"]
    reasons = {e.function: (e.path, e.reason) for e in errors}
    assert set(reasons) == {"upward", "absolute", "linked", "folder"}
    for name, (path, reason) in reasons.items():
        assert path == app / name / "function.json"
        assert "outside the function app directory" in reason, (name, reason)
    assert str(outside / "secret.txt") in reasons["linked"][1]

    running = RunningEmulator(EmulatorOptions(app, write_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        out = running.output
        assert "The following 4 functions are in error:" in out
        for name in reasons:
            assert f"{name}: {app / name / 'function.json'}: " in out
            assert running.request("GET", f"/api/{name}").status == 404
        assert running.request("GET", "/api/echo").status == 200
    finally:
        assert running.stop() == 0


# -- slow clients -----------------------------------------------------------------------------


def test_a_client_trickling_its_headers_is_cut_off(strict: RunningEmulator) -> None:
    lorises = [socket.create_connection(address(strict), timeout=HANG) for _ in range(20)]
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    try:
        for sock in lorises:
            sock.sendall(b"GET /api/echo HTTP/1.1\r\nHost: x\r\n")
        # The others are still served while the lorises hang on.
        reply = strict.request("GET", "/api/echo?meanwhile=1")
        assert reply.status == 200

        # They drip a header line now and then, for ever: only the header timeout ends them.
        def drip() -> bool:
            for index, sock in enumerate(lorises):
                if index in closed_at:
                    continue
                try:
                    sock.sendall(b"X-Drip: 1\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    closed_at[index] = time.monotonic() - started
            return len(closed_at) == len(lorises)

        eventually(
            drip,
            lambda: f"all slow clients cut off ({len(lorises) - len(closed_at)} still open)",
            HANG,
        )
    finally:
        for sock in lorises:
            sock.close()
    print(
        f"\n{len(lorises)} clients trickling headers, header timeout {HEADER_TIMEOUT:g} s:"
        f" all cut off, the last after {max(closed_at.values()):.2f} s"
    )
    still_serving(strict)


def test_an_idle_connection_is_closed_after_the_header_timeout(strict: RunningEmulator) -> None:
    with socket.create_connection(address(strict), timeout=HANG) as sock:
        started = time.monotonic()
        assert read_until_closed(sock, "an idle connection") == b""  # closed, nothing sent
        elapsed = time.monotonic() - started
    print(f"\nidle connection, header timeout {HEADER_TIMEOUT:g} s: closed after {elapsed:.2f} s")


def test_a_body_trickled_below_the_minimum_rate_is_answered_408(strict: RunningEmulator) -> None:
    with socket.create_connection(address(strict), timeout=HANG) as sock:
        sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()

        # 10 bytes each 0.05 s or more (200 bytes/s at most, far below the minimum) until
        # the server answers or hangs up: the body would take over 8 minutes to complete.
        def trickle() -> bool:
            if select.select([sock], [], [], 0.05)[0]:
                return True
            try:
                sock.sendall(b"x" * 10)
            except (BrokenPipeError, ConnectionResetError):
                return True
            return False

        eventually(trickle, "a body trickled at 200 bytes/s is cut off", HANG)
        reply = read_until_closed(sock, "a trickled body")
        elapsed = time.monotonic() - started
    assert status_of(reply) == 408, reply
    assert b"slower than" in reply
    strict.wait_for("answered 408")
    print(f"\nbody at 200 bytes/s, grace {GRACE:g} s: 408 after {elapsed:.2f} s")
    still_serving(strict)


def test_a_client_that_does_not_read_its_response_is_cut_off(strict: RunningEmulator) -> None:
    body = os.urandom(LIMIT // 2).hex().encode()[:LIMIT]  # a 1 MiB text body, echoed as JSON
    with socket.create_connection(address(strict), timeout=HANG) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            for _ in range(8):  # pipelined: eight 1 MiB responses that nobody reads
                sock.sendall(
                    b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading requests while blocked on a response, then hung up
        strict.wait_for("the client read the response slower than")
    still_serving(strict)


# -- where it listens -------------------------------------------------------------------------


def test_loopback_by_default_and_a_warning_for_any_other_address(tmp_path: Path) -> None:
    app = write_app(tmp_path, {"echo": http_function(["get"])})
    worker = write_worker(tmp_path)
    default = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert default.start_error is None, default.output
        assert default.url.startswith("http://127.0.0.1:")
        door = default.emulator._front_door
        assert door is not None and door.addresses == ["127.0.0.1"]
        assert "instead of the default" not in default.output
    finally:
        assert default.stop() == 0

    # Other loopback spellings: served, and said.
    for host, url_host in (("::1", "[::1]"), ("localhost", "localhost")):
        running = RunningEmulator(EmulatorOptions(app, worker, host=host, port=0)).start()
        try:
            assert running.start_error is None, running.output
            assert running.url.startswith(f"http://{url_host}:")
            port = int(running.url.rsplit(":", 1)[1])
            out = running.wait_for("instead of the default 127.0.0.1")
            assert f"Listening on {host} (" in out and "still loopback only" in out
            door = running.emulator._front_door
            assert door is not None and door.addresses
            for bound in door.addresses:  # every address, on the one port printed
                shown = f"[{bound}]" if ":" in bound else bound
                assert request("GET", f"http://{shown}:{port}/api/echo").status == 200
        finally:
            assert running.stop() == 0

    # The wording for a non-loopback address (not bound here: tests stay on loopback).
    for host, addresses in (("0.0.0.0", ["0.0.0.0"]), ("my-laptop", ["192.0.2.7", "::1"])):
        warning = exposure_warning(host, addresses)
        assert warning is not None and "anyone who can reach this machine" in warning
        assert ", ".join(addresses) in warning
    assert exposure_warning("127.0.0.1", ["127.0.0.1"]) is None


# -- oversized bodies, measured on a separate emulator process --------------------------------


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def test_oversized_bodies_are_refused_without_being_buffered(tmp_path: Path) -> None:
    app = write_app(tmp_path, {"echo": http_function()})
    command = [sys.executable, "-m", "workerkit", "host", str(app), "--worker",
               str(write_worker(tmp_path)), "--port", "0", "--max-body-size", "1MB"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True).start()
    try:
        found = eventually(
            lambda: re.search(r"Host started: (http://\S+)", "".join(lines)),
            lambda: "the emulator starts:\n" + "".join(lines),
            HANG,
        )
        url = found.group(1)
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        _, before = rss_kib(process.pid)
        size = 128 * 1024 * 1024
        block = b"z" * (1024 * 1024)
        for framing in ("content-length", "chunked"):
            with socket.create_connection((host, int(port)), timeout=HANG) as sock:
                head = "POST /api/echo HTTP/1.1\r\nHost: x\r\n"
                head += (
                    f"Content-Length: {size}\r\n\r\n"
                    if framing == "content-length"
                    else "Transfer-Encoding: chunked\r\n\r\n"
                )
                sock.sendall(head.encode())
                sent = 0
                try:
                    while sent < size:
                        if framing == "chunked":
                            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                        else:
                            sock.sendall(block)
                        sent += len(block)
                    if framing == "chunked":
                        sock.sendall(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except TimeoutError:
                    raise AssertionError(
                        f"{framing}: the emulator neither read nor refused the body"
                        f" within {HANG:g} s (after {sent} bytes)"
                    ) from None
                reply = read_until_closed(sock, f"a 128 MiB body ({framing})")
                assert status_of(reply) == 413, (framing, reply[:200])
        _, peak = rss_kib(process.pid)
        print(f"\n128 MiB bodies against a 1 MiB limit: emulator peak RSS {peak} KiB,"
              f" {peak - before} KiB over its peak before")  # fmt: skip
        assert peak - before < 40 * 1024  # the limit plus buffers, never the whole body
        assert request("POST", url + "/api/echo", b"fine").json()["body"] == "fine"
        assert process.poll() is None
    finally:
        process.terminate()
        assert process.wait(60) == 0


def test_ctrl_c_while_a_timed_out_worker_is_restarted_stops_cleanly_and_kills_the_worker(
    tmp_path: Path,
) -> None:
    """Ctrl-C while the emulator restarts a worker after a function timeout, just when that
    worker has ended its stream but its process lives on (an exit handler that never
    returns): the emulator exits 0 without a traceback, and the worker and the child in its
    process group are gone (it used to crash with StreamClosedError, leaving them running)."""
    release = tmp_path / "release"
    app = write_app(
        tmp_path,
        {"linger": http_function(["get"])},
        host={"functionTimeout": "00:00:01"},
        # Without the cancel capability the timed-out call stays unanswered: a restart.
        settings={"WK_CAPS": json.dumps({"HandlesInvocationCancelMessage": ""})},
    )
    host = HostSubprocess(app, write_worker(tmp_path))
    pids: list[int] = []
    try:
        replies: list[int] = []
        caller = threading.Thread(
            target=lambda: replies.append(
                request("GET", f"{host.url}/api/linger?until={release}", timeout=HANG).status
            )
        )
        caller.start()
        found = host.wait_for(r"linger: worker pid (\d+), child pid (\d+)")
        pids = [int(found.group(1)), int(found.group(2))]
        host.wait_for("A function timeout has occurred. Restarting worker process")
        caller.join(HANG)
        assert replies == [500]
        release.touch()  # the worker drains at once, ends its stream, then lingers
        host.wait_for("lingering after the stream ended")
        host.process.send_signal(signal.SIGINT)
        assert host.wait_exit(HANG) == 0, host.output
        assert "Traceback" not in host.output, host.output
        assert "Host stopped." in host.output
        eventually(
            lambda: not any(alive(pid) for pid in pids),
            lambda: f"worker and child gone: {[p for p in pids if alive(p)]} alive",
            HANG,
        )
    finally:
        host.close()
        for pid in pids:  # whatever happened, leave nothing behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


STATUS_REQUEST = b"GET /admin/host/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def served(running_address: tuple[str, int]) -> int | None:
    """The status of a request on a new connection; None when it was closed unanswered."""
    with socket.create_connection(running_address, timeout=HANG) as sock:
        try:
            sock.sendall(STATUS_REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            return None
        return status_of(read_until_closed(sock, "a status request"))


def test_connections_past_the_cap_are_closed_unanswered_and_the_console_says_how_to_raise_it(
    tmp_path: Path,
) -> None:
    app = write_app(tmp_path, {"echo": http_function()})
    options = EmulatorOptions(app, write_worker(tmp_path), port=0, max_connections=3)
    running = RunningEmulator(options).start()
    held: list[socket.socket] = []
    try:
        assert running.start_error is None, running.output
        where = address(running)
        held = [socket.create_connection(where, timeout=HANG) for _ in range(3)]
        # Connections are accepted in the order they were made: these three come first.
        assert [served(where) for _ in range(2)] == [None, None]
        line = running.wait_for("Raise the limit with --max-connections")
        assert "3 connections are open, the limit: a new one was closed without a response" in line
        # The open ones are still served.
        held[0].sendall(STATUS_REQUEST)
        assert status_of(read_until_closed(held[0], "a held connection")) == 200
        held[1].close()
        eventually(  # once the emulator has seen those two go, a new one is served again
            lambda: served(where) == 200, "a new connection is served once two have closed", HANG
        )
        still_serving(running)
    finally:
        for sock in held:
            sock.close()
        assert running.stop() == 0
    assert "Traceback" not in running.output


def test_the_connection_cap_is_lowered_to_fit_the_open_file_limit(tmp_path: Path) -> None:
    """Under ``ulimit -n 100`` the default cap of 1,000 could not be reached: accept() would
    fail first and asyncio print tracebacks. The emulator lowers it to what fits (100 less
    64 kept for itself) and says why when it is hit."""
    app = write_app(tmp_path, {"echo": http_function()})
    host = HostSubprocess(app, write_worker(tmp_path), open_files=100)
    held: list[socket.socket] = []
    try:
        hostname, port = host.url.split("//", 1)[1].rsplit(":", 1)
        where = (hostname, int(port))
        held = [socket.create_connection(where, timeout=HANG) for _ in range(36)]
        assert served(where) is None
        host.wait_for(
            r"36 connections are open, the limit \(lowered from 1000 to fit the open-file"
            r" limit, ulimit -n 100\)"
        )
        held.pop().close()
        eventually(lambda: served(where) == 200, "served again once one has closed", HANG)
        host.process.send_signal(signal.SIGTERM)
        assert host.wait_exit(HANG) == 0
        assert "Traceback" not in host.output, host.output
    finally:
        for sock in held:
            sock.close()
        host.close()
