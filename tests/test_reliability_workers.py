"""User code misbehaving in the example workers, through `workerkit host` and TestHost.

Real worker subprocesses, real HTTP on loopback. Invariant: every call is answered (a 500 when
the function fails, exits or hangs), and the worker — or, after a crash, its replacement —
keeps serving. Waits are bounded only to catch a hang: no verdict depends on how fast the
machine is. Recovery times and the stream-drop exit time are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, arun, eventually, until
from emulator_support import HostSubprocess, RunningEmulator, alive, request, write_app
from example_apps import CANCELLED, FAILURE, SUCCESS, start

from workerkit import HttpRequest
from workerkit.convert import decode_output
from workerkit.emulator import EmulatorOptions
from workerkit.testing import TestHost, binding, http_bindings

pytestmark = pytest.mark.reliability

HTTP = [
    {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "anonymous",
     "methods": ["get", "post"]},
    {"type": "http", "direction": "out", "name": "$return"},
]  # fmt: skip

MISBEHAVE = '''\
"""Functions that misbehave, one way each."""

import asyncio
import logging
import os
import sys
import threading
import time

from workerkit import HttpResponse


def ok(req):
    return HttpResponse(body=str(os.getpid()))


def crash(req):
    logging.warning("leaving without a word")
    os._exit(13)


def noisy(req):
    lines = int(req.query.get("lines", "40000"))
    until = req.query.get("until")  # a file: go on until it exists (at most 20 x lines)
    text = "x" * 99
    written = 0
    while written < lines or (until and not os.path.exists(until) and written < 20 * lines):
        for _ in range(1000):
            print(text)
            print(text, file=sys.stderr)
        written += 1000
    released = bool(until) and os.path.exists(until)
    sys.stdout.write("y" * (1 << 20) + "\\n")  # one 1 MiB line
    print("NOISY-STDOUT-END")
    print("NOISY-STDERR-END", file=sys.stderr)
    return HttpResponse(body=f"noisy done: {written} lines" + (", released" if released else ""))


def leak(req):
    for _ in range(int(req.query.get("n", "20"))):
        threading.Thread(target=time.sleep, args=(3600,)).start()  # not daemon threads
    return HttpResponse(body=str(threading.active_count()))


def forever(req):  # plain def, ignores cancellation
    logging.warning("forever: running")  # tests wait for this line
    while True:
        time.sleep(0.05)


async def forever_async(req):
    logging.warning("forever: running")
    await asyncio.sleep(3600)


async def spin(req):  # blocks the worker's event loop for good
    while True:
        pass


class Halt(BaseException):
    pass


def raise_systemexit(req):
    raise SystemExit(3)


async def raise_sys_exit(req):
    sys.exit("leaving now")


def raise_keyboardinterrupt(req):
    raise KeyboardInterrupt


async def raise_custom(req):
    raise Halt("a BaseException of its own")


def raise_generatorexit(req):
    raise GeneratorExit
'''


def python_worker(root: Path) -> Path:
    """examples/python with this interpreter and no pause between restarts
    (processRestartInterval 0: the host's default spaces restarts by 10 s)."""
    worker = root / "pyworker"
    worker.mkdir()
    for name in ("worker.py", "pyfunc.py"):
        shutil.copy(EXAMPLES / "python" / name, worker / name)
    config = json.loads((EXAMPLES / "python" / "worker.config.json").read_text())
    config["description"]["defaultExecutablePath"] = sys.executable
    config["processOptions"]["processRestartInterval"] = "00:00:00"
    (worker / "worker.config.json").write_text(json.dumps(config))
    return worker


def python_app(root: Path, function_timeout: str = "00:00:02") -> Path:
    entry_points = re.findall(r"^(?:async )?def (\w+)\(", MISBEHAVE, re.MULTILINE)
    functions: dict[str, Any] = {
        name: {"scriptFile": "../shared/misbehave.py", "entryPoint": name, "bindings": HTTP}
        for name in entry_points
    }
    functions["exit_on_import"] = {"scriptFile": "exits.py", "bindings": HTTP}
    app = write_app(root, functions, host={"functionTimeout": function_timeout})
    (app / "shared").mkdir()
    (app / "shared" / "misbehave.py").write_text(MISBEHAVE)
    (app / "exit_on_import" / "exits.py").write_text("import sys\n\nsys.exit(4)\n")
    for name in functions:
        (app / name / "run.txt").unlink()
    return app


@pytest.fixture(scope="module")
def pyhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    root = tmp_path_factory.mktemp("python")
    options = EmulatorOptions(python_app(root), python_worker(root), port=0)
    # verbose: the protocol lines show when the worker answers a cancel
    running = RunningEmulator(options, verbose=True).start()
    assert running.start_error is None, running.output
    yield running
    assert running.stop() == 0


def worker_pid(running: RunningEmulator) -> str:
    reply = running.request("GET", "/api/ok")
    assert reply.status == 200, reply.text
    return reply.text


def starts(running: RunningEmulator) -> int:
    return running.output.count("Worker process started and initialized")


def wait_served_by_a_new_worker(running: RunningEmulator, old_pid: str, since: float) -> float:
    """Poll /api/ok until a worker other than `old_pid` answers; seconds since `since` (for
    printing: the 60 s limit only catches a hang)."""

    def served_by_another() -> bool:
        reply = running.request("GET", "/api/ok", timeout=30)
        return reply.status == 200 and reply.text != old_pid

    eventually(served_by_another, lambda: "a new worker serves:\n" + running.output)
    return time.monotonic() - since


# -- the python example --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "shown"),
    [
        ("raise_systemexit", "SystemExit: 3"),
        ("raise_sys_exit", "SystemExit: leaving now"),
        ("raise_keyboardinterrupt", "KeyboardInterrupt"),
        ("raise_custom", "Halt: a BaseException of its own"),
        ("raise_generatorexit", "GeneratorExit"),
    ],
)
def test_base_exceptions_in_python_functions_fail_only_that_call(
    pyhost: RunningEmulator, function: str, shown: str
) -> None:
    pid, before = worker_pid(pyhost), starts(pyhost)
    reply = pyhost.request("GET", f"/api/{function}")
    assert (reply.status, reply.body) == (500, b"")  # as the host: the console has the error
    pyhost.wait_for(lambda out: f"Executed 'Functions.{function}' (Failed" in out and shown in out)
    assert worker_pid(pyhost) == pid and starts(pyhost) == before  # the same process serves


