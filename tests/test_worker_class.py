"""Tests for the class checks of workerkit.Worker and for WorkerOptions validation."""

import math
from typing import Any

import pytest
from conftest import arun
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import workerkit
from workerkit import Worker, WorkerOptions
from workerkit.worker import HOOKS, hook_misspelled

ALL_HOOKS = {
    "on_init",
    "on_functions_metadata",
    "on_function_load",
    "on_invocation",
    "on_cancel",
    "on_environment_reload",
    "on_warmup",
    "on_shutdown",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKERKIT_MAX_IN_FLIGHT", raising=False)
    monkeypatch.delenv("WORKERKIT_THREADS", raising=False)


def test_hook_set_is_the_documented_one() -> None:
    assert set(HOOKS) == ALL_HOOKS


# -- definition-time checks -----------------------------------------------------------------


def test_misspelled_hook_rejected_with_suggestion() -> None:
    with pytest.raises(TypeError) as info:

        class TypoWorker(Worker):
            def on_function_load(self, function: Any) -> None:
                return None

            def on_invokation(self, invocation: Any) -> None:
                return None

    message = str(info.value)
    assert "TypoWorker.on_invokation is not a workerkit hook" in message
    assert "did you mean on_invocation?" in message
    assert "leading underscore" in message  # how to keep a helper of that name


#: Near misses of a hook's name, each refused with the hook it resembles.
NEAR_MISSES = [
    # another form of the hook's word
    ("on_invoke", "on_invocation"),
    ("on_invoked", "on_invocation"),
    ("on_invocations", "on_invocation"),
    ("on_function_loaded", "on_function_load"),
    ("on_functions_load", "on_function_load"),
    ("on_cancelled", "on_cancel"),
    ("on_cancelling", "on_cancel"),
    ("on_cancellation", "on_cancel"),
    ("on_environment_reloaded", "on_environment_reload"),
    ("on_initialize", "on_init"),
    ("on_inits", "on_init"),
    # case and underscores
    ("onInvocation", "on_invocation"),
    ("OnInvocation", "on_invocation"),
    ("on_Invocation", "on_invocation"),
    ("oninvocation", "on_invocation"),
    ("onFunctionLoad", "on_function_load"),
    ("on_functionload", "on_function_load"),
    ("on_shut_down", "on_shutdown"),
    ("on_warm_up", "on_warmup"),
    ("ON_INIT", "on_init"),
    ("on_invocation_", "on_invocation"),
    # typos: one, or two in names of eight letters or more
    ("on_invokation", "on_invocation"),
    ("on_invocaton", "on_invocation"),
    ("on_function_metadata", "on_functions_metadata"),
    ("on_shutdwon", "on_shutdown"),
    ("on_canel", "on_cancel"),
    ("on_inti", "on_init"),
    ("on_int", "on_init"),
]

#: Helper names an author may use: not near misses of any hook.
HELPERS = [
    "on_message_parsed",
    "on_row",
    "on_invocation_done",
    "on_function_done",
    "on_init_done",
    "on_cancel_child",
    "on_load",
    "on_load_error",
    "on_input",
    "on_exit",
    "on_edit",
    "on_warm",
    "on_function",
    "on_metadata",
    "on_reload",
    "on_timer",
    "on_http",
    "on_stop",
    "onRow",
    "invoke",
    "invocation",
    "once",
    "online",
    "only_init",
    "handle_invocation",
    # a leading underscore keeps any name, also a near miss
    "_on_invoke",
    "_oninvocation",
    "_on_shut_down",
]


@pytest.mark.parametrize(("typo", "suggestion"), NEAR_MISSES)
def test_near_misses_are_refused_with_the_hook_they_resemble(typo: str, suggestion: str) -> None:
    def hook(self: Any, arg: Any) -> None:
        return None

    assert hook_misspelled(typo) == suggestion
    with pytest.raises(TypeError, match=rf"^Typo\.{typo} is .*did you mean {suggestion}\?"):
        type("Typo", (Worker,), {typo: hook})


@pytest.mark.parametrize("name", HELPERS)
def test_other_on_names_are_helpers_and_accepted(name: str) -> None:
    async def helper(self: Any, row: Any, extra: Any = None) -> str:
        return f"{name} {row}"

    def load(self: Any, function: Any) -> None:
        return None

    def invoke(self: Any, invocation: Any) -> None:
        return None

    assert hook_misspelled(name) is None
    cls = type(
        "Helpers", (Worker,), {name: helper, "on_function_load": load, "on_invocation": invoke}
    )
    worker = cls()
    assert arun(getattr(worker, name)(3)) == f"{name} 3"
    # A helper is not a hook: the session neither awaits nor calls it as one.
    assert name not in cls._async_hooks and name not in cls._overridden_hooks
    assert cls._async_hooks == frozenset()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), hook=st.sampled_from(sorted(ALL_HOOKS)))
