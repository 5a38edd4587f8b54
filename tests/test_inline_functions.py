"""examples/python: plain ``def`` functions that keep returning quickly run on the event loop
(no thread hop); one slow call there, or reading ``context.cancelled``, sends them back to
the thread pool for good (a short wait: until quick there again, twice at most). The example
runs as a real subprocess against TestHost, as in test_examples_python.py."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import arun, until
from example_apps import FAILURE, SUCCESS, start

from workerkit import HttpRequest
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._hostside.connection import HostConnection
from workerkit.convert import decode_output
from workerkit.testing import TestHost, http_bindings

CANCELLED = pb.StatusResultStatus.Cancelled
USER = pb.RpcLogRpcLogCategory.User
PROMOTE_AFTER = 16  # examples/python/worker.py
#: Calls a quick function gets to be promoted: far more than PROMOTE_AFTER, so a busy
#: machine that makes a few calls slow (each resets the count) still gets there.
PROMOTION_BOUND = 400
DEMOTED_NOTE = "runs in the thread pool from now on"
BACK_NOTE = "back to the thread pool until it is quick there"
WORKER = Path(__file__).resolve().parent.parent / "examples" / "python" / "worker.py"

FLIP = """\
import gc
import logging
import sys
import threading
import time

from workerkit import HttpResponse, current_invocation_id

calm = threading.Event()
heap = []  # filled by "grow": objects a full collection must look at


def spin():
    while not calm.is_set():
        pass


def main(req, context):
    mode = req.query.get("mode", "")
    if mode:
        logging.info("started %s", mode)
    if mode == "sleep":
        time.sleep(float(req.query["s"]))
    elif mode == "spin":  # computes for 50 ms without giving the CPU up
        end = time.thread_time() + float(req.query.get("s", "0.05"))
        while time.thread_time() < end:
            pass
    elif mode == "wait":  # until the host cancels the call
        while not context.cancelled:
            time.sleep(0.005)
    elif mode == "busy":  # a thread that computes until "calm": the others wait for the GIL
        threading.Thread(target=spin, daemon=True).start()
    elif mode == "calm":
        calm.set()
    elif mode == "grow":
        heap.extend([] for _ in range(500_000))
    elif mode == "collect":  # milliseconds in the collector, with the heap grown
        gc.collect()
    elif mode == "fail":
        raise ValueError("as asked")
    elif mode == "exit":
        sys.exit(3)
    where = threading.current_thread().name
    logging.info("ran in %s", where)
    return HttpResponse(body=f"{where} {current_invocation_id.get()} {context.invocation_id}")
"""


def app(tmp_path: Path) -> Path:
    (tmp_path / "flip").mkdir()
    (tmp_path / "flip" / "__init__.py").write_text(FLIP)
    return tmp_path


async def loaded(host: TestHost, root: Path, **env: str) -> HostConnection:
    _, conn = await start(host, "python", app=root, env=env)
    reply = await conn.load(
        "f", "flip", bindings=http_bindings(), script_file=str(root / "flip" / "__init__.py")
    )
    assert reply.result.status == SUCCESS, reply.result
    return conn


def request(**query: str) -> dict[str, HttpRequest]:
    return {"req": HttpRequest("GET", "http://x/api/flip", query=query)}


async def call(conn: HostConnection, **query: str) -> str:
    """Invoke flip; the thread it ran in (its body, invocation id and logs checked)."""
    reply = await conn.invoke("f", request(**query), timeout=30)
    assert reply.result.status == SUCCESS, reply.result
    where, seen_id, context_id = decode_output(reply.return_value).text().split()
    assert seen_id == context_id == reply.invocation_id  # current_invocation_id, inline too
    logs = [(e.message, e.log_category) for e in conn.logs_for(reply.invocation_id)]
    started = [(f"started {query['mode']}", USER)] if query else []
    assert logs == [*started, (f"ran in {where}", USER)]
    return where


async def promote(conn: HostConnection) -> int:
    """Call flip until it runs on the loop (the main thread); how many calls it took."""
    for calls in range(1, PROMOTION_BOUND + 1):
        if await call(conn) == "MainThread":
            return calls
    raise AssertionError(f"flip still ran in the pool after {PROMOTION_BOUND} quick calls")


def demotion_notes(conn: HostConnection) -> list[pb.RpcLog]:
    return [e for e in conn.logs if DEMOTED_NOTE in e.message]


def back_notes(conn: HostConnection) -> list[pb.RpcLog]:
    """The worker's notes that a function went back to the pool until it is quick there."""
    return [e for e in conn.logs if BACK_NOTE in e.message]


