"""Every host message and failure path, over a real socket, with in-process workers."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import os
import platform as platform_module
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import betterproto2
import pytest
from conftest import arun, open_stream_as, until
from workers import Indexing, Scenarios, SyncScenarios

import workerkit
from workerkit import FunctionMetadata, HttpRequest, WorkerOptions
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime.logs import handler as log_handler
from workerkit._runtime.replies import machine as _machine
from workerkit.testing import (
    HostConnection,
    InProcessWorker,
    PendingInvocation,
    TestHost,
    binding,
    http_bindings,
)

SUCCESS, FAILURE, CANCELLED = (pb.StatusResultStatus(n) for n in (1, 0, 2))
HTTP_REQUEST = HttpRequest("POST", "http://127.0.0.1/api/echo", body=b"ping")


@contextlib.asynccontextmanager
async def serving(
    worker: workerkit.Worker, **host_options: Any
) -> AsyncIterator[tuple[HostConnection, InProcessWorker]]:
    async with TestHost(**host_options) as host:
        started = await host.start_worker(worker)
        init = await started.connection.init()
        assert init.result.status == SUCCESS
        yield started.connection, started


async def load(conn: HostConnection, name: str, **kwargs: Any) -> str:
    function_id = f"id-{name}"
    reply = await conn.load(function_id, name, **kwargs)
    assert reply.function_id == function_id
    assert reply.result.status == SUCCESS, reply.result
    return function_id


def responses_for(conn: HostConnection, invocation_id: str) -> list[pb.InvocationResponse]:
    return [r for r in conn.replies("invocation_response") if r.invocation_id == invocation_id]


# -- handshake -----------------------------------------------------------------------------


def test_start_stream_then_init_reports_truthful_capabilities() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            args = host.host_args(request_id="request-42")
            task = asyncio.create_task(Scenarios().serve(args))
            conn = await host.connection(args.worker_id)
            assert conn.worker_id == args.worker_id
            assert conn.start_request_id == "request-42"
            init = await conn.init(log_categories={"Default": pb.RpcLogLevel.Warning})
            assert init.result.status == SUCCESS
            for capability in (
                "RpcHttpBodyOnly",
                "RawHttpBodyBytes",
                "TypedDataCollection",
                "UseNullableValueDictionaryForHttp",
                "WorkerStatus",
                "HandlesWorkerTerminateMessage",
                "HandlesInvocationCancelMessage",
                "HandlesWorkerWarmupMessage",
            ):
                assert init.capabilities[capability] == "true"
            assert init.capabilities["CustomThing"] == "yes"  # from on_init
            assert "SupportsLoadResponseCollection" not in init.capabilities
            assert "SharedMemoryDataTransfer" not in init.capabilities
            meta = init.worker_metadata
            assert meta.runtime_name == "workerkit" and meta.worker_version
            assert meta.custom_properties == {"k": "v"}
            await conn.terminate(1)
            assert await asyncio.wait_for(task, 10) == 0

    arun(scenario())


def test_init_failure_is_reported_not_raised() -> None:
    class FailingInit(Scenarios):
        def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
            raise OSError("runtime not found")

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(FailingInit())
            init = await started.connection.init()
            assert init.result.status == FAILURE
            assert "runtime not found" in init.result.exception.message
            await started.connection.status()  # still serving

    arun(scenario())


def test_an_init_result_that_cannot_be_sent_is_a_failure_not_a_lost_reply() -> None:
    class BadInit(Scenarios):
        def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
            return workerkit.InitResult(capabilities={"Retries": 3})  # type: ignore[dict-item]

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(BadInit())
            init = await started.connection.init()
            assert init.result.status == FAILURE
            assert "InitResult.capabilities must map str to str" in init.result.exception.message
            assert "Retries" not in init.capabilities
            await started.connection.status()  # still serving

    arun(scenario())


def test_the_init_request_reaches_on_init_as_the_host_sent_it() -> None:
    seen: list[workerkit.InitRequest] = []

    class Recording(Scenarios):
        def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
            seen.append(request)
            return super().on_init(request)

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Recording())
            init = await started.connection.init(
                function_app_directory="/app",
                worker_directory="/worker",
                capabilities={"MultiStream": "10", "ü": "✓"},
                log_categories={"Default": pb.RpcLogLevel.Warning, "Host.Function": 1},
                host_version="4.1040.0",
            )
            assert init.result.status == SUCCESS

    arun(scenario())
    assert seen == [
        workerkit.InitRequest(
            host_version="4.1040.0",
            worker_directory="/worker",
            function_app_directory="/app",
            capabilities={"MultiStream": "10", "ü": "✓"},
            log_categories={"Default": 3, "Host.Function": 1},
        )
    ]


def test_init_result_values_are_checked_and_str_subclasses_accepted() -> None:
    class Flag(enum.StrEnum):
        ON = "true"

    class Enums(Scenarios):
        def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
            return workerkit.InitResult(capabilities={"Custom": Flag.ON})

    class BadVersion(Scenarios):
        def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
            return workerkit.InitResult(worker_version=5)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with TestHost() as host:
            fine = await (await host.start_worker(Enums())).connection.init()
            assert fine.result.status == SUCCESS and fine.capabilities["Custom"] == "true"
            bad = await (await host.start_worker(BadVersion())).connection.init()
            assert bad.result.status == FAILURE
            assert "InitResult.worker_version must be a str" in bad.result.exception.message

    arun(scenario())


#: Fields StreamingMessage does not have (number 105, a string; 106, a varint): what a newer
#: host might add.
UNKNOWN_FIELD = b"\xca\x06\x01x" + b"\xd0\x06\x01"


def test_an_unknown_field_after_the_content_does_not_hide_it() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Scenarios())
            conn = started.connection
            init = pb.WorkerInitRequest(host_version="4.1040.0", function_app_directory="/")
            replied = conn._expect("worker_init_response")
            await conn.send(bytes(pb.StreamingMessage(worker_init_request=init)) + UNKNOWN_FIELD)
            assert (await asyncio.wait_for(replied, 10)).result.status == SUCCESS
            request = conn.load_request("id-echo", "echo", bindings=http_bindings())
            loaded = conn._expect("function_load_response", "id-echo")
            await conn.send(
                bytes(pb.StreamingMessage(function_load_request=request)) + UNKNOWN_FIELD
            )
            assert (await asyncio.wait_for(loaded, 10)).result.status == SUCCESS
            invocation = pb.InvocationRequest(
                invocation_id="i1",
                function_id="id-echo",
                input_data=[
                    pb.ParameterBinding(
                        name="req", data=workerkit.convert.encode_input(HTTP_REQUEST)
                    )
                ],
            )
            answered = conn._expect("invocation_response", "i1")
            await conn.send(
                bytes(pb.StreamingMessage(invocation_request=invocation)) + UNKNOWN_FIELD
            )
            reply = await asyncio.wait_for(answered, 10)
            assert reply.result.status == SUCCESS and reply.return_value.http.body.bytes == b"ping"

    arun(scenario())


def test_a_load_collection_with_an_unreadable_entry_fails_only_that_function() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            good = bytes(conn.load_request("id-echo", "echo", bindings=http_bindings()))
            # metadata.bindings has an entry with a key and no BindingInfo
            bad = b"\x0a\x02id" + b"\x12\x09" + b"\x32\x07\x0a\x05" + b"input"
            collection = b"\x0a" + bytes([len(good)]) + good + b"\x0a" + bytes([len(bad)]) + bad
            answered = conn._expect("function_load_response_collection")
            await conn.send(b"\xfa\x01" + bytes([len(collection)]) + collection)
            reply = await asyncio.wait_for(answered, 10)
            statuses = {r.function_id: r.result.status for r in reply.function_load_responses}
            assert statuses == {"id-echo": SUCCESS, "id": FAILURE}

    arun(scenario())


def test_requests_sent_before_init_completes_wait_for_it() -> None:
    class SlowInit(Scenarios):
        go = asyncio.Event()

        async def on_init(self, request: workerkit.InitRequest) -> None:  # type: ignore[override]
            await self.go.wait()

    async def scenario() -> None:
        async with TestHost() as host:
            worker = SlowInit()
            started = await host.start_worker(worker)
            conn = started.connection
            init = asyncio.create_task(conn.init())
            status = await conn.status(timeout=30)  # answered while init is still running
            assert status == pb.WorkerStatusResponse()
            assert not init.done()
            loading = asyncio.create_task(conn.load("id-echo", "echo", bindings=http_bindings()))
            await conn.status(timeout=30)  # the worker has read the load request by now
            assert not loading.done() and not init.done()
            worker.go.set()
            loaded = await loading
            assert init.done() and loaded.result.status == SUCCESS
            kinds = [betterproto2.which_one_of(m, "content")[0] for m in conn.messages]
            assert kinds.index("worker_init_response") < kinds.index("function_load_response")

    arun(scenario())


# -- loading -------------------------------------------------------------------------------


def test_load_failures_are_per_function_and_invocations_of_them_fail_clearly() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            echo = await load(conn, "echo", bindings=http_bindings())
            broken = await conn.load("id-broken", "broken-one")
            assert broken.result.status == FAILURE
            assert broken.result.exception.message == "cannot load broken-one: no such module"
            crashing = await conn.load("id-crash", "crashing-load")
            assert crashing.result.status == FAILURE
            assert crashing.result.exception.is_user_exception
            assert "ZeroDivisionError" in crashing.result.exception.stack_trace

            reply = await conn.invoke("id-broken", {})
            assert reply.result.status == FAILURE
            assert "failed to load: cannot load broken-one" in reply.result.exception.message
            reply = await conn.invoke("no-such-id", {})
            assert reply.result.status == FAILURE
            assert "no function with id 'no-such-id'" in reply.result.exception.message
            reply = await conn.invoke(echo, {"req": HTTP_REQUEST})
            assert reply.result.status == SUCCESS

    arun(scenario())


def test_load_collection_is_answered_with_one_collection() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            requests = [
                conn.load_request("id-a", "echo", bindings=http_bindings()),
                conn.load_request("id-b", "broken-b"),
            ]
            reply = await conn.load_collection(requests)
            by_id = {r.function_id: r.result.status for r in reply.function_load_responses}
            assert by_id == {"id-a": SUCCESS, "id-b": FAILURE}
            assert (await conn.invoke("id-a", {"req": HTTP_REQUEST})).result.status == SUCCESS

    arun(scenario())


def test_function_info_carries_the_host_metadata() -> None:
    async def scenario() -> None:
        worker = Scenarios()
        async with serving(worker) as (conn, _):
            await load(
                conn,
                "echo",
                bindings={**http_bindings(), "blob": binding("blob", "in", "binary")},
                script_file="/app/echo/run.fn",
                entry_point="main",
                directory="/app/echo",
                properties={"worker_indexed": "False"},
            )
            info = worker.loaded["id-echo"]
            assert (info.name, info.script_file, info.entry_point) == (
                "echo",
                "/app/echo/run.fn",
                "main",
            )
            assert info.trigger is not None and info.trigger.name == "req"
            assert info.bindings["blob"].data_type == "binary"
            assert set(info.output_bindings) == {"$return"}
            assert info.properties["FunctionId"] == "id-echo"

    arun(scenario())


# -- worker indexing -------------------------------------------------------------------------


def test_worker_indexing_reports_valid_and_invalid_functions() -> None:
    async def scenario() -> None:
        worker = Indexing()
        async with serving(worker) as (conn, _):
            reply = await conn.functions_metadata("/app")
            assert reply.result.status == SUCCESS
            assert not reply.use_default_metadata_indexing
            found = {m.name: m for m in reply.function_metadata_results}
            hello = found["hello"]
            expected = FunctionMetadata(name="hello", script_file="hello.fn", bindings=[])
            assert hello.function_id == expected.function_id  # derived from the name
            assert hello.status is None
            assert hello.script_file == "hello.fn" and hello.directory == "/app"
            assert [json.loads(b)["name"] for b in hello.raw_bindings] == ["req", "$return"]
            assert hello.properties["worker_indexed"] == "True"
            assert found["Bad_binding"].status.status == FAILURE
            assert "'my_req'" in found["Bad_binding"].status.exception.message
            problems = found["no-trigger"].status.exception.message
            assert "script_file" in problems and "exactly one trigger" in problems

            loaded = await conn.load(hello.function_id, "hello", properties=dict(hello.properties))
            assert loaded.result.status == SUCCESS
            reply = await conn.invoke(hello.function_id, {})
            assert reply.return_value.string == "hello.fn"
            assert worker.index_calls == 1

    arun(scenario())


def test_a_restarted_worker_indexes_itself_on_its_first_load() -> None:
    async def scenario() -> None:
        worker = Indexing()
        async with serving(worker) as (conn, _):
            function_id = FunctionMetadata("hello", "hello.fn", []).function_id
            for _ in range(2):
                loaded = await conn.load(
                    function_id, "hello", properties={"worker_indexed": "True"}
                )
                assert loaded.result.status == SUCCESS
            assert worker.index_calls == 1
            assert worker.loads[0].indexed is not None
            reply = await conn.invoke(function_id, {})
            assert reply.return_value.string == "hello.fn"

    arun(scenario())


def test_without_an_index_hook_the_host_indexes() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            reply = await conn.functions_metadata()
            assert reply.result.status == SUCCESS
            assert reply.use_default_metadata_indexing
            assert reply.function_metadata_results == []

    arun(scenario())


# -- invocations ---------------------------------------------------------------------------


def test_http_echo_and_response_shape() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            function_id = await load(conn, "echo", bindings=http_bindings())
            reply = await conn.invoke(function_id, {"req": HTTP_REQUEST})
            assert reply.result.status == SUCCESS
            http = reply.return_value.http
            assert http.status_code == "200"
            assert http.body.bytes == b"ping"
            assert http.headers == {"x-echo": "1"}
            assert reply.output_data == []

    arun(scenario())


def test_named_outputs_and_return_value() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            bindings = {
                "trigger": binding("queueTrigger"),
                "queueOut": binding("queue", "out"),
                "blobOut": binding("blob", "out", "binary"),
                "$return": binding("queue", "out"),
            }
            function_id = await load(conn, "outputs", bindings=bindings)
            reply = await conn.invoke(function_id, {"trigger": "job"})
            assert reply.result.status == SUCCESS
            assert json.loads(reply.return_value.json) == {"ok": True}
            outputs = {b.name: b.data for b in reply.output_data}
            assert outputs == {
                "queueOut": pb.TypedData(string="message"),
                "blobOut": pb.TypedData(bytes=b"\x00\x01"),
            }

            function_id = await load(conn, "bad-output", bindings=bindings)
            reply = await conn.invoke(function_id, {"trigger": "job"})
            assert reply.result.status == FAILURE
            assert "'nosuch'" in reply.result.exception.message
            assert "queueOut" in reply.result.exception.message

            function_id = await load(conn, "unsendable", bindings=bindings)
            reply = await conn.invoke(function_id, {"trigger": "job"})
            assert reply.result.status == FAILURE
            assert "'set'" in reply.result.exception.message

    arun(scenario())


def test_http_response_goes_to_a_named_http_output() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            function_id = await load(conn, "echo", bindings=http_bindings(output="res"))
            reply = await conn.invoke(function_id, {"req": HTTP_REQUEST})
            assert reply.return_value is None
            [output] = reply.output_data
            assert output.name == "res" and output.data.http.body.bytes == b"ping"

    arun(scenario())


@pytest.mark.parametrize("kind", ["Http", "HTTP"])
def test_an_http_output_binding_typed_in_any_case_gets_the_response(kind: str) -> None:
    """The host compares binding types ignoring case (FunctionBinding.GetBindings in
    Azure/azure-functions-host lower-cases them) and sends the type as written: an output
    typed "Http" is the function's HTTP output, so a returned HttpResponse goes there."""

    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            bindings = {"req": binding("httpTrigger"), "res": binding(kind, "out")}
            function_id = await load(conn, "echo", bindings=bindings)
            reply = await conn.invoke(function_id, {"req": HTTP_REQUEST})
            assert reply.result.status == SUCCESS, reply.result
            assert reply.return_value is None
            [output] = reply.output_data
            assert output.name == "res" and output.data.http.body.bytes == b"ping"

    arun(scenario())