def test_sys_exit_at_import_is_a_load_failure_not_an_exit(pyhost: RunningEmulator) -> None:
    reply = pyhost.request("GET", "/api/exit_on_import")
    assert (reply.status, reply.body) == (500, b"")
    out = pyhost.wait_for("function 'exit_on_import' failed to load")
    assert "exits.py: SystemExit: 4" in out and 'exits.py", line 3' in out
    assert worker_pid(pyhost)


@pytest.mark.parametrize("function", ["forever", "forever_async"])
def test_a_function_that_never_returns_times_out_and_the_worker_keeps_serving(
    pyhost: RunningEmulator, function: str
) -> None:
    pid, before = worker_pid(pyhost), starts(pyhost)
    started = time.monotonic()
    reply = pyhost.request("GET", f"/api/{function}", timeout=60)
    answered = time.monotonic() - started
    assert (reply.status, reply.body) == (500, b"")
    pyhost.wait_for(f"Timeout value of 0:00:02 was exceeded by function: Functions.{function}")
    # The worker answers the InvocationCancel (Cancelled): no restart is needed. (A plain def
    # keeps its pool thread, though: Python cannot stop a thread.)
    pyhost.wait_answered(pyhost.invocation_ids(function)[-1], "Cancelled")
    assert worker_pid(pyhost) == pid and starts(pyhost) == before
    assert "Restarting worker process" not in pyhost.output
    print(f"\n{function} never returns: 500 after {answered:.2f} s (functionTimeout 2 s)")


def test_os_exit_in_a_sync_function_gives_a_500_and_a_restarted_worker(
    pyhost: RunningEmulator,
) -> None:
    pid = worker_pid(pyhost)
    reply = pyhost.request("GET", "/api/crash")
    crashed = time.monotonic()
    assert (reply.status, reply.body) == (500, b"")
    pyhost.wait_for("the worker process exited with status 13 during the invocation")
    recovery = wait_served_by_a_new_worker(pyhost, pid, crashed)
    print(f"\nos._exit(13) in a function: 500 at once, a new worker serving {recovery:.2f} s later")
    assert "Language Worker Process exited with status 13" in pyhost.output
    for _ in range(3):
        assert pyhost.request("GET", "/api/ok").status == 200


def test_a_function_blocking_the_event_loop_forever_gets_its_worker_replaced(
    pyhost: RunningEmulator,
) -> None:
    pid = worker_pid(pyhost)
    reply = pyhost.request("GET", "/api/spin", timeout=60)
    timed_out = time.monotonic()
    assert (reply.status, reply.body) == (500, b"")
    pyhost.wait_for("Timeout value of 0:00:02 was exceeded by function: Functions.spin")
    # The worker cannot answer the cancel (its loop spins), so the host restarts it: 2 s
    # grace, WorkerTerminate unanswered for 5 s, then a kill.
    recovery = wait_served_by_a_new_worker(pyhost, pid, timed_out)
    print(
        f"\nan async def spinning forever: 500 at the timeout, a new worker {recovery:.2f} s later"
    )
    assert "A function timeout has occurred. Restarting worker process" in pyhost.output
    assert "the worker failed" not in pyhost.output  # not counted as a worker error