def test_a_quick_def_is_promoted_with_its_invocation_id_logs_and_failures_intact(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            assert (await call(conn)).startswith("function")  # in the pool first
            # the first call and all but the last of promote's ran in the pool: at least
            # PROMOTE_AFTER quick ones in a row (more when the machine made one slow)
            assert await promote(conn) >= PROMOTE_AFTER
            for _ in range(5):
                assert await call(conn) == "MainThread"
            # What it raises on the loop fails only the call, as in the pool.
            failed = await conn.invoke("f", request(mode="fail"), timeout=30)
            assert failed.result.status == FAILURE
            assert "ValueError: as asked" in failed.result.exception.message
            exited = await conn.invoke("f", request(mode="exit"), timeout=30)
            assert exited.result.status == FAILURE
            assert "SystemExit" in exited.result.exception.message
            assert await call(conn) == "MainThread"  # quick failures do not demote it
            assert not demotion_notes(conn)

    arun(scenario(), timeout=120)


@pytest.mark.parametrize("slow", [{"mode": "sleep", "s": "0.05"}, {"mode": "spin"}])
def test_one_slow_call_on_the_loop_demotes_for_good_and_cancel_works_in_the_pool_again(
    tmp_path: Path, slow: dict[str, str]
) -> None:
    """The slow call still answers; the worker says so (its own log, not the call's); the
    function is never promoted again, so a call waiting for the host's cancel runs in the
    pool: the worker answers a status request meanwhile, the cancel is answered, and the
    function sees `context.cancelled` and returns."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            await promote(conn)
            assert await call(conn, **slow) == "MainThread"
            (note,) = demotion_notes(conn)
            assert note.message.startswith("flip took ") and not note.invocation_id
            for _ in range(3 * PROMOTE_AFTER):
                assert (await call(conn)).startswith("function")

            waiting = await conn.start_invocation("f", request(mode="wait"))
            await until(lambda: conn.logs_for(waiting.invocation_id))  # it is running
            await conn.status(timeout=10)  # the loop is free while it runs
            await conn.cancel(waiting.invocation_id)
            assert (await waiting.result(30)).result.status == CANCELLED
            await until(lambda: len(conn.logs_for(waiting.invocation_id)) == 2)
            assert conn.logs_for(waiting.invocation_id)[1].message.startswith("ran in function")

    arun(scenario(), timeout=120)


def test_a_quick_def_is_promoted_though_the_pool_waits_for_the_gil(tmp_path: Path) -> None:
    """Quick is the CPU a call uses, not the time it takes: with a thread computing beside
    it, every call in the pool waits milliseconds for the GIL (as under load, when the loop
    is busy), yet the function itself is as quick as ever."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            await call(conn, mode="busy")
            try:
                assert await promote(conn) >= PROMOTE_AFTER
            finally:
                await call(conn, mode="calm")

    arun(scenario(), timeout=120)


def test_a_def_that_waits_on_every_call_is_never_promoted(tmp_path: Path) -> None:
    """1 ms asleep per call: little CPU, but a wait (no other thread computing meanwhile),
    so it stays in the pool, where waiting costs the loop nothing."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            for _ in range(4 * PROMOTE_AFTER):
                assert (await call(conn, mode="sleep", s="0.001")).startswith("function")

    arun(scenario(), timeout=120)


@pytest.mark.parametrize(
    "short", [{"mode": "sleep", "s": "0.001"}, {"mode": "spin", "s": "0.005"}], ids=str
)
def test_a_promoted_def_slow_once_on_the_loop_goes_back_until_quick_then_for_good(
    tmp_path: Path, short: dict[str, str]
) -> None:
    """A quick function promoted, then a call that sleeps 1 ms (a wait: under the 2 ms a
    computing call may take, over the 0.5 ms a call may wait) or computes 5 ms: that call
    sends it back to the pool. A few ms can be the machine's (the GIL held by a preempted
    thread, CPU time under heavy load), not the function's: it returns to the loop once quick
    in the pool again, RETURNS (2) times; the third such call is for good."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            for time_back in (1, 2):
                await promote(conn)
                assert await call(conn, **short) == "MainThread"
                await until(lambda n=time_back: len(back_notes(conn)) == n)
                note = back_notes(conn)[-1]
                assert note.message.startswith("flip took ") and not note.invocation_id
                assert note.message.endswith(f"({time_back} of 2)")
                assert note.level == pb.RpcLogLevel.Information
                # back in the pool, where it needs PROMOTE_AFTER quick calls in a row again
                assert (await call(conn)).startswith("function")
                assert not demotion_notes(conn)
            # the call above and all but the last of these ran in the pool
            assert await promote(conn) >= PROMOTE_AFTER
            assert await call(conn, **short) == "MainThread"
            (note,) = demotion_notes(conn)
            assert note.message.startswith("flip took ") and note.level == pb.RpcLogLevel.Warning
            for _ in range(3 * PROMOTE_AFTER):
                assert (await call(conn)).startswith("function")
            assert len(back_notes(conn)) == 2

    arun(scenario(), timeout=120)