def test_a_hook_name_in_any_case_and_with_any_underscores_is_refused(
    data: st.DataObject, hook: str
) -> None:
    letters = [data.draw(st.sampled_from([c.lower(), c.upper()])) for c in hook.replace("_", "")]
    name = letters[0] + "".join(
        data.draw(st.sampled_from(["", "_", "__"])) + c for c in letters[1:]
    )
    name += data.draw(st.sampled_from(["", "_"]))
    assume(name != hook)
    assert hook_misspelled(name) == hook


@settings(max_examples=300, deadline=None)
@given(
    name=st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,30}\Z").filter(
        lambda name: not name.lower().replace("_", "").startswith("on")
    )
)
def test_names_not_starting_with_on_are_never_refused(name: str) -> None:
    # "on" here ignores case and underscores: "o_n_init" is the hook's name all the same.
    assert hook_misspelled(name) is None
    type("Free", (Worker,), {name: lambda self, a, b, c: None})


def test_async_misspelled_hook_also_rejected() -> None:
    with pytest.raises(TypeError, match=r"on_invocations.*did you mean on_invocation\?"):

        class AsyncTypo(Worker):
            async def on_invocations(self, invocation: Any) -> None:
                return None


def test_missing_hook_error_names_the_on_methods_that_are_not_hooks() -> None:
    class Misnamed(Worker):
        def on_function_load(self, function: Any) -> None:
            return None

        def on_load(self, function: Any) -> None:  # an author's helper, or a wrong name?
            return None

    with pytest.raises(TypeError) as info:
        Misnamed()
    message = str(info.value)
    assert "Misnamed must implement on_invocation" in message
    assert "its on_load is not a hook name" in message