def test_heavy_stdout_and_stderr_stall_neither_the_worker_nor_the_emulator(
    tmp_path: Path,
) -> None:
    # Its own emulator, with a functionTimeout that only catches a hang: how long 20 MB of
    # output takes depends on the machine, and is no verdict.
    options = EmulatorOptions(
        python_app(tmp_path, function_timeout="00:01:30"), python_worker(tmp_path), port=0
    )
    running = RunningEmulator(options).start()
    release = tmp_path / "release"  # the function floods until this file exists
    lines = 100_000  # at least 10 MB to each stream, plus a 1 MiB line
    result: dict[str, Any] = {}

    def call() -> None:
        started = time.monotonic()
        path = urllib.parse.quote(str(release))
        result["reply"] = running.request(
            "GET", f"/api/noisy?lines={lines}&until={path}", timeout=110
        )
        result["seconds"] = time.monotonic() - started

    noisy = threading.Thread(target=call, daemon=True)
    try:
        assert running.start_error is None, running.output
        pid = worker_pid(running)
        noisy.start()
        wait_flooding(running)
        latencies = []
        for _ in range(5):  # while the worker floods both streams, until `release`
            started = time.monotonic()
            reply = running.request("GET", "/api/ok", timeout=30)
            latencies.append(time.monotonic() - started)
            assert (reply.status, reply.text) == (200, pid)  # the same worker serves
        release.touch()
        noisy.join(120)
        assert not noisy.is_alive(), "the noisy call was never answered:\n" + running.output[-3000:]
        reply = result["reply"]
        assert reply.status == 200, reply.text
        # Released: the other calls were answered while the flood went on.
        written = re.fullmatch(r"noisy done: (\d+) lines, released", reply.text)
        assert written, reply.text
        out = running.wait_for(
            lambda text: "NOISY-STDOUT-END" in text and "NOISY-STDERR-END" in text,
            what="the end of the noisy output",
        )
        assert out.count("x" * 99) >= 2 * int(written.group(1))  # every line reached the console
    finally:
        release.touch()
        assert running.stop() == 0
    print(
        f"\n{2 * int(written.group(1)) / 10_000:.0f} MB of stdout/stderr lines plus a 1 MiB line"
        f" in {result['seconds']:.2f} s; {len(latencies)} other calls meanwhile, slowest"
        f" {max(latencies):.3f} s"
    )


def wait_flooding(running: RunningEmulator) -> None:
    """Wait until the noisy function's lines reach the console (only new lines are read)."""
    seen = 0

    def noisy() -> bool:
        nonlocal seen
        new = running.sink.lines[seen:]
        seen += len(new)
        return any(line.endswith("x" * 99) for line in new)

    eventually(noisy, lambda: "noisy output on the console:\n" + running.output[-3000:])


# -- leaked threads, and the stream dropping ------------------------------------------------


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def console_worker_pid(host: HostSubprocess) -> int:
    """The pid of the worker `workerkit host` started, from its console."""
    return int(host.wait_for(r"initialized: pid (\d+)").group(1))


def wait_gone(pid: int, timeout: float = 60) -> float:
    """Wait until process `pid` has exited; the seconds it took (for printing: `timeout` only
    catches a hang)."""
    started = time.monotonic()
    eventually(lambda: not alive(pid), f"process {pid} exits", timeout)
    return time.monotonic() - started


def test_leaked_threads_and_a_stuck_call_keep_no_worker_alive_after_its_host(
    tmp_path: Path,
) -> None:
    app, worker = python_app(tmp_path), python_worker(tmp_path)
    graceful = HostSubprocess(app, worker)
    try:
        graceful_pid = console_worker_pid(graceful)
        for _ in range(5):  # 100 sleeping non-daemon threads
            assert request("GET", graceful.url + "/api/leak?n=20").status == 200
        assert threads_of(graceful_pid) >= 100
        assert request("GET", graceful.url + "/api/ok").text == str(graceful_pid)
        # SIGTERM: the host drains, sends WorkerTerminate; the worker exits despite its threads.
        started = time.monotonic()
        graceful.process.send_signal(signal.SIGTERM)
        assert graceful.process.wait(60) == 0
        wait_gone(graceful_pid)
        stopped = time.monotonic() - started
        graceful.wait_for("Host stopped.")
    finally:
        graceful.close()

    crashed = HostSubprocess(app, worker)
    try:
        crashed_pid = console_worker_pid(crashed)
        assert request("GET", crashed.url + "/api/leak?n=50").status == 200

        def call_forever() -> None:
            with contextlib.suppress(OSError):  # the host dies before it can answer
                request("GET", crashed.url + "/api/forever")

        stuck = threading.Thread(target=call_forever, daemon=True)
        stuck.start()
        crashed.wait_for("forever: running")  # the worker runs it
        # The host dies without a word: the stream drops mid-invocation.
        crashed.process.kill()
        gone = wait_gone(crashed_pid)
    finally:
        crashed.close()
    print(
        f"\nhost stopped with SIGTERM: host and worker gone in {stopped:.2f} s;"
        f" host killed mid-invocation: worker (50 leaked threads, a stuck call) exited"
        f" {gone:.2f} s later"
    )


