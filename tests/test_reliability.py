"""Faults, floods and hostile input against the SDK core.

Invariant under every scenario: each InvocationRequest gets exactly one InvocationResponse
(while the stream is up), the worker keeps serving, memory stays bounded. Every scenario is
bounded in count and time; only loopback is used.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
from pathlib import Path
from typing import Any

import betterproto2
import pytest
from conftest import arun, running, until
from google_pb2 import PACKAGE, Pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pb_strategies import pb_messages

from workerkit import WorkerOptions
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.testing import HostConnection, PendingInvocation, TestHost, WorkerProcess

pytestmark = pytest.mark.reliability

SCRIPT = str(Path(__file__).resolve().parent / "subprocess_worker.py")
SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))
#: Kinds a fuzzed host may send in-process. Terminate and environment reload are excluded:
#: they end the session or rewrite this test process's environment (tested on their own).
FUZZ_EXCLUDED = {"worker_terminate", "function_environment_reload_request"}


def rss_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def settled(pid: int, timeout: float = 20.0) -> None:
    """Wait until process `pid` has stopped using CPU (its work is done or blocked)."""

    def cpu() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    deadline = asyncio.get_running_loop().time() + timeout
    last, quiet = cpu(), 0
    while quiet < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        now = cpu()
        quiet = quiet + 1 if now == last else 0
        last = now


async def spawn(host: TestHost, kind: str, **env: str) -> tuple[WorkerProcess, HostConnection]:
    worker = await host.spawn(
        [sys.executable, SCRIPT], env={**os.environ, "WK_WORKER": kind, **env}
    )
    assert worker.connection is not None
    assert (await worker.connection.init()).result.status == SUCCESS
    return worker, worker.connection


async def spawn_stuck(
    host: TestHost, kind: str
) -> tuple[WorkerProcess, HostConnection, PendingInvocation]:
    """A worker process of `kind` with one invocation running that will not end by itself."""
    worker, conn = await spawn(host, kind)
    await conn.load("s", "stuck")
    stuck = await conn.start_invocation("s", {})
    await running(conn, stuck.invocation_id)
    return worker, conn, stuck


# -- hostile input -----------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_host_messages_never_break_the_worker(pb2: Pb2, data: st.DataObject) -> None:
    """Messages of every kind with random contents (absurd ids, empty metadata, duplicate
    invocation ids, unknown binding types...): each invocation is answered exactly once and
    the worker still answers status."""
    from workers import Tolerant

    desc = pb2.descriptor(f"{PACKAGE}.StreamingMessage")
    wire = data.draw(st.lists(pb_messages(desc, 1), min_size=1, max_size=8))
    messages = [pb.StreamingMessage.parse(m.SerializeToString()) for m in wire]
    messages = [
        m for m in messages if betterproto2.which_one_of(m, "content")[0] not in FUZZ_EXCLUDED
    ]
    expected = collections.Counter(
        m.invocation_request.invocation_id for m in messages if m.invocation_request is not None
    )

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Tolerant())
            conn = started.connection
            await conn.init()
            for message in messages:
                await conn.send(message)
            await conn.status(timeout=10)

            def answered() -> collections.Counter[str]:
                return collections.Counter(
                    r.invocation_id for r in conn.replies("invocation_response")
                )

            await until(lambda: answered() == expected, 30)
            assert answered() == expected
            assert not started.task.done()

    arun(scenario(), timeout=30)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x0a\x05ab",  # truncated field
        b"\xa2\x01\x10\x0a",  # truncated nested message
        b"\x0f",  # invalid wire type
        b"\xff" * 11,  # overlong varint
        b"\xa2\x01\xff\xff\xff\xff\x0f",  # a huge declared length
        b"\x9a\x06\x02\x08\x01",  # an unknown content kind from a newer host
    ],
)
def test_malformed_frames_are_logged_and_skipped(frame: bytes) -> None:
    from workers import Tolerant

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Tolerant())
            conn = started.connection
            await conn.init()
            await conn.send(frame)
            await conn.load("f", "fine")
            reply = await conn.invoke("f", {"a": 1})
            assert reply.result.status == SUCCESS
            warnings = [e.message for e in conn.logs if e.level >= pb.RpcLogLevel.Warning]
            assert any("malformed" in m or "does not know" in m for m in warnings)

    arun(scenario())


# -- size limits -------------------------------------------------------------------------------


def test_results_just_under_and_just_over_the_size_limit() -> None:
    from workers import Flood

    limit = 64 * 1024

    async def scenario() -> None:
        async with TestHost(max_message_length=limit) as host:
            started = await host.start_worker(Flood())
            conn = started.connection
            await conn.init()
            await conn.load("p", "payload")
            overhead = len(bytes(pb.StreamingMessage(invocation_response=pb.InvocationResponse(
                invocation_id="x" * 36, result=pb.StatusResult(status=SUCCESS),
                return_value=pb.TypedData(string=""),
            ))))  # fmt: skip
            fits = limit - overhead - 8  # four length prefixes grow from one byte to three
            under = await conn.invoke("p", {"size": fits}, invocation_id="u" * 36)
            assert under.result.status == SUCCESS
            assert len(under.return_value.string) == fits
            over = await conn.invoke("p", {"size": fits + 100}, invocation_id="o" * 36)
            assert over.result.status == FAILURE
            assert f"limit of {limit} bytes" in over.result.exception.message

    arun(scenario())


def test_a_16_mib_http_body_is_echoed_intact() -> None:
    from workers import Scenarios

    from workerkit import HttpRequest
    from workerkit.testing import http_bindings

    body = os.urandom(16 * 1024 * 1024)

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Scenarios())
            conn = started.connection
            await conn.init()
            await conn.load("e", "echo", bindings=http_bindings())
            request = HttpRequest("POST", "http://127.0.0.1/api/echo", body=body)
            reply = await conn.invoke("e", {"req": request}, timeout=60)
            assert reply.result.status == SUCCESS
            assert reply.return_value.http.body.bytes == body

    arun(scenario(), timeout=90)


# -- floods ------------------------------------------------------------------------------------


def test_ten_thousand_invocations_at_once_with_a_small_in_flight_cap() -> None:
    count = 10_000

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await spawn(host, "Flood", WORKERKIT_MAX_IN_FLIGHT="16")
            await conn.load("e", "echo")
            idle = rss_kib(worker.process.pid)
            pending = [await conn.start_invocation("e", {"value": i}) for i in range(count)]
            for _ in range(3):  # status stays answered while the flood is queued
                await conn.status(timeout=60)
            replies = await asyncio.gather(*(p.result(120) for p in pending))
            assert [r.return_value.int for r in replies] == list(range(count))
            memory = rss_kib(worker.process.pid)
            print(
                f"\n10,000 invocations, 16 in flight: worker RSS idle {idle['VmRSS']} KiB,"
                f" peak {memory['VmHWM']} KiB"
            )
            assert memory["VmHWM"] - idle["VmRSS"] < 200 * 1024  # bounded: well under 200 MiB
            assert len(conn.replies("invocation_response")) == count

    arun(scenario(), timeout=180)


def test_a_log_flood_does_not_stall_responses_and_drops_are_counted() -> None:
    from workers import Flood

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Flood(options=WorkerOptions(send_queue=256)))
            conn = started.connection
            await conn.init()
            await conn.load("c", "chatty")
            await conn.load("e", "echo")
            chatty = await conn.start_invocation("c", {"lines": 100_000})
            echoes = [await conn.invoke("e", {"value": i}, timeout=30) for i in range(20)]
            assert all(r.result.status == SUCCESS for r in echoes)
            assert (await chatty.result(60)).return_value.string == "said"
            await conn.status()
            delivered = len(conn.logs_for(chatty.invocation_id))
            notes = [e.message for e in conn.logs if e.message.startswith("dropped ")]
            dropped = sum(int(m.split()[1]) for m in notes)
            assert delivered + dropped == 100_000
            assert dropped > 0 and notes

    arun(scenario(), timeout=120)


# -- host faults -------------------------------------------------------------------------------


def test_a_host_that_stops_reading_holds_the_worker_back_without_unbounded_memory() -> None:
    count, size = 3000, 20_000  # 60 MB of responses held back by flow control

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await spawn(host, "Flood")
            await conn.load("p", "payload")
            idle = rss_kib(worker.process.pid)["VmRSS"]
            conn.pause_reading()
            pending = [await conn.start_invocation("p", {"size": size}) for _ in range(count)]
            await settled(worker.process.pid)  # done all it can while the host is not reading
            held = rss_kib(worker.process.pid)["VmRSS"] - idle
            conn.resume_reading()
            replies = await asyncio.gather(*(p.result(60) for p in pending))
            assert all(len(r.return_value.string) == size for r in replies)
            print(f"\nhost not reading: worker held {held} KiB over idle for 60 MB of replies")
            assert held < 48 * 1024

    arun(scenario(), timeout=120)


def test_cancels_racing_completion_still_give_one_response_each() -> None:
    from workers import Flood

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Flood())
            conn = started.connection
            await conn.init()
            await conn.load("e", "echo")
            pending = []
            for i in range(300):
                p = await conn.start_invocation("e", {"value": i})
                await conn.cancel(p.invocation_id)
                pending.append(p)
            statuses = collections.Counter([(await p).result.status for p in pending])
            assert set(statuses) <= {SUCCESS, CANCELLED}
            await conn.status()
            ids = [r.invocation_id for r in conn.replies("invocation_response")]
            assert len(ids) == len(set(ids)) == 300

    arun(scenario())


def test_environment_reload_while_invocations_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await spawn(host, "Scenarios")
            await conn.load("s", "sleep")
            pending = [await conn.start_invocation("s", {"seconds": 0.2}) for _ in range(20)]
            reply = await conn.reload_environment({**os.environ, "WK_TEST": "1"}, str(tmp_path))
            assert reply.result.status == SUCCESS
            assert [(await p).result.status for p in pending] == [SUCCESS] * 20

    arun(scenario())


def test_terminate_during_a_slow_load_exits_within_the_grace_period(tmp_path: Path) -> None:
    script = tmp_path / "slow_load.py"
    script.write_text(
        "import time, workerkit\n"
        "class W(workerkit.Worker):\n"
        "    def on_function_load(self, function):\n"
        "        print('loading', flush=True)\n"
        "        time.sleep(30)\n"
        "    def on_invocation(self, invocation): return None\n"
        "W.main()\n"
    )

    async def scenario() -> None:
        async with TestHost() as host:
            worker = await host.spawn([sys.executable, str(script)])
            conn = worker.connection
            assert conn is not None
            await conn.init()
            loading = asyncio.create_task(conn.load("f", "f"))
            await until(lambda: b"loading" in worker.stdout)
            await conn.terminate(grace_period=1.0)
            assert await worker.wait(30) == 0
            loading.cancel()

    arun(scenario())


# -- user code misbehaving ---------------------------------------------------------------------


def test_an_async_hook_blocking_the_loop_is_reported_with_its_function_name() -> None:
    from workers import Flood

    worker = Flood(options=WorkerOptions(loop_block_warning=0.3))

    class Unblocker(logging.Handler):  # the loop is blocked: only the watchdog's thread runs
        def emit(self, record: logging.LogRecord) -> None:
            if "event loop has been blocked" in record.getMessage():
                worker.unblock.set()

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(worker)
            conn = started.connection
            await conn.init()
            await conn.load("b", "blocker")
            reply = await conn.invoke("b", {"seconds": 60.0}, timeout=90)
            assert reply.return_value.string == "unblocked"  # the watchdog spoke meanwhile
            await conn.status()
            warnings = [e.message for e in conn.logs if "event loop has been blocked" in e.message]
            assert warnings and "function 'blocker'" in warnings[0]
            assert reply.invocation_id in warnings[0]

    unblocker = Unblocker()
    logging.getLogger("workerkit").addHandler(unblocker)
    try:
        arun(scenario(), timeout=120)
    finally:
        logging.getLogger("workerkit").removeHandler(unblocker)


@pytest.mark.parametrize("exception", ["GeneratorExit", "MemoryError", "RecursionError"])
def test_base_exceptions_from_user_code_fail_only_the_invocation(exception: str) -> None:
    from workers import Scenarios

    class Raising(Scenarios):
        async def fn_raise(self, invocation: Any) -> Any:
            raise getattr(__builtins__, exception, None) or eval(exception)

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Raising())
            conn = started.connection
            await conn.init()
            await conn.load("r", "raise")
            reply = await conn.invoke("r", {})
            assert reply.result.status == FAILURE
            assert exception in reply.result.exception.message
            await conn.status()
            assert not started.task.done()

    arun(scenario())


def test_queued_invocations_are_bounded_by_not_reading_from_the_host() -> None:
    """Beyond max_in_flight + max_queued the worker stops reading, so a host that sends
    faster than the worker runs cannot grow the worker's memory without limit."""
    count, size = 150, 1024 * 1024

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await spawn(
                host, "Scenarios", WORKERKIT_MAX_IN_FLIGHT="2", WORKERKIT_MAX_QUEUED="4"
            )
            await conn.load("s", "sleep")
            idle = rss_kib(worker.process.pid)["VmRSS"]
            pad = pb.TypedData(bytes=b"x" * size)
            pending = [
                await conn.start_invocation("s", {"seconds": 0.005, "pad": pad})
                for _ in range(count)
            ]
            replies = await asyncio.gather(*(p.result(60) for p in pending))
            assert all(r.result.status == SUCCESS for r in replies)
            peak = rss_kib(worker.process.pid)["VmHWM"] - idle
            print(f"\n150 x 1 MiB invocations, 2 running + 4 queued: peak {peak} KiB over idle")
            assert peak < 64 * 1024  # ~150 MiB if every request were held at once

    arun(scenario(), timeout=120)


