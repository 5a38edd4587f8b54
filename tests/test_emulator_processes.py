"""`workerkit host` with several worker processes, as the host's dispatcher runs them
(Azure/azure-functions-host, src/WebJobs.Script/Workers/Rpc/FunctionRegistration/
RpcFunctionInvocationDispatcher.cs and RpcFunctionInvocationDispatcherLoadBalancer.cs;
src/WebJobs.Script/Workers/Rpc/Configuration/RpcWorkerConfigFactory.cs for the count).

Real `workerkit host` runs (in-process `Emulator` on 127.0.0.1, or the command), real worker
subprocesses (a small worker written into the test's directory that answers with its pid),
real HTTP requests.
"""

from __future__ import annotations

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
    write_app,
)

from workerkit.emulator import EmulatorOptions

#: A worker that says which process it is: `pid` answers its pid, `crash` exits 3,
#: `indexed` (worker indexing) reports one function.
WORKER_SOURCE = """
import os
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
        if invocation.function.name == "crash":
            os._exit(3)
        return HttpResponse(body=str(os.getpid()))


if __name__ == "__main__":
    PidWorker.main()
"""

STARTED = re.compile(r"Worker process started and initialized: pid (\d+)")
LONG = "00:10:00"  # an interval no test waits for


def pid_worker(root: Path, **process_options: Any) -> Path:
    """A worker directory for `WORKER_SOURCE` with these processOptions."""
    worker = root / "worker"
    worker.mkdir(parents=True, exist_ok=True)
    (worker / "worker.py").write_text(WORKER_SOURCE)
    config = {
        "description": {
            "language": "pids",
            "extensions": [".txt"],
            "defaultExecutablePath": sys.executable,
            "defaultWorkerPath": "worker.py",
            "arguments": ["-u"],
            **process_options.pop("description", {}),
        },
        "processOptions": {
            "initializationTimeout": "00:00:30",
            "processRestartInterval": "00:00:00",
            **process_options,
        },
    }
    (worker / "worker.config.json").write_text(json.dumps(config))
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
        first, second, third = wait_started(running, 3)
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
        first, second = wait_started(running, 2)
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
        first, second = wait_started(running, 2)
        assert running.request("GET", "/api/crash").status == 500  # went to the second
        running.wait_for("Language Worker Process exited with status 3")
        eventually(lambda: not alive(second), "the second worker gone", 30)
        assert "4 of 5 restarts left after this one" in running.wait_for("restarts left")
        replacement = wait_started(running, 3)[2]
        served = {int(running.request("GET", "/api/pid").text) for _ in range(4)}
        assert served == {first, replacement}, running.output
        assert alive(first)
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


def test_ctrl_c_stops_every_worker_process(tmp_path: Path) -> None:
    """``workerkit host`` as a user runs it: Ctrl-C ends all the workers, then the host."""
    app = app_with(tmp_path, {"FUNCTIONS_WORKER_PROCESS_COUNT": "3"})
    worker = pid_worker(tmp_path, processStartupInterval="00:00:00")
    host = HostSubprocess(app, worker)
    try:
        eventually(lambda: len(started_pids(host.output)) == 3, lambda: host.output, 60)
        pids = started_pids(host.output)
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