@pytest.mark.parametrize(
    ("name", "kind"),
    [("raises", "RuntimeError"), ("exits", "SystemExit"), ("interrupts", "KeyboardInterrupt")],
)
def test_user_exceptions_fail_the_invocation_and_the_worker_keeps_serving(
    name: str, kind: str
) -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, started):
            function_id = await load(conn, name)
            reply = await conn.invoke(function_id, {})
            assert reply.result.status == FAILURE
            error = reply.result.exception
            assert error.is_user_exception and kind in error.message
            assert error.stack_trace and error.source == name
            echo = await load(conn, "echo", bindings=http_bindings())
            assert (await conn.invoke(echo, {"req": HTTP_REQUEST})).result.status == SUCCESS
            assert not started.task.done()

    arun(scenario())


def test_sys_exit_in_a_sync_hook_is_a_failure_too() -> None:
    async def scenario() -> None:
        async with serving(SyncScenarios()) as (conn, started):
            function_id = await load(conn, "exits")
            reply = await conn.invoke(function_id, {})
            assert reply.result.status == FAILURE
            assert "SystemExit: 4" in reply.result.exception.message
            await conn.status()
            assert not started.task.done()

    arun(scenario())


def test_inputs_that_cannot_be_converted_fail_only_that_invocation() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            function_id = await load(conn, "value")
            reply = await conn.invoke(function_id, {"value": pb.TypedData(json="{not json")})
            assert reply.result.status == FAILURE
            message = reply.result.exception.message
            assert "cannot read input 'value'" in message and "value" in message
            shared = pb.ParameterBinding(
                name="value", rpc_shared_memory=pb.RpcSharedMemory(name="map", count=3)
            )
            request = pb.InvocationRequest(
                invocation_id="shm-1", function_id=function_id, input_data=[shared]
            )
            await conn.send(pb.StreamingMessage(invocation_request=request))
            reply = await conn.invoke(function_id, {"value": 7})
            assert reply.return_value.int == 7
            [shm] = responses_for(conn, "shm-1")
            assert shm.result.status == FAILURE
            assert "shared memory" in shm.result.exception.message

    arun(scenario())


