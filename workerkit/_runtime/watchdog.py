"""Noticing an ``async def`` hook that blocks the event loop.

While the loop is blocked nothing else happens: no status replies, no cancels, no other
invocations. A daemon thread asks the loop for a heartbeat every `interval / 4` seconds; when
none has come for `interval` seconds it names the task that is running (for an invocation,
the function) on stderr at once, and through logging, which reaches the host once the loop
is free again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("workerkit")


class LoopWatchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        describe: Callable[[asyncio.Task[object] | None], tuple[str, str]],
    ) -> None:
        self._loop = loop
        self._interval = interval
        self._describe = describe
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="workerkit-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()

    def _watch(self) -> None:
        tick = self._interval / 4
        reported = 0.0
        while not self._stop.wait(tick):
            try:
                self._loop.call_soon_threadsafe(self._heartbeat)
            except RuntimeError:  # the loop is closed
                return
            blocked = time.monotonic() - self._beat
            if blocked < self._interval:
                reported = 0.0
                continue
            if blocked - reported < self._interval:
                continue  # say it once per interval, not every tick
            reported = blocked
            # Reading the running task from another thread is a benign race: at worst we
            # name the task that ran just before or after.
            task = asyncio.tasks._current_tasks.get(self._loop)  # type: ignore[attr-defined]
            culprit, advice = self._describe(task)
            message = f"the event loop has been blocked for {blocked:.1f}s by {culprit}: {advice}"
            print(f"LanguageWorkerConsoleLogWARNING: {message}", file=sys.stderr, flush=True)
            log.warning("%s", message)
