"""HTTP streaming in the control state machine (`Control`), without a socket: when the
worker's HTTP server is opened (`OpenProxy`), what init and the environment reload report
(``HttpUri``, ``RequiresRouteParameters``), and what a server that does not start does."""

from __future__ import annotations

import pytest
from test_control import INIT, Plain, calls, only_call, sends

from workerkit import FunctionInfo
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit._runtime.control import Control, Effect, OpenProxy
from workerkit._runtime.replies import wants_http_streaming

SUCCESS, FAILURE = pb.StatusResultStatus(1), pb.StatusResultStatus(0)
URI = "http://127.0.0.1:41234"


class Wanted:
    """The answer `Control` gets when it asks whether streaming is wanted."""

    def __init__(self, value: bool) -> None:
        self.value = value
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.value


def opens(effects: list[Effect]) -> OpenProxy:
    (effect,) = [e for e in effects if isinstance(e, OpenProxy)]
    assert not sends(effects)  # nothing is answered before the server is open
    return effect


def init(machine: Control) -> list[Effect]:
    effects = machine.receive("worker_init_request", "init", INIT)
    return machine.hook_done(only_call(effects, "on_init").token, True, None)


def reload(machine: Control, hook_ok: bool = True) -> list[Effect]:
    request = pb.FunctionEnvironmentReloadRequest(environment_variables={"A": "1"})
    effects = machine.receive("function_environment_reload_request", "reload", request)
    call = only_call(effects, "on_environment_reload")
    return machine.hook_done(call.token, hook_ok, None if hook_ok else RuntimeError("bad"))


def test_init_waits_for_the_server_and_reports_it() -> None:
    machine = Control(Plain(), lambda: "/app", Wanted(True))
    waiting = machine.receive("function_load_request", "load", FunctionInfo("f1", "f1"))
    effect = opens(init(machine))
    assert not machine.initialized  # loads wait for the init answer too
    done = machine.hook_done(effect.token, True, URI)
    (reply, *_) = sends(done)
    response = reply.worker_init_response
    assert response.result.status == SUCCESS
    assert response.capabilities["HttpUri"] == URI
    assert response.capabilities["RequiresRouteParameters"] == "true"
    assert machine.http_uri == URI and machine.initialized
    assert waiting  # the load was held until now
    assert calls(done, "on_function_load")


def test_a_server_that_does_not_start_fails_init_with_the_reason() -> None:
    machine = Control(Plain(), lambda: "/app", Wanted(True))
    effect = opens(init(machine))
    problem = ImportError("HTTP streaming needs aiohttp: pip install 'workerkit[http]'")
    (reply,) = sends(machine.hook_done(effect.token, False, problem))
    response = reply.worker_init_response
    assert response.result.status == FAILURE
    assert "workerkit[http]" in response.result.exception.message
    assert "HttpUri" not in response.capabilities


def test_without_streaming_nothing_is_opened() -> None:
    wanted = Wanted(False)
    machine = Control(Plain(), lambda: "/app", wanted)
    effects = init(machine)
    assert not [e for e in effects if isinstance(e, OpenProxy)]
    (reply,) = sends(effects)
    assert "HttpUri" not in reply.worker_init_response.capabilities
    assert "RequiresRouteParameters" not in reply.worker_init_response.capabilities
    assert wanted.asked == 1


def test_a_failed_on_init_opens_nothing() -> None:
    machine = Control(Plain(), lambda: "/app", Wanted(True))
    effects = machine.receive("worker_init_request", "init", INIT)
    done = machine.hook_done(only_call(effects, "on_init").token, False, RuntimeError("x"))
    assert not [e for e in done if isinstance(e, OpenProxy)]
    assert sends(done)[0].worker_init_response.result.status == FAILURE


def test_the_setting_may_arrive_with_the_environment_reload() -> None:
    wanted = Wanted(False)
    machine = Control(Plain(), lambda: "/app", wanted)
    init(machine)
    wanted.value = True  # the reloaded environment has it
    effect = opens(reload(machine))
    (reply,) = sends(machine.hook_done(effect.token, True, URI))
    response = reply.function_environment_reload_response
    assert response.result.status == SUCCESS
    assert response.capabilities["HttpUri"] == URI
    assert response.capabilities_update_strategy == 0  # merge: added to the init ones


def test_once_reported_the_server_stays_also_when_the_setting_goes() -> None:
    """The host never stops proxying to a worker that reported HttpUri (it keeps the
    endpoint), so a reload without the setting still reports it."""
    wanted = Wanted(True)
    machine = Control(Plain(), lambda: "/app", wanted)
    machine.hook_done(opens(init(machine)).token, True, URI)
    wanted.value = False
    (reply,) = sends(reload(machine))
    assert reply.function_environment_reload_response.capabilities["HttpUri"] == URI
    wanted.value = True
    (reply,) = sends(reload(machine))  # already open: not opened again
    assert reply.function_environment_reload_response.capabilities["HttpUri"] == URI


def test_a_failed_reload_hook_opens_nothing_and_a_failed_server_fails_the_reload() -> None:
    machine = Control(Plain(), lambda: "/app", Wanted(True))
    init_effect = opens(init(machine))
    machine.hook_done(init_effect.token, False, OSError("no port"))
    (reply,) = sends(reload(machine, hook_ok=False))
    assert reply.function_environment_reload_response.result.status == FAILURE
    effect = opens(reload(machine))
    (reply,) = sends(machine.hook_done(effect.token, False, OSError("no port")))
    response = reply.function_environment_reload_response
    assert response.result.status == FAILURE
    assert "no port" in response.result.exception.message


@pytest.mark.parametrize(
    ("option", "environ", "on"),
    [
        (None, {}, False),
        (None, {"WORKERKIT_HTTP_STREAMING": "true"}, True),
        (None, {"WORKERKIT_HTTP_STREAMING": " TRUE "}, True),
        (None, {"WORKERKIT_HTTP_STREAMING": "1"}, True),
        (None, {"WORKERKIT_HTTP_STREAMING": "false"}, False),
        (None, {"WORKERKIT_HTTP_STREAMING": "maybe"}, False),
        (True, {}, True),
        (False, {"WORKERKIT_HTTP_STREAMING": "true"}, False),
    ],
)
def test_the_option_wins_over_the_setting(
    option: bool | None, environ: dict[str, str], on: bool
) -> None:
    assert wants_http_streaming(option, environ) is on