@pytest.mark.parametrize(
    "source",
    [
        "def on_invocation(self): pass",
        "def on_invocation(self, a, b): pass",
        "async def on_invocation(self, a, b, c): pass",
        "def on_function_load(self): pass",
        "def on_init(self, request, extra): pass",
        "async def on_cancel(self): pass",
        "def on_shutdown(self, a, b=None): pass",
    ],
)
def test_hook_with_wrong_arity_rejected_at_definition(source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    name = next(n for n in namespace if n.startswith("on_"))
    with pytest.raises(TypeError) as info:
        type("ArityWorker", (Worker,), {name: namespace[name]})
    message = str(info.value)
    assert f"ArityWorker.{name}" in message
    assert "exactly one argument" in message


def test_wrong_arity_rejected_even_if_class_is_never_instantiated() -> None:
    # The error happens at the class statement, not at construction.
    defined = False
    with pytest.raises(TypeError, match="exactly one argument"):

        class Never(Worker):
            def on_function_load(self, function: Any) -> None:
                return None

            def on_invocation(self) -> None:
                return None

        defined = True
    assert not defined


# -- construction-time checks ---------------------------------------------------------------


def test_missing_on_invocation_rejected_at_construction() -> None:
    class LoadOnly(Worker):
        def on_function_load(self, function: Any) -> None:
            return None

    with pytest.raises(TypeError) as info:
        LoadOnly()
    message = str(info.value)
    assert "LoadOnly" in message
    assert "on_invocation" in message
    assert "on_function_load" not in message


def test_missing_on_function_load_rejected_at_construction() -> None:
    class InvokeOnly(Worker):
        async def on_invocation(self, invocation: Any) -> None:
            return None

    with pytest.raises(TypeError) as info:
        InvokeOnly()
    message = str(info.value)
    assert "InvokeOnly" in message
    assert "on_function_load" in message
    assert "on_invocation" not in message


def test_missing_both_hooks_names_both() -> None:
    class Empty(Worker):
        pass

    with pytest.raises(TypeError) as info:
        Empty()
    message = str(info.value)
    assert "Empty" in message
    assert "on_function_load" in message and "on_invocation" in message


def test_base_class_itself_cannot_be_constructed() -> None:
    with pytest.raises(TypeError, match="must implement"):
        Worker()


# -- correct subclasses ---------------------------------------------------------------------


class MixedWorker(Worker):
    runtime_name = "mixed"
    runtime_version = "9.9"
    greeting = "hello"

    def helper(self, a: int, b: int, c: int) -> int:
        return a + b + c

    def on_function_load(self, function: Any) -> None:
        return None

    async def on_invocation(self, invocation: Any) -> str:
        return self.greeting

    async def on_cancel(self, invocation: Any) -> None:
        return None

    def on_init(self, request: Any) -> None:
        return None

    def on_shutdown(self, shutdown: Any) -> None:
        return None


def test_mixed_async_and_sync_worker_constructs() -> None:
    worker = MixedWorker()
    assert isinstance(worker, Worker)
    assert isinstance(worker.options, WorkerOptions)
    assert worker.options == WorkerOptions()
    assert worker.helper(1, 2, 3) == 6
    assert (worker.runtime_name, worker.runtime_version) == ("mixed", "9.9")


def test_async_hooks_are_exactly_the_async_ones() -> None:
    assert frozenset({"on_invocation", "on_cancel"}) == MixedWorker._async_hooks
    assert Worker._async_hooks == frozenset()


def test_async_hooks_follow_inheritance() -> None:
    class SyncInvoke(MixedWorker):
        def on_invocation(self, invocation: Any) -> str:
            return "sync"

        async def on_warmup(self, warmup: Any) -> None:
            return None

    assert frozenset({"on_cancel", "on_warmup"}) == SyncInvoke._async_hooks
    assert frozenset({"on_invocation", "on_cancel"}) == MixedWorker._async_hooks
    SyncInvoke()


def test_all_sync_worker_has_no_async_hooks() -> None:
    class Plain(Worker):
        def on_function_load(self, function: Any) -> None:
            return None

        def on_invocation(self, invocation: Any) -> None:
            return None

    assert Plain._async_hooks == frozenset()
    Plain()


def test_every_hook_may_be_overridden() -> None:
    async def ahook(self: Any, arg: Any) -> None:
        return None

    def shook(self: Any, arg: Any) -> None:
        return None

    async_names = {"on_invocation", "on_warmup", "on_functions_metadata"}
    attrs = {name: ahook if name in async_names else shook for name in ALL_HOOKS}
    cls = type("Full", (Worker,), attrs)
    assert cls._async_hooks == frozenset(async_names)
    assert isinstance(cls(), Worker)


def test_non_hook_members_are_fine() -> None:
    class Helpers(Worker):
        runtime_name = "custom"
        worker_version = "2.0"
        one_thing = 3
        only_prefix = "on"  # not "on_"

        def helper(self) -> None:
            return None

        def handle_invocation(self, a: Any, b: Any) -> None:
            return None

        @staticmethod
        def util(x: int) -> int:
            return x

        @classmethod
        def build(cls) -> "Helpers":
            return cls()

        @property
        def answer(self) -> int:
            return 42

        def on_function_load(self, function: Any) -> None:
            return None

        def on_invocation(self, invocation: Any) -> None:
            return None

    worker = Helpers.build()
    assert worker.answer == 42
    assert Helpers.util(5) == 5
    assert Helpers.runtime_name == "custom"
    assert Helpers._async_hooks == frozenset()


class ForgotSuper(Worker):
    def __init__(self) -> None:  # no super().__init__()
        self.templates: dict[str, str] = {}

    def on_function_load(self, function: Any) -> None:
        pass

    def on_invocation(self, invocation: Any) -> Any:
        return None


class ForgotSuperAndHooks(Worker):
    def __init__(self) -> None:
        pass


def _serve(worker: Worker) -> None:
    """Serve `worker` against a TestHost (the session checks it before connecting)."""
    from conftest import arun

    from workerkit.testing import TestHost

    async def scenario() -> None:
        async with TestHost() as host:
            await host.start_worker(worker, timeout=30)

    arun(scenario())


def test_forgetting_super_init_is_named_with_what_to_add() -> None:
    worker = ForgotSuper()
    with pytest.raises(TypeError) as info:
        _serve(worker)
    message = str(info.value)
    assert "ForgotSuper.__init__ does not call Worker.__init__" in message
    assert "super().__init__()" in message
    assert "AttributeError" not in message


def test_forgetting_super_init_does_not_skip_the_must_implement_check() -> None:
    with pytest.raises(TypeError, match="must implement on_function_load and on_invocation"):
        _serve(ForgotSuperAndHooks())


def test_forgetting_super_init_is_reported_by_main_before_connecting(
    capfd: pytest.CaptureFixture[str],
) -> None:
    argv = ["--host", "127.0.0.1", "--port", "1", "--workerId", "w", "--requestId", "r"]
    with pytest.raises(TypeError, match=r"add `super\(\).__init__\(\)`"):
        ForgotSuper.main(argv)


def test_options_of_the_wrong_type_are_refused() -> None:
    class Odd(ForgotSuper):
        def __init__(self) -> None:
            super().__init__()
            self.options = {"threads": 4}  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"must be a workerkit\.WorkerOptions"):
        _serve(Odd())


