"""Retry policies under ``workerkit host`` (issue 14, item 17), as the host applies them
(workerkit/emulator/_retry.py names the host's and the WebJobs SDK's code for each rule).

Run as a script, this file is the worker the scenarios start (``RetryWorker``): each
invocation logs a ``RECORD`` line with the ``RetryContext`` it got, and a function's name says
how it behaves: ``always…`` fails every time, ``flaky…`` fails unless it is a retry, anything
else succeeds.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

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

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionMetadata,
    HttpResponse,
    Invocation,
    MetadataRequest,
)
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.emulator import EmulatorError, EmulatorOptions
from workerkit.emulator._retry import (
    EXPONENTIAL_BACKOFF,
    FIXED_DELAY,
    RetryError,
    RetryPolicy,
    parse_retry,
    retry_from_rpc,
    timespan,
)

log = logging.getLogger("retry.worker")
log.setLevel(logging.INFO)

HERE = Path(__file__).resolve()
ONCE_A_YEAR = "0 0 0 1 1 *"  # with runOnStartup: the timer fires once, at start-up


class RetryWorker(workerkit.Worker):
    """The worker of these scenarios (module docstring). ``WK_RETRY_INDEX`` (a JSON list of
    ``{"name", "bindings", "retry_options"}``) makes it index its functions itself, reporting
    ``retry_options`` as the official Python worker does for ``@app.retry``."""

    runtime_name = "emulated"

    def on_functions_metadata(self, request: MetadataRequest) -> list[FunctionMetadata] | None:
        listed = os.environ.get("WK_RETRY_INDEX")
        if listed is None:
            return None
        _report_retry_options(json.loads(listed))
        return [
            FunctionMetadata(
                name=f["name"],
                script_file="worker.py",
                bindings=f["bindings"],
                directory=request.function_app_directory,
            )
            for f in json.loads(listed)
        ]

    def on_function_load(self, function: FunctionInfo) -> None:
        pass

    async def on_invocation(self, invocation: Invocation) -> Any:
        name = invocation.function.name
        retry = invocation.retry_context
        record = {
            "function": name,
            "invocation": invocation.invocation_id,
            "retry": None
            if retry is None
            else [retry.retry_count, retry.max_retry_count, retry.exception_message],
        }
        log.info("RECORD %s", json.dumps(record))
        retried = retry is not None and retry.retry_count > 0
        if name.startswith("always") or (name.startswith("flaky") and not retried):
            raise RuntimeError(f"{name} fails on purpose")
        if "req" in invocation.inputs:
            count = retry.retry_count if retry is not None else "none"
            return HttpResponse(body=f"served by attempt {count}")
        return None


def _report_retry_options(functions: list[dict[str, Any]]) -> None:
    """Make the metadata of `functions` carry their ``retry_options`` (workerkit's
    `FunctionMetadata` has no field for them): a second message with only that field,
    appended, which protobuf merges into the first."""
    from workerkit._runtime import control

    wanted = {f["name"]: f["retry_options"] for f in functions if "retry_options" in f}
    original = control.rpc_metadata

    def rpc_metadata(entry: FunctionMetadata, app_directory: str) -> bytes:
        data = original(entry, app_directory)
        options = wanted.get(entry.name)
        if options is None:
            return data
        retry = pb.RpcRetryOptions(
            max_retry_count=options["max_retry_count"],
            retry_strategy=pb.RpcRetryOptionsRetryStrategy.fixed_delay,
            delay_interval=datetime.timedelta(seconds=options["delay_seconds"]),
        )
        return data + bytes(pb.RpcFunctionMetadata(retry_options=retry))

    control.rpc_metadata = rpc_metadata


def retry_worker(root: Path) -> Path:
    return write_worker(root, description={"defaultWorkerPath": str(HERE)})


def attempts(running: RunningEmulator, function: str, count: int) -> list[dict[str, Any]]:
    """The first `count` RECORDs of `function`, once they are there."""
    running.wait_for(lambda _: len(running.records(function)) >= count, what=f"{count} attempts")
    return running.records(function)[:count]


# -- scenarios -----------------------------------------------------------------------------------
def test_a_timer_with_a_fixed_delay_policy_is_retried_with_a_retry_context(
    tmp_path: Path,
) -> None:
    """function.json ``retry``, fixed delay: 1 + maxRetryCount attempts, each a new invocation
    with a RetryContext (the first one too, retry_count 0), a retry carrying the previous
    failure; then the SDK's "failed after" error (FunctionExecutorExtensions.TryExecuteAsync)."""
    timer = {"type": "timerTrigger", "schedule": ONCE_A_YEAR, "runOnStartup": True}
    policy = {"strategy": "fixedDelay", "maxRetryCount": 2, "delayInterval": "00:00:00.1"}
    app = write_app(tmp_path, {"alwaystick": {**trigger_function(timer), "retry": policy}})
    running = RunningEmulator(EmulatorOptions(app, retry_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        first, second, third = attempts(running, "alwaystick", 3)
        out = running.wait_for("Function execution failed after '2' retries.")
    finally:
        assert running.stop() == 0
    assert first["retry"] == [0, 2, ""]
    assert [second["retry"][:2], third["retry"][:2]] == [[1, 2], [2, 2]]
    for retry in (second, third):
        message = retry["retry"][2]
        assert "Exception while executing function: Functions.alwaystick" in message
        assert "alwaystick fails on purpose" in message
    assert len({first["invocation"], second["invocation"], third["invocation"]}) == 3
    waits = "before retrying function execution. Next attempt: '{}'. Max retry count: '2'."
    assert "Waiting for `00:00:00.1000000` " + waits.format(1) in out
    assert waits.format(2) in out and waits.format(3) not in out
    assert len(running.records("alwaystick")) == 3
    assert "Soon retries will not be supported" not in out  # the timer supports retries


def test_host_json_retry_applies_to_every_trigger_and_a_functions_own_wins(
    tmp_path: Path,
) -> None:
    """host.json ``retry`` (exponential backoff) for functions without their own — HTTP and
    admin-fired ones too, as JobHost.CallAsync retries — with the SDK's start-up warning for
    triggers not marked [SupportsRetry]; a function's own policy wins (FunctionIndexer)."""
    backoff = {
        "strategy": "exponentialBackoff",
        "maxRetryCount": 3,
        "minimumInterval": "00:00:00.05",
        "maximumInterval": "00:00:00.2",
    }
    queue = {"type": "queueTrigger", "queueName": "q"}
    own = {"strategy": "fixedDelay", "maxRetryCount": 0, "delayInterval": "00:00:01"}
    app = write_app(
        tmp_path,
        {
            "flakyhttp": http_function(["get"]),
            "flakyqueue": trigger_function(queue),
            "alwaysonce": {**trigger_function(queue), "retry": own},
        },
        host={"retry": backoff},
    )
    running = RunningEmulator(EmulatorOptions(app, retry_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        out = running.output
        for name in ("flakyhttp", "flakyqueue", "alwaysonce"):
            assert f"Soon retries will not be supported for function '{name}'" in out
        reply = running.request("GET", "/api/flakyhttp")  # one request, two attempts
        assert (reply.status, reply.text) == (200, "served by attempt 1")
        first, second = attempts(running, "flakyhttp", 2)
        assert (first["retry"], second["retry"][:2]) == ([0, 3, ""], [1, 3])
        assert "flakyhttp fails on purpose" in second["retry"][2]
        for name in ("flakyqueue", "alwaysonce"):
            body = json.dumps({"input": "x"}).encode()
            assert running.request("POST", f"/admin/functions/{name}", body).status == 202
        first, second = attempts(running, "flakyqueue", 2)
        assert (first["retry"], second["retry"][:2]) == ([0, 3, ""], [1, 3])
        running.wait_for("Function 'alwaysonce': Function execution failed after '0' retries.")
        (only,) = attempts(running, "alwaysonce", 1)
        assert only["retry"] == [0, 0, ""]  # its own policy: no retries, still a context
        # exponential backoff: the first delay is the minimum
        assert "Waiting for `00:00:00.0500000` before retrying" in running.output
    finally:
        assert running.stop() == 0
    assert len(running.records("alwaysonce")) == 1
    assert len(running.records("flakyhttp")) == 2 and len(running.records("flakyqueue")) == 2


def test_retry_options_a_worker_reports_when_it_indexes_its_functions(tmp_path: Path) -> None:
    """RpcFunctionMetadata.retry_options (GrpcWorkerChannel: strategy and its own intervals)."""
    index = [
        {
            "name": "alwaysindexed",
            "bindings": [{"type": "queueTrigger", "direction": "in", "name": "item"}],
            "retry_options": {"max_retry_count": 1, "delay_seconds": 0.05},
        },
        {
            "name": "plain",
            "bindings": [{"type": "queueTrigger", "direction": "in", "name": "item"}],
        },
    ]
    app = write_app(tmp_path, {}, settings={"WK_RETRY_INDEX": json.dumps(index)})
    worker = write_worker(
        tmp_path, description={"defaultWorkerPath": str(HERE), "workerIndexing": "true"}
    )
    running = RunningEmulator(EmulatorOptions(app, worker, port=0)).start()
    try:
        assert running.start_error is None, running.output
        for name in ("alwaysindexed", "plain"):
            body = json.dumps({"input": "x"}).encode()
            assert running.request("POST", f"/admin/functions/{name}", body).status == 202
        first, second = attempts(running, "alwaysindexed", 2)
        running.wait_for("Function 'alwaysindexed': Function execution failed after '1' retries.")
        (plain,) = attempts(running, "plain", 1)
    finally:
        assert running.stop() == 0
    assert (first["retry"], second["retry"][:2]) == ([0, 1, ""], [1, 1])
    assert "Waiting for `00:00:00.0500000` before retrying" in running.output
    assert plain["retry"] is None  # no policy: no RetryContext at all
    assert len(running.records("alwaysindexed")) == 2


def test_stopping_the_host_ends_a_retry_wait(tmp_path: Path) -> None:
    """Host shutdown cancels the wait between attempts, ending the retries with the SDK's
    warning ("Invocation cancelled - exiting retry loop.")."""
    timer = {"type": "timerTrigger", "schedule": ONCE_A_YEAR, "runOnStartup": True}
    policy = {"strategy": "fixedDelay", "maxRetryCount": -1, "delayInterval": "01:00:00"}
    app = write_app(tmp_path, {"alwayswaiting": {**trigger_function(timer), "retry": policy}})
    running = RunningEmulator(EmulatorOptions(app, retry_worker(tmp_path), port=0)).start()
    assert running.start_error is None, running.output
    running.wait_for("Waiting for `01:00:00` before retrying function execution. Next attempt: '1'")
    assert running.stop() == 0  # (its timeout only catches a hang: a wait of an hour)
    assert "Function 'alwayswaiting': Invocation cancelled - exiting retry loop." in running.output
    assert len(running.records("alwayswaiting")) == 1


def test_invalid_retry_policies_are_rejected_as_the_host_rejects_them(tmp_path: Path) -> None:
    """In function.json: a function error with the host's message (Utility.ValidateRetryOptions
    and the SDK's retry attributes), the other functions load; in host.json: no start."""
    queue = {"type": "queueTrigger", "queueName": "q"}
    bad = {
        "nocount": {"strategy": "fixedDelay", "delayInterval": "00:00:01"},
        "nodelay": {"strategy": "FIXEDDELAY", "maxRetryCount": 1},
        "nobounds": {"maxRetryCount": 1},  # exponentialBackoff by default
        "minovermax": {
            "strategy": "exponentialBackoff",
            "maxRetryCount": 1,
            "minimumInterval": "00:01:00",
            "maximumInterval": "00:00:01",
        },
    }
    functions: dict[str, Any] = {
        name: {**trigger_function(queue), "retry": r} for name, r in bad.items()
    }
    functions["fine"] = trigger_function(queue)
    app = write_app(tmp_path / "functions", functions)
    running = RunningEmulator(EmulatorOptions(app, retry_worker(tmp_path), port=0)).start()
    try:
        assert running.start_error is None, running.output
        out = running.output
        assert "The following 4 functions are in error" in out
        assert (
            "nocount:" in out and "retry: Value cannot be null. (Parameter 'MaxRetryCount')" in out
        )
        assert "(Parameter 'DelayInterval')" in out and "(Parameter 'MinimumInterval')" in out
        assert "The minimumInterval must not be greater than the maximumInterval." in out
        assert f"fine: queueTrigger: POST {running.url}/admin/functions/fine" in out
    finally:
        assert running.stop() == 0
    broken = write_app(
        tmp_path / "host", {"fine": trigger_function(queue)}, host={"retry": bad["nocount"]}
    )
    refused = RunningEmulator(EmulatorOptions(broken, retry_worker(tmp_path), port=0)).start()
    assert isinstance(refused.start_error, EmulatorError), refused.output
    assert "host.json: retry: Value cannot be null. (Parameter 'MaxRetryCount')" in str(
        refused.start_error
    )


# -- the policy itself ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"strategy": "fixedDelay", "delayInterval": "00:00:01"}, "(Parameter 'MaxRetryCount')"),
        ({"strategy": "fixedDelay", "maxRetryCount": 1}, "(Parameter 'DelayInterval')"),
        ({"maxRetryCount": 1, "maximumInterval": "00:00:01"}, "(Parameter 'MinimumInterval')"),
        ({"maxRetryCount": 1, "minimumInterval": "00:00:01"}, "(Parameter 'MaximumInterval')"),
        (
            {"strategy": "fixedDelay", "maxRetryCount": -2, "delayInterval": "00:00:01"},
            "(Parameter 'maxRetryCount')",
        ),
        (
            {"strategy": "fixedDelay", "maxRetryCount": 1, "delayInterval": "-00:00:01"},
            "The TimeSpan must not be negative. (Parameter 'delayInterval')",
        ),
        ({"strategy": "linear", "maxRetryCount": 1}, "to type 'Microsoft.Azure.WebJobs"),
        ({"strategy": "fixedDelay", "maxRetryCount": 1, "delayInterval": 10}, "TimeSpan"),
        ({"strategy": "fixedDelay", "maxRetryCount": "x", "delayInterval": "1"}, "Int32"),
        # numbers beyond Int32, however long: a conversion error, never a crash
        ({"strategy": "fixedDelay", "maxRetryCount": "9" * 5000, "delayInterval": "1"}, "Int32"),
        ({"strategy": "fixedDelay", "maxRetryCount": 10**30, "delayInterval": "1"}, "Int32"),
        ({"strategy": "fixedDelay", "maxRetryCount": 2**31, "delayInterval": "1"}, "Int32"),
        ({"strategy": "fixedDelay", "maxRetryCount": 1e300, "delayInterval": "1"}, "Int32"),
        ([], "'retry' must be an object"),
    ],
)
def test_policies_the_host_rejects(value: Any, message: str) -> None:
    with pytest.raises(RetryError) as caught:
        parse_retry(value)
    assert message in str(caught.value)


def test_policies_the_host_reads() -> None:
    fixed = parse_retry({"Strategy": "FixedDelay", "MAXRETRYCOUNT": "4", "delayInterval": "1"})
    assert fixed == RetryPolicy(FIXED_DELAY, 4, delay_interval=86400.0)  # "1" is one day
    backoff = parse_retry(
        {
            "strategy": 0,
            "maxRetryCount": -1,
            "minimumInterval": "00:00:02",
            "maximumInterval": "00:15:00",
        }
    )
    assert backoff == RetryPolicy(EXPONENTIAL_BACKOFF, -1, minimum_interval=2, maximum_interval=900)
    rpc = pb.RpcRetryOptions(
        max_retry_count=3,
        retry_strategy=pb.RpcRetryOptionsRetryStrategy.exponential_backoff,
        minimum_interval=datetime.timedelta(seconds=1),
        maximum_interval=datetime.timedelta(seconds=8),
        delay_interval=datetime.timedelta(seconds=99),  # not its strategy's: ignored
    )
    assert retry_from_rpc(rpc) == RetryPolicy(EXPONENTIAL_BACKOFF, 3, 0.0, 1.0, 8.0)
    with pytest.raises(RetryError, match="DelayInterval"):
        retry_from_rpc(
            pb.RpcRetryOptions(retry_strategy=pb.RpcRetryOptionsRetryStrategy.fixed_delay)
        )


def test_exponential_backoff_doubles_from_the_minimum_and_holds_at_the_maximum() -> None:
    """RandomizedExponentialBackoffStrategy with its random factor at 1: min, then min plus
    min times 1, 2, 4, … until the maximum, which then stays."""
    policy = RetryPolicy(EXPONENTIAL_BACKOFF, -1, minimum_interval=1.0, maximum_interval=20.0)
    delays = policy.delays(lambda low, high: 1.0)
    assert [next(delays) for _ in range(8)] == [1.0, 2.0, 3.0, 5.0, 9.0, 17.0, 20.0, 20.0]
    fixed = RetryPolicy(FIXED_DELAY, 3, delay_interval=0.5).delays()
    assert [next(fixed) for _ in range(3)] == [0.5, 0.5, 0.5]


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 3600),
    st.floats(0, 3600),
    st.lists(st.floats(0.8, 1.2), min_size=12, max_size=12),
)
def test_backoff_delays_stay_between_the_bounds_and_never_shrink(
    low: float, high: float, factors: list[float]
) -> None:
    minimum, maximum = min(low, high), max(low, high)
    policy = RetryPolicy(
        EXPONENTIAL_BACKOFF, -1, minimum_interval=minimum, maximum_interval=maximum
    )
    draws = iter(factors)
    delays = policy.delays(lambda a, b: next(draws))
    seen = [next(delays) for _ in range(12)]
    assert seen[0] == (minimum if minimum < maximum else maximum)
    assert all(minimum <= d <= maximum for d in seen)
    assert seen == sorted(seen)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00"),
        (0.1, "00:00:00.1000000"),
        (3600, "01:00:00"),
        (90061.5, "1.01:01:01.5000000"),
    ],
)
def test_delays_are_printed_as_dotnet_prints_a_timespan(seconds: float, text: str) -> None:
    assert timespan(seconds) == text


if __name__ == "__main__":
    RetryWorker.main()
