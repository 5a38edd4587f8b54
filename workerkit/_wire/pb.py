"""The generated messages, imported the first time one is used.

Importing betterproto2 and the generated classes costs a worker about 60 ms of start-up on a
small machine: more than everything else it imports. The messages of the start-up
conversation (StartStream, init, worker indexing, function loads), invocations and logs are
read and written by hand (`messages`, `values`), so a worker whose host sends nothing else
never imports them; anything else (status, cancel, terminate, a Failure reply, an uncommon
TypedData, ...) imports them on first use.

``pb`` stands for ``workerkit._generated.AzureFunctionsRpcMessages`` and ``shared`` for
``workerkit._generated`` (the identity and nullable types). Type checkers see the modules
themselves; at run time each is a stand-in that imports its module on the first attribute
read and then keeps every attribute it hands out, so later reads are plain lookups.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["pb", "shared"]


class _Deferred:
    """A module imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self.__dict__["_name"] = name

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(importlib.import_module(self._name), attribute)
        self.__dict__[attribute] = value
        return value

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


if TYPE_CHECKING:
    from .. import _generated as shared
    from .._generated import AzureFunctionsRpcMessages as pb
else:
    pb = _Deferred("workerkit._generated.AzureFunctionsRpcMessages")
    shared = _Deferred("workerkit._generated")
