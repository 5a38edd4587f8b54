"""examples/process: functions as executables (bash, Node, Perl), driven through TestHost."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from pathlib import Path

from conftest import EXAMPLES, arun
from example_apps import (
    CANCELLED,
    FAILURE,
    SUCCESS,
    emulator,
    function_id,
    http,
    load_app,
    start,
)

from workerkit import HttpRequest
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.convert import decode_output
from workerkit.testing import HostConnection, TestHost, binding

APP = EXAMPLES / "process" / "app"
LEVEL = pb.RpcLogLevel


def logs(conn: HostConnection, invocation_id: str) -> list[tuple[str, str]]:
    return [(LEVEL(e.level).name, e.message) for e in conn.logs_for(invocation_id)]


def test_the_sample_app_in_node_bash_and_perl() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "process")
            loads = await load_app(conn, APP)
            assert {n: r.result.status for n, r in loads.items()} == dict.fromkeys(
                ("hello", "orders", "tick"), SUCCESS
            )

            # HTTP in Node; shell metacharacters in the input reach the script verbatim.
            name = "Ada $(touch /tmp/wk-x) `id` ; rm -rf / 'q' \"dq\""
            request = HttpRequest("GET", "http://x/api/hello", query={"name": name})
            reply = await conn.invoke(function_id("hello"), {"req": request})
            assert reply.result.status == SUCCESS, reply.result
            response = decode_output(reply.return_value)
            assert (response.status_code, response.text()) == (200, f"Hello, {name}!\n")
            assert response.headers == {"content-type": "text/plain"}
            assert logs(conn, reply.invocation_id) == [("Information", f"greeting {name}")]

            reply = await conn.invoke(function_id("hello"), {"req": HttpRequest("GET", "http://x")})
            assert decode_output(reply.return_value).status_code == 400
            assert logs(conn, reply.invocation_id) == [("Warning", "no name given")]

            # Timer in bash: empty stdout, stderr as logs with levels.
            status = {"Next": "2026-01-01T00:05:00"}
            timer = pb.TypedData(json=json.dumps({"IsPastDue": True, "ScheduleStatus": status}))
            reply = await conn.invoke(function_id("tick"), {"timer": timer})
            assert reply.result.status == SUCCESS, reply.result
            assert reply.return_value is None and not reply.output_data
            assert logs(conn, reply.invocation_id) == [
                ("Warning", "tick is running late"),
                ("Information", "tick; next run at 2026-01-01T00:05:00"),
            ]

            # Queue trigger in Perl: a named output and $return, trigger metadata.
            order = {"id": "o-1", "items": [{"price": 2.5, "quantity": 2}, {"price": 1}]}
            reply = await conn.invoke(
                function_id("orders"),
                {"msg": json.dumps(order)},
                trigger_metadata={"DequeueCount": pb.TypedData(json="2")},
            )
            assert reply.result.status == SUCCESS, reply.result
            assert [(b.name, decode_output(b.data)) for b in reply.output_data] == [
                ("receipt", "order o-1: 6.00")
            ]
            assert decode_output(reply.return_value) == {**order, "total": 6}
            assert logs(conn, reply.invocation_id) == [
                ("Information", "order o-1: 2 items, total 6.00 (attempt 2)")
            ]

            await conn.terminate()
            assert await worker.wait(60) == 0
            assert not Path("/tmp/wk-x").exists()

    arun(scenario())


ECHO = 'printf \'{"returnValue": \'; cat; printf "}"\n'
FAIL = 'echo "reading config" >&2\necho "error: database unreachable" >&2\nexit 3\n'
SLEEPY = 'sleep 300 &\necho "$!" > child.pid\necho "$$" > parent.pid\nwait\n'


def make_app(root: Path) -> Path:
    """A test app: echo (stdin back as the return value), fail, sleepy (a child that waits)."""
    for name, body in (("echo", ECHO), ("fail", FAIL), ("sleepy", SLEEPY)):
        (root / name).mkdir(parents=True)
        (root / name / f"{name}.sh").write_text("#!/usr/bin/env bash\n" + body)
    return root


async def load_tests(conn: HostConnection, app: Path) -> None:
    for name in ("echo", "fail", "sleepy"):
        reply = await conn.load(
            name,
            name,
            bindings={"msg": binding("queueTrigger"), "$return": binding("queue", "out")},
            script_file=str(app / name / f"{name}.sh"),
            directory=str(app / name),
        )
        assert reply.result.status == SUCCESS, reply.result


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead, waiting for its parent (or init) to reap it


def written_pids(*files: Path) -> list[int]:
    """The pids in `files` once each is whole (echo writes the number, then a newline)."""
    try:
        texts = [file.read_text() for file in files]
    except FileNotFoundError:
        return []
    return [int(text) for text in texts] if all(t.endswith("\n") for t in texts) else []


async def until(predicate: object, timeout: float = 30.0) -> None:
    """Poll `predicate`; `timeout` only catches a hang."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"still false after {timeout} s"
        await asyncio.sleep(0.02)


