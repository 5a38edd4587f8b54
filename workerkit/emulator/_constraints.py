"""Inline route constraints (``{id:int}``, ``{code:regex(^[A-Z]{{3}}$)}``) as ASP.NET Core builds
and applies them for the host's routes.

Building (aspnetcore src/Http/Routing/src: ``DefaultInlineConstraintResolver`` and
``ParameterPolicyActivator.ResolveParameterPolicy``): the text before the first ``(`` (when the
text ends with ``)``) names the constraint, in any letter case (``RouteOptions.ConstraintMap``
ignores case); the rest, without the parentheses, is the argument. A constraint type with a
single one-argument constructor (``regex``, ``min``, ``max``, ``minlength``, ``maxlength``) gets
the whole argument, commas included; the others (``range``, ``length``) get it split on commas
and trimmed, and need a constructor with that many arguments. Numbers are read with
``Convert.ChangeType`` (invariant culture). A failure is a `RouteError` with ASP.NET's
message.

Matching (src/Http/Routing/src/Constraints/*RouteConstraint.cs): each constraint parses the
route value with .NET's own parser (`_dotnet`, `_dotnetdate`); ``regex`` uses
``RegexOptions.IgnoreCase | CultureInvariant`` and is not anchored (``IsMatch``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ._dotnet import dotnet_regex, fold, is_bool, is_decimal, is_double, is_guid, parse_integer
from ._dotnetdate import is_datetime

__all__ = ["Constraint", "RouteError", "resolve_constraint"]


class RouteError(ValueError):
    """A route template the host would reject; the message is ASP.NET's."""


@dataclass(frozen=True)
class Constraint:
    """A resolved inline constraint: its text as written and the test it applies."""

    text: str
    test: Callable[[str], bool] = field(compare=False, repr=False)

    def __call__(self, value: str) -> bool:
        """Whether the route value satisfies the constraint."""
        return self.test(value)


_ALPHA: Final = re.compile(r"^[a-z]*$", re.IGNORECASE)
#: constraint key → (its ASP.NET type name, its test of a value); the key is case-insensitive.
_SIMPLE: Final[dict[str, tuple[str, Callable[[str], bool]]]] = {
    "INT": ("IntRouteConstraint", lambda v: parse_integer(v, 32) is not None),
    "LONG": ("LongRouteConstraint", lambda v: parse_integer(v, 64) is not None),
    "BOOL": ("BoolRouteConstraint", is_bool),
    "GUID": ("GuidRouteConstraint", is_guid),
    "DECIMAL": ("DecimalRouteConstraint", is_decimal),
    "DOUBLE": ("DoubleRouteConstraint", is_double),
    "FLOAT": ("FloatRouteConstraint", is_double),
    "DATETIME": ("DateTimeRouteConstraint", is_datetime),
    "ALPHA": ("AlphaRouteConstraint", lambda v: _ALPHA.search(v) is not None),
    "REQUIRED": ("RequiredRouteConstraint", lambda v: v != ""),
    "FILE": ("FileNameRouteConstraint", lambda v: _is_file_name(v)),
    "NONFILE": ("NonFileNameRouteConstraint", lambda v: not _is_file_name(v)),
}
#: constraints with one constructor taking the whole argument: key → (type name, .NET type).
_ONE_ARGUMENT: Final = {
    "REGEX": ("RegexInlineRouteConstraint", "string"),
    "MIN": ("MinRouteConstraint", "long"),
    "MAX": ("MaxRouteConstraint", "long"),
    "MINLENGTH": ("MinLengthRouteConstraint", "int"),
    "MAXLENGTH": ("MaxLengthRouteConstraint", "int"),
}
#: constraints whose argument is split on commas: key → (type name, argument counts allowed).
_SPLIT: Final = {
    "RANGE": ("RangeRouteConstraint", (2,)),
    "LENGTH": ("LengthRouteConstraint", (1, 2)),
}
_NAMESPACE: Final = "Microsoft.AspNetCore.Routing.Constraints."


