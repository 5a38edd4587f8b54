"""`workerkit host` with several worker processes, as the host's dispatcher runs them
(Azure/azure-functions-host, src/WebJobs.Script/Workers/Rpc/FunctionRegistration/
RpcFunctionInvocationDispatcher.cs and RpcFunctionInvocationDispatcherLoadBalancer.cs;
src/WebJobs.Script/Workers/Rpc/Configuration/RpcWorkerConfigFactory.cs for the count).

Real `workerkit host` runs (in-process `Emulator` on 127.0.0.1, or the command), real worker
subprocesses (a small worker written into the test's directory that answers with its pid),
real HTTP requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import eventually
from emulator_support import (
    HostSubprocess,
    RunningEmulator,
    alive,
    http_function,
    request,
    trigger_function,
    write_app,
    write_worker,
)

from workerkit.emulator import EmulatorOptions

#: A worker that says which process it is: `pid` answers its pid, `crash` exits 3,
#: `orphaning` exits 3 leaving a child that holds its stdout and stderr open, `block` blocks
#: its event loop (so it answers neither the call, nor its cancel, nor WorkerTerminate),
#: `stall` answers and then blocks it (reading nothing more of its stream);
#: ``PIDS_INDEX`` (worker indexing) reports one function.
WORKER_SOURCE = """
import asyncio
import os
import subprocess
import sys
import time
import workerkit
from workerkit import FunctionMetadata, HttpResponse


class PidWorker(workerkit.Worker):
    runtime_name = "pids"

    def on_functions_metadata(self, request):
        if not os.environ.get("PIDS_INDEX"):
            return None
        trigger = {"type": "httpTrigger", "direction": "in", "name": "req",
                   "authLevel": "anonymous", "methods": ["get"]}
        out = {"type": "http", "direction": "out", "name": "$return"}
        return [FunctionMetadata(name="pid", script_file="worker.py", bindings=[trigger, out],
                                 directory=request.function_app_directory)]

    def on_function_load(self, function):
        pass

    async def on_invocation(self, invocation):
        name = invocation.function.name
        if name == "crash":
            os._exit(3)
        if name == "orphaning":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            print(f"left child {child.pid}", flush=True)
            os._exit(3)
        if name == "block":
            time.sleep(120)
        if name == "stall":  # answers, then stops reading its stream
            asyncio.get_running_loop().call_later(0.1, time.sleep, 120)
            return HttpResponse(body="stalling")
        return HttpResponse(body=str(os.getpid()))


if __name__ == "__main__":
    PidWorker.main()
