"""workerkit: write Azure Functions language workers as a small Python subclass.

    import workerkit

    class MyWorker(workerkit.Worker):
        def on_function_load(self, function): ...
        def on_invocation(self, invocation): ...

    if __name__ == "__main__":
        MyWorker.main()

Everything an author needs is importable from here; `workerkit.testing` holds an in-process
host for tests, `workerkit.convert` the TypedData mapping.
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
