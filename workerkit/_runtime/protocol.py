"""The rules behind "every InvocationRequest gets exactly one response", free of I/O.

`Ledger` knows which invocations are open, which were asked to cancel and which have been
answered; it decides whether a request is refused, whether a response may still be sent,
and when the worker must stop reading from the host. It never sends, waits or runs
anything: the session (`session.py`) calls it as messages arrive and tasks end, and does
what it says. That keeps the rules testable without a socket (tests/test_protocol.py).

The life of an invocation, as the ledger sees it::

    admit ──> open ──(the hook ends)──> released ──> claim_answer: True once, then False
                │
                └─ request_cancel ──(still running after the grace)──> claim_answer: True
                                                                       (its late result: False)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._types import FunctionInfo

__all__ = ["Catalog", "Entry", "Ledger"]


@dataclass(eq=False)
class Entry:
    """One invocation between its request and its response."""

    invocation_id: str
    request_id: str
    #: The host asked to cancel it (or the worker is stopping).
    cancel_requested: bool = False
    #: Its one response has been sent, or is being sent: nothing else may be sent for it.
    answered: bool = False


class Ledger:
    """The open invocations of one session, and what each is still owed."""

    def __init__(self, backlog: int) -> None:
        #: Invocations running or queued (by task) before the worker stops reading.
        self.backlog = backlog
        #: No new invocations: the worker drains and stops.
        self.shutting_down = False
        self._open: dict[str, Entry] = {}
        self._tasks = 0  # admitted and not yet done sending: what the backlog counts

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._open.values()))

    def get(self, invocation_id: str) -> Entry | None:
        return self._open.get(invocation_id)

    def admit(self, entry: Entry) -> str | None:
        """Open `entry`, or say why it is refused (the refusal is its one response)."""
        if self.shutting_down:
            return "the worker is shutting down and takes no new invocations"
        if not entry.invocation_id:
            return "the InvocationRequest has no invocation_id"
        if entry.invocation_id in self._open:
            return f"invocation id {entry.invocation_id} is already running on this worker"
        self._open[entry.invocation_id] = entry
        return None

    def request_cancel(self, entry: Entry) -> bool:
        """Mark `entry` cancelled; True the first time (when the grace period starts)."""
        first = not entry.cancel_requested
        entry.cancel_requested = True
        return first

    def release(self, entry: Entry) -> None:
        """The hook is done with `entry`: it can no longer be cancelled or found by id."""
        if self._open.get(entry.invocation_id) is entry:
            del self._open[entry.invocation_id]

    def claim_answer(self, entry: Entry) -> bool:
        """Whether the caller may send `entry`'s response now: True exactly once."""
        if entry.answered:
            return False
        entry.answered = True
        return True

    def owing(self) -> list[Entry]:
        """Open invocations not answered yet (those answered Cancelled may still run)."""
        return [entry for entry in self._open.values() if not entry.answered]

    # -- reading from the host --------------------------------------------------------------
    def task_started(self) -> bool:
        """Count an admitted invocation's task; True when reading must pause."""
        self._tasks += 1
        return self._tasks >= self.backlog

    def task_ended(self) -> bool:
        """Its response is on the wire (or dropped); True when reading may go on."""
        self._tasks -= 1
        return self._tasks < self.backlog


class Catalog:
    """The functions of one session: those loaded, and why the others failed to load.

    A later load of the same id replaces what an earlier one left (the host reloads
    functions after an environment reload); an invocation resolves its function here."""

    def __init__(self) -> None:
        self._loaded: dict[str, FunctionInfo] = {}
        self._errors: dict[str, str] = {}

    def loaded(self, info: FunctionInfo) -> None:
        self._loaded[info.function_id] = info
        self._errors.pop(info.function_id, None)

    def failed(self, function_id: str, message: str) -> None:
        """Its load failed with `message`: its invocations fail with it."""
        self._errors[function_id] = message
        self._loaded.pop(function_id, None)

    def resolve(self, function_id: str) -> FunctionInfo | str:
        """The function to invoke, or why there is none (the invocation's Failure)."""
        function = self._loaded.get(function_id)
        if function is not None:
            return function
        error = self._errors.get(function_id)
        if error is not None:
            return f"function {function_id} failed to load: {error}"
        return f"no function with id {function_id!r} is loaded on this worker"
