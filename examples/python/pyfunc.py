"""What a function author imports: `Out`, `Context` and, for worker indexing, `FunctionApp`.

The worker's directory is first on ``sys.path`` (the host runs ``python3 worker.py``), so
function code says ``from pyfunc import Out`` and gets this module, the one the worker uses.
``HttpRequest`` and ``HttpResponse`` come from workerkit itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from workerkit import Invocation

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Context", "FunctionApp", "Out"]


class Out(Generic[T]):
    """A named output binding: a parameter whose name is an ``out`` binding receives one.

    Call ``set`` (as often as you like; the last value wins). An output never set is not
    sent, and the host skips that binding.
    """

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value

    def get(self) -> T | None:
        return self._value


class Context:
    """Details of the current invocation, for a parameter named ``context``."""

    __slots__ = ("_invocation",)

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation

    @property
    def invocation_id(self) -> str:
        return self._invocation.invocation_id

    @property
    def function_name(self) -> str:
        return self._invocation.function.name

    @property
    def function_directory(self) -> str:
        return self._invocation.function.directory

    @property
    def trigger_metadata(self) -> Mapping[str, Any]:
        return self._invocation.trigger_metadata

    @property
    def cancelled(self) -> bool:
        """True once the host cancelled this call: long-running sync code should stop."""
        return self._invocation.cancelled


@dataclass
class Registered:
    """A function declared with `FunctionApp` decorators (worker indexing)."""

    name: str
    function: Callable[..., Any]
    bindings: list[dict[str, Any]] = field(default_factory=list)


class FunctionApp:
    """Declares functions in code instead of ``function.json`` (worker indexing).

    A module ``function_app.py`` at the app root holding a `FunctionApp` is indexed by the
    worker; decorators stack, the trigger decorator closest to ``def``::

        app = FunctionApp()

        @app.output("receipt", "queue", queueName="receipts")
        @app.queue_trigger("msg", queue_name="orders")
        def orders(msg: str, receipt: Out[str]) -> None: ...
    """

    def __init__(self) -> None:
        self.functions: dict[str, Registered] = {}

    def _add(self, function: F, binding: dict[str, Any], name: str | None = None) -> F:
        key = name or function.__name__
        entry = self.functions.get(key)
        if entry is None:
            entry = self.functions[key] = Registered(key, function)
        entry.bindings.insert(0, binding)  # decorators apply bottom-up: keep source order
        return function

    def route(
        self, route: str | None = None, *, methods: tuple[str, ...] = ("GET", "POST"),
        auth_level: str = "anonymous", arg_name: str = "req", name: str | None = None,
    ) -> Callable[[F], F]:  # fmt: skip
        """An HTTP trigger ``arg_name`` and an HTTP response as the return value."""

        def decorate(function: F) -> F:
            self._add(function, {"type": "http", "direction": "out", "name": "$return"}, name)
            trigger = {
                "type": "httpTrigger", "direction": "in", "name": arg_name,
                "authLevel": auth_level, "methods": [m.lower() for m in methods],
            }  # fmt: skip
            if route is not None:
                trigger["route"] = route
            return self._add(function, trigger, name)

        return decorate

    def schedule(
        self, schedule: str, *, arg_name: str = "timer", name: str | None = None
    ) -> Callable[[F], F]:
        """A timer trigger with an NCRONTAB `schedule` (``"0 */5 * * * *"``)."""
        binding = {"type": "timerTrigger", "direction": "in", "name": arg_name}
        binding["schedule"] = schedule
        return lambda function: self._add(function, binding, name)

    def queue_trigger(
        self, arg_name: str, *, queue_name: str, connection: str = "AzureWebJobsStorage",
        name: str | None = None,
    ) -> Callable[[F], F]:  # fmt: skip
        """A storage queue trigger."""
        binding = {"type": "queueTrigger", "direction": "in", "name": arg_name,
                   "queueName": queue_name, "connection": connection}  # fmt: skip
        return lambda function: self._add(function, binding, name)

    def output(
        self, arg_name: str, type: str, *, name: str | None = None, **properties: Any
    ) -> Callable[[F], F]:
        """Any output binding; its extension's properties as keywords (``queueName=...``)."""
        binding = {"type": type, "direction": "out", "name": arg_name, **properties}
        return lambda function: self._add(function, binding, name)
