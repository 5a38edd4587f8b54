"""workerkit: write Azure Functions language workers as a small Python subclass.

A language worker is the process the Azure Functions host starts to run an app's functions
in some language. The host owns triggers, bindings and scaling; over one gRPC stream it asks
the worker to load each function and then to run invocations of it. workerkit speaks that
protocol, so a worker is a subclass of `Worker` with two hooks:

    import workerkit

    class MyWorker(workerkit.Worker):
        def on_function_load(self, function: workerkit.FunctionInfo) -> None:
            ...  # once per function: prepare function.script_file; raise to refuse it

        def on_invocation(self, invocation: workerkit.Invocation) -> object:
            ...  # every call: invocation.inputs by binding name; return the $return value

    if __name__ == "__main__":
        MyWorker.main()

Either hook may be ``async def`` (runs on the event loop) or plain ``def`` (runs in a thread
pool); invocations overlap. The optional hooks (``on_init``, ``on_functions_metadata``,
``on_cancel``, ``on_environment_reload``, ``on_warmup``, ``on_shutdown``) have working
defaults. The host starts the worker with its own arguments; run by hand it explains that.

Where to look next:

- ``help(workerkit.Worker)``: every hook's contract (when, what to return, what to raise).
- ``help(workerkit.Invocation)``, ``help(workerkit.FunctionInfo)``: what the hooks receive,
  trigger inputs and metadata, and where the app directory is.
- ``workerkit host APP_DIR --worker WORKER_DIR``: serve a function app with your worker on
  this machine, without the Functions host; ``workerkit new DIR`` starts from an example.
- `workerkit.testing`: a host for your tests; `workerkit.convert`: host values as Python.

`current_invocation_id` is a `contextvars.ContextVar` holding the id of the invocation being
served (`Invocation.invocation_id`), for code that runs `Worker.on_invocation`: an ``async
def`` hook, the asyncio tasks it creates and its `asyncio.to_thread` calls; a plain ``def``
hook in its pool thread. ``current_invocation_id.get()`` is ``""`` everywhere else: outside
invocations, in the other hooks (``on_cancel`` too), and in a `threading.Thread`, which does
not inherit context variables (run its target with ``contextvars.copy_context().run``).
workerkit reads it to tell the host which invocation a log record belongs to.

Everything below is the reference of each exported class.
"""

from ._runtime.logs import current_invocation_id
from ._types import (
    Binding,
    EnvironmentReload,
    FunctionInfo,
    FunctionMetadata,
    InitRequest,
    InitResult,
    Invocation,
    InvocationResult,
    MetadataRequest,
    RetryContext,
    Shutdown,
    TraceContext,
    Warmup,
)
from .cli import HostArgs, HostArgsError, parse_host_args
from .convert import (
    Claim,
    ClaimsIdentity,
    ConversionError,
    HttpCookie,
    HttpRequest,
    HttpResponse,
    ModelBindingData,
)
from .errors import (
    FunctionLoadError,
    InvocationCancelled,
    InvocationError,
    MessageTooLarge,
    WorkerError,
)
from .worker import Worker, WorkerOptions, run

__version__ = "0.1.0.dev0"

__all__ = [
    "Binding",
    "Claim",
    "ClaimsIdentity",
    "ConversionError",
    "EnvironmentReload",
    "FunctionInfo",
    "FunctionLoadError",
    "FunctionMetadata",
    "HostArgs",
    "HostArgsError",
    "HttpCookie",
    "HttpRequest",
    "HttpResponse",
    "InitRequest",
    "InitResult",
    "Invocation",
    "InvocationCancelled",
    "InvocationError",
    "InvocationResult",
    "MessageTooLarge",
    "MetadataRequest",
    "ModelBindingData",
    "RetryContext",
    "Shutdown",
    "TraceContext",
    "Warmup",
    "Worker",
    "WorkerError",
    "WorkerOptions",
    "current_invocation_id",
    "parse_host_args",
    "run",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, type(current_invocation_id)):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj
