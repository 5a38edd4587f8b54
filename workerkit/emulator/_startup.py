"""A worker's start-up on the console: its output shown once, and what to say when it dies
before opening its stream.

The host restarts a worker that fails to start (`_process`), so a worker that cannot start
at all (a missing module, a syntax error) fails the same way on every attempt. `StartupOutput`
shows each line of a worker's output as it comes, except that while the worker's stream is not
open yet, lines that repeat the previous failed start's output, line for line, are held back:
if the whole output repeats, the console says "same error as before" instead of printing the
same traceback again; the first line that differs, or the stream opening, shows what was held.
`exited_before_stream` is the message for a worker that exited before its stream opened: the
executable that ran it and the setting that chooses another.
"""

from __future__ import annotations

import collections
import os
import re
import sys
from collections.abc import Sequence
from typing import Final

from ._console import Console

__all__ = ["StartupOutput", "exited_before_stream"]

#: Start-up lines recorded at most; a longer start-up output is shown as it comes, never held.
_MAX_RECORDED: Final = 1000
_STDERR_TAIL: Final = 3
#: Python's words for "this interpreter cannot import workerkit" (not a missing submodule).
_NO_WORKERKIT: Final = re.compile(r"ModuleNotFoundError: No module named 'workerkit'$")

#: One line of output: (from stderr, text).
Line = tuple[bool, str]


class StartupOutput:
    """Shows one worker process's stdout and stderr lines on the console (module docstring).

    Args:
        console: where to show them (`Console.worker_output`).
        errors_only: the config's ``useStdErrorStreamForErrorsOnly``.
        previous: the output of the previous start, when that one exited before opening its
            stream; None otherwise (nothing is held back then).
        worker: ``<language>.<worker id>``, for the category of its log lines.
    """

    def __init__(
        self,
        console: Console,
        *,
        errors_only: bool,
        previous: Sequence[Line] | None = None,
        worker: str = "",
    ) -> None:
        self.console = console
        self.errors_only = errors_only
        self.worker = worker
        #: The last stderr lines, whenever they came (for the message of a later crash).
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        #: What the worker printed before its stream opened (all of it, up to a bound).
        self.lines: list[Line] = []
        self._recording = True
        self._too_long = False
        self._previous = {
            stream: [text for from_stderr, text in previous or () if from_stderr == stream]
            for stream in (False, True)
        }
        self._seen = {False: 0, True: 0}
        self._holding = previous is not None
        self._held: list[Line] = []

    def __call__(self, raw: bytes, stderr: bool) -> None:
        """One line of output (`TestHost.launch`'s ``on_output``)."""
        text = raw.decode(errors="replace").rstrip("\r")
        if stderr:
            self.stderr_tail.append(text)
        line = (stderr, text)
        if self._recording:
            if len(self.lines) < _MAX_RECORDED:
                self.lines.append(line)
            else:  # too long to compare: show everything, and hold nothing next time
                self.lines = []
                self._recording = False
                self._too_long = True
                self.release()
        if self._holding:
            index = self._seen[stderr]
            self._seen[stderr] += 1
            expected = self._previous[stderr]
            if index < len(expected) and expected[index] == text:
                self._held.append(line)
                return
            self.release()
        self._show(line)

    def release(self) -> None:
        """Show the lines held back and hold no more (the stream opened, or the start failed
        some other way)."""
        self._holding = False
        held, self._held = self._held, []
        for line in held:
            self._show(line)

    def opened(self) -> None:
        """The worker's stream opened: its output is no longer start-up output."""
        self._recording = False
        self.release()

    def exited(self) -> bool:
        """The worker exited before opening its stream (its output all read): True when its
        output repeated the previous failed start's, line for line, and was held back;
        otherwise what was held is shown now and False."""
        self._recording = False
        repeated = (
            self._holding
            and bool(self._held)
            and all(self._seen[s] == len(self._previous[s]) for s in (False, True))
        )
        if not repeated:
            self.release()
        self._holding = False
        return repeated

    @property
    def record(self) -> list[Line] | None:
        """The start-up output to compare the next start with (None: too long to hold)."""
        return None if self._too_long else list(self.lines)

    def _show(self, line: Line) -> None:
        stderr, text = line
        self.console.worker_output(
            text, stderr=stderr, errors_only=self.errors_only, worker=self.worker
        )


def exited_before_stream(
    *,
    code: int | None,
    executable: str,
    resolved: str | None,
    language: str,
    output: Sequence[Line],
    repeated: bool,
) -> tuple[str, str]:
    """What to say when a worker exited before opening its stream: (the console line, the
    whole explanation). They differ when the output repeated the previous start's: the line
    then says so briefly, the explanation (for giving up) still names the executable.

    Args:
        code: its exit status.
        executable: the executable as configured (``command[0]``, e.g. ``python3``).
        resolved: where it was found (the worker environment's PATH for a bare name).
        language: the worker's language id (``languageWorkers__<language>__…``).
        output: what it printed (all shown already, or held back when `repeated`).
        repeated: that output was the same as the previous failed start's, and not shown.
    """
    exited = f"the worker exited with status {code} before opening its stream"
    shown = resolved or executable
    found = ""
    if resolved is not None and os.path.basename(executable) == executable:
        found = f' ("{executable}" found on the worker\'s PATH)'
    no_workerkit = any(stderr and _NO_WORKERKIT.search(text) for stderr, text in output)
    ran = f"It ran {shown}{found}"
    if no_workerkit:
        ran += ", which does not have workerkit installed"
    python = no_workerkit or re.match(r"python", os.path.basename(shown), re.IGNORECASE)
    example = "/path/to/venv/bin/python" if python else "/path/to/executable"
    here = sys.executable  # the interpreter running workerkit host has workerkit
    if no_workerkit and here and os.path.abspath(here) != os.path.abspath(shown):
        example = here
    setting = (
        f"To use another {'interpreter' if python else 'executable'}, set"
        f" languageWorkers__{language}__defaultExecutablePath={example} (an app setting in"
        ' local.settings.json "Values", or an environment variable).'
    )
    explanation = f"{exited}.\n{ran}.\n{setting}"
    if not repeated:
        return explanation, explanation
    count = len(output)
    line = (
        f"{exited}: same error as before (its {count} line{'s' if count != 1 else ''} of"
        " output are not shown again)."
    )
    return line, explanation
