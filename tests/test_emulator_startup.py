"""`workerkit host` telling the user what happened: a worker that dies before its stream opens
(which interpreter ran it, the setting that picks another, its traceback shown once, the
restarts left), a JSON object read as an HTTP response description, a timer fired by hand,
outputs shown as JSON. Real worker subprocesses, real HTTP requests on 127.0.0.1."""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import subprocess
import sys
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
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit.emulator import Console, EmulatorError, EmulatorOptions
from workerkit.emulator._startup import Line, StartupOutput

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_WORKER = ROOT / "examples" / "templates" / "worker.py"
SAME = "same error as before"


def _interpreter_without_workerkit(root: Path) -> tuple[Path, dict[str, str]]:
    """A ``python3`` first on PATH that cannot import workerkit (this interpreter under
    another name, so outside this virtual environment; run with ``-S``: no site-packages),
    and the environment that finds it."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.symlink_to(sys.executable)
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ["PATH"] = f"{bin_dir}{os.pathsep}{environ.get('PATH', os.defpath)}"
    environ["NO_COLOR"] = "1"
    return python3, environ


# -- a worker that dies before its stream opens ------------------------------------------------
def test_an_interpreter_without_workerkit_is_named_with_the_setting_and_shown_once(
    tmp_path: Path,
) -> None:
    """The issue's case: the worker's ``python3`` is not the one with workerkit. Run as a user
    runs it (``python -m workerkit host``); it gives up after the host's two restarts."""
    python3, environ = _interpreter_without_workerkit(tmp_path)
    app = write_app(tmp_path, {"hello": http_function(["get"])})
    worker = write_worker(
        tmp_path,
        description={
            "defaultExecutablePath": "python3",
            "arguments": ["-S", "-u"],
            "defaultWorkerPath": str(TEMPLATES_WORKER),
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker),
         "--port", "0"],
        env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console, error = result.stdout, result.stderr
    assert result.returncode == 1, console + error
    # The traceback once, though the worker was started three times.
    assert console.count("Traceback (most recent call last)") == 1, console
    assert console.count("ModuleNotFoundError: No module named 'workerkit'") == 1, console
    assert console.count(SAME) == 2, console
    ran = f'It ran {python3} ("python3" found on the worker\'s PATH), which does not have'
    setting = f"set languageWorkers__emulated__defaultExecutablePath={sys.executable} (an app"
    assert console.count(ran) == 1 and console.count(setting) == 1, console
    assert "1 of 2 restarts left after this one" in console
    assert "0 of 2 restarts left after this one" in console
    # The last word names the interpreter and the setting again, without the traceback.
    assert "the worker failed 3 times" in error and "giving up after 2 restarts" in error
    assert ran in error and setting in error, error
    assert "Traceback" not in error


def test_the_setting_named_at_start_up_chooses_the_interpreter(tmp_path: Path) -> None:
    """What the message says to do works: the setting, as an app setting in
    local.settings.json, starts the worker with the interpreter it names."""
    _, environ = _interpreter_without_workerkit(tmp_path)
    app = write_app(
        tmp_path,
        {"hello": http_function(["get"])},
        settings={"languageWorkers__emulated__defaultExecutablePath": sys.executable},
    )
    worker = write_worker(tmp_path, description={"defaultExecutablePath": "python3"})
    running = RunningEmulator(EmulatorOptions(app, worker, port=0, environ=environ)).start()
    try:
        assert running.start_error is None, running.output
        assert running.request("GET", "/api/hello").status == 200
        assert "Worker start failed" not in running.output
    finally:
        assert running.stop() == 0


def _script_worker(root: Path, body: str) -> Path:
    """A worker directory whose worker is `body` (run by this interpreter)."""
    script = root / "script_worker.py"
    script.write_text(body)
    return write_worker(root, description={"defaultWorkerPath": str(script)})


