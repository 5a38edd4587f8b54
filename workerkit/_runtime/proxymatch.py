"""Which proxied HTTP request belongs to which invocation, free of I/O.

With HTTP streaming on, the host forwards each HTTP-trigger request to the worker's own HTTP
server with the header ``x-ms-invocation-id`` and also sends the `InvocationRequest` (with an
empty `RpcHttp`) over the stream. The two arrive in either order, possibly far apart, and
either may never arrive. `Matcher` pairs them by invocation id and says what each side gets;
it never waits, reads a clock or touches a socket: the runtime (`httpproxy.py`) tells it
what happened, with the time, and does what it answers. Tested without a socket
(tests/test_proxymatch.py).

The life of one invocation id::

    request ──> REQUEST_WAITS ──(its invocation)──> MATCHED ──(invocation ends)──> CLOSED
    invocation ─> INVOCATION_WAITS ──(its request)──┘
    REQUEST_WAITS ──(wait over: 504 / request closed)──> CLOSED (a late invocation fails)
    INVOCATION_WAITS ──(wait over / invocation ends)──> CLOSED (a late request is answered)

Rules:

- A request waits at most `wait` seconds for its invocation, counting only time in which
  the worker reads from the host: while its backlog is full it stops reading, and the
  invocation may sit unread in the stream (`pause`/`resume`). Then it is answered 504.
- An invocation waits at most `wait` seconds for its request (the host starts forwarding
  the request before it sends the invocation, so the request is normally first or close
  behind). Then it fails.
- Once matched there is no clock: the invocation's own limits (cancel, the host's function
  timeout) apply. A matched request whose connection closes cancels its invocation.
- An id that ended is remembered for a while (`CLOSED`), so that whatever comes late for it
  is answered at once instead of waiting out the clock: a request with its reason, an
  invocation with the reason its request gave up. A second request for an id already
  waiting or matched is refused (409). A new invocation may reuse the id of one that ended
  normally.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

__all__ = [
    "AnswerRequest",
    "CancelInvocation",
    "Effect",
    "FailInvocation",
    "Matched",
    "Matcher",
    "Refused",
    "Waiting",
]


class State(enum.Enum):
    REQUEST_WAITS = "request waits"
    INVOCATION_WAITS = "invocation waits"
    MATCHED = "matched"
    CLOSED = "closed"


# -- what one arrival gets ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Waiting:
    """The arrival waits for the other side (until `deadline`, unless paused)."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Matched:
    """Both sides are here: run the invocation with this request."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The arrival is answered now: a request with HTTP `status`, an invocation with a
    Failure; `reason` says why."""

    status: int
    reason: str


Arrival = Waiting | Matched | Refused


# -- what happens to a side that is already waiting --------------------------------------------
@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """Answer the waiting request of `invocation_id` with `status` now."""

    invocation_id: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class FailInvocation:
    """The waiting invocation `invocation_id` fails now with `reason`."""

    invocation_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CancelInvocation:
    """The matched invocation's request went away: cancel the invocation."""

    invocation_id: str
    reason: str


Effect = AnswerRequest | FailInvocation | CancelInvocation


@dataclass(slots=True)
class _Entry:
    state: State
    deadline: float = 0.0
    #: When the request arrived (for the time it waited while the worker read).
    since: float = 0.0
    #: CLOSED: what a late request gets (status, reason).
    late_request: tuple[int, str] = (409, "")
    #: CLOSED: why a late invocation fails; None: a new invocation may use the id.
    late_invocation: str | None = None
    closed_at: float = 0.0