@pytest.mark.parametrize("function", ["forever_async", "forever"])
def test_the_worker_exits_non_zero_promptly_when_the_stream_drops_mid_invocation(
    tmp_path: Path, function: str
) -> None:
    """The python example, its call in flight an async def or a plain def stuck in its pool."""
    app = python_app(tmp_path)

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "python", app=app)
            reply = await conn.load(
                "f", function, bindings=http_bindings(), entry_point=function,
                script_file=str(app / "shared" / "misbehave.py"),
            )  # fmt: skip
            assert reply.result.status == SUCCESS, reply.result
            pending = await conn.start_invocation("f", {"req": HttpRequest("GET", "http://x")})
            await until(lambda: conn.logs_for(pending.invocation_id))  # "forever: running"
            assert worker.process.returncode is None
            loop = asyncio.get_running_loop()
            started = loop.time()
            conn.close()
            code = await worker.wait(60)  # exits at all, despite the call stuck in flight
            elapsed = loop.time() - started
            assert code == 1
            print(f"\nstream ended, {function} in flight: worker exited 1 after {elapsed:.3f} s")

    arun(scenario())


# -- the process example: no shell, whatever the input -------------------------------------

ECHO = """#!/usr/bin/env bash
printf '{"returnValue": {"status": 200, "body": {"argc": %d, "request": ' "$#"
cat
printf '}}}'
"""
EVIL = [
    "$(touch pwned)", "`touch pwned`", "; touch pwned", "' ; touch pwned ; '",
    '" && touch pwned && "', "| touch pwned", "$HOME %PATH% {x} \\ > pwned < /etc/passwd",
    "\n touch pwned \n", "${IFS}touch${IFS}pwned", "*", "~root", "!!",
]  # fmt: skip


def no_marker(*roots: Path) -> None:
    for root in roots:
        assert not list(root.rglob("pwned")), f"a shell ran in {root}"


def test_the_process_worker_passes_no_input_through_a_shell(tmp_path: Path) -> None:
    """Function names, directories and script paths, inputs, trigger metadata keys and values,
    and every part of an HTTP request reach the script as data, never as a command line."""
    app = tmp_path / "app"
    folder = app / "d $(touch pwned); `touch pwned` 'q' \"dq\""
    folder.mkdir(parents=True)
    scripts = {
        "interpreted": folder / "s $(touch pwned);'q'\"`id`.sh",
        "direct": folder / "n $(touch pwned) | x.bin",  # no known extension: run directly
    }
    for script in scripts.values():
        script.write_text(ECHO)
        script.chmod(0o755)
    name = "f;$(touch pwned)`touch pwned`|x"

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "process", app=app)
            for kind, script in scripts.items():
                reply = await conn.load(
                    kind, f"{name}-{kind}", bindings=http_bindings(), script_file=str(script),
                    directory=str(folder),
                )  # fmt: skip
                assert reply.result.status == SUCCESS, reply.result
            for kind in scripts:
                for text in EVIL:
                    request = HttpRequest(
                        text[:8].strip() or "GET", f"http://x/api/{urllib.parse.quote(text)}",
                        headers={"x-evil": text}, query={text: text}, params={"p": text},
                        body=text.encode(),
                    )  # fmt: skip
                    reply = await conn.invoke(
                        kind, {"req": request}, trigger_metadata={text: text, "Id": text}
                    )
                    assert reply.result.status == SUCCESS, reply.result
                    seen = decode_output(reply.return_value).json()
                    assert seen["argc"] == 0  # nothing but the script path on the command line
                    got = seen["request"]
                    assert got["functionName"] == f"{name}-{kind}"
                    assert got["functionDirectory"] == str(folder)
                    req = got["inputs"]["req"]
                    assert req["headers"]["x-evil"] == text
                    assert req["query"] == {text: text} and req["params"] == {"p": text}
                    assert req["body"] == text
                    assert got["triggerMetadata"][text] == text
                    assert got["triggerMetadata"]["Id"] == text
        no_marker(tmp_path, Path.cwd())

    arun(scenario())

    # The same through workerkit host, from a real HTTP request (route, query, headers, body).
    (app / "echo").mkdir()
    (app / "echo" / "echo.sh").write_text(ECHO)
    route = {**HTTP[0], "route": "echo/{*rest}"}
    (app / "echo" / "function.json").write_text(json.dumps({"bindings": [route, HTTP[1]]}))
    (app / "host.json").write_text('{"version": "2.0"}')
    environ = {**os.environ, "languageWorkers__process__defaultExecutablePath": sys.executable}
    running = RunningEmulator(
        EmulatorOptions(app, EXAMPLES / "process", port=0, environ=environ)
    ).start()
    try:
        assert running.start_error is None, running.output
        for text in EVIL:
            quoted = urllib.parse.quote(text, safe="")
            reply = running.request(
                "POST", f"/api/echo/{quoted}?q={quoted}", text.encode(),
                headers={"X-Evil": text.replace("\n", " ")},
            )  # fmt: skip
            assert reply.status == 200, reply.text
            seen = reply.json()
            assert seen["argc"] == 0
            req = seen["request"]["inputs"]["req"]
            # %2F stays encoded in a route value, as in ASP.NET Core
            assert req["params"] == {"rest": text.replace("/", "%2F")}
            assert req["query"] == {"q": text}
            assert req["headers"]["x-evil"] == text.replace("\n", " ").strip()
            assert req["body"] == text
    finally:
        assert running.stop() == 0
    no_marker(tmp_path, Path.cwd())


