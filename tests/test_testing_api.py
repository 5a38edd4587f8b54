"""The author-facing side of `workerkit.testing` (issue 13): typed load and call results over
a real stream, and a worker that dies at start-up reported at once with the end of its
stderr."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, arun, until

import workerkit
from workerkit import (
    FunctionInfo,
    FunctionLoadError,
    HttpRequest,
    HttpResponse,
    Invocation,
    InvocationResult,
)
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.cli import HostArgs
from workerkit.convert import ConversionError
from workerkit.testing import (
    CallFailed,
    CallResult,
    FunctionLoadFailed,
    HostConnection,
    LoadResult,
    LogEntry,
    StreamNotOpened,
    TestHost,
    binding,
    http_bindings,
)

typed_log = logging.getLogger("tests.typed")
typed_log.setLevel(logging.DEBUG)

#: The named outputs of `Typed`'s "outputs" function, one of each kind the host takes back.
OUTPUTS: dict[str, Any] = {
    "text": "héllo",
    "blob": b"\x00\x01\xff",
    "count": 2**40,
    "ratio": 0.25,
    "doc": {"items": [1, "two", None], "nested": {"ok": True}},
    "flag": False,
}


class Typed(workerkit.Worker):
    """Behaviour chosen by function name."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: dict[str, str] = {}  # function id -> name

    def on_function_load(self, function: FunctionInfo) -> None:
        if function.name.startswith("refused"):
            raise FunctionLoadError(f"no template for {function.name}")
        self.loaded[function.function_id] = function.name

    async def on_invocation(self, invocation: Invocation) -> Any:
        match invocation.function.name:
            case "http":  # to $return, or to a named http binding: the worker decides
                request = invocation.inputs["req"]
                return HttpResponse(
                    status_code=201, body=b"made " + request.body, headers={"x-made": "yes"}
                )
            case "plain":
                return {
                    "sum": sum(invocation.inputs["numbers"]),
                    "id": invocation.function.function_id,
                }
            case "outputs":
                return InvocationResult(return_value="done", outputs=OUTPUTS)
            case "fails":
                raise RuntimeError(f"user code failed on {invocation.inputs['value']!r}")
            case "logs":
                typed_log.info("first %s", "line")
                try:
                    raise KeyError("missing")
                except KeyError:
                    typed_log.exception("it broke")
                return None
            case "waits":
                typed_log.info("waiting")  # the test waits for it: the call is running
                await asyncio.Event().wait()
        raise AssertionError(f"no scenario {invocation.function.name}")


@contextlib.asynccontextmanager
async def typed_worker() -> AsyncIterator[tuple[HostConnection, Typed]]:
    worker = Typed()
    async with TestHost() as host:
        started = await host.start_worker(worker)
        await started.connection.init()
        yield started.connection, worker


def test_load_function_reports_success_under_an_id_derived_from_the_name() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, worker):
            loaded = await conn.load_function("plain", bindings={"$return": binding("http")})
            assert isinstance(loaded, LoadResult)
            assert (loaded.ok, loaded.error, loaded.name) == (True, None, "plain")
            assert worker.loaded == {loaded.function_id: "plain"}
            assert loaded.response.function_id == loaded.function_id
            assert loaded.function_id != "plain"  # a GUID, as the host sends
            again = await conn.load_function("plain")  # the same name, the same id
            assert again.function_id == loaded.function_id
            mine = await conn.load_function("plain", function_id="my-id")
            assert mine.function_id == "my-id" and worker.loaded["my-id"] == "plain"

    arun(scenario())


def test_load_function_raises_the_workers_message_unless_check_is_false() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            with pytest.raises(FunctionLoadFailed) as info:
                await conn.load_function("refused-one")
            message = str(info.value)
            assert "'refused-one'" in message and "no template for refused-one" in message
            assert info.value.result.error == "no template for refused-one"
            assert not info.value.result.ok

            reported = await conn.load_function("refused-two", check=False)
            assert not reported.ok
            assert reported.error == "no template for refused-two"
            assert reported.response.result is not None
            assert reported.response.result.status == pb.StatusResultStatus.Failure
            # The worker answers its invocations with the load error, as the host expects.
            result = await conn.call(reported)
            assert result.status == "failure"
            assert result.error is not None and "no template for refused-two" in result.error

    arun(scenario())


@pytest.mark.parametrize("output", ["$return", "res"])
def test_call_gives_the_http_response_whether_returned_or_in_a_named_binding(output: str) -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            http = await conn.load_function("http", bindings=http_bindings(output=output))
            request = HttpRequest("POST", "http://127.0.0.1/api/http", body=b"it")
            result = await conn.call(http, {"req": request})
            assert isinstance(result, CallResult)
            assert (result.status, result.ok, result.error) == ("success", True, None)
            assert result.http is not None
            assert result.http.status_code == 201
            assert result.http.body == b"made it"
            assert result.http.headers == {"x-made": "yes"}
            if output == "$return":
                assert (result.return_value, result.outputs) == (result.http, {})
            else:
                assert (result.return_value, result.outputs) == (None, {"res": result.http})
                # what needs reading by hand at the protocol level
                assert result.response.output_data[0].name == "res"
            assert result.raise_for_status() is result

    arun(scenario())