def test_overlapping_invocations_are_matched_by_id() -> None:
    class Gated(Scenarios):
        gates: dict[int, asyncio.Event]

        async def fn_gate(self, invocation: workerkit.Invocation) -> Any:
            number = int(invocation.inputs["n"])
            await self.gates[number].wait()
            return number

    async def scenario() -> None:
        worker = Gated()
        worker.gates = {n: asyncio.Event() for n in range(20)}
        async with serving(worker) as (conn, _):
            function_id = await load(conn, "gate")
            pending = [await conn.start_invocation(function_id, {"n": n}) for n in range(20)]
            for n in reversed(range(20)):  # released last to first, one at a time
                worker.gates[n].set()
                reply = await pending[n].result()
                assert reply.invocation_id == pending[n].invocation_id
                assert reply.result.status == SUCCESS and reply.return_value.int == n
            order = [r.invocation_id for r in conn.replies("invocation_response")]
            assert order == [p.invocation_id for p in reversed(pending)]

    arun(scenario())


def test_a_duplicate_invocation_id_gets_its_own_failure() -> None:
    async def scenario() -> None:
        worker = Scenarios()
        async with serving(worker) as (conn, _):
            function_id = await load(conn, "wait")
            first = await conn.start_invocation(function_id, invocation_id="dup")
            await asyncio.to_thread(worker.started.acquire)
            request = pb.InvocationRequest(invocation_id="dup", function_id=function_id)
            await conn.send(pb.StreamingMessage(invocation_request=request))
            await until(lambda: len(responses_for(conn, "dup")) >= 1)
            [refused] = responses_for(conn, "dup")
            assert "already running" in refused.result.exception.message
            worker.release.set()
            assert (await first).invocation_id == "dup"
            await until(lambda: len(responses_for(conn, "dup")) >= 2)
            statuses = sorted(r.result.status for r in responses_for(conn, "dup"))
            assert statuses == [FAILURE, SUCCESS]

    arun(scenario())