# -- the Lua example: sandbox and runaway code ----------------------------------------------

PROBE = """
return function(inputs)
  local f, err = load(inputs.msg)
  if not f then return { ok = false, err = err } end
  local ok, result = pcall(f)
  return { ok = ok, err = not ok and tostring(result) or nil }
end
"""
SPIN_AT_LOAD = "while true do end\nreturn function() end\n"
C_CALL = """
return function()
  print("calling string.find")
  local found = string.find(string.rep("a", 300), ".-.-.-b")  -- backtracks for a while
  print("string.find returned")  -- before the count hook can stop the cancelled call
  return found
end
"""
OK = 'return function() return "ok" end'


def lua_app(root: Path) -> Path:
    for name, source in (("probe", PROBE), ("spinload", SPIN_AT_LOAD), ("ccall", C_CALL),
                         ("ok", OK)):  # fmt: skip
        (root / name).mkdir(parents=True)
        (root / name / f"{name}.lua").write_text(source)
    (root / "lib").mkdir()
    import lupa  # the Lua runtime's own native module, as a C module a function might want

    native = next(Path(lupa.__file__).parent.glob("lua54*.so"))
    shutil.copy(native, root / "lib" / "native.so")
    return root


async def lua_load(conn: Any, app: Path, name: str, timeout: float = 60) -> Any:
    return await conn.load(
        name, name, script_file=str(app / name / f"{name}.lua"),
        bindings={"msg": binding("queueTrigger"), "$return": binding("queue", "out")},
        timeout=timeout,
    )  # fmt: skip


def test_the_lua_sandbox_refuses_c_modules_and_caps_memory(tmp_path: Path) -> None:
    app = lua_app(tmp_path / "app")
    escapes = {
        "return require('native')": "module 'native' not found",
        "return require('lua54')": "module 'lua54' not found",
        "return require('lupa.lua54')": "module 'lupa.lua54' not found",
        "return require('../lib/native')": "module names are dotted Lua identifiers",
        "return require('/usr/lib/x86_64-linux-gnu/libc.so.6')": "dotted Lua identifiers",
        "return io.popen('touch pwned')": "attempt to index a nil value (global 'io')",
        "return os.exit(1)": "attempt to call a nil value (field 'exit')",
        "return collectgarbage('count')": "attempt to call a nil value (global 'collectgarbage')",
        "return string.rep('x', 1 << 30)": "not enough memory",
        "local t = {} for i = 1, 1e9 do t[i] = i end": "not enough memory",
    }

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "lua", app=app, env={"LUA_MAX_MEMORY_MB": "32"})
            assert (await lua_load(conn, app, "probe")).result.status == SUCCESS
            for code, expected in escapes.items():
                reply = await conn.invoke("probe", {"msg": code}, timeout=30)
                assert reply.result.status == SUCCESS, (code, reply.result)
                outcome = decode_output(reply.return_value)
                assert outcome["ok"] is False and expected in outcome["err"], (code, outcome)
            # 32 MB at a time, never more: the worker is still there and well.
            assert worker.process.returncode is None
            assert (await lua_load(conn, app, "ok")).result.status == SUCCESS
            reply = await conn.invoke("ok", {"msg": "x"})
            assert decode_output(reply.return_value) == "ok"
        no_marker(tmp_path, Path.cwd())

    arun(scenario())


