"""The session's invocation rules (`workerkit._runtime.protocol.Ledger`), with no socket: every
admitted invocation is answered exactly once, whatever the order of cancels, overdue timers,
ends and shutdown."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit._runtime.protocol import Entry, Ledger


def test_refusals_name_their_reason() -> None:
    ledger = Ledger(backlog=10)
    assert ledger.admit(Entry("a", "r1")) is None
    assert ledger.admit(Entry("a", "r2")) == "invocation id a is already running on this worker"
    assert ledger.admit(Entry("", "r3")) == "the InvocationRequest has no invocation_id"
    ledger.shutting_down = True
    assert ledger.admit(Entry("b", "r4")) == (
        "the worker is shutting down and takes no new invocations"
    )
    assert [e.invocation_id for e in ledger] == ["a"]


def test_an_id_may_be_used_again_once_released() -> None:
    ledger = Ledger(backlog=10)
    first = Entry("a", "r1")
    assert ledger.admit(first) is None
    ledger.release(first)
    assert ledger.get("a") is None
    second = Entry("a", "r2")
    assert ledger.admit(second) is None
    ledger.release(first)  # a late release of the old entry leaves the new one open
    assert ledger.get("a") is second


def test_the_answer_is_claimed_once_and_a_cancel_starts_its_grace_once() -> None:
    ledger = Ledger(backlog=10)
    entry = Entry("a", "r1")
    ledger.admit(entry)
    assert ledger.request_cancel(entry) is True
    assert ledger.request_cancel(entry) is False  # a second cancel: no second timer
    assert ledger.owing() == [entry]
    assert ledger.claim_answer(entry) is True  # answered Cancelled when overdue
    assert ledger.owing() == []
    assert ledger.claim_answer(entry) is False  # its late result is dropped


def test_reading_pauses_at_the_backlog_and_resumes_below_it() -> None:
    ledger = Ledger(backlog=2)
    assert ledger.task_started() is False
    assert ledger.task_started() is True  # two tasks: stop reading
    assert ledger.task_ended() is True  # one: read again
    assert ledger.task_ended() is True


# Events: (kind, invocation number). The model: a request is admitted or refused; an admitted
# invocation's hook ends at most once; an overdue timer fires only after a cancel.
KINDS = st.sampled_from(["request", "cancel", "overdue", "end", "shutdown"])
EVENTS = st.lists(st.tuples(KINDS, st.integers(0, 4)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_every_request_gets_exactly_one_response(events: list[tuple[str, int]]) -> None:
    ledger = Ledger(backlog=3)
    responses: dict[str, int] = {}  # request id -> responses sent for it
    running: dict[int, Entry] = {}  # invocation number -> entry whose hook has not ended
    requests = 0
    for kind, number in events:
        if kind == "request":
            requests += 1
            entry = Entry(f"inv-{number}", f"req-{requests}")
            responses[entry.request_id] = 0
            if ledger.admit(entry) is not None:
                responses[entry.request_id] += 1  # the refusal
            else:
                running[number] = entry
                ledger.task_started()
        elif kind == "cancel":
            entry = ledger.get(f"inv-{number}")
            if entry is not None:
                ledger.request_cancel(entry)
        elif kind == "overdue":
            entry = running.get(number)
            if entry is not None and entry.cancel_requested and ledger.claim_answer(entry):
                responses[entry.request_id] += 1  # answered Cancelled, the hook runs on
        elif kind == "end":
            entry = running.pop(number, None)
            if entry is not None:
                ledger.release(entry)
                if ledger.claim_answer(entry):
                    responses[entry.request_id] += 1
                ledger.task_ended()
        else:
            ledger.shutting_down = True
        assert all(count <= 1 for count in responses.values())
    for entry in list(running.values()):  # every hook ends eventually
        ledger.release(entry)
        if ledger.claim_answer(entry):
            responses[entry.request_id] += 1
        ledger.task_ended()
    assert all(count == 1 for count in responses.values()), responses
    assert len(ledger) == 0 and ledger.owing() == []


# -- replies owed to frames that could not be read (`replies.answer_unreadable`) -----------------

OWED = {
    # content member: the reply member it is owed (None: no reply)
    "invocation_request": "invocation_response",
    "function_load_request": "function_load_response",
    "worker_init_request": "worker_init_response",
    "functions_metadata_request": "function_metadata_response",
    "function_load_request_collection": "function_load_response_collection",
    "function_environment_reload_request": "function_environment_reload_response",
    "worker_warmup_request": "worker_warmup_response",
    "worker_status_request": "worker_status_response",
    "close_shared_memory_resources_request": "close_shared_memory_resources_response",
    "invocation_cancel": None,
    "worker_terminate": None,
}


def test_every_unreadable_request_is_owed_its_reply_kind() -> None:
    from workerkit._runtime.replies import answer_unreadable
    from workerkit._runtime.transport import Unreadable
    from workerkit._wire import schema

    for member, owed in OWED.items():
        number = getattr(schema, f"STREAMING_MESSAGE_{member.upper()}")
        frame = Unreadable("truncated", "r1", invocation_id="i1", content=number, function_id="f")
        reason, reply = answer_unreadable(frame)
        assert "could not be read: truncated" in reason, member
        assert (None if reply is None else next(iter(reply))) == owed, member
        result = None if reply is None else getattr(next(iter(reply.values())), "result", None)
        if result is not None:  # a Failure that says why
            assert result.exception.message == reason, member
    # No id, no one to answer; an unknown kind is owed nothing.
    no_id = Unreadable("bad", "r2", content=schema.STREAMING_MESSAGE_INVOCATION_REQUEST)
    assert answer_unreadable(no_id)[1] is None
    assert answer_unreadable(Unreadable("bad", "r3", content=999))[1] is None


# -- which function an invocation runs (`Catalog`) -----------------------------------------------


def test_the_catalog_resolves_a_function_or_says_why_there_is_none() -> None:
    from workerkit import FunctionInfo
    from workerkit._runtime.protocol import Catalog

    catalog = Catalog()
    hello = FunctionInfo(function_id="f1", name="hello")
    assert catalog.resolve("f1") == "no function with id 'f1' is loaded on this worker"
    catalog.failed("f1", "SyntaxError: bad")
    assert catalog.resolve("f1") == "function f1 failed to load: SyntaxError: bad"
    catalog.loaded(hello)  # a reload that works replaces the failure
    assert catalog.resolve("f1") is hello
    catalog.failed("f1", "ImportError: gone")  # and one that fails replaces the function
    assert catalog.resolve("f1") == "function f1 failed to load: ImportError: gone"