# -- cancellation --------------------------------------------------------------------------


def test_cancel_during_an_async_invocation() -> None:
    async def scenario() -> None:
        worker = Scenarios()
        async with serving(worker) as (conn, _):
            function_id = await load(conn, "wait")
            pending = await conn.start_invocation(function_id)
            await asyncio.to_thread(worker.started.acquire)
            await conn.cancel(pending.invocation_id)
            reply = await pending
            assert reply.result.status == CANCELLED
            assert worker.cancelled == [pending.invocation_id]
            assert len(responses_for(conn, pending.invocation_id)) == 1

    arun(scenario())


def test_an_async_hook_swallowing_cancellation_is_answered_cancelled_while_it_runs_on() -> None:
    """The host gets its one Cancelled promptly although the coroutine ignores the cancel (a
    catch-all `except BaseException`); the coroutine runs on, holding its slot of
    max_in_flight, and what it returns at last is dropped, with a warning naming it."""

    async def scenario() -> None:
        worker = Scenarios(options=WorkerOptions(max_in_flight=1))
        async with serving(worker) as (conn, _):
            stubborn = await load(conn, "stubborn")
            value = await load(conn, "value")
            pending = await conn.start_invocation(stubborn)
            await asyncio.to_thread(worker.started.acquire)
            await conn.cancel(pending.invocation_id)
            reply = await pending.result(timeout=60)  # used to come only once the hook returned
            assert reply.result.status == CANCELLED
            assert worker.cancelled == [pending.invocation_id]  # swallowed: it runs on
            assert not worker.release.is_set()
            [warning] = [e.message for e in conn.logs if "answered Cancelled" in e.message]
            assert "'stubborn'" in warning and pending.invocation_id in warning
            # Its slot is still taken: the next invocation runs once the coroutine returns.
            queued = await conn.start_invocation(value, {"value": 7})
            worker.release.set()
            assert (await queued.result(timeout=60)).result.status == SUCCESS
            await conn.status()  # the stream is ordered: a late second reply would be here
            assert len(responses_for(conn, pending.invocation_id)) == 1
            assert conn.unmatched == []

    arun(scenario(), timeout=120)


def test_cancel_before_start_while_queued() -> None:
    async def scenario() -> None:
        worker = Scenarios(options=WorkerOptions(max_in_flight=1))
        async with serving(worker) as (conn, _):
            function_id = await load(conn, "wait")
            running = await conn.start_invocation(function_id)
            await asyncio.to_thread(worker.started.acquire)
            queued = await conn.start_invocation(function_id)
            await conn.cancel(queued.invocation_id)
            assert (await queued).result.status == CANCELLED
            assert worker.cancelled == []  # never started
            worker.release.set()
            assert (await running).result.status == SUCCESS

    arun(scenario())


def test_cancel_after_completion_and_of_unknown_ids_is_harmless() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            function_id = await load(conn, "value")
            reply = await conn.invoke(function_id, {"value": "done"})
            await conn.cancel(reply.invocation_id)
            await conn.cancel("never-seen")
            await conn.status()
            assert len(responses_for(conn, reply.invocation_id)) == 1
            assert conn.unmatched == []

    arun(scenario())


def test_cancel_of_a_blocked_sync_hook_answers_at_once_and_flags_it() -> None:
    async def scenario() -> None:
        worker = SyncScenarios()
        async with serving(worker) as (conn, _):
            function_id = await load(conn, "block")
            pending = await conn.start_invocation(function_id)
            await asyncio.to_thread(worker.started.acquire)
            await conn.cancel(pending.invocation_id)
            assert (await pending).result.status == CANCELLED
            await until(lambda: worker.cancelled)  # the thread notices the flag and returns
            assert worker.cancelled == [pending.invocation_id]

    arun(scenario())


def test_status_is_answered_while_every_thread_is_blocked() -> None:
    async def scenario() -> None:
        worker = SyncScenarios(options=WorkerOptions(threads=2))
        async with serving(worker) as (conn, _):
            function_id = await load(conn, "block")
            pending = [await conn.start_invocation(function_id) for _ in range(3)]
            for _ in range(2):
                await asyncio.to_thread(worker.started.acquire)
            for _ in range(5):
                assert await conn.status(timeout=30) == pb.WorkerStatusResponse()
            worker.release.set()
            for p in pending:
                await conn.cancel(p.invocation_id)
            assert [(await p).result.status for p in pending] == [CANCELLED] * 3

    arun(scenario())


# -- terminate, stream loss ------------------------------------------------------------------