def test_lua_runaway_code_at_load_and_in_c_calls(tmp_path: Path) -> None:
    app = lua_app(tmp_path / "app")

    async def scenario() -> None:
        async with TestHost() as host:
            # A 1 s Lua timeout, for a chunk that never ends: the timeout is the only way out.
            env = {"LUA_TIMEOUT_SECONDS": "1", "WORKERKIT_THREADS": "1"}
            _, conn = await start(host, "lua", app=app, env=env)
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await lua_load(conn, app, "spinload", timeout=60)
            assert reply.result.status == FAILURE
            assert "spinload.lua: timed out after 1 s" in reply.result.exception.message
            load_failed = loop.time() - started
            assert (await lua_load(conn, app, "ok")).result.status == SUCCESS

        async with TestHost() as host:
            # The default Lua timeout (300 s): only the cancel ends the call.
            _, conn = await start(host, "lua", app=app, env={"WORKERKIT_THREADS": "1"})
            for name in ("ccall", "ok"):
                assert (await lua_load(conn, app, name)).result.status == SUCCESS

            # A long C call (a backtracking string.find) cannot be interrupted by the count
            # hook: the cancel is answered at once, but the call holds its thread until the
            # C function returns. With one thread, the next call waits for it.
            stuck = await conn.start_invocation("ccall", {"msg": "x"})
            await until(lambda: conn.logs_for(stuck.invocation_id))  # in string.find now
            cancelled_at = loop.time()
            await conn.cancel(stuck.invocation_id)
            assert (await stuck.result(60)).result.status == CANCELLED
            answered = loop.time() - cancelled_at
            after = await conn.invoke("ok", {"msg": "x"}, timeout=60)
            waited = loop.time() - cancelled_at
            assert decode_output(after.return_value) == "ok"
            # The order of the messages, not their timing: Cancelled was sent while
            # string.find still ran, and the next call was answered only after it returned.
            await until(lambda: len(conn.logs_for(stuck.invocation_id)) == 2)
            events = {
                (stuck.invocation_id, ""): "cancelled",
                (stuck.invocation_id, "string.find returned"): "returned",
                (after.invocation_id, ""): "next call answered",
            }
            order = [
                events.get((m.rpc_log.invocation_id, m.rpc_log.message))
                if m.rpc_log is not None
                else events.get((m.invocation_response.invocation_id, ""))
                if m.invocation_response is not None
                else None
                for m in conn.messages
            ]
            assert [e for e in order if e] == ["cancelled", "returned", "next call answered"]
            print(f"\nLua chunk spinning at load: failed after {load_failed:.2f} s (timeout 1 s);"
                  f" C call: cancel answered in {answered:.3f} s; the next call on its"
                  f" thread waited {waited:.2f} s for the C function to return")  # fmt: skip

    arun(scenario())


