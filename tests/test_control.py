"""The control state machine (`workerkit._runtime.control.Control`) without a socket, a loop or
a thread: host messages and hook outcomes in, effects out. The hooks are never run here; each
test decides what they returned or raised, in the order it wants."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import workerkit
from workerkit import FunctionInfo, FunctionMetadata, InitRequest, InitResult, MetadataRequest
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime.control import (
    Call,
    Control,
    Effect,
    Loading,
    LogLevels,
    Send,
    Settled,
    Stop,
)
from workerkit._runtime.replies import WORKER_INDEXED
from workerkit._runtime.transport import Unreadable
from workerkit._wire import schema

SUCCESS, FAILURE = pb.StatusResultStatus(1), pb.StatusResultStatus(0)
ID_A = FunctionMetadata(name="a", script_file="a", bindings=[]).function_id  # from the name
INIT = InitRequest("4.9", "/worker", "/app", {}, {"Default": 3})


class Plain(workerkit.Worker):
    runtime_name = "plain"

    def on_function_load(self, function: FunctionInfo) -> None:
        raise AssertionError("hooks are not run in these tests")

    def on_invocation(self, invocation: workerkit.Invocation) -> None:
        raise AssertionError("hooks are not run in these tests")


class SelfIndexing(Plain):
    def on_functions_metadata(self, request: MetadataRequest) -> list[FunctionMetadata]:
        raise AssertionError("hooks are not run in these tests")


def control(worker: workerkit.Worker | None = None, app: str = "/app") -> Control:
    return Control(worker or Plain(), lambda: app)


def sends(effects: list[Effect]) -> list[pb.StreamingMessage]:
    out = []
    for effect in effects:
        if isinstance(effect, Send):
            message = effect.message
            if isinstance(message, bytes):
                message = pb.StreamingMessage.parse(message)
            assert message.request_id == effect.request_id
            out.append(message)
    return out


def calls(effects: list[Effect], hook: str | None = None) -> list[Call]:
    return [e for e in effects if isinstance(e, Call) and (hook is None or e.hook == hook)]


def only_call(effects: list[Effect], hook: str) -> Call:
    found = calls(effects, hook)
    assert len(found) == 1, effects
    return found[0]


def initialized(machine: Control, result: Any = None) -> pb.WorkerInitResponse:
    effects = machine.receive("worker_init_request", "init", INIT)
    assert effects[0] == LogLevels({"Default": 3})
    done = machine.hook_done(only_call(effects, "on_init").token, True, result)
    (reply,) = sends(done)
    return reply.worker_init_response


def load(function_id: str, name: str = "", **properties: str) -> FunctionInfo:
    return FunctionInfo(function_id, name or function_id, properties=properties)


# -- init --------------------------------------------------------------------------------------
def test_init_answers_with_capabilities_and_the_worker_s_metadata() -> None:
    machine = control()
    response = initialized(machine, InitResult({"Extra": "1"}, worker_version="9"))
    assert response.result.status == SUCCESS
    assert response.capabilities["Extra"] == "1"
    assert response.capabilities["HandlesWorkerTerminateMessage"] == "true"
    assert response.worker_metadata.runtime_name == "plain"
    assert response.worker_metadata.worker_version == "9"


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ((False, RuntimeError("no config")), "no config"),
        ((True, "yes"), "on_init must return InitResult or None"),
        ((True, InitResult(runtime_version=3)), "InitResult.runtime_version must be a str"),  # type: ignore[arg-type]
        ((True, InitResult({"a": 1})), "InitResult.capabilities must map str to str"),  # type: ignore[dict-item]
    ],
)
def test_a_failed_or_malformed_init_is_a_failure_reply_and_still_releases_loads(
    outcome: tuple[bool, Any], message: str
) -> None:
    machine = control()
    waiting = machine.receive("function_load_request", "load", load("f1"))
    assert waiting == [Loading("f1")]  # nothing runs before init is answered
    effects = machine.receive("worker_init_request", "init", INIT)
    done = machine.hook_done(only_call(effects, "on_init").token, *outcome)
    (reply,) = sends(done)  # the init reply comes before the load's hook
    assert done.index(next(e for e in done if isinstance(e, Send))) == 0
    assert reply.worker_init_response.result.status == FAILURE
    assert message in reply.worker_init_response.result.exception.message
    only_call(done, "on_function_load")


def test_a_worker_attribute_of_the_wrong_type_is_a_failure_not_a_lost_init_reply() -> None:
    class Broken(Plain):
        runtime_version = 3  # type: ignore[assignment]

    response = initialized(control(Broken()))
    assert response.result.status == FAILURE
    assert "runtime_version must be a str" in response.result.exception.message


def test_metadata_loads_and_reloads_wait_for_init_and_run_in_arrival_order() -> None:
    machine = control(SelfIndexing())
    before = [
        machine.receive("functions_metadata_request", "m", pb.FunctionsMetadataRequest("/app")),
        machine.receive("function_load_request", "l", load("f1")),
        machine.receive(
            "function_environment_reload_request",
            "r",
            pb.FunctionEnvironmentReloadRequest({"A": "1"}, "/new"),
        ),
        machine.receive("worker_warmup_request", "w", pb.WorkerWarmupRequest("/w")),
        machine.receive("worker_status_request", "s", pb.WorkerStatusRequest()),
    ]
    assert [calls(e) for e in before[:3]] == [[], [], []]
    assert only_call(before[3], "on_warmup")  # warmup does not wait
    assert sends(before[4])[0].worker_status_response is not None  # nor does status
    effects = machine.receive("worker_init_request", "init", INIT)
    done = machine.hook_done(only_call(effects, "on_init").token, True, None)
    assert [c.hook for c in calls(done)] == [
        "on_functions_metadata",
        "on_function_load",
        "on_environment_reload",
    ]
    reload = calls(done)[2]
    assert (dict(reload.environment or {}), reload.directory) == ({"A": "1"}, "/new")


# -- loads -------------------------------------------------------------------------------------
def test_a_load_failure_is_its_reply_and_its_invocations_failure() -> None:
    machine = control()
    initialized(machine)
    effects = machine.receive("function_load_request", "l", load("f1", "hello"))
    assert effects[0] == Loading("f1")
    done = machine.hook_done(only_call(effects, "on_function_load").token, False, OSError("nope"))
    (reply,) = sends(done)
    assert reply.function_load_response.function_id == "f1"
    assert reply.function_load_response.result.status == FAILURE
    assert done[-1] == Settled("f1")
    assert machine.catalog.resolve("f1") == "function f1 failed to load: OSError: nope"
    # a later successful load replaces the failure
    effects = machine.receive("function_load_request", "l2", load("f1", "hello"))
    machine.hook_done(only_call(effects, "on_function_load").token, True, None)
    assert isinstance(machine.catalog.resolve("f1"), FunctionInfo)


def test_invocations_wait_until_the_last_of_overlapping_loads_ends() -> None:
    machine = control()
    initialized(machine)
    first = only_call(machine.receive("function_load_request", "a", load("f1")), "on_function_load")
    second = only_call(
        machine.receive("function_load_request", "b", load("f1")), "on_function_load"
    )
    assert Settled("f1") not in machine.hook_done(first.token, True, None)
    assert machine.hook_done(second.token, True, None)[-1] == Settled("f1")


def test_a_load_without_a_function_id_fails_without_running_the_hook() -> None:
    machine = control()
    initialized(machine)
    effects = machine.receive("function_load_request", "l", load(""))
    assert calls(effects) == []
    (reply,) = sends(effects)
    assert "has no function_id" in reply.function_load_response.result.exception.message


def test_a_restarted_worker_indexes_itself_once_for_all_waiting_loads() -> None:
    machine = control(SelfIndexing(), app="/site/wwwroot")
    initialized(machine)
    first = machine.receive("function_load_request", "a", load(ID_A, **{WORKER_INDEXED: "True"}))
    second = machine.receive("function_load_request", "b", load("id-b", **{WORKER_INDEXED: "True"}))
    index = only_call(first, "on_functions_metadata")
    assert index.arg == MetadataRequest("/site/wwwroot")
    assert calls(second) == []  # shares the index being built
    entry = FunctionMetadata(name="a", script_file="a.fn", bindings=[])
    done = machine.hook_done(index.token, True, [entry])
    loads = calls(done, "on_function_load")
    assert [c.arg.function_id for c in loads] == [ID_A, "id-b"]
    assert loads[0].arg.indexed == entry and loads[1].arg.indexed is None
    # once built, later loads use it without indexing again
    third = machine.receive("function_load_request", "c", load(ID_A, **{WORKER_INDEXED: "True"}))
    assert [c.hook for c in calls(third)] == ["on_function_load"]


def test_an_index_that_fails_fails_every_load_waiting_for_it() -> None:
    machine = control(SelfIndexing())
    initialized(machine)
    first = machine.receive("function_load_request", "a", load(ID_A, **{WORKER_INDEXED: "1"}))
    machine.receive("function_load_request", "b", load("id-b", **{WORKER_INDEXED: "1"}))
    done = machine.hook_done(only_call(first, "on_functions_metadata").token, True, ["not one"])
    replies = sends(done)
    assert [r.function_load_response.result.status for r in replies] == [FAILURE, FAILURE]
    assert (
        "must return FunctionMetadata items"
        in replies[0].function_load_response.result.exception.message
    )
    assert calls(done) == [] and machine.waiting == 0


def test_a_collection_is_answered_once_all_its_loads_end_in_request_order() -> None:
    machine = control()
    initialized(machine)
    collection = pb.FunctionLoadRequestCollection(
        [
            pb.FunctionLoadRequest("x", pb.RpcFunctionMetadata(name="x")),
            pb.FunctionLoadRequest("y", pb.RpcFunctionMetadata(name="y")),
        ]
    )
    effects = machine.receive("function_load_request_collection", "c", collection)
    x, y = calls(effects, "on_function_load")
    assert sends(machine.hook_done(y.token, False, ValueError("bad y"))) == []
    (reply,) = sends(machine.hook_done(x.token, True, None))
    responses = reply.function_load_response_collection.function_load_responses
    assert [(r.function_id, r.result.status) for r in responses] == [("x", SUCCESS), ("y", FAILURE)]
    empty = sends(
        machine.receive("function_load_request_collection", "e", pb.FunctionLoadRequestCollection())
    )
    assert empty[0].function_load_response_collection.function_load_responses == []


# -- metadata, reload, terminate, unreadable frames ----------------------------------------------
def test_metadata_reports_the_index_or_asks_the_host_to_index() -> None:
    machine = control(SelfIndexing())
    initialized(machine)
    effects = machine.receive(
        "functions_metadata_request", "m", pb.FunctionsMetadataRequest("/app")
    )
    bindings = [{"type": "httpTrigger", "direction": "in", "name": "req"}]
    entry = FunctionMetadata(name="hello", script_file="hello.fn", bindings=bindings)
    (reply,) = sends(
        machine.hook_done(only_call(effects, "on_functions_metadata").token, True, [entry])
    )
    response = reply.function_metadata_response
    assert [m.name for m in response.function_metadata_results] == ["hello"]
    assert response.function_metadata_results[0].directory == "/app"
    assert response.use_default_metadata_indexing is False
    effects = machine.receive(
        "functions_metadata_request", "m2", pb.FunctionsMetadataRequest("/app")
    )
    (reply,) = sends(
        machine.hook_done(only_call(effects, "on_functions_metadata").token, True, None)
    )
    assert reply.function_metadata_response.use_default_metadata_indexing is True


def test_a_reload_answers_with_capabilities_and_metadata_even_when_its_hook_fails() -> None:
    machine = control()
    initialized(machine, InitResult({"Extra": "1"}))
    effects = machine.receive(
        "function_environment_reload_request", "r", pb.FunctionEnvironmentReloadRequest({}, "")
    )
    call = only_call(effects, "on_environment_reload")
    assert call.environment == {} and call.directory == ""
    (reply,) = sends(machine.hook_done(call.token, False, KeyError("X")))
    response = reply.function_environment_reload_response
    assert response.result.status == FAILURE
    assert response.capabilities["Extra"] == "1"
    assert response.worker_metadata.runtime_name == "plain"


def test_terminate_stops_with_the_host_s_grace_or_the_default() -> None:
    machine = control()
    grace = pb.WorkerTerminate(grace_period=datetime.timedelta(seconds=3))
    assert machine.receive("worker_terminate", "t", grace) == [
        Stop("the host sent WorkerTerminate", 3.0)
    ]
    assert machine.receive("worker_terminate", "t", pb.WorkerTerminate())[0].grace == 5.0  # type: ignore[union-attr]


def test_an_unreadable_init_releases_what_waits_for_it_and_an_unreadable_terminate_stops() -> None:
    machine = control()
    machine.receive("function_load_request", "l", load("f1"))
    frame = Unreadable("truncated", "i", content=schema.STREAMING_MESSAGE_WORKER_INIT_REQUEST)
    effects = machine.unreadable(frame)
    (reply,) = sends(effects)
    assert reply.worker_init_response.result.status == FAILURE
    assert "could not be read: truncated" in reply.worker_init_response.result.exception.message
    only_call(effects, "on_function_load")
    stop = machine.unreadable(
        Unreadable("bad", "t", content=schema.STREAMING_MESSAGE_WORKER_TERMINATE)
    )
    assert stop == [Stop("the host sent WorkerTerminate", 5.0)]


def test_an_unreadable_load_fails_that_function_s_invocations() -> None:
    machine = control()
    frame = Unreadable(
        "bad", "l", content=schema.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST, function_id="f9"
    )
    (reply,) = sends(machine.unreadable(frame))
    assert reply.function_load_response.function_id == "f9"
    assert "could not be read" in str(machine.catalog.resolve("f9"))


# -- any order ---------------------------------------------------------------------------------
REQUESTS = st.sampled_from(
    [
        "init",
        "load",
        "indexed_load",
        "collection",
        "metadata",
        "reload",
        "warmup",
        "status",
        "bad_init",
        "bad_load",
    ]
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), REQUESTS, st.integers(0, 3)),
        st.tuples(st.just("finish"), st.booleans(), st.integers(0, 50)),
    ),
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_every_request_is_answered_once_and_nothing_waiting_for_init_starts_early(
    steps: list[tuple[str, Any, int]],
) -> None:
    machine = control(SelfIndexing())
    expected: list[str] = []  # request ids owed a reply
    answered: list[str] = []
    pending: list[Call] = []
    loading: dict[str, int] = {}
    gated = {"on_function_load", "on_environment_reload"}
    metadata_early = 0  # the only metadata call before init: none

    def apply(effects: list[Effect]) -> None:
        nonlocal metadata_early
        for effect in effects:
            if isinstance(effect, Send):
                answered.append(effect.request_id)
            elif isinstance(effect, Call):
                if not machine.initialized and (
                    effect.hook in gated or effect.hook == "on_functions_metadata"
                ):
                    metadata_early += 1
                pending.append(effect)
            elif isinstance(effect, Loading):
                loading[effect.function_id] = loading.get(effect.function_id, 0) + 1
            elif isinstance(effect, Settled):
                assert loading.pop(effect.function_id) >= 1

    def outcome(call: Call, ok: bool) -> tuple[bool, Any]:
        if not ok:
            return False, RuntimeError(f"{call.hook} failed")
        if call.hook == "on_functions_metadata":
            return True, [FunctionMetadata(name="a", script_file="a", bindings=[])]
        return True, None

    for number, (step, what, n) in enumerate(steps):
        if step == "finish":
            if pending:
                call = pending.pop(n % len(pending))
                apply(machine.hook_done(call.token, *outcome(call, what)))
            continue
        rid = f"r{number}"
        function_id = f"f{n}"
        if what in (
            "init",
            "load",
            "indexed_load",
            "collection",
            "metadata",
            "reload",
            "warmup",
            "status",
        ):
            expected.append(rid)
        if what == "init":
            apply(machine.receive("worker_init_request", rid, INIT))
        elif what == "load":
            apply(machine.receive("function_load_request", rid, load(function_id)))
        elif what == "indexed_load":
            apply(
                machine.receive(
                    "function_load_request", rid, load(function_id, **{WORKER_INDEXED: "1"})
                )
            )
        elif what == "collection":
            requests = [
                pb.FunctionLoadRequest(f"f{i}", pb.RpcFunctionMetadata(name="x")) for i in range(n)
            ]
            apply(
                machine.receive(
                    "function_load_request_collection",
                    rid,
                    pb.FunctionLoadRequestCollection(requests),
                )
            )
        elif what == "metadata":
            apply(
                machine.receive(
                    "functions_metadata_request", rid, pb.FunctionsMetadataRequest("/app")
                )
            )
        elif what == "reload":
            apply(
                machine.receive(
                    "function_environment_reload_request",
                    rid,
                    pb.FunctionEnvironmentReloadRequest(),
                )
            )
        elif what == "warmup":
            apply(machine.receive("worker_warmup_request", rid, pb.WorkerWarmupRequest("/w")))
        elif what == "status":
            apply(machine.receive("worker_status_request", rid, pb.WorkerStatusRequest()))
        else:
            content = (
                schema.STREAMING_MESSAGE_WORKER_INIT_REQUEST
                if what == "bad_init"
                else schema.STREAMING_MESSAGE_FUNCTION_LOAD_REQUEST
            )
            expected.append(rid)
            apply(
                machine.unreadable(
                    Unreadable("broken", rid, content=content, function_id=function_id)
                )
            )
    assert metadata_early == 0
    # the host answers init at last (if it never sent one, an unreadable one stands in)
    if not machine.initialized:
        expected.append("late-init")
        apply(machine.receive("worker_init_request", "late-init", INIT))
    while pending:
        call = pending.pop(0)
        apply(machine.hook_done(call.token, *outcome(call, True)))
    assert sorted(answered) == sorted(expected)
    assert loading == {} and machine.waiting == 0