def test_start_up_output_that_changes_is_shown_every_time(tmp_path: Path) -> None:
    """Lines that repeat the previous start's are held back only until one differs: then
    they are shown, in order."""
    counter = tmp_path / "attempts"
    worker = _script_worker(
        tmp_path,
        "import pathlib, sys\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "attempt = int(counter.read_text()) + 1 if counter.exists() else 1\n"
        "counter.write_text(str(attempt))\n"
        "print('loading the app', file=sys.stderr)\n"
        "print(f'attempt {attempt} failed', file=sys.stderr)\n"
        "sys.exit(4)\n",
    )
    app = write_app(tmp_path, {"hello": http_function(["get"])})
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start(timeout=60)
    assert isinstance(running.start_error, EmulatorError)
    out = running.output
    assert SAME not in out
    shown = [line for line in out.splitlines() if "loading the app" in line or "failed" in line]
    texts = [line.split("] ", 1)[1] for line in shown if line.startswith("[")]
    assert texts == [
        "loading the app",
        "attempt 1 failed",
        "Worker start failed: the worker exited with status 4 before opening its stream.",
        "loading the app",
        "attempt 2 failed",
        "Worker start failed: the worker exited with status 4 before opening its stream.",
        "loading the app",
        "attempt 3 failed",
        "Worker start failed: the worker exited with status 4 before opening its stream.",
    ], out
    assert f"It ran {sys.executable}." in out  # a path, not a name looked up on PATH


def test_output_held_back_is_shown_when_the_stream_opens(tmp_path: Path) -> None:
    """The second start prints what the failed first one printed, then serves: nothing is
    lost, and the worker's own restarts-left line came in between."""
    marker = tmp_path / "failed-once"
    real = Path(__file__).resolve().parent / "emulator_worker.py"
    worker = _script_worker(
        tmp_path,
        "import pathlib, runpy, sys\n"
        "print('warming up', file=sys.stderr, flush=True)\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text('x')\n"
        "    sys.exit(5)\n"
        f"sys.argv[0] = {str(real)!r}\n"
        f"runpy.run_path({str(real)!r}, run_name='__main__')\n",
    )
    app = write_app(tmp_path, {"echo": http_function(["get"])})
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start(timeout=60)
    try:
        assert running.start_error is None, running.output
        assert running.request("GET", "/api/echo").status == 200
        out = running.output
        assert out.count("warming up") == 2, out
        assert "1 of 2 restarts left after this one" in out
        assert SAME not in out
    finally:
        assert running.stop() == 0


_TEXTS = st.text(alphabet="ab ", max_size=3)
_LINES = st.lists(st.tuples(st.booleans(), _TEXTS), max_size=6)


def _shown(sink: io.StringIO) -> list[str]:
    return [line.split("] ", 1)[1] for line in sink.getvalue().splitlines()]


@settings(max_examples=300, deadline=None)
@given(previous=st.one_of(st.none(), _LINES), current=_LINES, opened=st.booleans())
def test_startup_output_shows_everything_once_unless_it_repeats(
    previous: list[Line] | None, current: list[Line], opened: bool
) -> None:
    """Whatever two starts print: the second start's output is shown in full and in order,
    unless it exits before its stream opens having printed, stream by stream, exactly what
    the first one printed; then nothing of it is shown and `exited` says so."""
    sink = io.StringIO()
    output = StartupOutput(Console(sink, color=False), errors_only=False, previous=previous)
    for stderr, text in current:
        output(text.encode(), stderr)
    if opened:
        output.opened()
        assert _shown(sink) == [text for _, text in current]
        return
    repeated = output.exited()
    same = previous is not None and all(
        [t for s, t in current if s == stream] == [t for s, t in previous if s == stream]
        for stream in (False, True)
    )
    assert repeated == (same and bool(current))
    assert _shown(sink) == ([] if repeated else [text for _, text in current])
    assert output.record == current


# -- HTTP response objects, timers fired by hand, outputs as JSON -------------------------------
WORKER = """\
import json
import logging

import workerkit
from workerkit import InvocationResult

log = logging.getLogger("startup.worker")
log.setLevel(logging.INFO)


class Worker(workerkit.Worker):
    runtime_name = "emulated"

    def on_function_load(self, function):
        pass

    async def on_invocation(self, invocation):
        name = invocation.function.name
        if name == "ticket":
            return {"id": 7, "status": "open", "body": "x"}
        if name in ("tick", "tock"):
            log.info("TIMER %s", json.dumps(invocation.inputs["timer"]))
            return None
        if name == "relay":
            return InvocationResult(
                outputs={
                    "text": "h\\u00e9llo \\x1b[2J \\u202e!",
                    "doc": {"\\u00fcn\\u00ef": [1, None, 2.5]},
                    "blob": bytes(range(3)),
                }
            )
        return None


if __name__ == "__main__":
    Worker.main()
"""