def test_a_truncated_invocation_frame_still_gets_a_failure_response() -> None:
    from workers import Tolerant

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Tolerant())
            conn = started.connection
            await conn.init()
            whole = bytes(
                pb.StreamingMessage(
                    request_id="r",
                    invocation_request=pb.InvocationRequest(
                        invocation_id="cut-short", function_id="f", input_data=[
                            pb.ParameterBinding(name="a", data=pb.TypedData(string="x" * 50))
                        ],
                    ),
                )
            )  # fmt: skip
            refused = conn._expect("invocation_response", "cut-short")
            await conn.send(whole[:-10])
            reply = await asyncio.wait_for(refused, 10)
            assert reply.result.status == FAILURE
            assert "could not be read" in reply.result.exception.message
            await conn.status()

    arun(scenario())


def test_log_floods_from_threads_do_not_hold_replies_back() -> None:
    from workers import Chatty

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Chatty(options=WorkerOptions(send_queue=64)))
            conn = started.connection
            await conn.init()
            await conn.load("f", "flood")
            await conn.load("e", "echo")
            floods = [await conn.start_invocation("f", {"lines": 20_000}) for _ in range(4)]
            echoes = [await conn.invoke("e", {"value": i}, timeout=60) for i in range(30)]
            assert [r.return_value.int for r in echoes] == list(range(30))
            for _ in range(5):
                await conn.status(timeout=60)
            results = [(await f.result(90)).return_value.string for f in floods]
            assert results == ["flooded"] * 4
            await conn.status()
            notes = [e.message for e in conn.logs if e.message.startswith("dropped ")]
            delivered = sum(len(conn.logs_for(f.invocation_id)) for f in floods)
            assert delivered + sum(int(m.split()[1]) for m in notes) == 80_000

    arun(scenario(), timeout=120)


