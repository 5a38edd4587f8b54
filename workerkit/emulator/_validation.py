"""A function's bindings read and checked as the host reads and checks them.

The host reads each binding object twice (Azure/azure-functions-host): into
``BindingMetadata`` with Newtonsoft's ``ToObject`` (src/WebJobs.Script.Abstractions/Description/
Binding/BindingMetadata.cs: ``name``, ``type``, ``direction``, ``dataType``, ``cardinality``, the
enums parsed in any case) and through ``ScriptBindingContext.GetMetadataValue``
(src/WebJobs.Script/Binding/Extensibility/ScriptBindingContext.cs) for everything else
(``route``, ``methods``, ``authLevel``, ``schedule``, ``runOnStartup``, …). Both find a key in
any letter case: the exact spelling first, then the first key that differs only in case. A
`BindingConfig` reads a binding that way, so ``"Route"`` and ``"route"`` are one key.

`check_bindings` makes the host's checks in the host's order, the first problem winning:
``BindingMetadata.Create`` (a binding is an object; its enums), then
``FunctionDescriptorProvider.ValidateFunction`` (``Utility.ValidateBinding``: names,
``$return``, a type; unique names; one trigger), ``FunctionBinding.GetBindings`` (an ``http``
binding only as an output) and the HTTP trigger's attributes
(``WebJobsCoreScriptBindingProvider.HttpScriptBinding.GetAttributes``: ``authLevel``,
``methods``, ``route``). A failure is a `BindingError` with the host's message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from ._dotnet import fold, parse_enum
from ._jsonfile import dotnet_string

__all__ = [
    "BindingConfig",
    "BindingError",
    "binding_value",
    "check_bindings",
    "data_type_of",
    "direction_of",
    "http_methods",
    "http_route",
    "is_trigger",
    "metadata_string",
]

_BINDING_NAME: Final = re.compile(r"^([a-zA-Z][a-zA-Z0-9]{0,127}|\$return)$")
_DIRECTIONS: Final = ("In", "Out", "InOut")
_DATA_TYPES: Final = ("Undefined", "String", "Binary", "Stream")
_CARDINALITIES: Final = ("One", "Many")
#: EXT src/WebJobs.Extensions.Http/AuthorizationLevel.cs
_AUTH_LEVELS: Final = ("Anonymous", "User", "Function", "System", "Admin")
_ENUM_TYPE: Final = "Microsoft.Azure.WebJobs.Script.Description."


class BindingError(ValueError):
    """A binding the host rejects; the message is the host's."""


class BindingConfig(Mapping[str, Any]):
    """One binding object as written, whose keys match in any letter case (module docstring).

    Iteration gives the keys as written; ``dict(config)`` is the object as written.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        if key in self._data:
            return self._data[key]
        wanted = fold(key)
        for name, value in self._data.items():
            if fold(name) == wanted:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"BindingConfig({self._data!r})"


def binding_value(binding: Mapping[str, Any], key: str) -> Any:
    """`key` of `binding` in any letter case (exact spelling first), or None."""
    if key in binding:
        return binding[key]
    wanted = fold(key)
    for name, value in binding.items():
        if isinstance(name, str) and fold(name) == wanted:
            return value
    return None


def metadata_string(binding: Mapping[str, Any], key: str) -> str | None:
    """``GetMetadataValue<string>(key)``: a string, a number or a boolean as .NET writes it.

    Raises:
        BindingError: an object or an array.
    """
    value = binding_value(binding, key)
    if not isinstance(value, dict | list):
        return dotnet_string(value)
    raise BindingError(
        f"Error parsing function.json: Invalid value specified for binding property '{key}' of"
        " type String."
    )


def direction_of(binding: Mapping[str, Any]) -> str:
    """``in``, ``out`` or ``inout`` (``in`` when absent or unreadable)."""
    value = binding_value(binding, "direction")
    index = _enum(value, _DIRECTIONS) if value is not None else 0
    return ("in", "out", "inout")[index] if index in (0, 1, 2) else "inout"


def data_type_of(binding: Mapping[str, Any]) -> str:
    """``undefined``, ``string``, ``binary`` or ``stream`` (``undefined`` when absent)."""
    value = binding_value(binding, "dataType")
    index = _enum(value, _DATA_TYPES) if value not in (None, "") else 0
    return _DATA_TYPES[index].lower() if index in (0, 1, 2, 3) else "undefined"


def is_trigger(binding: Mapping[str, Any]) -> bool:
    """``BindingMetadata.IsTrigger`` among the input bindings: a type ending in ``trigger``
    (any case) and a direction other than ``out``."""
    kind = binding_value(binding, "type")
    return (
        isinstance(kind, str) and fold(kind).endswith("TRIGGER") and direction_of(binding) != "out"
    )


def check_bindings(bindings: Sequence[Any]) -> None:
    """The host's checks on a function's bindings, in its order (module docstring).

    Raises:
        BindingError: the first problem, in the host's words.
    """
    if not bindings:
        raise BindingError("At least one binding must be declared.")
    for item in bindings:  # BindingMetadata.Create
        if not isinstance(item, Mapping):
            kind = "JArray" if isinstance(item, list) else "JValue"
            raise BindingError(
                f"Unable to cast object of type 'Newtonsoft.Json.Linq.{kind}' to type"
                " 'Newtonsoft.Json.Linq.JObject'."
            )
        _check_enums(item)
    names: set[str] = set()
    triggers = 0
    for item in bindings:  # FunctionDescriptorProvider.ValidateFunction
        name = binding_value(item, "name")
        if not isinstance(name, str) or not _BINDING_NAME.match(name):
            shown = "" if name is None else name
            raise BindingError(
                f"The binding name {shown} is invalid. Please assign a valid name to the binding."
            )
        if fold(name) == "$RETURN" and direction_of(item) != "out":
            raise BindingError("$return bindings must specify a direction of 'out'.")
        kind = binding_value(item, "type")
        if kind is None:
            raise BindingError(f"Binding '{name}' is invalid. Bindings must specify a Type.")
        if fold(name) in names:
            raise BindingError(
                f"Multiple bindings with name '{name}' discovered. Binding names must be unique."
            )
        names.add(fold(name))
        triggers += is_trigger(item)
    if triggers > 1:
        raise BindingError(
            "Multiple trigger bindings defined. A function can only have a single trigger binding."
        )
    if triggers == 0:
        raise BindingError(
            "No trigger binding specified. A function must have a trigger input binding."
        )
    for item in bindings:  # FunctionBinding.GetBindings, for the input bindings
        if fold(str(binding_value(item, "type"))) == "HTTP" and direction_of(item) != "out":
            raise BindingError("Http binding can only be used for output.")
    if any(binding_value(item, "type") == "" for item in bindings):  # VerifyResolvedBindings
        raise BindingError(
            "The binding type(s) '' are not registered. Please ensure the type is correct and the"
            " binding extension is installed."
        )
    trigger = next(item for item in bindings if is_trigger(item))
    if fold(str(binding_value(trigger, "type"))) == "HTTPTRIGGER":
        _check_http_trigger(trigger)


def _enum(value: Any, names: Sequence[str]) -> int | None:
    """Newtonsoft's ``StringEnumConverter``: a name in any case (or several, comma-separated),
    or a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return parse_enum(value, names)
    return None