def test_inputs_are_data_never_commands(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    marker = tmp_path / "pwned"
    evil = [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"; touch {marker}",
        f"' ; touch {marker} ; '",
        f'" && touch {marker} && "',
        f"| touch {marker}",
        "\n$HOME %PATH% {x} \\",
    ]

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "process", app=app)
            await load_tests(conn, app)
            for text in evil:
                reply = await conn.invoke("echo", {"msg": text}, trigger_metadata={"Id": text})
                assert reply.result.status == SUCCESS, reply.result
                echoed = decode_output(reply.return_value)
                assert echoed["inputs"] == {"msg": text}
                assert echoed["triggerMetadata"] == {"Id": text}
                assert echoed["functionName"] == "echo"
            assert not marker.exists()

    arun(scenario())


def test_failures_timeouts_and_cancel_kill_the_process_group(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")

    async def scenario() -> None:
        async with TestHost() as host:
            # The default timeout (300 s): nothing here may depend on how fast the machine is.
            _, conn = await start(host, "process", app=app)
            await load_tests(conn, app)

            # Non-zero exit: a Failure quoting stderr; the lines were logged as they came.
            reply = await conn.invoke("fail", {"msg": "x"})
            assert reply.result.status == FAILURE
            message = reply.result.exception.message
            assert message.startswith("fail.sh exited with status 3:")
            assert "reading config" in message and "error: database unreachable" in message
            assert logs(conn, reply.invocation_id) == [
                ("Information", "reading config"),
                ("Error", "database unreachable"),
            ]

            # Cancel: the script and the child it started are both killed.
            pending = await conn.start_invocation("sleepy", {"msg": "x"})
            child_pid, parent_pid = app / "sleepy" / "child.pid", app / "sleepy" / "parent.pid"
            await until(lambda: written_pids(child_pid, parent_pid))
            pids = written_pids(child_pid, parent_pid)
            assert all(alive(pid) for pid in pids)
            await conn.cancel(pending.invocation_id)
            assert (await pending).result.status == CANCELLED
            await until(lambda: not any(alive(pid) for pid in pids))
            child_pid.unlink()
            parent_pid.unlink()

            # The worker still serves.
            reply = await conn.invoke("echo", {"msg": "still here"})
            assert decode_output(reply.return_value)["inputs"] == {"msg": "still here"}

            # A program with no known extension runs directly (a binary, or a #! script);
            # bytes travel as {"base64": ...} both ways.
            native = app / "native" / "native.bin"
            native.parent.mkdir()
            native.write_text(
                '#!/bin/sh\ncat > request.json\nprintf \'{"returnValue": {"base64": "AP8="}}\'\n'
            )
            native.chmod(0o755)
            loaded = await conn.load(
                "native", "native",
                bindings={"msg": binding("queueTrigger", data_type="binary"),
                          "$return": binding("queue", "out")},
                script_file=str(native), directory=str(native.parent),
            )  # fmt: skip
            assert loaded.result.status == SUCCESS, loaded.result
            reply = await conn.invoke("native", {"msg": b"\x00\xff"})
            assert reply.result.status == SUCCESS, reply.result
            assert decode_output(reply.return_value) == b"\x00\xff"
            request = json.loads((native.parent / "request.json").read_text())
            assert request["inputs"] == {"msg": {"base64": "AP8="}}

        async with TestHost() as host:
            # Timeout (1.5 s here) of a script that never ends: a Failure, and the process
            # group is gone too.
            _, conn = await start(host, "process", app=app, env={"PROCESS_TIMEOUT_SECONDS": "1.5"})
            await load_tests(conn, app)
            pending = await conn.start_invocation("sleepy", {"msg": "x"})
            await until(lambda: written_pids(child_pid, parent_pid) or pending.future.done())
            pids = written_pids(child_pid, parent_pid)
            reply = await pending.result(60)
            assert reply.result.status == FAILURE
            assert "timed out after 1.5 s; its processes were killed" in (
                reply.result.exception.message
            )
            if pids:
                await until(lambda: not any(alive(pid) for pid in pids))
            else:  # so slow a machine that the script was killed before its second line
                print("\nthe timed-out script wrote no pids: its process group is not checked")

    arun(scenario())


def test_a_script_that_is_neither_known_nor_executable_fails_to_load(tmp_path: Path) -> None:
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "odd.xyz").write_text("whatever")
    os.chmod(tmp_path / "odd" / "odd.xyz", 0o644)

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "process", app=tmp_path)
            reply = await conn.load(
                "odd", "odd", bindings={"msg": binding("queueTrigger")},
                script_file=str(tmp_path / "odd" / "odd.xyz"),
            )  # fmt: skip
            assert reply.result.status == FAILURE
            assert "odd.xyz is not executable and '.xyz' names no interpreter" in (
                reply.result.exception.message
            )

    arun(scenario())