async def exited_after_terminate(
    conn: HostConnection, started: InProcessWorker, worker: Scenarios, sent: PendingInvocation
) -> workerkit.Shutdown:
    """The worker exited 0 and closed the stream, `sent` got exactly one response, and
    on_shutdown ran once, for the host's terminate."""
    assert await started.wait(30) == 0
    await conn.wait_closed(30)
    assert len(responses_for(conn, sent.invocation_id)) == 1
    [shutdown] = worker.shutdowns
    assert "WorkerTerminate" in shutdown.reason
    return shutdown


def test_terminate_drains_in_flight_invocations_then_exits_zero() -> None:
    async def scenario() -> None:
        worker = SyncScenarios()
        async with serving(worker) as (conn, started):
            gated = await load(conn, "gated")
            quick = await load(conn, "quick")
            finishing = await conn.start_invocation(gated)
            await asyncio.to_thread(worker.started.acquire)
            await conn.terminate(grace_period=60.0)  # long: the drain ends when work does
            late = await conn.start_invocation(quick, {"value": 1})
            assert (await late).result.status == FAILURE
            assert "shutting down" in (await late).result.exception.message
            assert not finishing.future.done()
            worker.gate.set()
            assert (await finishing).result.status == SUCCESS
            shutdown = await exited_after_terminate(conn, started, worker, finishing)
            assert 0 < shutdown.grace_period <= 60.0

    arun(scenario())


def test_terminate_cancels_what_is_still_running_when_the_grace_period_runs_out() -> None:
    async def scenario() -> None:
        worker = SyncScenarios()
        async with serving(worker) as (conn, started):
            stuck = await conn.start_invocation(await load(conn, "block"))
            await asyncio.to_thread(worker.started.acquire)
            await conn.terminate(grace_period=1.0)
            assert (await stuck).result.status == CANCELLED
            await exited_after_terminate(conn, started, worker, stuck)
            # The function's thread was told; it notices in its own time (the worker does
            # not wait for a plain def it answered Cancelled).
            await until(lambda: worker.cancelled)
            assert worker.cancelled == [stuck.invocation_id]

    arun(scenario())


def test_terminate_answers_a_hook_that_swallows_cancellation_before_the_stream_ends() -> None:
    async def scenario() -> None:
        worker = Scenarios()
        async with serving(worker) as (conn, started):
            stuck = await conn.start_invocation(await load(conn, "stubborn"))
            await asyncio.to_thread(worker.started.acquire)
            await conn.terminate(grace_period=1.0)
            assert (await stuck.result(timeout=60)).result.status == CANCELLED
            assert await started.wait(60) == 0
            await conn.wait_closed(60)
            assert len(responses_for(conn, stuck.invocation_id)) == 1
            assert worker.cancelled  # it did swallow the cancellation
            worker.release.set()  # it runs in this loop: let it end

    arun(scenario(), timeout=120)


def test_stream_loss_cancels_work_and_returns_non_zero() -> None:
    async def scenario() -> None:
        worker = Scenarios()
        async with serving(worker) as (conn, started):
            function_id = await load(conn, "wait")
            await conn.start_invocation(function_id)
            await asyncio.to_thread(worker.started.acquire)
            conn.close()
            assert await started.wait(30) == 1
            assert len(worker.cancelled) == 1

    arun(scenario())


# -- other host messages -------------------------------------------------------------------


def test_environment_reload_applies_environment_and_directory_before_the_hook(
    tmp_path: Path,
) -> None:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()

    async def scenario() -> None:
        worker = SyncScenarios()
        async with serving(worker) as (conn, _):
            environment = {**saved_env, "WK_TEST": "42"}
            reply = await conn.reload_environment(environment, str(tmp_path))
            assert reply.result.status == SUCCESS
            assert reply.capabilities["WorkerStatus"] == "true"
            assert reply.worker_metadata.runtime_name == "workerkit"
            assert worker.reloads == [("42", str(tmp_path))]
            missing = await conn.reload_environment(environment, str(tmp_path / "nope"))
            assert missing.result.status == FAILURE
            assert "nope" in missing.result.exception.message

    try:
        arun(scenario())
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def test_warmup_shared_memory_file_change_and_unknown_kinds() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, started):
            assert (await conn.warmup("/workers/x")).result.status == SUCCESS
            closed = await conn.close_shared_memory(["map-a", "map-b"])
            assert closed.close_map_results == {"map-a": False, "map-b": False}
            change = pb.FileChangeEventRequest(full_path="/app/x.txt", name="x.txt")
            await conn.send(pb.StreamingMessage(file_change_event_request=change))
            await conn.send(pb.StreamingMessage(request_id="no-content"))
            # A newer host's message kind: field 99 of StreamingMessage, unknown to us.
            await conn.send(b"\x9a\x06\x02\x08\x01")
            await conn.send(b"\xff\xff\xff")  # not protobuf at all
            await conn.send(pb.StreamingMessage(worker_heartbeat=pb.WorkerHeartbeat()))
            assert await conn.status() == pb.WorkerStatusResponse()
            assert not started.task.done()
            system = [entry.message for entry in conn.logs if not entry.invocation_id]
            assert any("file change" in m for m in system)
            assert any("does not know" in m for m in system)
            assert any("malformed" in m for m in system)

    arun(scenario())


def test_an_oversized_result_becomes_a_failure_and_oversized_input_is_refused() -> None:
    async def scenario() -> None:
        async with serving(Scenarios(), max_message_length=64 * 1024) as (conn, _):
            function_id = await load(conn, "big")
            reply = await conn.invoke(function_id, {"size": 100_000})
            assert reply.result.status == FAILURE
            assert "limit of 65536 bytes" in reply.result.exception.message
            small = await conn.invoke(function_id, {"size": 1000})
            assert small.result.status == SUCCESS and len(small.return_value.string) == 1000
            too_big = pb.InvocationRequest(
                invocation_id="huge",
                function_id=function_id,
                input_data=[
                    pb.ParameterBinding(name="size", data=pb.TypedData(string="1" * 70_000))
                ],
            )
            refused = conn._expect("invocation_response", "huge")
            await conn.send(pb.StreamingMessage(invocation_request=too_big))
            reply = await asyncio.wait_for(refused, 10)
            assert reply.result.status == FAILURE
            assert "could not be read" in reply.result.exception.message
            assert "over the host's limit of 65536 bytes" in reply.result.exception.message
            assert await conn.status() == pb.WorkerStatusResponse()

    arun(scenario())


# -- logging -------------------------------------------------------------------------------