def test_call_decodes_a_plain_return_value_and_accepts_a_function_id() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            plain = await conn.load_function(
                "plain",
                bindings={"numbers": binding("queueTrigger"), "$return": binding("queue", "out")},
            )
            result = await conn.call(plain.function_id, {"numbers": [1, 2, 3.5]})
            assert result.ok
            assert result.return_value == {"sum": 6.5, "id": plain.function_id}
            assert (result.outputs, result.http) == ({}, None)

    arun(scenario())


def test_call_decodes_named_outputs_of_every_kind_the_host_takes() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            bindings = {"trigger": binding("queueTrigger"), "$return": binding("queue", "out")}
            bindings |= {name: binding("blob", "out") for name in OUTPUTS}
            outputs = await conn.load_function("outputs", bindings=bindings)
            result = await conn.call(outputs, {"trigger": "go"})
            assert result.ok and result.return_value == "done"
            assert result.outputs == OUTPUTS
            assert type(result.outputs["flag"]) is bool  # not 0
            assert type(result.outputs["count"]) is int and type(result.outputs["ratio"]) is float

    arun(scenario())


def test_a_failing_call_reports_the_workers_message_and_raise_for_status_raises_it() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            fails = await conn.load_function("fails")
            result = await conn.call(fails, {"value": 42})
            assert (result.status, result.ok) == ("failure", False)
            assert result.error == "RuntimeError: user code failed on 42"  # as the worker sent it
            assert (result.return_value, result.outputs, result.http) == (None, {}, None)
            with pytest.raises(CallFailed) as info:
                result.raise_for_status()
            assert info.value.result is result
            assert str(info.value) == (
                f"invocation {result.invocation_id} ended with failure: "
                "RuntimeError: user code failed on 42"
            )

    arun(scenario())


def test_a_call_has_the_log_records_the_worker_sent_for_it() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            logs = await conn.load_function("logs")
            result = await conn.call(logs)
            assert result.ok
            mine = [entry for entry in result.logs if entry.category == "tests.typed"]
            assert mine == [
                LogEntry("Information", "first line", "tests.typed", "User"),
                LogEntry("Error", "it broke", "tests.typed", "User", "KeyError: 'missing'"),
            ]
            other = await conn.call(logs)  # each call has its own
            assert other.invocation_id != result.invocation_id
            assert next(e.message for e in other.logs if e.category == "tests.typed") == (
                "first line"
            )
            assert len(conn.logs_for(result.invocation_id)) == len(result.logs)

    arun(scenario())


def test_a_cancelled_call_reads_as_cancelled() -> None:
    async def scenario() -> None:
        async with typed_worker() as (conn, _):
            waits = await conn.load_function("waits")
            pending = await conn.start_invocation(waits.function_id)
            await until(lambda: conn.logs_for(pending.invocation_id))
            await conn.cancel(pending.invocation_id)
            result = conn.call_result(await pending)
            assert (result.status, result.ok) == ("cancelled", False)
            assert result.invocation_id == pending.invocation_id
            assert [e.message for e in result.logs if e.category == "tests.typed"] == ["waiting"]
            with pytest.raises(CallFailed, match="ended with cancelled"):
                result.raise_for_status()

    arun(scenario())


def test_a_value_the_host_would_reject_is_a_conversion_error_naming_it() -> None:
    # The SDK never sends a collection back, so the response is made here: what another
    # worker could send.
    response = pb.InvocationResponse(
        invocation_id="inv-1",
        output_data=[
            pb.ParameterBinding(
                name="out",
                data=pb.TypedData(collection_string=pb.CollectionString(string=["a"])),
            )
        ],
        result=pb.StatusResult(status=pb.StatusResultStatus.Success),
    )
    with pytest.raises(ConversionError, match=r"invocation inv-1, output 'out': .*collection"):
        CallResult.from_response(response, [])
    no_result = CallResult.from_response(pb.InvocationResponse(invocation_id="inv-2"), [])
    assert (no_result.status, no_result.error) == (
        "failure",
        "the worker's response has no status result",
    )