def test_constructor_takes_options() -> None:
    options = WorkerOptions(max_in_flight=4, threads=2, shutdown_grace=0.5, send_queue=8)
    assert MixedWorker(options=options).options is options


def test_worker_exported_from_package() -> None:
    assert workerkit.Worker is Worker
    assert workerkit.WorkerOptions is WorkerOptions


# -- WorkerOptions --------------------------------------------------------------------------


def test_worker_options_defaults() -> None:
    options = WorkerOptions()
    assert options.max_in_flight == 256
    assert options.threads == 32
    assert options.shutdown_grace == 5.0
    assert options.send_queue == 1024


@pytest.mark.parametrize("field", ["threads", "max_in_flight", "send_queue"])
@pytest.mark.parametrize("value", [0, -1, -1000, 2.5, 1.0, "4", None])
def test_worker_options_rejects_bad_counts(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"WorkerOptions.{field}"):
        WorkerOptions(**{field: value})


@pytest.mark.parametrize("field", ["threads", "max_in_flight", "send_queue"])
def test_worker_options_accepts_one(field: str) -> None:
    assert getattr(WorkerOptions(**{field: 1}), field) == 1


@pytest.mark.parametrize("value", [-0.001, -1, -5.0, math.nan])
def test_worker_options_rejects_negative_grace(value: float) -> None:
    with pytest.raises(ValueError, match="shutdown_grace"):
        WorkerOptions(shutdown_grace=value)


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 30])
def test_worker_options_accepts_non_negative_grace(value: float) -> None:
    assert WorkerOptions(shutdown_grace=value).shutdown_grace == value


def test_worker_options_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERKIT_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("WORKERKIT_THREADS", " 3 ")
    options = WorkerOptions()
    assert (options.max_in_flight, options.threads) == (7, 3)
    # Explicit values win over the environment.
    assert WorkerOptions(max_in_flight=9, threads=1).max_in_flight == 9


@pytest.mark.parametrize("text", ["", "0", "-1", "nan", "inf", "soon"])
def test_the_http_match_timeout_setting_must_be_seconds(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("WORKERKIT_HTTP_MATCH_TIMEOUT", text)
    if not text:
        assert WorkerOptions().http_match_timeout == 60.0
        return
    with pytest.raises(ValueError, match="WORKERKIT_HTTP_MATCH_TIMEOUT"):
        WorkerOptions()


def test_the_http_match_timeout_follows_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERKIT_HTTP_MATCH_TIMEOUT", " 2.5 ")
    assert WorkerOptions().http_match_timeout == 2.5
    assert WorkerOptions(http_match_timeout=9).http_match_timeout == 9


def test_worker_options_environment_read_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERKIT_THREADS", "5")
    assert WorkerOptions().threads == 5
    monkeypatch.setenv("WORKERKIT_THREADS", "6")
    assert WorkerOptions().threads == 6
    monkeypatch.setenv("WORKERKIT_THREADS", "")
    assert WorkerOptions().threads == 32


def test_worker_reads_environment_through_default_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKERKIT_MAX_IN_FLIGHT", "11")
    assert MixedWorker().options.max_in_flight == 11


@pytest.mark.parametrize("variable", ["WORKERKIT_MAX_IN_FLIGHT", "WORKERKIT_THREADS"])
@pytest.mark.parametrize("text", ["lots", "2.5", "1e3", "0x10"])
def test_worker_options_non_number_in_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=variable):
        WorkerOptions()


@pytest.mark.parametrize("variable", ["WORKERKIT_MAX_IN_FLIGHT", "WORKERKIT_THREADS"])
@pytest.mark.parametrize("text", ["0", "-3"])
def test_worker_options_too_small_in_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=variable):
        WorkerOptions()
