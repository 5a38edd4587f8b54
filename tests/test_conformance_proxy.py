"""``workerkit conformance`` for a worker that reports ``HttpUri``: the kit forwards HTTP cases
as the host's proxy does and runs the http-proxy scenarios (workerkit/conformance/
_proxycalls.py). The worker is tests/proxy_worker.py; waits are for events only."""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, arun
from emulator_support import http_function, write_app

from workerkit.conformance import ConformanceOptions, Outcome, Report, check_worker, parse_cases

PROXY_WORKER = [sys.executable, "-u", str(Path(__file__).resolve().parent / "proxy_worker.py")]
OPTIONS = ConformanceOptions(start_timeout=60, init_timeout=30, timeout=30, grace=30, http_wait=30)
PROXY_ROWS = (
    "http-proxy:request-first",
    "http-proxy:invocation-first",
    "http-proxy:streamed",
    "http-proxy:unmatched",
)


def check(command: list[str], **kwargs: Any) -> Report:
    report: Report = arun(check_worker(command, **kwargs), timeout=170)
    return report


def rows(report: Report) -> dict[str, tuple[Outcome, str]]:
    return {r.name: (r.outcome, r.detail) for r in report.results}


def _established(port: int) -> list[tuple[int, int]]:
    """(tx queue, rx queue) of every established TCP connection on this machine with an end
    at `port` (Linux: /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            next(file)
            for line in file:
                fields = line.split()
                ends = [int(address.rsplit(":", 1)[1], 16) for address in fields[1:3]]
                if fields[3] == "01" and port in ends:
                    tx, rx = (int(part, 16) for part in fields[4].split(":"))
                    found.append((tx, rx))
    return found


class Releaser:
    """Lets tests/proxy_worker.py's ``stream`` write line k+1 only once the kit has read line
    k: after the worker logged writing it, when no byte is left in flight or unread on any
    connection to the worker's HTTP port (the kit's socket read it all); then a line to the
    FIFO the worker waits on."""

    def __init__(self, log: Path, fifo: Path) -> None:
        self.log = log
        log.touch()
        os.mkfifo(fifo)
        self.fifo = os.open(fifo, os.O_RDWR)
        self.released = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Releaser:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        os.close(self.fifo)

    def _run(self) -> None:
        seen = 0
        while not self._stop.wait(0.02):
            lines = self.log.read_text().splitlines()
            for line in lines[seen:]:
                index, count, port = (int(n) for n in re.findall(r"\d+", line))
                if index + 1 < count:
                    while _established(port) and any(tx or rx for tx, rx in _established(port)):
                        if self._stop.wait(0.01):
                            return
                    os.write(self.fifo, b"next\n")
                    self.released += 1
            seen = len(lines)


@pytest.fixture
def streaming(tmp_path: Path) -> Iterator[tuple[Path, Releaser]]:
    with Releaser(tmp_path / "wrote.log", tmp_path / "signal") as releaser:
        yield tmp_path, releaser


def proxied_app(root: Path, settings: dict[str, str]) -> Path:
    return write_app(
        root,
        {"echo": http_function(["get", "post"]), "stream": http_function(["get"])},
        settings=settings,
    )


def test_a_worker_serving_http_uri_passes_the_proxied_cases_and_scenarios(
    streaming: tuple[Path, Releaser],
) -> None:
    """The HTTP cases go through the proxy (judged on the worker's own answer); the request
    before and after the invocation; a body streamed in pieces; a lone request answered 504
    and a lone invocation failed, each within --http-wait."""
    root, releaser = streaming
    app = proxied_app(root, {"PW_MATCH_TIMEOUT": "1"})
    stream_url = f"/api/stream?n=3&signal={root / 'signal'}&log={releaser.log}"
    cases = parse_cases(
        [
            {
                "name": "echo through the proxy",
                "function": "echo",
                "inputs": {"req": {"method": "POST", "url": "/api/echo?who=kit", "body": "hi"}},
                "expect": {
                    "http": {
                        "status": 200,
                        "body_contains": '"body": "hi"',
                        "headers": {"Content-Type": "application/json; charset=utf-8"},
                    }
                },
            },
            {
                "name": "stream line by line",
                "function": "stream",
                "inputs": {"req": stream_url},
                "expect": {"http": {"body": "line 0\nline 1\nline 2\n", "streamed": True}},
            },
        ]
    )
    report = check(PROXY_WORKER, app=app, cases=cases, options=OPTIONS)
    assert report.ok(strict=True), report.table()
    found = rows(report)
    assert all(found[name][0] is Outcome.PASS for name in PROXY_ROWS), report.table()
    assert found["case:echo through the proxy"][1].startswith("Success: HTTP 200 (")
    assert "streamed in 3 pieces" in found["case:stream line by line"][1]
    assert "streamed in 3 pieces" in found["http-proxy:streamed"][1]
    assert found["http-proxy:request-first"][1].startswith("case 'echo through the proxy'")
    unmatched = found["http-proxy:unmatched"][1]
    assert "request without invocation: 504" in unmatched
    assert "invocation without request: Failure: its forwarded request never came" in unmatched
    assert releaser.released == 4  # two lines released, for the case and the scenario each


def test_a_worker_that_never_gives_up_an_unpaired_call_fails(tmp_path: Path) -> None:
    """A worker that waits for ever for the other half of a call fails http-proxy:unmatched
    (neither answer within --http-wait); a case expecting a streamed body whose function
    answers whole fails with the reason."""
    app = proxied_app(tmp_path, {"PW_MATCH_TIMEOUT": "3600"})
    cases = parse_cases(
        [
            {
                "name": "echo is not streamed",
                "function": "echo",
                "inputs": {"req": "/api/echo"},
                "expect": {"http": {"status": 200, "streamed": True}},
            }
        ]
    )
    options = ConformanceOptions(
        start_timeout=60, init_timeout=30, timeout=30, grace=5, http_wait=2
    )
    report = check(PROXY_WORKER, app=app, cases=cases, options=options)
    found = rows(report)
    outcome, detail = found["http-proxy:unmatched"]
    assert outcome is Outcome.FAIL, report.table()
    assert "a forwarded request whose invocation never came had no answer within 2 s" in detail
    assert "an invocation whose forwarded request never came had no response within 2 s" in detail
    outcome, detail = found["case:echo is not streamed"]
    assert outcome is Outcome.FAIL
    assert "the body came whole with the end of the response (1 piece(s)), not streamed" in detail


def test_an_http_uri_naming_another_host_is_not_connected_to(tmp_path: Path) -> None:
    app = proxied_app(tmp_path, {"PW_URI": "http://192.0.2.7:8080/"})
    cases = parse_cases([{"name": "echo", "function": "echo", "inputs": {"req": "/api/echo"}}])
    report = check(PROXY_WORKER, app=app, cases=cases, options=OPTIONS)
    found = rows(report)
    for name in ("case:echo", *PROXY_ROWS):
        outcome, detail = found[name]
        assert outcome is Outcome.FAIL, report.table()
        assert "names 192.0.2.7:8080: workerkit host forwards HTTP requests only to" in detail


def test_without_http_uri_the_proxy_scenarios_and_streamed_cases_skip() -> None:
    """A worker that does not report HttpUri gets the http-proxy rows as skips saying so
    (the run still passes: a skip is no failure); a case expecting a streamed body is
    skipped."""
    templates = EXAMPLES / "templates"
    cases = parse_cases(
        [
            {
                "name": "hello streams",
                "function": "hello",
                "inputs": {"req": "/api/hello?name=Ada"},
                "expect": {"http": {"streamed": True}},
            }
        ]
    )
    report = check(
        [sys.executable, str(templates / "worker.py")],
        app=templates / "app",
        cases=cases,
        options=OPTIONS,
    )
    found = rows(report)
    for name in PROXY_ROWS:
        assert found[name] == (Outcome.SKIP, "skipped: the worker does not report HttpUri")
    assert report.ok(strict=True), report.table()
    outcome, detail = found["case:hello streams"]
    assert outcome is Outcome.SKIP
    assert detail.startswith("skipped: expects a streamed response (http.streamed)")


def test_a_workerkit_worker_with_http_streaming_passes_the_kit(
    streaming: tuple[Path, Releaser],
) -> None:
    """End to end with workerkit's own HTTP streaming (WORKERKIT_HTTP_STREAMING=true, an app
    setting): the kit forwards the case, the events arrive one by one, and workerkit gives up
    a lone request (504) and a lone invocation (Failure) after its http_match_timeout."""
    root, releaser = streaming
    app = write_app(
        root,
        {"countdown": http_function(["get"])},
        settings={"PW_SDK": "1", "WORKERKIT_HTTP_STREAMING": "true", "PW_MATCH_TIMEOUT": "1"},
    )
    url = f"/api/countdown?n=3&signal={root / 'signal'}&log={releaser.log}"
    cases = parse_cases(
        [
            {
                "name": "countdown streams events",
                "function": "countdown",
                "inputs": {"req": url},
                "expect": {
                    "http": {
                        "status": 200,
                        "body": "data: 0\n\ndata: 1\n\ndata: 2\n\n",
                        "headers": {"Content-Type": "text/event-stream"},
                        "streamed": True,
                    }
                },
            }
        ]
    )
    report = check(PROXY_WORKER, app=app, cases=cases, options=OPTIONS)
    assert report.ok(strict=True), report.table()
    found = rows(report)
    assert all(found[name][0] is Outcome.PASS for name in PROXY_ROWS), report.table()
    assert "streamed in 3 pieces" in found["case:countdown streams events"][1]
    assert "request without invocation: 504" in found["http-proxy:unmatched"][1]
    assert "reports HttpUri http://127.0.0.1:" in found["environment-reload"][1]