def _check_enums(item: Mapping[str, Any]) -> None:
    direction = binding_value(item, "direction")
    if direction is not None and _enum(direction, _DIRECTIONS) is None:
        raise BindingError(f"'{direction}' is not a valid binding direction.")
    for key, names, type_name in (
        ("dataType", _DATA_TYPES, "DataType"),
        ("cardinality", _CARDINALITIES, "Cardinality"),
    ):
        value = binding_value(item, key)
        if value is None or value == "" or _enum(value, names) is not None:
            continue
        shown = json.dumps(value) if isinstance(value, str) else value
        raise BindingError(
            f"Error converting value {shown} to type"
            f" 'System.Nullable`1[{_ENUM_TYPE}{type_name}]'. Path '{key}'."
        )


def _check_http_trigger(trigger: Mapping[str, Any]) -> None:
    """``HttpScriptBinding.GetAttributes``: ``authLevel``, then ``methods``, then ``route``."""
    level = metadata_string(trigger, "authLevel")
    if level and parse_enum(level, _AUTH_LEVELS) is None:
        raise BindingError(
            "Error parsing function.json: Invalid value specified for binding property"
            " 'authLevel' of enum type AuthorizationLevel."
        )
    http_methods(trigger)
    http_route(trigger)


def http_methods(trigger: Mapping[str, Any]) -> list[str | None] | None:
    """The HTTP trigger's ``methods`` as the host reads them: None for all methods; the list
    as written otherwise (numbers as text; a JSON null stays None and matches no method).

    Raises:
        BindingError: ``methods`` is not an array, or holds an object or an array.
    """
    value = binding_value(trigger, "methods")
    if value is None:
        return None
    if not isinstance(value, list):
        raise BindingError(
            "Error parsing function.json: Invalid value specified for binding property 'methods'"
            " of type JArray."
        )
    methods: list[str | None] = []
    for item in value:
        if isinstance(item, dict | list):
            raise BindingError(
                "Cannot cast Newtonsoft.Json.Linq.JObject to Newtonsoft.Json.Linq.JToken."
                if isinstance(item, dict)
                else "Cannot cast Newtonsoft.Json.Linq.JArray to Newtonsoft.Json.Linq.JToken."
            )
        methods.append(metadata_string({"m": item}, "m"))
    return methods


def http_route(trigger: Mapping[str, Any]) -> str | None:
    """The HTTP trigger's ``route`` as the host reads it (None when absent).

    Raises:
        BindingError: an object or an array.
    """
    return metadata_string(trigger, "route")