def test_exit_handlers_run_even_when_a_hook_never_returns(tmp_path: Path) -> None:
    marker = tmp_path / "atexit-ran"

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn = await spawn(host, "Chatty")
            await conn.load("x", "exit-handler")
            await conn.load("s", "stuck")
            await conn.invoke("x", {"path": str(marker)})
            stuck = await conn.start_invocation("s", {})
            await running(conn, stuck.invocation_id)
            await conn.terminate(grace_period=1.0)
            assert (await stuck).result.status in (CANCELLED, FAILURE)
            assert await worker.wait(30) == 0
            assert marker.read_text() == "ran"

    arun(scenario())


def test_a_thread_of_the_loops_default_executor_that_never_returns_does_not_keep_the_worker() -> (
    None
):
    """Exiting waits for nothing unbounded: asyncio.run would wait for the default
    executor's threads (for ever on 3.11, 300 s on 3.12+)."""

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn, stuck = await spawn_stuck(host, "ToThread")
            await conn.terminate(grace_period=1.0)
            assert (await stuck).result.status == CANCELLED
            assert await worker.wait(30) == 0

    arun(scenario())


def test_a_hook_that_swallows_cancellation_does_not_keep_the_worker_after_the_stream_breaks() -> (
    None
):
    """Every wait on the way out is bounded (asyncio.run waited for such a task for ever)."""

    async def scenario() -> None:
        async with TestHost() as host:
            worker, conn, _ = await spawn_stuck(host, "Stubborn")
            conn.close()
            assert await worker.wait(60) == 1

    arun(scenario(), timeout=90)


def test_absurdly_deep_json_input_is_a_clear_conversion_failure() -> None:
    from workers import Tolerant

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Tolerant())
            conn = started.connection
            await conn.init()
            await conn.load("f", "fine")
            deep = pb.TypedData(json="[" * 100_000 + "]" * 100_000)
            reply = await conn.invoke("f", {"a": deep})
            assert reply.result.status == FAILURE
            assert "cannot read input 'a'" in reply.result.exception.message
            assert "internal error" not in reply.result.exception.message

    arun(scenario())
