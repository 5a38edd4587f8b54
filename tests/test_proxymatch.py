"""Pairing proxied HTTP requests with invocations (`workerkit._runtime.proxymatch.Matcher`),
with no socket and no clock: either order, late arrivals, the two bounded waits, the pause
while the worker stops reading, and a hypothesis model of any order of events."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit._runtime.proxymatch import (
    AnswerRequest,
    CancelInvocation,
    FailInvocation,
    Matched,
    Matcher,
    Refused,
    State,
    Waiting,
)


def test_request_first_then_invocation_matches() -> None:
    matcher = Matcher(10)
    assert matcher.request_arrived("a", 0.0) == Waiting(10.0)
    assert matcher.invocation_arrived("a", 3.0) == Matched()
    assert matcher.state("a") is State.MATCHED
    assert matcher.next_deadline() is None  # matched: no clock
    assert matcher.expire(100.0) == []


def test_invocation_first_then_request_matches() -> None:
    matcher = Matcher(10)
    assert matcher.invocation_arrived("a", 0.0) == Waiting(10.0)
    assert matcher.request_arrived("a", 9.0) == Matched()
    assert matcher.expire(100.0) == []


def test_a_request_without_invocation_is_answered_504_and_a_late_invocation_fails() -> None:
    matcher = Matcher(10)
    matcher.request_arrived("a", 0.0)
    assert matcher.expire(9.99) == []
    (effect,) = matcher.expire(10.0)
    assert isinstance(effect, AnswerRequest) and effect.status == 504
    assert "no invocation a reached the worker within 10 s" in effect.reason
    late = matcher.invocation_arrived("a", 11.0)
    assert isinstance(late, Refused)
    assert late.reason == "its HTTP request waited 10 s for the invocation and was answered 504"


def test_an_invocation_without_request_fails_and_a_late_request_gets_504_at_once() -> None:
    matcher = Matcher(5)
    matcher.invocation_arrived("a", 0.0)
    assert matcher.next_deadline() == 5.0
    (effect,) = matcher.expire(5.0)
    assert isinstance(effect, FailInvocation)
    assert "did not reach the worker within 5 s" in effect.reason
    assert "x-ms-invocation-id" in effect.reason
    late = matcher.request_arrived("a", 6.0)
    assert isinstance(late, Refused) and late.status == 504


def test_a_second_request_for_the_same_invocation_is_refused() -> None:
    matcher = Matcher(10)
    matcher.request_arrived("a", 0.0)
    assert matcher.request_arrived("a", 1.0) == Refused(
        409, "a request for invocation a is already being served"
    )
    matcher.invocation_arrived("a", 2.0)
    assert isinstance(matcher.request_arrived("a", 3.0), Refused)
    matcher.invocation_gone("a", 4.0, "answered")
    again = matcher.request_arrived("a", 5.0)
    assert again == Refused(409, "invocation a was already answered")


def test_an_invocation_that_ends_unmatched_answers_its_late_request_at_once() -> None:
    matcher = Matcher(10)
    matcher.invocation_arrived("a", 0.0)
    assert matcher.invocation_gone("a", 1.0, "cancelled by the host") == []
    assert matcher.request_arrived("a", 2.0) == Refused(500, "cancelled by the host")


def test_an_invocation_refused_before_registering_answers_a_waiting_request() -> None:
    matcher = Matcher(10)
    matcher.request_arrived("a", 0.0)
    effects = matcher.invocation_gone("a", 1.0, "the worker is shutting down")
    assert effects == [AnswerRequest("a", 500, "the worker is shutting down")]
    assert matcher.expire(100.0) == []


def test_a_closed_request_fails_its_late_invocation_and_a_matched_one_is_cancelled() -> None:
    matcher = Matcher(10)
    matcher.request_arrived("a", 0.0)
    assert matcher.request_gone("a", 1.0) == []
    late = matcher.invocation_arrived("a", 2.0)
    assert isinstance(late, Refused) and "closed its HTTP request" in late.reason

    matcher.request_arrived("b", 0.0)
    matcher.invocation_arrived("b", 0.5)
    assert matcher.request_gone("b", 1.0) == [
        CancelInvocation("b", "the HTTP client closed the connection")
    ]


def test_an_id_that_ended_normally_may_be_used_again() -> None:
    matcher = Matcher(10)
    matcher.invocation_arrived("a", 0.0)
    matcher.request_arrived("a", 0.1)
    matcher.invocation_gone("a", 1.0, "done")
    assert matcher.invocation_arrived("a", 2.0) == Waiting(12.0)
    assert matcher.request_arrived("a", 3.0) == Matched()


def test_requests_do_not_time_out_while_the_worker_is_not_reading() -> None:
    matcher = Matcher(10)
    matcher.request_arrived("a", 0.0)
    matcher.pause(4.0)  # 4 s waited while reading
    matcher.request_arrived("b", 6.0)  # arrives during the pause: has waited 0 s so far
    matcher.invocation_arrived("c", 6.0)  # invocations keep their clock
    assert matcher.next_deadline() == 16.0
    effects = matcher.expire(100.0)
    assert effects == [FailInvocation("c", effects[0].reason)]  # only the invocation
    matcher.resume(104.0)
    assert matcher.next_deadline() == 110.0  # a: 6 s left
    assert [e.invocation_id for e in matcher.expire(110.0)] == ["a"]
    assert matcher.next_deadline() == 114.0  # b: all 10 s, counted from the resume
    assert [e.invocation_id for e in matcher.expire(114.0)] == ["b"]


def test_ended_ids_are_remembered_for_a_bounded_count_and_time() -> None:
    matcher = Matcher(1, remember=3)
    for number in range(5):
        matcher.invocation_arrived(str(number), 0.0)
        matcher.invocation_gone(str(number), 0.0, "cancelled")
    assert len(matcher._closed) == 3
    assert isinstance(matcher.request_arrived("4", 0.1), Refused)
    assert isinstance(matcher.request_arrived("0", 0.1), Waiting)  # forgotten: a new wait
    matcher.invocation_gone("0", 0.2, "x")
    assert isinstance(matcher.request_arrived("3", 10.0), Waiting)  # older than 4 * wait


def test_a_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Matcher(0)


# -- any order of events --------------------------------------------------------------------
@dataclass
class Side:
    """One arrival (a request or an invocation) and every answer it got."""

    kind: str
    invocation_id: str
    arrived: float
    answers: list[str] = field(default_factory=list)
    waited_reading: float = 0.0  # time it waited while the worker read (requests)
    gone: bool = False


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["request", "invocation", "request_gone", "invocation_gone",
                                   "refused"]), st.integers(0, 2)),
        st.tuples(st.just("tick"), st.floats(0.0, 6.0)),
        st.tuples(st.sampled_from(["pause", "resume"]), st.just(0)),
    ),
    min_size=5,
    max_size=80,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(EVENTS)
def test_every_request_and_invocation_gets_exactly_one_answer(events: list[tuple]) -> None:
    wait = 10.0
    matcher = Matcher(wait)
    now = 0.0
    reading = True
    sides: list[Side] = []
    # What is currently waiting or matched, per id (at most one of each kind).
    live: dict[tuple[str, str], Side] = {}

    def answer(side: Side, what: str) -> None:
        side.answers.append(what)
        if live.get((side.kind, side.invocation_id)) is side and what != "matched":
            del live[(side.kind, side.invocation_id)]

    def apply(effects: list) -> None:
        for effect in effects:
            if isinstance(effect, AnswerRequest):
                side = live[("request", effect.invocation_id)]
                assert not side.answers, "a request answered twice"
                if effect.status == 504:
                    assert side.waited_reading >= wait - 1e-9, "504 before the wait was over"
                answer(side, f"answered {effect.status}")
            elif isinstance(effect, FailInvocation):
                side = live[("invocation", effect.invocation_id)]
                assert not side.answers, "an invocation failed twice"
                assert now - side.arrived >= wait - 1e-9, "failed before the wait was over"
                answer(side, "failed")
            elif isinstance(effect, CancelInvocation):
                side = live[("invocation", effect.invocation_id)]
                assert side.answers == ["matched"], "cancelled without being matched"
                side.answers.append("cancel")

    for kind, value in events:
        if kind == "tick":
            step = float(value)
            for side in live.values():
                if side.kind == "request" and reading and not side.answers:
                    side.waited_reading += step
            now += step
            apply(matcher.expire(now))
            continue
        if kind == "pause":
            reading = False
            matcher.pause(now)
            continue
        if kind == "resume":
            reading = True
            matcher.resume(now)
            continue
        invocation_id = str(value)
        if kind in ("request", "invocation"):
            if kind == "invocation" and ("invocation", invocation_id) in live:
                continue  # the ledger refuses a duplicate id before the matcher sees it
            side = Side(kind, invocation_id, now)
            sides.append(side)
            outcome = (
                matcher.request_arrived(invocation_id, now)
                if kind == "request"
                else matcher.invocation_arrived(invocation_id, now)
            )
            if isinstance(outcome, Refused):
                side.answers.append(f"refused {outcome.status}")
                continue
            if ("request" if kind == "invocation" else "invocation", invocation_id) in live:
                other = live[("request" if kind == "invocation" else "invocation", invocation_id)]
                assert isinstance(outcome, Matched), (kind, invocation_id, outcome)
                assert not other.answers, "matched twice"
                other.answers.append("matched")
                side.answers.append("matched")
            else:
                assert isinstance(outcome, Waiting)
            live[(kind, invocation_id)] = side
        elif kind == "refused":  # the ledger refused an invocation: it never registered
            if ("invocation", invocation_id) in live:
                continue
            apply(matcher.invocation_gone(invocation_id, now, "refused"))
        elif kind == "request_gone":
            side = live.get(("request", invocation_id))
            if side is None:
                continue
            apply(matcher.request_gone(invocation_id, now))
            del live[("request", invocation_id)]
            side.gone = True
        else:  # invocation_gone: it ended (answered, cancelled, failed)
            side = live.get(("invocation", invocation_id))
            if side is None:
                continue
            del live[("invocation", invocation_id)]
            side.gone = True
            apply(matcher.invocation_gone(invocation_id, now, "ended"))
            request = live.get(("request", invocation_id))
            if request is not None and request.answers == ["matched"]:
                del live[("request", invocation_id)]  # the runtime answers a matched one

    # Every side got at most one answer of its own (a matched invocation may also be
    # cancelled once, when its request goes away).
    for side in sides:
        own = [a for a in side.answers if a != "cancel"]
        assert len(own) <= 1, side
    # With the worker reading, nothing waits beyond the bound: everything is answered.
    matcher.resume(now)
    now += wait + 1
    for side in live.values():
        if side.kind == "request" and not side.answers:
            side.waited_reading += wait + 1
    apply(matcher.expire(now))
    unanswered = [s for s in live.values() if not s.answers]
    assert unanswered == []
    assert matcher.next_deadline() is None