def _queue_out(name: str) -> dict[str, str]:
    return {"type": "queue", "direction": "out", "name": name, "queueName": "q"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    root = tmp_path_factory.mktemp("startup")
    year = {"type": "timerTrigger", "name": "timer", "schedule": "0 0 0 1 1 *"}
    daily = {"type": "timerTrigger", "name": "timer", "schedule": "0 30 9 * * *"}
    app = write_app(
        root,
        {
            "ticket": http_function(["get"]),
            "tick": trigger_function(year),
            "tock": trigger_function(daily),
            "relay": trigger_function(
                {"type": "queueTrigger", "queueName": "in"},
                _queue_out("text"),
                _queue_out("doc"),
                _queue_out("blob"),
            ),
        },
        settings={"AzureWebJobs.tock.Disabled": "true"},
    )
    worker = _script_worker(root, WORKER)
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    assert running.start_error is None, running.output
    yield running
    assert running.stop() == 0


def test_a_json_object_with_a_body_is_a_response_and_said_once(host: RunningEmulator) -> None:
    for _ in range(2):
        reply = host.request("GET", "/api/ticket")
        assert (reply.status, reply.text) == (200, "x")  # as the host reads it
    warnings = [line for line in host.output.splitlines() if "its HTTP output is" in line]
    assert len(warnings) == 1, host.output
    assert warnings[0].split("] ", 1)[1] == (
        "Function 'ticket': its HTTP output is a JSON object with a \"body\" key, which the"
        ' host reads as a description of the response: it answered 200 from "status" and'
        ' "body"; it ignored "id". To answer with a response, return a workerkit.HttpResponse;'
        " to send the object itself as JSON, return workerkit.HttpResponse.from_json(value)."
        " (Shown once per function.)"
    )


def _timer_input(host: RunningEmulator, function: str) -> dict[str, object]:
    before = len(re.findall(rf"{function} \(\w+\) Information: TIMER ", host.output))
    reply = host.request("POST", f"/admin/functions/{function}", b'{"input": ""}')
    assert reply.status == 202
    pattern = rf"{function} \(\w+\) Information: TIMER (.*)"
    found = host.wait_for(lambda out: len(re.findall(pattern, out)) > before)
    parsed: dict[str, object] = json.loads(re.findall(pattern, found)[before])
    return parsed


def test_a_timer_fired_by_hand_carries_its_next_occurrence(host: RunningEmulator) -> None:
    now = datetime.datetime.now().astimezone()
    status = _timer_input(host, "tick")["ScheduleStatus"]
    assert isinstance(status, dict)
    upcoming = datetime.datetime.fromisoformat(status["Next"])
    assert upcoming > now and upcoming.year < 9999
    assert (upcoming.month, upcoming.day, upcoming.time()) == (1, 1, datetime.time())
    assert status["Last"] == "0001-01-01T00:00:00"  # it has not run on its schedule yet
    assert datetime.datetime.fromisoformat(status["LastUpdated"]) <= now  # when it started


def test_a_disabled_timer_fired_by_hand_carries_its_next_occurrence(host: RunningEmulator) -> None:
    now = datetime.datetime.now().astimezone()
    status = _timer_input(host, "tock")["ScheduleStatus"]
    assert isinstance(status, dict)
    upcoming = datetime.datetime.fromisoformat(status["Next"])
    assert now < upcoming <= now + datetime.timedelta(days=1)
    assert (upcoming.hour, upcoming.minute, upcoming.second) == (9, 30, 0)


def test_outputs_are_printed_as_json(host: RunningEmulator) -> None:
    reply = host.request("POST", "/admin/functions/relay", b'{"input": "go"}')
    assert reply.status == 202
    out = host.wait_for("output 'blob' (queue):")
    assert "output 'text' (queue): \"h\u00e9llo \\u001b[2J \\u202e!\"" in out
    assert "output 'doc' (queue): {\"\u00fcn\u00ef\":[1,null,2.5]}" in out
    assert "output 'blob' (queue): <3 bytes>" in out
    assert "\x1b" not in out and "\u202e" not in out  # nothing a terminal would act on


def test_console_values() -> None:
    assert Console.value({"a": ["é", None, True]}) == '{"a":["é",null,true]}'
    assert Console.value("line\nbreak\x07") == '"line\\nbreak\\u0007"'
    assert Console.value(b"\x00" * 10) == "<10 bytes>"
    assert Console.value([b"ab"]) == '["<2 bytes>"]'