def test_the_templates_example_through_the_typed_api() -> None:
    example = EXAMPLES / "templates"
    app = example / "app"

    async def scenario() -> None:
        async with TestHost() as host:
            worker = await host.spawn([sys.executable, str(example / "worker.py")], cwd=app)
            assert worker.connection is not None
            conn = worker.connection
            await conn.init(function_app_directory=str(app))
            total = await conn.load_function(
                "sum", bindings=http_bindings(), script_file=str(app / "sum" / "sum.txt")
            )
            request = HttpRequest(
                "GET", "http://127.0.0.1/api/sum/3/4", params={"a": "3", "b": "4"}
            )
            result = await conn.call(total, {"req": request})
            assert result.ok and result.http is not None
            assert (result.http.status_code, result.http.text()) == (
                200,
                (app / "sum" / "sum.txt").read_text().format(a="3", b="4"),
            )
            assert [(e.level, e.kind) for e in result.logs if e.category == "templates"] == [
                ("Information", "User")
            ]
            unreadable = await conn.load_function(
                "nope", script_file=str(app / "nope.txt"), check=False
            )
            assert unreadable.error is not None and "cannot read" in unreadable.error
            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario())


# -- a worker that dies before it opens its stream -------------------------------------------

CRASHING = """
import sys
for n in range(30):
    print(f"noise {n}", file=sys.stderr)
import no_such_module_for_workerkit_tests
"""


def _crashing_worker(tmp_path: Path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(CRASHING))
    return path


def test_spawn_reports_a_worker_that_crashes_at_import_with_its_code_and_stderr_tail(
    tmp_path: Path,
) -> None:
    worker_py = _crashing_worker(tmp_path)

    async def scenario() -> None:
        async with TestHost() as host:
            with pytest.raises(StreamNotOpened) as info:
                # The timeout only catches a hang: the exit is what ends the wait.
                await host.spawn([sys.executable, str(worker_py)], cwd=tmp_path, timeout=60)
        error = info.value
        assert (error.reason, error.returncode) == ("exited", 1)
        message = str(error)
        assert message.startswith("worker exited with 1 before StartStream")
        last = "ModuleNotFoundError: No module named 'no_such_module_for_workerkit_tests'"
        assert message.rstrip().endswith(last)
        assert error.stderr_tail.splitlines()[-1] == last
        assert len(error.stderr_tail.splitlines()) == 20  # the tail, not all of it
        assert "noise 29" in message and "noise 0\n" not in message

    arun(scenario())


def test_the_stderr_tail_is_kept_when_the_output_goes_to_on_output(tmp_path: Path) -> None:
    worker_py = _crashing_worker(tmp_path)
    shown: list[bytes] = []

    async def scenario() -> None:
        async with TestHost() as host:
            worker = await host.launch(
                [sys.executable, str(worker_py)], on_output=lambda line, _: shown.append(line)
            )
            with pytest.raises(StreamNotOpened) as info:
                await host.wait_for_stream(worker, timeout=60)
        assert info.value.returncode == 1
        assert "No module named 'no_such_module_for_workerkit_tests'" in str(info.value)
        assert info.value.stderr_tail.splitlines() == [line.decode() for line in shown[-20:]]
        assert b"noise 0" in shown  # on_output still saw everything

    arun(scenario())


def test_a_worker_that_never_opens_its_stream_times_out_with_its_stderr(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            code = (
                "import sys, time; print('cannot reach the host', file=sys.stderr); time.sleep(600)"
            )
            worker = await host.launch([sys.executable, "-c", code])
            await until(lambda: worker.stderr, timeout=60)
            with pytest.raises(StreamNotOpened) as info:
                await host.wait_for_stream(worker, timeout=0.1)
            assert info.value.reason == "timeout"
            assert str(info.value).endswith("the end of its stderr:\ncannot reach the host")
            worker.kill()

    arun(scenario())


def test_start_worker_raises_what_serve_raises_without_waiting_for_a_timeout() -> None:
    class Broken(Typed):
        async def serve(self, args: HostArgs) -> int:
            raise OSError("cannot open the certificate store")

    class Quits(Typed):
        async def serve(self, args: HostArgs) -> int:
            return 3

    async def scenario() -> None:
        async with TestHost() as host:
            with pytest.raises(OSError, match="certificate store"):
                await host.start_worker(Broken(), timeout=None)  # only its failure ends it
            with pytest.raises(StreamNotOpened) as info:
                await host.start_worker(Quits(), timeout=None)
            assert (info.value.reason, info.value.returncode) == ("exited", 3)
            assert isinstance(info.value, RuntimeError)  # what callers caught before

    arun(scenario())


def test_start_worker_times_out_with_a_message() -> None:
    class Silent(Typed):
        async def serve(self, args: HostArgs) -> int:
            await asyncio.Event().wait()
            return 0

    async def scenario() -> None:
        async with TestHost() as host:
            with pytest.raises(TimeoutError, match=r"opened no stream within 0\.05 s"):
                await host.start_worker(Silent(), timeout=0.05)

    arun(scenario())