def resolve_constraint(text: str) -> Constraint | None:
    """The constraint `text` (e.g. ``int``, ``range(1,5)``) names, ready to test values; None
    when no constraint has that name (the caller words that error: it names the route).

    Raises:
        RouteError: the wrong number of arguments, or an argument the constraint's
            constructor rejects (ASP.NET's messages).
    """
    key, argument = text, None
    open_paren = text.find("(")
    if open_paren >= 0 and text.endswith(")"):
        key, argument = text[:open_paren], text[open_paren + 1 : -1]
    folded = fold(key)
    if folded in _SIMPLE:
        type_name, test = _SIMPLE[folded]
        if argument is not None:  # an argument list, even "()", has one argument
            raise RouteError(_no_constructor(type_name, len(argument.split(","))))
        return Constraint(text, test)
    if folded in _ONE_ARGUMENT:
        type_name, kind = _ONE_ARGUMENT[folded]
        return Constraint(text, _one_argument(folded, type_name, kind, argument))
    if folded in _SPLIT:
        type_name, counts = _SPLIT[folded]
        parts = [p.strip() for p in argument.split(",")] if argument is not None else []
        if len(parts) not in counts:
            raise RouteError(_no_constructor(type_name, len(parts)))
        numbers = [_convert(p, "long" if folded == "RANGE" else "int", type_name) for p in parts]
        return Constraint(text, _split_test(folded, numbers, type_name))
    return None


def _no_constructor(type_name: str, count: int) -> str:
    return (
        f"Could not find a constructor for constraint type '{type_name}' with the following"
        f" number of parameters: {count}."
    )


def _creation_failed(type_name: str) -> RouteError:
    return RouteError(
        f"An error occurred while trying to create an instance of '{_NAMESPACE}{type_name}'."
    )


def _convert(text: str | None, kind: str, type_name: str) -> int:
    """``Convert.ChangeType(text, int or long, InvariantCulture)``."""
    value = parse_integer(text, 64 if kind == "long" else 32) if text is not None else None
    if value is None:
        raise _creation_failed(type_name)
    return value


def _one_argument(
    key: str, type_name: str, kind: str, argument: str | None
) -> Callable[[str], bool]:
    if kind == "string":  # regex
        if argument is None:
            raise _creation_failed(type_name)
        try:
            pattern = dotnet_regex(argument, re.IGNORECASE)
        except re.error:
            raise _creation_failed(type_name) from None
        return lambda v: pattern.search(v) is not None
    bound = _convert(argument, kind, type_name)
    if key in ("MINLENGTH", "MAXLENGTH") and bound < 0:
        raise _creation_failed(type_name)  # ArgumentOutOfRangeException: not negative
    if key == "MIN":
        return lambda v: (n := parse_integer(v, 64)) is not None and n >= bound
    if key == "MAX":
        return lambda v: (n := parse_integer(v, 64)) is not None and n <= bound
    if key == "MINLENGTH":
        return lambda v: _length(v) >= bound
    return lambda v: _length(v) <= bound


def _split_test(key: str, numbers: list[int], type_name: str) -> Callable[[str], bool]:
    if key == "RANGE":
        low, high = numbers
        if low > high:
            raise _creation_failed(type_name)
        return lambda v: (n := parse_integer(v, 64)) is not None and low <= n <= high
    if len(numbers) == 1:
        (exact,) = numbers
        if exact < 0:
            raise _creation_failed(type_name)
        return lambda v: _length(v) == exact
    low, high = numbers
    if low < 0 or high < low:
        raise _creation_failed(type_name)
    return lambda v: low <= _length(v) <= high


def _is_file_name(value: str) -> bool:
    """``FileNameRouteConstraint.IsFileName``: the last ``/``-separated part has a dot followed,
    somewhere after it, by a character other than a dot."""
    last = value.rsplit("/", 1)[-1]
    dot = last.find(".")
    return dot >= 0 and last[dot + 1 :].strip(".") != ""


def _length(value: str) -> int:
    """``string.Length``: UTF-16 code units (a character beyond U+FFFF counts twice)."""
    return len(value.encode("utf-16-le")) // 2