def test_logs_are_attributed_categorised_and_sent_before_the_response() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            function_id = await load(conn, "logs")
            reply = await conn.invoke(function_id, {})
            assert reply.return_value.string == "logged"
            mine = conn.logs_for(reply.invocation_id)
            assert [entry.message for entry in mine] == ["first line", "with traceback"]
            user = pb.RpcLogRpcLogCategory.User
            assert all(entry.log_category == user for entry in mine)
            assert mine[0].level == pb.RpcLogLevel.Information
            assert mine[1].level == pb.RpcLogLevel.Error
            assert "logged failure" in mine[1].exception.message
            assert "ValueError" in mine[1].exception.stack_trace
            [sdk] = [entry for entry in conn.logs if entry.message == "an sdk line"]
            assert sdk.log_category == pb.RpcLogRpcLogCategory.System
            assert sdk.invocation_id == ""
            kinds = [betterproto2.which_one_of(m, "content") for m in conn.messages]
            response_at = next(i for i, (k, b) in enumerate(kinds) if k == "invocation_response")
            log_positions = [
                i for i, (k, b) in enumerate(kinds)
                if k == "rpc_log" and b.invocation_id == reply.invocation_id
            ]  # fmt: skip
            assert max(log_positions) < response_at

    arun(scenario())


def test_a_log_over_the_size_limit_is_shortened_and_unsendable_text_escaped() -> None:
    class Loud(Scenarios):
        async def fn_loud(self, invocation: workerkit.Invocation) -> Any:
            try:
                raise ValueError("with a traceback")
            except ValueError:
                logging.getLogger("tests.user").exception("x" * 100_000)
            logging.getLogger("tests.user").warning("lone \udc80 surrogate")
            return "done"

    async def scenario() -> None:
        async with serving(Loud(), max_message_length=64 * 1024) as (conn, _):
            function_id = await load(conn, "loud")
            reply = await conn.invoke(function_id, {})
            assert reply.return_value.string == "done"
            long, odd = conn.logs_for(reply.invocation_id)
            assert long.message.endswith(" [truncated: over the message size limit]")
            assert len(long.message) < 64 * 1024 and long.exception is None
            assert odd.message == "lone \\udc80 surrogate"

    arun(scenario())


def test_a_log_record_that_cannot_be_encoded_is_dropped_and_the_worker_serves_on() -> None:
    class OddRecord(Scenarios):
        def on_function_load(self, function: workerkit.FunctionInfo) -> None:
            record = logging.makeLogRecord({"name": 123, "msg": "odd", "levelno": 40})
            logging.getLogger().handle(record)  # outside an invocation: a System log
            super().on_function_load(function)

    async def scenario() -> None:
        async with serving(OddRecord()) as (conn, _):
            function_id = await load(conn, "echo", bindings=http_bindings())
            reply = await conn.invoke(function_id, {"req": HTTP_REQUEST})
            assert reply.result.status == SUCCESS
            assert await conn.status() == pb.WorkerStatusResponse()

    arun(scenario())


def test_host_log_levels_are_respected() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Scenarios())
            conn = started.connection
            await conn.init(log_categories={"Default": pb.RpcLogLevel.Debug})
            function_id = await load(conn, "logs")
            reply = await conn.invoke(function_id, {})
            messages = [entry.message for entry in conn.logs_for(reply.invocation_id)]
            assert messages == ["first line", "with traceback", "debug line"]

    arun(scenario())


def test_logs_from_a_sync_hook_thread_are_attributed() -> None:
    async def scenario() -> None:
        async with serving(SyncScenarios()) as (conn, _):
            function_id = await load(conn, "thread-logs")
            replies = await asyncio.gather(*[conn.invoke(function_id, {}) for _ in range(8)])
            for reply in replies:
                thread = reply.return_value.string
                assert thread.startswith("workerkit-hook")
                [entry] = conn.logs_for(reply.invocation_id)
                assert entry.message == f"from {thread}"

    arun(scenario())


def test_logs_from_many_threads_at_once_arrive_whole_in_order_before_each_response() -> None:
    """Records from pool threads take no lock on their way to the loop (`offer_log`): none
    may be lost, duplicated, reordered within an invocation or overtaken by its response."""
    from workers import Chatty

    async def scenario() -> None:
        async with TestHost() as host:
            options = WorkerOptions(threads=16, send_queue=8192)  # room for every record
            started = await host.start_worker(Chatty(options=options))
            conn = started.connection
            await conn.init()
            await conn.load("f", "flood")
            pending = [await conn.start_invocation("f", {"lines": 300}) for _ in range(16)]
            replies = [await p.result(60) for p in pending]
            assert all(r.return_value.string == "flooded" for r in replies)
            kinds = [betterproto2.which_one_of(m, "content") for m in conn.messages]
            for reply in replies:
                lines = [e.message for e in conn.logs_for(reply.invocation_id)]
                assert lines == [f"line {i}" for i in range(300)]
                response_at = next(
                    i
                    for i, (k, b) in enumerate(kinds)
                    if k == "invocation_response" and b.invocation_id == reply.invocation_id
                )
                last_log = max(
                    i
                    for i, (k, b) in enumerate(kinds)
                    if k == "rpc_log" and b.invocation_id == reply.invocation_id
                )
                assert last_log < response_at
            assert not [e for e in conn.logs if e.message.startswith("dropped ")]

    arun(scenario(), timeout=120)


def test_requests_on_a_closed_connection_fail_at_once() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, started):
            await conn.terminate(1)
            assert await started.wait(30) == 0
            await conn.wait_closed(30)
            with pytest.raises(ConnectionError, match="ended the stream"):
                await conn.status(timeout=300)  # a hang would fail arun, not this

    arun(scenario())


def test_a_return_value_without_a_return_binding_is_refused() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            bindings = {"trigger": binding("queueTrigger"), "out": binding("queue", "out")}
            function_id = await load(conn, "value", bindings=bindings)
            reply = await conn.invoke(function_id, {"trigger": "t", "value": {"out": 1}})
            assert reply.result.status == FAILURE
            assert "has no '$return' binding" in reply.result.exception.message
            reply = await conn.invoke(function_id, {"trigger": "t"})  # returns None: fine
            assert reply.result.status == SUCCESS

    arun(scenario())


