"""Retry policies, read and applied as the host reads and applies them.

Where a policy comes from (the function's own wins over the app's: the WebJobs SDK's
``FunctionIndexer.FromMethod`` takes the method's ``RetryAttribute`` before the class's):

- ``"retry"`` at the top of ``function.json`` (that key exactly; its members in any case),
  read with ``ToObject<RetryOptions>`` and checked by ``Utility.ValidateRetryOptions``
  (src/WebJobs.Script/Host/HostFunctionMetadataProvider.cs and Utility.cs in
  Azure/azure-functions-host): a function error when invalid;
- ``retry_options`` a worker reports when it indexes its functions (GrpcWorkerChannel.cs and
  WorkerFunctionMetadataProvider.cs): checked the same way;
- ``"retry"`` in ``host.json`` (ScriptJobHostOptionsSetup.cs): the host does not start when it
  is invalid.

``strategy`` is ``fixedDelay`` (``delayInterval``) or ``exponentialBackoff`` (the default,
``minimumInterval`` and ``maximumInterval``); ``maxRetryCount`` is required, -1 retries for
ever. Intervals are TimeSpans (``"00:00:10"``).

How a policy runs (Azure/azure-webjobs-sdk, src/Microsoft.Azure.WebJobs.Host:
``Executors/FunctionExecutorExtensions.TryExecuteAsync``, which both triggered invocations and
``JobHost.CallAsync`` go through): every attempt is a new invocation carrying a
``RetryContext`` — the first one too, with ``retry_count`` 0 — and after a failure, unless
``maxRetryCount`` retries were made, the next waits its delay: always ``delayInterval``
(``FixedDelayRetryAttribute``), or ``minimumInterval``, then ``minimumInterval`` plus a random
0.8-1.2 times ``minimumInterval`` doubled at each retry, held at ``maximumInterval`` once it
reaches it (``ExponentialBackoffRetryAttribute``, ``Timers/RandomizedExponentialBackoffStrategy``).
The retry's ``RetryContext`` carries the previous attempt's exception. Stopping the host ends a
wait, and the retries with it.

Which triggers: the SDK applies a policy to every function, HTTP-triggered ones and those run
through the admin API included (``JobHost.CallAsync``). Only for triggers whose binding is marked
``[SupportsRetry]`` (timer, Event Hubs, Cosmos DB, Dapr; Kafka per Microsoft's documentation) is
it quiet: for the others it warns at start-up that retries will soon not be supported
(``FunctionIndexer.CheckRetrySupport``) and still retries.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from workerkit._generated import AzureFunctionsRpcMessages as pb

from ._config import parse_timespan
from ._dotnet import parse_integer

if TYPE_CHECKING:
    from ._console import Console

__all__ = [
    "EXPONENTIAL_BACKOFF",
    "FIXED_DELAY",
    "RetryError",
    "RetryPolicy",
    "checked",
    "checked_rpc",
    "parse_retry",
    "retry_from_rpc",
    "run_with_retries",
    "supports_retry",
    "timespan",
    "unsupported_warning",
]

FIXED_DELAY: Final = "fixedDelay"
EXPONENTIAL_BACKOFF: Final = "exponentialBackoff"
#: RetryStrategy's values (src/WebJobs.Script.Abstractions/Description/RetryStrategy.cs).
_STRATEGIES: Final = {"exponentialbackoff": EXPONENTIAL_BACKOFF, "fixeddelay": FIXED_DELAY}
_STRATEGY_NUMBERS: Final = {0: EXPONENTIAL_BACKOFF, 1: FIXED_DELAY}
#: Trigger types whose binding is marked [SupportsRetry] (lower case).
SUPPORTED_TRIGGERS: Final = frozenset(
    {
        "timertrigger",
        "eventhubtrigger",
        "cosmosdbtrigger",
        "kafkatrigger",
        "daprbindingtrigger",
        "daprserviceinvocationtrigger",
        "daprtopictrigger",
    }
)
#: RandomizedExponentialBackoffStrategy.RandomizationFactor.
_RANDOMIZATION: Final = 0.2

T = TypeVar("T")


class RetryError(ValueError):
    """A retry policy the host rejects; the message is the host's."""


def _null(parameter: str) -> RetryError:
    return RetryError(f"Value cannot be null. (Parameter '{parameter}')")