def test_a_runaway_lua_loop_through_workerkit_host_times_out_without_a_restart(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app"
    for name, source in (("spin", "return function() while true do end end"), ("hello", OK)):
        (app / name).mkdir(parents=True)
        (app / name / f"{name}.lua").write_text(source)
        (app / name / "function.json").write_text(json.dumps({"bindings": HTTP}))
    (app / "host.json").write_text('{"version": "2.0", "functionTimeout": "00:00:02"}')
    environ = {**os.environ, "languageWorkers__lua__defaultExecutablePath": sys.executable}
    options = EmulatorOptions(app, EXAMPLES / "lua", port=0, environ=environ)
    running = RunningEmulator(options, verbose=True)  # shows the worker's answer to the cancel
    running.start()
    try:
        assert running.start_error is None, running.output
        started = time.monotonic()
        reply = running.request("GET", "/api/spin", timeout=60)
        answered = time.monotonic() - started
        assert (reply.status, reply.body) == (500, b"")
        running.wait_for("Timeout value of 0:00:02 was exceeded by function: Functions.spin")
        # The count hook stops the loop on the cancel: the worker answers, no restart.
        running.wait_answered(running.invocation_ids("spin")[-1], "Cancelled")
        assert running.request("GET", "/api/hello").text == "ok"
        assert "Restarting worker process" not in running.output
        assert starts(running) == 1
    finally:
        assert running.stop() == 0
    print(f"\na Lua loop through workerkit host: 500 after {answered:.2f} s (functionTimeout 2 s)")


# -- the process example: what a function leaves running, and its stdout --------------------
#
# Daemons (setsid, a double fork) and a cleared environment; stdout held open by a process the
# worker cannot reach; a flood of stdout. Every daemon a test starts writes its pid to a file,
# and the test kills it itself if the worker did not.

DETACHED = """#!/usr/bin/env bash
# Forked twice, in its own session: its parent (the subshell) exits at once, so it is
# orphaned straight away.
( setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo "$!" > orphan.pid )
# Its own session and no environment: nothing tells which invocation it came from.
env -i "$(command -v setsid)" "$(command -v sleep)" 300 > /dev/null 2>&1 < /dev/null &
echo "$!" > bare.pid
# Once it runs sleep (its environment cleared, its session its own), not before:
until tr '\\0' ' ' < /proc/$!/cmdline | grep -q "sleep 300"; do
    [ -e /proc/$! ] || exit 1
    sleep 0.01
done
printf '{"returnValue": "detached"}'
"""
HOLDING = """#!/usr/bin/env bash
# In its own session, holding stdout and stderr open:
setsid sleep 300 &
echo "$!" > held.pid
printf '{"returnValue": "holding"}'
"""
WAITING = """#!/usr/bin/env bash
# A daemon of its own, then wait (a minute at most) until the test creates `release`.
setsid sleep 300 > /dev/null 2>&1 < /dev/null &
echo "$!" > mine.pid
for _ in $(seq 3000); do [ -e release ] && break; sleep 0.02; done
printf '{"returnValue": "released"}'
"""
HAND_OVER = """import json, socket, sys

# Hand stdout and stderr to a process outside the worker's tree (the test), then exit.
request = json.load(sys.stdin)
with socket.socket(socket.AF_UNIX) as holder:
    holder.connect("\\0" + request["inputs"]["msg"])
    socket.send_fds(holder, [b"fds"], [1, 2])
    holder.recv(1)  # the holder has them
print(json.dumps({"returnValue": "printed, then exited"}))
"""
PADDED = """import json, sys

# A small result, then `mib` MiB of spaces (valid JSON whitespace).
mib = int(json.load(sys.stdin)["inputs"]["msg"])
sys.stdout.write('{"returnValue": "ok"}')
for _ in range(mib):
    sys.stdout.write(" " * (1 << 20))
"""
ENDLESS = "#!/usr/bin/env bash\nexec yes\n"


def process_app(root: Path) -> Path:
    scripts = {"detached.sh": DETACHED, "holding.sh": HOLDING, "waiting.sh": WAITING,
               "handover.py": HAND_OVER, "padded.py": PADDED, "endless.sh": ENDLESS,
               "echo.sh": ECHO}  # fmt: skip
    for script, source in scripts.items():
        (root / script).with_suffix("").mkdir(parents=True)
        (root / script).with_suffix("").joinpath(script).write_text(source)
    return root


async def load_process_app(conn: Any, app: Path) -> None:
    for folder in sorted(app.iterdir()):
        (script,) = folder.iterdir()
        reply = await conn.load(
            folder.name, folder.name, script_file=str(script), directory=str(folder),
            bindings={"msg": binding("queueTrigger"), "$return": binding("queue", "out")},
        )  # fmt: skip
        assert reply.result.status == SUCCESS, reply.result


def pid_written(file: Path) -> bool:
    """`file` holds a whole pid (echo writes the number, then a newline)."""
    return file.exists() and file.read_text().endswith("\n")


def read_pids(folder: Path, *names: str) -> dict[str, int]:
    return {name: int((folder / f"{name}.pid").read_text()) for name in names}


def kill_leftover(pid: int) -> None:
    """Kill `pid` if it is still one of the tests' sleepers (the worker did not)."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if alive(pid) and argv[0].endswith(b"sleep") and argv[1:2] == [b"300"]:
            os.kill(pid, signal.SIGKILL)


def zombie_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="containment beyond the group is Linux's")
def test_daemons_a_process_function_leaves_are_killed_and_hold_no_invocation(
    tmp_path: Path,
) -> None:
    app = process_app(tmp_path / "app")
    pids: dict[str, int] = {}

    async def scenario() -> None:
        async with TestHost() as host:
            # The default timeout (300 s): a held stdout must not be what ends the call.
            worker, conn = await start(host, "process", app=app)
            await load_process_app(conn, app)

            # A daemon forked twice is killed when the invocation ends.
            reply = await conn.invoke("detached", {"msg": "x"})
            pids.update(read_pids(app / "detached", "orphan", "bare"))
            assert reply.result.status == SUCCESS, reply.result
            assert decode_output(reply.return_value) == "detached"
            await until(lambda: not alive(pids["orphan"]), 60)

            # One that holds stdout open does not hold the invocation, and is killed too.
            reply = await conn.invoke("holding", {"msg": "x"}, timeout=60)  # 60: a hang
            pids.update(read_pids(app / "holding", "held"))
            assert reply.result.status == SUCCESS, reply.result
            assert decode_output(reply.return_value) == "holding"
            await until(lambda: not alive(pids["held"]), 60)

            # The worker collected the orphans it adopted: no zombie children are left once
            # another invocation has ended.
            reply = await conn.invoke("echo", {"msg": "still serving"})
            assert decode_output(reply.return_value)["body"]["request"]["inputs"] == {
                "msg": "still serving"
            }
            assert zombie_children(worker.process.pid) == []

            # The one with no environment in a session of its own cannot be told apart (the
            # documented limit): it lives until the worker exits.
            assert alive(pids["bare"])
            await conn.terminate()
            assert await worker.wait(60) == 0
            await until(lambda: not alive(pids["bare"]), 60)

    try:
        arun(scenario(), timeout=240)
    finally:
        for file in app.glob("*/*.pid"):  # also those a failed run did not get to read
            with contextlib.suppress(ValueError):
                pids[file.stem] = int(file.read_text())
        for pid in pids.values():
            kill_leftover(pid)


@pytest.mark.skipif(sys.platform != "linux", reason="containment beyond the group is Linux's")
def test_an_invocation_ending_kills_only_its_own_daemons(tmp_path: Path) -> None:
    app = process_app(tmp_path / "app")
    pids: dict[str, int] = {}

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "process", app=app)
            await load_process_app(conn, app)
            waiting = await conn.start_invocation("waiting", {"msg": "x"})
            await until(lambda: pid_written(app / "waiting" / "mine.pid"), 60)
            pids.update(read_pids(app / "waiting", "mine"))

            # Another invocation ends, and its daemon is killed; not the running one's.
            reply = await conn.invoke("holding", {"msg": "x"}, timeout=60)
            pids.update(read_pids(app / "holding", "held"))
            assert reply.result.status == SUCCESS, reply.result
            await until(lambda: not alive(pids["held"]), 60)
            assert alive(pids["mine"]) and not waiting.future.done()

            (app / "waiting" / "release").touch()
            reply = await waiting.result(60)
            assert decode_output(reply.return_value) == "released"
            await until(lambda: not alive(pids["mine"]), 60)

    try:
        arun(scenario(), timeout=240)
    finally:
        for file in app.glob("*/*.pid"):
            with contextlib.suppress(ValueError):
                pids[file.stem] = int(file.read_text())
        for pid in pids.values():
            kill_leftover(pid)


@pytest.mark.skipif(sys.platform != "linux", reason="abstract unix sockets are Linux's")
def test_stdout_held_by_a_process_out_of_reach_does_not_hold_the_invocation(
    tmp_path: Path,
) -> None:
    import socket
    import uuid

    app = process_app(tmp_path / "app")
    address = f"workerkit-test-{uuid.uuid4()}"
    held: list[int] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("\0" + address)
        listener.listen(1)
        listener.settimeout(60)

        def hold() -> None:  # keep the function's stdout and stderr open until the end
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                with connection:
                    _, fds, _, _ = socket.recv_fds(connection, 16, 2)
                    held.extend(fds)
                    connection.sendall(b"k")

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()

        async def scenario() -> None:
            async with TestHost() as host:
                _, conn = await start(host, "process", app=app)
                await load_process_app(conn, app)
                reply = await conn.invoke("handover", {"msg": address}, timeout=60)  # a hang
                assert reply.result.status == SUCCESS, reply.result
                assert held, "the function handed over its stdout"
                assert decode_output(reply.return_value) == "printed, then exited"
                assert any(
                    "handover.py exited 1 s ago but its stdout or stderr is still open"
                    in entry.message
                    for entry in conn.logs_for(reply.invocation_id)
                ), conn.logs_for(reply.invocation_id)

        try:
            arun(scenario(), timeout=120)
        finally:
            if holder.is_alive():  # the function never connected: wake the holder
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as waker:
                    waker.connect("\0" + address)
            holder.join(60)
            for fd in held:
                os.close(fd)


def worker_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the worker's CPU time in /proc")
def test_a_process_functions_stdout_is_read_in_linear_time_and_capped(tmp_path: Path) -> None:
    """60 MiB of stdout at once must cost the worker about the CPU time of 4 calls printing
    15 MiB each (the same bytes), not 4 times that (reading that grows quadratically): a
    ratio of two measurements on the same machine, whatever its speed (the least of three
    rounds, against noise; under 3, between the 1 expected and the 4 of quadratic reading:
    a CI run once measured 2.2, the fresh 60 MiB of memory costing more page faults than
    15). Past MAX_STDOUT (64 MiB) the call fails, saying so."""
    app = process_app(tmp_path / "app")

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "process", app=app)
            await load_process_app(conn, app)

            async def cpu_for(*sizes: int) -> float:
                before = worker_cpu_seconds(worker.process.pid)
                for mib in sizes:
                    reply = await conn.invoke("padded", {"msg": str(mib)}, timeout=60)
                    assert reply.result.status == SUCCESS, reply.result
                    assert decode_output(reply.return_value) == "ok"
                return worker_cpu_seconds(worker.process.pid) - before

            rounds = [(await cpu_for(15, 15, 15, 15), await cpu_for(60)) for _ in range(3)]
            spread, whole = (min(costs) for costs in zip(*rounds, strict=True))
            print(f"\nprocess stdout: 4 x 15 MiB read in {spread:.2f} s of worker CPU,"
                  f" 60 MiB at once in {whole:.2f} s")  # fmt: skip
            assert whole < 3 * max(spread, 0.05), rounds

            reply = await conn.invoke("endless", {"msg": "x"}, timeout=60)
            assert reply.result.status == FAILURE
            assert reply.result.exception.message == (
                "endless.sh printed more than 64 MiB on stdout (MAX_STDOUT), so its processes"
                " were killed; a result is one JSON object within that size"
            )
            reply = await conn.invoke("padded", {"msg": "0"})
            assert decode_output(reply.return_value) == "ok"

    arun(scenario(), timeout=240)