class Matcher:
    """Pairs proxied requests with invocations by invocation id (module docstring).

    Every operation costs in proportion to the sides still *waiting* (a few, normally), not
    to the calls matched or remembered: ids waiting, matched and closed are kept apart."""

    def __init__(self, wait: float, *, remember: int = 10_000) -> None:
        """`wait`: seconds either side waits for the other; `remember`: how many ended ids
        are kept to answer late arrivals at once (for `4 * wait` seconds at most)."""
        if not wait > 0:
            raise ValueError(f"the wait must be > 0 seconds, not {wait!r}")
        self.wait = wait
        self.remember = remember
        self._waiting: dict[str, _Entry] = {}
        self._matched: set[str] = set()
        self._closed: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._paused_at: float | None = None

    def state(self, invocation_id: str) -> State | None:
        entry = self._entry(invocation_id)
        return entry.state if entry is not None else None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def __len__(self) -> int:
        """Ids waiting or matched (not those remembered as closed)."""
        return len(self._waiting) + len(self._matched)

    def _entry(self, invocation_id: str) -> _Entry | None:
        if invocation_id in self._matched:
            return _MATCHED
        return self._waiting.get(invocation_id) or self._closed.get(invocation_id)

    # -- arrivals ----------------------------------------------------------------------------
    def request_arrived(self, invocation_id: str, now: float) -> Arrival:
        """A proxied request for `invocation_id` arrived."""
        self._forget_old(now)
        entry = self._entry(invocation_id)
        if entry is None:
            deadline = now + self.wait
            self._waiting[invocation_id] = _Entry(State.REQUEST_WAITS, deadline, since=now)
            return Waiting(deadline)
        if entry.state is State.INVOCATION_WAITS:
            self._match(invocation_id)
            return Matched()
        if entry.state is State.CLOSED:
            status, reason = entry.late_request
            return Refused(status, reason)
        return Refused(409, f"a request for invocation {invocation_id} is already being served")

    def invocation_arrived(self, invocation_id: str, now: float) -> Arrival:
        """Proxied invocation `invocation_id` arrived (the ledger admitted it)."""
        self._forget_old(now)
        entry = self._entry(invocation_id)
        if entry is not None and entry.state is State.CLOSED and entry.late_invocation is None:
            del self._closed[invocation_id]  # the id of an invocation that ended: used again
            entry = None
        if entry is None:
            deadline = now + self.wait
            self._waiting[invocation_id] = _Entry(State.INVOCATION_WAITS, deadline)
            return Waiting(deadline)
        if entry.state is State.REQUEST_WAITS:
            self._match(invocation_id)
            return Matched()
        if entry.state is State.CLOSED:
            assert entry.late_invocation is not None
            return Refused(500, entry.late_invocation)
        return Refused(500, f"invocation {invocation_id} is already waiting or running")

    def _match(self, invocation_id: str) -> None:
        del self._waiting[invocation_id]
        self._matched.add(invocation_id)

    # -- departures --------------------------------------------------------------------------
    def request_gone(self, invocation_id: str, now: float) -> list[Effect]:
        """The request's connection closed before it was answered."""
        entry = self._entry(invocation_id)
        if entry is None:
            return []
        if entry.state is State.REQUEST_WAITS:
            self._close(
                invocation_id,
                now,
                late_request=(409, f"the request for invocation {invocation_id} was closed"),
                late_invocation="the host closed its HTTP request before the invocation arrived",
            )
        elif entry.state is State.MATCHED:
            return [CancelInvocation(invocation_id, "the HTTP client closed the connection")]
        return []

    def invocation_gone(self, invocation_id: str, now: float, reason: str) -> list[Effect]:
        """The invocation ended (answered, refused, cancelled, failed) for `reason`; what is
        still waiting for it is answered, and a request that comes later gets 500 at once.
        (A matched request is the runtime's to answer: it holds the pair.)"""
        entry = self._entry(invocation_id)
        effects: list[Effect] = []
        if entry is not None and entry.state is State.REQUEST_WAITS:
            effects.append(AnswerRequest(invocation_id, 500, reason))
        if entry is not None and entry.state is State.CLOSED:
            return effects
        late = (
            (409, f"invocation {invocation_id} was already answered")
            if entry is not None and entry.state is State.MATCHED
            else (500, reason)
        )
        self._close(invocation_id, now, late_request=late, late_invocation=None)
        return effects

    # -- time --------------------------------------------------------------------------------
    def expire(self, now: float) -> list[Effect]:
        """Answer what has waited out its deadline by `now`."""
        effects: list[Effect] = []
        for invocation_id, entry in list(self._waiting.items()):
            if entry.deadline > now:
                continue
            if entry.state is State.REQUEST_WAITS and self._paused_at is None:
                reason = (
                    f"no invocation {invocation_id} reached the worker within {self.wait:g} s"
                    " of its proxied HTTP request"
                )
                effects.append(AnswerRequest(invocation_id, 504, reason))
                self._close(
                    invocation_id,
                    now,
                    late_request=(504, reason),
                    late_invocation=(
                        f"its HTTP request waited {self.wait:g} s for the invocation and was"
                        " answered 504"
                    ),
                )
            elif entry.state is State.INVOCATION_WAITS:
                reason = (
                    f"the proxied HTTP request of this invocation did not reach the worker"
                    f" within {self.wait:g} s (the host forwards it to the worker's HttpUri"
                    " with header x-ms-invocation-id)"
                )
                effects.append(FailInvocation(invocation_id, reason))
                self._close(
                    invocation_id,
                    now,
                    late_request=(504, f"invocation {invocation_id} gave up waiting for it"),
                    late_invocation=None,
                )
        self._forget_old(now)
        return effects

    def next_deadline(self) -> float | None:
        """When `expire` next has something to do (None: nothing waits on a clock)."""
        deadlines = [
            entry.deadline
            for entry in self._waiting.values()
            if entry.state is State.INVOCATION_WAITS or self._paused_at is None
        ]
        return min(deadlines, default=None)

    def pause(self, now: float) -> None:
        """The worker stopped reading from the host: waiting requests' clocks stop."""
        if self._paused_at is None:
            self._paused_at = now

    def resume(self, now: float) -> None:
        """The worker reads again: each waiting request gets the paused time back."""
        paused_at, self._paused_at = self._paused_at, None
        if paused_at is None:
            return
        for entry in self._waiting.values():
            if entry.state is State.REQUEST_WAITS:
                entry.deadline += now - max(paused_at, entry.since)

    # -- plumbing ----------------------------------------------------------------------------
    def _close(
        self,
        invocation_id: str,
        now: float,
        *,
        late_request: tuple[int, str],
        late_invocation: str | None,
    ) -> None:
        self._waiting.pop(invocation_id, None)
        self._matched.discard(invocation_id)
        self._closed.pop(invocation_id, None)
        self._closed[invocation_id] = _Entry(
            State.CLOSED,
            late_request=late_request,
            late_invocation=late_invocation,
            closed_at=now,
        )
        while len(self._closed) > self.remember:
            self._closed.popitem(last=False)

    def _forget_old(self, now: float) -> None:
        keep = 4 * self.wait
        while self._closed:
            oldest = next(iter(self._closed.values()))
            if now - oldest.closed_at < keep:
                break
            self._closed.popitem(last=False)


_MATCHED = _Entry(State.MATCHED)
