"""Tests for workerkit.errors: any exception (or text) becomes a StatusResult, never a crash."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit import errors
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.errors import (
    FunctionLoadError,
    InvocationCancelled,
    InvocationError,
    MessageTooLarge,
    WorkerError,
    failure,
    rpc_exception,
    success,
)

PROPERTY = settings(max_examples=200, deadline=None)
FAILURE = pb.StatusResultStatus.Failure
SUCCESS = pb.StatusResultStatus.Success


def raise_it(exc: BaseException) -> BaseException:
    """Raise `exc` from a named function and return it with its traceback attached."""

    def deep_function_that_fails() -> None:
        raise exc

    try:
        deep_function_that_fails()
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")


def wire_status(result: pb.StatusResult) -> pb.StatusResult:
    return pb.StatusResult.parse(bytes(result))


class CustomError(Exception):
    pass


class CustomBase(BaseException):
    pass


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


class BadStrBase(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


class NonStrStr(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class HugeStr(Exception):
    def __str__(self) -> str:
        return "x" * 5_000_000


# -- status and the result object -----------------------------------------------------------


def test_status_values_are_the_hosts() -> None:
    assert int(FAILURE) == 0
    assert int(SUCCESS) == 1


def test_failure_has_status_failure_and_an_exception() -> None:
    result = failure(raise_it(ValueError("kaput")))
    assert isinstance(result, pb.StatusResult)
    assert result.status == FAILURE
    assert result.exception is not None
    assert result.exception.message


def test_failure_result_object_present_on_the_wire() -> None:
    # Status 0 is the proto default: the result must still be there, carrying the exception.
    response = pb.InvocationResponse(invocation_id="inv-1", result=failure(ValueError("kaput")))
    parsed = pb.InvocationResponse.parse(bytes(response))
    assert parsed.result is not None
    assert parsed.result.status == FAILURE
    assert parsed.result.exception is not None
    assert parsed.result.exception.message == "ValueError: kaput"


def test_message_contains_type_name_and_text() -> None:
    exc = rpc_exception(raise_it(KeyError("missing-key")))
    assert "KeyError" in exc.message
    assert "missing-key" in exc.message
    assert exc.type == "KeyError"


def test_custom_exception_type_is_qualified() -> None:
    exc = rpc_exception(raise_it(CustomError("custom text")))
    assert exc.message == "CustomError: custom text"
    assert exc.type == f"{CustomError.__module__}.CustomError"


def test_empty_text_gives_type_name_only() -> None:
    assert rpc_exception(ValueError()).message == "ValueError"


def test_stack_trace_names_the_raising_function() -> None:
    exc = rpc_exception(raise_it(ValueError("kaput")))
    assert "Traceback" in exc.stack_trace
    assert "deep_function_that_fails" in exc.stack_trace
    assert "kaput" in exc.stack_trace


def test_stack_trace_includes_the_cause_chain() -> None:
    def outer() -> None:
        try:
            raise_inner()
        except KeyError as inner:
            raise RuntimeError("outer failure") from inner

    def raise_inner() -> None:
        raise KeyError("inner failure")

    try:
        outer()
    except RuntimeError as exc:
        trace = rpc_exception(exc).stack_trace
    assert "raise_inner" in trace and "inner failure" in trace
    assert "outer" in trace and "outer failure" in trace


@pytest.mark.parametrize("user", [True, False])
def test_is_user_exception_and_source(user: bool) -> None:
    result = failure(raise_it(ValueError("x")), user=user, source="my_function")
    assert result.exception.is_user_exception is user
    assert result.exception.source == "my_function"
    assert wire_status(result).exception.is_user_exception is user


def test_user_flag_defaults_to_false() -> None:
    assert failure(ValueError("x")).exception.is_user_exception is False


# -- WorkerError subclasses: the author's words, no stack -----------------------------------


@pytest.mark.parametrize("kind", [FunctionLoadError, InvocationError, InvocationCancelled])
def test_worker_errors_carry_message_only(kind: type[WorkerError]) -> None:
    exc = rpc_exception(raise_it(kind("the input was not a number")), user=True)
    assert exc.message == "the input was not a number"
    assert exc.stack_trace == ""
    assert exc.is_user_exception is True
    assert kind.__name__ in exc.type


def test_message_too_large_is_a_worker_error() -> None:
    err = MessageTooLarge(200, 100, what="response")
    assert isinstance(err, WorkerError)
    assert (err.size, err.limit) == (200, 100)
    exc = rpc_exception(err)
    assert exc.message.startswith("response is 200 bytes")
    assert exc.stack_trace == ""


def test_subclass_of_worker_error_subclass_also_has_no_stack() -> None:
    class MyLoadError(FunctionLoadError):
        pass

    exc = rpc_exception(raise_it(MyLoadError("no such module 'foo'")))
    assert exc.message == "no such module 'foo'"
    assert exc.stack_trace == ""


def test_worker_error_without_text_falls_back_to_type_name() -> None:
    assert rpc_exception(InvocationError()).message == "InvocationError"


# -- never raises ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: BadStr("ignored"),
        lambda: raise_it(BadStr("ignored")),
        lambda: BadStrBase(),
        lambda: raise_it(BadStrBase()),
        lambda: NonStrStr(),
        lambda: raise_it(NonStrStr()),
    ],
    ids=[
        "bad-str",
        "bad-str-raised",
        "str-raises-base",
        "str-raises-base-raised",
        "int-str",
        "int-str-raised",
    ],
)
def test_failing_str_never_raises(make) -> None:  # type: ignore[no-untyped-def]
    exc = make()
    result = failure(exc, user=True)
    assert result.status == FAILURE
    assert type(exc).__name__ in result.exception.message
    assert wire_status(result).status == FAILURE


def test_huge_str_never_raises() -> None:
    result = failure(raise_it(HugeStr()))
    assert result.status == FAILURE
    assert result.exception.message.startswith("HugeStr: xxx")
    assert "deep_function_that_fails" in result.exception.stack_trace


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), SystemExit(), KeyboardInterrupt(), CustomBase("custom base"), GeneratorExit()],
    ids=["system-exit-3", "system-exit", "keyboard-interrupt", "custom-base", "generator-exit"],
)
@pytest.mark.parametrize("raised", [False, True])
def test_base_exceptions_never_raise(exc: BaseException, raised: bool) -> None:
    if raised:
        exc = raise_it(exc)
    result = failure(exc, user=True)
    assert result.status == FAILURE
    assert type(exc).__name__ in result.exception.message
    assert result.exception.type.endswith(type(exc).__name__)
    if raised:
        assert "deep_function_that_fails" in result.exception.stack_trace
    assert wire_status(result).exception.message == result.exception.message


def test_exception_group_and_notes() -> None:
    err = ValueError("first")
    err.add_note("a helpful note")
    group = raise_it(ExceptionGroup("several", [err, TypeError("second")]))
    exc = rpc_exception(group)
    assert "ExceptionGroup" in exc.message
    assert "first" in exc.stack_trace and "second" in exc.stack_trace
    assert "a helpful note" in exc.stack_trace


def test_self_referencing_cause_does_not_loop() -> None:
    err = ValueError("loop")
    err.__context__ = err
    err2 = RuntimeError("b")
    err2.__cause__ = err
    err.__cause__ = err2
    result = failure(err)
    assert result.status == FAILURE
    assert "loop" in result.exception.message


text_without_surrogates = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


@PROPERTY
@given(text=text_without_surrogates, user=st.booleans())
def test_failure_message_property(text: str, user: bool) -> None:
    result = failure(ValueError(text), user=user)
    expected = f"ValueError: {text}" if text else "ValueError"
    assert result.exception.message == expected
    parsed = wire_status(result)
    assert parsed.status == FAILURE
    assert parsed.exception.message == expected
    assert parsed.exception.is_user_exception is user


# -- success and plain text -----------------------------------------------------------------


def test_success_status_and_wire_round_trip() -> None:
    result = success()
    assert result.status == SUCCESS
    data = bytes(result)
    assert data  # status 1 is not the default, so it is on the wire
    parsed = pb.StatusResult.parse(data)
    assert parsed.status == SUCCESS
    assert int(parsed.status) == 1


def test_success_is_a_fresh_object_each_time() -> None:
    assert success() is not success()


def test_cancelled_status() -> None:
    assert wire_status(errors.cancelled()).status == pb.StatusResultStatus.Cancelled


def test_failure_with_plain_string() -> None:
    result = failure("function 'f' is not loaded", user=False, source="workerkit")
    assert result.status == FAILURE
    assert result.exception.message == "function 'f' is not loaded"
    assert result.exception.stack_trace == ""
    assert result.exception.type == ""
    assert result.exception.source == "workerkit"
    parsed = wire_status(result)
    assert parsed.status == FAILURE
    assert parsed.exception.message == "function 'f' is not loaded"


def test_failure_with_plain_string_user_flag() -> None:
    assert failure("bad", user=True).exception.is_user_exception is True


def test_public_names_are_the_exceptions() -> None:
    import workerkit

    assert sorted(errors.__all__) == [
        "FunctionLoadError",
        "InvocationCancelled",
        "InvocationError",
        "MessageTooLarge",
        "WorkerError",
    ]
    assert all(getattr(workerkit, name) is getattr(errors, name) for name in errors.__all__)
    # The StatusResult helpers stay importable for workerkit's runtime.
    assert callable(errors.failure) and callable(errors.error_details) and errors.SUCCESS == 1