def test_only_the_calling_threads_collections_are_left_out_of_its_computing() -> None:
    """The example's clocks, in-process: a collection in this thread is not computing; one
    in another thread (its CPU is another thread's) changes nothing here."""
    spec = importlib.util.spec_from_file_location("pyworker_clocks", WORKER)
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(WORKER.parent))
    worker = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = worker  # dataclasses look their module up
    try:
        spec.loader.exec_module(worker)
    finally:
        sys.path.remove(str(WORKER.parent))
        del sys.modules[spec.name]

    def compute(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def collecting(seconds: float) -> None:  # as gc.callbacks calls it around a collection
        worker._time_collections("start", {})
        compute(seconds)
        worker._time_collections("stop", {})

    since = worker._clocks()
    collecting(0.02)
    _, computed, _, _ = worker._spent(since)
    assert computed < 0.01  # the 20 ms were collecting

    since = worker._clocks()
    compute(0.02)
    elsewhere = threading.Thread(target=collecting, args=(0.02,))
    elsewhere.start()
    elsewhere.join()
    _, computed, _, _ = worker._spent(since)
    assert computed >= 0.02  # its own 20 ms, whatever the other thread collected


def test_time_in_the_garbage_collector_does_not_demote(tmp_path: Path) -> None:
    """A full collection can run during any call (here the call starts one, on a heap of
    half a million objects): its milliseconds are not the function's."""

    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            assert (await call(conn, mode="grow")).startswith("function")  # in the pool
            await promote(conn)
            for _ in range(3):
                where = await call(conn, mode="collect")
                assert where == "MainThread", [n.message for n in demotion_notes(conn)]
            assert not demotion_notes(conn)

    arun(scenario(), timeout=120)


def test_a_function_reading_context_cancelled_is_never_promoted(tmp_path: Path) -> None:
    """It may wait for the host's cancel, which the loop could not read while it runs."""
    (tmp_path / "polite").mkdir()
    (tmp_path / "polite" / "__init__.py").write_text(
        "import threading\n\n"
        "def main(req, context):\n"
        "    return 'stopped' if context.cancelled else threading.current_thread().name\n"
    )

    async def scenario() -> None:
        async with TestHost() as host:
            _, conn = await start(host, "python", app=tmp_path)
            script = str(tmp_path / "polite" / "__init__.py")
            loaded = await conn.load("p", "polite", bindings=http_bindings(), script_file=script)
            assert loaded.result.status == SUCCESS
            for _ in range(4 * PROMOTE_AFTER):
                reply = await conn.invoke("p", request(), timeout=30)
                assert decode_output(reply.return_value).startswith("function")

    arun(scenario(), timeout=120)


def test_the_watchdog_names_a_promoted_function_that_blocks_the_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path))
            await promote(conn)
            # Over the watchdog's 1 s (WorkerOptions.loop_block_warning's default).
            assert await call(conn, mode="sleep", s="1.3") == "MainThread"
            await until(lambda: any("blocked" in e.message for e in conn.logs))
            (warning,) = [e.message for e in conn.logs if "blocked" in e.message]
            assert "function 'flip'" in warning, warning
            assert demotion_notes(conn)
            assert (await call(conn)).startswith("function")

    arun(scenario(), timeout=120)


def test_pyworker_inline_0_keeps_every_plain_def_in_the_pool(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = await loaded(host, app(tmp_path), PYWORKER_INLINE="0")
            for _ in range(4 * PROMOTE_AFTER):
                assert (await call(conn)).startswith("function")

    arun(scenario(), timeout=120)