"""

STARTED = re.compile(r"Worker process started and initialized: pid (\d+)")
LONG = "00:10:00"  # an interval no test waits for


def pid_worker(
    root: Path, *, description: dict[str, Any] | None = None, **process_options: str
) -> Path:
    """A worker directory for `WORKER_SOURCE` with these processOptions."""
    worker = write_worker(
        root,
        description={"language": "pids", "defaultWorkerPath": "worker.py", **(description or {})},
        process_options=process_options,
    )
    (worker / "worker.py").write_text(WORKER_SOURCE)
    return worker


def app_with(root: Path, settings: dict[str, str] | None = None) -> Path:
    return write_app(
        root, {"pid": http_function(["get"]), "crash": http_function(["get"])}, settings=settings
    )


def started_pids(output: str) -> list[int]:
    return [int(pid) for pid in STARTED.findall(output)]


def wait_started(running: RunningEmulator, count: int) -> list[int]:
    """The pids of the first `count` workers, once that many have started."""
    running.wait_for(lambda out: len(started_pids(out)) >= count, what=f"{count} workers")
    return started_pids(running.output)[:count]


READY = re.compile(r"Worker process pid (\d+) takes invocations")


def wait_ready(running: RunningEmulator, count: int) -> list[int]:
    """The pids of the first `count` workers to take invocations (their functions loaded:
    a worker that has only answered init does not take calls yet), once that many have."""
    running.wait_for(lambda out: len(READY.findall(out)) >= count, what=f"{count} ready")
    return [int(pid) for pid in READY.findall(running.output)][:count]


def test_functions_worker_process_count_starts_that_many_and_takes_turns(
    tmp_path: Path,
) -> None:
    """FUNCTIONS_WORKER_PROCESS_COUNT (an app setting here) starts that many workers; calls go
    round robin over the ready ones, the first to the second worker (the host's counter is
    incremented before use), and the console names the pid that ran each call."""
    app = app_with(tmp_path, {"FUNCTIONS_WORKER_PROCESS_COUNT": "3"})
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        first, second, third = wait_ready(running, 3)
        served = [int(running.request("GET", "/api/pid").text) for _ in range(6)]
        assert served == [second, third, first, second, third, first], running.output
        executing = r"Executing 'Functions\.pid' \(.*?\) on worker pid (\d+)"
        named = re.findall(executing, running.output)
        assert [int(pid) for pid in named] == served
        assert len(started_pids(running.output)) == 3  # no more than asked for
    finally:
        assert running.stop() == 0


def test_process_count_workers_start_one_after_another_with_the_startup_interval(
    tmp_path: Path,
) -> None:
    """processCount in worker.config.json: the first worker serves at once; the next starts
    processStartupInterval after it (StartWorkerProcesses), so with a long interval the
    second has not started while the first takes every call. Ctrl-C meanwhile still stops."""
    app = app_with(tmp_path)
    worker = pid_worker(tmp_path, processCount=2, processStartupInterval=LONG)
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        running.wait_for("Starting worker process 2 of 2 in 600 s (processStartupInterval).")
        (first,) = started_pids(running.output)
        assert {int(running.request("GET", "/api/pid").text) for _ in range(4)} == {first}
        assert started_pids(running.output) == [first]
    finally:
        assert running.stop() == 0
    assert not alive(first)


def test_with_worker_indexing_the_second_worker_starts_at_once(tmp_path: Path) -> None:
    """With worker indexing the first worker (asked for the functions) is already running
    when the dispatcher starts the others: the second starts at once, the interval comes after
    it. Only the first is asked for its functions; the others are loaded with them."""
    app = write_app(tmp_path, {}, settings={"PIDS_INDEX": "1"})
    worker = pid_worker(
        tmp_path,
        processCount=3,
        processStartupInterval=LONG,
        description={"workerIndexing": "true"},
    )
    running = RunningEmulator(EmulatorOptions(app, worker, port=0), verbose=True).start()
    try:
        assert running.start_error is None, running.output
        running.wait_for("Starting worker process 3 of 3 in 600 s (processStartupInterval).")
        first, second = wait_ready(running, 2)
        assert {int(running.request("GET", "/api/pid").text) for _ in range(4)} == {
            first,
            second,
        }
        assert running.output.count("host → worker functions_metadata_request") == 1
        assert running.output.count("host → worker function_load_request") == 2
        assert len(started_pids(running.output)) == 2
    finally:
        assert running.stop() == 0


def test_a_crashed_worker_is_replaced_while_the_others_serve(tmp_path: Path) -> None:
    """A worker error disposes only that worker (its call fails) and starts one replacement;
    the other keeps serving meanwhile. The error count is the host's single bucket for all
    workers: 3 per process, so 5 restarts are left with 2 workers."""
    app = app_with(tmp_path, {"FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        started = wait_ready(running, 2)
        # Both take calls: the second gets this one (the host's counter is incremented
        # before use); which one crashed is read from the processes, not assumed.
        assert running.request("GET", "/api/crash").status == 500
        running.wait_for("Language Worker Process exited with status 3")
        crashed = eventually(
            lambda: [pid for pid in started if not alive(pid)], "the crashed worker gone", 30
        )
        assert len(crashed) == 1, running.output
        (survivor,) = set(started) - set(crashed)
        assert "4 of 5 restarts left after this one" in running.wait_for("restarts left")
        replacement = wait_started(running, 3)[2]
        served: set[int] = set()  # the replacement takes calls once its functions are loaded
        eventually(
            lambda: (
                served.add(int(running.request("GET", "/api/pid").text)) or replacement in served
            ),
            "a call served by the replacement",
            60,
        )
        assert served <= {survivor, replacement}, running.output
        assert alive(survivor)
    finally:
        assert running.stop() == 0


def test_the_error_budget_is_shared_and_the_host_stops_when_no_worker_is_left(
    tmp_path: Path,
) -> None:
    """Two workers: 6 errors (3 per process) are allowed in all; the sixth failed worker is
    not replaced while the other runs, and the seventh error, with no worker left, stops the
    host (StartWorkerChannel: "Exceeded language worker restart retry count")."""
    app = app_with(tmp_path, {"FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        wait_started(running, 2)
        for crash in range(1, 7):
            assert running.request("GET", "/api/crash").status == 500
            running.wait_for(
                lambda out, n=crash: out.count("Language Worker Process exited") >= n,
                what=f"crash {crash}",
            )
            if crash < 6:  # replaced: two workers again before the next crash
                wait_started(running, 2 + crash)
        running.wait_for("Not replacing this worker process: 6 worker errors")
        survivor = int(running.request("GET", "/api/pid").text)
        assert alive(survivor)
        assert running.request("GET", "/api/crash").status == 500
        assert running.wait_exit(60) == 1
    finally:
        running.stop()
    assert "the worker failed 7 times" in running.output
    assert "giving up after 5 restarts (2 worker processes)" in running.output
    assert len(started_pids(running.output)) == 7  # 2, then 5 replacements


def test_a_worker_that_is_gone_takes_no_more_calls(tmp_path: Path) -> None:
    """A worker whose process exited takes no call while its output is still being read (a
    child it left holds its pipes): the host disposes its channel as the process exits
    (WorkerProcess.OnProcessExited), so the next calls go to the worker left, none fails."""
    app = write_app(
        tmp_path,
        {"pid": http_function(["get"]), "orphaning": http_function(["get"])},
        settings={"FUNCTIONS_WORKER_PROCESS_COUNT": "2"},
    )
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        second = wait_ready(running, 2)[1]
        assert running.request("GET", "/api/orphaning").status == 500  # went to the second
        replies = [running.request("GET", "/api/pid") for _ in range(4)]
        assert [r.status for r in replies] == [200] * 4, running.output
        assert second not in {int(r.text) for r in replies}
        running.wait_for("left child")
    finally:  # the child first: it holds the pipes of the worker that left it
        for child in map(int, re.findall(r"left child (\d+)", running.output)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        assert running.stop() == 0


def test_a_worker_restarted_after_a_function_timeout_takes_no_more_calls(
    tmp_path: Path,
) -> None:
    """A worker restarted because it did not answer a timed-out call takes no further call
    while it is being ended (WorkerTerminate, 5 s grace, the kill): the host disposes its
    channel first (RestartWorkerWithInvocationIdAsync), so the calls go to the other one."""
    app = write_app(
        tmp_path,
        {"pid": http_function(["get"]), "block": http_function(["get"])},
        settings={"FUNCTIONS_WORKER_PROCESS_COUNT": "2"},
        host={"functionTimeout": "00:00:01"},
    )
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        second = wait_ready(running, 2)[1]
        assert running.request("GET", "/api/block").status == 500  # the second, timed out
        running.wait_for("A function timeout has occurred. Restarting worker process")
        replies = [running.request("GET", "/api/pid") for _ in range(4)]
        assert [r.status for r in replies] == [200] * 4, running.output
        assert second not in {int(r.text) for r in replies}
    finally:
        assert running.stop() == 0


def test_a_call_the_worker_does_not_read_still_ends_at_the_function_timeout(
    tmp_path: Path,
) -> None:
    """Sending a call is bounded by the function timeout too: a worker that stops reading its
    stream holds a large request back (HTTP/2 flow control), and the host's invocation still
    times out (its sends are queued), after which the worker is restarted."""
    app = write_app(
        tmp_path,
        {"pid": http_function(["post"]), "stall": http_function(["get"])},
        host={"functionTimeout": "00:00:01"},
    )
    running = RunningEmulator(EmulatorOptions(app, pid_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        assert running.request("GET", "/api/stall").text == "stalling"
        body = b"x" * (32 * 1024 * 1024)  # more than the stream's windows and socket buffers
        reply = running.request("POST", "/api/pid", body, timeout=30)  # only catches a hang
        assert (reply.status, reply.body) == (500, b""), running.output
        running.wait_for("Timeout value of 0:00:01 was exceeded by function: Functions.pid")
        running.wait_for("A function timeout has occurred. Restarting worker process")
        eventually(  # a new worker serves (each try fails within the function timeout)
            lambda: running.request("POST", "/api/pid", b"x").status == 200,
            "a new worker serving",
            60,
        )
        assert len(started_pids(running.output)) == 2
    finally:
        assert running.stop() == 0


def test_stopping_ends_a_call_waiting_for_a_restarting_worker(tmp_path: Path) -> None:
    """A call waiting for a worker (the only one is waiting out processRestartInterval) fails
    as soon as the host stops, rather than when stopping gives up on it."""
    queue = trigger_function({"type": "queueTrigger", "queueName": "q"})
    app = write_app(
        tmp_path, {"pid": http_function(["get"]), "crash": http_function(["get"]), "q": queue}
    )
    worker = pid_worker(tmp_path, processRestartInterval=LONG)
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        assert running.request("GET", "/api/crash").status == 500  # restarted at once
        assert running.request("GET", "/api/crash").status == 500  # restarted in 10 minutes
        running.wait_for("s (processRestartInterval)")
        body = json.dumps({"input": "x"}).encode()
        assert running.request("POST", "/admin/functions/q", body).status == 202
    finally:
        assert running.stop() == 0
    out = running.output
    failed = out.find("Executed 'Functions.q' (Failed")
    assert 0 < failed < out.index("Host stopped."), out
    assert "the host is shutting down" in out[failed:]


def test_ctrl_c_stops_every_worker_process(tmp_path: Path) -> None:
    """``workerkit host`` as a user runs it: Ctrl-C ends all the workers, then the host."""
    app = app_with(tmp_path, {"FUNCTIONS_WORKER_PROCESS_COUNT": "3"})
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    host = HostSubprocess(app, worker)
    try:
        # all three take calls (their functions loaded), not only initialized
        eventually(lambda: len(READY.findall(host.output)) == 3, lambda: host.output, 60)
        pids = [int(pid) for pid in READY.findall(host.output)]
        served = {int(request("GET", f"{host.url}/api/pid").text) for _ in range(3)}
        assert served == set(pids)
        host.process.send_signal(signal.SIGINT)
        assert host.wait_exit() == 0, host.output
    finally:
        host.close()
    assert not [pid for pid in pids if alive(pid)], host.output
    assert "Host stopped." in host.output


def test_more_processes_than_max_process_count_is_refused_clearly(tmp_path: Path) -> None:
    """FUNCTIONS_WORKER_PROCESS_COUNT above maxProcessCount: the host drops the worker config
    (no worker at all, not a clamp); the message says where the count came from and what to
    do."""
    app = app_with(tmp_path)
    worker = pid_worker(tmp_path, maxProcessCount=4)
    done = subprocess.run(
        [sys.executable, "-m", "workerkit", "host", str(app), "--worker", str(worker),
         "--port", "0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FUNCTIONS_WORKER_PROCESS_COUNT": "5"},
    )  # fmt: skip
    assert done.returncode == 1, done
    assert "FUNCTIONS_WORKER_PROCESS_COUNT=5" in done.stderr
    assert "maxProcessCount (4)" in done.stderr
    assert "starts no worker" in done.stderr
    assert "Ask for at most 4" in done.stderr
    assert "Worker process started" not in done.stdout


def test_the_benchmark_of_one_and_two_worker_processes_runs() -> None:
    """``make bench``'s workerkit host scenario in its quickest mode: the shape of its records
    (every answer checked, a run per process count, the ratio), never its speed."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--targets", "workerkit-host"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    runs = [r for r in records if r["kind"] == "host_run"]
    assert sorted(r["processes"] for r in runs) == [1, 2]
    assert all(r["errors"] == 0 and r["per_second"] > 0 for r in runs), runs
    (ratio,) = [r for r in records if r["kind"] == "ratio" and r["label"] == "2 processes vs 1"]
    assert ratio["target"] == 1.5 and ratio["verdict"] in ("PASS", "FAIL")
    assert "2 processes vs 1" in done.stderr