def test_end_to_end_through_workerkit_host_with_real_http() -> None:
    with emulator(EXAMPLES / "process", APP) as url:
        name = "Ada;$(id)"
        status, body = http("GET", f"{url}/api/hello?name={urllib.parse.quote(name)}")
        assert (status, body.decode()) == (200, f"Hello, {name}!\n")
        assert http("GET", f"{url}/api/hello")[0] == 400


def live_descendants(pid: int) -> list[int]:
    """The processes below `pid` that are not zombies."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(name))
    found, parents = [], [pid]
    while parents:
        below = children.get(parents.pop(), [])
        found += below
        parents += below
    return found


def commandline(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{pid} (gone)"
    return text.replace(b"\0", b" ").decode(errors="replace")


def test_a_call_cancelled_while_its_process_starts_leaves_nothing_running(tmp_path: Path) -> None:
    # The cancel comes right behind the call, so it lands at any point of the start: while
    # the script (which starts a child at once) runs but its pipes are not connected yet
    # (asyncio alone would kill only the script then), or while the script forks its child
    # (a child born after the look at /proc and before the script's kill is found by the
    # next look). Either way its child would outlive the call.
    app = make_app(tmp_path / "app")

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await start(host, "process", app=app)
            await load_tests(conn, app)
            for _ in range(8):
                pending = await conn.start_invocation("sleepy", {"msg": "x"})
                await conn.cancel(pending.invocation_id)
                assert (await pending.result(60)).result.status in (CANCELLED, FAILURE)
            try:
                await until(lambda: not live_descendants(worker.process.pid))
            except AssertionError:
                left = live_descendants(worker.process.pid)
                raise AssertionError(f"left running: {[commandline(p) for p in left]}") from None
            reply = await conn.invoke("echo", {"msg": "still here"})
            assert decode_output(reply.return_value)["inputs"] == {"msg": "still here"}

    arun(scenario())
