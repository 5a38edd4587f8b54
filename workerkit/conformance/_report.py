"""What ``workerkit conformance`` reports: outcomes, one row per scenario, the whole report
(as a table or JSON), and the time limits it runs under."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Outcome(enum.StrEnum):
    """How a scenario ended."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    """The host would cope, but something is off (a failure with ``--strict``)."""
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One row of the report: scenario name, outcome, a one-line detail, seconds taken."""

    name: str
    outcome: Outcome
    detail: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Report:
    """Everything `check_worker` found, in scenario order."""

    command: tuple[str, ...]
    cwd: str
    results: tuple[ScenarioResult, ...]
    #: What the worker declared in its WorkerInitResponse (after any environment reload).
    capabilities: Mapping[str, str]

    def ok(self, *, strict: bool = False) -> bool:
        """True when nothing failed (and, with `strict`, nothing warned)."""
        bad = {Outcome.FAIL, Outcome.WARN} if strict else {Outcome.FAIL}
        return not any(result.outcome in bad for result in self.results)

    def counts(self) -> dict[str, int]:
        """How many scenarios ended in each outcome (every outcome listed)."""
        return {o.value: sum(r.outcome is o for r in self.results) for o in Outcome}

    def to_json(self, *, strict: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: ``ok``, ``command``, ``cwd``, ``capabilities``, ``counts`` and
        ``scenarios`` (each ``name``, ``result``, ``detail``, ``seconds``)."""
        return {
            "ok": self.ok(strict=strict),
            "command": list(self.command),
            "cwd": self.cwd,
            "capabilities": dict(self.capabilities),
            "counts": self.counts(),
            "scenarios": [
                {
                    "name": r.name,
                    "result": r.outcome.value,
                    "detail": r.detail,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
        }

    def table(self) -> str:
        """The report as a text table (scenario, result, time, detail) with a summary line."""
        width = max([len("scenario"), *(len(r.name) for r in self.results)])
        lines = [
            f"worker: {' '.join(self.command)}",
            f"cwd:    {self.cwd}",
            "",
            f"{'scenario':<{width}}  result  {'time':>6}  detail",
        ]
        for r in self.results:
            lines.append(f"{r.name:<{width}}  {r.outcome.value:<6}  {r.seconds:>5.2f}s  {r.detail}")
        counts = self.counts()
        lines.append("")
        lines.append(", ".join(f"{counts[o.value]} {o.value}" for o in Outcome))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ConformanceOptions:
    """Time limits, in seconds; each must be positive.

    `start_timeout`: launch → StartStream (the host allows 60). `init_timeout`: WorkerInitRequest
    → response (the host's initializationTimeout, 10). `timeout`: any other reply.
    `grace`: WorkerTerminate's grace period, also the limit for exiting after the stream ends.
    `http_wait`: for a worker that reports ``HttpUri``, how long it may take to give up a
    forwarded request whose invocation never comes, and an invocation whose request never
    comes (workerkit's own limit is 60 s, ``WorkerOptions.http_match_timeout``).
    """

    start_timeout: float = 30.0
    init_timeout: float = 10.0
    timeout: float = 10.0
    grace: float = 5.0
    http_wait: float = 75.0

    def __post_init__(self) -> None:
        for name in ("start_timeout", "init_timeout", "timeout", "grace", "http_wait"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"ConformanceOptions.{name} must be a positive number, not {value!r}"
                )