def test_generator_exit_from_a_plain_def_hook_is_answered_like_any_error() -> None:
    class Closing(SyncScenarios):
        def on_function_load(self, function: workerkit.FunctionInfo) -> None:
            if function.name == "closing-load":
                raise GeneratorExit("from load")

        def on_invocation(self, invocation: workerkit.Invocation) -> Any:
            raise GeneratorExit("from invocation")

    async def scenario() -> None:
        async with serving(Closing()) as (conn, started):
            loaded = await conn.load("id-l", "closing-load")
            assert loaded.result.status == FAILURE
            assert "GeneratorExit" in loaded.result.exception.message
            function_id = await load(conn, "closing")
            reply = await conn.invoke(function_id, {})
            assert reply.result.status == FAILURE
            assert "GeneratorExit: from invocation" in reply.result.exception.message
            await conn.status()
            assert not started.task.done()

    arun(scenario())


# -- defects found in review (issue 10): each test failed before its fix --------------------


def test_two_workers_in_one_process_each_log_to_their_own_stream() -> None:
    """Each session routes the records of its own code to its own stream; one stopping
    leaves the other's logs alone (they used to share one global sink)."""

    async def scenario() -> None:
        async with TestHost() as host:
            first, second = Scenarios(), Scenarios()
            a = await host.start_worker(first)
            b = await host.start_worker(second)
            for conn in (a.connection, b.connection):
                assert (await conn.init()).result.status == SUCCESS
                await load(conn, "logs")
            on_a = await a.connection.invoke("id-logs", {})
            on_b = await b.connection.invoke("id-logs", {})
            for mine, theirs, reply in ((a, b, on_a), (b, a, on_b)):
                lines = [e.message for e in mine.connection.logs_for(reply.invocation_id)]
                assert lines == ["first line", "with traceback"]
                assert theirs.connection.logs_for(reply.invocation_id) == []
            assert [e.message for e in a.connection.logs].count("an sdk line") == 1
            assert [e.message for e in b.connection.logs].count("an sdk line") == 1
            await a.connection.terminate(grace_period=1.0)
            assert await a.wait(30) == 0
            after = await b.connection.invoke("id-logs", {})
            lines = [e.message for e in b.connection.logs_for(after.invocation_id)]
            assert lines == ["first line", "with traceback"]
        assert log_handler not in logging.getLogger().handlers  # the last one took it away

    arun(scenario())


def test_an_unreadable_function_load_request_is_answered_with_a_failure() -> None:
    """A FunctionLoadRequest the worker cannot decode gets its FunctionLoadResponse (the
    collection path already answered a broken entry); invocations of it fail clearly."""

    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            # function_id "id-x", then metadata whose bindings map holds a truncated entry
            broken = b"\x0a\x04id-x" + b"\x12\x05" + b"\x32\x07\x0a\x05"
            answered = conn._expect("function_load_response", "id-x")
            await conn.send(b"\x0a\x03r-1" + b"\x42" + bytes([len(broken)]) + broken)
            reply = await asyncio.wait_for(answered, 30)
            assert reply.result.status == FAILURE
            assert "FunctionLoadRequest could not be read" in reply.result.exception.message
            invocation = await conn.invoke("id-x", {})
            assert invocation.result.status == FAILURE
            assert "could not be read" in invocation.result.exception.message
            # and the worker serves on
            assert (await conn.invoke(await load(conn, "value"), {"value": 1})).result.status == (
                SUCCESS
            )

    arun(scenario())


@pytest.mark.parametrize(
    ("content", "reply_kind"),
    [
        (b"\x8a\x01", "worker_init_response"),  # 17
        (b"\xea\x01", "function_metadata_response"),  # 29
        (b"\xca\x01", "function_environment_reload_response"),  # 25
        (b"\x8a\x02", "worker_warmup_response"),  # 33
        (b"\x62", "worker_status_response"),  # 12
        (b"\xda\x01", "close_shared_memory_resources_response"),  # 27
        (b"\xfa\x01", "function_load_response_collection"),  # 31
    ],
)
def test_every_unreadable_request_that_expects_a_reply_gets_one(
    content: bytes, reply_kind: str
) -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, _):
            key = "r-9" if reply_kind == "worker_status_response" else None
            answered = conn._expect(reply_kind, key)
            garbage = b"\x0a\xff"  # a string field whose length runs past the end
            await conn.send(b"\x0a\x03r-9" + content + bytes([len(garbage)]) + garbage)
            reply = await asyncio.wait_for(answered, 30)
            status = getattr(reply, "result", None)
            if status is not None:
                assert status.status == FAILURE
                assert "could not be read" in status.exception.message
            [message] = [m for m in conn.messages if m.request_id == "r-9"]
            assert betterproto2.which_one_of(message, "content")[0] == reply_kind
            reply = await conn.invoke(await load(conn, "value"), {"value": 1})
            assert reply.result.status == SUCCESS  # still serving

    arun(scenario())


def test_an_unreadable_worker_terminate_still_stops_the_worker() -> None:
    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, started):
            garbage = b"\x0a\xff"  # WorkerTerminate.grace_period, cut short
            await conn.send(b"\x72" + bytes([len(garbage)]) + garbage)
            assert await started.wait(30) == 0

    arun(scenario())


def _decorated(hook: Any) -> Any:
    """What any decorator does: a plain-def wrapper with functools.wraps."""

    @functools.wraps(hook)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return hook(*args, **kwargs)

    return wrapper


class DecoratedHooks(workerkit.Worker):
    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        return None

    @_decorated
    async def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        await asyncio.sleep(0)
        return invocation.inputs.get("value")

    @_decorated
    async def on_init(self, request: workerkit.InitRequest) -> workerkit.InitResult:
        return workerkit.InitResult(capabilities={"Decorated": "yes"})


class CoroutineFromPlainDef(workerkit.Worker):
    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        return None

    def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        return self.later(invocation)  # a coroutine from a plain def: awaited on the loop

    async def later(self, invocation: workerkit.Invocation) -> Any:
        return {"loop": asyncio.get_running_loop() is not None, "value": invocation.inputs}


def test_decorated_async_hooks_are_awaited() -> None:
    # The wrappers are plain defs: they run in the pool, their coroutines on the loop.
    assert DecoratedHooks._async_hooks == frozenset()

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(DecoratedHooks())
            conn = started.connection
            init = await conn.init()
            assert init.result.status == SUCCESS and init.capabilities["Decorated"] == "yes"
            reply = await conn.invoke(await load(conn, "f"), {"value": "hi"})
            assert reply.result.status == SUCCESS and reply.return_value.string == "hi"

    arun(scenario())