def _out_of_range(parameter: str) -> RetryError:
    return RetryError(
        f"Specified argument was out of the range of valid values. (Parameter '{parameter}')"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """A validated retry policy.

    Attributes:
        strategy: `FIXED_DELAY` or `EXPONENTIAL_BACKOFF`.
        max_retry_count: retries after the first attempt; -1 for no limit.
        delay_interval: seconds between attempts (fixed delay).
        minimum_interval: the first delay, in seconds (exponential backoff).
        maximum_interval: the longest delay, in seconds (exponential backoff).
    """

    strategy: str
    max_retry_count: int
    delay_interval: float = 0.0
    minimum_interval: float = 0.0
    maximum_interval: float = 0.0

    def delays(self, uniform: Callable[[float, float], float] = random.uniform) -> Iterator[float]:
        """The delays before the first retry, the second, …, for one run of the policy
        (a new strategy per ``RetryContext``, as the SDK keeps one in its state)."""
        if self.strategy == FIXED_DELAY:
            while True:
                yield self.delay_interval
        minimum, maximum = self.minimum_interval, self.maximum_interval
        current, exponent = 0.0, 0
        while True:
            if current != maximum:
                backoff = minimum
                if exponent > 0:
                    factor = uniform(1.0 - _RANDOMIZATION, 1.0 + _RANDOMIZATION)
                    backoff += factor * 2.0 ** (exponent - 1) * minimum
                if backoff < maximum:
                    current, exponent = backoff, exponent + 1
                else:
                    current = maximum
            yield current

    def __str__(self) -> str:
        count = "no limit" if self.max_retry_count == -1 else str(self.max_retry_count)
        if self.strategy == FIXED_DELAY:
            return f"fixedDelay, {count} retries, {timespan(self.delay_interval)} apart"
        return (
            f"exponentialBackoff, {count} retries, {timespan(self.minimum_interval)}"
            f" to {timespan(self.maximum_interval)} apart"
        )


def parse_retry(value: Any) -> RetryPolicy:
    """A ``retry`` object of ``function.json`` or ``host.json``, as the host reads and checks it.

    Member names in any case; ``strategy`` a name in any case or 0/1, default
    ``exponentialBackoff``; ``maxRetryCount`` an integer (or its text); intervals TimeSpan
    strings.

    Raises:
        RetryError: the host's message for what it rejects.
    """
    if not isinstance(value, Mapping):
        raise RetryError(f"'retry' must be an object, not {_json_kind(value)}")
    members = {str(k).lower(): v for k, v in value.items()}
    strategy = _strategy(members.get("strategy"))
    count = _count(members.get("maxretrycount"))
    intervals = {
        name: _interval(members.get(name.lower()), name)
        for name in ("delayInterval", "minimumInterval", "maximumInterval")
    }
    return _validated(strategy, count, intervals)


def retry_from_rpc(options: pb.RpcRetryOptions) -> RetryPolicy:
    """A worker's ``retry_options``, as the host copies and checks them (only the intervals
    of its strategy count; ``max_retry_count`` is always there, 0 when unset).

    Raises:
        RetryError: the host's message for what it rejects.
    """
    strategy = _STRATEGY_NUMBERS.get(int(options.retry_strategy), EXPONENTIAL_BACKOFF)
    intervals: dict[str, float | None] = {
        "delayInterval": None,
        "minimumInterval": None,
        "maximumInterval": None,
    }
    if strategy == FIXED_DELAY:
        intervals["delayInterval"] = _seconds(options.delay_interval)
    else:
        intervals["minimumInterval"] = _seconds(options.minimum_interval)
        intervals["maximumInterval"] = _seconds(options.maximum_interval)
    return _validated(strategy, options.max_retry_count, intervals)


def _validated(strategy: str, count: int | None, intervals: dict[str, float | None]) -> RetryPolicy:
    """``Utility.ValidateRetryOptions``, then the checks of the SDK's retry attributes, in
    their order."""
    if count is None:
        raise _null("MaxRetryCount")
    if strategy == FIXED_DELAY:
        delay = intervals["delayInterval"]
        if delay is None:
            raise _null("DelayInterval")
        if count < -1:
            raise _out_of_range("maxRetryCount")
        if delay < 0:
            raise RetryError("The TimeSpan must not be negative. (Parameter 'delayInterval')")
        return RetryPolicy(FIXED_DELAY, count, delay_interval=delay)
    minimum, maximum = intervals["minimumInterval"], intervals["maximumInterval"]
    if minimum is None:
        raise _null("MinimumInterval")
    if maximum is None:
        raise _null("MaximumInterval")
    if count < -1:
        raise _out_of_range("maxRetryCount")
    for name, seconds in (("minimumInterval", minimum), ("maximumInterval", maximum)):
        if seconds < 0:
            raise RetryError(f"The TimeSpan must not be negative. (Parameter '{name}')")
    if minimum > maximum:
        raise RetryError(
            "The minimumInterval must not be greater than the maximumInterval."
            " (Parameter 'minimumInterval')"
        )
    return RetryPolicy(
        EXPONENTIAL_BACKOFF, count, minimum_interval=minimum, maximum_interval=maximum
    )


def _strategy(value: Any) -> str:
    if value is None:
        return EXPONENTIAL_BACKOFF
    if isinstance(value, int) and not isinstance(value, bool) and value in _STRATEGY_NUMBERS:
        return _STRATEGY_NUMBERS[value]
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _STRATEGIES:
            return _STRATEGIES[text.lower()]
        if text.lstrip("-").isdigit() and int(text) in _STRATEGY_NUMBERS:
            return _STRATEGY_NUMBERS[int(text)]
    raise RetryError(
        f"Error converting value {_shown(value)} to type"
        " 'Microsoft.Azure.WebJobs.Script.Description.RetryStrategy'. Path 'strategy'."
        ' Use "fixedDelay" or "exponentialBackoff".'
    )


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _conversion(value, "Int32", "maxRetryCount")
    # Newtonsoft converts to Int32: a number or numeric string within its range.
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = parse_integer(value, 32)
    if number is None or not -(2**31) <= number < 2**31:
        raise _conversion(value, "Int32", "maxRetryCount")
    return number


def _interval(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _conversion(value, "TimeSpan", name)
    try:
        return parse_timespan(value)
    except ValueError:
        raise _conversion(value, "TimeSpan", name) from None


def _conversion(value: Any, kind: str, path: str) -> RetryError:
    return RetryError(
        f"Error converting value {_shown(value)} to type 'System.Nullable`1[System.{kind}]'."
        f" Path '{path}'."
        + (' Write a TimeSpan as a string, e.g. "00:00:10".' if kind == "TimeSpan" else "")
    )


def _shown(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a " + ("boolean" if isinstance(value, bool) else "number")


def _seconds(duration: Any) -> float | None:
    return None if duration is None else float(duration.total_seconds())


def checked(value: Any, error: Callable[[str], Exception]) -> RetryPolicy | None:
    """`parse_retry` for a ``retry`` object that may be absent (None); what the host rejects
    is raised as ``error("retry: <the host's message>")``."""
    if value is None:
        return None
    try:
        return parse_retry(value)
    except RetryError as exc:
        raise error(f"retry: {exc}") from None


def checked_rpc(
    options: pb.RpcRetryOptions | None, error: Callable[[str], Exception]
) -> RetryPolicy | None:
    """`retry_from_rpc` for ``retry_options`` that may be absent; what the host rejects is
    raised as ``error("retry_options: <the host's message>")``."""
    if options is None:
        return None
    try:
        return retry_from_rpc(options)
    except RetryError as exc:
        raise error(f"retry_options: {exc}") from None


def supports_retry(trigger_type: str) -> bool:
    """Whether the trigger's binding is marked ``[SupportsRetry]`` (no start-up warning)."""
    return trigger_type.lower() in SUPPORTED_TRIGGERS


def unsupported_warning(function: str) -> str:
    """The warning the SDK logs at start-up for a policy on another trigger (which it keeps)."""
    return (
        f"Soon retries will not be supported for function '{function}'. For more information,"
        " please visit http://aka.ms/func-retry-policies."
    )


def timespan(seconds: float) -> str:
    """`seconds` as .NET prints a TimeSpan: ``[-][d.]hh:mm:ss[.fffffff]``."""
    ticks = round(abs(seconds) * 10_000_000)
    sign = "-" if seconds < 0 and ticks else ""
    whole, fraction = divmod(ticks, 10_000_000)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{f'{days}.' if days else ''}{hours:02}:{minutes:02}:{secs:02}"
    return text + (f".{fraction:07}" if fraction else "")


async def run_with_retries(
    policy: RetryPolicy | None,
    attempt: Callable[[pb.RetryContext | None], Awaitable[T]],
    failure: Callable[[T], pb.RpcException | None],
    *,
    function: str,
    console: Console,
    stop: asyncio.Event,
) -> T:
    """Run `attempt` under `policy` (None: once, without a ``RetryContext``); the outcome of
    the last attempt.

    Args:
        policy: the function's policy, or None.
        attempt: runs one invocation with the ``RetryContext`` to send.
        failure: the exception an outcome failed with (what the next ``RetryContext``
            carries), None when it succeeded.
        function: the function's name, for the console.
        console: where the waits and the end of the retries are reported, in the SDK's words.
        stop: set when the host stops: a wait ends, and the retries with it.
    """
    if policy is None:
        return await attempt(None)
    limit = policy.max_retry_count
    delays = policy.delays()
    context = pb.RetryContext(retry_count=0, max_retry_count=limit)
    retries = 0
    while True:
        outcome = await attempt(context)
        error = failure(outcome)
        if error is None:
            return outcome
        if limit != -1 and retries == limit:
            console.error(
                f"Function '{function}': Function execution failed after '{retries}' retries."
            )
            return outcome
        retries += 1
        delay = next(delays)
        console.info(
            f"Function '{function}': Waiting for `{timespan(delay)}` before retrying function"
            f" execution. Next attempt: '{retries}'. Max retry count: '{limit}'."
        )
        if stop.is_set() or await _stopped_within(stop, delay):
            console.warning(f"Function '{function}': Invocation cancelled - exiting retry loop.")
            return outcome
        context = pb.RetryContext(retry_count=retries, max_retry_count=limit, exception=error)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