def test_a_coroutine_returned_by_a_plain_def_hook_is_awaited() -> None:
    async def scenario() -> None:
        async with serving(CoroutineFromPlainDef()) as (conn, _):
            reply = await conn.invoke(await load(conn, "f"), {"value": 5})
            assert reply.result.status == SUCCESS, reply.result
            assert json.loads(reply.return_value.json) == {"loop": True, "value": {"value": 5}}

    arun(scenario())


def test_init_is_answered_when_the_platform_cannot_describe_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No platform-specific call may lose the init reply (os.uname is not everywhere)."""

    def no_uname() -> Any:
        raise AttributeError("module 'os' has no attribute 'uname'")

    monkeypatch.setattr(os, "uname", no_uname)
    monkeypatch.setattr(platform_module, "machine", no_uname)
    _machine.cache_clear()

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Scenarios())
            init = await started.connection.init()
            assert init.result.status == SUCCESS
            assert init.worker_metadata.worker_bitness == ""
            assert init.worker_metadata.runtime_name == "workerkit"

    try:
        arun(scenario())
    finally:
        _machine.cache_clear()


def test_worker_metadata_of_the_wrong_type_is_a_failure_reply_not_a_lost_one() -> None:
    class Misdescribed(Scenarios):
        runtime_version = 3.12  # type: ignore[assignment]

    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Misdescribed())
            init = await started.connection.init()
            assert init.result.status == FAILURE
            assert "runtime_version must be a str" in init.result.exception.message
            reload = await started.connection.reload_environment({"A": "1"}, "")
            assert reload.result.status == FAILURE
            assert "runtime_version must be a str" in reload.result.exception.message

    saved = dict(os.environ)
    try:
        arun(scenario())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_after_terminate_a_host_that_never_ends_the_call_does_not_keep_the_worker() -> None:
    """The worker ends its side and waits for the host's end of the call only within the
    grace period (a wedged host, or a proxy in between, used to keep it for ever)."""

    async def scenario() -> None:
        async with serving(Scenarios()) as (conn, started):
            conn.pause_reading()  # from now on the host reads nothing and ends nothing
            await conn.terminate(grace_period=0.5)
            assert await started.wait(30) == 0
            conn.resume_reading()

    arun(scenario())


# -- issue 11 items --------------------------------------------------------------------------


class RaisesCancel(workerkit.Worker):
    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        return None

    async def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        name = invocation.function.name
        if name == "async-cancel":
            raise asyncio.CancelledError
        if name == "own-cancel":
            raise workerkit.InvocationCancelled("not really")
        if name == "informational":
            return workerkit.HttpResponse(status_code=103, body="early hints?")
        raise LookupError(name)


class SyncRaisesCancel(RaisesCancel):
    def on_invocation(self, invocation: workerkit.Invocation) -> Any:  # type: ignore[override]
        raise asyncio.CancelledError


@pytest.mark.parametrize(
    ("worker", "name"),
    [(RaisesCancel, "async-cancel"), (RaisesCancel, "own-cancel"), (SyncRaisesCancel, "sync")],
)
def test_a_cancel_the_host_did_not_ask_for_is_a_failure_not_cancelled(
    worker: type[workerkit.Worker], name: str
) -> None:
    async def scenario() -> None:
        async with serving(worker()) as (conn, _):
            reply = await conn.invoke(await load(conn, name), {})
            assert reply.result.status == FAILURE
            assert "nothing cancelled the invocation" in reply.result.exception.message

    arun(scenario())


def test_a_final_1xx_status_is_refused() -> None:
    async def scenario() -> None:
        async with serving(RaisesCancel()) as (conn, _):
            function_id = await load(conn, "informational", bindings=http_bindings())
            reply = await conn.invoke(function_id, {"req": HTTP_REQUEST})
            assert reply.result.status == FAILURE
            assert "not a final response" in reply.result.exception.message

    arun(scenario())


def test_a_second_stream_for_a_connected_worker_is_refused() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            started = await host.start_worker(Scenarios())
            conn = started.connection
            assert await open_stream_as(host.port, conn.worker_id) == []
            assert host.refused == [(conn.worker_id, "a second StartStream for a connected worker")]
            assert (await conn.init()).result.status == SUCCESS  # the first one serves on

    arun(scenario())


class RecordingHeaders(dict[str, str]):
    """Headers that note which thread reads them: the one encoding the response."""

    readers: ClassVar[list[str]] = []

    def items(self) -> Any:
        RecordingHeaders.readers.append(threading.current_thread().name)
        return super().items()


class PlainResult(workerkit.Worker):
    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        return None

    def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        return workerkit.HttpResponse(body="made here", headers=RecordingHeaders({"a": "b"}))


def test_the_result_of_a_plain_def_hook_is_encoded_in_its_pool_thread() -> None:
    """Encoding a large result on the event loop stalled every other call."""
    RecordingHeaders.readers.clear()

    async def scenario() -> None:
        async with serving(PlainResult()) as (conn, _):
            function_id = await load(conn, "f", bindings=http_bindings())
            reply = await conn.invoke(function_id, {"req": HTTP_REQUEST})
            assert reply.result.status == SUCCESS
            assert reply.return_value.http.headers == {"a": "b"}

    arun(scenario())
    assert RecordingHeaders.readers
    assert all(name.startswith("workerkit-hook") for name in RecordingHeaders.readers)


class CancelsItself(workerkit.Worker):
    """Hooks that raise CancelledError though nothing cancelled them."""

    async def on_init(self, request: workerkit.InitRequest) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # someone else's cancelled future

    def on_function_load(self, function: workerkit.FunctionInfo) -> None:
        raise asyncio.CancelledError

    def on_invocation(self, invocation: workerkit.Invocation) -> Any:
        return None


def test_every_hook_that_raises_cancelled_error_by_itself_still_gets_its_reply() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            conn = (await host.start_worker(CancelsItself())).connection
            init = await conn.init(timeout=30)
            assert init.result.status == FAILURE
            load_reply = await conn.load("f", "f", timeout=30)
            assert load_reply.result.status == FAILURE
            assert "CancelledError" in load_reply.result.exception.type

    arun(scenario())
